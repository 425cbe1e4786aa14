//! Adaptive limits end to end over gRPC and a real Redis: exact effective limits under
//! concurrency, reported failures, and a bounded stream of security events that carry their
//! factors.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{RedisServer, SluiceServer, check, http_get, request};
use sluice::api::pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_effective_limit_is_exact_under_50_concurrent_clients() {
    let redis = RedisServer::start();
    let yaml = "tiers:\n  - name: api\n    key: [user]\n    limit: 100\n    window: 1h\n    adaptive: true\n";
    let (a, b) = (
        SluiceServer::start(yaml, Some(&redis.url())).await,
        SluiceServer::start(yaml, Some(&redis.url())).await,
    );
    let sent = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..50 {
        let mut client = if i % 2 == 0 { a.client().await } else { b.client().await };
        let sent = Arc::clone(&sent);
        tasks.push(tokio::spawn(async move {
            let mut allowed = 0;
            while sent.fetch_add(1, Ordering::SeqCst) < 150 {
                // No user agent: score 20, so a limit of 100 becomes 90.
                let d = check(&mut client, request(&[("user", "mallory")])).await;
                assert_eq!((d.threat_score, d.limit), (20, 90));
                allowed += usize::from(d.allowed);
            }
            allowed
        }));
    }
    let mut allowed = 0;
    for t in tasks {
        allowed += t.await.expect("client");
    }
    assert_eq!(allowed, 90);
}

#[tokio::test]
async fn reported_failures_raise_the_score_of_their_own_key_only() {
    let redis = RedisServer::start();
    let yaml = "tiers:
  - name: login
    match: {endpoint: /login}
    key: [ip, username]
    algorithm: sliding_log
    limit: 20
    window: 15m
    adaptive: {failed_logins: 5}
";
    let server = SluiceServer::start(yaml, Some(&redis.url())).await;
    let mut client = server.client().await;
    let login = |username: &str| {
        request(&[
            ("ip", "203.0.113.5"),
            ("endpoint", "/login"),
            ("username", username),
            ("user_agent", "Mozilla/5.0 (X11)"),
        ])
    };
    for i in 0..5 {
        let d = check(&mut client, login("alice")).await;
        assert_eq!(d.threat_score, 0, "attempt {i}");
        let report = pb::ReportRequest {
            attributes: login("alice").attributes,
            outcome: pb::Outcome::Failure.into(),
            tiers: vec![],
        };
        assert_eq!(client.report(report).await.expect("report").into_inner().tiers_counted, 1);
    }
    let d = check(&mut client, login("alice")).await;
    assert_eq!(d.threat_score, 30);
    assert_eq!(d.threat_factors, ["failed_logins"]);
    assert_eq!(d.limit, 17, "floor(20 * (1 - 30/200))");
    let other = check(&mut client, login("bob")).await;
    assert_eq!((other.threat_score, other.limit), (0, 20), "another username from the same IP is untouched");

    let success = pb::ReportRequest {
        attributes: login("bob").attributes,
        outcome: pb::Outcome::Success.into(),
        tiers: vec![],
    };
    assert_eq!(client.report(success).await.expect("report").into_inner().tiers_counted, 0);
    let unspecified = pb::ReportRequest { attributes: login("bob").attributes, outcome: 0, tiers: vec![] };
    let status = client.report(unspecified).await.expect_err("no outcome");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().starts_with("outcome:"), "{}", status.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn security_events_stay_within_their_bound_and_carry_the_factors() {
    let redis = RedisServer::start();
    let yaml = "threat:
  events_max_len: 50
tiers:
  - name: files
    key: [ip]
    limit: 5
    window: 1h
    adaptive: true
";
    let server = SluiceServer::start(yaml, Some(&redis.url())).await;
    let mut client = server.client().await;
    let mut denied = 0;
    for i in 0..300 {
        // No user agent (20) and path traversal (40): 60, over the event threshold of 50; past
        // 2 x 5 attempts in the window, a burst too (30).
        let mut req = tonic::Request::new(pb::CheckRequest {
            requests: vec![request(&[("ip", "192.0.2.200"), ("endpoint", "/files/../../etc/passwd")])],
            dry_run: false,
        });
        req.metadata_mut().insert("x-request-id", format!("req-{i}").parse().expect("metadata"));
        let d = client.check(req).await.expect("check").into_inner().decisions.remove(0);
        assert_eq!(d.threat_score, if i < 10 { 60 } else { 90 }, "attempt {i}");
        denied += usize::from(!d.allowed);
    }
    assert!(denied >= 290, "{denied} denials");
    let len = || -> usize { redis.cmd(redis::cmd("XLEN").arg("sluice:events")) };
    assert_eventually!(len() == 50, Duration::from_secs(5), "the stream holds {} events, not 50", len());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(len(), 50, "the stream stays at its bound");

    let newest: redis::streams::StreamRangeReply =
        redis.cmd(redis::cmd("XREVRANGE").arg("sluice:events").arg("+").arg("-").arg("COUNT").arg(1));
    let entry = &newest.ids[0];
    let field = |name: &str| -> String { redis::from_redis_value_ref(&entry.map[name]).expect("field") };
    assert_eq!(field("tier"), "files");
    assert_eq!(field("score"), "90");
    assert_eq!(field("factors"), "user_agent,parameters,burst");
    assert!(field("correlation_id").starts_with("req-"));

    let metrics = http_get(server.http_addr, "/metrics").await.1;
    assert!(
        metrics.contains("sluice_security_events_total{tier=\"files\",factor=\"parameters\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("sluice_threat_score_bucket{tier=\"files\""), "{metrics}");

    // The CLI prints them, one JSON object a line.
    let url = redis.url();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["events", "--redis", &url, "--count", "3"])
            .output()
            .expect("sluice events")
    })
    .await
    .expect("cli");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2]["factors"], "user_agent,parameters,burst");
    assert!(lines[2]["correlation_id"].as_str().is_some_and(|id| id.starts_with("req-")));
}

