//! Envoy's rate limit service v3 over real gRPC, with configuration files in envoyproxy/ratelimit's
//! format and the decisions that service documents for them.

mod common;

use common::{RedisServer, SluiceServer};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{RateLimitDescriptor, rate_limit_descriptor};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use tonic::transport::Channel;

const EDGE: &str = "
domain: edge
descriptors:
  - key: remote_address
    rate_limit: {unit: second, requests_per_unit: 10}
  - key: remote_address
    value: 50.0.0.5
    rate_limit: {unit: second, requests_per_unit: 0}
  - key: message_type
    value: marketing
    descriptors:
      - key: to_number
        rate_limit: {unit: day, requests_per_unit: 5}
  - key: to_number
    rate_limit: {unit: day, requests_per_unit: 100}
  - key: database
    value: ldap
    rate_limit: {unlimited: true}
  - key: unl
    rate_limit: {unlimited: true, name: unl_name}
  - key: repl
    rate_limit: {unit: minute, requests_per_unit: 5, replaces: [{name: unl_name}]}
  - key: service
    descriptors:
      - key: user
        value: user-a
        shadow_mode: true
        rate_limit: {unit: minute, requests_per_unit: 3}
  - key: key_1
    value: value_1
    descriptors:
      - key: user
        rate_limit: {unit: minute, requests_per_unit: 5, name: specific_limit}
  - key: key_2
    value: value_2
    descriptors:
      - key: user
        rate_limit:
          unit: minute
          requests_per_unit: 10
          replaces: [{name: specific_limit}]
";

fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| rate_limit_descriptor::Entry { key: (*k).into(), value: (*v).into() })
            .collect(),
        ..Default::default()
    }
}

async fn ask(
    client: &mut RateLimitServiceClient<Channel>,
    domain: &str,
    descriptors: Vec<RateLimitDescriptor>,
    hits: u32,
) -> RateLimitResponse {
    client
        .should_rate_limit(RateLimitRequest { domain: domain.into(), descriptors, hits_addend: hits })
        .await
        .expect("ShouldRateLimit")
        .into_inner()
}

/// A directory with two domain files: edge.yaml (EDGE) and other.yml.
fn domain_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("edge.yaml"), EDGE).expect("write");
    std::fs::write(
        dir.path().join("other.yml"),
        "domain: other\ndescriptors:\n  - key: k\n    rate_limit: {unit: hour, requests_per_unit: 2}\n",
    )
    .expect("write");
    dir
}

async fn server(redis: &RedisServer, headers: &str) -> (SluiceServer, tempfile::TempDir) {
    let dir = domain_dir();
    let yaml = format!("envoy:\n  paths: [\"{}\"]\n  headers: {headers}\ntiers: []\n", dir.path().display());
    (SluiceServer::start(&yaml, Some(&redis.url())).await, dir)
}

async fn client(server: &SluiceServer) -> RateLimitServiceClient<Channel> {
    RateLimitServiceClient::connect(format!("http://{}", server.grpc_addr)).await.expect("connect")
}

