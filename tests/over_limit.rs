//! The over-limit cache: once Redis denies a key, the same request is denied from the cache
//! until its retry-after, without a script call; an admin reset empties the cache.

mod common;

use std::time::Duration;

use common::{RedisServer, SluiceServer, check, request};
use sluice::api::pb;

const TOKEN: &str = "over-limit-admin-token-0123";

#[tokio::test]
async fn denials_are_answered_from_the_cache_until_their_retry_after() {
    let redis = RedisServer::start();
    let yaml = format!(
        "admin:\n  grpc_addr: 127.0.0.1:0\n  token: {TOKEN}\ntiers:\n  - name: api\n    key: [ip]\n    limit: 3\n    window: 2s\n    algorithm: sliding_log\n  - name: watch\n    key: [ip]\n    limit: 3\n    window: 2s\n    shadow: true\n"
    );
    let server = SluiceServer::start(&yaml, Some(&redis.url())).await;
    let mut client = server.client().await;
    let ip = [("ip", "198.51.100.7")];
    for _ in 0..3 {
        assert!(check(&mut client, request(&ip)).await.allowed);
    }
    let first = check(&mut client, request(&ip)).await;
    assert!(!first.allowed);
    assert_eq!(first.source, "redis", "the first denial comes from Redis");

    let before = redis.function_calls();
    let mut last_retry = first.retry_after_ms;
    for _ in 0..20 {
        let d = check(&mut client, request(&ip)).await;
        assert!(!d.allowed);
        assert_eq!(d.source, "cache");
        assert_eq!(d.tier, "api");
        assert_eq!(d.tiers.len(), 1, "only the denying tier is reported: {:?}", d.tiers);
        assert!(
            d.retry_after_ms <= last_retry && d.retry_after_ms > 0,
            "{} after {last_retry}",
            d.retry_after_ms
        );
        assert!(common::header(&d, "Retry-After").is_some());
        last_retry = d.retry_after_ms;
    }
    assert_eq!(redis.function_calls(), before, "cached denials make no script call");
    // Another client is not affected.
    assert_eq!(check(&mut client, request(&[("ip", "198.51.100.8")])).await.source, "redis");

    // Past the retry-after, Redis decides again, and allows.
    tokio::time::sleep(Duration::from_millis(last_retry + 20)).await;
    let d = check(&mut client, request(&ip)).await;
    assert_eq!(d.source, "redis");
    assert!(d.allowed, "the sliding log freed a unit: {d:?}");

    // Denied again and cached; an operator's reset empties the cache at once.
    while check(&mut client, request(&ip)).await.source != "cache" {}
    let addr = server.admin_addr.expect("admin listener");
    let mut admin = pb::admin_client::AdminClient::connect(format!("http://{addr}")).await.expect("admin");
    let mut reset =
        tonic::Request::new(pb::KeyRequest { tier: "api".into(), attributes: request(&ip).attributes });
    reset.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().expect("ascii"));
    admin.reset(reset).await.expect("reset");
    let d = check(&mut client, request(&ip)).await;
    assert!(d.allowed, "after a reset the key is allowed at once: {d:?}");
    assert_eq!(d.source, "redis");
}

#[tokio::test]
async fn tiers_that_must_see_every_request_are_never_cached() {
    let yaml = "tiers:\n  - name: failures\n    key: [ip]\n    limit: 1\n    window: 1m\n    count: failures\n  - name: hostile\n    key: [ip]\n    limit: 1\n    window: 1m\n    adaptive: true\n";
    let server = SluiceServer::start(yaml, None).await;
    let mut client = server.client().await;
    let ip = [("ip", "198.51.100.9"), ("user_agent", "curl/8")];
    client
        .report(pb::ReportRequest {
            attributes: request(&ip).attributes,
            outcome: pb::Outcome::Failure.into(),
            tiers: vec!["failures".into()],
        })
        .await
        .expect("report");
    for _ in 0..5 {
        let d = check(&mut client, request(&ip)).await;
        assert!(!d.allowed);
        assert_eq!(d.source, "local", "failure-counting and adaptive tiers ask the store every time");
    }
}
