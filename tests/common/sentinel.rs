//! A real Redis Sentinel setup for tests: one primary, one replica and three `redis-sentinel`s watching
//! them as "mymaster", all children of this process on free loopback ports, SIGKILLed on drop.
//!
//! Sentinel timings are short (down after 1 s, failover timeout 3 s), so a killed primary is replaced in
//! about 2–2.5 s.
//!
//! `start_tls` adds a TLS port to every process (clients verified against a test CA): the replica
//! replicates, and the sentinels monitor and talk to each other, over TLS, so what the sentinels give
//! out are TLS addresses. The plaintext ports stay for the fixture's own commands.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::certs::{Ca, NodeTls, client_port, client_url};
use super::cluster::{RedisProcess, StartFailure, info_field, query, temp_dir};
use super::process::pick_port;

const MASTER_NAME: &str = "mymaster";
const START_PATIENCE: Duration = Duration::from_secs(20);

/// Primary + replica + three sentinels. All processes are SIGKILLed on drop, also when the test panics.
#[derive(Debug)]
pub struct RedisSentinel {
    primary: RedisProcess,
    replica: RedisProcess,
    sentinels: Vec<RedisProcess>,
    tls: Option<NodeTls>,
    // Declared last: the directory goes only after the processes writing into it.
    dir: tempfile::TempDir,
}

impl RedisSentinel {
    /// Starts the primary and the replica, waits for the replica's link, then starts the sentinels (so
    /// their first INFO already lists the replica) and returns once each sentinel sees one replica and
    /// the two other sentinels. Panics with the logs when that takes more than 20 s.
    pub fn start() -> RedisSentinel {
        Self::start_with(None)
    }

    /// As `start`, every process also (and the links between them only) on TLS with certificates
    /// from `ca`.
    pub fn start_tls(ca: &Ca) -> RedisSentinel {
        Self::start_with(Some(ca))
    }

    fn start_with(ca: Option<&Ca>) -> RedisSentinel {
        for attempt in 1..=3 {
            match Self::try_start(ca) {
                Ok(setup) => return setup,
                Err(StartFailure::PortTaken) if attempt < 3 => continue,
                Err(StartFailure::PortTaken) => panic!("sentinel setup ports kept being taken"),
                Err(StartFailure::Other(why)) => panic!("sentinel setup did not start: {why}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    fn try_start(ca: Option<&Ca>) -> Result<RedisSentinel, StartFailure> {
        let dir = temp_dir();
        let mut tls = ca.map(|ca| NodeTls::new(ca, dir.path()));
        let primary = start_server(&dir, "primary", None, tls.as_mut())?;
        let upstream = client_port(tls.as_ref(), primary.port);
        let replica = start_server(&dir, "replica", Some(upstream), tls.as_mut())?;
        let mut setup = RedisSentinel { primary, replica, sentinels: Vec::new(), tls, dir };
        setup.poll(START_PATIENCE, "the replica's master_link_status:up", |s| {
            query::<String>(s.replica.port, redis::cmd("INFO").arg("replication"))
                .is_ok_and(|info| info_field(&info, "master_link_status") == Some("up"))
        });
        for _ in 0..3 {
            let port = pick_port(false);
            let conf = setup.dir.path().join(format!("sentinel-{port}.conf"));
            let log = setup.dir.path().join(format!("sentinel-{port}.log"));
            // Each sentinel rewrites its own file (ids, discovered peers), so each gets one.
            let mut lines = vec![
                format!("port {port}"),
                "bind 127.0.0.1".to_owned(),
                format!("dir {}", setup.dir.path().display()),
                format!("logfile {}", log.display()),
                format!("sentinel monitor {MASTER_NAME} 127.0.0.1 {upstream} 2"),
                format!("sentinel down-after-milliseconds {MASTER_NAME} 1000"),
                format!("sentinel failover-timeout {MASTER_NAME} 3000"),
                format!("sentinel parallel-syncs {MASTER_NAME} 1"),
            ];
            if let Some(tls) = setup.tls.as_mut() {
                // The same settings as the servers' arguments, as config lines.
                lines.extend(tls.args(port, || pick_port(false)).chunks(2).map(|pair| {
                    format!(
                        "{} {}",
                        pair[0].to_string_lossy().trim_start_matches("--"),
                        pair[1].to_string_lossy()
                    )
                }));
            }
            let text = lines.join("\n");
            std::fs::write(&conf, text + "\n").expect("write sentinel config");
            setup.sentinels.push(RedisProcess::spawn("redis-sentinel", vec![conf.into()], port, log));
        }
        for sentinel in &mut setup.sentinels {
            sentinel.wait_ready(START_PATIENCE)?;
        }
        setup.poll(START_PATIENCE, "every sentinel to see 1 replica and 2 other sentinels", |s| {
            s.sentinels.iter().all(|p| {
                sentinel_master_state(p.port).is_some_and(|state| {
                    state.get("num-slaves").map(String::as_str) == Some("1")
                        && state.get("num-other-sentinels").map(String::as_str) == Some("2")
                })
            })
        });
        Ok(setup)
    }

    /// `redis://127.0.0.1:PORT` of each sentinel (`rediss://` and the TLS port with TLS).
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(|s| client_url(self.tls(), s.port)).collect()
    }

    /// With TLS: the files a client needs.
    pub fn tls(&self) -> Option<&NodeTls> {
        self.tls.as_ref()
    }

    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|s| s.port).collect()
    }