#[tokio::test]
async fn ok_n_times_then_over_limit_with_reset_and_headers() {
    let redis = RedisServer::start();
    let (server, _dir) = server(&redis, "x_ratelimit").await;
    let mut c = client(&server).await;
    // Windows are the reference's, a second aligned to the epoch: begin early in one, so that
    // the eleven requests below fall in it.
    let millis =
        || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis();
    while millis() % 1000 > 100 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let started = millis() / 1000;
    for i in 0..10 {
        let r = ask(&mut c, "edge", vec![descriptor(&[("remote_address", "50.0.0.1")])], 0).await;
        assert_eq!(r.overall_code, Code::Ok as i32, "request {i}");
        assert_eq!(r.statuses[0].limit_remaining, 9 - i);
        assert_eq!(r.statuses[0].current_limit.as_ref().expect("limit").requests_per_unit, 10);
    }
    let r = ask(&mut c, "edge", vec![descriptor(&[("remote_address", "50.0.0.1")])], 0).await;
    assert_eq!(millis() / 1000, started, "the requests crossed a second: rerun on a quieter machine");
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    assert_eq!(r.statuses[0].code, Code::OverLimit as i32);
    let reset = r.statuses[0].duration_until_reset.expect("duration_until_reset");
    assert!(reset.seconds <= 2 && (reset.seconds > 0 || reset.nanos > 0), "{reset:?}");
    let header =
        |name: &str| r.response_headers_to_add.iter().find(|h| h.key == name).map(|h| h.value.clone());
    assert_eq!(header("X-RateLimit-Limit").as_deref(), Some("10"));
    assert_eq!(header("X-RateLimit-Remaining").as_deref(), Some("0"));
    assert!(header("X-RateLimit-Reset").is_some());
    assert!(header("Retry-After").is_some_and(|s| s.parse::<u64>().is_ok_and(|s| s <= 2)));
    // The exact value is limited before the key-only one: 0 per second. It can never pass, and its
    // reset is still the end of the window, never 0 (no retry at once).
    let r = ask(&mut c, "edge", vec![descriptor(&[("remote_address", "50.0.0.5")])], 0).await;
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    let reset = r.statuses[0].duration_until_reset.expect("duration_until_reset");
    // The rest of its second, rounded up to whole seconds.
    assert_eq!((reset.seconds, reset.nanos), (1, 0), "{reset:?}");
    assert!(!r.response_headers_to_add.iter().any(|h| h.key == "Retry-After"), "no wait is promised");
    assert_eq!(
        ask(&mut c, "no-such-domain", vec![descriptor(&[("a", "b")])], 0).await.overall_code,
        Code::Ok as i32
    );

    // Metrics by domain and descriptor path from the configuration; no client value as a label.
    let metrics = common::http_get(server.http_addr, "/metrics").await.1;
    let series = "sluice_envoy_decisions_total{domain=\"edge\",descriptor=\"remote_address\",decision=\"deny\",source=\"redis\"}";
    assert!(metrics.contains(series), "{metrics}");
    assert!(
        metrics.contains("descriptor=\"remote_address_50.0.0.5\""),
        "a value written in the config is part of its path"
    );
    assert!(!metrics.contains("50.0.0.1"), "a client value leaked into a label");
    assert!(metrics.contains("sluice_envoy_unknown_domain_total"), "{metrics}");
    // ShouldRateLimit is timed like Check: the 12 calls above that asked the store at least.
    let timed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sluice_decision_duration_seconds_count "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no decision duration in {metrics}"));
    assert!(timed >= 12, "{timed} decisions timed");
}

#[tokio::test]
async fn the_reference_rules_over_the_wire() {
    let redis = RedisServer::start();
    let (server, _dir) = server(&redis, "draft").await;
    let mut c = client(&server).await;

    // Nested plus aggregate: the sixth marketing message to a number in a day is over.
    let marketing = || {
        vec![
            descriptor(&[("message_type", "marketing"), ("to_number", "2061111111")]),
            descriptor(&[("to_number", "2061111111")]),
        ]
    };
    for _ in 0..5 {
        assert_eq!(ask(&mut c, "edge", marketing(), 1).await.overall_code, Code::Ok as i32);
    }
    let r = ask(&mut c, "edge", marketing(), 1).await;
    assert_eq!((r.statuses[0].code, r.statuses[1].code), (Code::OverLimit as i32, Code::Ok as i32));
    assert!(r.response_headers_to_add.iter().any(|h| h.key == "Retry-After"));

    // Too deep for the tree: no limit, OK with nothing remaining.
    let r = ask(&mut c, "edge", vec![descriptor(&[("remote_address", "1.1.1.1"), ("extra", "x")])], 1).await;
    assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (Code::Ok as i32, 0));
    assert!(r.statuses[0].current_limit.is_none());

    // Unlimited.
    let r = ask(&mut c, "edge", vec![descriptor(&[("database", "ldap")])], 1).await;
    assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (Code::Ok as i32, u32::MAX));
    // An unlimited limit that another replaces stays unlimited, as in the reference.
    let r = ask(&mut c, "edge", vec![descriptor(&[("unl", "x")]), descriptor(&[("repl", "x")])], 1).await;
    assert_eq!(r.overall_code, Code::Ok as i32);
    assert_eq!((r.statuses[0].limit_remaining, r.statuses[1].limit_remaining), (u32::MAX, 4));

    // Shadow mode: over its 3 per minute, still OK.
    for _ in 0..6 {
        let r = ask(&mut c, "edge", vec![descriptor(&[("service", "auth"), ("user", "user-a")])], 1).await;
        assert_eq!(r.overall_code, Code::Ok as i32);
    }

    // replaces: with both in one request only the 10 per minute limit counts.
    let both = || {
        vec![
            descriptor(&[("key_1", "value_1"), ("user", "bk")]),
            descriptor(&[("key_2", "value_2"), ("user", "bk")]),
        ]
    };
    for i in 0..10 {
        let r = ask(&mut c, "edge", both(), 1).await;
        assert_eq!(r.overall_code, Code::Ok as i32, "request {i}");
        assert!(r.statuses[0].current_limit.is_none(), "the replaced limit is not applied");
    }
    assert_eq!(ask(&mut c, "edge", both(), 1).await.overall_code, Code::OverLimit as i32);
    // ...and the 5 per minute limit was never counted.
    let alone = ask(&mut c, "edge", vec![descriptor(&[("key_1", "value_1"), ("user", "bk")])], 1).await;
    assert_eq!((alone.overall_code, alone.statuses[0].limit_remaining), (Code::Ok as i32, 4));

    // hits_addend counts several hits; a second domain from another file of the directory.
    let r = ask(&mut c, "other", vec![descriptor(&[("k", "v")])], 2).await;
    assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (Code::Ok as i32, 0));
    assert_eq!(
        ask(&mut c, "other", vec![descriptor(&[("k", "v")])], 1).await.overall_code,
        Code::OverLimit as i32
    );

    // A limit given in the request itself bypasses the configuration.
    let mut overridden = descriptor(&[("anything", "x")]);
    overridden.limit = Some(rate_limit_descriptor::RateLimitOverride { requests_per_unit: 1, unit: 3 });
    assert_eq!(ask(&mut c, "edge", vec![overridden.clone()], 1).await.overall_code, Code::Ok as i32);
    assert_eq!(ask(&mut c, "edge", vec![overridden], 1).await.overall_code, Code::OverLimit as i32);

    // An unknown domain is OK, as in the reference.
    let r = ask(&mut c, "nowhere", vec![descriptor(&[("a", "b")])], 1).await;
    assert_eq!(r.overall_code, Code::Ok as i32);
}

