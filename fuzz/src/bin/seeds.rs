//! Writes the seed corpora of the binary targets (`corpus/{native_request,envoy_request,key,headers}`):
//! a few well-formed and a few refused inputs each, so that fuzzing starts past the decoders.
//! The `config` and `grpc_timeout` seeds are plain text files, kept by hand. Inputs past a bound
//! are sized from `InputLimits::default()`: run this again when a default changes.
//!
//! ```sh
//! cargo run --manifest-path fuzz/Cargo.toml --no-default-features --bin seeds
//! ```
//!
//! The `key` and `headers` encodings mirror `checks::Input`: a byte is a byte, a flag its low bit, a
//! number a width tag (0: 1 byte, 1: 2, 2: 4, 3: 8, little-endian) then the bytes, a text a
//! length byte then the bytes.

use std::path::{Path, PathBuf};

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
    Entry, RateLimitOverride,
};
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use prost::Message;
use sluice::api::pb;

fn main() -> std::io::Result<()> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut written = 0;
    let mut write = |target: &str, name: &str, bytes: Vec<u8>| -> std::io::Result<()> {
        let dir: PathBuf = corpus.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(name), bytes)?;
        written += 1;
        Ok(())
    };
    for (name, request) in native_requests() {
        write("native_request", name, request.encode_to_vec())?;
    }
    for (name, request) in envoy_requests() {
        write("envoy_request", name, request.encode_to_vec())?;
    }
    for (name, bytes) in keys() {
        write("key", name, bytes)?;
    }
    for (name, bytes) in headers() {
        write("headers", name, bytes)?;
    }
    println!("wrote {written} seeds under {}", corpus.display());
    Ok(())
}

fn attributes(ip: &str, endpoint: &str, method: &str, extra: &[(&str, &str)]) -> pb::Attributes {
    pb::Attributes {
        ip: ip.into(),
        endpoint: endpoint.into(),
        method: method.into(),
        user_agent: "Mozilla/5.0 (X11; Linux x86_64)".into(),
        extra: extra.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
        ..Default::default()
    }
}

fn native_requests() -> Vec<(&'static str, pb::CheckRequest)> {
    let one = |attributes: pb::Attributes, cost: Option<u64>, tiers: &[&str]| pb::RateRequest {
        attributes: Some(attributes),
        cost,
        tiers: tiers.iter().map(|t| (*t).into()).collect(),
    };
    let login = attributes("203.0.113.7", "/auth/login", "POST", &[("username", "bob")]);
    let batch = vec![
        one(attributes("2001:DB8:0::1", "/api/v1/items", "GET", &[]), Some(3), &[]),
        one(
            pb::Attributes { user: "alice".into(), ..attributes("::ffff:192.0.2.1", "/api/v1/", "GET", &[]) },
            None,
            &["api_user", "edge_ip"],
        ),
        one(attributes("10.1.2.3", "/files/../../etc/passwd", "GET", &[("q", "' OR 1=1")]), None, &[]),
    ];
    let check = |requests: Vec<pb::RateRequest>, dry_run: bool| pb::CheckRequest { requests, dry_run };
    let limits = sluice::config::InputLimits::default();
    vec![
        ("login", check(vec![one(login.clone(), None, &[])], false)),
        ("batch", check(batch, false)),
        (
            "dry_run_enterprise",
            check(
                vec![one(pb::Attributes { client_tier: "enterprise".into(), ..login.clone() }, Some(1), &[])],
                true,
            ),
        ),
        ("empty_batch", check(vec![], false)),
        ("zero_cost", check(vec![one(login.clone(), Some(0), &[])], false)),
        (
            "built_in_extra",
            check(vec![one(attributes("1.2.3.4", "/", "GET", &[("ip", "5.6.7.8")]), None, &[])], false),
        ),
        (
            "empty_extra_name",
            check(vec![one(attributes("1.2.3.4", "/", "GET", &[("", "x")]), None, &[])], false),
        ),
        (
            "long_value",
            check(
                vec![one(attributes(&"9".repeat(limits.max_value_bytes + 1), "/", "GET", &[]), None, &[])],
                false,
            ),
        ),
        (
            "control_characters",
            check(
                vec![one(
                    attributes("1.2.3.4|x", "/a{b}c%7C", "\n", &[("username", "x|bob}")]),
                    None,
                    &["auth"],
                )],
                false,
            ),
        ),
    ]
}

fn envoy_requests() -> Vec<(&'static str, RateLimitRequest)> {
    let descriptor = |entries: &[(&str, &str)]| RateLimitDescriptor {
        entries: entries.iter().map(|(k, v)| Entry { key: (*k).into(), value: (*v).into() }).collect(),
        ..Default::default()
    };
    let request = |domain: &str, descriptors: Vec<RateLimitDescriptor>, hits_addend: u32| RateLimitRequest {
        domain: domain.into(),
        descriptors,
        hits_addend,
    };
    let limits = sluice::config::InputLimits::default();
    let overridden = RateLimitDescriptor {
        limit: Some(RateLimitOverride { requests_per_unit: 10, unit: 2 }),
        hits_addend: Some(envoy_types::pb::google::protobuf::UInt64Value { value: 0 }),
        ..descriptor(&[("remote_address", "10.0.0.9")])
    };
    vec![
        ("user", request("edge", vec![descriptor(&[("user", "42")])], 1)),
        (
            "every_node",
            request(
                "edge",
                vec![
                    descriptor(&[("remote_address", "10.0.0.1")]),
                    descriptor(&[("path", "/api/v2/items/7")]),
                    descriptor(&[("path", "/docs/a.pdf")]),
                    descriptor(&[("tenant", "acme"), ("user", "bob")]),
                    descriptor(&[("tenant", "acme"), ("route", "/x"), ("method", "POST")]),
                    descriptor(&[("login", "bob")]),
                    descriptor(&[("a*b*", "aXbY")]),
                ],
                3,
            ),
        ),
        ("override", request("edge", vec![overridden], 0)),
        ("no_domain", request("", vec![descriptor(&[("user", "42")])], 1)),
        ("no_descriptors", request("edge", vec![], 1)),
        ("empty_key", request("edge", vec![descriptor(&[("", "x")])], 1)),
        (
            "too_many_descriptors",
            request("edge", vec![descriptor(&[("k", "v")]); limits.max_descriptors + 1], 1),
        ),
    ]
}

