//! Forward-auth through real gateways: NGINX (`auth_request`) and Caddy (`forward_auth`, in its
//! reverse-proxy form) run the configurations of examples/gateways/ in front of a small application,
//! asking a real Sluice before each request. Clients connect from other loopback addresses
//! (127.0.0.2, 127.0.0.3), so each gateway, on 127.0.0.1, is the only trusted hop.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::http1::{Answer, exchange, loopback};
use common::process::{Process, pick_port};
use common::{RedisServer, SluiceServer};

const SLUICE: &str = "
tiers:
  - name: edge
    key: [ip]
    limit: 3
    window: 1h
  - name: login
    match:
      endpoint: /auth/login
      method: POST
    key: [ip]
    limit: 1
    window: 1h
  - name: per_user
    key: [user]
    limit: 1
    window: 1h
";

/// What the application behind the gateway saw: each request's method, path and headers.
type Seen = Arc<Mutex<Vec<(String, String, Vec<(String, String)>)>>>;

/// The application: answers `upstream` to everything, recording each request.
async fn application(port: u16) -> Seen {
    let seen: Seen = Arc::default();
    let record = Arc::clone(&seen);
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let record = Arc::clone(&record);
        async move {
            let headers = request
                .headers()
                .iter()
                .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
                .collect();
            let entry = (request.method().to_string(), request.uri().path().to_owned(), headers);
            record.lock().expect("record").push(entry);
            "upstream"
        }
    });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("the application's port");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("the application serves") });
    seen
}

/// One HTTP/1.1 request to the gateway on `to` from 127.0.0.`source`.
async fn request(to: u16, source: u8, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    exchange(SocketAddr::from(([127, 0, 0, 1], to)), loopback(source), method, path, headers, "").await
}

