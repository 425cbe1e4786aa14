//! The function library flushed, and Redis restarted, in the middle of a run: no failed decision.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{RedisServer, SluiceServer, request};
use sluice::api::pb;

const YAML: &str = "tiers:\n  - name: edge\n    key: [ip]\n    limit: 1000000\n    window: 1m\n";

/// Runs clients until `stop`; returns (decisions, failed RPCs, decisions made on Redis).
fn load(
    server: &SluiceServer,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(usize, usize, usize)>> {
    (0..clients)
        .map(|i| {
            let addr = server.grpc_addr;
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let mut client =
                    pb::rate_limiter_client::RateLimiterClient::connect(format!("http://{addr}"))
                        .await
                        .expect("connect");
                let (mut ok, mut failed, mut on_redis) = (0, 0, 0);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && n < 200_000 {
                    n += 1;
                    let req = pb::CheckRequest {
                        requests: vec![request(&[("ip", &format!("10.0.{i}.{}", n % 50))])],
                        dry_run: false,
                    };
                    match client.check(req).await {
                        Ok(r) if r.get_ref().decisions.len() == 1 => {
                            ok += 1;
                            on_redis += usize::from(r.get_ref().decisions[0].source == "redis");
                        }
                        _ => failed += 1,
                    }
                }
                (ok, failed, on_redis)
            })
        })
        .collect()
}

async fn finish(tasks: Vec<tokio::task::JoinHandle<(usize, usize, usize)>>) -> (usize, usize, usize) {
    let mut total = (0, 0, 0);
    for t in tasks {
        let (ok, failed, on_redis) = t.await.expect("client task");
        total.0 += ok;
        total.1 += failed;
        total.2 += on_redis;
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn script_flush_mid_run_fails_nothing() {
    let redis = RedisServer::start();
    let server = SluiceServer::start(YAML, Some(&redis.url())).await;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(&server, 8, Arc::clone(&stop));
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..5 {
        let _: () = redis.cmd(redis::cmd("FUNCTION").arg("FLUSH"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed, on_redis) = finish(tasks).await;
    assert_eq!(failed, 0, "{failed} failed RPCs out of {}", ok + failed);
    assert!(ok > 100, "only {ok} decisions");
    // Decisions went on through Redis: the library was loaded again after each flush.
    assert!(redis.calls("function|load") >= 1, "the library was never loaded again after a flush");
    assert!(on_redis >= ok / 2, "only {on_redis} of {ok} decisions ran the decision function in Redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_restart_mid_run_fails_nothing() {
    let mut redis = RedisServer::start();
    let server = SluiceServer::start(YAML, Some(&redis.url())).await;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(&server, 8, Arc::clone(&stop));
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.restart();
    // After the restart the (empty) Redis gets decisions again, loading the library anew.
    let calls = Arc::new(AtomicUsize::new(0));
    assert_eventually!(
        {
            calls.store(redis.function_calls() as usize, Ordering::Relaxed);
            calls.load(Ordering::Relaxed) > 50
        },
        Duration::from_secs(5),
        "decisions did not return to the restarted redis"
    );
    stop.store(true, Ordering::Relaxed);
    let (ok, failed, _) = finish(tasks).await;
    assert_eq!(failed, 0, "{failed} failed RPCs out of {}", ok + failed);
}

/// Credentials from a file (a mounted Secret, say): decisions go to a Redis that requires a
/// password; without it, Sluice serves from the fallback rather than failing.
#[tokio::test]
async fn a_password_from_a_file_reaches_redis() {
    let redis = RedisServer::start_with_password(Some("s3cret-pass"));
    let dir = tempfile::tempdir().expect("dir");
    let secret = dir.path().join("password");
    std::fs::write(&secret, "s3cret-pass\n").expect("write");
    let yaml = |extra: &str| {
        format!(
            "redis:\n  url: {}\n  timeout_ms: 100\n{extra}tiers:\n  - name: edge\n    key: [ip]\n    limit: 10\n    window: 1m\n",
            redis.plain_url()
        )
    };
    let with = SluiceServer::start(&yaml(&format!("  password_file: {}\n", secret.display())), None).await;
    let d = common::check(&mut with.client().await, request(&[("ip", "10.9.9.9")])).await;
    assert_eq!(d.source, "redis");
    let without = SluiceServer::start(&yaml(""), None).await;
    let d = common::check(&mut without.client().await, request(&[("ip", "10.9.9.9")])).await;
    assert_eq!(d.source, "fallback", "no password: decided in process, not failed");
}

/// Another release's library on the same Redis (a rollout in progress) is neither replaced nor
/// called: each release's functions carry the hash of its own text.
#[tokio::test]
async fn another_release_s_library_is_left_alone() {
    let redis = RedisServer::start();
    let other = "#!lua name=sluice_0123456789abcdef\n\
                 redis.register_function('sluice_decide_0123456789abcdef', function() return {0, 0} end)";
    let loaded: String = redis.cmd(redis::cmd("FUNCTION").arg("LOAD").arg(other));
    assert_eq!(loaded, "sluice_0123456789abcdef");
    let server = SluiceServer::start(YAML, Some(&redis.url())).await;
    let mut client = server.client().await;
    for remaining in [999_999, 999_998] {
        let decision = common::check(&mut client, request(&[("ip", "10.9.9.9")])).await;
        assert!(decision.allowed);
        assert_eq!(decision.remaining, remaining, "decided by this release's function, on Redis");
    }
    let list: redis::Value = redis.cmd(redis::cmd("FUNCTION").arg("LIST").arg("LIBRARYNAME").arg("sluice_*"));
    let names = format!("{list:?}");
    assert!(names.contains("sluice_0123456789abcdef"), "the other release's library stays: {names}");
    assert_eq!(names.matches("sluice_decide_").count(), 2, "one decision function per release: {names}");
}
