//! Metric cardinality is bounded by the configuration, never by clients: after a warm-up that
//! sends one of every kind of request, 10,000 `ShouldRateLimit` calls with random domains,
//! descriptor keys and values and 10,000 `Check` calls with random IPs, users, endpoints, user
//! agents, free-form attributes and tier names leave `/metrics` with exactly the series it had,
//! and none of the random strings in any label.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::SluiceServer;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{RateLimitDescriptor, rate_limit_descriptor};
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::google::protobuf::UInt64Value;
use futures::StreamExt;
use rand::distr::{Alphanumeric, SampleString};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sluice::api::pb;
use sluice::api::pb::rate_limiter_client::RateLimiterClient;
use tonic::Code;
use tonic::transport::Channel;

/// Calls of each API in the measured burst.
const CALLS: usize = 10_000;
/// Calls in flight at once.
const IN_FLIGHT: usize = 32;

/// A tier of every sort the label `tier` can take: exempt, adaptive (threat score histogram),
/// enforcing, shadow. Limits are far above what distinct keys reach, so nothing is denied.
const TIERS: &str = "
tiers:
  - name: enterprise
    match: {client_tier: enterprise}
    exempt: true
  - name: login
    match: {endpoint: {prefix: /auth/}}
    key: [ip, username]
    limit: 100000
    window: 15m
    adaptive: true
  - name: per_user
    match: {endpoint: {prefix: /api/}}
    key: [user]
    limit: 100000
    window: 1m
  - name: per_ip
    key: [ip]
    limit: 100000
    window: 1m
  - name: agents
    key: [user_agent]
    limit: 100000
    window: 1m
    shadow: true
";

