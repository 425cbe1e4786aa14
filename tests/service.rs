//! The service as operators meet it: the real binary with its default configuration, the CLI,
//! HTTP endpoints, gRPC health, metrics, and graceful shutdown on SIGTERM.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{SluiceServer, check, http_get, pick_port, request};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn sluice(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run the sluice binary")
}

#[test]
fn check_config_names_every_bad_key_and_exits_78() {
    let file = common::write_config(
        "server:\n  grpc_addr: nowhere\ntiers:\n  - name: auth\n    key: [ip, username]\n    limit: 5\n    window: 15 minutes\n  - name: auth\n    limit: 1\n    window: 1s\n",
    );
    let out = sluice(&["check-config", file.path().to_str().expect("path")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("server.grpc_addr"), "{stderr}");
    assert!(stderr.contains("tiers[0].window: \"15 minutes\" is not a duration"), "{stderr}");
    assert!(stderr.contains("tiers[1].name: \"auth\" is already the name"), "{stderr}");

    let typo = common::write_config("tiers:\n  - name: a\n    limit: 1\n    window: 1s\n    windw: 2s\n");
    let out = sluice(&["check-config", typo.path().to_str().expect("path")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78));
    assert!(stderr.contains("tiers[0]") && stderr.contains("windw"), "{stderr}");

    // Unknown keys, wrong types and bad values, in the file and in the environment: all at once,
    // each line with its key, and the variable for what the environment set.
    let mixed = common::write_config(
        "server:\n  colour: blue\ntiers:\n  - name: bad name!\n    limit: -5\n    window: 10x\n",
    );
    let out = Command::new(BIN)
        .args(["check-config", mixed.path().to_str().expect("path")])
        .env("SLUICE__SERVER__SHADE", "dark")
        .output()
        .expect("check-config");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    for expected in [
        "server.colour: unknown field `colour`",
        "server.shade: unknown field `shade`",
        "SLUICE__SERVER__SHADE",
        "tiers[0].limit: invalid type",
        "tiers[0].name: \"bad name!\"",
        "tiers[0].window: \"10x\"",
    ] {
        assert!(stderr.contains(expected), "{expected:?} missing from:\n{stderr}");
    }
    assert_eq!(stderr.lines().count(), 5, "one line a problem:\n{stderr}");

    let example = common::repo_path("examples/sluice.yaml");
    let out = sluice(&["check-config", example.to_str().expect("path")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// An empty file (as a truncated write or a half-updated ConfigMap leaves) is not a configuration
/// that limits nothing: `check-config` and `serve` refuse it with 78, naming the file. Content
/// without a `tiers` key is refused naming `tiers`; `tiers: []` says "no tiers" on purpose.
#[test]
fn an_empty_file_or_one_without_tiers_is_refused() {
    for text in ["", "\n  \n", "# tiers: []\n"] {
        let file = common::write_config(text);
        let path = file.path().to_str().expect("path");
        for args in [&["check-config", path][..], &["serve", "--config", path][..]] {
            let out = Command::new(BIN)
                .args(args)
                .env("SLUICE__SERVER__GRPC_ADDR", format!("127.0.0.1:{}", pick_port(false)))
                .env("SLUICE__SERVER__HTTP_ADDR", format!("127.0.0.1:{}", pick_port(false)))
                .env("SLUICE__FALLBACK__REPLICAS", "2")
                .output()
                .expect("run the sluice binary");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(78), "{args:?} on {text:?}: {stderr}");
            assert!(stderr.contains(&format!("{path}: holds no settings")), "{args:?} on {text:?}: {stderr}");
        }
    }

    let no_tiers = common::write_config("log:\n  level: debug\n");
    let out = sluice(&["check-config", no_tiers.path().to_str().expect("path")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("tiers: is required"), "{stderr}");

    let none = common::write_config("log:\n  level: debug\ntiers: []\n");
    let out = sluice(&["check-config", none.path().to_str().expect("path")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok, 0 tiers"));
}

#[tokio::test]
async fn the_default_service_runs_answers_the_cli_and_stops_on_sigterm() {
    let (grpc, http) = (pick_port(false), pick_port(false));
    let child = Command::new(BIN)
        .arg("serve")
        .env("SLUICE__SERVER__GRPC_ADDR", format!("127.0.0.1:{grpc}"))
        .env("SLUICE__SERVER__HTTP_ADDR", format!("127.0.0.1:{http}"))
        .env_remove("SLUICE__REDIS__URL")
        // An operator who exported the admin token for `sluice admin`, as the README suggests: it
        // opens nothing without admin.grpc_addr, and stops nothing either.
        .env("SLUICE__ADMIN__TOKEN", "a-token-for-the-admin-cli")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sluice serve");
    let mut process = common::Process(child);
    let http_addr = format!("127.0.0.1:{http}").parse().expect("addr");
    assert_eventually!(
        tokio::net::TcpStream::connect(http_addr).await.is_ok()
            && http_get(http_addr, "/readyz").await.0 == 200,
        Duration::from_secs(10),
        "sluice serve did not become ready"
    );

    // The built-in default is the example: 5 logins per 15 minutes per ip + username.
    let addr = format!("http://127.0.0.1:{grpc}");
    let mut last = serde_json::Value::Null;
    for i in 0..6 {
        let addr = addr.clone();
        let out = tokio::task::spawn_blocking(move || {
            sluice(&[
                "check",
                "--addr",
                &addr,
                "--attr",
                "ip=10.1.1.1",
                "--attr",
                "endpoint=/auth/login",
                "--attr",
                "method=POST",
                "--attr",
                "user_agent=curl/8.5.0 (x86_64-pc-linux-gnu)",
                "--attr",
                "username=bob",
                "--json",
            ])
        })
        .await
        .expect("cli");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        last = serde_json::from_slice(&out.stdout).expect("one JSON object");
        assert_eq!(last["tier"], "auth");
        assert_eq!(last["limit"], 5);
        assert_eq!(last["allowed"], i < 5, "attempt {i}: {last}");
        // The whole decision: where it was counted, the threat score, and every tier's part.
        assert_eq!(last["source"], "local", "{last}");
        assert!(last["threat_score"].is_u64() && last["threat_factors"].is_array(), "{last}");
        let auth = last["tiers"].as_array().and_then(|t| t.iter().find(|t| t["tier"] == "auth"));
        assert_eq!(auth.map(|t| t["allowed"].clone()), Some((i < 5).into()), "{last}");
    }
    // The text form names the source and each tier.
    let text_addr = addr.clone();
    let out = tokio::task::spawn_blocking(move || {
        sluice(&["check", "--addr", &text_addr, "--attr", "ip=10.1.1.2", "--attr", "endpoint=/auth/login"])
    })
    .await
    .expect("cli");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.starts_with("allowed by ") && said.contains("(local)") && said.contains("  tier "),
        "{said}"
    );
    // A bare host:port is taken as http://host:port.
    let bare = format!("127.0.0.1:{grpc}");
    let out = tokio::task::spawn_blocking(move || {
        sluice(&["check", "--addr", &bare, "--attr", "ip=10.9.9.9", "--attr", "endpoint=/x", "--json"])
    })
    .await
    .expect("cli");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // `sluice admin` pointed at the decision port says which port the admin API is on.
    let bare = format!("127.0.0.1:{grpc}");
    let out = tokio::task::spawn_blocking(move || {
        sluice(&[
            "admin",
            "--addr",
            &bare,
            "--token",
            "a-token-for-the-admin-cli",
            "inspect",
            "--tier",
            "auth",
            "--attr",
            "ip=10.1.1.1",
        ])
    })
    .await
    .expect("cli");
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("does not serve the admin API") && said.contains("admin.grpc_addr"), "{said}");

    // A cost of 0 is refused, and counted under the field it names.
    let out = tokio::task::spawn_blocking(move || {
        sluice(&["check", "--addr", &addr, "--attr", "ip=10.9.9.9", "--cost", "0", "--json"])
    })
    .await
    .expect("cli");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cost"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metrics = http_get(http_addr, "/metrics").await.1;
    assert!(metrics.contains("sluice_requests_rejected_total{field=\"cost\"} 1"), "{metrics}");

    let retry = last["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!(retry > 890_000 && retry <= 900_000, "{last}");
    assert_eq!(last["remaining"], 0);

    // SIGTERM: the process drains and exits 0, having said at start-up that no Redis is configured.
    let pid = process.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = process.0.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "sluice did not stop within 10 s of SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status {status}");
    let mut log = String::new();
    std::io::Read::read_to_string(process.0.stderr.as_mut().expect("stderr"), &mut log).expect("read log");
    assert!(log.contains("no redis configured"), "{log}");
    assert!(!log.contains('\x1b'), "no colour codes in a log that is not a terminal: {log:?}");
    assert!(log.contains("the admin API is off: admin.grpc_addr is not set"), "{log}");

    let out = Command::new(BIN)
        .args(["check-config", &common::repo_path("examples/sluice.yaml").display().to_string()])
        .env("SLUICE__ADMIN__TOKEN", "a-token-for-the-admin-cli")
        .output()
        .expect("check-config");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("note: the admin API is off"));
}

/// `server.worker_threads`, from the file or the environment, is the number of worker threads the
/// runtime starts, as the runtime itself counts them in the start-up log, and it wins over
/// `TOKIO_WORKER_THREADS`. Counts outside 1 to 1024 are refused before anything starts, and a
/// worker the system refuses stops start-up with the reason rather than hanging.
#[tokio::test]
async fn worker_threads_are_as_configured() {
    let config = |threads: Option<&str>| {
        let (grpc, http) = (pick_port(false), pick_port(false));
        let threads = threads.map(|n| format!("  worker_threads: {n}\n")).unwrap_or_default();
        let text = format!(
            "server:\n  grpc_addr: 127.0.0.1:{grpc}\n  http_addr: 127.0.0.1:{http}\n{threads}tiers: []\n"
        );
        (common::write_config(&text), format!("127.0.0.1:{http}").parse().expect("addr"))
    };
    let serve = |file: &tempfile::NamedTempFile, env: &[(&str, &str)]| {
        let mut command = Command::new(BIN);
        command.args(["serve", "--config", file.path().to_str().expect("path")]).stderr(Stdio::piped());
        command.env_remove("TOKIO_WORKER_THREADS").envs(env.iter().copied());
        command
    };
    // (the file's worker_threads, the environment, the workers expected)
    type Case<'a> = (Option<&'a str>, &'a [(&'a str, &'a str)], usize);
    let cases: [Case; 3] = [
        (Some("3"), &[], 3),
        (None, &[("SLUICE__SERVER__WORKER_THREADS", "1")], 1),
        (Some("1"), &[("TOKIO_WORKER_THREADS", "3")], 1),
    ];
    for (threads, env, expected) in cases {
        let (file, http_addr) = config(threads);
        let mut process = common::Process(serve(&file, env).spawn().expect("start sluice serve"));
        assert_eventually!(
            tokio::net::TcpStream::connect(http_addr).await.is_ok()
                && http_get(http_addr, "/readyz").await.0 == 200,
            Duration::from_secs(10),
            "sluice serve did not become ready"
        );
        process.0.kill().expect("kill");
        let mut log = String::new();
        std::io::Read::read_to_string(&mut process.0.stderr.take().expect("stderr"), &mut log).expect("log");
        assert!(log.contains(&format!("worker_threads={expected}")), "{threads:?} {env:?}: {log}");
    }

    // Each of these must end on its own, and soon: a regression would otherwise serve, or hang.
    let ends = |mut command: Command| {
        let mut process = common::Process(command.spawn().expect("start sluice serve"));
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = process.0.try_wait().expect("wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "sluice serve still runs after 20 s");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut process.0.stderr.take().expect("stderr"), &mut stderr)
            .expect("stderr");
        (status.code(), stderr)
    };
    for bad in ["0", "1025", "-1"] {
        let (file, _) = config(Some(bad));
        let (code, stderr) = ends(serve(&file, &[]));
        assert_eq!(code, Some(78), "{bad}: {stderr}");
        assert!(stderr.contains("server.worker_threads"), "{bad}: {stderr}");
    }
    for bad in ["", "abc", "0"] {
        let (file, _) = config(None);
        let (code, stderr) = ends(serve(&file, &[("SLUICE__SERVER__WORKER_THREADS", bad)]));
        assert_eq!(code, Some(78), "{bad:?}: {stderr}");
        assert!(stderr.contains("worker_threads"), "{bad:?}: {stderr}");
    }
    let (file, _) = config(Some("1024"));
    let out = sluice(&["check-config", file.path().to_str().expect("path")]);
    assert!(out.status.success(), "1024 is allowed: {}", String::from_utf8_lossy(&out.stderr));

    // tokio's own variable, when it is no number, and a worker the system refuses (1024 threads'
    // stacks past a limit on address space): a reason and a failure, not a panic's hang.
    let (file, _) = config(None);
    let (code, stderr) = ends(serve(&file, &[("TOKIO_WORKER_THREADS", "abc")]));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("cannot start the runtime"), "{stderr}");
    let (file, _) = config(Some("1024"));
    let mut limited = Command::new("sh");
    let path = file.path().to_str().expect("path");
    limited
        .args(["-c", &format!("ulimit -v 1200000 && exec {BIN} serve --config {path}")])
        .stderr(Stdio::piped());
    let (code, stderr) = ends(limited);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("cannot start the runtime") && stderr.contains("worker thread"), "{stderr}");
}

/// A port already in use stops `serve` with the listener's name and address in the log.
#[test]
fn a_taken_port_is_named() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let out = Command::new(BIN)
        .arg("serve")
        .env("SLUICE__SERVER__GRPC_ADDR", addr.to_string())
        .env("SLUICE__SERVER__HTTP_ADDR", format!("127.0.0.1:{}", pick_port(false)))
        .output()
        .expect("run sluice serve");
    assert!(!out.status.success());
    let log = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(log.contains(&format!("cannot listen on {addr} (server.grpc_addr)")), "{log}");
}

#[tokio::test]
async fn http_endpoints_health_and_metrics() {
    let server = SluiceServer::start(
        "tiers:\n  - name: edge_ip\n    key: [ip]\n    limit: 2\n    window: 1m\n  - name: shadowed\n    key: [ip]\n    limit: 1\n    window: 1m\n    shadow: true\n",
        None,
    )
    .await;
    let mut client = server.client().await;
    for _ in 0..3 {
        check(&mut client, request(&[("ip", "192.0.2.1")])).await;
    }
    assert_eq!(http_get(server.http_addr, "/healthz").await.0, 200);
    assert_eq!(http_get(server.http_addr, "/readyz").await.0, 200);
    let (status, metrics) = http_get(server.http_addr, "/metrics").await;
    assert_eq!(status, 200);
    // Other tests in this binary share the global recorder, so look for at-least values.
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    };
    assert!(
        value("sluice_decisions_total{tier=\"edge_ip\",decision=\"allow\",source=\"local\"}") >= 2.0,
        "{metrics}"
    );
    assert!(
        value("sluice_decisions_total{tier=\"edge_ip\",decision=\"deny\",source=\"local\"}") >= 1.0,
        "{metrics}"
    );
    assert!(
        value("sluice_decisions_total{tier=\"shadowed\",decision=\"shadow_deny\",source=\"local\"}") >= 1.0,
        "{metrics}"
    );
    assert!(metrics.contains("sluice_decision_duration_seconds_bucket"), "{metrics}");
    // Units consumed, and the admitted decision that left 0 of 2 (under 20%) counted as near.
    assert!(value("sluice_units_total{tier=\"edge_ip\"}") >= 2.0, "{metrics}");
    assert!(value("sluice_near_limit_total{tier=\"edge_ip\"}") >= 1.0, "{metrics}");
    assert!(
        metrics.lines().any(|l| l.starts_with("# HELP sluice_decisions_total") && l.contains("exempt")),
        "the help names every decision label: {metrics}"
    );
    assert!(!metrics.contains("192.0.2.1"), "a client value leaked into a label");

    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.grpc_addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for service in ["", "sluice.v1.RateLimiter"] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest { service: service.into() })
            .await
            .expect("health check")
            .into_inner();
        assert_eq!(
            r.status(),
            tonic_health::pb::health_check_response::ServingStatus::Serving,
            "{service:?}"
        );
    }
}