const TOKEN: &str = "test-admin-token-0123456789";

async fn admin(server: &SluiceServer) -> pb::admin_client::AdminClient<tonic::transport::Channel> {
    let addr = server.admin_addr.expect("the admin API is configured");
    pb::admin_client::AdminClient::connect(format!("http://{addr}")).await.expect("connect to admin")
}

fn authorized<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().expect("metadata"));
    request
}

fn key_request(tier: &str, attrs: &[(&str, &str)]) -> pb::KeyRequest {
    pb::KeyRequest { tier: tier.into(), attributes: request(attrs).attributes }
}

async fn penalties_escalate_and_unblock_lifts_them(redis: Option<&RedisServer>) {
    let yaml = format!(
        "admin:
  grpc_addr: 127.0.0.1:0
  token: {TOKEN}
tiers:
  - name: login
    match: {{endpoint: /login}}
    key: [ip, username]
    limit: 100
    window: 15m
    penalty: {{violations: 5, period: 15m, base: 1s, factor: 2, max: 1m}}
"
    );
    let server = SluiceServer::start(&yaml, redis.map(|r| r.url()).as_deref()).await;
    let mut client = server.client().await;
    let attrs =
        |username: &'static str| [("ip", "203.0.113.9"), ("endpoint", "/login"), ("username", username)];
    let fail = |username: &'static str| pb::ReportRequest {
        attributes: request(&attrs(username)).attributes,
        outcome: pb::Outcome::Failure.into(),
        tiers: vec![],
    };

    for round in 0..2 {
        for _ in 0..5 {
            assert!(check(&mut client, request(&attrs("alice"))).await.allowed, "round {round}");
            client.report(fail("alice")).await.expect("report");
        }
        let blocked = check(&mut client, request(&attrs("alice"))).await;
        assert!(!blocked.allowed, "round {round}: five failures block");
        let expected = 1_000 << round;
        assert!(
            blocked.retry_after_ms <= expected && blocked.retry_after_ms > expected - 500,
            "round {round}: retry after {} ms, block of {expected} ms",
            blocked.retry_after_ms
        );
        assert!(check(&mut client, request(&attrs("bob"))).await.allowed, "another username is not blocked");
        if round == 0 {
            tokio::time::sleep(Duration::from_millis(blocked.retry_after_ms + 50)).await;
            assert!(check(&mut client, request(&attrs("alice"))).await.allowed, "the block ends");
        }
    }

    let mut admin = admin(&server).await;
    let status = admin.unblock(key_request("login", &attrs("alice"))).await.expect_err("no token");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let inspected =
        admin.inspect(authorized(key_request("login", &attrs("alice")))).await.expect("inspect").into_inner();
    assert_eq!(inspected.fields.get("pen.n").map(String::as_str), Some("2"), "{inspected:?}");
    // Without the username the key cannot be built, and the answer names the attribute as written.
    let status = admin
        .unblock(authorized(key_request("login", &[("ip", "203.0.113.9")])))
        .await
        .expect_err("no username");
    assert!(status.message().contains("keyed by username, which is missing"), "{}", status.message());
    admin.unblock(authorized(key_request("login", &attrs("alice")))).await.expect("unblock");
    assert!(check(&mut client, request(&attrs("alice"))).await.allowed, "unblock lifts the block");
    admin.reset(authorized(key_request("login", &attrs("alice")))).await.expect("reset");
    let inspected =
        admin.inspect(authorized(key_request("login", &attrs("alice")))).await.expect("inspect").into_inner();
    assert!(inspected.fields.is_empty(), "reset forgets the key: {inspected:?}");
}

