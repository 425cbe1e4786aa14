//! What every fuzz target checks, one function per target, each taking the raw input bytes.
//!
//! The same functions serve libFuzzer (`fuzz/fuzz_targets/*.rs`, one line each) and the plain
//! `cargo test` in `tests/fuzz_regressions.rs`, which includes this file by path and replays the
//! seed corpora and every crash ever found. So this file uses nothing but the main crate's own
//! dependencies (`sluice`, `prost`, `envoy-types`, `tonic`, `config`, `serde_json`, std) and
//! decodes structured inputs with its own small reader instead of the `arbitrary` crate, which
//! the main crate does not depend on.
//!
//! A function panics when a property fails (that is the crash libFuzzer reports) and otherwise
//! says what became of the input, so that the replay can assert that the seeds still reach both
//! the accepting and the rejecting paths.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use prost::Message as _;
use sluice::algorithm::{Algorithm, Verdict, admits};
use sluice::api::pb;
use sluice::check::{Answer, Source};
use sluice::config::{InputLimits, Settings};
use sluice::decision::Decision;
use sluice::envoy::domain::Domain;
use sluice::request::{Attr, Attributes};
use sluice::tier::{Limit, Rule, Tier};

/// What became of one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// The parser accepted it and every property held.
    Accepted,
    /// The parser refused it, with this message (which names the field or key at fault).
    Rejected(String),
    /// Nothing to check: not an input this parser would see (not a protobuf message, not a header
    /// value, a configuration naming device files), or nothing to compare (no tier matched, no
    /// tier counted).
    Skipped,
}

/// `sluice.v1.CheckRequest` bytes: decoded as the gRPC layer does, then checked and converted
/// by `api::native::to_requests`. Accepted requests are run through the built-in tiers' matching
/// and keys, and the threat signals, as the engine would.
pub fn native_request(data: &[u8]) -> Handled {
    let Ok(request) = pb::CheckRequest::decode(data) else { return Handled::Skipped };
    let count = request.requests.len();
    let limits = InputLimits::default();
    match sluice::api::native::to_requests(request.requests, limits) {
        Ok(requests) => {
            assert!((1..=limits.max_batch).contains(&count), "{count} requests accepted");
            assert_eq!(requests.len(), count, "one engine request per entry");
            let settings = default_settings();
            let adaptive = sluice::algorithm::adaptive::Adaptive::default();
            for r in &requests {
                assert!(r.cost >= 1, "cost {} accepted", r.cost);
                assert!(r.tiers.len() <= limits.max_named_tiers);
                assert!(r.tiers.iter().all(|t| t.len() <= limits.max_value_bytes));
                let a = &r.attributes;
                for value in [&a.ip, &a.user, &a.endpoint, &a.method, &a.user_agent, &a.client_tier] {
                    assert!(value.len() <= limits.max_value_bytes, "a {}-byte value accepted", value.len());
                }
                assert!(a.extra.len() <= limits.max_extra);
                for (name, value) in &a.extra {
                    assert!(!name.is_empty() && name.len() <= limits.max_value_bytes);
                    assert!(value.len() <= limits.max_value_bytes);
                    assert!(!Attr::BUILT_IN.contains(&name.as_str()), "extra attribute {name:?} accepted");
                }
                for tier in settings.tiers.all() {
                    if tier.matches(a) {
                        check_tier_key(tier, a, &tier.key_for(a));
                    }
                }
                let _ = settings.tiers.signals.client_factors(&adaptive, a);
                check_reputation_keys(a);
            }
            Handled::Accepted
        }
        Err(status) => {
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
            assert!(status.message().starts_with("requests"), "no field named: {:?}", status.message());
            Handled::Rejected(status.message().to_owned())
        }
    }
}

/// `envoy.service.ratelimit.v3.RateLimitRequest` bytes: decoded, checked and converted by
/// `api::envoy::to_domain`; accepted descriptors are matched against a domain with exact,
/// wildcard, key-only and nested descriptors, and every entry's key is tried as a wildcard
/// pattern against its value, compared with a reference matcher.
pub fn envoy_request(data: &[u8]) -> Handled {
    use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
    let Ok(request) = RateLimitRequest::decode(data) else { return Handled::Skipped };
    let count = request.descriptors.len();
    let limits = InputLimits::default();
    match sluice::api::envoy::to_domain(request, limits) {
        Ok(converted) => {
            assert!(!converted.domain.is_empty() && converted.domain.len() <= limits.max_value_bytes);
            assert!((1..=limits.max_descriptors).contains(&count), "{count} descriptors accepted");
            assert_eq!(converted.descriptors.len(), count);
            assert!(converted.hits >= 1, "hits {}", converted.hits);
            let domain = sample_domain();
            for d in &converted.descriptors {
                assert!(d.entries.len() <= limits.max_entries);
                for (key, value) in &d.entries {
                    assert!(!key.is_empty() && key.len() <= limits.max_value_bytes);
                    // A value of any length is counted, under its digest when long.
                    assert!(
                        sluice::envoy::domain::short(value).len() <= sluice::envoy::domain::LONG_VALUE_BYTES
                    );
                    assert_eq!(
                        sluice::envoy::domain::wildcard_match(key, value),
                        glob(key.as_bytes(), value.as_bytes()),
                        "pattern {key:?}, value {value:?}"
                    );
                }
                if let Some((_, unit)) = d.limit_override {
                    let _ = sluice::envoy::unit_window_ms(unit);
                }
                if let Some(m) = domain.matches(&d.entries) {
                    assert!(m.node.rule.is_some(), "a match without a rule");
                    assert_eq!(m.identity.len(), d.entries.len(), "one identity part per entry");
                    assert!(d.entries.iter().zip(&m.identity).all(|((k, _), (ik, _))| k == ik));
                }
            }
            Handled::Accepted
        }
        Err(status) => {
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
            let message = status.message();
            assert!(
                message.starts_with("domain: ") || message.starts_with("descriptors"),
                "no field named: {message:?}"
            );
            Handled::Rejected(message.to_owned())
        }
    }
}

