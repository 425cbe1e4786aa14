//! What a hostile client sends, on both stores: repeated descriptors, numbers at their type's
//! maximum, looks, overrides, batches past every bound. Each test here once found a defect: a frozen
//! process, a count reset by one number, a retry-after that lied, or a batch half decided by the
//! fallback while Redis was healthy.

mod common;

use std::time::Duration;

use common::{RedisServer, SluiceServer};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::RateLimitOverride;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{RateLimitDescriptor, rate_limit_descriptor};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::UInt64Value;
use sluice::algorithm::adaptive::Adaptive;
use sluice::algorithm::penalty::Penalty;
use sluice::algorithm::{Algorithm, Quota};
use sluice::api::pb;
use sluice::check::{AdaptiveCheck, Check, FailureMode, Mode};
use sluice::store::local::{Counting, LocalStore};
use sluice::store::redis::RedisStore;
use tonic::transport::Channel;

const DOMAIN: &str = "
domain: hostile
descriptors:
  - key: ip
    rate_limit: {unit: minute, requests_per_unit: 10}
  - key: path
    value: /files/*
    share_threshold: true
    rate_limit: {unit: minute, requests_per_unit: 10}
  - key: login
    rate_limit: {unit: minute, requests_per_unit: 5}
    sluice: {algorithm: sliding_log}
";

/// A Sluice on each store, serving `DOMAIN` and one tier `user` (1000 a minute, keyed by user).
struct Both {
    servers: Vec<(&'static str, SluiceServer)>,
    _redis: RedisServer,
    _dir: tempfile::TempDir,
}

async fn both(count_denied: bool, extra: &str) -> Both {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("hostile.yaml"), DOMAIN).expect("write");
    let yaml = format!(
        "envoy:\n  paths: [\"{}\"]\n  count_denied: {count_denied}\n{extra}tiers:\n  - name: user\n    key: [user]\n    \
         limit: 1000\n    window: 1m\n",
        dir.path().display()
    );
    let servers = vec![
        ("in process", SluiceServer::start(&yaml, None).await),
        // Redis decides in these tests: a second a call, so a busy machine never hands them to the
        // fallback.
        ("redis", SluiceServer::start_with_timeout(&yaml, Some(&redis.url()), 1000).await),
    ];
    Both { servers, _redis: redis, _dir: dir }
}

fn entry(k: &str, v: &str) -> rate_limit_descriptor::Entry {
    rate_limit_descriptor::Entry { key: k.into(), value: v.into() }
}

fn descriptor(k: &str, v: &str, hits: Option<u64>) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: vec![entry(k, v)],
        hits_addend: hits.map(|value| UInt64Value { value }),
        ..Default::default()
    }
}

async fn envoy(server: &SluiceServer) -> RateLimitServiceClient<Channel> {
    RateLimitServiceClient::connect(format!("http://{}", server.grpc_addr)).await.expect("connect")
}

/// One call, which must answer within two seconds: nothing a request holds may stall the process.
async fn ask(
    c: &mut RateLimitServiceClient<Channel>,
    descriptors: Vec<RateLimitDescriptor>,
    hits: u32,
) -> RateLimitResponse {
    let call =
        c.should_rate_limit(RateLimitRequest { domain: "hostile".into(), descriptors, hits_addend: hits });
    tokio::time::timeout(Duration::from_secs(2), call)
        .await
        .expect("ShouldRateLimit answered within 2 s")
        .expect("ShouldRateLimit")
        .into_inner()
}

/// What a look (hits 0) at a descriptor says is left.
async fn remaining(c: &mut RateLimitServiceClient<Channel>, k: &str, v: &str) -> (i32, u32) {
    let r = ask(c, vec![descriptor(k, v, Some(0))], 1).await;
    (r.statuses[0].code, r.statuses[0].limit_remaining)
}

#[tokio::test]
async fn repeated_descriptors_count_once_each_and_freeze_nothing() {
    let both = both(true, "").await;
    for (store, server) in &both.servers {
        let mut c = envoy(server).await;
        // The same descriptor twice, three times over: 6 units, not 3, and not a frozen process.
        // Denied hits count here, so each repeat is counted in turn, as the reference counts.
        for i in 0..3 {
            let d = descriptor("ip", "10.0.0.9", None);
            let r = ask(&mut c, vec![d.clone(), d], 1).await;
            assert_eq!(r.overall_code, Code::Ok as i32, "{store}: request {i}");
            let left = 10 - 2 * (i + 1);
            assert_eq!(r.statuses[0].limit_remaining, left + 1, "{store}: request {i}, the first");
            assert_eq!(r.statuses[1].limit_remaining, left, "{store}: request {i}, the second");
        }
        assert_eq!(remaining(&mut c, "ip", "10.0.0.9").await, (Code::Ok as i32, 4), "{store}");
        // Two values under one shared wildcard are one counter too.
        let r = ask(
            &mut c,
            vec![descriptor("path", "/files/a", Some(4)), descriptor("path", "/files/b", Some(5))],
            1,
        )
        .await;
        assert_eq!(r.overall_code, Code::Ok as i32, "{store}");
        assert_eq!(r.statuses[0].limit_remaining, 6, "{store}: 4 of 10");
        assert_eq!(r.statuses[1].limit_remaining, 1, "{store}: 4 + 5 of 10");
        let r = ask(&mut c, vec![descriptor("path", "/files/c", Some(2))], 1).await;
        assert_eq!(r.overall_code, Code::OverLimit as i32, "{store}: 9 + 2 is over 10");
        // And the process still answers everything else.
        let health = common::http_get(server.http_addr, "/healthz").await;
        assert_eq!(health.0, 200, "{store}");
        let mut native = server.client().await;
        let d = common::check(&mut native, common::request(&[("user", "u1")])).await;
        assert!(d.allowed, "{store}");
    }
}

#[tokio::test]
async fn no_number_wraps_a_count() {
    let both = both(true, "").await;
    for (store, server) in &both.servers {
        let mut c = envoy(server).await;
        // 51 hits over a limit of 10, then 2^64 - 51: the sum would wrap to 0.
        for _ in 0..51 {
            ask(&mut c, vec![descriptor("ip", "10.0.0.1", None)], 1).await;
        }
        let r = ask(&mut c, vec![descriptor("ip", "10.0.0.1", Some(u64::MAX - 50))], 1).await;
        assert_eq!(r.overall_code, Code::OverLimit as i32, "{store}");
        let r = ask(&mut c, vec![descriptor("ip", "10.0.0.1", None)], 1).await;
        assert_eq!(r.overall_code, Code::OverLimit as i32, "{store}: the count was reset");
        // The type's maximum on a fresh key: over the limit, never admitted by a wrap.
        for (k, v) in [("ip", "10.0.0.2"), ("login", "alice")] {
            let r = ask(&mut c, vec![descriptor(k, v, Some(u64::MAX))], 1).await;
            assert_eq!(r.overall_code, Code::OverLimit as i32, "{store}: {k}");
            assert!(
                u64::from(r.statuses[0].current_limit.as_ref().expect("limit").requests_per_unit) < u64::MAX,
                "the answer shows the limit the cost exceeds"
            );
        }
        // The limit + 1 is over; the limit itself passes on a fresh key.
        let r = ask(&mut c, vec![descriptor("ip", "10.0.0.3", Some(11))], 1).await;
        assert_eq!(r.overall_code, Code::OverLimit as i32, "{store}");
        let r = ask(&mut c, vec![descriptor("login", "bob", Some(5))], 1).await;
        assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (Code::Ok as i32, 0), "{store}");
        // The native API refuses what could never pass, naming the field.
        let mut native = server.client().await;
        for cost in [0, 1001, u64::MAX] {
            let mut req = common::request(&[("user", "u-wrap")]);
            req.cost = Some(cost);
            let e = native
                .check(pb::CheckRequest { requests: vec![req], dry_run: false })
                .await
                .expect_err("refused");
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{store}: cost {cost}");
            assert!(e.message().contains("cost"), "{store}: {}", e.message());
        }
    }
}

#[tokio::test]
async fn a_look_counts_nothing_even_beside_a_counted_descriptor() {
    let both = both(true, "").await;
    for (store, server) in &both.servers {
        let mut c = envoy(server).await;
        for _ in 0..3 {
            let r = ask(
                &mut c,
                vec![descriptor("ip", "10.1.0.1", Some(0)), descriptor("ip", "10.1.0.2", Some(1))],
                1,
            )
            .await;
            assert_eq!(r.overall_code, Code::Ok as i32, "{store}");
        }
        assert_eq!(
            remaining(&mut c, "ip", "10.1.0.1").await,
            (Code::Ok as i32, 10),
            "{store}: looked at only"
        );
        assert_eq!(remaining(&mut c, "ip", "10.1.0.2").await, (Code::Ok as i32, 7), "{store}");
        // A look at a key at its limit is OK with nothing left.
        ask(&mut c, vec![descriptor("ip", "10.1.0.3", Some(10))], 1).await;
        assert_eq!(remaining(&mut c, "ip", "10.1.0.3").await, (Code::Ok as i32, 0), "{store}");
        // The request-level hits_addend 0 still means 1.
        ask(&mut c, vec![descriptor("ip", "10.1.0.4", None)], 0).await;
        assert_eq!(remaining(&mut c, "ip", "10.1.0.4").await.1, 9, "{store}");
    }
}

#[tokio::test]
async fn overrides_with_other_units_never_share_a_counter() {
    let both = both(false, "").await;
    for (store, server) in &both.servers {
        let mut c = envoy(server).await;
        let over = |rate: u32, unit: i32, hits: u64| RateLimitDescriptor {
            entries: vec![entry("tenant", "acme")],
            limit: Some(RateLimitOverride { requests_per_unit: rate, unit }),
            hits_addend: Some(UInt64Value { value: hits }),
            ..Default::default()
        };
        // 100 a day (unit 4) and 10 a second (unit 1) on the same entries.
        let r = ask(&mut c, vec![over(100, 4, 2)], 1).await;
        assert_eq!(r.statuses[0].limit_remaining, 98, "{store}");
        let r = ask(&mut c, vec![over(10, 1, 5)], 1).await;
        assert_eq!(r.statuses[0].limit_remaining, 5, "{store}: its own counter");
        let r = ask(&mut c, vec![over(100, 4, 1)], 1).await;
        assert_eq!(r.statuses[0].limit_remaining, 97, "{store}: untouched by the other");
        // Another rate in the same unit counts with it, against its own limit, as the reference
        // keys counters by entries and window: it neither resets the count nor lifts it.
        let r = ask(&mut c, vec![over(50, 4, 1)], 1).await;
        assert_eq!(r.statuses[0].limit_remaining, 46, "{store}: 4 of 50");
        let r = ask(&mut c, vec![over(1_000_000, 4, 1)], 1).await;
        assert_eq!(r.statuses[0].limit_remaining, 1_000_000 - 5, "{store}: 5 of a million");
        let r = ask(&mut c, vec![over(5, 4, 1)], 1).await;
        assert_eq!(r.statuses[0].code, Code::OverLimit as i32, "{store}: 6 of 5");
    }
}

#[tokio::test]
async fn a_batch_past_max_in_flight_is_decided_whole_by_a_healthy_redis() {
    let both = both(false, "server:\n  max_in_flight: 4\nlimits:\n  max_batch: 200\n").await;
    for (store, server) in &both.servers {
        let mut native = server.client().await;
        // 200 entries of 3 units each: far past 4 calls in flight, and 600 of the 1000 a minute.
        let batch = || pb::CheckRequest {
            requests: (0..200)
                .map(|_| pb::RateRequest { cost: Some(3), ..common::request(&[("user", "batcher")]) })
                .collect(),
            dry_run: false,
        };
        let mut admitted = 0;
        for _ in 0..2 {
            let decisions = native.check(batch()).await.expect("Check").into_inner().decisions;
            assert_eq!(decisions.len(), 200);
            let expected = if *store == "redis" { "redis" } else { "local" };
            assert!(decisions.iter().all(|d| d.source != "shed"), "{store}: some entries were shed");
            let allowed: Vec<&pb::Decision> = decisions.iter().filter(|d| d.allowed).collect();
            let sources: std::collections::BTreeSet<&str> =
                allowed.iter().map(|d| d.source.as_str()).collect();
            assert!(
                allowed.iter().all(|d| d.source == expected),
                "{store}: not all from the store: {sources:?}"
            );
            admitted += allowed.len();
        }
        assert_eq!(admitted, 333, "{store}: exactly the limit of 1000 units a minute, 3 at a time");
    }
}

#[tokio::test]
async fn a_sliding_log_descriptor_is_capped_like_a_tier() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("big.yaml");
    std::fs::write(
        &file,
        "domain: big\ndescriptors:\n  - key: k\n    rate_limit: {unit: hour, requests_per_unit: 100000}\n    \
         sluice: {algorithm: sliding_log}\n",
    )
    .expect("write");
    let yaml = format!("envoy:\n  paths: [\"{}\"]\ntiers: []\n", file.display());
    let config = common::write_config(&yaml);
    let e = sluice::config::load_with_env(Some(config.path()), Some(Default::default()))
        .expect_err("100000 is past the sliding_log cap");
    let text = e.to_string();
    assert!(text.contains("requests_per_unit") && text.contains("sliding_log"), "{text}");
}

// ---------------------------------------------------------------------------------------------
// The stores themselves, at instants the test chooses, Redis and in process alike.

async fn stores() -> (RedisServer, RedisStore, LocalStore) {
    let server = RedisServer::start();
    let redis = server.store().await;
    (server, redis, LocalStore::default())
}

fn log_check(key: &str, limit: u64, cost: u64) -> Check {
    Check::plain(
        key.into(),
        Algorithm::SlidingLog,
        Quota { limit, window_ms: 60_000, cost },
        FailureMode::Local,
    )
}

#[tokio::test]
async fn a_sliding_log_keeps_one_entry_per_request_whatever_its_cost() {
    let (server, redis, local) = stores().await;
    let now = 5_000_000;
    let big = log_check("sluice:{log:big}", 10_000, 10_000);
    let started = std::time::Instant::now();
    assert!(redis.decide_at(std::slice::from_ref(&big), Mode::Consume, now).await.expect("redis").admitted);
    let took = started.elapsed();
    assert!(local.decide_at(std::slice::from_ref(&big), Mode::Consume, now).admitted);
    let entries: u64 = server.cmd(redis::cmd("ZCARD").arg("sluice:{log:big}:log"));
    assert_eq!(entries, 1, "one member for a request of 10,000 units");
    assert!(took < Duration::from_millis(500), "{took:?}");
    // Retry-after stays exact with entries of many units: the first entry must leave.
    let one = log_check("sluice:{log:big}", 10_000, 1);
    for store in [Box::new(redis.clone()) as Box<dyn AtInstant>, Box::new(local.clone())] {
        let v = store.at(&one, now + 1_000).await;
        assert!(!v.0);
        assert_eq!(v.1, 59_000, "the 10,000 units leave together at {}", now + 60_000);
        assert!(store.at(&one, now + 60_000).await.0);
    }
}

/// Within its window a count moves by HINCRBY until it would pass MAX_COUNT, where it is written
/// whole, saturated. No step of a climb through huge costs may fail a call or part from the
/// in-process store's answer.
#[tokio::test]
async fn counts_climbing_to_saturation_stay_decided() {
    let (server, redis, local) = stores().await;
    let now = 7_000_000;
    // One count written whole past the exact range, then added to; one climbing across it.
    let climbs: [&[u64]; 2] =
        [&[1_234_567_890_123_456, 5, 1], &[99_999_999_999_990, 5, 4, 1, 1, 1 << 52, u64::MAX, 3]];
    for (algorithm, costs) in [Algorithm::SlidingWindow, Algorithm::FixedWindow]
        .into_iter()
        .flat_map(|a| climbs.into_iter().map(move |c| (a, c)))
    {
        let key = format!("sluice:{{climb:{algorithm:?}:{}}}", costs[0]);
        let at = |cost: u64| {
            let mut check = Check::plain(
                key.clone(),
                algorithm,
                Quota { limit: 1_000_000, window_ms: 60_000, cost },
                FailureMode::Local,
            );
            check.counts = sluice::check::Counts::Everything;
            check
        };
        let costs = [99_999_999_999_990, 5, 4, 1, 1, 1, 1 << 52, u64::MAX, 3];
        for (i, cost) in costs.into_iter().enumerate() {
            let check = at(cost);
            let t = now + i as u64;
            let r = redis.decide_at(std::slice::from_ref(&check), Mode::Consume, t).await;
            let r = r.unwrap_or_else(|e| panic!("{algorithm:?} cost {cost}: {e}"));
            let l = local.decide_at(std::slice::from_ref(&check), Mode::Consume, t);
            assert_eq!(
                (r.admitted, r.verdicts[0].remaining, r.verdicts[0].retry_after_ms),
                (l.admitted, l.verdicts[0].remaining, l.verdicts[0].retry_after_ms),
                "{algorithm:?} step {i}, cost {cost}"
            );
        }
        let small = at(1);
        let r = redis.decide_at(std::slice::from_ref(&small), Mode::Consume, now + 100).await.expect("redis");
        assert!(!r.admitted, "a saturated count still denies");
    }
    let _ = server;
}

#[tokio::test]
async fn a_penalty_never_shortens_the_window_wait() {
    let (_server, redis, local) = stores().await;
    let penalty = Penalty { violations: 1, period_ms: 60_000, base_ms: 1_000, factor: 2, max_ms: 10_000 };
    let check = |key: &str| Check {
        penalty: Some(penalty),
        ..Check::plain(
            key.into(),
            Algorithm::SlidingWindow,
            Quota { limit: 2, window_ms: 60_000, cost: 1 },
            FailureMode::Local,
        )
    };
    for (name, store) in [("redis", Box::new(redis) as Box<dyn AtInstant>), ("in process", Box::new(local))] {
        let c = check("sluice:{pen:k}");
        let mut now = 6_000_010;
        assert!(store.at(&c, now).await.0 && store.at(&c, now).await.0, "{name}");
        // A client that obeys every retry-after: each must be at least the window's own wait, so it
        // never runs into a longer block by obeying.
        let (allowed, retry) = store.at(&c, now).await;
        assert!(!allowed, "{name}");
        assert!(retry > 10_000, "{name}: the window's wait ({retry} ms) outlasts the block");
        now += retry;
        assert!(store.at(&c, now).await.0, "{name}: allowed after waiting {retry} ms");
    }
}

#[tokio::test]
async fn an_adaptive_limit_never_drops_below_the_cost() {
    let (_server, redis, local) = stores().await;
    for (name, store) in [("redis", Box::new(redis) as Box<dyn AtInstant>), ("in process", Box::new(local))] {
        // Limit 5, cost 3, score 100 (every client factor): the reduced limit would be 2.
        let c = Check {
            adaptive: Some(AdaptiveCheck {
                settings: Adaptive { reduction_percent: 60, ..Adaptive::default() },
                client_factors: 0b111,
                reputation: Vec::new().into(),
            }),
            ..Check::plain(
                "sluice:{adaptive:k}".into(),
                Algorithm::SlidingWindow,
                Quota { limit: 5, window_ms: 60_000, cost: 3 },
                FailureMode::Local,
            )
        };
        let now = 7_000_000;
        let (allowed, _) = store.at(&c, now).await;
        assert!(allowed, "{name}: a cost the tier accepts can pass");
        let (allowed, retry) = store.at(&c, now).await;
        assert!(!allowed, "{name}");
        assert!(store.at(&c, now + retry).await.0, "{name}: allowed after its retry-after of {retry} ms");
    }
}

#[test]
fn a_fair_share_smaller_than_the_cost_still_admits_it_when_full() {
    // Redis down: limit 10 over 4 replicas is 2 each; a cost of 3 must pass once refilled.
    let fallback = LocalStore::new(Counting::FairShare { replicas: 4 }, 1_000);
    let c = Check::plain(
        "sluice:{share:k}".into(),
        Algorithm::SlidingWindow,
        Quota { limit: 10, window_ms: 1_000, cost: 3 },
        FailureMode::Local,
    );
    let now = 10_000;
    assert!(fallback.decide_at(std::slice::from_ref(&c), Mode::Consume, now).admitted);
    let denied = fallback.decide_at(std::slice::from_ref(&c), Mode::Consume, now);
    assert!(!denied.admitted);
    let retry = denied.verdicts[0].retry_after_ms;
    assert_eq!(retry, 1_500, "3 units at 2 a second");
    assert!(fallback.decide_at(std::slice::from_ref(&c), Mode::Consume, now + retry).admitted);
    assert!(!fallback.decide_at(std::slice::from_ref(&c), Mode::Consume, now + retry).admitted);
}

#[tokio::test]
async fn a_baseline_outlives_a_sweep_as_long_as_redis_keeps_it() {
    let (_server, redis, local) = stores().await;
    let c = Check {
        baseline: Some(sluice::algorithm::baseline::Baseline { sensitivity_percent: 300, max_percent: 300 }),
        ..Check::plain(
            "sluice:{base:k}".into(),
            Algorithm::SlidingWindow,
            Quota { limit: 10, window_ms: 1_000, cost: 1 },
            FailureMode::Local,
        )
    };
    // Forty busy windows, then three quiet ones with the in-process store swept.
    let mut now = 8_000_000;
    for _ in 0..40 {
        for _ in 0..30 {
            local.decide_at(std::slice::from_ref(&c), Mode::Consume, now);
            redis.decide_at(std::slice::from_ref(&c), Mode::Consume, now).await.expect("redis");
        }
        now += 1_000;
    }
    now += 3_000;
    local.sweep(now);
    let l = local.decide_at(std::slice::from_ref(&c), Mode::DryRun, now);
    let r = redis.decide_at(std::slice::from_ref(&c), Mode::DryRun, now).await.expect("redis");
    assert!(r.verdicts[0].limit > 10, "the baseline raised the limit: {:?}", r.verdicts[0]);
    assert_eq!(l.verdicts[0].limit, r.verdicts[0].limit, "the in-process store forgot the baseline");
}

/// One check at an instant on either store: (allowed, retry_after_ms).
trait AtInstant {
    fn at<'a>(&'a self, check: &'a Check, now: u64) -> futures::future::BoxFuture<'a, (bool, u64)>;
}

impl AtInstant for RedisStore {
    fn at<'a>(&'a self, check: &'a Check, now: u64) -> futures::future::BoxFuture<'a, (bool, u64)> {
        Box::pin(async move {
            let o = self.decide_at(std::slice::from_ref(check), Mode::Consume, now).await.expect("redis");
            (o.admitted, o.verdicts[0].retry_after_ms)
        })
    }
}

impl AtInstant for LocalStore {
    fn at<'a>(&'a self, check: &'a Check, now: u64) -> futures::future::BoxFuture<'a, (bool, u64)> {
        let o = self.decide_at(std::slice::from_ref(check), Mode::Consume, now);
        Box::pin(std::future::ready((o.admitted, o.verdicts[0].retry_after_ms)))
    }
}
