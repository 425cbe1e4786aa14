//! The failover benchmark: Sluice (the release binary) on a real redis-server under a steady load of
//! Check calls, with Redis killed (SIGKILL) and restarted again and again.
//!
//! ```text
//! cargo bench --bench failover -- [--kills 10] [--clients 16] [--fallback-secs 5]
//! ```
//!
//! Per kill it measures the time from the kill to the first decision answered from the fallback,
//! and the time from the restart to the first decision answered from Redis again; over all kills,
//! the latency of the calls sent in the switch (from 250 ms before each kill to 1 s after it).
//! Then, with Redis down for good, the fallback's throughput. Only 127.0.0.1 is used; every loop
//! ends by time and by count; every process started is killed at the end.

use std::net::TcpListener;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use sluice::api::pb;
use sluice::api::pb::rate_limiter_client::RateLimiterClient;
use tokio::time::Instant;

/// One answered call: when it was sent and answered, and where its counts came from.
#[derive(Clone, Copy)]
struct Call {
    sent: Instant,
    done: Instant,
    fallback: bool,
}

struct Options {
    kills: usize,
    clients: usize,
    fallback_secs: u64,
}

fn options() -> Result<Options, String> {
    let mut o = Options { kills: 10, clients: 16, fallback_secs: 5 };
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(flag) = args.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            args.next().and_then(|v| v.parse().ok()).ok_or_else(|| format!("{name} needs a number"))
        };
        match flag.as_str() {
            "--kills" => o.kills = value("--kills")?.clamp(1, 100) as usize,
            "--clients" => o.clients = value("--clients")?.clamp(1, 256) as usize,
            "--fallback-secs" => o.fallback_secs = value("--fallback-secs")?.clamp(1, 60),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(o)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// Child processes, killed on drop.
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start_redis(port: u16, dir: &std::path::Path) -> Child {
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server must be installed");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

async fn client(
    addr: String,
    id: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
    calls: Arc<Mutex<Vec<Call>>>,
) {
    let mut rpc = loop {
        match RateLimiterClient::connect(addr.clone()).await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let mut mine = Vec::with_capacity(1 << 16);
    for n in 0..20_000_000u64 {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        let mut attributes =
            pb::Attributes { ip: format!("10.{id}.{}.{}", n % 1000 / 250, n % 250), ..Default::default() };
        attributes.endpoint = "/bench".into();
        let request = pb::CheckRequest {
            requests: vec![pb::RateRequest { attributes: Some(attributes), cost: None, tiers: vec![] }],
            dry_run: false,
        };
        let sent = Instant::now();
        match rpc.check(request).await {
            Ok(r) => {
                let fallback = r.get_ref().decisions.first().is_some_and(|d| d.source == "fallback");
                mine.push(Call { sent, done: Instant::now(), fallback });
            }
            Err(status) => eprintln!("failed call: {status:?}"),
        }
        if mine.len() == 4096 {
            calls.lock().expect("calls").append(&mut mine);
        }
    }
    calls.lock().expect("calls").append(&mut mine);
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() -> ExitCode {
    let o = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("failover: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    runtime.block_on(run(o));
    ExitCode::SUCCESS
}

async fn run(o: Options) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (redis_port, grpc, http) = (free_port(), free_port(), free_port());
    let config = dir.path().join("sluice.yaml");
    std::fs::write(
        &config,
        format!(
            "server: {{grpc_addr: \"127.0.0.1:{grpc}\", http_addr: \"127.0.0.1:{http}\"}}
redis: {{url: \"redis://127.0.0.1:{redis_port}\", timeout_ms: 50, probe_interval_ms: 100}}
tiers:
  - name: bench
    key: [ip]
    limit: 100000000
    window: 1m
"
        ),
    )
    .expect("write config");
    let mut redis = Processes(vec![start_redis(redis_port, dir.path())]);
    let sluice = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "error")
        .spawn()
        .expect("start sluice");
    let _sluice = Processes(vec![sluice]);

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let calls = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..o.clients)
        .map(|id| {
            tokio::spawn(client(
                format!("http://127.0.0.1:{grpc}"),
                id,
                Arc::clone(&stop),
                Arc::clone(&calls),
            ))
        })
        .collect();

    let mut kills = Vec::new();
    for _ in 0..o.kills {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let killed = Instant::now();
        redis.0.clear_with_kill();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let restarted = Instant::now();
        redis.0.push(start_redis(redis_port, dir.path()));
        kills.push((killed, restarted));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The fallback alone: Redis down for good.
    redis.0.clear_with_kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let window = (Instant::now(), Instant::now() + Duration::from_secs(o.fallback_secs));
    tokio::time::sleep(Duration::from_secs(o.fallback_secs)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }

    let mut calls = std::mem::take(&mut *calls.lock().expect("calls"));
    calls.sort_by_key(|c| c.done);
    let mut to_fallback = Vec::new();
    let mut to_redis = Vec::new();
    let mut switch = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    for &(killed, restarted) in &kills {
        if let Some(c) = calls.iter().find(|c| c.done >= killed && c.fallback) {
            to_fallback.push(c.done - killed);
        }
        if let Some(c) = calls.iter().find(|c| c.sent >= restarted && !c.fallback) {
            to_redis.push(c.done - restarted);
        }
        for c in calls.iter().filter(|c| {
            c.sent + Duration::from_millis(250) >= killed && c.sent < killed + Duration::from_secs(1)
        }) {
            let _ = switch.record((c.done - c.sent).as_micros() as u64);
        }
    }
    let fallback_calls =
        calls.iter().filter(|c| c.sent >= window.0 && c.done <= window.1 && c.fallback).count();
    let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1000.0);
    println!("kills={} clients={} deadline_ms=50 probe_interval_ms=100", kills.len(), o.clients);
    println!(
        "death_to_first_fallback_ms median={} max={} (n={})",
        ms(percentile(to_fallback.clone(), 0.5)),
        ms(percentile(to_fallback.clone(), 1.0)),
        to_fallback.len()
    );
    println!(
        "restart_to_first_redis_ms median={} max={} (n={})",
        ms(percentile(to_redis.clone(), 0.5)),
        ms(percentile(to_redis.clone(), 1.0)),
        to_redis.len()
    );
    println!(
        "switch_latency_us p50={} p99={} p999={} max={} (calls sent from 250 ms before to 1 s after each kill: {})",
        switch.value_at_quantile(0.5),
        switch.value_at_quantile(0.99),
        switch.value_at_quantile(0.999),
        switch.max(),
        switch.len()
    );
    println!("fallback_decisions_per_sec={:.0}", fallback_calls as f64 / o.fallback_secs as f64);
}

trait KillAll {
    fn clear_with_kill(&mut self);
}

impl KillAll for Vec<Child> {
    fn clear_with_kill(&mut self) {
        for mut child in self.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
