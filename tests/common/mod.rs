//! Fixtures that own real processes and servers: a `redis-server` child on a free loopback port and
//! a Sluice server (`server::run` on port 0). Both are stopped on drop, even when a test fails.
#![allow(dead_code)]

pub mod certs;
pub mod cluster;
pub mod http1;
pub mod otlp;
pub mod process;
pub mod proxy;
pub mod sentinel;

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice::api::pb;
use sluice::api::pb::rate_limiter_client::RateLimiterClient;
use sluice::server::{self, Listeners};
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// Polls `$cond` until it holds or `$patience` passes; then fails with the message.
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr, $patience:expr, $($msg:tt)+) => {{
        let deadline = std::time::Instant::now() + $patience;
        loop {
            if $cond { break; }
            if std::time::Instant::now() > deadline { panic!($($msg)+); }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }};
}

pub use process::{Process, pick_port};

/// A throwaway `redis-server` on a free port, killed on drop.
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Process>,
    /// `requirepass`, when the server has one.
    password: Option<String>,
    /// TLS only (no plaintext port), clients verified against the CA, when set.
    tls: Option<Box<certs::NodeTls>>,
}

impl RedisServer {
    /// Starts a server; panics (the test fails, never skips) when redis-server cannot run.
    pub fn start() -> RedisServer {
        Self::start_with_password(None)
    }

    /// A server that requires `password` (Redis `requirepass`) when one is given.
    pub fn start_with_password(password: Option<&str>) -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = RedisServer {
            port: pick_port(false),
            dir,
            child: None,
            password: password.map(String::from),
            tls: None,
        };
        server.spawn();
        server
    }

    /// A server that speaks only TLS (`rediss://`), with a certificate for 127.0.0.1 from `ca`, and
    /// refuses clients without a certificate from `ca`.
    pub fn start_tls(ca: &certs::Ca) -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let tls = Box::new(certs::NodeTls::new(ca, dir.path()));
        let mut server =
            RedisServer { port: pick_port(false), dir, child: None, password: None, tls: Some(tls) };
        server.spawn();
        server
    }

    /// Writes a file into the server's directory and returns its path.
    pub fn file(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write a file for redis");
        path.display().to_string()
    }

    pub fn tls(&self) -> Option<&certs::NodeTls> {
        self.tls.as_deref()
    }

    /// A `RedisStore` on this server, as the differential and store-level tests drive it.
    pub async fn store(&self) -> sluice::store::redis::RedisStore {
        sluice::store::redis::RedisStore::connect(
            &sluice::store::redis::Topology::Standalone { url: self.url() },
            &Default::default(),
            Duration::from_secs(2),
        )
        .await
        .expect("connect to the test redis")
    }

    /// The URL, with the password when the server has one.
    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}", self.port),
            None => self.plain_url(),
        }
    }

    /// The URL without any credentials (`rediss://` for a TLS server).
    pub fn plain_url(&self) -> String {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let ports: Vec<OsString> = match &self.tls {
            None => vec!["--port".into(), self.port.to_string().into()],
            Some(tls) => [vec!["--port".into(), "0".into()], tls.server_args(self.port)].concat(),
        };
        let child = Process::spawn(
            Command::new("redis-server")
                .args(ports)
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(self.dir.path())
                .arg("--logfile")
                .arg(self.dir.path().join("redis.log"))
                .args(self.password.iter().flat_map(|p| ["--requirepass".to_owned(), p.clone()]))
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            "redis-server must be installed to run this test (apt-get install redis-server)",
        );
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.ping().is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING within 10 s; log: {}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn ping(&self) -> redis::RedisResult<()> {
        let mut conn = self.client().get_connection_with_timeout(Duration::from_millis(200))?;
        redis::cmd("PING").query(&mut conn)
    }

    pub fn client(&self) -> redis::Client {
        match &self.tls {
            None => redis::Client::open(self.url()).expect("redis url"),
            Some(tls) => redis::Client::build_with_tls(self.url(), tls.client_certificates())
                .expect("redis tls client"),
        }
    }

    /// Runs one command synchronously.
    pub fn cmd<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> T {
        let mut conn = self.client().get_connection().expect("connect to the test redis");
        cmd.query(&mut conn).expect("redis command")
    }

    /// How many times this server has run `command` (`INFO commandstats`; subcommands as
    /// `function|load`).
    pub fn calls(&self, command: &str) -> u64 {
        let info: String = self.cmd(redis::cmd("INFO").arg("commandstats"));
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().expect("a count of calls"))
    }

    /// Calls of the decision and report functions (FCALL) so far.
    pub fn function_calls(&self) -> u64 {
        self.calls("fcall")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis-server is running").id()
    }

    /// SIGSTOP: the server hangs (connections stay open, nothing is answered).
    pub fn freeze(&self) {
        signal(self.pid(), "STOP");
    }

    /// SIGCONT after `freeze`.
    pub fn thaw(&self) {
        signal(self.pid(), "CONT");
    }

    /// Starts the server again (empty) on the same port after `kill`.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "redis-server is still running");
        self.spawn();
    }

    /// Kills the server with SIGKILL and waits for it to go.
    pub fn kill(&mut self) {
        self.child = None;
    }

    /// Kills the server and starts a new, empty one on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

