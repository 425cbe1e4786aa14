//! Keys built from client data cannot collide or leave their tier, whatever arrives: the
//! separator `|`, the escape `%`, braces, colons, backslashes, control characters (newline, NUL),
//! very long values and any Unicode. Keys are `sluice:{<tier>:<identity>}` (Envoy's
//! `sluice:{envoy|<domain>|<kind>|<k>|<v>...}`, reputation `sluice:{rep}:<kind>:<value>`), the
//! values escaped by `tier::escape_into`.
//!
//! Injectivity is checked two ways: every key is decoded back (strip the prefix, split on `|`,
//! undo `%XX`) and must give exactly the values it was built from, which proves that no two inputs
//! share a key; and pairs built to be near misses (the same bytes split differently across
//! attributes, a character against its own escape) must give different keys.
//!
//! The one deliberate exception is `ip`: a value that parses as an address is keyed by the address,
//! not its spelling (`::ffff:192.0.2.1` is `192.0.2.1`, `2001:DB8:0::1` is `2001:db8::1`), so that
//! a client cannot get a fresh counter by writing its address another way. Pairs that are equal
//! after that canonicalisation must share a key, and only those.
//!
//! Bytes that are not UTF-8 never reach key building: protobuf `string` fields refuse them when
//! the message is decoded, before any of Sluice's code runs, and over gRPC the call fails while
//! the server keeps answering.

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{RateLimitDescriptor, rate_limit_descriptor};
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use futures::future::BoxFuture;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use prost::Message;
use prost::bytes::{Buf, BufMut};
use sluice::algorithm::{Algorithm, Verdict};
use sluice::api::pb;
use sluice::check::{AdminOp, Answer, Check, Failure, Mode, Source};
use sluice::engine::{Engine, EngineSettings};
use sluice::envoy::{Descriptor, Domains};
use sluice::request::{Attr, Attributes, reputation_keys};
use sluice::store::{Store, StoreError};
use sluice::tier::{Limit, Rule, Tier};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::{Code, Status};

use common::SluiceServer;

/// Enough cases to meet the rare shapes (an address spelled two ways, a value cut at a separator)
/// many times over, while the whole file stays within seconds in a debug build.
const CASES: u32 = 2000;

fn config(cases: u32) -> ProptestConfig {
    // No regression files: a failure prints its minimal case, which is what a report needs.
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

// ---------------------------------------------------------------------------------------------
// Generators

/// Fragments that matter to the key format: its separators and escape, escapes written by hand
/// (so that a raw character meets its own escape), hash-tag and prefix look-alikes, control and
/// odd Unicode characters, pieces of addresses.
const TRICKY: &[&str] = &[
    "{",
    "}",
    ":",
    "|",
    "%",
    "\\",
    "\n",
    "\r",
    "\t",
    "\0",
    "\u{7f}",
    "\u{85}",
    "\u{1b}",
    "\u{2028}",
    "\u{200b}",
    "\u{feff}",
    "\u{10ffff}",
    "%7C",
    "%7c",
    "%25",
    "%7B",
    "%7D",
    "%0A",
    "%00",
    "%%",
    "%Z",
    "%7",
    "{rep}",
    "}:sw",
    "sluice:{",
    "envoy|",
    "override",
    "é",
    "ß",
    "😀",
    "a",
    "b",
    ".",
    "1",
    "::",
    "ffff",
    " ",
    "\"",
];

/// Addresses in several spellings, some of them one address written two ways.
const SPELLED: &[&str] = &[
    "192.0.2.1",
    "::ffff:192.0.2.1",
    "::FFFF:192.0.2.1",
    "0:0:0:0:0:ffff:c000:201",
    "::ffff:c000:0201",
    "192.0.2.10",
    "2001:db8::1",
    "2001:DB8:0::1",
    "2001:0db8:0000:0000:0000:0000:0000:0001",
    "::1",
    "0::1",
    "0:0:0:0:0:0:0:1",
    "::127.0.0.1",
    "127.0.0.1",
    "fe80::1",
    "FE80::0001",
    "192.0.2.01",
    "1.2.3.4|x",
    "::ffff:1.2.3.4%eth0",
];

fn atom() -> BoxedStrategy<String> {
    prop_oneof![
        6 => select(TRICKY).prop_map(str::to_owned),
        2 => any::<char>().prop_map(String::from),
        1 => "[a-z0-9.:]{1,6}",
    ]
    .boxed()
}

/// Every spelling of `ip` this generator knows: the usual one, IPv4-mapped forms of an IPv4
/// address, the full eight groups (upper or lower case, with leading zeros).
fn spellings(ip: IpAddr) -> Vec<String> {
    let groups = |a: Ipv6Addr, upper: bool| {
        a.segments()
            .iter()
            .map(|s| if upper { format!("{s:04X}") } else { format!("{s:04x}") })
            .collect::<Vec<_>>()
            .join(":")
    };
    match ip {
        IpAddr::V4(a) => vec![
            a.to_string(),
            format!("::ffff:{a}"),
            format!("::FFFF:{a}"),
            format!("0:0:0:0:0:ffff:{a}"),
            groups(a.to_ipv6_mapped(), false),
            groups(a.to_ipv6_mapped(), true),
        ],
        IpAddr::V6(a) => vec![a.to_string(), a.to_string().to_uppercase(), groups(a, false), groups(a, true)],
    }
}

fn any_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![any::<Ipv4Addr>().prop_map(IpAddr::V4), any::<Ipv6Addr>().prop_map(IpAddr::V6)]
}

fn ip_text() -> BoxedStrategy<String> {
    prop_oneof![
        2 => select(SPELLED).prop_map(str::to_owned),
        3 => (any_ip(), any::<Index>()).prop_map(|(ip, i)| {
            let all = spellings(ip);
            all[i.index(all.len())].clone()
        }),
    ]
    .boxed()
}

/// A non-empty attribute value (an empty one means the attribute is absent).
fn value() -> BoxedStrategy<String> {
    prop_oneof![
        20 => vec(atom(), 1..8).prop_map(|a| a.concat()),
        4 => ip_text(),
        2 => any::<String>().prop_filter("an empty value is an absent attribute", |s| !s.is_empty()),
        1 => (vec(atom(), 1..4), 300usize..1500).prop_map(|(a, n)| a.concat().repeat(n)),
    ]
    .boxed()
}