#[tokio::test]
async fn bad_requests_name_the_field() {
    let redis = RedisServer::start();
    let (server, _dir) = server(&redis, "none").await;
    let mut c = client(&server).await;
    let status = c
        .should_rate_limit(RateLimitRequest { domain: "edge".into(), descriptors: vec![], hits_addend: 0 })
        .await
        .expect_err("no descriptors");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().starts_with("descriptors:"), "{}", status.message());
    let status = c
        .should_rate_limit(RateLimitRequest {
            domain: "edge".into(),
            descriptors: vec![descriptor(&[("", "v")])],
            hits_addend: 0,
        })
        .await
        .expect_err("empty key");
    assert!(status.message().starts_with("descriptors[0].entries[0].key:"), "{}", status.message());
    // Both refusals are counted, by the kind of field they name.
    let metrics = common::http_get(server.http_addr, "/metrics").await.1;
    assert!(metrics.contains("sluice_requests_rejected_total{field=\"descriptors\"} 2"), "{metrics}");
    // 1000 descriptors: one status each.
    let many: Vec<_> = (0..1000)
        .map(|i| descriptor(&[("remote_address", &format!("10.0.{}.{}", i / 256, i % 256))]))
        .collect();
    let r = ask(&mut c, "edge", many, 1).await;
    assert_eq!(r.statuses.len(), 1000);
    assert!(r.response_headers_to_add.is_empty(), "headers: none");
}

#[test]
fn check_config_reads_the_reference_format_too() {
    let good = common::write_config(EDGE);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check-config", good.path().to_str().expect("path")])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("count as envoyproxy/ratelimit counts") && said.contains("envoy.algorithm"),
        "check-config says how domain files count, and what changes it: {said}"
    );
    let bad = common::write_config(
        "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check-config", bad.path().to_str().expect("path")])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid rate limit unit \"fortnight\""));

    // A directory, as `envoy.paths` takes one: every domain file in it.
    let dir = domain_dir();
    let check_dir = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["check-config", dir.path().to_str().expect("path")])
            .output()
            .expect("run")
    };
    let out = check_dir();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok, 2 domains: edge, other"));
    // The same domain in two files: both are named.
    std::fs::write(
        dir.path().join("again.yaml"),
        "domain: edge\ndescriptors:\n  - key: k\n    rate_limit: {unit: hour, requests_per_unit: 2}\n",
    )
    .expect("write");
    let out = check_dir();
    assert_eq!(out.status.code(), Some(78));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("duplicate domain \"edge\", already declared in") && said.contains("edge.yaml"),
        "{said}"
    );
    assert!(said.contains("again.yaml"), "{said}");
}

/// Sluice's own options on a descriptor: a window no unit says, a sliding log, an adaptive score
/// fed by descriptor entries mapped to attributes, and a penalty.
#[tokio::test]
async fn sluice_options_on_descriptors() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("auth.yaml"),
        "domain: auth
descriptors:
  - key: remote_address
    descriptors:
      - key: username
        rate_limit: {unit: minute, requests_per_unit: 10}
        sluice:
          window: 15m
          algorithm: sliding_log
          adaptive: true
          penalty: {violations: 2, period: 15m, base: 30s, max: 1h}
