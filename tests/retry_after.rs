//! Honest retry-after over real gRPC and real time: a denied request retried after `retry_after_ms`
//! passes; retried at 90% of it, it is still denied. On Redis (its own clock) and in process.

mod common;

use std::time::{Duration, Instant};

use common::{RedisServer, SluiceServer, check, header, request};

async fn honest(redis: Option<&RedisServer>, algorithm: &str) {
    let yaml = format!(
        "tiers:\n  - name: login\n    key: [ip]\n    algorithm: {algorithm}\n    limit: 3\n    window: 2s\n"
    );
    let server = SluiceServer::start(&yaml, redis.map(|r| r.url()).as_deref()).await;
    let mut client = server.client().await;
    let req = || request(&[("ip", "10.0.0.1")]);
    for i in 0..3 {
        assert!(check(&mut client, req()).await.allowed, "request {i}");
    }
    let sent = Instant::now();
    let denied = check(&mut client, req()).await;
    let arrived = Instant::now();
    assert!(!denied.allowed);
    assert_eq!(denied.tier, "login");
    let retry = Duration::from_millis(denied.retry_after_ms);
    assert!(retry > Duration::from_millis(300), "retry after {retry:?} is too short to test honestly");
    let secs = denied.retry_after_ms.div_ceil(1000).to_string();
    assert_eq!(header(&denied, "retry-after"), Some(secs.as_str()));

    // The server decided at or after `sent`; at 90% of the wait (from `sent`) it must still deny.
    tokio::time::sleep_until((sent + retry * 9 / 10).into()).await;
    let early = check(&mut client, req()).await;
    assert!(!early.allowed, "{algorithm}: retried at 90% of {retry:?} and allowed");
    assert!(sent.elapsed() < retry, "the early retry was not early enough to mean anything");

    // The server decided before the answer arrived: once the whole wait has passed since then, the
    // retry must pass.
    tokio::time::sleep_until((arrived + retry).into()).await;
    let late = check(&mut client, req()).await;
    assert!(
        late.allowed,
        "{algorithm}: retried after {retry:?} and still denied (retry_after_ms {})",
        late.retry_after_ms
    );
}

#[tokio::test]
async fn honest_on_redis_sliding_window() {
    let redis = RedisServer::start();
    honest(Some(&redis), "sliding_window").await;
}

#[tokio::test]
async fn honest_on_redis_sliding_log() {
    let redis = RedisServer::start();
    honest(Some(&redis), "sliding_log").await;
}

#[tokio::test]
async fn honest_in_process() {
    honest(None, "sliding_window").await;
    honest(None, "sliding_log").await;
}