/// Text, read both as a Sluice configuration (`config::parse`, with an empty environment) and as
/// an envoyproxy/ratelimit domain file (`config::envoy_file::parse`). Every error line names the
/// origin, and what loads respects the bounds the rest of Sluice relies on (tier and rule names
/// fit in keys and headers, limits are at least 1).
pub fn config(data: &[u8]) -> Handled {
    let text = String::from_utf8_lossy(data);
    let descriptor = match sluice::config::envoy_file::parse(&text, "fuzz") {
        Ok(domain) => {
            assert!(!domain.name.is_empty(), "a domain without a name loaded");
            for entries in
                [&[("key", "value")][..], &[("remote_address", "10.0.0.1")], &[("a", "b"), ("c", "d")]]
            {
                let entries: Vec<(String, String)> =
                    entries.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
                if let Some(m) = domain.matches(&entries) {
                    let rule = m.node.rule.as_ref().expect("a match has a rule");
                    // The name goes into the RateLimit headers as a quoted string.
                    let name = &rule.name;
                    assert!(
                        name.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\'),
                        "{name:?}"
                    );
                }
            }
            Handled::Accepted
        }
        Err(problems) => {
            assert!(!problems.is_empty(), "rejected without a problem");
            for p in &problems {
                assert!(p.starts_with("fuzz: "), "problem without its origin: {p:?}");
            }
            Handled::Rejected(problems.join("\n"))
        }
    };
    if reads_device_files(&text) {
        return Handled::Skipped;
    }
    let native = match sluice::config::parse(&text, "fuzz", Some(HashMap::new())) {
        Ok(settings) => {
            check_settings(&settings);
            Handled::Accepted
        }
        Err(e) => {
            let lines = e.lines();
            assert!(!lines.is_empty(), "rejected without a problem: {e:?}");
            for line in &lines {
                assert!(line.starts_with("fuzz: "), "problem without its origin: {line:?}");
            }
            Handled::Rejected(lines.join("\n"))
        }
    };
    match (native, descriptor) {
        (Handled::Rejected(a), Handled::Rejected(b)) => Handled::Rejected(format!("{a}\n{b}")),
        _ => Handled::Accepted,
    }
}

/// Attribute values in, a tier's counter key and the reputation keys out. Two requests are keyed
/// in one tier: the keys must keep the hash tag intact (`sluice:{<tier>:...}`, one `{`, one `}`,
/// last), decode back to the values (IP addresses in their one spelling), and differ exactly when
/// the values differ.
pub fn key(data: &[u8]) -> Handled {
    let mut input = Input::new(data);
    let name = input.tier_name(64);
    let key: Vec<Attr> = (0..input.byte() % 5).map(|_| input.attr()).collect();
    let tier = Tier::new(&name, Vec::new(), key, Rule::Exempt);
    let a = input.attributes(&tier.key);
    let b = input.attributes(&tier.key);
    for attrs in [&a, &b] {
        check_reputation_keys(attrs);
    }
    let (Some(ka), Some(kb)) = (keyed(&tier, &a), keyed(&tier, &b)) else { return Handled::Skipped };
    let same = tier.key.iter().all(|attr| identity_value(attr, &a) == identity_value(attr, &b));
    assert_eq!(ka == kb, same, "keys {ka:?} and {kb:?} for {a:?} and {b:?}");
    let (ra, rb) = (sluice::request::reputation_keys(&a), sluice::request::reputation_keys(&b));
    if !a.user.is_empty() && !b.user.is_empty() {
        assert_eq!(ra.last() == rb.last(), a.user == b.user, "user reputation keys {ra:?} and {rb:?}");
    }
    Handled::Accepted
}