",
    )
    .expect("write");
    let yaml = format!(
        "envoy:\n  paths: [\"{}\"]\n  attributes: {{remote_address: ip, user_agent: user_agent}}\ntiers: []\n",
        dir.path().display()
    );
    let server = SluiceServer::start(&yaml, Some(&redis.url())).await;
    let mut c = client(&server).await;
    // No user agent entry: score 20, so 10 becomes 9, over a 15-minute window.
    let login = || vec![descriptor(&[("remote_address", "192.0.2.1"), ("username", "eve")])];
    for i in 0..9 {
        let r = ask(&mut c, "auth", login(), 1).await;
        assert_eq!(r.overall_code, Code::Ok as i32, "attempt {i}");
    }
    let r = ask(&mut c, "auth", login(), 1).await;
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    let reset = r.statuses[0].duration_until_reset.expect("reset").seconds;
    assert!(reset > 800, "a 15-minute window: {reset} s");
    // The unit Envoy sees stays the file's: its units cannot say 15 minutes (docs/envoy.md).
    let unit = r.statuses[0].current_limit.as_ref().expect("limit").unit;
    assert_eq!(
        unit,
        envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit::Minute as i32
    );
    // A second denial is the second violation: blocked for 30 s.
    let r = ask(&mut c, "auth", login(), 1).await;
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    let inspect: Vec<String> = redis.cmd(redis::cmd("KEYS").arg("sluice:*:pen"));
    assert_eq!(inspect.len(), 1, "{inspect:?}");
    let blocked: String = redis.cmd(redis::cmd("HGET").arg(&inspect[0]).arg("n"));
    assert_eq!(blocked, "1");
    // A bad option names itself.
    let bad = common::write_config(
        "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: 1}\n    sluice: {algorithm: fixed}\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check-config", bad.path().to_str().expect("path")])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(78));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sluice.algorithm"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two services' quotas and one regular limit, as envoyproxy/ratelimit's quota scripts configure them.
const QUOTAS: &str = "
domain: rl
descriptors:
  - key: service
    value: service_1
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
    metadata: {service_with_quota: {name: service_1}}
  - key: service
    value: service_2
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 2}
    metadata: {service_with_quota: {name: service_2}, tier: 2}
  - key: regular
    rate_limit: {unit: minute, requests_per_unit: 2}
";

/// A Sluice with the quota domain, on Redis or on its in-process store, answering with dynamic
/// metadata as the reference's integration tests run it.
async fn quota_server(redis: Option<&RedisServer>) -> (SluiceServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("rl.yaml"), QUOTAS).expect("write");
    let yaml =
        format!("envoy:\n  paths: [\"{}\"]\n  response_metadata: true\ntiers: []\n", dir.path().display());
    (SluiceServer::start(&yaml, redis.map(|r| r.url()).as_deref()).await, dir)
}

fn looking(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        hits_addend: Some(envoy_types::pb::google::protobuf::UInt64Value { value: 0 }),
        ..descriptor(entries)
    }
}

/// (code, remaining) of each descriptor, then the overall code.
fn codes(r: &RateLimitResponse) -> (Vec<(i32, u32)>, i32) {
    (r.statuses.iter().map(|s| (s.code, s.limit_remaining)).collect(), r.overall_code)
}

const OK: i32 = Code::Ok as i32;
const OVER: i32 = Code::OverLimit as i32;

/// integration-test/scripts/quota.sh: both services in every request. A quota over its limit keeps
/// its own OVER_LIMIT, and denies the request only once every quota of it is over.
#[tokio::test]
async fn quota_mode_denies_only_when_every_quota_is_over() {
    let redis = RedisServer::start();
    for store in [Some(&redis), None] {
        let (server, _dir) = quota_server(store).await;
        let mut c = client(&server).await;
        let both = || vec![descriptor(&[("service", "service_1")]), descriptor(&[("service", "service_2")])];
        let expected = [
            (vec![(OK, 0), (OK, 1)], OK),
            (vec![(OVER, 0), (OK, 0)], OK),
            (vec![(OVER, 0), (OVER, 0)], OVER),
        ];
        for (i, want) in expected.into_iter().enumerate() {
            let r = ask(&mut c, "rl", both(), 1).await;
            assert_eq!(
                codes(&r),
                want,
                "request {} on {}",
                i + 1,
                if store.is_some() { "redis" } else { "local" }
            );
            let retry = r.response_headers_to_add.iter().any(|h| h.key == "Retry-After");
            assert_eq!(retry, want.1 == OVER, "Retry-After only when the request is denied");
        }
        // A regular descriptor over its limit denies whatever the quotas say
        // (TestServicePerDescriptorQuotaMode); within it, the lone quota decides
        // (TestServiceMixedPerDescriptorModes).
        let mixed = |entries: &[(&str, &str)]| vec![descriptor(&[("regular", "r")]), descriptor(entries)];
        let fresh = ask(&mut c, "rl", mixed(&[("service", "service_2")]), 1).await;
        assert_eq!(codes(&fresh), (vec![(OK, 1), (OVER, 0)], OVER), "the only quota is over");
        let r = ask(&mut c, "rl", vec![descriptor(&[("regular", "r")])], 2).await;
        assert_eq!(codes(&r), (vec![(OVER, 0)], OVER), "a regular limit over");
        server.shutdown().await;
    }
}