/// Sends a signal by name with kill(1); the process must be there to get it.
pub fn signal(pid: u32, name: &str) {
    assert!(process::signal(pid, name), "kill -{name} {pid} failed");
}

/// A Sluice server running `server::run` in this process on loopback ports, configured from a real
/// YAML file. Stopped (gracefully) on drop.
pub struct SluiceServer {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// The admin API's address, when the config has an `admin` section.
    pub admin_addr: Option<SocketAddr>,
    /// The HTTP decision API's address, when the config has an `http_api` section.
    pub http_api_addr: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _config: tempfile::NamedTempFile,
}

impl SluiceServer {
    /// Starts a server from YAML; `redis_url` adds a redis section when given (200 ms a call).
    pub async fn start(yaml: &str, redis_url: Option<&str>) -> SluiceServer {
        Self::start_with_timeout(yaml, redis_url, 200).await
    }

    /// As `start`, with Redis calls given `timeout_ms` before the fallback answers: for tests whose
    /// point is that Redis decides, so that a busy machine does not make it the fallback.
    pub async fn start_with_timeout(yaml: &str, redis_url: Option<&str>, timeout_ms: u64) -> SluiceServer {
        let mut text = yaml.to_owned();
        if let Some(url) = redis_url {
            text.push_str(&format!("\nredis:\n  url: {url}\n  timeout_ms: {timeout_ms}\n"));
        }
        let file = write_config(&text);
        let mut settings = sluice::config::load_with_env(Some(file.path()), Some(HashMap::new()))
            .unwrap_or_else(|e| panic!("test config is invalid: {e}"));
        settings.server.grpc_addr = "127.0.0.1:0".parse().expect("addr");
        settings.server.http_addr = "127.0.0.1:0".parse().expect("addr");
        let listeners = Listeners::bind(&settings).await.expect("bind loopback listeners");
        let grpc_addr = listeners.grpc.local_addr().expect("addr");
        let http_addr = listeners.http.local_addr().expect("addr");
        let admin_addr = listeners.admin.as_ref().map(|l| l.local_addr().expect("addr"));
        let http_api_addr = listeners.http_api.as_ref().map(|l| l.local_addr().expect("addr"));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server::run(settings, listeners, async {
                let _ = stopped.await;
                server::Stop::Now
            })
            .await
            .expect("server failed");
        });
        SluiceServer {
            grpc_addr,
            http_addr,
            admin_addr,
            http_api_addr,
            stop: Some(stop),
            task: Some(task),
            _config: file,
        }
    }

    pub async fn client(&self) -> RateLimiterClient<Channel> {
        let url = format!("http://{}", self.grpc_addr);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match RateLimiterClient::connect(url.clone()).await {
                Ok(client) => return client,
                Err(e) if Instant::now() > deadline => panic!("cannot connect to sluice at {url}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// The configuration file the server loaded (and reloads when it changes).
    pub fn config_path(&self) -> &Path {
        self._config.path()
    }

    /// Stops the server and waits until it has shut down.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task");
        }
    }
}