/// A decision built from a store's verdicts for up to four tiers (or none), and its headers:
/// every header value is visible ASCII and spaces, and its numbers are those of the tiers and the
/// deciding verdict.
pub fn headers(data: &[u8]) -> Handled {
    let mut input = Input::new(data);
    let n = usize::from(input.byte() % 5);
    if n == 0 {
        let tier: Option<Arc<str>> = input.flag().then(|| input.tier_name(64).into());
        let d = Decision::uncounted(tier);
        assert!(d.headers().is_empty(), "headers without a counted tier: {:?}", d.headers());
        assert!(sluice::api::native::to_proto(d).headers.is_empty());
        return Handled::Skipped;
    }
    let mut tiers = Vec::with_capacity(n);
    let mut verdicts = Vec::with_capacity(n);
    for i in 0..n {
        // The index keeps names distinct; 2 + 62 characters is the longest a configuration allows.
        let name: Arc<str> = format!("t{i}{}", input.tier_name(62)).into();
        let algorithm = if input.flag() { Algorithm::SlidingLog } else { Algorithm::SlidingWindow };
        let limit =
            Limit { algorithm, limit: input.number(), window_ms: input.number(), cost: input.number() };
        tiers.push((name, limit, input.flag()));
        verdicts.push(Verdict {
            allowed: input.flag(),
            remaining: input.number(),
            retry_after_ms: input.number(),
            reset_after_ms: input.number(),
            limit: input.number(),
            score: input.byte(),
            factors: input.byte(),
        });
    }
    let admitted = admits(verdicts.iter().zip(&tiers).map(|(v, (_, _, shadow))| (v, *shadow, false)));
    let source = [Source::Redis, Source::Local, Source::Fallback][usize::from(input.byte() % 3)];
    let d = Decision::counted(tiers.clone(), Answer { admitted, verdicts: verdicts.clone(), source });

    assert_eq!(d.allowed, admitted);
    assert_eq!(d.statuses.len(), n);
    let deciding_name = d.tier.as_deref().expect("a counted decision has a deciding tier");
    let deciding = tiers.iter().position(|(name, _, _)| &**name == deciding_name).expect("one of the tiers");
    let enforcing: Vec<usize> = (0..n).filter(|&i| !tiers[i].2).collect();
    if admitted {
        let least = enforcing.iter().map(|&i| verdicts[i].remaining).min().unwrap_or(verdicts[0].remaining);
        assert_eq!(d.remaining, least, "an admitted request is decided by the least remaining");
        assert_eq!(d.retry_after_ms, 0);
    } else {
        // Every enforcing tier's wait counts, an allowing one's too: a tier that counted a denied
        // request's units may hold the retry (see `Verdict::after_counting`).
        let longest = enforcing.iter().map(|&i| verdicts[i].retry_after_ms).max();
        assert_eq!(
            Some(d.retry_after_ms),
            longest,
            "a denial waits for the longest wait of any enforcing tier"
        );
    }
    assert_eq!(d.remaining, verdicts[deciding].remaining);
    assert_eq!(d.reset_after_ms, verdicts[deciding].reset_after_ms);

    let headers = d.headers();
    for (name, value) in &headers {
        assert!(!name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        assert!(value.bytes().all(|b| b == b' ' || b.is_ascii_graphic()), "{name}: {value:?}");
        assert!(!value.starts_with(' ') && !value.ends_with(' '), "{name}: {value:?}");
    }
    let value = |wanted: &str| headers.iter().find(|(name, _)| *name == wanted).map(|(_, v)| v.as_str());
    let policies = value("RateLimit-Policy").expect("RateLimit-Policy");
    let policies: Vec<&str> = policies.split(", ").collect();
    assert_eq!(policies.len(), n, "one policy per tier checked");
    for (i, policy) in policies.iter().enumerate() {
        let (name, numbers) = quoted(policy);
        assert_eq!(name, &*tiers[i].0);
        assert_eq!(numbers, [("q", verdicts[i].limit.max(1)), ("w", secs(tiers[i].1.window_ms))], "{policy}");
    }
    let (name, numbers) = quoted(value("RateLimit").expect("RateLimit"));
    assert_eq!(name, deciding_name);
    assert_eq!(
        numbers,
        [("r", verdicts[deciding].remaining), ("t", secs(verdicts[deciding].reset_after_ms))]
    );
    match value("Retry-After") {
        None => assert!(admitted, "a denial without Retry-After"),
        Some(retry) => {
            assert!(!admitted, "Retry-After on an admitted request");
            assert_eq!(retry.parse::<u64>().ok(), Some(secs(d.retry_after_ms)));
        }
    }
    assert_eq!(headers.len(), if admitted { 2 } else { 3 });
    let proto = sluice::api::native::to_proto(d);
    assert_eq!(proto.headers.len(), headers.len());
    Handled::Accepted
}

/// A `grpc-timeout` header value (any bytes a header may hold): `api::deadline` gives a deadline
/// exactly when the value is 1 to 8 digits and a unit (H, M, S, m, u, n), and then it is that long
/// after the moment of the call.
pub fn grpc_timeout(data: &[u8]) -> Handled {
    let Ok(value) = tonic::metadata::MetadataValue::try_from(data) else { return Handled::Skipped };
    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert("grpc-timeout", value);
    let before = std::time::Instant::now();
    let deadline = sluice::api::deadline(&metadata);
    let after = std::time::Instant::now();
    let expected = std::str::from_utf8(data).ok().and_then(|text| {
        let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
        let n: u64 = if (1..=8).contains(&digits.len()) { digits.parse().ok()? } else { return None };
        Some(match unit {
            "H" => std::time::Duration::from_secs(n * 3600),
            "M" => std::time::Duration::from_secs(n * 60),
            "S" => std::time::Duration::from_secs(n),
            "m" => std::time::Duration::from_millis(n),
            "u" => std::time::Duration::from_micros(n),
            "n" => std::time::Duration::from_nanos(n),
            _ => return None,
        })
    });
    match (deadline, expected) {
        (None, None) => Handled::Rejected(String::from_utf8_lossy(data).into_owned()),
        (Some(at), Some(timeout)) => {
            assert!(before + timeout <= at && at <= after + timeout, "{:?}: {timeout:?}", data);
            Handled::Accepted
        }
        (got, expected) => {
            panic!("grpc-timeout {:?}: got {got:?}, expected {expected:?}", String::from_utf8_lossy(data))
        }
    }
}

// ---- properties shared by several targets

/// A tier key: the tier's hash tag intact, the identity decoding back to the request's values.
fn check_tier_key(tier: &Tier, attrs: &Attributes, key: &str) {
    let prefix = format!("sluice:{{{}:", tier.name);
    let identity = key
        .strip_prefix(prefix.as_str())
        .and_then(|rest| rest.strip_suffix('}'))
        .unwrap_or_else(|| panic!("key {key:?} is not {prefix}...}}"));
    assert_eq!(key.matches('{').count(), 1, "key {key:?}");
    assert_eq!(key.matches('}').count(), 1, "key {key:?}");
    assert!(!key.chars().any(char::is_control), "key {key:?}");
    let parts: Vec<&str> = if tier.key.is_empty() { Vec::new() } else { identity.split('|').collect() };
    if tier.key.is_empty() {
        assert_eq!(identity, "", "an unkeyed tier has one counter");
    }
    assert_eq!(parts.len(), tier.key.len(), "key {key:?}");
    for (attr, part) in tier.key.iter().zip(parts) {
        assert_eq!(unescape(part), identity_value(attr, attrs).into_bytes(), "key {key:?}, {attr:?}");
    }
}

/// `sluice:{rep}:ip:<ip>` and `sluice:{rep}:user:<user>`, for the ones present, in that order.
fn check_reputation_keys(attrs: &Attributes) {
    let keys = sluice::request::reputation_keys(attrs);
    let mut expected = Vec::new();
    if !attrs.ip.is_empty() {
        expected.push(("sluice:{rep}:ip:", canonical_ip(&attrs.ip)));
    }
    if !attrs.user.is_empty() {
        expected.push(("sluice:{rep}:user:", attrs.user.clone()));
    }
    assert_eq!(keys.len(), expected.len(), "{keys:?}");
    for (key, (prefix, value)) in keys.iter().zip(expected) {
        let escaped = key.strip_prefix(prefix).unwrap_or_else(|| panic!("{key:?} is not {prefix}..."));
        assert_eq!(key.matches('{').count(), 1, "{key:?}");
        assert_eq!(key.matches('}').count(), 1, "{key:?}");
        assert!(!escaped.contains('|') && !key.chars().any(char::is_control), "{key:?}");
        assert_eq!(unescape(escaped), value.into_bytes(), "{key:?}");
    }
}

/// The value a key must encode for an attribute: as given, except that an IP address has one
/// spelling (`2001:DB8:0::1` is `2001:db8::1`, `::ffff:192.0.2.1` is `192.0.2.1`).
fn identity_value(attr: &Attr, attrs: &Attributes) -> String {
    let value = attrs.get(attr).unwrap_or_default();
    if *attr == Attr::Ip { canonical_ip(value) } else { value.to_owned() }
}

fn canonical_ip(value: &str) -> String {
    value.parse::<IpAddr>().map_or_else(|_| value.to_owned(), |ip| ip.to_canonical().to_string())
}

/// Undoes the key escaping: `%XX` (upper-case hex) is a byte; every other character stands for
/// itself and must be one that needs no escape.
fn unescape(escaped: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(escaped.len());
    let mut chars = escaped.chars();
    while let Some(c) = chars.next() {
        if c == '%' {
            let hex: String = chars.by_ref().take(2).collect();
            let upper =
                hex.len() == 2 && hex.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b));
            assert!(upper, "a bad escape %{hex} in {escaped:?}");
            out.push(u8::from_str_radix(&hex, 16).expect("two hex digits"));
        } else {
            assert!(!matches!(c, '|' | '{' | '}') && !c.is_control(), "{c:?} unescaped in {escaped:?}");
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        }
    }
    out
}