/// integration-test/scripts/multiservice-tokenquota.sh: every request looks at both services'
/// quotas without counting (`hits_addend` 0), is served by the first within its quota (which the
/// gateway reads from the answer's metadata, `metadata.service_with_quota.name`), and that service
/// is then debited by a call of its own. A look at a count equal to the limit is OK with 0
/// remaining.
#[tokio::test]
async fn token_quota_looks_then_debits_the_service_used() {
    let redis = RedisServer::start();
    for store in [Some(&redis), None] {
        let (server, _dir) = quota_server(store).await;
        let mut c = client(&server).await;
        let look = || vec![looking(&[("service", "service_1")]), looking(&[("service", "service_2")])];
        let expected = [
            (vec![(OK, 1), (OK, 2)], OK, Some("service_1")),
            (vec![(OK, 0), (OK, 2)], OK, Some("service_1")),
            (vec![(OVER, 0), (OK, 2)], OK, Some("service_2")),
            (vec![(OVER, 0), (OK, 1)], OK, Some("service_2")),
            (vec![(OVER, 0), (OK, 0)], OK, Some("service_2")),
            (vec![(OVER, 0), (OVER, 0)], OVER, None),
        ];
        for (i, (statuses, overall, served)) in expected.into_iter().enumerate() {
            let r = ask(&mut c, "rl", look(), 0).await;
            assert_eq!(codes(&r), (statuses, overall), "look {}", i + 1);
            let first_within =
                r.statuses.iter().position(|s| s.code == OK).map(|i| ["service_1", "service_2"][i]);
            assert_eq!(first_within, served, "look {}", i + 1);
            let metadata = serde_json::to_value(r.dynamic_metadata.as_ref().map(struct_json)).expect("json");
            assert_eq!(metadata["domain"], "rl");
            assert_eq!(
                metadata["descriptors"],
                serde_json::json!([
                    {"entries": ["service=service_1"], "hitsAddend": 0.0},
                    {"entries": ["service=service_2"], "hitsAddend": 0.0},
                ]),
                "look {}",
                i + 1
            );
            assert!(metadata.get("hitsAddend").is_none(), "the request's hits_addend is 0");
            assert_eq!(
                metadata["metadata"]["service_with_quota"]["name"].as_str(),
                served,
                "look {}: the first passed descriptor's name wins",
                i + 1
            );
            // service_2's other key comes in whenever it passed, beside service_1's name.
            let tier_2 = statuses_ok(&r, 1).then_some(2.0);
            assert_eq!(metadata["metadata"]["tier"].as_f64(), tier_2, "look {}", i + 1);
            if let Some(service) = served {
                ask(&mut c, "rl", vec![descriptor(&[("service", service)])], 1).await;
            }
        }
        // A limit override in the reference's text form, and the request's own hits_addend.
        let r = ask(&mut c, "rl", vec![overriding(&[("other", "x")], 5, 2)], 3).await;
        let metadata = struct_json(r.dynamic_metadata.as_ref().expect("metadata"));
        assert_eq!(metadata["hitsAddend"], 3.0);
        assert_eq!(
            metadata["descriptors"],
            serde_json::json!([{"entries": ["other=x"], "limit": "requests_per_unit:5 unit:MINUTE"}])
        );
        assert!(metadata.get("metadata").is_none(), "an override carries no metadata: {metadata}");
        server.shutdown().await;
    }
}