impl Drop for SluiceServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

pub fn write_config(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".yaml").tempfile().expect("temp file");
    std::io::Write::write_all(&mut file, text.as_bytes()).expect("write config");
    file
}

/// A request with the given attributes (built-in names go to their fields, others to extra).
pub fn request(attrs: &[(&str, &str)]) -> pb::RateRequest {
    let mut a = pb::Attributes::default();
    for (name, value) in attrs {
        let value = (*value).to_owned();
        match *name {
            "ip" => a.ip = value,
            "user" => a.user = value,
            "endpoint" => a.endpoint = value,
            "method" => a.method = value,
            "user_agent" => a.user_agent = value,
            "client_tier" => a.client_tier = value,
            other => {
                a.extra.insert(other.to_owned(), value);
            }
        }
    }
    pb::RateRequest { attributes: Some(a), cost: None, tiers: vec![] }
}

/// Sends one request and returns its decision; panics on an RPC error.
pub async fn check(client: &mut RateLimiterClient<Channel>, req: pb::RateRequest) -> pb::Decision {
    let response = client
        .check(pb::CheckRequest { requests: vec![req], dry_run: false })
        .await
        .unwrap_or_else(|status| panic!("check failed: {status:?}"));
    response.into_inner().decisions.into_iter().next().expect("one decision")
}

pub fn header<'d>(d: &'d pb::Decision, name: &str) -> Option<&'d str> {
    d.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value.as_str())
}

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A minimal HTTP/1.1 GET; returns the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect to the http port");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status line");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// One decision seen by a `Load` client.
#[derive(Clone, Debug)]
pub struct Seen {
    pub client: usize,
    pub sent: Instant,
    pub latency: Duration,
    pub source: String,
    pub allowed: bool,
}

/// Clients calling `Check` in a loop, each over its own connection, recording every decision and
/// every failed RPC until `finish` (and at most 100 000 calls each).
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<(Vec<Seen>, Vec<String>)>>,
}

impl Load {
    /// `make(client, n)` builds the n-th request of a client; `pause` is slept between calls.
    pub fn start<F>(addr: SocketAddr, clients: usize, pause: Duration, make: F) -> Load
    where
        F: Fn(usize, u64) -> pb::RateRequest + Send + Sync + 'static,
    {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let make = std::sync::Arc::new(make);
        let tasks = (0..clients)
            .map(|client| {
                let (stop, make) = (std::sync::Arc::clone(&stop), std::sync::Arc::clone(&make));
                tokio::spawn(async move {
                    let mut rpc =
                        RateLimiterClient::connect(format!("http://{addr}")).await.expect("connect");
                    let (mut seen, mut failed) = (Vec::new(), Vec::new());
                    let mut n = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 100_000 {
                        let req = pb::CheckRequest { requests: vec![make(client, n)], dry_run: false };
                        n += 1;
                        let sent = Instant::now();
                        match rpc.check(req).await {
                            Ok(r) => {
                                let d = &r.get_ref().decisions[0];
                                seen.push(Seen {
                                    client,
                                    sent,
                                    latency: sent.elapsed(),
                                    source: d.source.clone(),
                                    allowed: d.allowed,
                                });
                            }
                            Err(status) => failed.push(format!("{status:?}")),
                        }
                        if !pause.is_zero() {
                            tokio::time::sleep(pause).await;
                        }
                    }
                    (seen, failed)
                })
            })
            .collect();
        Load { stop, tasks }
    }

    /// Stops the clients; returns every decision (in no particular order) and every failure.
    pub async fn finish(self) -> (Vec<Seen>, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (mut seen, mut failed) = (Vec::new(), Vec::new());
        for task in self.tasks {
            let (s, f) = task.await.expect("load client");
            seen.extend(s);
            failed.extend(f);
        }
        seen.sort_by_key(|s| s.sent);
        (seen, failed)
    }
}

/// The first decision from `source` sent at or after `after`.
pub fn first_from(seen: &[Seen], source: &str, after: Instant) -> Option<Instant> {
    seen.iter().filter(|s| s.sent >= after && s.source == source).map(|s| s.sent).min()
}