/// The tier's key for a request it matches, checked; `None` when it does not match.
fn keyed(tier: &Tier, attrs: &Attributes) -> Option<String> {
    let matches = tier.matches(attrs);
    assert_eq!(matches, tier.key.iter().all(|a| attrs.get(a).is_some()), "a tier without conditions");
    matches.then(|| {
        let key = tier.key_for(attrs);
        check_tier_key(tier, attrs, &key);
        key
    })
}

/// What a loaded configuration must hold for the rest of Sluice.
fn check_settings(settings: &Settings) {
    for tier in settings.tiers.all() {
        let name = &*tier.name;
        assert!(
            (1..=64).contains(&name.len())
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
            "tier name {name:?} loaded"
        );
        if let Rule::Limited(l) = &tier.rule {
            assert!(l.limit >= 1 && l.window_ms >= 1 && (1..=l.limit).contains(&l.cost), "{name}: {l:?}");
            assert!(u128::from(l.limit) * u128::from(l.window_ms) <= 1 << 50, "{name}: {l:?}");
        }
    }
    let limits = settings.limits;
    for bound in [limits.max_batch, limits.max_value_bytes, limits.max_named_tiers, limits.max_descriptors] {
        assert!(bound >= 1, "{limits:?}");
    }
    assert!(settings.replicas >= 1 && settings.local_max_keys >= 1);
}