#[tokio::test]
async fn penalties_on_redis() {
    let redis = RedisServer::start();
    penalties_escalate_and_unblock_lifts_them(Some(&redis)).await;
}

#[tokio::test]
async fn penalties_in_process() {
    penalties_escalate_and_unblock_lifts_them(None).await;
}

#[tokio::test]
async fn reputation_through_the_admin_api_and_its_bad_input() {
    let redis = RedisServer::start();
    let yaml = format!(
        "admin:\n  grpc_addr: 127.0.0.1:0\n  token: {TOKEN}\ntiers:\n  - name: api\n    key: [ip]\n    limit: 100\n    window: 1m\n    adaptive: true\n"
    );
    let server = SluiceServer::start(&yaml, Some(&redis.url())).await;
    let mut client = server.client().await;
    let mut admin = admin(&server).await;
    let ua = ("user_agent", "Mozilla/5.0 (X11; Linux)");

    let set = pb::SetReputationRequest { ip: "192.0.2.44".into(), user: String::new(), ttl_ms: 60_000 };
    admin.set_reputation(authorized(set)).await.expect("set reputation");
    let d = check(&mut client, request(&[("ip", "192.0.2.44"), ua])).await;
    assert_eq!((d.threat_score, d.threat_factors.clone()), (50, vec!["reputation".to_owned()]));
    let clear = pb::ClearReputationRequest { ip: "192.0.2.44".into(), user: String::new() };
    admin.clear_reputation(authorized(clear)).await.expect("clear reputation");
    assert_eq!(check(&mut client, request(&[("ip", "192.0.2.44"), ua])).await.threat_score, 0);

    let bad = [
        (pb::SetReputationRequest { ip: "192.0.2.44".into(), user: String::new(), ttl_ms: -5 }, "ttl_ms:"),
        (pb::SetReputationRequest { ip: "300.1.1.1".into(), user: String::new(), ttl_ms: 1_000 }, "ip:"),
        (pb::SetReputationRequest { ip: "10.0.0.0/8".into(), user: String::new(), ttl_ms: 1_000 }, "ip:"),
        (pb::SetReputationRequest { ip: "192.0.2.1".into(), user: "eve".into(), ttl_ms: 1_000 }, "ip:"),
        (pb::SetReputationRequest { ip: String::new(), user: String::new(), ttl_ms: 1_000 }, "ip:"),
    ];
    for (request, field) in bad {
        let status = admin.set_reputation(authorized(request)).await.expect_err("bad input");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().starts_with(field), "{field} not first in {}", status.message());
    }
    for (request, field) in [
        (key_request("nope", &[("ip", "1.2.3.4")]), "tier:"),
        (key_request("api", &[("user", "no-ip")]), "attributes:"),
    ] {
        let status = admin.inspect(authorized(request)).await.expect_err("bad input");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().starts_with(field), "{field} not first in {}", status.message());
    }
}

