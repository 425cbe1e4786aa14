//! A real Redis Cluster for tests: `redis-server --cluster-enabled yes` children on free loopback ports,
//! joined with `redis-cli --cluster create`, killed (SIGKILL) on drop.
//!
//! `start_tls` gives every node a TLS port as well and turns on `tls-cluster`: the bus, replication
//! and the addresses the cluster gives out (CLUSTER SLOTS, CLUSTER NODES, MOVED) are then TLS ones,
//! while the fixture's own commands keep to the plaintext ports.
//!
//! Also holds the pieces the Sentinel fixture shares: `RedisProcess` (one node with its log). Everything here talks to nodes one at a time over plain sync connections; it never needs
//! the redis crate's cluster support.

use std::collections::HashMap;
use std::ffi::OsString;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice::store::redis::key_slot;

use super::certs::{Ca, NodeTls, client_port, client_url};
use super::process::{BUS_OFFSET, Process, pick_port};

/// How long one node gets to answer PING, and the whole cluster to settle.
const START_PATIENCE: Duration = Duration::from_secs(20);

/// One `redis-server` or `redis-sentinel` child that logs to a file; SIGKILLed and reaped on drop.
#[derive(Debug)]
pub struct RedisProcess {
    pub port: u16,
    log: PathBuf,
    /// stdout and stderr: where a server complains before it opens its log (bad arguments, say).
    output: PathBuf,
    process: Option<Process>,
}

/// Why a process did not come up.
#[derive(Debug)]
pub enum StartFailure {
    /// Someone took the port between `pick_port` and the server's bind: worth a retry on other ports.
    PortTaken,
    /// Anything else; the text says what and holds the log tail.
    Other(String),
}

impl RedisProcess {
    /// Starts `program args...`; panics when the program is not installed. Does not wait for it.
    pub fn spawn(program: &str, args: Vec<OsString>, port: u16, log: PathBuf) -> RedisProcess {
        let output = log.with_extension("out");
        let stdout = std::fs::File::create(&output).expect("create the process output file");
        let stderr = stdout.try_clone().expect("clone the output file handle");
        let process = Process::spawn(
            Command::new(program).args(args).stdin(Stdio::null()).stdout(stdout).stderr(stderr),
            "install it with apt-get install redis-server redis-sentinel redis-tools",
        );
        RedisProcess { port, log, output, process: Some(process) }
    }

    /// The usual `redis-server` arguments for a throwaway node that logs into `dir`.
    pub fn server_args(port: u16, dir: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--repl-diskless-sync-delay",
            "0",
            "--dir",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        args.push(dir.into());
        args.push("--logfile".into());
        args.push(dir.join("redis.log").into());
        args
    }