/// Server reflection lists Sluice's services and describes them, for grpcurl-style tools.
#[tokio::test]
async fn reflection_lists_and_describes_the_services() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let server = SluiceServer::start("tiers: []\n", None).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.grpc_addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut client = ServerReflectionClient::new(channel);
    let ask = |request: MessageRequest| {
        tokio_stream::iter(vec![ServerReflectionRequest {
            host: String::new(),
            message_request: Some(request),
        }])
    };
    let mut replies = client
        .server_reflection_info(ask(MessageRequest::ListServices(String::new())))
        .await
        .expect("list")
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        replies.message().await.expect("reply").and_then(|r| r.message_response)
    else {
        panic!("no list")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in
        ["sluice.v1.RateLimiter", "envoy.service.ratelimit.v3.RateLimitService", "grpc.health.v1.Health"]
    {
        assert!(names.iter().any(|n| n == expected), "{expected} not in {names:?}");
    }
    assert!(!names.iter().any(|n| n == "sluice.v1.Admin"), "the admin API is not on this port: {names:?}");
    for symbol in ["sluice.v1.RateLimiter", "envoy.service.ratelimit.v3.RateLimitService"] {
        let mut replies = client
            .server_reflection_info(ask(MessageRequest::FileContainingSymbol(symbol.into())))
            .await
            .expect("describe")
            .into_inner();
        let described = replies.message().await.expect("reply").and_then(|r| r.message_response);
        assert!(
            matches!(&described, Some(MessageResponse::FileDescriptorResponse(f)) if !f.file_descriptor_proto.is_empty()),
            "{symbol}: {described:?}"
        );
    }
}

