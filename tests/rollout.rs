//! A rolling restart under steady load loses no call: on SIGTERM a replica says NOT_SERVING (gRPC
//! health) and 503 (`/readyz`) at once and serves on for `server.drain_secs`, so the load balancer
//! takes it out before its listeners close.
//!
//! Two `sluice serve` processes share one Redis. The test is the load balancer, as Kubernetes and a
//! gateway are together: it polls each replica's gRPC health and adds or removes it from a balanced
//! gRPC channel, which eight clients call without pause. Each replica is replaced in turn: SIGTERM,
//! wait for it to exit, start its successor.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Process, RedisServer, pick_port, request};
use sluice::api::pb;
use tokio::sync::Mutex;
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// One `sluice serve` on fresh loopback ports.
struct Replica {
    process: Process,
    grpc: SocketAddr,
    _dir: tempfile::TempDir,
}

fn replica(redis: &RedisServer) -> Replica {
    let (grpc, http) = (pick_port(false), pick_port(false));
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("sluice.yaml");
    std::fs::write(
        &config,
        format!(
            "server:\n  grpc_addr: 127.0.0.1:{grpc}\n  http_addr: 127.0.0.1:{http}\n  drain_secs: 2\n  \
             shutdown_grace_secs: 5\nredis:\n  url: {}\ntiers:\n  - name: per_ip\n    key: [ip]\n    \
             limit: 100000000\n    window: 1m\n",
            redis.url()
        ),
    )
    .expect("write config");
    let process = Process::spawn(
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["serve", "--config", config.to_str().expect("path")])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        "the sluice binary is built by cargo test",
    );
    Replica { process, grpc: SocketAddr::from(([127, 0, 0, 1], grpc)), _dir: dir }
}

async fn serving(addr: SocketAddr) -> bool {
    let Ok(channel) = Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_timeout(Duration::from_millis(200))
        .connect()
        .await
    else {
        return false;
    };
    let check = HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await;
    check.is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_under_load_fails_no_call() {
    let redis = RedisServer::start();
    let replicas = Arc::new(Mutex::new(vec![replica(&redis), replica(&redis)]));
    let (channel, endpoints) = Channel::balance_channel::<SocketAddr>(16);

    // The load balancer: every 50 ms, each known replica in the channel while it says SERVING, out
    // of it as soon as it does not.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (replicas, stop) = (Arc::clone(&replicas), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut inside: HashSet<SocketAddr> = HashSet::new();
            while !stop.load(Ordering::Relaxed) {
                let addrs: Vec<SocketAddr> = replicas.lock().await.iter().map(|r| r.grpc).collect();
                for addr in addrs.iter().copied().chain(inside.clone()) {
                    let up = addrs.contains(&addr) && serving(addr).await;
                    if up && inside.insert(addr) {
                        let endpoint = Endpoint::from_shared(format!("http://{addr}")).expect("uri");
                        endpoints.send(Change::Insert(addr, endpoint)).await.expect("balancer");
                    } else if !up && inside.remove(&addr) {
                        endpoints.send(Change::Remove(addr)).await.expect("balancer");
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let first_failure = Arc::new(Mutex::new(None::<String>));
    let started = Instant::now();
    while !serving(replicas.lock().await[0].grpc).await || !serving(replicas.lock().await[1].grpc).await {
        assert!(started.elapsed() < Duration::from_secs(10), "the replicas never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let (channel, stop) = (channel.clone(), Arc::clone(&stop));
            let (ok, failed, first_failure) =
                (Arc::clone(&ok), Arc::clone(&failed), Arc::clone(&first_failure));
            tokio::spawn(async move {
                let mut client = pb::rate_limiter_client::RateLimiterClient::new(channel);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let req = pb::CheckRequest {
                        requests: vec![request(&[("ip", &format!("10.{i}.{}.{}", n / 250 % 250, n % 250))])],
                        dry_run: false,
                    };
                    match client.check(req).await {
                        Ok(r) if r.get_ref().decisions.len() == 1 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            first_failure.lock().await.get_or_insert(format!("{other:?}"));
                        }
                    }
                }
            })
        })
        .collect();

    // Replace each replica in turn, as a Deployment's rolling update does.
    for i in 0..2 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = ok.load(Ordering::Relaxed);
        let pid = replicas.lock().await[i].process.id();
        assert!(common::process::signal(pid, "TERM"), "SIGTERM to replica {i}");
        let terminated = Instant::now();
        let status = loop {
            if let Some(status) = replicas.lock().await[i].process.exited() {
                break status;
            }
            assert!(terminated.elapsed() < Duration::from_secs(15), "replica {i} did not stop");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(status.success(), "replica {i} exited with {status}");
        let stopped_after = terminated.elapsed();
        assert!(stopped_after >= Duration::from_secs(2), "it served on for drain_secs: {stopped_after:?}");
        replicas.lock().await[i] = replica(&redis);
        assert!(ok.load(Ordering::Relaxed) > before, "calls went on while replica {i} drained");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client");
    }
    watcher.await.expect("watcher");

    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("{ok} calls, {failed} failed, through two replacements");
    assert_eq!(failed, 0, "failed calls, the first: {:?}", first_failure.lock().await);
    assert!(ok > 1000, "only {ok} calls");
}
