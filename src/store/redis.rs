//! The Redis store: one EVALSHA of the decision script per request, covering every tier-key.
//!
//! Redis's own clock (`TIME` inside the script) decides, so replicas with skewed clocks agree.
//! Keys: `<check key>:sw` for a sliding window (a hash), `<check key>:log` and `<check key>:seq` for
//! a sliding log; the check key ends in the hash tag, so a tier-key's keys share a Cluster slot.
//!
//! Topologies: a standalone server, Redis Cluster (the cluster client follows MOVED and
//! failovers), or Sentinel (the master is asked of the sentinels again whenever `recover` runs,
//! which is how a promoted replica is found). In a Cluster, the checks of one request are grouped by
//! hash slot and each group is one script call, all sent at once: each group is atomic on its own,
//! but a denial in one slot does not undo what another slot's group consumed. Reputation keys live
//! in a slot of their own, so for adaptive tiers they are read first, in one more round trip.
//!
//! Every call goes over one multiplexed connection per node, which pipelines concurrent calls.
//! Gathering them into explicit pipelines was measured and bought nothing: Redis spends its time
//! running the script, not reading sockets (see README, Performance).

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

/// Every suffix a tier-key's data may live under.
const SUFFIXES: [&str; 7] = ["sw", "log", "seq", "att", "fail", "pen", "base"];

use arc_swap::ArcSwap;
use futures::future::BoxFuture;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelServerType};

use super::script::{DECIDE, REPORT};
use super::{EVENTS_STREAM, Store, StoreError};
use crate::algorithm::penalty::Penalty;
use crate::algorithm::{Algorithm, Verdict};
use crate::check::{AdminOp, Answer, Check, Failure, Mode, SecurityEvent, Source};
use crate::metrics;

/// ACL credentials, applied to every connection; never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: Option<String>,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).finish_non_exhaustive()
    }
}

impl Credentials {
    fn apply(&self, info: redis::RedisConnectionInfo) -> redis::RedisConnectionInfo {
        let info = info.set_password(&self.password);
        match &self.username {
            Some(user) => info.set_username(user),
            None => info,
        }
    }
}

/// Certificates for TLS to Redis (`rediss://` URLs), as PEM bytes. Without a CA the system's roots
/// are trusted; a certificate and key are presented to servers that verify clients.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca_pem: Option<Vec<u8>>,
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles")
            .field("ca", &self.ca_pem.is_some())
            .field("client_certificate", &self.client.is_some())
            .finish()
    }
}

impl TlsFiles {
    fn certificates(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: self.client.as_ref().map(|(cert, key)| redis::ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.clone(),
            }),
            root_cert: self.ca_pem.clone(),
        }
    }
}

/// What it takes to be let in: ACL credentials and TLS certificates, both optional.
#[derive(Clone, Debug, Default)]
pub struct Access {
    pub credentials: Option<Credentials>,
    pub tls: Option<TlsFiles>,
}

/// Where Redis is and how to reach it. URLs may hold credentials; they are never logged.
#[derive(Clone, PartialEq, Eq)]
pub enum Topology {
    Standalone { url: String },
    Cluster { nodes: Vec<String> },
    Sentinel { nodes: Vec<String>, master_name: String },
}

impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Topology::Standalone { .. } => f.write_str("standalone"),
            Topology::Cluster { nodes } => write!(f, "cluster ({} seed nodes)", nodes.len()),
            Topology::Sentinel { nodes, master_name } => {
                write!(f, "sentinel (master {master_name:?}, {} sentinels)", nodes.len())
            }
        }
    }
}

#[derive(Clone)]
enum Connection {
    Manager(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(Arc<SentinelConnection>),
}

struct SentinelConnection {
    client: tokio::sync::Mutex<SentinelClient>,
    current: ArcSwap<MultiplexedConnection>,
}

#[derive(Clone)]
pub struct RedisStore {
    conn: Connection,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.conn {
            Connection::Manager(..) => "standalone",
            Connection::Cluster(_) => "cluster",
            Connection::Sentinel(..) => "sentinel",
        };
        f.debug_struct("RedisStore").field("connection", &kind).finish()
    }
}

