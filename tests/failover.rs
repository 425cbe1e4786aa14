//! Redis dies or hangs under load: no failed RPC, no decision later than the deadline plus a small
//! margin, decisions from the fallback within a second (holding the fair share), and back to Redis
//! within two seconds of its return.

mod common;

use std::time::{Duration, Instant};

use common::{Load, RedisServer, Seen, SluiceServer, first_from, request};

const DEADLINE: Duration = Duration::from_millis(50);
/// Scheduling slack on a loaded 2-core machine, in a debug build, with clients in the same process.
const MARGIN: Duration = Duration::from_millis(150);

fn yaml(url: &str) -> String {
    format!(
        "redis:
  url: {url}
  timeout_ms: {}
  probe_interval_ms: 100
fallback:
  replicas: 2
local:
  # Without the over-limit cache, so the hot key shows the fallback's own buckets.
  over_limit_max_keys: 0
tiers:
  - name: hot
    match: {{endpoint: /hot}}
    key: [ip]
    limit: 40
    window: 20s
  - name: steady
    key: [ip]
    limit: 100000000
    window: 1m
",
        DEADLINE.as_millis()
    )
}

/// The outages run one at a time: they measure latency, which a parallel outage would disturb.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn outage(freeze: bool) {
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut redis = RedisServer::start();
    let server = SluiceServer::start(&yaml(&redis.url()), None).await;
    // Six clients over a hundred keys, and a seventh hammering one hot key.
    const HOT: usize = 6;
    let load = Load::start(server.grpc_addr, HOT + 1, Duration::ZERO, |client, n| {
        if client == HOT {
            request(&[("ip", "198.51.100.1"), ("endpoint", "/hot")])
        } else {
            request(&[("ip", &format!("10.{client}.0.{}", n % 100))])
        }
    });

    tokio::time::sleep(Duration::from_millis(500)).await;
    let failed_at = Instant::now();
    if freeze {
        redis.freeze();
    } else {
        redis.kill();
    }
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let back_at = Instant::now();
    if freeze {
        redis.thaw();
    } else {
        redis.start_again();
    }
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let (seen, failed) = load.finish().await;
    assert!(failed.is_empty(), "{} failed RPCs, e.g. {:?}", failed.len(), failed.first());
    assert!(seen.len() > 500, "only {} decisions", seen.len());
    assert!(
        seen.iter().any(|s| s.sent < failed_at && s.source == "redis"),
        "decisions came from redis at first"
    );

    let slowest = seen.iter().max_by_key(|s| s.latency).expect("decisions");
    assert!(
        slowest.latency <= DEADLINE + MARGIN,
        "a decision took {:?}, over {DEADLINE:?} + {MARGIN:?}; sent {:?} after the failure, from {}",
        slowest.latency,
        slowest.sent.saturating_duration_since(failed_at),
        slowest.source
    );

    let fallback = first_from(&seen, "fallback", failed_at).expect("no decision came from the fallback");
    assert!(fallback - failed_at < Duration::from_secs(1), "fallback after {:?}", fallback - failed_at);
    let settled = failed_at + Duration::from_secs(1);
    let elsewhere: Vec<(Duration, &str)> = seen
        .iter()
        .filter(|s| s.sent >= settled && s.sent < back_at && s.source != "fallback")
        .map(|s| (s.sent - failed_at, s.source.as_str()))
        .collect();
    assert!(
        elsewhere.is_empty(),
        "while redis was {} every decision after the first second comes from the fallback; these did not \
         (sent after the failure, source): {:?}",
        if freeze { "frozen" } else { "dead" },
        &elsewhere[..elsewhere.len().min(10)]
    );

    // The hot key: limit 40 per 20 s over 2 replicas -> this replica's bucket holds 20 and refills
    // at 1 per second, so the fallback admits the full bucket plus what refilled while it served.
    let hot: Vec<&Seen> = seen.iter().filter(|s| s.client == HOT && s.source == "fallback").collect();
    let span = hot.last().expect("hot").sent - hot.first().expect("hot").sent;
    let hot_allowed = hot.iter().filter(|s| s.allowed).count();
    let most = 20 + span.as_secs() as usize + 1;
    assert!(hot.len() > 100, "the hot client sent only {} requests during the outage", hot.len());
    assert!(
        (20..=most).contains(&hot_allowed),
        "the fallback admitted {hot_allowed} of the hot key in {span:?} (fair share 20 + refill: at most {most})"
    );

    let redis_again = first_from(&seen, "redis", back_at).expect("decisions never returned to redis");
    assert!(
        redis_again - back_at < Duration::from_secs(2),
        "back to redis after {:?}",
        redis_again - back_at
    );
    let (status, metrics) = common::http_get(server.http_addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("sluice_circuit_open 0"), "the circuit is closed again");
    let openings = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sluice_circuit_openings_total "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert!(openings.is_some_and(|n| n >= 1.0), "the opening is counted: {openings:?}");
    assert!(metrics.contains("sluice_redis_errors_total{error_type="), "redis errors are counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_under_load() {
    outage(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_frozen_under_load() {
    outage(true).await;
}

/// With no Redis at all, each tier follows its failure mode: `allow` passes uncounted, `deny`
/// denies, `local` counts the fair share; and the answers come at once.
#[tokio::test]
async fn failure_modes_per_tier_and_global() {
    let dead = format!("redis://127.0.0.1:{}", common::pick_port(false));
    let yaml = format!(
        "redis:
  url: {dead}
  timeout_ms: 50
fallback:
  mode: allow
  replicas: 3
tiers:
  - name: open
    match: {{endpoint: /open}}
    key: [ip]
    limit: 1
    window: 1h
  - name: closed
    match: {{endpoint: /closed}}
    key: [ip]
    limit: 1000
    window: 1h
    on_redis_failure: deny
  - name: shared
    match: {{endpoint: /shared}}
    key: [ip]
    limit: 30
    window: 1h
    on_redis_failure: local
"
    );
    let server = SluiceServer::start(&yaml, None).await;
    let mut client = server.client().await;
    let at = |endpoint: &str| request(&[("ip", "192.0.2.7"), ("endpoint", endpoint)]);
    // The first call waits for the server to finish starting (its connection attempt to the dead
    // Redis included); only answers after that are timed.
    assert!(common::check(&mut client, at("/none")).await.allowed, "no tier matches");

    for _ in 0..5 {
        let started = Instant::now();
        let d = common::check(&mut client, at("/open")).await;
        assert!(started.elapsed() < DEADLINE + MARGIN, "{:?}", started.elapsed());
        assert!(d.allowed && d.source == "fallback", "the global mode allows: {d:?}");
    }
    let d = common::check(&mut client, at("/closed")).await;
    assert!(!d.allowed && d.retry_after_ms > 0 && d.tier == "closed", "deny fails closed: {d:?}");
    let allowed = {
        let mut n = 0;
        for _ in 0..20 {
            n += usize::from(common::check(&mut client, at("/shared")).await.allowed);
        }
        n
    };
    assert_eq!(allowed, 10, "a fair share of 30 over 3 replicas");
}