/// Whether loading the text would read a device or kernel file (`/dev/zero` as a TLS key never
/// ends, a FIFO blocks): such inputs are skipped. Paths are looked for where Sluice takes them (a
/// key ending in `_file`, or `paths`) in the tree the config crate builds, so that dotted keys and
/// YAML escapes are already resolved; only relative paths without `..` are let through.
fn reads_device_files(text: &str) -> bool {
    let built = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Yaml))
        .build()
        .and_then(|c| c.try_deserialize::<serde_json::Value>());
    built.is_ok_and(|tree| names_risky_path(&tree))
}

fn names_risky_path(v: &serde_json::Value) -> bool {
    let outside = |path: &str| {
        path.starts_with('/') || path.starts_with('~') || path.split(['/', '\\']).any(|part| part == "..")
    };
    let risky = |v: &serde_json::Value| match v {
        serde_json::Value::String(path) => outside(path),
        serde_json::Value::Array(items) => items.iter().any(|i| i.as_str().is_none_or(outside)),
        serde_json::Value::Null | serde_json::Value::Bool(_) | serde_json::Value::Number(_) => false,
        serde_json::Value::Object(_) => true,
    };
    match v {
        serde_json::Value::Object(map) => map
            .iter()
            .any(|(k, v)| ((k.ends_with("_file") || k == "paths") && risky(v)) || names_risky_path(v)),
        serde_json::Value::Array(items) => items.iter().any(names_risky_path),
        _ => false,
    }
}

/// A reference wildcard matcher: `*` matches any run of bytes, by plain backtracking.
fn glob(pattern: &[u8], value: &[u8]) -> bool {
    let (mut p, mut v) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while v < value.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, v));
            p += 1;
        } else if p < pattern.len() && pattern[p] == value[v] {
            p += 1;
            v += 1;
        } else if let Some((sp, sv)) = star {
            p = sp + 1;
            v = sv + 1;
            star = Some((sp, sv + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

fn secs(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

/// `"name";a=1;b=2` -> the name and the numbers.
fn quoted(item: &str) -> (&str, Vec<(&str, u64)>) {
    let rest = item.strip_prefix('"').unwrap_or_else(|| panic!("{item:?} does not start with a quote"));
    let (name, params) = rest.split_once('"').unwrap_or_else(|| panic!("{item:?} has no closing quote"));
    let numbers = params
        .split(';')
        .skip(1)
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or_else(|| panic!("{p:?} in {item:?}"));
            (k, v.parse().unwrap_or_else(|_| panic!("{v:?} in {item:?} is not a number")))
        })
        .collect();
    (name, numbers)
}

/// The built-in configuration (examples/sluice.yaml), loaded once.
fn default_settings() -> &'static Settings {
    static SETTINGS: OnceLock<Settings> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        sluice::config::parse(sluice::config::DEFAULT_YAML, "built-in default", Some(HashMap::new()))
            .expect("the built-in configuration loads")
    })
}

/// A domain with every kind of descriptor node, loaded once.
fn sample_domain() -> &'static Domain {
    static DOMAIN: OnceLock<Domain> = OnceLock::new();
    DOMAIN.get_or_init(|| {
        sluice::config::envoy_file::parse(SAMPLE_DOMAIN, "sample").expect("the sample domain loads")
    })
}