/// Builds inputs in `checks::Input`'s encoding.
#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn byte(mut self, b: u8) -> Self {
        self.0.push(b);
        self
    }

    fn number(mut self, n: u64) -> Self {
        self.0.push(3);
        self.0.extend_from_slice(&n.to_le_bytes());
        self
    }

    fn text(mut self, s: &str) -> Self {
        let bytes = &s.as_bytes()[..s.len().min(255)];
        self.0.push(bytes.len() as u8);
        self.0.extend_from_slice(bytes);
        self
    }

    /// A tier name as `Input::tier_name` reads it: the length byte, then one byte per character
    /// (which are already in its alphabet's order for lower-case letters).
    fn name(mut self, name: &str) -> Self {
        const ALPHABET: &[u8; 64] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-";
        self.0.push((name.len() - 1) as u8);
        for c in name.bytes() {
            self.0.push(ALPHABET.iter().position(|&a| a == c).expect("a name character") as u8);
        }
        self
    }

    /// Attributes as `Input::attributes` reads them: the six fields, the key's free-form values,
    /// then a count of further entries.
    fn attributes(self, ip: &str, user: &str, keyed_extra: &[&str]) -> Self {
        let mut w = self.text(ip).text(user).text("/auth/login").text("POST").text("curl/8.0").text("gold");
        for value in keyed_extra {
            w = w.text(value);
        }
        w.byte(1).text("q").text("<script>")
    }
}

fn keys() -> Vec<(&'static str, Vec<u8>)> {
    // Attribute codes: 0 ip, 1 user, 2 endpoint, 3 method, 4 user_agent, 5 client_tier, 6 extra.
    let auth = || Writer::default().name("auth").byte(2).byte(0).byte(6).text("username");
    vec![
        ("ip_username", auth().attributes("1.2.3.4|x", "", &["bob"]).attributes("1.2.3.4", "", &["x|bob"]).0),
        (
            "same_address",
            auth().attributes("2001:DB8:0::1", "u", &["b"]).attributes("2001:db8::1", "u", &["b"]).0,
        ),
        (
            "mapped_address",
            auth().attributes("::ffff:192.0.2.1", "", &["b"]).attributes("192.0.2.1", "", &["b"]).0,
        ),
        ("escapes", auth().attributes("1}:x{", "%7C", &["\n"]).attributes("%7D:x%7B", "|", &["%0A"]).0),
        (
            "every_attribute",
            Writer::default()
                .name("edge_ip-2")
                .byte(4)
                .byte(1)
                .byte(2)
                .byte(3)
                .byte(5)
                .attributes("10.0.0.1", "alice", &[])
                .attributes("10.0.0.1", "alice\u{85}", &[])
                .0,
        ),
        (
            "unkeyed",
            Writer::default().name("global").byte(0).attributes("", "", &[]).attributes("", "", &[]).0,
        ),
    ]
}

fn headers() -> Vec<(&'static str, Vec<u8>)> {
    // Per tier: name, algorithm flag, limit, window_ms, cost, shadow flag, then the verdict:
    // allowed flag, remaining, retry_after_ms, reset_after_ms, limit, score, factors.
    let tier = |w: Writer,
                name: &str,
                limit: u64,
                window_ms: u64,
                shadow: u8,
                allowed: u8,
                remaining: u64,
                retry: u64| {
        w.name(name)
            .byte(0)
            .number(limit)
            .number(window_ms)
            .number(1)
            .byte(shadow)
            .byte(allowed)
            .number(remaining)
            .number(retry)
            .number(30_000)
            .number(limit)
            .byte(0)
            .byte(0)
    };
    let denied = tier(Writer::default().byte(3), "ip", 10, 60_000, 0, 1, 7, 0);
    let denied = tier(denied, "user", 5, 60_000, 0, 0, 0, 1_500);
    let denied = tier(denied, "auth", 5, 900_000, 0, 0, 0, 9_001).byte(1);
    let allowed = tier(Writer::default().byte(2), "api", 100, 60_000, 0, 1, 42, 0);
    let allowed = tier(allowed, "edge", 1_000, 1_500, 0, 1, 998, 0).byte(0);
    let shadow = tier(Writer::default().byte(1), "trial", 3, 1_000, 1, 0, 0, 700).byte(2);
    vec![
        ("denied", denied.0),
        ("allowed", allowed.0),
        ("shadow_only", shadow.0),
        ("uncounted", Writer::default().byte(0).byte(1).name("enterprise").0),
    ]
}