/// A client for the master the sentinels name. The sentinels take their credentials from their
/// URLs (the first that has any); `access` is the master's. TLS to the sentinels (`rediss://`)
/// means TLS to the master too.
fn sentinel_client(
    nodes: &[String],
    master_name: &str,
    access: &Access,
) -> Result<SentinelClient, StoreError> {
    let infos = nodes
        .iter()
        .map(|url| redis::IntoConnectionInfo::into_connection_info(url.as_str()))
        .collect::<Result<Vec<_>, _>>()?;
    let secure = infos.iter().any(|i| matches!(i.addr(), redis::ConnectionAddr::TcpTls { .. }));
    let mut builder = redis::sentinel::SentinelClientBuilder::new(
        infos.iter().map(|i| i.addr().clone()),
        master_name,
        SentinelServerType::Master,
    )?;
    if let Some(own) = infos.iter().map(|i| i.redis_settings()).find(|s| s.password().is_some()) {
        if let Some(user) = own.username() {
            builder = builder.set_client_to_sentinel_username(user);
        }
        if let Some(password) = own.password() {
            builder = builder.set_client_to_sentinel_password(password);
        }
    }
    if let Some(c) = &access.credentials {
        builder = builder.set_client_to_redis_password(&c.password);
        if let Some(user) = &c.username {
            builder = builder.set_client_to_redis_username(user);
        }
    }
    if secure {
        builder = builder
            .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure)
            .set_client_to_redis_tls_mode(redis::TlsMode::Secure);
        if let Some(tls) = &access.tls {
            builder = builder
                .set_client_to_sentinel_certificates(tls.certificates())
                .set_client_to_redis_certificates(tls.certificates());
        }
    }
    Ok(builder.build()?)
}

impl RedisStore {
    /// Connects; `timeout` bounds connecting, not the calls (callers put their own deadline on
    /// those).
    pub async fn connect(
        topology: &Topology,
        access: &Access,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let credentials = access.credentials.as_ref();
        let connect_timeout = timeout.max(Duration::from_millis(200));
        let conn = match topology {
            Topology::Standalone { url } => {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(None)
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                let mut info = redis::IntoConnectionInfo::into_connection_info(url.as_str())?;
                if let Some(c) = credentials {
                    let settings = c.apply(info.redis_settings().clone());
                    info = info.set_redis_settings(settings);
                }
                let client = match &access.tls {
                    Some(tls) => redis::Client::build_with_tls(info, tls.certificates())?,
                    None => redis::Client::open(info)?,
                };
                Connection::Manager(client.get_connection_manager_with_config(config).await?)
            }
            Topology::Cluster { nodes } => {
                let mut builder = redis::cluster::ClusterClientBuilder::new(nodes.iter().map(String::as_str))
                    .connection_timeout(connect_timeout)
                    .response_timeout(connect_timeout * 5)
                    .retries(2);
                if let Some(c) = credentials {
                    builder = builder.password(&c.password);
                    if let Some(user) = &c.username {
                        builder = builder.username(user);
                    }
                }
                if let Some(tls) = &access.tls {
                    builder = builder.certs(tls.certificates());
                }
                let client = builder.build()?;
                Connection::Cluster(client.get_async_connection().await?)
            }
            Topology::Sentinel { nodes, master_name } => {
                let mut client = sentinel_client(nodes, master_name, access)?;
                let current = client.get_async_connection().await?;
                let sentinel = Arc::new(SentinelConnection {
                    client: tokio::sync::Mutex::new(client),
                    current: ArcSwap::from_pointee(current),
                });
                Connection::Sentinel(sentinel)
            }
        };
        let store = RedisStore { conn };
        store.ping().await?;
        Ok(store)
    }