/// With `envoy.algorithm: fixed_window` (and `count_denied`, the default) Sluice counts as
/// envoyproxy/ratelimit does: OK while the window's count stays within the limit, then OVER_LIMIT
/// with every denied hit counted, and `duration_until_reset` the seconds left in the window aligned
/// to the epoch (`unit - now % unit`, within (0, unit]).
#[tokio::test]
async fn fixed_window_counts_as_the_reference() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("fw.yaml"),
        "domain: fw\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 3}\n",
    )
    .expect("write");
    let yaml =
        format!("envoy:\n  paths: [\"{}\"]\n  algorithm: fixed_window\ntiers: []\n", dir.path().display());
    let server = SluiceServer::start(&yaml, Some(&redis.url())).await;
    let mut c = client(&server).await;
    let unix =
        || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    // Begin early in a minute, so the whole sequence falls in one window.
    while unix() % 60 > 50 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let expected = [(OK, 2), (OK, 1), (OK, 0), (OVER, 0), (OVER, 0)];
    for (i, want) in expected.into_iter().enumerate() {
        let before = unix();
        let r = ask(&mut c, "fw", vec![descriptor(&[("k", "v")])], 1).await;
        let after = unix();
        assert_eq!(codes(&r).0, vec![want], "request {}", i + 1);
        let reset = r.statuses[0].duration_until_reset.expect("reset");
        assert_eq!(reset.nanos, 0, "whole seconds");
        let (late, early) = (60 - after % 60, 60 - before % 60);
        assert!((late..=early).contains(&(reset.seconds as u64)), "{reset:?}, expected {late}..={early}");
    }
    // Denied hits counted: the key holds 5, so even a look is over.
    let look = ask(&mut c, "fw", vec![looking(&[("k", "v")])], 0).await;
    assert_eq!(codes(&look).0, vec![(OVER, 0)]);
    let stored: std::collections::HashMap<String, u64> =
        redis.cmd(redis::cmd("HGETALL").arg("sluice:{envoy|fw||k|v}:fw"));
    assert_eq!(stored.get("c"), Some(&5), "{stored:?}");
    // One descriptor four times in one request: counted one after another, each against the
    // limit, so the first three pass and the fourth is over (the reference's pipelined INCRBYs).
    let four = vec![descriptor(&[("k", "w")]); 4];
    let r = ask(&mut c, "fw", four, 1).await;
    assert_eq!(codes(&r), (vec![(OK, 2), (OK, 1), (OK, 0), (OVER, 0)], OVER));
    let stored: std::collections::HashMap<String, u64> =
        redis.cmd(redis::cmd("HGETALL").arg("sluice:{envoy|fw||k|w}:fw"));
    assert_eq!(stored.get("c"), Some(&4), "{stored:?}");
    server.shutdown().await;
}