    /// The name the sentinels monitor the primary under: "mymaster".
    pub fn master_name(&self) -> &str {
        MASTER_NAME
    }

    pub fn primary_port(&self) -> u16 {
        self.primary.port
    }

    pub fn replica_port(&self) -> u16 {
        self.replica.port
    }

    pub fn primary_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.primary.port)
    }

    pub fn replica_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.replica.port)
    }

    /// Runs one command on the server or sentinel listening on `port`.
    pub fn cmd_on<T: redis::FromRedisValue>(&self, port: u16, cmd: &redis::Cmd) -> T {
        query(port, cmd).unwrap_or_else(|e| panic!("command on port {port} failed: {e}"))
    }

    /// The master address one sentinel gives out now, as a port (`None` if it does not answer); with
    /// TLS, a TLS port.
    pub fn master_port_per(&self, sentinel_port: u16) -> Option<u16> {
        let addr: Option<Vec<String>> =
            query(sentinel_port, redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg(MASTER_NAME))
                .ok()?;
        addr?.get(1)?.parse().ok()
    }

    /// SIGKILLs the primary (and reaps it).
    pub fn kill_primary(&mut self) {
        self.primary.kill();
    }

    /// Waits until every sentinel names the replica as master and the replica says it is one; returns the
    /// replica's port. Panics with the sentinel logs after `patience`.
    pub fn wait_for_promotion(&self, patience: Duration) -> u16 {
        let replica = self.replica.port;
        let announced = client_port(self.tls(), replica);
        self.poll(patience, "the sentinels to promote the replica", |s| {
            s.sentinels.iter().all(|p| s.master_port_per(p.port) == Some(announced))
                && query::<String>(replica, redis::cmd("INFO").arg("replication"))
                    .is_ok_and(|info| info_field(&info, "role") == Some("master"))
        });
        replica
    }

    /// The tail of every process's log, for failure messages.
    pub fn logs(&self) -> String {
        [("primary", &self.primary), ("replica", &self.replica)]
            .into_iter()
            .chain(self.sentinels.iter().map(|s| ("sentinel", s)))
            .map(|(role, p)| format!("--- {role} {} ---\n{}\n", p.port, p.log_tail(15)))
            .collect()
    }

    fn poll(&self, patience: Duration, what: &str, done: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + patience;
        while !done(self) {
            if Instant::now() > deadline {
                panic!("gave up waiting {patience:?} for {what}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        for sentinel in &mut self.sentinels {
            sentinel.kill();
        }
        self.replica.kill();
        self.primary.kill();
    }
}

fn start_server(
    dir: &tempfile::TempDir,
    name: &str,
    primary: Option<u16>,
    tls: Option<&mut NodeTls>,
) -> Result<RedisProcess, StartFailure> {
    let port = pick_port(false);
    let node_dir = dir.path().join(name);
    std::fs::create_dir_all(&node_dir).expect("server dir");
    let mut args = RedisProcess::server_args(port, &node_dir);
    if let Some(tls) = tls {
        args.extend(tls.args(port, || pick_port(false)));
    }
    if let Some(primary) = primary {
        args.push("--replicaof".into());
        args.push("127.0.0.1".into());
        args.push(primary.to_string().into());
    }
    let mut process = RedisProcess::spawn("redis-server", args, port, node_dir.join("redis.log"));
    process.wait_ready(START_PATIENCE)?;
    Ok(process)
}

/// `SENTINEL MASTER mymaster` as a field map, from the sentinel on `port`.
fn sentinel_master_state(port: u16) -> Option<HashMap<String, String>> {
    let flat: Vec<String> = query(port, redis::cmd("SENTINEL").arg("master").arg(MASTER_NAME)).ok()?;
    Some(
        flat.chunks(2)
            .filter(|pair| pair.len() == 2)
            .map(|pair| (pair[0].clone(), pair[1].clone()))
            .collect(),
    )
}