/// `(ip, user, username)`, the key of the tier most tests use.
type Tuple = [String; 3];

fn tuple() -> impl Strategy<Value = Tuple> {
    [value(), value(), value()]
}

/// Two tuples that are likely to be confused by a careless encoding.
fn tuple_pair() -> BoxedStrategy<(Tuple, Tuple)> {
    const ESCAPES: &[(&str, &str)] =
        &[("|", "%7C"), ("{", "%7B"), ("}", "%7D"), ("%", "%25"), ("\n", "%0A"), ("\0", "%00")];
    prop_oneof![
        // Independent.
        (tuple(), tuple()),
        // One run of fragments cut into three values at different places, e.g. ("a|b", "c")
        // against ("a", "b|c").
        (vec(atom(), 3..10), any::<[Index; 4]>()).prop_map(|(atoms, [a, b, c, d])| {
            let split = |i: &Index, j: &Index| {
                let n = atoms.len();
                let first = 1 + i.index(n - 2);
                let second = first + 1 + j.index(n - 1 - first);
                [atoms[..first].concat(), atoms[first..second].concat(), atoms[second..].concat()]
            };
            (split(&a, &b), split(&c, &d))
        }),
        // A character against its own escape written by the client.
        (tuple(), 0..3usize, select(ESCAPES)).prop_map(|(t, at, (raw, escaped))| {
            let (mut x, mut y) = (t.clone(), t);
            x[at].push_str(raw);
            y[at].push_str(escaped);
            (x, y)
        }),
        // One address spelled two ways: the same counter, on purpose.
        (tuple(), any_ip(), any::<[Index; 2]>()).prop_map(|(t, ip, [i, j])| {
            let all = spellings(ip);
            let (mut x, mut y) = (t.clone(), t);
            x[0].clone_from(&all[i.index(all.len())]);
            y[0].clone_from(&all[j.index(all.len())]);
            (x, y)
        }),
    ]
    .boxed()
}

/// A valid tier name (config allows letters, digits, `_`, `-`, at most 64).
fn tier_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9_-]{1,64}",
        select(&["auth", "edge", "rep", "envoy", "sluice", "a", "a-b", "a_b"][..]).prop_map(str::to_owned),
    ]
}

/// Two different valid tier names, often one a prefix of the other.
fn tier_name_pair() -> impl Strategy<Value = (String, String)> {
    prop_oneof![
        (tier_name(), tier_name()),
        (tier_name(), "[A-Za-z0-9_-]{1,8}").prop_map(|(a, tail)| {
            let b: String = format!("{a}{tail}").chars().take(64).collect();
            (a, b)
        }),
    ]
    .prop_filter("two tiers have two names", |(a, b)| a != b)
}

/// A non-empty subset of the attributes a tier can be keyed by, in a generated order.
fn key_attrs() -> impl Strategy<Value = Vec<Attr>> {
    proptest::sample::subsequence(all_attrs(), 1..=5).prop_shuffle()
}

/// Every attribute the generated tiers are keyed by, in the order generated values fill them.
fn all_attrs() -> Vec<Attr> {
    vec![Attr::Ip, Attr::User, Attr::Extra("username".into()), Attr::Endpoint, Attr::UserAgent]
}

// ---------------------------------------------------------------------------------------------
// Model: what a key must tell apart, and how to read a key back

/// An `ip` value as keys see it: an address (after `to_canonical`, which folds IPv4-mapped IPv6
/// into IPv4) whatever its spelling, else the text itself.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum IpIdentity {
    Addr(IpAddr),
    Text(String),
}

fn ip_identity(value: &str) -> IpIdentity {
    match value.parse::<IpAddr>() {
        Ok(ip) => IpIdentity::Addr(ip.to_canonical()),
        Err(_) => IpIdentity::Text(value.to_owned()),
    }
}

/// One value of a tier's key as it must be told apart from others.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Identity {
    Ip(IpIdentity),
    Text(String),
}

fn identity_of(attr: &Attr, value: &str) -> Identity {
    match attr {
        Attr::Ip => Identity::Ip(ip_identity(value)),
        _ => Identity::Text(value.to_owned()),
    }
}

/// Reads back one part written by the escaping: `%XX` (two upper-case hex digits) is that byte,
/// any other character itself, which must not be one the escaping rewrites.
fn unescape(part: &str) -> String {
    let mut bytes = Vec::with_capacity(part.len());
    let mut chars = part.char_indices();
    while let Some((at, c)) = chars.next() {
        if c == '%' {
            let hex =
                part.get(at + 1..at + 3).unwrap_or_else(|| panic!("'%' without two hex digits in {part:?}"));
            assert!(
                hex.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)),
                "'%' followed by {hex:?} in {part:?}"
            );
            bytes.push(u8::from_str_radix(hex, 16).expect("hex digits"));
            chars.next();
            chars.next();
        } else {
            assert!(!matches!(c, '|' | '{' | '}') && !c.is_control(), "{c:?} left unescaped in {part:?}");
            let mut buf = [0u8; 4];
            bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        }
    }
    String::from_utf8(bytes).unwrap_or_else(|e| panic!("{part:?} does not unescape to UTF-8: {e}"))
}