/// By default (no `envoy.algorithm`, denied hits counted), a client that stays over a limit gets the
/// limit again in every window, as from the reference: 7 requests a second against 5 a second are
/// 5 admitted and 2 denied in each second, on both stores. (A sliding window that counts denied
/// hits would deny all of them after the first second, for as long as the client kept the pace.)
#[tokio::test]
async fn by_default_a_client_over_its_limit_gets_the_limit_every_window() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("steady.yaml"),
        "domain: steady\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 5}\n  - key: m\n    rate_limit: {unit: minute, requests_per_unit: 5}\n",
    )
    .expect("write");
    let yaml = format!("envoy:\n  paths: [\"{}\"]\ntiers: []\n", dir.path().display());
    for redis_url in [None, Some(redis.url())] {
        let server = SluiceServer::start(&yaml, redis_url.as_deref()).await;
        let mut c = client(&server).await;
        let millis =
            || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis();
        for second in 0..3 {
            // Start each burst early in a second, so that all seven fall in it.
            while millis() % 1000 > 100 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            let started = millis() / 1000;
            let mut admitted = 0;
            for _ in 0..7 {
                let r = ask(&mut c, "steady", vec![descriptor(&[("k", "v")])], 1).await;
                admitted += usize::from(r.overall_code == OK);
            }
            assert_eq!(millis() / 1000, started, "the burst crossed a second: rerun on a quieter machine");
            assert_eq!(
                admitted,
                5,
                "second {second} on {}",
                if redis_url.is_some() { "redis" } else { "local" }
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        // Windows are aligned to the epoch on both stores: a minute ends at :00.
        let before = millis() / 1000;
        let r = ask(&mut c, "steady", vec![descriptor(&[("m", "v")])], 1).await;
        let after = millis() / 1000;
        let reset = r.statuses[0].duration_until_reset.expect("reset").seconds as u128;
        assert!((60 - after % 60..=60 - before % 60).contains(&reset), "{reset} s to the minute's end");
        server.shutdown().await;
    }
}

/// A value longer than any key should be (a crafted header, a huge path) is counted, not refused:
/// Envoy lets a request through when its rate limit service errs. It is matched as sent (a
/// wildcard still catches it), and its counter is keyed by its SHA-256, so two long values count
/// apart and the key stays short.
#[tokio::test]
async fn a_long_value_is_counted_under_its_digest() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("long.yaml"),
        "domain: long\ndescriptors:\n  - key: path\n    value: /api/*\n    rate_limit: {unit: hour, requests_per_unit: 2}\n  - key: ua\n    rate_limit: {unit: hour, requests_per_unit: 2}\n",
    )
    .expect("write");
    let yaml = format!("envoy:\n  paths: [\"{}\"]\ntiers: []\n", dir.path().display());
    let server = SluiceServer::start(&yaml, Some(&redis.url())).await;
    let mut c = client(&server).await;
    let long_path = format!("/api/{}", "x".repeat(100_000));
    let other_path = format!("/api/{}", "y".repeat(100_000));
    for (value, key) in
        [(long_path.as_str(), "path"), (other_path.as_str(), "path"), (&*"u".repeat(5000), "ua")]
    {
        let mut seen = Vec::new();
        for _ in 0..3 {
            let r = ask(&mut c, "long", vec![descriptor(&[(key, value)])], 1).await;
            seen.push(codes(&r).0[0]);
        }
        assert_eq!(seen, vec![(OK, 1), (OK, 0), (OVER, 0)], "{key}: {} bytes", value.len());
    }
    let keys: Vec<String> = redis.cmd(redis::cmd("KEYS").arg("sluice:{envoy|long*"));
    assert_eq!(keys.len(), 3, "{keys:?}");
    for k in &keys {
        assert!(k.len() < 200 && k.contains("%#"), "a short key, the value's digest in it: {k}");
    }
    // A value of exactly the bound is a key as it is.
    let at_bound = "v".repeat(4096);
    let r = ask(&mut c, "long", vec![descriptor(&[("ua", &at_bound)])], 1).await;
    assert_eq!(codes(&r).0, vec![(OK, 1)]);
    let keys: Vec<String> = redis.cmd(redis::cmd("KEYS").arg("sluice:{envoy|long*"));
    assert!(keys.iter().any(|k| k.contains(&at_bound)), "{} keys", keys.len());
    server.shutdown().await;
}

/// With `count_denied: false` a denial that cannot end early is remembered, as the reference's local
/// cache does: the next request whose every descriptor is held there is answered OVER_LIMIT without
/// a script call, and the metrics say `source="cache"`.
#[tokio::test]
async fn a_remembered_denial_is_answered_without_the_store() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("c.yaml"),
        "domain: c\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 2}\n",
    )
    .expect("write");
    let yaml = format!("envoy:\n  paths: [\"{}\"]\n  count_denied: false\ntiers: []\n", dir.path().display());
    let server = SluiceServer::start(&yaml, Some(&redis.url())).await;
    let mut c = client(&server).await;
    let one = || vec![descriptor(&[("k", "v")])];
    for want in [OK, OK, OVER] {
        assert_eq!(ask(&mut c, "c", one(), 1).await.overall_code, want);
    }
    let before = redis.function_calls();
    let r = ask(&mut c, "c", one(), 1).await;
    assert_eq!(codes(&r), (vec![(OVER, 0)], OVER));
    let reset = r.statuses[0].duration_until_reset.expect("reset");
    assert!(reset.seconds > 0, "{reset:?}");
    assert_eq!(redis.function_calls(), before, "answered without a script call");
    // A look, or a request with another descriptor, still reaches the store.
    ask(&mut c, "c", vec![looking(&[("k", "v")])], 0).await;
    assert_eq!(redis.function_calls(), before + 1, "a look is never answered from the cache");
    let metrics = common::http_get(server.http_addr, "/metrics").await.1;
    assert!(
        metrics.contains(
            "sluice_envoy_decisions_total{domain=\"c\",descriptor=\"k\",decision=\"deny\",source=\"cache\"} 1"
        ),
        "{metrics}"
    );
    server.shutdown().await;
}

fn overriding(entries: &[(&str, &str)], requests_per_unit: u32, unit: i32) -> RateLimitDescriptor {
    RateLimitDescriptor {
        limit: Some(rate_limit_descriptor::RateLimitOverride { requests_per_unit, unit }),
        ..descriptor(entries)
    }
}