    /// Waits until the process answers PING.
    pub fn wait_ready(&mut self, patience: Duration) -> Result<(), StartFailure> {
        let deadline = Instant::now() + patience;
        loop {
            // Compare process ids: a PONG could come from some other server that holds the port.
            let pid = self.process.as_ref().map(|p| p.id().to_string());
            if let Ok(info) = query::<String>(self.port, redis::cmd("INFO").arg("server"))
                && info_field(&info, "process_id") == pid.as_deref()
            {
                return Ok(());
            }
            if let Some(status) = self.process.as_mut().and_then(Process::exited) {
                self.process = None;
                let log = self.log_tail(30);
                if log.contains("Address already in use") {
                    return Err(StartFailure::PortTaken);
                }
                return Err(StartFailure::Other(format!(
                    "process on port {} exited early ({status}); log tail:\n{log}",
                    self.port
                )));
            }
            if Instant::now() > deadline {
                return Err(StartFailure::Other(format!(
                    "process on port {} did not answer PING within {patience:?}; log tail:\n{}",
                    self.port,
                    self.log_tail(30)
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// The last `lines` lines of the process's log, then of its stdout/stderr if it wrote any.
    pub fn log_tail(&self, lines: usize) -> String {
        let tail = |text: &str| {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        };
        let mut text = match std::fs::read_to_string(&self.log) {
            Ok(log) => tail(&log),
            Err(e) => format!("<no log at {}: {e}>", self.log.display()),
        };
        if let Ok(output) = std::fs::read_to_string(&self.output)
            && !output.trim().is_empty()
        {
            text.push_str("\n<stdout/stderr>\n");
            text.push_str(&tail(&output));
        }
        text
    }

    /// SIGKILL, then reap the child so it does not linger as a zombie.
    pub fn kill(&mut self) {
        self.process = None;
    }
}

/// Runs one command on 127.0.0.1:`port` over a fresh connection, with short timeouts so that polling a
/// dead or hung node never blocks for long.
pub fn query<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> redis::RedisResult<T> {
    let timeout = Duration::from_millis(500);
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let mut conn = client.get_connection_with_timeout(timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    cmd.query(&mut conn)
}

/// SETs `key` on the node on `port` and WAITs, on the same connection, until one replica has it;
/// returns how many did. (WAIT counts acknowledgements of its own connection's writes: on another
/// connection it returns at once, whatever the replicas hold.)
pub fn set_replicated(port: u16, key: &str, value: &str) -> i64 {
    let timeout = Duration::from_secs(6);
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("url");
    let mut conn = client.get_connection_with_timeout(timeout).expect("connect");
    conn.set_read_timeout(Some(timeout)).expect("timeout");
    let ((), acked): ((), i64) = redis::pipe()
        .set(key, value)
        .cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query(&mut conn)
        .unwrap_or_else(|e| panic!("SET and WAIT on node {port}: {e}"));
    acked
}

/// The value of `field` in an INFO-style `field:value` text.
pub fn info_field<'t>(info: &'t str, field: &str) -> Option<&'t str> {
    info.lines().find_map(|line| line.trim_end().strip_prefix(field)?.strip_prefix(':'))
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone)]
pub struct NodeLine {
    pub id: String,
    pub port: u16,
    pub flags: Vec<String>,
    /// The master's id for a replica, `-` for a master.
    pub master_id: String,
    pub slots: Vec<RangeInclusive<u16>>,
}

impl NodeLine {
    pub fn is_master(&self) -> bool {
        self.flags.iter().any(|f| f == "master")
    }

    pub fn is_replica(&self) -> bool {
        self.flags.iter().any(|f| f == "slave")
    }

    /// Flagged `fail` (agreed dead), not merely `fail?` (suspected by this node).
    pub fn is_failed(&self) -> bool {
        self.flags.iter().any(|f| f == "fail")
    }

    pub fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|range| range.contains(&slot))
    }
}

/// Parses `CLUSTER NODES` output. Migration markers (`[slot->-id]`) are skipped.
pub fn parse_cluster_nodes(text: &str) -> Vec<NodeLine> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                return None;
            }
            // ip:port@cport[,hostname]
            let address = fields[1].split('@').next()?;
            let port = address.rsplit(':').next()?.parse().ok()?;
            let slots = fields[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some(a.parse().ok()?..=b.parse().ok()?),
                    None => {
                        let slot = s.parse().ok()?;
                        Some(slot..=slot)
                    }
                })
                .collect();
            Some(NodeLine {
                id: fields[0].to_owned(),
                port,
                flags: fields[2].split(',').map(str::to_owned).collect(),
                master_id: fields[3].to_owned(),
                slots,
            })
        })
        .collect()
}