/// A tier that counts failed logins only: successful requests pass freely, reported failures use
/// up the quota.
#[tokio::test]
async fn a_tier_can_count_reported_failures_only() {
    let redis = RedisServer::start();
    let yaml = "tiers:
  - name: failed_logins
    match: {endpoint: /login}
    key: [ip, username]
    algorithm: sliding_log
    limit: 3
    window: 15m
    count: failures
";
    let server = SluiceServer::start(yaml, Some(&redis.url())).await;
    let mut client = server.client().await;
    let login = || request(&[("ip", "198.51.100.3"), ("endpoint", "/login"), ("username", "carol")]);
    for i in 0..10 {
        let d = check(&mut client, login()).await;
        assert!(d.allowed && d.remaining == 2, "check {i} consumes nothing: {d:?}");
    }
    for i in 0..3 {
        let report = pb::ReportRequest {
            attributes: login().attributes,
            outcome: pb::Outcome::Failure.into(),
            tiers: vec![],
        };
        assert_eq!(client.report(report).await.expect("report").into_inner().tiers_counted, 1, "failure {i}");
    }
    let d = check(&mut client, login()).await;
    assert!(!d.allowed, "three failures use up the quota");
    assert!(d.retry_after_ms > 890_000, "{d:?}");
}

#[tokio::test]
async fn the_admin_cli() {
    let yaml = format!(
        "admin:\n  grpc_addr: 127.0.0.1:0\n  token: {TOKEN}\ntiers:\n  - name: api\n    key: [ip]\n    limit: 100\n    window: 1m\n    adaptive: true\n"
    );
    let server = SluiceServer::start(&yaml, None).await;
    let mut client = server.client().await;
    let addr = format!("http://{}", server.admin_addr.expect("admin"));
    let sluice = move |args: &[&str]| {
        let mut all = vec!["admin", "--addr", &addr];
        all.extend_from_slice(args);
        let all: Vec<String> = all.into_iter().map(String::from).collect();
        std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(&all)
            .env("SLUICE__ADMIN__TOKEN", TOKEN)
            .output()
            .expect("sluice admin")
    };
    let run = |args: &'static [&'static str]| {
        let sluice = sluice.clone();
        tokio::task::spawn_blocking(move || sluice(args))
    };
    let out = run(&["set-reputation", "--ip", "192.0.2.50", "--ttl-ms", "60000"]).await.expect("cli");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let d = check(&mut client, request(&[("ip", "192.0.2.50"), ("user_agent", "Mozilla/5.0 (X11; Linux)")]))
        .await;
    assert_eq!(d.threat_factors, ["reputation"]);

    let out = run(&["inspect", "--tier", "api", "--attr", "ip=192.0.2.50"]).await.expect("cli");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let inspected: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(inspected["fields"]["sw.c"], "1", "{inspected}");

    let out = run(&["set-reputation", "--ip", "192.0.2.50", "--ttl-ms", "-1"]).await.expect("cli");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ttl_ms:"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