/// The reference's `LIMIT_RESPONSE_HEADERS_ENABLED` (`headers: ratelimit`) and `SHADOW_MODE`
/// (`shadow_mode: true`), as its TestServiceWithDefaultRatelimitHeaders and
/// TestServiceGlobalShadowMode pin them; request overrides on keys of their own.
#[tokio::test]
async fn reference_headers_global_shadow_mode_and_overrides() {
    const MINUTE: i32 = 2;
    const DAY: i32 = 4;
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("d.yaml"),
        "domain: d\ndescriptors:\n  - key: foo\n    rate_limit: {unit: minute, requests_per_unit: 10}\n",
    )
    .expect("write");
    let yaml = format!(
        "envoy:\n  paths: [\"{}\"]\n  headers: ratelimit\n  shadow_mode: true\n  algorithm: fixed_window\ntiers: []\n",
        dir.path().display()
    );
    let server = SluiceServer::start(&yaml, Some(&redis.url())).await;
    let mut c = client(&server).await;
    // Every count below is in one minute's fixed window: start well inside one.
    let into_minute = std::time::SystemTime::UNIX_EPOCH.elapsed().expect("clock").as_secs() % 60;
    if into_minute > 55 {
        tokio::time::sleep(std::time::Duration::from_secs(61 - into_minute)).await;
    }

    // 11 hits on a limit of 10, with an unmatched descriptor beside it: the status is over, the
    // overall code OK (shadow), and the headers describe the over descriptor.
    let r = ask(&mut c, "d", vec![descriptor(&[("foo", "bar")]), descriptor(&[("nothing", "x")])], 11).await;
    assert_eq!(codes(&r), (vec![(OVER, 0), (OK, 0)], OK));
    let header =
        |name: &str| r.response_headers_to_add.iter().find(|h| h.key == name).map(|h| h.value.clone());
    assert_eq!(header("RateLimit-Limit").as_deref(), Some("10"));
    assert_eq!(header("RateLimit-Remaining").as_deref(), Some("0"));
    let reset: u64 = header("RateLimit-Reset").expect("reset").parse().expect("whole seconds");
    assert!((1..=60).contains(&reset), "the seconds left in the minute, as the reference: {reset}");
    assert_eq!(r.response_headers_to_add.len(), 3, "nothing else: {:?}", r.response_headers_to_add);
    let metrics = common::http_get(server.http_addr, "/metrics").await.1;
    assert!(metrics.contains("sluice_envoy_shadow_total 1"), "{metrics}");

    // An override counts in the counter of the file's limit for the same entries and unit, each
    // compared with its own limit, in the order sent; another unit has a counter of its own.
    let r = ask(&mut c, "d", vec![overriding(&[("foo", "baz")], 5, MINUTE)], 1).await;
    assert_eq!(codes(&r), (vec![(OK, 4)], OK));
    let r =
        ask(&mut c, "d", vec![descriptor(&[("foo", "baz")]), overriding(&[("foo", "baz")], 5, MINUTE)], 1)
            .await;
    assert_eq!(codes(&r), (vec![(OK, 8), (OK, 2)], OK));
    let r = ask(&mut c, "d", vec![overriding(&[("foo", "baz")], 100, DAY)], 1).await;
    assert_eq!(codes(&r), (vec![(OK, 99)], OK));
    // A high override does not lift the file's limit: 3 + 6 is past 5, within 10 (shadow mode
    // keeps the overall code OK).
    let r =
        ask(&mut c, "d", vec![overriding(&[("foo", "baz")], 5, MINUTE), descriptor(&[("foo", "baz")])], 6)
            .await;
    assert_eq!(codes(&r), (vec![(OVER, 0), (OVER, 0)], OK));
    let r = ask(&mut c, "d", vec![overriding(&[("foo", "baz")], 1000, MINUTE)], 1).await;
    assert_eq!(codes(&r), (vec![(OK, 984)], OK), "15 hits counted before it, denied ones too");
}

/// Descriptor `i` of an answer is OK.
fn statuses_ok(r: &RateLimitResponse, i: usize) -> bool {
    r.statuses[i].code == OK
}

/// A protobuf Struct as JSON, to compare with `serde_json::json!`.
fn struct_json(s: &envoy_types::pb::google::protobuf::Struct) -> serde_json::Value {
    use envoy_types::pb::google::protobuf::value::Kind;
    fn value(v: &envoy_types::pb::google::protobuf::Value) -> serde_json::Value {
        match &v.kind {
            None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
            Some(Kind::BoolValue(b)) => (*b).into(),
            Some(Kind::NumberValue(n)) => (*n).into(),
            Some(Kind::StringValue(s)) => s.clone().into(),
            Some(Kind::ListValue(l)) => l.values.iter().map(value).collect(),
            Some(Kind::StructValue(s)) => struct_json(s),
        }
    }
    s.fields.iter().map(|(k, v)| (k.clone(), value(v))).collect()
}