/// A Redis Cluster of `masters` masters with `replicas_per_master` replicas each, every node a child of
/// this process. All nodes are SIGKILLed on drop, also when the test panics.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisProcess>,
    /// Slots each killed master served when it was killed, for `wait_for_failover_of`.
    killed_slots: HashMap<u16, Vec<RangeInclusive<u16>>>,
    tls: Option<NodeTls>,
    // Declared last: the directories go only after the processes writing into them.
    dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts the nodes, creates the cluster, and returns once every node reports `cluster_state:ok`,
    /// knows every other node, and every replica has finished its first sync (a replica that has not
    /// will never take over). Panics with the logs when that does not happen within 20 s.
    pub fn start(masters: usize, replicas_per_master: usize) -> RedisCluster {
        Self::start_with(masters, replicas_per_master, None)
    }

    /// As `start`, with TLS on every node and link (certificates from `ca`).
    pub fn start_tls(masters: usize, replicas_per_master: usize, ca: &Ca) -> RedisCluster {
        Self::start_with(masters, replicas_per_master, Some(ca))
    }

    fn start_with(masters: usize, replicas_per_master: usize, ca: Option<&Ca>) -> RedisCluster {
        assert!(masters >= 3, "redis-cli --cluster create needs at least 3 masters");
        let count = masters * (1 + replicas_per_master);
        let mut attempt = 0;
        let mut cluster = loop {
            attempt += 1;
            let dir = temp_dir();
            let tls = ca.map(|ca| NodeTls::new(ca, dir.path()));
            let mut cluster = RedisCluster { nodes: Vec::new(), killed_slots: HashMap::new(), tls, dir };
            for _ in 0..count {
                let port = pick_port(true);
                let node_dir = cluster.dir.path().join(port.to_string());
                std::fs::create_dir_all(&node_dir).expect("node dir");
                let mut args = RedisProcess::server_args(port, &node_dir);
                for arg in ["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"] {
                    args.push(arg.into());
                }
                args.push("--cluster-config-file".into());
                args.push(node_dir.join("nodes.conf").into());
                if let Some(tls) = cluster.tls.as_mut() {
                    args.extend(tls.args(port, || pick_port(false)));
                    // The bus would follow the TLS port; keep it on the one reserved with `port`.
                    let bus = (port + BUS_OFFSET).to_string();
                    args.extend(["--tls-cluster", "yes", "--cluster-port", &bus].map(OsString::from));
                }
                let log = node_dir.join("redis.log");
                cluster.nodes.push(RedisProcess::spawn("redis-server", args, port, log));
            }
            let mut port_taken = false;
            for node in &mut cluster.nodes {
                match node.wait_ready(START_PATIENCE) {
                    Ok(()) => {}
                    Err(StartFailure::PortTaken) if attempt < 3 => port_taken = true,
                    Err(StartFailure::PortTaken) => panic!("cluster node ports kept being taken"),
                    Err(StartFailure::Other(why)) => panic!("cluster node did not start: {why}"),
                }
            }
            if !port_taken {
                break cluster;
            }
        };
        cluster.create(replicas_per_master);
        cluster
    }

    fn create(&mut self, replicas_per_master: usize) {
        let output = Command::new("redis-cli")
            .args(self.tls.as_ref().map(NodeTls::cli_args).unwrap_or_default())
            .arg("--cluster")
            .arg("create")
            .args(self.nodes.iter().map(|n| format!("127.0.0.1:{}", client_port(self.tls(), n.port))))
            .args(["--cluster-replicas", &replicas_per_master.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli must be installed (apt-get install redis-tools)");
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() || !stdout.contains("[OK] All 16384 slots covered") {
            panic!(
                "redis-cli --cluster create failed ({}):\n{stdout}\n{}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr),
                self.logs()
            );
        }
        let count = self.nodes.len().to_string();
        self.poll(START_PATIENCE, "every node to report cluster_state:ok and know every node", |c| {
            c.nodes.iter().all(|n| {
                query::<String>(n.port, redis::cmd("CLUSTER").arg("INFO")).is_ok_and(|info| {
                    info_field(&info, "cluster_state") == Some("ok")
                        && info_field(&info, "cluster_known_nodes") == Some(count.as_str())
                })
            })
        });
        // Roles spread by gossip: right after `create`, a node may still list a replica as a master.
        let masters = self.nodes.len() / (1 + replicas_per_master);
        self.poll(START_PATIENCE, "every node to see every replica as a replica", |c| {
            c.nodes.iter().all(|n| {
                query::<String>(n.port, redis::cmd("CLUSTER").arg("NODES")).is_ok_and(|text| {
                    let view = parse_cluster_nodes(&text);
                    let serving = view.iter().filter(|v| v.is_master() && !v.slots.is_empty()).count();
                    let replicas = view.iter().filter(|v| v.is_replica()).count();
                    serving == masters && replicas == view.len() - masters
                })
            })
        });
        self.poll(START_PATIENCE, "every replica's master_link_status:up", |c| {
            c.nodes.iter().all(|n| {
                query::<String>(n.port, redis::cmd("INFO").arg("replication")).is_ok_and(|info| {
                    info_field(&info, "role") == Some("master")
                        || info_field(&info, "master_link_status") == Some("up")
                })
            })
        });
    }

    /// Every node's port, killed ones included, in start order.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// `redis://127.0.0.1:PORT` for every node, killed ones included (`rediss://` and the TLS port
    /// with TLS).
    pub fn urls(&self) -> Vec<String> {
        self.ports().into_iter().map(|p| client_url(self.tls(), p)).collect()
    }

    /// URLs of the nodes still running: the seeds to give a cluster client, also after `kill_node`.
    pub fn seed_urls(&self) -> Vec<String> {
        self.live_ports().into_iter().map(|p| client_url(self.tls(), p)).collect()
    }

    /// With TLS: the files a client needs.
    pub fn tls(&self) -> Option<&NodeTls> {
        self.tls.as_ref()
    }

    fn live_ports(&self) -> Vec<u16> {
        self.nodes.iter().filter(|n| n.is_running()).map(|n| n.port).collect()
    }

    /// The cluster as the first node that answers sees it.
    pub fn topology(&self) -> Vec<NodeLine> {
        for port in self.live_ports() {
            if let Ok(text) = query::<String>(port, redis::cmd("CLUSTER").arg("NODES")) {
                return parse_cluster_nodes(&text);
            }
        }
        panic!("no cluster node answers CLUSTER NODES\n{}", self.logs());
    }

    /// Ports of the masters that serve slots and are not marked failed, in the view of one live node.
    pub fn master_ports(&self) -> Vec<u16> {
        self.topology()
            .iter()
            .filter(|n| n.is_master() && !n.is_failed() && !n.slots.is_empty())
            .map(|n| n.port)
            .collect()
    }

    /// Ports of the replicas of the master on `port`.
    pub fn replicas_of(&self, port: u16) -> Vec<u16> {
        let nodes = self.topology();
        let master = nodes.iter().find(|n| n.port == port).unwrap_or_else(|| panic!("no node {port}"));
        nodes.iter().filter(|n| n.master_id == master.id).map(|n| n.port).collect()
    }

    /// The port of the live master serving `slot`.
    pub fn master_for_slot(&self, slot: u16) -> u16 {
        self.topology()
            .iter()
            .find(|n| n.is_master() && !n.is_failed() && n.serves(slot))
            .unwrap_or_else(|| panic!("no live master serves slot {slot}"))
            .port
    }

    /// The port of the master that owns `key`.
    pub fn master_of_key(&self, key: &str) -> u16 {
        self.master_for_slot(key_slot(key.as_bytes()))
    }

    /// Runs a command on one node (no redirection: a key of another node gets MOVED). Panics on error.
    pub fn cmd_on<T: redis::FromRedisValue>(&self, port: u16, cmd: &redis::Cmd) -> T {
        self.try_cmd_on(port, cmd).unwrap_or_else(|e| panic!("command on node {port} failed: {e}"))
    }

    /// Runs a command on one node and returns its result, errors (MOVED, I/O) included.
    pub fn try_cmd_on<T: redis::FromRedisValue>(&self, port: u16, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        query(port, cmd)
    }

    /// SIGKILLs the node on `port` (and reaps it). Remembers which slots it served, if a master.
    pub fn kill_node(&mut self, port: u16) {
        let slots = query::<String>(port, redis::cmd("CLUSTER").arg("NODES"))
            .map(|text| parse_cluster_nodes(&text))
            .ok()
            .and_then(|nodes| nodes.into_iter().find(|n| n.flags.iter().any(|f| f == "myself")))
            .map(|me| me.slots)
            .unwrap_or_default();
        let node = self.node_mut(port);
        node.kill();
        self.killed_slots.insert(port, slots);
    }

    /// Waits until every slot the killed master on `port` served is served by one live master in the view
    /// of every surviving node, and every survivor reports `cluster_state:ok`; returns that master's port.
    /// Panics with the logs after `patience`.
    pub fn wait_for_failover_of(&self, port: u16, patience: Duration) -> u16 {
        let slots = match self.killed_slots.get(&port) {
            Some(slots) if !slots.is_empty() => slots.clone(),
            Some(_) => panic!("node {port} served no slots when it was killed"),
            None => panic!("node {port} was not killed with kill_node"),
        };
        let mut promoted = None;
        self.poll(patience, &format!("a failover of node {port}"), |c| {
            promoted = c.failover_done(port, &slots);
            promoted.is_some()
        });
        promoted.expect("poll returned, so the failover is done")
    }

    fn failover_done(&self, dead: u16, slots: &[RangeInclusive<u16>]) -> Option<u16> {
        let mut agreed = None;
        for port in self.live_ports() {
            let info = query::<String>(port, redis::cmd("CLUSTER").arg("INFO")).ok()?;
            if info_field(&info, "cluster_state") != Some("ok") {
                return None;
            }
            let nodes = parse_cluster_nodes(&query::<String>(port, redis::cmd("CLUSTER").arg("NODES")).ok()?);
            for range in slots {
                for slot in [*range.start(), *range.end()] {
                    let owner = nodes.iter().find(|n| n.is_master() && !n.is_failed() && n.serves(slot))?;
                    if owner.port == dead || agreed.is_some_and(|p| p != owner.port) {
                        return None;
                    }
                    agreed = Some(owner.port);
                }
            }
        }
        agreed
    }

    /// The last lines of the log of the node on `port`.
    pub fn log(&self, port: u16) -> String {
        self.nodes.iter().find(|n| n.port == port).map(|n| n.log_tail(40)).unwrap_or_default()
    }

    /// The tail of every node's log, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes.iter().map(|n| format!("--- node {} ---\n{}\n", n.port, n.log_tail(15))).collect()
    }

    fn node_mut(&mut self, port: u16) -> &mut RedisProcess {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no cluster node on port {port}"))
    }

    fn poll(&self, patience: Duration, what: &str, mut done: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + patience;
        while !done(self) {
            if Instant::now() > deadline {
                panic!("gave up waiting {patience:?} for {what}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
    }
}

pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("sluice-redis-").tempdir().expect("temp dir")
}
