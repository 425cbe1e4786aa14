//! Clients that no one here wrote, on the wire: the grpcio and grpclib stubs of the
//! envoy-data-plane package (PyPI) call ShouldRateLimit.
//! The test installs them into a virtual environment under the target directory when missing, and
//! fails (never skips) when that is impossible.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{RedisServer, SluiceServer};

/// A Python virtual environment with tests/clients/requirements.txt installed.
fn python() -> PathBuf {
    common::http1::venv("third-party-clients", &common::repo_path("tests/clients/requirements.txt"))
        .join("bin/python")
}

/// Runs tests/clients/rls_client.py against `server`: `calls` requests for `descriptors` (see the
/// script), one JSON line each.
async fn client_lines(
    python: PathBuf,
    server: &SluiceServer,
    domain: &str,
    descriptors: &str,
    calls: u32,
) -> Vec<serde_json::Value> {
    let args = [server.grpc_addr.to_string(), domain.to_owned(), descriptors.to_owned(), calls.to_string()];
    let script = common::repo_path("tests/clients/rls_client.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python).arg(script).args(args).output().expect("run the client")
    })
    .await
    .expect("client");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("json")).collect()
}

#[tokio::test]
async fn envoy_data_plane_clients_get_ok_then_over_limit() {
    let python = tokio::task::spawn_blocking(python).await.expect("venv");
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("edge.yaml"),
        "domain: edge\ndescriptors:\n  - key: user\n    rate_limit: {unit: minute, requests_per_unit: 4}\n",
    )
    .expect("write");
    let yaml =
        format!("envoy:\n  paths: [\"{}\"]\n  headers: x_ratelimit\ntiers: []\n", dir.path().display());
    let server = SluiceServer::start(&yaml, Some(&redis.url())).await;
    let lines = client_lines(python, &server, "edge", "user=42", 6).await;
    assert_eq!(lines.len(), 6);
    let overall: Vec<&str> = lines.iter().map(|l| l["overall"].as_str().expect("overall")).collect();
    assert_eq!(overall, ["OK", "OK", "OK", "OK", "OVER_LIMIT", "OVER_LIMIT"]);
    assert_eq!(lines[0]["client"], "grpcio");
    assert_eq!(lines[5]["client"], "grpclib");
    assert_eq!(lines[3]["remaining"], 0);
    assert!(lines[4]["reset_s"].as_f64().is_some_and(|s| s > 0.0 && s <= 120.0), "{}", lines[4]);
    assert_eq!(lines[4]["headers"]["X-RateLimit-Limit"], "4");
    assert_eq!(lines[4]["headers"]["X-RateLimit-Remaining"], "0");
}

/// The reference's quota scenario (integration-test/scripts/quota.sh) through the same clients,
/// counted by the fixed window as the reference counts: a quota over its limit keeps its own
/// OVER_LIMIT, the request is denied only when both quotas are over, and every reset is whole
/// seconds within the minute.
#[tokio::test]
async fn envoy_data_plane_clients_see_quota_mode_on_a_fixed_window() {
    let python = tokio::task::spawn_blocking(python).await.expect("venv");
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("rl.yaml"),
        "domain: rl\ndescriptors:\n  - key: service\n    value: service_1\n    quota_mode: true\n    \
         rate_limit: {unit: minute, requests_per_unit: 1}\n  - key: service\n    value: service_2\n    \
         quota_mode: true\n    rate_limit: {unit: minute, requests_per_unit: 2}\n",
    )
    .expect("write");
    let yaml =
        format!("envoy:\n  paths: [\"{}\"]\n  algorithm: fixed_window\ntiers: []\n", dir.path().display());
    let server = SluiceServer::start(&yaml, Some(&redis.url())).await;
    // The three calls must fall in one minute.
    let unix =
        || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    while unix() % 60 > 45 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let lines = client_lines(python, &server, "rl", "service=service_1;service=service_2", 3).await;
    let seen: Vec<(String, Vec<(String, u64)>)> = lines
        .iter()
        .map(|l| {
            let statuses = l["statuses"].as_array().expect("statuses");
            let each = statuses
                .iter()
                .map(|s| {
                    (
                        s["code"].as_str().expect("code").to_owned(),
                        s["remaining"].as_u64().expect("remaining"),
                    )
                })
                .collect();
            (l["overall"].as_str().expect("overall").to_owned(), each)
        })
        .collect();
    let status = |code: &str, remaining| (code.to_owned(), remaining);
    assert_eq!(
        seen,
        [
            ("OK".to_owned(), vec![status("OK", 0), status("OK", 1)]),
            ("OK".to_owned(), vec![status("OVER_LIMIT", 0), status("OK", 0)]),
            ("OVER_LIMIT".to_owned(), vec![status("OVER_LIMIT", 0), status("OVER_LIMIT", 0)]),
        ]
    );
    for l in &lines {
        for s in l["statuses"].as_array().expect("statuses") {
            let reset = s["reset_s"].as_f64().expect("reset");
            assert!(reset > 0.0 && reset <= 60.0 && reset.fract() == 0.0, "{l}");
        }
    }
}
