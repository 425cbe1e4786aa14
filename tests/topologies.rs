//! Past one Redis: Sentinel and Cluster, each losing a master under load; and one replica cut off
//! from Redis (through a proxy that can sever or stall) while another is not.

mod common;

use std::time::{Duration, Instant};

use common::cluster::RedisCluster;
use common::proxy::TcpProxy;
use common::sentinel::RedisSentinel;
use common::{Load, RedisServer, SluiceServer, check, first_from, request};
use sluice::store::redis::key_slot;

const EDGE: &str = "  - name: edge\n    key: [ip]\n    limit: 100000000\n    window: 1m\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sentinel_failover_is_followed_with_no_failed_rpc() {
    let mut sentinel = tokio::task::block_in_place(RedisSentinel::start);
    let nodes: Vec<String> = sentinel.sentinel_urls().iter().map(|u| format!("\"{u}\"")).collect();
    let yaml = format!(
        "redis:\n  sentinel:\n    master_name: {}\n    nodes: [{}]\n  timeout_ms: 50\n  probe_interval_ms: 100\ntiers:\n{EDGE}",
        sentinel.master_name(),
        nodes.join(", ")
    );
    let server = SluiceServer::start(&yaml, None).await;
    let load = Load::start(server.grpc_addr, 4, Duration::from_millis(2), |c, n| {
        request(&[("ip", &format!("10.{c}.0.{}", n % 50))])
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let killed_at = Instant::now();
    sentinel.kill_primary();
    let promoted = tokio::task::block_in_place(|| sentinel.wait_for_promotion(Duration::from_secs(20)));
    let promoted_at = Instant::now();
    assert_eq!(promoted, sentinel.replica_port());
    // Sluice asks the sentinels again and decides on the promoted replica.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (seen, failed) = load.finish().await;

    assert!(failed.is_empty(), "{} failed RPCs, e.g. {:?}", failed.len(), failed.first());
    assert!(
        first_from(&seen, "redis", Instant::now() - Duration::from_secs(60)).is_some_and(|t| t < killed_at)
    );
    let back = first_from(&seen, "redis", promoted_at).expect("decisions never returned to redis");
    assert!(
        back - promoted_at < Duration::from_secs(2),
        "back on redis {:?} after the promotion",
        back - promoted_at
    );
    // The counts now live on the promoted replica.
    let keys: Vec<String> = sentinel.cmd_on(promoted, redis::cmd("KEYS").arg("sluice:*"));
    assert!(!keys.is_empty(), "nothing was counted on the promoted replica");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_holds_limits_across_slots_and_survives_a_master() {
    let mut cluster = tokio::task::block_in_place(|| RedisCluster::start(3, 1));
    let seeds: Vec<String> = cluster.seed_urls().iter().map(|u| format!("\"{u}\"")).collect();
    let yaml = format!(
        "redis:\n  cluster: [{}]\n  timeout_ms: 100\n  probe_interval_ms: 100\ntiers:
  - name: per_user
    key: [user]
    limit: 7
    window: 1h
  - name: per_ip
    key: [ip]
    algorithm: sliding_log
    limit: 5
    window: 1h
    adaptive: {{reduction_percent: 0}}
{EDGE}",
        seeds.join(", ")
    );
    let server = SluiceServer::start(&yaml, None).await;
    let mut client = server.client().await;

    // Users whose keys land on all three masters.
    let mut users: Vec<String> = Vec::new();
    let mut masters = std::collections::HashSet::new();
    for i in 0.. {
        let user = format!("user-{i}");
        let key = format!("sluice:{{per_user:{user}}}");
        if masters.insert(cluster.master_for_slot(key_slot(key.as_bytes()))) {
            users.push(user);
        }
        if masters.len() == 3 {
            break;
        }
    }
    for user in &users {
        let allowed = {
            let mut n = 0;
            for _ in 0..10 {
                n += usize::from(check(&mut client, request(&[("user", user)])).await.allowed);
            }
            n
        };
        assert_eq!(allowed, 7, "{user}");
    }
    // A request over two tiers in different slots: each slot decides its own tier.
    let ip_key = "sluice:{per_ip:192.0.2.9}";
    let user_key = "sluice:{per_user:carol}";
    assert_ne!(key_slot(ip_key.as_bytes()), key_slot(user_key.as_bytes()));
    let mut allowed = 0;
    for _ in 0..8 {
        let d = check(&mut client, request(&[("user", "carol"), ("ip", "192.0.2.9")])).await;
        assert_eq!(d.source, "redis");
        // Adaptive in a Cluster: the reputation keys' slot is read apart; no user agent scores 20.
        assert_eq!(d.threat_score, 20);
        allowed += usize::from(d.allowed);
    }
    assert_eq!(allowed, 5, "the sliding log of 5 decides");

    // Lose the master of the first user's slot under load; Sluice goes on with no failed RPC.
    // Every call is a fresh user and ip, allowed, so it asks Redis: a denial would be answered
    // from the over-limit cache until its retry-after and say nothing about Redis.
    let load = Load::start(server.grpc_addr, 4, Duration::from_millis(2), |c, n| {
        request(&[
            ("ip", &format!("10.{c}.{}.{}", n / 250 % 250, n % 250)),
            ("user", &format!("load-{c}-{n}")),
        ])
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let victim = cluster.master_for_slot(key_slot(format!("sluice:{{per_user:{}}}", users[0]).as_bytes()));
    tokio::task::block_in_place(|| cluster.kill_node(victim));
    let promoted =
        tokio::task::block_in_place(|| cluster.wait_for_failover_of(victim, Duration::from_secs(20)));
    let failed_over = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (seen, failed) = load.finish().await;
    assert!(failed.is_empty(), "{} failed RPCs, e.g. {:?}", failed.len(), failed.first());
    let back = first_from(&seen, "redis", failed_over).expect("decisions never returned to redis");
    assert!(
        back - failed_over < Duration::from_secs(3),
        "back on redis {:?} after the failover",
        back - failed_over
    );
    // The promoted replica counts again: a fresh user on its slots gets exactly the limit.
    let fresh = (0..)
        .map(|i| format!("fresh-{i}"))
        .find(|u| {
            cluster.master_for_slot(key_slot(format!("sluice:{{per_user:{u}}}").as_bytes())) == promoted
        })
        .expect("a user on the promoted node");
    let mut allowed = 0;
    for _ in 0..9 {
        let d = check(&mut client, request(&[("user", &fresh)])).await;
        allowed += usize::from(d.allowed && d.source == "redis");
    }
    assert_eq!(allowed, 7, "limits hold on the promoted replica");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_cut_off_from_redis_falls_back_while_the_other_keeps_exact_counts() {
    let redis = RedisServer::start();
    let proxy = TcpProxy::start(format!("127.0.0.1:{}", redis.port).parse().expect("addr"));
    let tiers = "fallback:\n  replicas: 2\ntiers:\n  - name: per_user\n    key: [user]\n    limit: 10\n    window: 1h\n";
    let config =
        |url: &str| format!("redis:\n  url: {url}\n  timeout_ms: 50\n  probe_interval_ms: 100\n{tiers}");
    let cut = SluiceServer::start(&config(&proxy.url()), None).await;
    let whole = SluiceServer::start(&config(&redis.url()), None).await;
    let (mut cut_client, mut whole_client) = (cut.client().await, whole.client().await);

    for (fault, user) in [("sever", "dora"), ("stall", "erin")] {
        // Shared counts first: 3 through each replica.
        for _ in 0..3 {
            assert_eq!(check(&mut cut_client, request(&[("user", user)])).await.source, "redis");
            assert_eq!(check(&mut whole_client, request(&[("user", user)])).await.source, "redis");
        }
        if fault == "sever" {
            proxy.sever();
        } else {
            proxy.stall();
        }
        // The cut-off replica falls back within its deadline; the other keeps counting in Redis.
        let started = Instant::now();
        let d = check(&mut cut_client, request(&[("user", user)])).await;
        assert!(started.elapsed() < Duration::from_millis(300), "{fault}: took {:?}", started.elapsed());
        let d2 = check(&mut cut_client, request(&[("user", user)])).await;
        assert_eq!((d.source.as_str(), d2.source.as_str()), ("fallback", "fallback"), "{fault}");
        let mut exact = 0;
        for _ in 0..6 {
            let d = check(&mut whole_client, request(&[("user", user)])).await;
            // Repeated denials come from the over-limit cache Redis's first denial filled.
            assert!(d.source == "redis" || (d.source == "cache" && !d.allowed), "{fault}: {}", d.source);
            exact += usize::from(d.allowed);
        }
        assert_eq!(exact, 4, "{fault}: 10 - 6 already counted in redis");

        proxy.heal();
        // Back on shared counts: the cut-off replica sees what the other counted.
        let mut last = check(&mut cut_client, request(&[("user", user)])).await;
        let deadline = Instant::now() + Duration::from_secs(3);
        while last.source != "redis" {
            assert!(Instant::now() < deadline, "{fault}: never returned to redis");
            tokio::time::sleep(Duration::from_millis(50)).await;
            last = check(&mut cut_client, request(&[("user", user)])).await;
        }
        assert!(!last.allowed, "{fault}: the shared count is full");
        assert_eq!(last.remaining, 0, "{fault}");
    }
}