/// The hash tag Redis Cluster computes a slot from: the text between the first `{` and the first
/// `}` after it, when not empty; else the whole key.
fn hash_tag(key: &str) -> &str {
    if let Some(open) = key.find('{')
        && let Some(len) = key[open + 1..].find('}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

/// Checks the shape every tier key must have and returns its identity's parts, unescaped.
fn read_tier_key(key: &str, tier: &str) -> Vec<String> {
    assert!(key.starts_with("sluice:{"), "{key:?}");
    assert_eq!(key.matches('{').count(), 1, "one opening brace in {key:?}");
    assert_eq!(key.matches('}').count(), 1, "one closing brace in {key:?}");
    assert!(key.ends_with('}'), "the hash tag closes the key: {key:?}");
    assert!(!key.chars().any(char::is_control), "a control character in {key:?}");
    let inside = &key["sluice:{".len()..key.len() - 1];
    let (name, identity) = inside.split_once(':').expect("a ':' after the tier name");
    assert_eq!(name, tier, "the tier between '{{' and the first ':' in {key:?}");
    // Stores append their suffixes after the tag: every key of one tier-key stays in its slot.
    for suffix in [":sw", ":log", ":seq", ":att", ":fail", ":pen", ":base"] {
        assert_eq!(hash_tag(&format!("{key}{suffix}")), inside);
    }
    identity.split('|').map(unescape).collect()
}

fn tier(name: &str, key: Vec<Attr>) -> Tier {
    let limit = Limit { algorithm: Algorithm::SlidingWindow, limit: 10, window_ms: 60_000, cost: 1 };
    Tier::new(name, vec![], key, Rule::Limited(limit))
}

/// Attributes carrying `values` in the attributes of `key`, in order.
fn attributes(key: &[Attr], values: &[String]) -> Attributes {
    let mut a = Attributes::default();
    for (attr, value) in key.iter().zip(values) {
        let slot = match attr {
            Attr::Ip => &mut a.ip,
            Attr::User => &mut a.user,
            Attr::Endpoint => &mut a.endpoint,
            Attr::Method => &mut a.method,
            Attr::UserAgent => &mut a.user_agent,
            Attr::ClientTier => &mut a.client_tier,
            Attr::Extra(name) => a.extra.entry(name.clone()).or_default(),
        };
        slot.clone_from(value);
    }
    a
}

fn three() -> Vec<Attr> {
    vec![Attr::Ip, Attr::User, Attr::Extra("username".into())]
}

fn identities(key: &[Attr], values: &[String]) -> Vec<Identity> {
    key.iter().zip(values).map(|(a, v)| identity_of(a, v)).collect()
}

/// The part of a key read back must be what the key was built from: the value itself, or for an
/// address its one spelling.
fn assert_read_back(attr: &Attr, read: &str, value: &str) {
    match (attr, ip_identity(value)) {
        (Attr::Ip, IpIdentity::Addr(ip)) => assert_eq!(read, ip.to_string(), "address {value:?}"),
        _ => assert_eq!(read, value),
    }
}

// ---------------------------------------------------------------------------------------------
// (a)-(c) tier keys

proptest! {
    #![proptest_config(config(CASES))]

    /// (a) On one tier, two tuples share a key exactly when they are the same after the address
    /// canonicalisation; otherwise, however the bytes are split across attributes or escaped by
    /// hand, the keys differ.
    #[test]
    fn one_tier_distinct_tuples_distinct_keys((x, y) in tuple_pair()) {
        let key = three();
        let t = tier("auth", key.clone());
        let (ax, ay) = (attributes(&key, &x), attributes(&key, &y));
        prop_assert!(t.matches(&ax) && t.matches(&ay));
        let (kx, ky) = (t.key_for(&ax), t.key_for(&ay));
        let same = identities(&key, &x) == identities(&key, &y);
        prop_assert_eq!(kx == ky, same, "{:?} / {:?} -> {:?} / {:?}", x, y, kx, ky);
    }

    /// (a), (c) Every key reads back to the values it was built from (so no other tuple can
    /// have it), keeps one hash tag that it ends with, and names its tier before the first ':'.
    #[test]
    fn every_key_reads_back_and_keeps_its_tag(
        name in tier_name(),
        key in key_attrs(),
        values in vec(value(), 5),
    ) {
        let t = tier(&name, key.clone());
        let attrs = attributes(&key, &values);
        prop_assert!(t.matches(&attrs));
        let built = t.key_for(&attrs);
        let parts = read_tier_key(&built, &name);
        prop_assert_eq!(parts.len(), key.len(), "{:?}", built);
        for ((attr, value), read) in key.iter().zip(&values).zip(&parts) {
            assert_read_back(attr, read, value);
        }
    }

    /// (b) The same request on two tiers, keyed by the same attributes or not, never gives one
    /// key, even when one name is a prefix of the other; nor do two different requests.
    #[test]
    fn two_tiers_never_share_a_key(
        (a, b) in tier_name_pair(),
        key_a in key_attrs(),
        key_b in key_attrs(),
        x in vec(value(), 5),
        y in vec(value(), 5),
    ) {
        let (ax, ay) = (attributes(&all_attrs(), &x), attributes(&all_attrs(), &y));
        let ta = tier(&a, key_a.clone());
        for tb in [tier(&b, key_a.clone()), tier(&b, key_b.clone())] {
            for (request_a, request_b) in [(&ax, &ax), (&ax, &ay)] {
                let (ka, kb) = (ta.key_for(request_a), tb.key_for(request_b));
                prop_assert_ne!(&ka, &kb);
                prop_assert_eq!(read_tier_key(&ka, &a).len(), ta.key.len());
                prop_assert_eq!(read_tier_key(&kb, &b).len(), tb.key.len());
            }
        }
    }

    /// (b) A value shaped like another tier's prefix (`b:`, `}`, `{b:`) cannot step into it.
    #[test]
    fn values_cannot_forge_another_tier(
        (a, b) in tier_name_pair(),
        rest in value(),
        glue in select(&[":", "|", "}", "{", "}:", ":{", "%3A", "}|{"][..]),
    ) {
        let key = vec![Attr::User];
        let ta = tier(&a, key.clone());
        let tb = tier(&b, key.clone());
        let forgeries =
            [format!("{b}{glue}{rest}"), format!("{rest}{glue}{b}:"), format!("}}sluice:{{{b}:{rest}")];
        for forged in forgeries {
            let k = ta.key_for(&attributes(&key, std::slice::from_ref(&forged)));
            let parts = read_tier_key(&k, &a);
            prop_assert_eq!(&parts, &vec![forged.clone()]);
            prop_assert_ne!(k, tb.key_for(&attributes(&key, std::slice::from_ref(&rest))));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// (d) reputation keys

/// Checks a reputation key's shape and returns the value it was built from.
fn read_reputation_key(key: &str, kind: &str) -> String {
    let prefix = format!("sluice:{{rep}}:{kind}:");
    let value = key.strip_prefix(&prefix).unwrap_or_else(|| panic!("{key:?} does not start with {prefix:?}"));
    assert_eq!(key.matches('{').count(), 1, "one opening brace in {key:?}");
    assert_eq!(key.matches('}').count(), 1, "one closing brace in {key:?}");
    assert_eq!(hash_tag(key), "rep", "{key:?}");
    assert!(!key.chars().any(char::is_control), "a control character in {key:?}");
    unescape(value)
}

fn maybe_value() -> BoxedStrategy<String> {
    prop_oneof![1 => Just(String::new()), 6 => value()].boxed()
}

proptest! {
    #![proptest_config(config(CASES))]

    /// (d) A request has a reputation key for each of its IP and user that is present; each keeps
    /// the `{rep}` tag, reads back to its value, and the IP and the user never share a key.
    #[test]
    fn reputation_keys_read_back(ip in maybe_value(), user in maybe_value()) {
        let attrs = Attributes { ip: ip.clone(), user: user.clone(), ..Default::default() };
        let keys = reputation_keys(&attrs);
        let mut expected = Vec::new();
        if !ip.is_empty() {
            expected.push(("ip", ip.clone()));
        }
        if !user.is_empty() {
            expected.push(("user", user.clone()));
        }
        prop_assert_eq!(keys.len(), expected.len(), "{:?}", keys);
        for (key, (kind, value)) in keys.iter().zip(&expected) {
            let read = read_reputation_key(key, kind);
            let attr = if *kind == "ip" { Attr::Ip } else { Attr::User };
            assert_read_back(&attr, &read, value);
        }
        if keys.len() == 2 {
            prop_assert_ne!(&keys[0], &keys[1]);
        }
        // Nor does a reputation key ever equal a tier key, whatever the tier is called.
        for name in ["rep", "rep}:ip", "ip", "user"] {
            let t = tier(name, vec![Attr::User]);
            if !user.is_empty() {
                prop_assert!(!keys.contains(&t.key_for(&attrs)));
            }
        }
    }

    /// (d) Two requests share a reputation key exactly when their values are the same (for IPs,
    /// the same address however spelled).
    #[test]
    fn reputation_keys_are_injective((x, y) in tuple_pair()) {
        let rep = |t: &Tuple| {
            reputation_keys(&Attributes { ip: t[0].clone(), user: t[1].clone(), ..Default::default() })
        };
        let (kx, ky) = (rep(&x), rep(&y));
        prop_assert_eq!(kx[0] == ky[0], ip_identity(&x[0]) == ip_identity(&y[0]), "{:?} {:?}", kx, ky);
        prop_assert_eq!(kx[1] == ky[1], x[1] == y[1], "{:?} {:?}", kx, ky);
        prop_assert_ne!(&kx[0], &ky[1]);
    }
}

// ---------------------------------------------------------------------------------------------
// Envoy descriptors' keys, through `Engine::should_rate_limit` with a store that records the keys

/// Records the key of every check and allows everything.
#[derive(Debug, Default)]
struct Recorder(Mutex<Vec<String>>);

impl Store for Recorder {
    fn decide<'a>(
        &'a self,
        checks: &'a [Check],
        _mode: Mode,
        _deadline: Option<std::time::Instant>,
    ) -> BoxFuture<'a, Result<Answer, StoreError>> {
        self.0.lock().expect("recorder lock").extend(checks.iter().map(|c| c.key.clone()));
        let verdicts = checks
            .iter()
            .map(|c| Verdict {
                allowed: true,
                remaining: c.quota.limit,
                retry_after_ms: 0,
                reset_after_ms: 0,
                limit: c.quota.limit,
                score: 0,
                factors: 0,
            })
            .collect();
        Box::pin(std::future::ready(Ok(Answer { admitted: true, verdicts, source: Source::Local })))
    }

    fn report_failures<'a>(&'a self, _failures: &'a [Failure]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn admin<'a>(&'a self, _op: AdminOp<'a>) -> BoxFuture<'a, Result<Vec<(String, String)>, StoreError>> {
        Box::pin(std::future::ready(Ok(Vec::new())))
    }
}

/// Domain names that look like each other once a careless encoding is applied.
const DOMAINS: &[&str] = &["edge", "edge|", "edge%7C", "e{d}ge:", "envoy", "edge|override"];

/// Parsed once: building them for every case would take most of this file's time.
fn envoy_domains() -> &'static Domains {
    static DOMAINS_LOADED: std::sync::LazyLock<Domains> = std::sync::LazyLock::new(load_envoy_domains);
    &DOMAINS_LOADED
}

fn load_envoy_domains() -> Domains {
    let mut by_name = HashMap::new();
    for name in DOMAINS {
        let text = format!(
            "domain: {}
descriptors:
  - key: remote_address
    rate_limit: {{unit: second, requests_per_unit: 1000}}
  - key: service
    descriptors:
      - key: user
        rate_limit: {{unit: minute, requests_per_unit: 1000}}
  - key: path
    value: \"/api/*\"
    rate_limit: {{unit: minute, requests_per_unit: 1000}}
  - key: files
    value: \"files/*\"
    share_threshold: true
    rate_limit: {{unit: hour, requests_per_unit: 1000}}
",
            serde_json::to_string(name).expect("a JSON string is a YAML string")
        );
        let domain = sluice::config::envoy_file::parse(&text, "test").expect("a valid domain");
        by_name.insert(domain.name.clone(), domain);
    }
    Domains { by_name, ..Domains::default() }
}

/// One request descriptor and the parts its key must hold (`[domain, kind, k1, v1, ...]`), or
/// `None` when it matches no limit.
#[derive(Clone, Debug)]
struct EnvoyCase {
    domain: String,
    descriptor: Descriptor,
    expected: Option<Vec<String>>,
}

fn envoy_value() -> BoxedStrategy<String> {
    prop_oneof![1 => Just(String::new()), 8 => value()].boxed()
}

fn envoy_case() -> BoxedStrategy<EnvoyCase> {
    let matched = |entries: Vec<(String, String)>, identity: Vec<(String, String)>| {
        move |domain: String| {
            let mut expected = vec![domain.clone(), String::new()];
            expected.extend(identity.iter().flat_map(|(k, v)| [k.clone(), kept(v)]));
            EnvoyCase {
                domain,
                descriptor: Descriptor { entries: entries.clone(), ..Default::default() },
                expected: Some(expected),
            }
        }
    };
    let domain = || select(DOMAINS).prop_map(str::to_owned);
    prop_oneof![
        (domain(), envoy_value()).prop_map(move |(d, v)| {
            let e = vec![("remote_address".to_owned(), v)];
            matched(e.clone(), e)(d)
        }),
        (domain(), envoy_value(), envoy_value()).prop_map(move |(d, a, b)| {
            let e = vec![("service".to_owned(), a), ("user".to_owned(), b)];
            matched(e.clone(), e)(d)
        }),
        (domain(), envoy_value()).prop_map(move |(d, v)| {
            let e = vec![("path".to_owned(), format!("/api/{v}"))];
            matched(e.clone(), e)(d)
        }),
        // A shared wildcard: every value counts under the pattern.
        (domain(), envoy_value()).prop_map(move |(d, v)| {
            matched(
                vec![("files".to_owned(), format!("files/{v}"))],
                vec![("files".to_owned(), "files/*".to_owned())],
            )(d)
        }),
        // A limit given in the request: the client chooses keys, values and their number (an
        // override on a file's entries in the file's unit shares its counter: a pair below).
        (domain(), vec((value(), envoy_value()), 0..4), 1..=7i32)
            .prop_filter("keys no file has", |(_, entries, _)| {
                entries.first().is_none_or(|(k, _)| {
                    !["remote_address", "service", "path", "files"].contains(&k.as_str())
                })
            })
            .prop_map(|(domain, entries, unit)| {
                let mut expected = vec![domain.clone(), "override".to_owned(), unit.to_string()];
                expected.extend(entries.iter().flat_map(|(k, v)| [k.clone(), kept(v)]));
                EnvoyCase {
                    domain,
                    descriptor: Descriptor { entries, limit_override: Some((5, unit)), hits: None },
                    expected: Some(expected),
                }
            }),
        // No limit: an unknown domain.
        (value(), vec((value(), envoy_value()), 1..3))
            .prop_filter("an unknown domain", |(domain, _)| !DOMAINS.contains(&domain.as_str()))
            .prop_map(|(domain, entries)| EnvoyCase {
                domain,
                descriptor: Descriptor { entries, ..Default::default() },
                expected: None,
            }),
        // No limit: keys no file has.
        (domain(), vec((value(), envoy_value()), 1..3))
            .prop_filter("keys no file has", |(_, entries)| {
                !["remote_address", "service", "path", "files"].contains(&entries[0].0.as_str())
            })
            .prop_map(|(domain, entries)| EnvoyCase {
                domain,
                descriptor: Descriptor { entries, ..Default::default() },
                expected: None,
            }),
    ]
    .boxed()
}

/// A value as its key holds it: itself, or past `LONG_VALUE_BYTES` its digest (`domain::short`).
fn kept(value: &str) -> String {
    sluice::envoy::domain::short(value).into_owned()
}

/// A request's own limit over `entries`.
fn override_case(domain: &str, entries: Vec<(String, String)>) -> EnvoyCase {
    let mut expected = vec![domain.to_owned(), "override".to_owned(), "2".to_owned()];
    expected.extend(entries.iter().flat_map(|(k, v)| [k.clone(), kept(v)]));
    EnvoyCase {
        domain: domain.to_owned(),
        descriptor: Descriptor { entries, limit_override: Some((5, 2)), hits: None },
        expected: Some(expected),
    }
}

/// `remote_address` = `value` in `domain`, counted under the configured limit (a second).
fn configured_address(domain: &str, value: String) -> EnvoyCase {
    let entries = vec![("remote_address".to_owned(), value)];
    let mut expected = vec![domain.to_owned(), String::new()];
    expected.extend(entries.iter().flat_map(|(k, v)| [k.clone(), kept(v)]));
    EnvoyCase {
        domain: domain.to_owned(),
        descriptor: Descriptor { entries, ..Default::default() },
        expected: Some(expected),
    }
}

/// Two descriptors likely to be confused by a careless encoding.
fn envoy_pair() -> BoxedStrategy<(EnvoyCase, EnvoyCase)> {
    prop_oneof![
        (envoy_case(), envoy_case()),
        // The same descriptor for another domain.
        (envoy_case(), select(DOMAINS)).prop_map(|(x, other)| {
            let mut y = x.clone();
            y.domain = other.to_owned();
            if let Some(e) = &mut y.expected {
                e[0] = other.to_owned();
            }
            (x, y)
        }),
        // One run of fragments cut into two entries' keys and values at different places.
        (select(DOMAINS), vec(atom(), 4..10), any::<[Index; 6]>()).prop_map(|(d, atoms, cuts)| {
            let split = |cuts: &[Index]| {
                let n = atoms.len();
                let a = 1 + cuts[0].index(n - 3);
                let b = a + 1 + cuts[1].index(n - 2 - a);
                let c = b + 1 + cuts[2].index(n - 1 - b);
                vec![(atoms[..a].concat(), atoms[a..b].concat()), (atoms[b..c].concat(), atoms[c..].concat())]
            };
            (override_case(d, split(&cuts[..3])), override_case(d, split(&cuts[3..])))
        }),
        // A configured limit against the request's own limit over the same entries: in another
        // unit (a minute), a counter of its own.
        (select(DOMAINS), envoy_value()).prop_map(|(d, v)| {
            let configured = configured_address(d, v);
            let overriding = override_case(d, configured.descriptor.entries.clone());
            (configured, overriding)
        }),
        // In the configured limit's unit (a second): one counter, each compared with its own
        // limit, as envoyproxy/ratelimit counts them.
        (select(DOMAINS), envoy_value()).prop_map(|(d, v)| {
            let configured = configured_address(d, v);
            let overriding = EnvoyCase {
                descriptor: Descriptor { limit_override: Some((5, 1)), ..configured.descriptor.clone() },
                ..configured.clone()
            };
            (configured, overriding)
        }),
    ]
    .boxed()
}

/// Decides one descriptor and returns the key it was counted under, if any.
fn envoy_key(domains: &Domains, case: &EnvoyCase) -> Option<String> {
    let recorder = Arc::new(Recorder::default());
    let store: Arc<dyn Store> = recorder.clone();
    let settings = EngineSettings { events_max_len: 0, over_limit_max_keys: 0, max_in_flight: 1 };
    let engine = Engine::new(Default::default(), store, settings);
    engine.replace_domains(domains.clone());
    futures::executor::block_on(engine.should_rate_limit(
        &case.domain,
        std::slice::from_ref(&case.descriptor),
        1,
        None,
    ))
    .expect("the recorder never fails");
    let mut keys = recorder.0.lock().expect("recorder lock").clone();
    assert!(keys.len() <= 1, "one descriptor, one check: {keys:?}");
    keys.pop()
}

/// Checks the shape of an Envoy key and returns its parts, unescaped.
fn read_envoy_key(key: &str) -> Vec<String> {
    assert_eq!(key.matches('{').count(), 1, "one opening brace in {key:?}");
    assert_eq!(key.matches('}').count(), 1, "one closing brace in {key:?}");
    assert!(!key.chars().any(char::is_control), "a control character in {key:?}");
    let inside = key
        .strip_prefix("sluice:{envoy|")
        .and_then(|k| k.strip_suffix('}'))
        .unwrap_or_else(|| panic!("{key:?} is not sluice:{{envoy|...}}"));
    // A long value's digest (`%#` and 64 hex digits) is read as it is: no escaped part holds `%#`.
    let digest = |part: &str| {
        part.strip_prefix("%#")
            .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    inside.split('|').map(|part| if digest(part) { part.to_owned() } else { unescape(part) }).collect()
}

proptest! {
    #![proptest_config(config(CASES))]

    /// Envoy descriptors: every key reads back to its domain, its kind (a configured limit or the
    /// request's own) and its entries, so no two descriptors of any two domains share a counter
    /// unless a shared wildcard says so; a descriptor without a limit counts nowhere.
    #[test]
    fn envoy_keys_read_back(case in envoy_case()) {
        let key = envoy_key(envoy_domains(), &case);
        match (&case.expected, key) {
            (None, None) => {}
            (Some(expected), Some(key)) => prop_assert_eq!(&read_envoy_key(&key), expected, "{:?}", key),
            (expected, key) => prop_assert!(false, "expected {:?}, counted under {:?}", expected, key),
        }
    }

    /// Envoy descriptors: two share a key exactly when their domain, kind and entries (a shared
    /// wildcard's pattern in place of the value) are the same, the kind of an override being the
    /// configured limit's when it has the same unit; never a tier's key.
    #[test]
    fn envoy_keys_are_injective((x, y) in envoy_pair(), name in tier_name()) {
        let domains = envoy_domains();
        let (kx, ky) = (envoy_key(domains, &x), envoy_key(domains, &y));
        prop_assert_eq!(kx.is_some(), x.expected.is_some());
        prop_assert_eq!(ky.is_some(), y.expected.is_some());
        if let (Some(kx), Some(ky)) = (&kx, &ky) {
            prop_assert_eq!(kx == ky, x.expected == y.expected, "{:?} / {:?}", kx, ky);
            let t = tier(&name, vec![Attr::User]);
            let user = x.descriptor.entries.first().map(|(_, v)| v.clone()).unwrap_or_default();
            if !user.is_empty() {
                prop_assert_ne!(kx, &t.key_for(&Attributes { user, ..Default::default() }));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What keeps tier names safe: configuration refuses any other name

proptest! {
    // Loading a file takes milliseconds in a debug build: fewer cases, each a forbidden
    // character at a random place in a valid name.
    #![proptest_config(config(48))]

    /// A tier name holds no ':' (which ends the tier in a key), brace, '|' or '%': a file with
    /// any other character in a name does not load, and a valid name is the one in the key.
    #[test]
    fn configuration_refuses_names_that_could_forge_keys(
        name in tier_name(),
        bad in prop_oneof![
            select(&[":", "{", "}", "|", "%", " ", "\n", "\0", ".", "/", "é", "\u{200b}"][..])
                .prop_map(str::to_owned),
            any::<char>()
                .prop_filter("an allowed character", |c| {
                    !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                })
                .prop_map(String::from),
        ],
        at in any::<Index>(),
    ) {
        let yaml = |name: &str| format!(
            "tiers:\n  - name: {}\n    key: [user]\n    limit: 5\n    window: 1m\n",
            serde_json::to_string(name).expect("a JSON string is a YAML string")
        );
        let mut chars: Vec<char> = name.chars().collect();
        let split = at.index(chars.len() + 1);
        let tail = chars.split_off(split);
        let forged: String = chars.into_iter().chain(bad.chars()).chain(tail).collect();
        prop_assert!(
            sluice::config::parse(&yaml(&forged), "t.yaml", Some(HashMap::new())).is_err(),
            "tier name {:?} was accepted", forged
        );
        let settings = sluice::config::parse(&yaml(&name), "t.yaml", Some(HashMap::new()))
            .map_err(|e| TestCaseError::fail(format!("{name:?}: {e}")))?;
        let t = settings.tiers.by_name(&name).expect("the tier loaded");
        let key = t.key_for(&Attributes { user: "u:{x}".into(), ..Default::default() });
        prop_assert_eq!(read_tier_key(&key, &name), vec!["u:{x}".to_owned()]);
    }
}

#[test]
fn configuration_refuses_overlong_and_empty_names() {
    for name in [String::new(), "a".repeat(65)] {
        let yaml = format!("tiers:\n  - name: \"{name}\"\n    key: [user]\n    limit: 5\n    window: 1m\n");
        assert!(sluice::config::parse(&yaml, "t.yaml", Some(HashMap::new())).is_err(), "{name:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Invalid UTF-8 is refused when a message is decoded

/// Byte sequences that are not UTF-8: a lone byte that never starts a character, a lone
/// continuation byte, an overlong NUL and '/', a UTF-16 surrogate, a code point past U+10FFFF, a
/// 5-byte form, a truncated character at the end and in the middle, and bad bytes among the
/// characters that matter to keys.
const NOT_UTF8: &[&[u8]] = &[
    b"\xff",
    b"\x80",
    b"\xc0\x80",
    b"\xc0\xaf",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xf8\x88\x80\x80\x80",
    b"203.0.113.9\xe2\x82",
    b"a\xe2\x82b",
    b"x{\xff}|%7C:\n\0\xfe",
];

/// A string field of a request, by the name tests report it under.
const CHECK_FIELDS: &[&str] =
    &["ip", "user", "endpoint", "method", "user_agent", "client_tier", "extra name", "extra value", "tiers"];

/// The address every request below carries (when `ip` is not the broken field), so that a later
/// valid check shows whether anything was counted.
const PROBE_IP: &str = "203.0.113.9";

fn attributes_with(field: &str, value: &str) -> pb::Attributes {
    let mut a = pb::Attributes { ip: PROBE_IP.into(), ..Default::default() };
    let v = value.to_owned();
    match field {
        "ip" => a.ip = v,
        "user" => a.user = v,
        "endpoint" => a.endpoint = v,
        "method" => a.method = v,
        "user_agent" => a.user_agent = v,
        "client_tier" => a.client_tier = v,
        "extra name" => {
            a.extra.insert(v, "x".into());
        }
        "extra value" => {
            a.extra.insert("username".into(), v);
        }
        "tiers" => {}
        other => panic!("no field {other}"),
    }
    a
}

fn check_with(field: &str, value: &str) -> pb::CheckRequest {
    let tiers = if field == "tiers" { vec![value.to_owned()] } else { vec![] };
    pb::CheckRequest {
        requests: vec![pb::RateRequest {
            attributes: Some(attributes_with(field, value)),
            cost: None,
            tiers,
        }],
        dry_run: false,
    }
}

fn report_with(field: &str, value: &str) -> pb::ReportRequest {
    let tiers = if field == "tiers" { vec![value.to_owned()] } else { vec![] };
    pb::ReportRequest {
        attributes: Some(attributes_with(field, value)),
        outcome: pb::Outcome::Failure.into(),
        tiers,
    }
}

const ENVOY_FIELDS: &[&str] = &["domain", "entry key", "entry value"];

fn envoy_with(field: &str, value: &str) -> RateLimitRequest {
    let (mut domain, mut key, mut val) =
        ("edge".to_owned(), "remote_address".to_owned(), PROBE_IP.to_owned());
    match field {
        "domain" => domain = value.to_owned(),
        "entry key" => key = value.to_owned(),
        "entry value" => val = value.to_owned(),
        other => panic!("no field {other}"),
    }
    RateLimitRequest {
        domain,
        descriptors: vec![RateLimitDescriptor {
            entries: vec![rate_limit_descriptor::Entry { key, value: val }],
            ..Default::default()
        }],
        hits_addend: 0,
    }
}

/// The encoding of `build(placeholder)` with the placeholder's bytes replaced by `bytes`: two
/// placeholders of the same length ("AAA", "BBB") are encoded, and the bytes where the encodings
/// differ are exactly the field's, so nothing else of the message can be hit by mistake.
fn spliced(build: impl Fn(&str) -> Vec<u8>, bytes: &[u8]) -> Vec<u8> {
    let (a, b) = (build(&"A".repeat(bytes.len())), build(&"B".repeat(bytes.len())));
    assert_eq!(a.len(), b.len());
    let differ: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
    assert_eq!(differ.len(), bytes.len(), "the placeholder appears once");
    let start = differ[0];
    assert_eq!(differ, (start..start + bytes.len()).collect::<Vec<_>>(), "the placeholder is one run");
    let mut out = a;
    out[start..start + bytes.len()].copy_from_slice(bytes);
    out
}

fn encoded_check(field: &str) -> impl Fn(&str) -> Vec<u8> + '_ {
    move |v| check_with(field, v).encode_to_vec()
}

fn encoded_report(field: &str) -> impl Fn(&str) -> Vec<u8> + '_ {
    move |v| report_with(field, v).encode_to_vec()
}

fn encoded_envoy(field: &str) -> impl Fn(&str) -> Vec<u8> + '_ {
    move |v| envoy_with(field, v).encode_to_vec()
}

#[test]
fn splicing_valid_bytes_decodes_so_the_refusals_below_are_about_utf8() {
    for field in CHECK_FIELDS {
        let bytes = spliced(encoded_check(field), "{é}|\n".as_bytes());
        assert_eq!(pb::CheckRequest::decode(&bytes[..]).expect("valid"), check_with(field, "{é}|\n"));
        let bytes = spliced(encoded_report(field), "{é}|\n".as_bytes());
        assert_eq!(pb::ReportRequest::decode(&bytes[..]).expect("valid"), report_with(field, "{é}|\n"));
    }
    for field in ENVOY_FIELDS {
        let bytes = spliced(encoded_envoy(field), "{é}|\n".as_bytes());
        assert_eq!(RateLimitRequest::decode(&bytes[..]).expect("valid"), envoy_with(field, "{é}|\n"));
    }
}

fn not_utf8() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        select(NOT_UTF8).prop_map(<[u8]>::to_vec),
        vec(any::<u8>(), 1..40),
        // Bad bytes among the characters that matter to keys.
        (value(), vec(128u8..=255, 1..4), value()).prop_map(|(a, bad, b)| {
            let mut out = a.into_bytes();
            out.extend(bad);
            out.extend(b.into_bytes());
            out
        }),
    ]
    .prop_filter("not UTF-8", |b| std::str::from_utf8(b).is_err())
    .boxed()
}

proptest! {
    #![proptest_config(config(CASES))]

    /// Any bytes that are not UTF-8, in any string field of `sluice.v1.CheckRequest`,
    /// `ReportRequest` or Envoy's `RateLimitRequest`, fail to decode.
    #[test]
    fn invalid_utf8_fails_to_decode(bytes in not_utf8(), c in any::<Index>(), e in any::<Index>()) {
        let field = CHECK_FIELDS[c.index(CHECK_FIELDS.len())];
        let wire = spliced(encoded_check(field), &bytes);
        prop_assert!(pb::CheckRequest::decode(&wire[..]).is_err(), "CheckRequest.{} decoded", field);
        let wire = spliced(encoded_report(field), &bytes);
        prop_assert!(pb::ReportRequest::decode(&wire[..]).is_err(), "ReportRequest.{} decoded", field);
        let field = ENVOY_FIELDS[e.index(ENVOY_FIELDS.len())];
        let wire = spliced(encoded_envoy(field), &bytes);
        prop_assert!(RateLimitRequest::decode(&wire[..]).is_err(), "RateLimitRequest.{} decoded", field);
    }
}

// ---------------------------------------------------------------------------------------------
// Over gRPC, to a running Sluice

/// Passes message bytes through as they are, so that a test can send what no generated client
/// would encode.
#[derive(Clone, Copy, Debug, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

const CHECK: &str = "/sluice.v1.RateLimiter/Check";
const REPORT: &str = "/sluice.v1.RateLimiter/Report";
const SHOULD_RATE_LIMIT: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

async fn raw_call(
    grpc: &mut tonic::client::Grpc<tonic::transport::Channel>,
    path: &'static str,
    body: Vec<u8>,
) -> Result<Vec<u8>, Status> {
    grpc.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
    grpc.unary(tonic::Request::new(body), PathAndQuery::from_static(path), RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

const SERVER_YAML: &str = "
tiers:
  - name: per_ip
    key: [ip]
    limit: 1000
    window: 1h
  - name: login
    key: [ip, username]
    limit: 1000
    window: 1h
    adaptive: true
";

#[tokio::test]
async fn invalid_utf8_over_grpc_fails_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("edge.yaml"),
        "domain: edge\ndescriptors:\n  - key: remote_address\n    \
         rate_limit: {unit: hour, requests_per_unit: 1000}\n",
    )
    .expect("write");
    let yaml = format!("envoy:\n  paths: [\"{}\"]\n{SERVER_YAML}", dir.path().display());
    let server = SluiceServer::start(&yaml, None).await;
    let mut client = server.client().await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.grpc_addr))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);

    // The raw path itself works: a valid message passes and is answered.
    let answer = raw_call(&mut grpc, CHECK, check_with("user", "warm-up").encode_to_vec())
        .await
        .expect("a valid raw Check is answered");
    let answer = pb::CheckResponse::decode(&answer[..]).expect("a CheckResponse");
    assert!(answer.decisions[0].allowed);
    assert_eq!(answer.decisions[0].tiers.iter().find(|t| t.tier == "per_ip").expect("per_ip").remaining, 999);

    let mut sent = 0;
    for bad in NOT_UTF8 {
        for field in CHECK_FIELDS {
            for (path, body) in
                [(CHECK, spliced(encoded_check(field), bad)), (REPORT, spliced(encoded_report(field), bad))]
            {
                let status = raw_call(&mut grpc, path, body).await.expect_err("not UTF-8 must fail");
                assert!(
                    matches!(status.code(), Code::Internal | Code::InvalidArgument),
                    "{path} with {bad:?} in {field}: {status:?}"
                );
                sent += 1;
            }
        }
        for field in ENVOY_FIELDS {
            let status = raw_call(&mut grpc, SHOULD_RATE_LIMIT, spliced(encoded_envoy(field), bad))
                .await
                .expect_err("not UTF-8 must fail");
            assert!(
                matches!(status.code(), Code::Internal | Code::InvalidArgument),
                "ShouldRateLimit with {bad:?} in {field}: {status:?}"
            );
            sent += 1;
        }
    }
    assert_eq!(sent, NOT_UTF8.len() * (2 * CHECK_FIELDS.len() + ENVOY_FIELDS.len()));

    // Still serving, and none of the refused calls counted: the probe address has used one unit
    // (the valid raw call above), so this check leaves 998.
    let d = common::check(&mut client, common::request(&[("ip", PROBE_IP)])).await;
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.tiers.iter().find(|t| t.tier == "per_ip").expect("per_ip").remaining, 998, "{d:?}");
    let envoy = raw_call(&mut grpc, SHOULD_RATE_LIMIT, envoy_with("entry value", PROBE_IP).encode_to_vec())
        .await
        .expect("a valid ShouldRateLimit is answered");
    let envoy = envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse::decode(&envoy[..])
        .expect("a RateLimitResponse");
    assert_eq!(envoy.statuses[0].limit_remaining, 999, "{envoy:?}");
}

