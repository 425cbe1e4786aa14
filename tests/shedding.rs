//! Load shedding: past `server.max_in_flight` decisions, or with the caller's deadline about to
//! pass, requests are answered at once by their tiers' failure modes instead of waiting, and
//! `sluice_shed_total` counts them.

mod common;

use std::time::{Duration, Instant};

use common::proxy::TcpProxy;
use common::{RedisServer, SluiceServer, http_get, request};
use sluice::api::pb;

fn yaml(redis_url: &str, max_in_flight: usize) -> String {
    format!(
        "server:\n  max_in_flight: {max_in_flight}
tiers:
  - name: strict
    match: {{endpoint: /login}}
    key: [ip]
    limit: 1000
    window: 1m
    on_redis_failure: deny
  - name: open
    match: {{endpoint: /feed}}
    key: [ip]
    limit: 1000
    window: 1m
    on_redis_failure: allow
redis:
  url: {redis_url}
  timeout_ms: 3000
"
    )
}

fn call(endpoint: &str) -> pb::CheckRequest {
    pb::CheckRequest {
        requests: vec![request(&[("ip", "10.9.9.9"), ("endpoint", endpoint)])],
        dry_run: false,
    }
}

/// The value of one series on /metrics, 0 when absent.
async fn metric(server: &SluiceServer, series: &str) -> f64 {
    let text = http_get(server.http_addr, "/metrics").await.1;
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_past_the_queue_bound_is_answered_at_once_by_the_failure_mode() {
    let redis = RedisServer::start();
    let proxy = TcpProxy::start(format!("127.0.0.1:{}", redis.port).parse().expect("addr"));
    let server = SluiceServer::start(&yaml(&proxy.url(), 4), None).await;
    let mut client = server.client().await;
    let d = client.check(call("/login")).await.expect("check").into_inner().decisions.remove(0);
    assert_eq!(d.source, "redis");

    // Redis hangs. Of eight decisions, four wait on it (up to redis.timeout_ms, 3 s) and fill the
    // queue; the other four are shed at once.
    proxy.stall();
    let shed_before = metric(&server, "sluice_shed_total{reason=\"queue\"}").await;
    let mut first: Vec<_> = (0..8)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move { client.check(call("/login")).await })
        })
        .collect();
    assert_eventually!(
        first.iter().filter(|t| t.is_finished()).count() == 4,
        Duration::from_secs(2),
        "four of eight should have been shed at once"
    );
    let stuck: Vec<_> = first.extract_if(.., |t| !t.is_finished()).collect();
    for shed in first {
        let d = shed.await.expect("task").expect("answered").into_inner().decisions.remove(0);
        assert_eq!(d.source, "shed");
    }

    let burst_started = Instant::now();
    let burst: Vec<_> = (0..40)
        .map(|i| {
            let mut client = client.clone();
            let endpoint = if i % 2 == 0 { "/login" } else { "/feed" };
            tokio::spawn(async move {
                let started = Instant::now();
                let d = client.check(call(endpoint)).await.expect("a shed request still gets an answer");
                (endpoint, d.into_inner().decisions.remove(0), started.elapsed())
            })
        })
        .collect();
    for task in burst {
        let (endpoint, d, took) = task.await.expect("burst task");
        assert_eq!(d.source, "shed", "{endpoint}: {d:?}");
        assert!(took < Duration::from_millis(1000), "{endpoint}: a shed answer took {took:?}");
        match endpoint {
            "/login" => {
                assert!(!d.allowed, "the tier that fails closed denies");
                assert!(d.retry_after_ms > 0);
            }
            _ => assert!(d.allowed, "the tier that fails open allows"),
        }
    }
    assert!(burst_started.elapsed() < Duration::from_secs(2), "the burst waited on the stalled store");
    let shed_after = metric(&server, "sluice_shed_total{reason=\"queue\"}").await;
    assert!(shed_after >= shed_before + 44.0, "shed counter went from {shed_before} to {shed_after}");

    proxy.heal();
    for task in stuck {
        let answered = task.await.expect("stuck task").expect("the queued requests are answered too");
        assert_eq!(answered.into_inner().decisions.len(), 1);
    }
    assert_eventually!(
        client.check(call("/login")).await.expect("check").into_inner().decisions[0].source == "redis",
        Duration::from_secs(5),
        "decisions never went back to redis"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_callers_deadline_bounds_the_wait_without_opening_the_circuit() {
    let redis = RedisServer::start();
    let proxy = TcpProxy::start(format!("127.0.0.1:{}", redis.port).parse().expect("addr"));
    let server = SluiceServer::start(&yaml(&proxy.url(), 1024), None).await;
    let mut client = server.client().await;
    let with_deadline = |endpoint: &str, timeout: Duration| {
        let mut req = tonic::Request::new(call(endpoint));
        req.set_timeout(timeout);
        req
    };
    let d = client.check(with_deadline("/login", Duration::from_millis(500))).await.expect("check");
    assert_eq!(d.into_inner().decisions[0].source, "redis", "a deadline Redis meets changes nothing");

    proxy.stall();
    let started = Instant::now();
    let d = client
        .check(with_deadline("/login", Duration::from_millis(300)))
        .await
        .expect("answered before the caller's deadline")
        .into_inner()
        .decisions
        .remove(0);
    assert!(started.elapsed() < Duration::from_millis(300), "took {:?}", started.elapsed());
    assert_eq!(d.source, "shed");
    assert!(!d.allowed, "answered by the tier's failure mode (deny)");
    assert_eq!(
        metric(&server, "sluice_circuit_open").await,
        0.0,
        "a caller's short deadline does not trip the circuit"
    );
    assert!(metric(&server, "sluice_shed_total{reason=\"deadline\"}").await >= 1.0);
    proxy.heal();

    // A deadline that leaves no time to decide is refused as late, without touching Redis, and
    // never answered by the failure mode (which would let a client pick `allow` at will).
    let calls_before = redis.function_calls();
    let e = client.check(with_deadline("/feed", Duration::from_micros(500))).await.expect_err("late");
    assert!(matches!(e.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled), "{e:?}");
    assert_eq!(calls_before, redis.function_calls(), "no decision ran for a request already out of time");
}