    /// Decides with `now` in ms instead of Redis `TIME`: for the differential test only.
    pub async fn decide_at(&self, checks: &[Check], mode: Mode, now: u64) -> Result<Answer, StoreError> {
        self.run(checks, mode, now).await
    }

    /// PING, for the probe that closes the circuit.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let cmd = redis::cmd("PING");
        match &self.conn {
            Connection::Manager(c) => cmd.query_async::<()>(&mut c.clone()).await?,
            Connection::Cluster(c) => cmd.query_async::<()>(&mut c.clone()).await?,
            Connection::Sentinel(s) => cmd.query_async::<()>(&mut (**s.current.load()).clone()).await?,
        }
        Ok(())
    }

    /// After failures: asks the sentinels for the current master and connects to it. The other
    /// topologies reconnect by themselves.
    pub async fn recover(&self) -> Result<(), StoreError> {
        if let Connection::Sentinel(s) = &self.conn {
            let fresh = s.client.lock().await.get_async_connection().await?;
            s.current.store(Arc::new(fresh));
        }
        Ok(())
    }

    async fn run(&self, checks: &[Check], mode: Mode, now: u64) -> Result<Answer, StoreError> {
        // A key twice in one script call would be read twice before either write: merge repeats.
        let merged = super::Merged::of(checks);
        let checks = merged.as_ref().map_or(checks, |m| &m.checks);
        let started = Instant::now();
        let result = match &self.conn {
            Connection::Cluster(c) => self.run_by_slot(c, checks, mode, now).await,
            Connection::Manager(c) => self.invoke_on(&mut c.clone(), checks, mode, now).await,
            Connection::Sentinel(s) => {
                self.invoke_on(&mut (**s.current.load()).clone(), checks, mode, now).await
            }
        };
        metrics::redis_duration(started.elapsed());
        match merged {
            Some(m) => result.map(|outcome| m.expand(outcome)),
            None => result,
        }
    }

    /// One script call per hash slot, all in flight at once; verdicts back in the checks' order.
    async fn run_by_slot(
        &self,
        conn: &ClusterConnection,
        checks: &[Check],
        mode: Mode,
        now: u64,
    ) -> Result<Answer, StoreError> {
        // Reputation keys live in their own slot (`{rep}`): read them first, then hand the factor
        // to the script as a client-side one. One more round trip, for adaptive requests only.
        let reputation = checks.iter().find_map(|c| c.adaptive.as_ref()).map(|a| Arc::clone(&a.reputation));
        let owned: Vec<Check>;
        let checks = match reputation.filter(|keys| !keys.is_empty()) {
            None => checks,
            Some(keys) => {
                let marked: i64 = redis::cmd("EXISTS").arg(&*keys).query_async(&mut conn.clone()).await?;
                owned = checks
                    .iter()
                    .map(|c| {
                        let mut c = c.clone();
                        if let Some(a) = &mut c.adaptive {
                            a.reputation = Arc::from(Vec::new());
                            if marked > 0 {
                                a.client_factors |= crate::algorithm::adaptive::REPUTATION;
                            }
                        }
                        c
                    })
                    .collect();
                &owned
            }
        };
        let mut groups: Vec<(u16, Vec<usize>)> = Vec::new();
        for (i, check) in checks.iter().enumerate() {
            let slot = key_slot(check.key.as_bytes());
            match groups.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, members)) => members.push(i),
                None => groups.push((slot, vec![i])),
            }
        }
        if groups.len() == 1 {
            return self.invoke_on(&mut conn.clone(), checks, mode, now).await;
        }
        let calls = groups.iter().map(|(_, members)| {
            let subset: Vec<Check> = members.iter().map(|&i| checks[i].clone()).collect();
            let mut conn = conn.clone();
            async move { self.invoke_on(&mut conn, &subset, mode, now).await }
        });
        let outcomes = futures::future::try_join_all(calls).await?;
        let mut verdicts = vec![Verdict::default(); checks.len()];
        let mut admitted = true;
        for ((_, members), outcome) in groups.iter().zip(outcomes) {
            admitted &= outcome.admitted;
            for (&i, verdict) in members.iter().zip(outcome.verdicts) {
                verdicts[i] = verdict;
            }
        }
        Ok(Answer { admitted, verdicts, source: Source::Redis })
    }

    async fn invoke_on(
        &self,
        conn: &mut impl redis::aio::ConnectionLike,
        checks: &[Check],
        mode: Mode,
        now: u64,
    ) -> Result<Answer, StoreError> {
        let reply: Vec<i64> = eval(conn, &DECIDE, &decide_cmd(checks, mode, now)).await?;
        parse_reply(&reply, checks.len())
    }

    /// Runs a command on the node that holds its first key (any node for none).
    async fn query<T: redis::FromRedisValue>(
        &self,
        script: Option<&redis::Script>,
        cmd: &redis::Cmd,
    ) -> Result<T, StoreError> {
        async fn on<T: redis::FromRedisValue>(
            conn: &mut impl redis::aio::ConnectionLike,
            script: Option<&redis::Script>,
            cmd: &redis::Cmd,
        ) -> Result<T, StoreError> {
            Ok(match script {
                Some(script) => eval(conn, script, cmd).await?,
                None => cmd.query_async(conn).await?,
            })
        }
        match &self.conn {
            Connection::Manager(c) => on(&mut c.clone(), script, cmd).await,
            Connection::Cluster(c) => on(&mut c.clone(), script, cmd).await,
            Connection::Sentinel(s) => on(&mut (**s.current.load()).clone(), script, cmd).await,
        }
    }

    /// Counts one failure on each tier-key, one script call per Cluster slot.
    pub async fn report_failures_at(&self, failures: &[Failure], now: u64) -> Result<(), StoreError> {
        let mut groups: Vec<(u16, Vec<&Failure>)> = Vec::new();
        for failure in failures.iter().filter(|f| f.adaptive || f.penalty.is_some()) {
            let slot = key_slot(failure.key.as_bytes());
            match groups.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, members)) => members.push(failure),
                None => groups.push((slot, vec![failure])),
            }
        }
        let calls = groups.iter().map(|(_, members)| {
            let keys: usize =
                members.iter().map(|f| usize::from(f.adaptive) + usize::from(f.penalty.is_some())).sum();
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(REPORT.get_hash()).arg(keys);
            for f in members {
                if f.adaptive {
                    cmd.arg(format!("{}:fail", f.key));
                }
                if f.penalty.is_some() {
                    cmd.arg(format!("{}:pen", f.key));
                }
            }
            cmd.arg(now).arg(members.len());
            for f in members {
                cmd.arg(f.window_ms).arg(u8::from(f.adaptive)).arg(u8::from(f.penalty.is_some()));
                if let Some(p) = &f.penalty {
                    penalty_args(&mut cmd, p);
                }
            }
            async move { self.query::<i64>(Some(&REPORT), &cmd).await }
        });
        futures::future::try_join_all(calls).await?;
        Ok(())
    }

    pub async fn admin_op(&self, op: AdminOp<'_>) -> Result<Vec<(String, String)>, StoreError> {
        static UNBLOCK: LazyLock<redis::Script> = LazyLock::new(|| {
            redis::Script::new(
                "if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'u', 0, 'v', 0) return 1 end return 0",
            )
        });
        let touched = |keys: &[String]| keys.iter().map(|k| ("key".to_owned(), k.clone())).collect();
        match op {
            AdminOp::SetReputation { key, ttl_ms } => {
                self.query::<()>(None, redis::cmd("SET").arg(key).arg("bad").arg("PX").arg(ttl_ms)).await?;
                Ok(touched(&[key.to_owned()]))
            }
            AdminOp::ClearReputation { key } => {
                self.query::<i64>(None, redis::cmd("DEL").arg(key)).await?;
                Ok(touched(&[key.to_owned()]))
            }
            AdminOp::Unblock { key } => {
                let pen = format!("{key}:pen");
                let mut cmd = redis::cmd("EVALSHA");
                cmd.arg(UNBLOCK.get_hash()).arg(1).arg(&pen);
                self.query::<i64>(Some(&UNBLOCK), &cmd).await?;
                Ok(touched(&[pen]))
            }
            AdminOp::Reset { key } => {
                let keys: Vec<String> = SUFFIXES.iter().map(|s| format!("{key}:{s}")).collect();
                self.query::<i64>(None, redis::cmd("DEL").arg(&keys)).await?;
                Ok(touched(&keys))
            }
            AdminOp::Inspect { key } => {
                let mut fields = Vec::new();
                for suffix in ["sw", "att", "fail", "pen"] {
                    let hash: Vec<(String, String)> =
                        self.query(None, redis::cmd("HGETALL").arg(format!("{key}:{suffix}"))).await?;
                    fields.extend(hash.into_iter().map(|(f, v)| (format!("{suffix}.{f}"), v)));
                }
                let count: i64 = self.query(None, redis::cmd("ZCARD").arg(format!("{key}:log"))).await?;
                if count > 0 {
                    fields.push(("log.count".into(), count.to_string()));
                }
                fields.sort();
                Ok(fields)
            }
        }
    }

    /// Appends a security event to the bounded stream.
    pub async fn add_event(&self, event: &SecurityEvent, max_len: u64) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(EVENTS_STREAM).arg("MAXLEN").arg(max_len).arg("*");
        for (field, value) in event.fields() {
            cmd.arg(field).arg(value);
        }
        self.query::<String>(None, &cmd).await.map(drop)
    }
}

