//! Redis over TLS (`rediss://`): Sluice verifies the server against a CA and presents a client
//! certificate to a server that demands one; without one it serves from the fallback. Sentinel and
//! Cluster over TLS: every node Sluice reaches, the promoted master included, is reached over TLS.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::certs::Ca;
use common::cluster::RedisCluster;
use common::sentinel::RedisSentinel;
use common::{RedisServer, SluiceServer, request};
use sluice::api::pb::rate_limiter_client::RateLimiterClient;
use sluice::store::redis::key_slot;
use tonic::transport::Channel;

/// Six calls with the same attributes, taking turns over the clients (Sluice replicas): how many
/// were allowed. Each answer must come from Redis, or be a repeated denial from the over-limit
/// cache that Redis's first denial filled.
async fn allowed_by_redis(clients: &mut [RateLimiterClient<Channel>], attrs: &[(&str, &str)]) -> usize {
    let mut allowed = 0;
    for i in 0..6 {
        let client = &mut clients[i % clients.len()];
        let d = common::check(client, request(attrs)).await;
        assert!(d.source == "redis" || (d.source == "cache" && !d.allowed), "decision {i}: {}", d.source);
        allowed += usize::from(d.allowed);
    }
    allowed
}

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
    let tls = redis.tls().expect("a tls server").config();
    let (a, b) = (
        SluiceServer::start(&yaml(&redis, &tls), None).await,
        SluiceServer::start(&yaml(&redis, &tls), None).await,
    );
    let mut clients = [a.client().await, b.client().await];

    // Two replicas share one count of 3 through Redis.
    let allowed = allowed_by_redis(&mut clients, &[("ip", "10.1.1.1")]).await;
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
        files.client_cert.display(),
        files.client_key.display(),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sentinel_over_tls_shares_counts_and_follows_a_failover() {
    let ca = Ca::new("sentinel test ca");
    let mut sentinel = tokio::task::block_in_place(|| RedisSentinel::start_tls(&ca));
    let tls = sentinel.tls().expect("a tls setup").config();
    let nodes: Vec<String> = sentinel.sentinel_urls().iter().map(|u| format!("\"{u}\"")).collect();
    assert!(nodes.iter().all(|u| u.starts_with("\"rediss://")), "{nodes:?}");
    let yaml = format!(
        "tiers:\n  - name: edge\n    key: [ip]\n    limit: 3\n    window: 1m\nredis:\n  sentinel:\n    master_name: {}\n    nodes: [{}]\n  timeout_ms: 200\n  probe_interval_ms: 100\n{tls}",
        sentinel.master_name(),
        nodes.join(", "),
    );
    let (a, b) = (SluiceServer::start(&yaml, None).await, SluiceServer::start(&yaml, None).await);
    let mut clients = [a.client().await, b.client().await];

    // Two replicas share one count through the master the sentinels named, over TLS.
    assert_eq!(
        allowed_by_redis(&mut clients, &[("ip", "10.2.2.2")]).await,
        3,
        "exactly the limit passes across both replicas"
    );
    let keys: Vec<String> = sentinel.cmd_on(sentinel.primary_port(), redis::cmd("KEYS").arg("sluice:*"));
    assert!(!keys.is_empty(), "the count lives on the primary");

    // The primary dies: the sentinels promote the replica, and Sluice finds it over TLS.
    sentinel.kill_primary();
    let promoted = tokio::task::block_in_place(|| sentinel.wait_for_promotion(Duration::from_secs(20)));
    let deadline = Instant::now() + Duration::from_secs(10);
    for (i, client) in clients.iter_mut().enumerate() {
        for n in 0.. {
            let d = common::check(client, request(&[("ip", &format!("10.3.{i}.{n}"))])).await;
            if d.source == "redis" {
                break;
            }
            assert!(Instant::now() < deadline, "replica {i} did not return to redis after the failover");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(
        allowed_by_redis(&mut clients, &[("ip", "10.4.4.4")]).await,
        3,
        "exactly the limit passes on the promoted replica"
    );
    let keys: Vec<String> = sentinel.cmd_on(promoted, redis::cmd("KEYS").arg("sluice:{edge:10.4.4.4}*"));
    assert!(!keys.is_empty(), "counted on the promoted replica");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_over_tls_shares_counts_on_every_master() {
    let ca = Ca::new("cluster test ca");
    let cluster = tokio::task::block_in_place(|| RedisCluster::start_tls(3, 0, &ca));
    let tls = cluster.tls().expect("a tls cluster").config();
    let seeds: Vec<String> = cluster.seed_urls().iter().map(|u| format!("\"{u}\"")).collect();
    assert!(seeds.iter().all(|u| u.starts_with("\"rediss://")), "{seeds:?}");
    let yaml = format!(
        "tiers:\n  - name: per_user\n    key: [user]\n    limit: 3\n    window: 1m\nredis:\n  cluster: [{}]\n  timeout_ms: 200\n{tls}",
        seeds.join(", ")
    );
    let (a, b) = (SluiceServer::start(&yaml, None).await, SluiceServer::start(&yaml, None).await);
    let mut clients = [a.client().await, b.client().await];

    // One user on each master (the cluster names its masters by their TLS ports).
    let mut masters = std::collections::HashSet::new();
    let users: Vec<String> = (0..)
        .map(|i| format!("user-{i}"))
        .filter(|u| {
            masters.insert(cluster.master_for_slot(key_slot(format!("sluice:{{per_user:{u}}}").as_bytes())))
        })
        .take(3)
        .collect();
    for user in &users {
        let allowed = allowed_by_redis(&mut clients, &[("user", user)]).await;
        assert_eq!(allowed, 3, "{user}: exactly the limit across both replicas");
    }
    // Every master holds a count (asked on the plaintext ports the fixture keeps).
    for port in cluster.ports() {
        let keys: u64 = cluster.cmd_on(port, &redis::cmd("DBSIZE"));
        assert!(keys > 0, "node {port} holds no count");
    }
}
