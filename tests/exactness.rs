//! Exact counts under concurrency: two Sluice servers share one Redis, 50 clients race, and a limit
//! of N admits exactly N, because each decision is decided atomically in a script call, even when
//! one call carries many requests on the same key (which these races make: every request is on one
//! key, and each server gathers the requests that arrive while its last call is in flight).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{RedisServer, SluiceServer, check, request};

async fn race(algorithm: &str, limit: usize, extra: usize) {
    let redis = RedisServer::start();
    let yaml = format!(
        "tiers:\n  - name: shared\n    key: [user]\n    algorithm: {algorithm}\n    limit: {limit}\n    window: 1h\n"
    );
    let a = SluiceServer::start(&yaml, Some(&redis.url())).await;
    let b = SluiceServer::start(&yaml, Some(&redis.url())).await;
    let clients = 50;
    let total = limit + extra;
    let sent = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..clients {
        let mut client = if i % 2 == 0 { a.client().await } else { b.client().await };
        let sent = Arc::clone(&sent);
        tasks.push(tokio::spawn(async move {
            let mut allowed = 0;
            while sent.fetch_add(1, Ordering::SeqCst) < total {
                let d = check(&mut client, request(&[("user", "alice")])).await;
                allowed += usize::from(d.allowed);
            }
            allowed
        }));
    }
    let mut allowed = 0;
    for t in tasks {
        allowed += t.await.expect("client task");
    }
    assert_eq!(allowed, limit, "{algorithm}: {total} requests from {clients} clients over two servers");
    // And the counts really came from Redis, not from either server's fallback.
    let metrics = reqwest_metrics(a.http_addr).await + &reqwest_metrics(b.http_addr).await;
    assert!(!metrics.contains("source=\"fallback\""), "a decision fell back: {metrics}");
    // Calls carried several requests on the one key. (Servers in one process share one registry:
    // one scrape holds the calls of both, and of a race running beside this one.)
    let one = reqwest_metrics(a.http_addr).await;
    let value = |name: &str| -> f64 {
        one.lines().filter_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok()).sum()
    };
    let (requests, calls) =
        (value("sluice_redis_batch_requests_sum"), value("sluice_redis_batch_requests_count"));
    assert!(requests > 0.0, "no request went through a call");
    assert!(calls < requests, "{calls} calls for {requests} requests: no call carried two");
}

async fn reqwest_metrics(addr: std::net::SocketAddr) -> String {
    common::http_get(addr, "/metrics").await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sliding_window_admits_exactly_the_limit() {
    race("sliding_window", 200, 150).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sliding_log_admits_exactly_the_limit() {
    race("sliding_log", 100, 100).await;
}