/// EVALSHA, and on NOSCRIPT (an empty script cache) load the script and run it again.
async fn eval<T: redis::FromRedisValue>(
    conn: &mut impl redis::aio::ConnectionLike,
    script: &redis::Script,
    cmd: &redis::Cmd,
) -> Result<T, redis::RedisError> {
    match cmd.query_async::<T>(conn).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            script.load_async(conn).await?;
            cmd.query_async::<T>(conn).await
        }
        other => other,
    }
}

/// One EVALSHA of the decision script for the checks of one request (see lua/decide.lua).
fn decide_cmd(checks: &[Check], mode: Mode, now: u64) -> redis::Cmd {
    let reputation: &[String] =
        checks.iter().find_map(|c| c.adaptive.as_ref()).map_or(&[], |a| &a.reputation);
    let keys: usize = checks
        .iter()
        .map(|c| {
            let algorithm = if c.algorithm == Algorithm::SlidingLog { 2 } else { 1 };
            algorithm
                + if c.adaptive.is_some() { 2 } else { 0 }
                + usize::from(c.penalty.is_some())
                + usize::from(c.baseline.is_some())
        })
        .sum::<usize>()
        + reputation.len();
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(DECIDE.get_hash()).arg(keys);
    for check in checks {
        match check.algorithm {
            Algorithm::SlidingWindow => {
                cmd.arg(format!("{}:sw", check.key));
            }
            Algorithm::SlidingLog => {
                cmd.arg(format!("{}:log", check.key)).arg(format!("{}:seq", check.key));
            }
        }
        if check.adaptive.is_some() {
            cmd.arg(format!("{}:att", check.key)).arg(format!("{}:fail", check.key));
        }
        if check.penalty.is_some() {
            cmd.arg(format!("{}:pen", check.key));
        }
        if check.baseline.is_some() {
            cmd.arg(format!("{}:base", check.key));
        }
    }
    cmd.arg(reputation);
    cmd.arg(now).arg(u8::from(mode == Mode::Consume)).arg(checks.len()).arg(reputation.len());
    for check in checks {
        let q = check.quota;
        cmd.arg(check.algorithm.code())
            .arg(q.limit)
            .arg(q.window_ms)
            // Beyond MAX_COUNT every cost is over every limit alike; below it doubles are exact.
            .arg(q.cost.min(crate::algorithm::MAX_COUNT))
            .arg(u8::from(check.shadow))
            .arg(check.counts.code())
            .arg(u8::from(check.adaptive.is_some()))
            .arg(u8::from(check.penalty.is_some()))
            .arg(u8::from(check.baseline.is_some()));
        if let Some(a) = &check.adaptive {
            let s = a.settings;
            cmd.arg(s.weights.score(a.client_factors))
                .arg(a.client_factors)
                .arg(s.weights.reputation)
                .arg(s.weights.burst)
                .arg(s.weights.failed_logins)
                .arg(s.burst_multiple)
                .arg(s.failed_logins)
                .arg(s.reduction_percent);
        }
        if let Some(p) = &check.penalty {
            penalty_args(&mut cmd, p);
        }
        if let Some(b) = &check.baseline {
            cmd.arg(b.sensitivity_percent).arg(b.max_percent);
        }
    }
    cmd
}