const SAMPLE_DOMAIN: &str = "
domain: edge
descriptors:
  - key: remote_address
    rate_limit: {unit: second, requests_per_unit: 10}
  - key: remote_address
    value: 10.0.0.1
    rate_limit: {unit: minute, requests_per_unit: 0}
  - key: path
    value: /api/*/items/*
    rate_limit: {unit: hour, requests_per_unit: 100, name: items}
  - key: path
    value: '*.pdf'
    share_threshold: true
    rate_limit: {unit: day, requests_per_unit: 5, replaces: [{name: items}]}
  - key: tenant
    value: acme
    descriptors:
      - key: user
        value_to_metric: true
        rate_limit: {unit: Minute, requests_per_unit: 300}
      - key: route
        detailed_metric: true
        descriptors:
          - key: method
            value: POST
            rate_limit: {unlimited: true}
  - key: login
    rate_limit: {unit: minute, requests_per_unit: 5}
    sluice: {window: 15m, algorithm: sliding_log, penalty: {violations: 5, period: 15m, base: 1m, factor: 2, max: 1h}}
";

/// Reads structured values from fuzz bytes; past the end, every read is zero.
struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    fn byte(&mut self) -> u8 {
        let (&first, rest) = self.data.split_first().unwrap_or((&0, &[]));
        self.data = rest;
        first
    }

    fn flag(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    /// One tag byte picks the width (1, 2, 4 or 8 bytes, little-endian), so that small and huge
    /// numbers are both easy to reach.
    fn number(&mut self) -> u64 {
        let width = 1 << (self.byte() % 4);
        (0..width).fold(0u64, |n, i| n | u64::from(self.byte()) << (8 * i))
    }

    fn bytes(&mut self, len: usize) -> &'a [u8] {
        let (taken, rest) = self.data.split_at(len.min(self.data.len()));
        self.data = rest;
        taken
    }

    /// A length byte, then that many bytes (invalid UTF-8 becomes U+FFFD).
    fn text(&mut self) -> String {
        let len = usize::from(self.byte());
        String::from_utf8_lossy(self.bytes(len)).into_owned()
    }

    /// A name a configuration accepts: 1 to `max` letters, digits, `_` or `-`.
    fn tier_name(&mut self, max: u8) -> String {
        const ALPHABET: &[u8; 64] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-";
        let len = usize::from(self.byte() % max) + 1;
        (0..len).map(|_| char::from(ALPHABET[usize::from(self.byte() % 64)])).collect()
    }

    fn attr(&mut self) -> Attr {
        match self.byte() % 7 {
            0 => Attr::Ip,
            1 => Attr::User,
            2 => Attr::Endpoint,
            3 => Attr::Method,
            4 => Attr::UserAgent,
            5 => Attr::ClientTier,
            _ => Attr::Extra(self.text()),
        }
    }

    /// Attributes with every field read; each free-form attribute a key names gets a value, and a
    /// few more with names of their own.
    fn attributes(&mut self, key: &[Attr]) -> Attributes {
        let mut a = Attributes {
            ip: self.text(),
            user: self.text(),
            endpoint: self.text(),
            method: self.text(),
            user_agent: self.text(),
            client_tier: self.text(),
            extra: HashMap::new(),
        };
        for attr in key {
            if let Attr::Extra(name) = attr {
                a.extra.insert(name.clone(), self.text());
            }
        }
        for _ in 0..self.byte() % 3 {
            a.extra.insert(self.text(), self.text());
        }
        a
    }
}

/// Bytes as a short run of hostile requests, Envoy's and sluice.v1's, decided by a fresh in-process
/// engine (`Engine::check_batch` and `envoy::decide`, the paths the gRPC services take). Values
/// come from a small vocabulary, so that repeats within a request and shared wildcards are common,
/// and costs from the boundaries (0, 1, the limit, one past it, `u64::MAX`). What must hold:
/// - every call returns within a few seconds (a watchdog aborts the process otherwise: a lock taken
///   twice freezes a thread, which no timeout on that thread could see);
/// - within the run (less than a window) no counter admits more units than its limit;
/// - a descriptor repeated in one request gets one status;
/// - a native cost of 0 or above the tier's limit is refused naming `cost`, and counts nothing;
/// - afterwards a look at every counter shows exactly the limit less what the documented rule
///   consumed: admitted requests' units, and every request's units where denied hits count.
pub fn decide(data: &[u8]) -> Handled {
    use sluice::engine::{Engine, EngineSettings};
    use sluice::store::local::LocalStore;
    thread_local! {
        // One engine a thread, emptied before each run: building one (compiling the tiers'
        // patterns) costs far more than a run.
        static ENGINE: (Engine, Arc<LocalStore>) = {
            let tiers = sluice::config::parse(DECIDE_TIERS, "fuzz", Some(HashMap::new()))
                .expect("the fuzz tiers load")
                .tiers;
            let store = Arc::new(LocalStore::default());
            let settings = EngineSettings { events_max_len: 0, over_limit_max_keys: 100, max_in_flight: 4 };
            (Engine::new(tiers, store.clone(), settings), store)
        };
    }
    ENGINE.with(|(engine, store)| decide_on(engine, store, data))
}

fn decide_on(
    engine: &sluice::engine::Engine,
    store: &sluice::store::local::LocalStore,
    data: &[u8],
) -> Handled {
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::RateLimitOverride;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
        RateLimitDescriptor, rate_limit_descriptor,
    };
    use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
    use sluice::check::Mode;

    store.sweep(u64::MAX);
    engine.over_limit().clear();
    let mut input = Input::new(data);
    let count_denied = input.flag();
    let mut by_name = HashMap::new();
    by_name.insert("fuzz".to_owned(), decide_domain().clone());
    engine.replace_domains(sluice::envoy::Domains { by_name, count_denied, ..Default::default() });

    // Per counter: (the limit its final look sees, units admitted, units consumed by the documented
    // rule, the highest limit it was asked with).
    let mut counters: HashMap<String, (u64, u64, u64, u64)> = HashMap::new();
    let limits = InputLimits::default();
    for step in 0..usize::from(input.byte() % 12) + 1 {
        if input.flag() {
            // sluice.v1: a batch of requests on the per_user (10) and per_ip_log (5) tiers.
            let n = usize::from(input.byte() % 4) + 1;
            let requests: Vec<pb::RateRequest> = (0..n)
                .map(|_| pb::RateRequest {
                    attributes: Some(pb::Attributes {
                        user: VOCABULARY[usize::from(input.byte()) % 3].to_owned(),
                        ip: VOCABULARY[usize::from(input.byte()) % 3].to_owned(),
                        ..Default::default()
                    }),
                    cost: if input.flag() { Some(boundary(&mut input, 10)) } else { None },
                    ..Default::default()
                })
                .collect();
            let refused = match sluice::api::native::to_requests(requests.clone(), limits) {
                Err(status) => Some(status.message().to_owned()),
                Ok(converted) => {
                    let results =
                        watched(|| runtime().block_on(engine.check_batch(&converted, Mode::Consume, None)));
                    // A refused entry refuses the batch: nothing in it counts (the final looks check).
                    let decisions = match results {
                        Err((i, e)) => {
                            let cost = requests[i].cost.unwrap_or(1);
                            assert!(cost > 5 && e.to_string().contains("cost"), "step {step}: {e}");
                            Vec::new()
                        }
                        Ok(decisions) => decisions,
                    };
                    for (r, d) in requests.iter().zip(decisions) {
                        let a = r.attributes.as_ref().expect("set above");
                        let cost = r.cost.unwrap_or(1);
                        let keys = [("per_user", &a.user, 10), ("per_ip_log", &a.ip, 5)];
                        for (tier, value, limit) in keys.into_iter().filter(|(_, v, _)| !v.is_empty()) {
                            let c = counters.entry(format!("{tier}|{value}")).or_insert((limit, 0, 0, limit));
                            if d.allowed {
                                c.1 += cost;
                                c.2 += cost;
                            }
                            assert!(c.1 <= c.0, "step {step}: {tier} {value:?} admitted {} of {}", c.1, c.0);
                        }
                    }
                    None
                }
            };
            if let Some(message) = refused {
                assert!(message.contains("cost") || message.contains("requests"), "{message}");
            }
            continue;
        }
        let n = usize::from(input.byte() % 5) + 1;
        let descriptors: Vec<RateLimitDescriptor> = (0..n)
            .map(|_| {
                let (key, limit) = DECIDE_KEYS[usize::from(input.byte()) % DECIDE_KEYS.len()];
                let value = match key {
                    "path" => ["/f/a", "/f/b", "/g"][usize::from(input.byte()) % 3],
                    _ => VOCABULARY[usize::from(input.byte()) % 3],
                };
                let limit_override = input.byte().is_multiple_of(8).then(|| RateLimitOverride {
                    requests_per_unit: u32::from(input.byte() % 4),
                    unit: i32::from(input.byte() % 8),
                });
                let override_limit =
                    limit_override.as_ref().map_or(limit, |o| u64::from(o.requests_per_unit));
                RateLimitDescriptor {
                    entries: vec![rate_limit_descriptor::Entry { key: key.into(), value: value.into() }],
                    limit: limit_override,
                    hits_addend: input.flag().then(|| envoy_types::pb::google::protobuf::UInt64Value {
                        value: boundary(&mut input, override_limit),
                    }),
                    ..Default::default()
                }
            })
            .collect();
        let request = RateLimitRequest {
            domain: "fuzz".into(),
            descriptors: descriptors.clone(),
            hits_addend: u32::from(input.byte() % 3),
        };
        let converted = match sluice::api::envoy::to_domain(request, limits) {
            Ok(c) => c,
            Err(status) => return Handled::Rejected(status.message().to_owned()),
        };
        let statuses = watched(|| {
            runtime().block_on(engine.should_rate_limit("fuzz", &converted.descriptors, converted.hits, None))
        })
        .expect("the in-process store never fails")
        .statuses;
        let over = statuses.iter().any(|s| s.over());
        // One counter per (key, value) or per shared wildcard. An override counts in the file's
        // counter for the same entries when the file's limit has its unit and no `sluice:` options
        // (ip: minutes, path /f/*: hours), else in one of its entries and unit.
        // Answers the counter, the descriptor's own limit, the limit a final look sees (the
        // file's, when it has one) and whether denied hits count.
        let counter = |d: &RateLimitDescriptor| -> Option<(String, u64, u64, bool)> {
            let e = &d.entries[0];
            if let Some(o) = &d.limit {
                const MINUTE: i32 = 2;
                const HOUR: i32 = 3;
                sluice::envoy::unit_window_ms(o.unit)?;
                let rate = u64::from(o.requests_per_unit);
                return Some(match (e.key.as_str(), e.value.as_str(), o.unit) {
                    ("ip", v, MINUTE) => (format!("ip|{v}"), rate, 10, true),
                    ("path", "/f/a" | "/f/b", HOUR) => ("path|/f/*".to_owned(), rate, 7, true),
                    (k, v, unit) => (format!("override|{k}|{v}|{unit}"), rate, rate, true),
                });
            }
            let (_, limit) = DECIDE_KEYS.iter().find(|(k, _)| *k == e.key)?;
            match (e.key.as_str(), e.value.as_str()) {
                ("path", "/g") => None,
                ("path", _) => Some(("path|/f/*".to_owned(), *limit, *limit, true)),
                // Only sliding-window descriptors without a penalty count denied hits.
                ("pen", v) => Some((format!("pen|{v}"), *limit, *limit, false)),
                ("login", v) => Some((format!("login|{v}"), *limit, *limit, false)),
                (k, v) => Some((format!("{k}|{v}"), *limit, *limit, true)),
            }
        };
        let mut seen: HashMap<String, &sluice::envoy::Status> = HashMap::new();
        for (d, (status, desc)) in converted.descriptors.iter().zip(statuses.iter().zip(&descriptors)) {
            let Some((key, limit, look, counts_denied)) = counter(desc) else { continue };
            // Repeats that count denied hits are decided one after another, each against its own
            // limit; others are one check, and so one status.
            let in_sequence = count_denied && counts_denied;
            if let Some(first) = seen.insert(key.clone(), status)
                && !in_sequence
            {
                let verdict = |s: &sluice::envoy::Status| match s {
                    sluice::envoy::Status::Limited { verdict, .. } => Some(*verdict),
                    _ => None,
                };
                assert_eq!(verdict(first), verdict(status), "step {step}: one counter, one status");
            }
            let hits = d.hits.unwrap_or(converted.hits);
            let c = counters.entry(key).or_insert((look, 0, 0, limit));
            c.3 = c.3.max(limit);
            if !over {
                c.1 = c.1.saturating_add(hits);
                assert!(c.1 <= c.3, "step {step}: {desc:?} admitted {} of at most {}", c.1, c.3);
            }
            if !over || (count_denied && counts_denied) {
                c.2 = c.2.saturating_add(hits);
            }
        }
    }

    // A look at each counter: the limit less what was consumed (the penalty's blocks aside).
    for (key, (limit, _, consumed, _)) in &counters {
        let (kind, rest) = key.split_once('|').expect("kind|...");
        if kind == "pen" {
            continue;
        }
        let remaining = match kind {
            "per_user" | "per_ip_log" => {
                let mut r =
                    sluice::engine::Request { cost: 1, tiers: vec![kind.to_owned()], ..Default::default() };
                if kind == "per_user" {
                    r.attributes.user = rest.to_owned()
                } else {
                    r.attributes.ip = rest.to_owned()
                }
                let d = watched(|| runtime().block_on(engine.check(&r, Mode::DryRun))).expect("a look");
                let status = d.statuses.first().expect("the named tier applies");
                if status.verdict.allowed { status.verdict.remaining + 1 } else { status.verdict.remaining }
            }
            _ => {
                let (entries, over) = if kind == "override" {
                    // Looked at with the rate it was first asked with.
                    let parts: Vec<&str> = rest.split('|').collect();
                    let unit: i32 = parts[2].parse().expect("unit");
                    (vec![(parts[0].to_owned(), parts[1].to_owned())], Some((*limit, unit)))
                } else if kind == "path" {
                    (vec![("path".to_owned(), "/f/a".to_owned())], None)
                } else {
                    (vec![(kind.to_owned(), rest.to_owned())], None)
                };
                let look = sluice::envoy::Descriptor { entries, limit_override: over, hits: Some(0) };
                let statuses = watched(|| {
                    runtime().block_on(engine.should_rate_limit("fuzz", std::slice::from_ref(&look), 1, None))
                })
                .expect("a look")
                .statuses;
                match &statuses[0] {
                    sluice::envoy::Status::Limited { verdict, .. } => verdict.remaining,
                    other => panic!("{key}: {other:?}"),
                }
            }
        };
        assert_eq!(remaining, limit.saturating_sub(*consumed), "{key}: consumed {consumed} of {limit}");
    }
    Handled::Accepted
}

const VOCABULARY: [&str; 3] = ["a", "b", ""];

/// The descriptor keys of the fuzz domain, with their limits.
const DECIDE_KEYS: [(&str, u64); 4] = [("ip", 10), ("path", 7), ("login", 5), ("pen", 3)];

const DECIDE_DOMAIN: &str = "
domain: fuzz
descriptors:
  - key: ip
    rate_limit: {unit: minute, requests_per_unit: 10}
  - key: path
    value: /f/*
    share_threshold: true
    rate_limit: {unit: hour, requests_per_unit: 7}
  - key: login
    rate_limit: {unit: minute, requests_per_unit: 5}
    sluice: {algorithm: sliding_log}
  - key: pen
    rate_limit: {unit: minute, requests_per_unit: 3}
    sluice: {penalty: {violations: 2, period: 1m, base: 10s, factor: 2, max: 1m}}
";

const DECIDE_TIERS: &str = "
tiers:
  - name: per_user
    key: [user]
    limit: 10
    window: 1h
  - name: per_ip_log
    key: [ip]
    limit: 5
    window: 1h
    algorithm: sliding_log
";

fn decide_domain() -> &'static Domain {
    static DOMAIN: OnceLock<Domain> = OnceLock::new();
    DOMAIN.get_or_init(|| {
        sluice::config::envoy_file::parse(DECIDE_DOMAIN, "fuzz").expect("the fuzz domain loads")
    })
}

/// A cost from the boundaries a client can pick: 0, 1, the limit, one past it, the type's maximum,
/// or any number.
fn boundary(input: &mut Input<'_>, limit: u64) -> u64 {
    match input.byte() % 6 {
        0 => 0,
        1 => 1,
        2 => limit,
        3 => limit.saturating_add(1),
        4 => u64::MAX,
        _ => input.number(),
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime")
    })
}

/// Runs `f` under a watchdog thread that aborts the process if it has not returned in 5 s.
fn watched<T>(f: impl FnOnce() -> T) -> T {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};
    static STARTED_MS: AtomicU64 = AtomicU64::new(0);
    static WATCHDOG: OnceLock<()> = OnceLock::new();
    let now_ms = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    };
    WATCHDOG.get_or_init(|| {
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(200));
                let started = STARTED_MS.load(Ordering::Acquire);
                if started != 0 && now_ms().saturating_sub(started) > 5_000 {
                    eprintln!("a decision has not returned in 5 s: a hang");
                    std::process::abort();
                }
            }
        });
    });
    STARTED_MS.store(now_ms(), Ordering::Release);
    let out = f();
    STARTED_MS.store(0, Ordering::Release);
    out
}
