//! Redis over TLS (`rediss://`): Sluice verifies the server against a CA and presents a client
//! certificate to a server that demands one; without one it serves from the fallback.

mod common;

use std::collections::HashMap;

use common::certs::Ca;
use common::{RedisServer, SluiceServer, request};

fn yaml(redis: &RedisServer, tls: &str) -> String {
    format!(
        "tiers:\n  - name: edge\n    key: [ip]\n    limit: 3\n    window: 1m\nredis:\n  url: {}\n  timeout_ms: 500\n{tls}",
        redis.plain_url()
    )
}

#[tokio::test]
async fn decisions_are_shared_through_a_tls_redis_that_verifies_clients() {
    let ca = Ca::new("redis test ca");
    let redis = RedisServer::start_tls(&ca);
    let files = redis.tls().expect("a tls server");
    let tls = format!(
        "  tls:\n    ca_file: {}\n    cert_file: {}\n    key_file: {}\n",
        redis.file("client-ca.crt", &files.ca),
        redis.file("client.crt", &files.client.0),
        redis.file("client.key", &files.client.1),
    );
    let (a, b) = (
        SluiceServer::start(&yaml(&redis, &tls), None).await,
        SluiceServer::start(&yaml(&redis, &tls), None).await,
    );
    let (mut ca_client, mut cb_client) = (a.client().await, b.client().await);

    // Two replicas share one count of 3 through Redis.
    let mut allowed = 0;
    for i in 0..6 {
        let client = if i % 2 == 0 { &mut ca_client } else { &mut cb_client };
        let d = common::check(client, request(&[("ip", "10.1.1.1")])).await;
        // A repeated denial may come from the over-limit cache that Redis's first one filled.
        assert!(d.source == "redis" || (d.source == "cache" && !d.allowed), "decision {i}: {}", d.source);
        allowed += usize::from(d.allowed);
    }
    assert_eq!(allowed, 3, "exactly the limit passes across both replicas");
    let keys: Vec<String> = redis.cmd(redis::cmd("KEYS").arg("sluice:*"));
    assert!(!keys.is_empty(), "the count lives in the TLS Redis");
}

#[tokio::test]
async fn without_a_client_certificate_sluice_serves_from_the_fallback() {
    let ca = Ca::new("redis test ca");
    let redis = RedisServer::start_tls(&ca);
    let tls = format!("  tls:\n    ca_file: {}\n", redis.file("only-ca.crt", &ca.pem()));
    let server = SluiceServer::start(&yaml(&redis, &tls), None).await;
    let d = common::check(&mut server.client().await, request(&[("ip", "10.1.1.2")])).await;
    assert!(d.allowed);
    assert_eq!(d.source, "fallback", "refused by Redis: decided in process, not failed");

    // A server certificate from a CA Sluice does not trust is refused the same way.
    let stranger = Ca::new("someone else");
    let files = redis.tls().expect("a tls server");
    let tls = format!(
        "  tls:\n    ca_file: {}\n    cert_file: {}\n    key_file: {}\n",
        redis.file("stranger.crt", &stranger.pem()),
        redis.file("client2.crt", &files.client.0),
        redis.file("client2.key", &files.client.1),
    );
    let server = SluiceServer::start(&yaml(&redis, &tls), None).await;
    let d = common::check(&mut server.client().await, request(&[("ip", "10.1.1.3")])).await;
    assert_eq!(d.source, "fallback", "an untrusted server certificate is refused");
}

#[test]
fn tls_settings_that_cannot_work_name_their_key() {
    let parse = |redis: &str| {
        sluice::config::parse(&format!("tiers: []\nredis:\n{redis}"), "test", Some(HashMap::new()))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let plain_with_certs = parse("  url: redis://127.0.0.1:6379\n  tls:\n    ca_file: /etc/hosts\n");
    assert!(plain_with_certs.contains("redis.tls"), "{plain_with_certs}");
    let half_pair = parse("  url: rediss://127.0.0.1:6379\n  tls:\n    cert_file: /etc/hosts\n");
    assert!(half_pair.contains("cert_file and key_file"), "{half_pair}");
    let missing = parse("  url: rediss://127.0.0.1:6379\n  tls:\n    ca_file: /nonexistent/ca.pem\n");
    assert!(missing.contains("redis.tls.ca_file"), "{missing}");
    let mixed = parse("  cluster: [rediss://127.0.0.1:7000, redis://127.0.0.1:7001]\n");
    assert!(mixed.contains("rediss://"), "{mixed}");
    assert!(
        sluice::config::parse(
            "tiers: []\nredis:\n  url: rediss://127.0.0.1:6379\n",
            "test",
            Some(HashMap::new())
        )
        .is_ok(),
        "rediss:// alone trusts the system's roots"
    );
}