/// One domain in envoyproxy/ratelimit's format with a node of each sort: key only, exact value
/// with a nested key, wildcard, shared wildcard, unlimited, and Sluice's own options. None asks
/// for `detailed_metric` or `value_to_metric`, the two ways a file puts request values in labels.
const EDGE: &str = "
domain: edge
descriptors:
  - key: remote_address
    rate_limit: {unit: minute, requests_per_unit: 100000}
  - key: service
    value: checkout
    descriptors:
      - key: user
        rate_limit: {unit: minute, requests_per_unit: 100000}
  - key: path
    value: /api/*
    rate_limit: {unit: minute, requests_per_unit: 100000}
  - key: files
    value: files/*
    share_threshold: true
    rate_limit: {unit: hour, requests_per_unit: 1000000}
  - key: database
    value: ldap
    rate_limit: {unlimited: true}
  - key: login
    rate_limit: {unit: minute, requests_per_unit: 10000}
    sluice: {window: 15m, algorithm: sliding_log, adaptive: true}
";

/// Kinds of `Check` call; the ones marked invalid must get INVALID_ARGUMENT.
const NATIVE_KINDS: usize = 10;
/// Kinds of `ShouldRateLimit` call.
const ENVOY_KINDS: usize = 8;

/// Random strings, each holding a distinctive token (recorded) so that its appearance anywhere in
/// `/metrics` is unmistakable.
struct Random {
    rng: StdRng,
    n: u64,
    sent: Vec<String>,
}

impl Random {
    fn new(seed: u64) -> Random {
        Random { rng: StdRng::seed_from_u64(seed), n: 0, sent: Vec::new() }
    }

    fn token(&mut self) -> String {
        self.n += 1;
        let token = format!("zq{:06}{}", self.n, Alphanumeric.sample_string(&mut self.rng, 10));
        self.sent.push(token.clone());
        token
    }

    /// A token, sometimes with characters that would break the exposition format if they reached
    /// a label unescaped.
    fn text(&mut self) -> String {
        const TAILS: &[&str] = &["", "", "", "\"", "\\", "\n", "{x=\"y\"}", ",", " ", "é", "\u{0}"];
        let tail = TAILS[self.rng.random_range(0..TAILS.len())];
        format!("{}{tail}", self.token())
    }

    fn ipv4(&mut self) -> String {
        let ip = std::net::Ipv4Addr::from(self.rng.random::<u32>()).to_string();
        self.sent.push(ip.clone());
        ip
    }

    fn ipv6(&mut self) -> String {
        let ip = std::net::Ipv6Addr::from(self.rng.random::<u128>()).to_string();
        self.sent.push(ip.clone());
        ip
    }

    fn coin(&mut self) -> bool {
        self.rng.random()
    }
}

fn attributes(pairs: Vec<(&str, String)>) -> pb::Attributes {
    let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    common::request(&pairs).attributes.unwrap_or_default()
}

fn one(attributes: pb::Attributes) -> pb::RateRequest {
    pb::RateRequest { attributes: Some(attributes), cost: None, tiers: vec![] }
}

/// A `Check` call of `kind`, and whether it is valid.
fn native(kind: usize, r: &mut Random) -> (pb::CheckRequest, bool) {
    let extras = |r: &mut Random, n: usize| (0..n).map(|_| (r.token(), r.text())).collect::<Vec<_>>();
    let (requests, valid, dry_run) = match kind {
        // Everything random, on the data API.
        0 => {
            let mut a = attributes(vec![
                ("ip", r.ipv4()),
                ("user", r.text()),
                ("endpoint", format!("/api/{}", r.text())),
                ("method", r.text()),
                ("user_agent", r.text()),
                ("client_tier", r.text()),
            ]);
            a.extra.extend(extras(r, 3));
            (vec![one(a)], true, false)
        }
        // A login that looks hostile: a short user agent, sometimes a path traversal.
        1 => {
            let endpoint = if r.coin() {
                format!("/auth/{}/../../etc/passwd", r.token())
            } else {
                format!("/auth/{}", r.text())
            };
            let a = attributes(vec![
                ("ip", r.ipv6()),
                ("endpoint", endpoint),
                ("username", r.text()),
                ("user_agent", "x".into()),
            ]);
            (vec![one(a)], true, false)
        }
        // An unknown tier name.
        2 => {
            let mut req = one(attributes(vec![("ip", r.ipv4()), ("user", r.text())]));
            req.tiers = vec![r.token()];
            (vec![req], false, false)
        }
        // Exempt.
        3 => {
            let a =
                attributes(vec![("client_tier", "enterprise".into()), ("ip", r.ipv4()), ("user", r.text())]);
            (vec![one(a)], true, false)
        }
        // A named tier, a cost, sometimes a dry run.
        4 => {
            let mut req = one(attributes(vec![("ip", r.ipv6()), ("user_agent", r.text())]));
            req.tiers = vec!["per_ip".into()];
            req.cost = Some(r.rng.random_range(1..=3));
            (vec![req], true, r.coin())
        }
        // A batch, with many free-form attributes.
        5 => {
            let n = r.rng.random_range(2..=4);
            let batch = (0..n)
                .map(|_| {
                    let mut a = attributes(vec![("ip", r.ipv4()), ("user_agent", r.text())]);
                    let count = r.rng.random_range(1..=8);
                    a.extra.extend(extras(r, count));
                    one(a)
                })
                .collect();
            (batch, true, false)
        }
        // A free-form attribute named like a built-in one.
        6 => {
            let a = attributes(vec![("ip", r.ipv4())]);
            let mut req = one(a);
            let attrs = req.attributes.as_mut().expect("attributes");
            attrs.extra.insert("user".into(), r.text());
            (vec![req], false, false)
        }
        // No tier matches.
        7 => {
            let mut a = attributes(vec![("method", r.text()), ("client_tier", r.text())]);
            a.extra.extend(extras(r, 2));
            (vec![one(a)], true, false)
        }
        // A value over limits.max_value_bytes.
        8 => {
            let long = format!("{}{}", r.token(), "y".repeat(5000));
            (vec![one(attributes(vec![("ip", r.ipv4()), ("user", long)]))], false, false)
        }
        // A cost no window could ever hold.
        9 => {
            let mut req = one(attributes(vec![("ip", r.ipv4()), ("user", r.text())]));
            req.cost = Some(1_000_000);
            (vec![req], false, false)
        }
        _ => unreachable!("{kind}"),
    };
    (pb::CheckRequest { requests, dry_run }, valid)
}

fn descriptor(entries: Vec<(String, String)>) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .into_iter()
            .map(|(key, value)| rate_limit_descriptor::Entry { key, value })
            .collect(),
        ..Default::default()
    }
}

/// A `ShouldRateLimit` call of `kind`, and whether it is valid.
fn envoy(kind: usize, r: &mut Random) -> (RateLimitRequest, bool) {
    let hits = r.rng.random_range(0..=3);
    let edge = |descriptors| RateLimitRequest { domain: "edge".into(), descriptors, hits_addend: hits };
    match kind {
        // An unknown domain.
        0 => {
            let descriptors = (0..r.rng.random_range(1..=3))
                .map(|_| descriptor(vec![(r.token(), r.text()), (r.token(), r.text())]))
                .collect();
            (RateLimitRequest { domain: r.text(), descriptors, hits_addend: hits }, true)
        }
        // A key-only node with a random value, beside keys no node has.
        1 => (
            edge(vec![
                descriptor(vec![("remote_address".into(), r.ipv4())]),
                descriptor(vec![(r.token(), r.text())]),
            ]),
            true,
        ),
        // A nested node, a wildcard, a shared wildcard.
        2 => (
            edge(vec![
                descriptor(vec![("service".into(), "checkout".into()), ("user".into(), r.text())]),
                descriptor(vec![("path".into(), format!("/api/{}", r.text()))]),
                descriptor(vec![("files".into(), format!("files/{}", r.text()))]),
            ]),
            true,
        ),
        // The request's own limit over random keys and values, and one with unit 0 (no limit).
        3 => {
            let mut limited = Vec::new();
            for unit in [r.rng.random_range(1..=7), 0] {
                let entries = (0..r.rng.random_range(1..=3)).map(|_| (r.token(), r.text())).collect();
                let mut d = descriptor(entries);
                // Within the bound every limit keeps (rate x unit under 2^50 ms), for any unit.
                d.limit = Some(rate_limit_descriptor::RateLimitOverride {
                    requests_per_unit: r.rng.random_range(5..=30_000),
                    unit,
                });
                limited.push(d);
            }
            (edge(limited), true)
        }
        // Unlimited, too deep for the tree, and the adaptive sliding log.
        4 => (
            edge(vec![
                descriptor(vec![("database".into(), "ldap".into())]),
                descriptor(vec![("remote_address".into(), r.ipv6()), (r.token(), r.text())]),
                descriptor(vec![("login".into(), r.text())]),
            ]),
            true,
        ),
        // An empty key (refused, counted under `descriptors`).
        5 => (edge(vec![descriptor(vec![(String::new(), r.text())])]), false),
        // A domain over limits.max_value_bytes (refused, counted under `domain`).
        7 => {
            let domain = format!("{}{}", r.token(), "d".repeat(5000));
            let descriptors = vec![descriptor(vec![("remote_address".into(), r.ipv4())])];
            (RateLimitRequest { domain, descriptors, hits_addend: 1 }, false)
        }
        // A descriptor's own hits: 0 only looks.
        6 => {
            let mut d = descriptor(vec![("remote_address".into(), r.ipv4())]);
            d.hits_addend = Some(UInt64Value { value: r.rng.random_range(0..=2) });
            (edge(vec![d]), true)
        }
        _ => unreachable!("{kind}"),
    }
}

enum Call {
    Native { kind: usize, request: pb::CheckRequest, valid: bool },
    Envoy { kind: usize, request: RateLimitRequest, valid: bool },
}

/// Sends every call, `IN_FLIGHT` at a time; returns what went other than expected.
async fn send(
    native_client: &RateLimiterClient<Channel>,
    envoy_client: &RateLimitServiceClient<Channel>,
    calls: Vec<Call>,
) -> Vec<String> {
    futures::stream::iter(calls)
        .map(|call| {
            let (mut n, mut e) = (native_client.clone(), envoy_client.clone());
            async move {
                let (what, valid, result) = match call {
                    Call::Native { kind, request, valid } => {
                        (format!("Check kind {kind}"), valid, n.check(request).await.map(drop))
                    }
                    Call::Envoy { kind, request, valid } => (
                        format!("ShouldRateLimit kind {kind}"),
                        valid,
                        e.should_rate_limit(request).await.map(drop),
                    ),
                };
                match (valid, result) {
                    (true, Ok(())) => None,
                    (false, Err(status)) if status.code() == Code::InvalidArgument => None,
                    (true, Err(status)) => Some(format!("{what}: {status:?}")),
                    (false, Err(status)) => Some(format!("{what}: not INVALID_ARGUMENT: {status:?}")),
                    (false, Ok(())) => Some(format!("{what}: accepted")),
                }
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .filter_map(std::future::ready)
        .collect()
        .await
}

/// Every series on `/metrics` (name and labels) with its value.
async fn scrape(server: &SluiceServer) -> (String, BTreeMap<String, f64>) {
    let (status, body) = common::http_get(server.http_addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    let series = body
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (id, value) =
                l.rsplit_once(' ').unwrap_or_else(|| panic!("a series line without a value: {l:?}"));
            (id.to_owned(), value.parse::<f64>().unwrap_or_else(|e| panic!("{l:?}: {e}")))
        })
        .collect();
    (body, series)
}

/// The label values of one series, `name{a="x",b="y"}`, with the exposition escapes undone.
fn label_values(series: &str) -> Vec<String> {
    let Some(open) = series.find('{') else { return Vec::new() };
    let mut values = Vec::new();
    let mut chars = series[open + 1..].chars().peekable();
    loop {
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if name.is_empty() {
            break;
        }
        assert_eq!(chars.next(), Some('"'), "label {name} of {series:?}");
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\\') => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c) => value.push(c),
                    None => panic!("an escape at the end of {series:?}"),
                },
                Some('"') => break,
                Some(c) => value.push(c),
                None => panic!("an unterminated label value in {series:?}"),
            }
        }
        values.push(value);
        match chars.next() {
            Some(',') => continue,
            Some('}') => break,
            other => panic!("{other:?} after a label value in {series:?}"),
        }
    }
    values
}

fn value_of(series: &BTreeMap<String, f64>, id: &str) -> f64 {
    series.get(id).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_client_data_adds_no_metric_series() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("edge.yaml"), EDGE).expect("write");
    let yaml = format!(
        "envoy:\n  paths: [\"{}\"]\n  attributes: {{remote_address: ip, user_agent: user_agent}}\n{TIERS}",
        dir.path().display()
    );
    let server = SluiceServer::start(&yaml, None).await;
    let native_client = server.client().await;
    let envoy_client =
        RateLimitServiceClient::connect(format!("http://{}", server.grpc_addr)).await.expect("connect");

    let seed: u64 = rand::rng().random();
    eprintln!("seed {seed}");
    let mut random = Random::new(seed);

    // Warm-up: every kind twice, one at a time, so that every series these kinds can create
    // exists before counting.
    let mut warm_up = Vec::new();
    for _ in 0..2 {
        for kind in 0..NATIVE_KINDS {
            let (request, valid) = native(kind, &mut random);
            warm_up.push(Call::Native { kind, request, valid });
        }
        for kind in 0..ENVOY_KINDS {
            let (request, valid) = envoy(kind, &mut random);
            warm_up.push(Call::Envoy { kind, request, valid });
        }
    }
    for call in warm_up {
        let unexpected = send(&native_client, &envoy_client, vec![call]).await;
        assert!(unexpected.is_empty(), "warm-up: {unexpected:?}");
    }
    assert_eventually!(
        scrape(&server).await.0.contains("sluice_local_keys{role=\"local\"}"),
        Duration::from_secs(10),
        "the in-process store's key gauge never appeared"
    );
    let (_, before) = scrape(&server).await;
    let warm_up_tokens = random.sent.len();

    // The burst: every call with fresh random strings.
    let mut calls = Vec::with_capacity(2 * CALLS);
    let (mut unknown_domain_calls, mut unknown_tier_calls) = (0.0, 0.0);
    for i in 0..CALLS {
        let kind = i % NATIVE_KINDS;
        let (request, valid) = native(kind, &mut random);
        unknown_tier_calls += f64::from(u8::from(kind == 2));
        calls.push(Call::Native { kind, request, valid });
        let kind = i % ENVOY_KINDS;
        let (request, valid) = envoy(kind, &mut random);
        unknown_domain_calls += f64::from(u8::from(kind == 0));
        calls.push(Call::Envoy { kind, request, valid });
    }
    let burst = Instant::now();
    let unexpected = send(&native_client, &envoy_client, calls).await;
    let burst = burst.elapsed();
    assert!(
        unexpected.is_empty(),
        "{} calls went wrong, e.g. {:?}",
        unexpected.len(),
        &unexpected[..unexpected.len().min(5)]
    );
    let (body, after) = scrape(&server).await;

    // The calls were decided: the counters moved by what was sent.
    let unknown = "sluice_envoy_unknown_domain_total";
    assert_eq!(value_of(&after, unknown) - value_of(&before, unknown), unknown_domain_calls);
    let rejected = "sluice_requests_rejected_total{field=\"tiers\"}";
    assert_eq!(value_of(&after, rejected) - value_of(&before, rejected), unknown_tier_calls);
    let per_ip = "sluice_decisions_total{tier=\"per_ip\",decision=\"allow\",source=\"local\"}";
    assert!(value_of(&after, per_ip) - value_of(&before, per_ip) >= 3000.0, "{body}");

    // The same series, no more and no fewer.
    let (was, is): (BTreeSet<&String>, BTreeSet<&String>) = (before.keys().collect(), after.keys().collect());
    let added: Vec<_> = is.difference(&was).collect();
    let gone: Vec<_> = was.difference(&is).collect();
    assert!(
        added.is_empty() && gone.is_empty(),
        "series after warm-up: {}, after the burst: {}\nadded ({}): {:#?}\ngone: {gone:#?}",
        was.len(),
        is.len(),
        added.len(),
        &added[..added.len().min(20)]
    );
    assert_eq!(before.len(), after.len());

    // No random string in any label value (all of them against every label value), nor, for a
    // sample, anywhere in the text.
    let labels: BTreeSet<String> = after.keys().flat_map(|s| label_values(s)).collect();
    for sent in &random.sent {
        if let Some(label) = labels.iter().find(|l| l.contains(sent.as_str())) {
            panic!("{sent:?} sent by a client is in the label value {label:?}");
        }
    }
    for sent in random.sent.iter().step_by(50) {
        assert!(!body.contains(sent.as_str()), "{sent:?} sent by a client is on /metrics");
    }

    eprintln!(
        "{} series before and after; {} random strings sent after warm-up, {} label values checked; \
         burst of {} calls in {:.1?}; whole test {:.1?}",
        after.len(),
        random.sent.len() - warm_up_tokens,
        labels.len(),
        2 * CALLS,
        burst,
        started.elapsed()
    );
}