fn penalty_args(cmd: &mut redis::Cmd, p: &Penalty) {
    cmd.arg(p.violations).arg(p.period_ms).arg(p.base_ms).arg(p.factor).arg(p.max_ms);
}

fn parse_reply(reply: &[i64], n: usize) -> Result<Answer, StoreError> {
    if reply.len() != 2 + 7 * n {
        return Err(StoreError::BadReply(format!("{} values for {n} checks", reply.len())));
    }
    let non_negative =
        |v: i64| u64::try_from(v).map_err(|_| StoreError::BadReply(format!("negative value {v}")));
    let verdicts = reply[2..]
        .chunks_exact(7)
        .map(|v| {
            Ok(Verdict {
                allowed: v[0] == 1,
                remaining: non_negative(v[1])?,
                retry_after_ms: non_negative(v[2])?,
                reset_after_ms: non_negative(v[3])?,
                limit: non_negative(v[4])?,
                score: u8::try_from(v[5]).map_err(|_| StoreError::BadReply(format!("score {}", v[5])))?,
                factors: u8::try_from(v[6]).map_err(|_| StoreError::BadReply(format!("factors {}", v[6])))?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(Answer { admitted: reply[0] == 1, verdicts, source: Source::Redis })
}

/// The Redis Cluster hash slot of a key: CRC16 (XMODEM) of its hash tag (the part between the
/// first `{` and the next `}`, when not empty) or of the whole key, modulo 16384.
pub fn key_slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tagged.unwrap_or(key)) % 16384
}

fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

impl Store for RedisStore {
    fn decide<'a>(&'a self, checks: &'a [Check], mode: Mode) -> BoxFuture<'a, Result<Answer, StoreError>> {
        Box::pin(self.run(checks, mode, 0))
    }

    fn report_failures<'a>(&'a self, failures: &'a [Failure]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.report_failures_at(failures, 0))
    }

    fn admin<'a>(&'a self, op: AdminOp<'a>) -> BoxFuture<'a, Result<Vec<(String, String)>, StoreError>> {
        Box::pin(self.admin_op(op))
    }

    fn security_event<'a>(&'a self, event: &'a SecurityEvent, max_len: u64) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Err(e) = self.add_event(event, max_len).await {
                tracing::warn!(error = %e, "cannot write a security event to redis");
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::key_slot;

    #[test]
    fn slots_follow_the_cluster_spec() {
        // Values from the Redis Cluster specification and CLUSTER KEYSLOT.
        assert_eq!(key_slot(b"123456789"), 12739);
        assert_eq!(key_slot(b"{user:42}:minute"), key_slot(b"{user:42}:hour"));
        assert_eq!(key_slot(b"{user:42}:minute"), 15880);
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"), "an empty tag hashes the whole key");
        assert_ne!(key_slot(b"foo{}{bar}"), key_slot(b"bar"));
    }
}