/// Two `(ip, user)` pairs, and whether they must share a counter.
type NearMiss = ((&'static str, &'static str), (&'static str, &'static str), bool);

/// Near misses over the wire: each pair differs only in where the bytes fall or in an escape
/// written by hand, so each gets its own counter of one; only the two spellings of one address
/// share theirs.
#[tokio::test]
async fn near_miss_values_get_their_own_counters_over_grpc() {
    let yaml = "tiers:\n  - name: pair\n    key: [ip, user, username]\n    limit: 1\n    window: 1h\n";
    let server = SluiceServer::start(yaml, None).await;
    let mut client = server.client().await;
    let pairs: &[NearMiss] = &[
        (("a|b", "c"), ("a", "b|c"), false),
        (("a:b", "c"), ("a", "b:c"), false),
        (("a}", "b"), ("a", "}b"), false),
        (("a{", "b"), ("a", "{b"), false),
        (("%7C", "x"), ("|", "x"), false),
        (("%0A", "x"), ("\n", "x"), false),
        (("\0", "x"), ("%00", "x"), false),
        (("%", "x"), ("%25", "x"), false),
        (("x", "a\\|b"), ("x\\", "a|b"), false),
        (("::ffff:192.0.2.1", "u"), ("192.0.2.1", "u"), true),
        (("2001:DB8:0::1", "u"), ("2001:db8::1", "u"), true),
    ];
    for (i, ((ip_a, user_a), (ip_b, user_b), shared)) in pairs.iter().enumerate() {
        let username = format!("pair-{i}");
        let req =
            |ip: &str, user: &str| common::request(&[("ip", ip), ("user", user), ("username", &username)]);
        assert!(common::check(&mut client, req(ip_a, user_a)).await.allowed, "pair {i}: first");
        let second = common::check(&mut client, req(ip_b, user_b)).await;
        assert_eq!(!second.allowed, *shared, "pair {i}: ({ip_b:?}, {user_b:?}) after ({ip_a:?}, {user_a:?})");
        assert!(
            !common::check(&mut client, req(ip_a, user_a)).await.allowed,
            "pair {i}: its own counter is used up"
        );
    }
}