/// `check` against an address where nothing listens says why, not only "transport error".
#[test]
fn check_says_why_it_cannot_connect() {
    let free = pick_port(false);
    let out = sluice(&["check", "--addr", &format!("127.0.0.1:{free}"), "--attr", "ip=10.0.0.1"]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("Connection refused") && said.contains("is Sluice serving there?"), "{said}");
}

/// The metrics an operator looks for first, from a real `sluice serve`: the build, the process,
/// calls in flight against the bound, and whether the last configuration load worked.
#[tokio::test]
async fn build_process_and_reload_metrics() {
    let (grpc, http) = (pick_port(false), pick_port(false));
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("sluice.yaml");
    let good = format!(
        "server:\n  grpc_addr: 127.0.0.1:{grpc}\n  http_addr: 127.0.0.1:{http}\n  max_in_flight: 77\ntiers: []\n"
    );
    std::fs::write(&config, &good).expect("write");
    let child = Command::new(BIN)
        .args(["serve", "--config", config.to_str().expect("path")])
        .stderr(Stdio::null())
        .spawn()
        .expect("start sluice serve");
    let _process = common::Process(child);
    let http_addr = format!("127.0.0.1:{http}").parse().expect("addr");
    assert_eventually!(
        tokio::net::TcpStream::connect(http_addr).await.is_ok(),
        Duration::from_secs(10),
        "sluice serve did not listen"
    );
    let scrape = || async move { http_get(http_addr, "/metrics").await.1 };
    let metrics = scrape().await;
    let line = |name: &str| metrics.lines().find(|l| l.starts_with(name)).map(str::to_owned);
    let build = line("sluice_build_info{").expect("build info");
    assert!(build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))), "{build}");
    assert!(build.contains("revision=\"") && build.ends_with(" 1"), "{build}");
    for process in ["process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"] {
        assert!(line(process).is_some(), "{process} missing:\n{metrics}");
    }
    let started = line("process_start_time_seconds").and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert!(started.is_some_and(|t| t > 1.7e9), "{started:?}");
    assert_eq!(line("sluice_in_flight_limit ").as_deref(), Some("sluice_in_flight_limit 77"));
    assert!(line("sluice_in_flight ").is_some(), "{metrics}");
    assert_eq!(
        line("sluice_config_last_reload_successful ").as_deref(),
        Some("sluice_config_last_reload_successful 1")
    );
    let loaded_at = line("sluice_config_last_reload_success_timestamp_seconds ")
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .expect("load time");

    // A broken file is not loaded, and the gauge says so; a good one again, and it says so too.
    std::fs::write(&config, format!("{good}  - name: broken\n")).expect("break");
    assert_eventually!(
        scrape().await.contains("sluice_config_last_reload_successful 0"),
        Duration::from_secs(10),
        "the failed reload was not reported"
    );
    std::fs::write(&config, &good).expect("mend");
    assert_eventually!(
        scrape().await.contains("sluice_config_last_reload_successful 1"),
        Duration::from_secs(10),
        "the good reload was not reported"
    );
    let metrics = scrape().await;
    let reloaded_at = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sluice_config_last_reload_success_timestamp_seconds "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .expect("reload time");
    assert!(reloaded_at >= loaded_at, "{reloaded_at} < {loaded_at}");
}
