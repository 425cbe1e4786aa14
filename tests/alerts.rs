//! The shipped alerts through a real Prometheus: it scrapes a real Sluice on a real Redis with
//! helm/sluice/rules/sluice-alerts.yaml loaded; Redis is killed, and SluiceCircuitOpen goes pending,
//! then firing, in Prometheus's own HTTP API. The live /metrics passes `promtool check metrics`.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Process, pick_port};
use common::{RedisServer, SluiceServer, http_get, request};

const INSTALL: &str = "apt-get install -y --no-install-recommends prometheus";

/// The alert's state in Prometheus (`pending`, `firing`), if it is active.
async fn alert_state(prometheus: SocketAddr, name: &str) -> Option<(String, serde_json::Value)> {
    let (status, body) = http_get(prometheus, "/api/v1/alerts").await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON from Prometheus");
    json["data"]["alerts"]
        .as_array()?
        .iter()
        .find(|a| a["labels"]["alertname"] == name)
        .map(|a| (a["state"].as_str().unwrap_or_default().to_owned(), a["labels"].clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circuit_alert_fires_in_a_real_prometheus_when_redis_dies() {
    let mut redis = RedisServer::start();
    let server = SluiceServer::start(
        "tiers:\n  - name: per_ip\n    key: [ip]\n    limit: 1000000\n    window: 1m\n",
        Some(&redis.url()),
    )
    .await;

    // The live exposition passes Prometheus's own linter.
    let metrics = http_get(server.http_addr, "/metrics").await.1;
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run promtool ({e}); {INSTALL}"));
    promtool.stdin.take().expect("stdin").write_all(metrics.as_bytes()).expect("feed promtool");
    let checked = promtool.wait_with_output().expect("promtool");
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    // The shipped rules, with the circuit alert's minute shortened to 3 s so the test is quick.
    let dir = tempfile::tempdir().expect("dir");
    let shipped =
        std::fs::read_to_string(common::repo_path("helm/sluice/rules/sluice-alerts.yaml")).expect("rules");
    let at = shipped.find("alert: SluiceCircuitOpen").expect("the circuit alert");
    let (before, after) = shipped.split_at(at);
    let rules = format!("{before}{}", after.replacen("for: 1m", "for: 3s", 1));
    assert_ne!(rules, shipped, "the circuit alert waits a minute");
    std::fs::write(dir.path().join("rules.yaml"), rules).expect("write rules");
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: [rules.yaml]\n\
             scrape_configs:\n  - job_name: sluice\n    static_configs: [{{targets: ['{}']}}]\n",
            server.http_addr
        ),
    )
    .expect("write prometheus.yml");
    let port = pick_port(false);
    let _prometheus = Process::spawn(
        Command::new("prometheus")
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        INSTALL,
    );
    let prometheus: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    assert_eventually!(
        tokio::net::TcpStream::connect(prometheus).await.is_ok()
            && http_get(prometheus, "/api/v1/query?query=up").await.1.contains("\"value\":[")
            && http_get(prometheus, "/api/v1/query?query=up").await.1.contains("\"1\"]"),
        Duration::from_secs(30),
        "Prometheus never scraped Sluice"
    );
    assert_eq!(alert_state(prometheus, "SluiceCircuitOpen").await, None, "Redis is up: no alert");

    // Traffic, then Redis dies: decisions fail over, the circuit opens, the alert follows.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let stop = Arc::clone(&stop);
        let mut client = server.client().await;
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let decision = common::check(&mut client, request(&[("ip", "198.51.100.7")])).await;
                assert!(decision.allowed, "the fallback answers while Redis is down");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.kill();
    let killed = Instant::now();
    let mut pending_seen = None;
    let labels = loop {
        match alert_state(prometheus, "SluiceCircuitOpen").await {
            Some((state, _)) if state == "pending" => {
                pending_seen.get_or_insert(killed.elapsed());
            }
            Some((state, labels)) if state == "firing" => break labels,
            _ => {}
        }
        assert!(killed.elapsed() < Duration::from_secs(30), "SluiceCircuitOpen never fired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let fired = killed.elapsed();
    stop.store(true, Ordering::Relaxed);
    traffic.await.expect("traffic");
    eprintln!("after Redis died: pending at {pending_seen:?}, firing at {fired:?}");
    let pending = pending_seen.expect("the alert was pending before it fired");
    // (When it turned pending is Prometheus's to say; this poll only sees it, up to an evaluation
    // and a poll later, so the gap seen may be under the 3 s `for`.)
    assert!(fired > pending, "pending at {pending:?}, then firing at {fired:?}");
    assert_eq!(labels["severity"], "critical");
    assert_eq!(labels["instance"], server.http_addr.to_string());
    assert_eq!(labels["job"], "sluice");
}