/// Waits until `port` answers `GET /` with the application's body (the gateway is up and routes).
async fn until_routed(port: u16, gateway: &mut Process, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = gateway.exited() {
            panic!("the gateway exited ({status}): {}", std::fs::read_to_string(log).unwrap_or_default());
        }
        let up = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok();
        if up {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway never listened: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The example at `path` with its addresses replaced by the test's ports.
fn example(path: &str, gateway: u16, sluice: u16, app: u16) -> String {
    std::fs::read_to_string(common::repo_path(path))
        .expect("the example")
        .replace("127.0.0.1:8083", &format!("127.0.0.1:{sluice}"))
        .replace("127.0.0.1:3000", &format!("127.0.0.1:{app}"))
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{gateway}"))
        .replace("http://:8080", &format!("http://:{gateway}"))
}

/// Where a gateway puts Sluice's RateLimit headers on an allowed request.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Copied {
    /// On its response to the client.
    ToClient,
    /// On the request it sends on to the application (all Traefik can do).
    ToApplication,
}

/// What every gateway must do, whatever its configuration's shape.
async fn holds_the_promises(port: u16, seen: &Seen, copied: Copied) {
    // Three requests pass, with Sluice's headers; the application sees them.
    for remaining in ["2", "1", "0"] {
        let answer = request(port, 2, "GET", "/x?q=1", &[]).await;
        assert_eq!((answer.status, answer.body.as_str()), (200, "upstream"), "{:?}", answer.headers);
        let (ratelimit, policy) = match copied {
            Copied::ToClient => {
                let h = |name| answer.header(name).map(str::to_owned);
                (h("ratelimit"), h("ratelimit-policy"))
            }
            Copied::ToApplication => {
                let seen = seen.lock().expect("seen");
                let last = &seen.last().expect("the application saw it").2;
                let h = |name: &str| last.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
                (h("ratelimit"), h("ratelimit-policy"))
            }
        };
        let ratelimit = ratelimit.unwrap_or_else(|| panic!("RateLimit in {:?}", answer.headers));
        assert!(ratelimit.contains(&format!("r={remaining}")), "{ratelimit}");
        assert!(policy.expect("RateLimit-Policy").contains("\"edge\";q=3"));
    }
    let passed = seen.lock().expect("seen").len();
    assert_eq!(passed, 3, "the application saw the three allowed requests");
    // The fourth is 429 with an honest Retry-After, and never reaches the application.
    let answer = request(port, 2, "GET", "/x", &[]).await;
    assert_eq!(answer.status, 429, "{:?}", answer.headers);
    let retry: u64 = answer.header("retry-after").expect("Retry-After").parse().expect("seconds");
    assert!((1..=7200).contains(&retry), "{retry}");
    assert!(answer.header("ratelimit").expect("RateLimit").contains("r=0"));
    // A forged X-Forwarded-For or X-Real-IP does not make the same client someone else.
    let forged = [("X-Forwarded-For", "198.51.100.7"), ("X-Real-IP", "198.51.100.8")];
    assert_eq!(request(port, 2, "GET", "/x", &forged).await.status, 429);
    assert_eq!(seen.lock().expect("seen").len(), 3, "no denied request reached the application");
    // Another client has its own count.
    assert_eq!(request(port, 3, "GET", "/x", &[]).await.status, 200);
    // The method and path reach Sluice, the query does not make a new key.
    assert_eq!(request(port, 4, "POST", "/auth/login?a=1", &[]).await.status, 200);
    assert_eq!(request(port, 4, "POST", "/auth/login?a=2", &[]).await.status, 429);
    assert_eq!(request(port, 4, "GET", "/auth/login", &[]).await.status, 200, "another method");
    // A client's own X-User never reaches Sluice: per_user (1 a user) would deny the second.
    for source in [5, 6] {
        let answer = request(port, source, "GET", "/x", &[("X-User", "victim")]).await;
        assert_eq!(answer.status, 200, "client 127.0.0.{source} claiming to be victim");
    }
}

/// Sluice on a real redis-server, for `deny_status`.
async fn sluice(deny_status: u16) -> (SluiceServer, RedisServer) {
    let redis = RedisServer::start();
    let yaml = format!(
        "http_api:\n  addr: 127.0.0.1:0\n  trusted_proxies: [127.0.0.1/32]\n  deny_status: {deny_status}\n  \
         attributes: {{X-User: user}}\n{SLUICE}"
    );
    (SluiceServer::start_with_timeout(&yaml, Some(&redis.url()), 1000).await, redis)
}

/// With Redis killed, requests go on by the failure mode (counted in process): the gateway never
/// answers 5xx.
async fn survives_redis(port: u16, redis: &mut RedisServer) {
    redis.kill();
    for i in 0..20u8 {
        let status = request(port, 10 + i % 4, "GET", "/y", &[]).await.status;
        assert!(status == 200 || status == 429, "request {i} with Redis down: {status}");
    }
}

#[tokio::test]
async fn nginx_auth_request() {
    let (sluice, mut redis) = sluice(403).await;
    let app = pick_port(false);
    let seen = application(app).await;
    let port = pick_port(false);
    let dir = tempfile::tempdir().expect("dir");
    let conf = dir.path().join("nginx.conf");
    let sluice_port = sluice.http_api_addr.expect("the HTTP API").port();
    std::fs::write(&conf, example("examples/gateways/nginx.conf", port, sluice_port, app)).expect("write");
    let log = dir.path().join("nginx.log");
    let pid = dir.path().join("nginx.pid");
    let mut nginx = Process::spawn(
        Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .args(["-e", "stderr", "-g"])
            .arg(format!("daemon off; master_process off; pid {};", pid.display()))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log")),
        "install it: apt-get install nginx (the README's test command does)",
    );
    until_routed(port, &mut nginx, &log).await;
    holds_the_promises(port, &seen, Copied::ToClient).await;
    survives_redis(port, &mut redis).await;
}

#[tokio::test]
async fn caddy_forward_auth() {
    let (sluice, mut redis) = sluice(429).await;
    let app = pick_port(false);
    let seen = application(app).await;
    let port = pick_port(false);
    let dir = tempfile::tempdir().expect("dir");
    let conf = dir.path().join("Caddyfile");
    let sluice_port = sluice.http_api_addr.expect("the HTTP API").port();
    std::fs::write(&conf, example("examples/gateways/Caddyfile", port, sluice_port, app)).expect("write");
    let log = dir.path().join("caddy.log");
    let mut caddy = Process::spawn(
        Command::new("caddy")
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&conf)
            .env("HOME", dir.path())
            .env("XDG_CONFIG_HOME", dir.path())
            .env("XDG_DATA_HOME", dir.path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log")),
        "install it: apt-get install caddy (the README's test command does)",
    );
    until_routed(port, &mut caddy, &log).await;
    holds_the_promises(port, &seen, Copied::ToClient).await;
    survives_redis(port, &mut redis).await;
}

/// Traefik, from a virtual environment with tests/gateways/requirements.txt installed.
fn traefik() -> std::path::PathBuf {
    common::http1::venv("gateways", &common::repo_path("tests/gateways/requirements.txt")).join("bin/traefik")
}

#[tokio::test]
async fn traefik_forward_auth() {
    let binary = tokio::task::spawn_blocking(traefik).await.expect("traefik");
    let (sluice, mut redis) = sluice(429).await;
    let app = pick_port(false);
    let seen = application(app).await;
    let port = pick_port(false);
    let dir = tempfile::tempdir().expect("dir");
    let sluice_port = sluice.http_api_addr.expect("the HTTP API").port();
    let dynamic = dir.path().join("dynamic.yml");
    std::fs::write(&dynamic, example("examples/gateways/traefik/dynamic.yml", port, sluice_port, app))
        .expect("write");
    let stat = example("examples/gateways/traefik/traefik.yml", port, sluice_port, app)
        .replace("/etc/traefik/dynamic.yml", &dynamic.display().to_string());
    let conf = dir.path().join("traefik.yml");
    std::fs::write(&conf, stat).expect("write");
    let log = dir.path().join("traefik.log");
    let mut traefik = Process::spawn(
        Command::new(binary)
            .arg(format!("--configFile={}", conf.display()))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log")),
        "its virtual environment could not be made (python3-venv, network to PyPI)",
    );
    until_routed(port, &mut traefik, &log).await;
    // Routes from the file provider come a moment after the port: until then Traefik says 404.
    let deadline = Instant::now() + Duration::from_secs(20);
    while request(port, 9, "GET", "/", &[]).await.status == 404 {
        assert!(Instant::now() < deadline, "no route: {}", std::fs::read_to_string(&log).unwrap_or_default());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen.lock().expect("seen").clear();
    holds_the_promises(port, &seen, Copied::ToApplication).await;
    survives_redis(port, &mut redis).await;
}
