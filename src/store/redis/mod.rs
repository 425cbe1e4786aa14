//! The Redis store: each request is decided by the decision function (lua/decide.lua in the
//! library, see script.rs) over every tier-key at once, so a decision is one atomic step. The
//! requests that arrive while a call is in flight share the next call (`batch`), each decided as
//! if sent alone.
//!
//! Redis's own clock (`TIME` inside the script) decides, so replicas with skewed clocks agree.
//! `connection` reaches Redis, `batch` gathers requests into calls, `protocol` is the one place
//! that lays out the keys, arguments and reply of the library's functions (keys are
//! `<tier-key>:<suffix>`, and the tier-key holds the hash tag, so a tier-key's keys share a Cluster
//! slot), `slot` computes Cluster slots; this file decides, reports failures and carries out
//! operators' actions with them.
//!
//! Topologies: a standalone server, Redis Cluster (the cluster client follows MOVED and
//! failovers), or Sentinel (the master is asked of the sentinels again whenever `recover` runs,
//! which is how a promoted replica is found). In a Cluster, the checks of one request are grouped by
//! hash slot and each group joins a call for its slot, all sent at once: each group is atomic on its
//! own, but a denial in one slot does not undo what another slot's group consumed. Reputation keys live
//! in a slot of their own, so for adaptive tiers they are read first, in one more round trip.

mod batch;
mod connection;
mod protocol;
mod slot;

pub use connection::{Access, Credentials, TlsFiles, TlsPaths, Topology};
pub use slot::key_slot;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use redis::cluster_async::ClusterConnection;

use self::batch::Batcher;
use self::connection::Connection;
use self::protocol::{Encoded, suffix};
use super::script::LIBRARY;
use super::{EVENTS_STREAM, Store, StoreError};
use crate::algorithm::Verdict;
use crate::check::{AdminOp, Answer, Check, Failure, Mode, SecurityEvent, Source};
use crate::metrics;

/// Decisions, reports and operators' actions on Redis. Clones share the connection.
#[derive(Clone)]
pub struct RedisStore {
    conn: Connection,
    /// Sends the decisions asked for at Redis's time, many per call.
    batch: Batcher,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("connection", &self.conn.kind()).finish()
    }
}

impl RedisStore {
    /// Connects; `timeout` bounds connecting, not the calls (callers put their own deadline on
    /// those).
    pub async fn connect(
        topology: &Topology,
        access: &Access,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let conn = Connection::open(topology, access, timeout).await?;
        let store = RedisStore { batch: Batcher::start(conn.clone()), conn };
        store.ping().await?;
        Ok(store)
    }

    /// Decides with `now` in ms instead of Redis `TIME`: for the differential test only.
    pub async fn decide_at(&self, checks: &[Check], mode: Mode, now: u64) -> Result<Answer, StoreError> {
        self.run(checks, mode, now, None).await
    }

    /// PING, for the probe that closes the circuit.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.query::<()>(&redis::cmd("PING")).await
    }

    /// After failures: asks the sentinels for the current master and connects to it. The other
    /// topologies reconnect by themselves.
    pub async fn recover(&self) -> Result<(), StoreError> {
        self.conn.recover().await
    }

    /// Decides at `now` (0: Redis `TIME`, in a call shared with other requests; see `batch`): one
    /// request of a script call, or one per slot in a Cluster.
    async fn run(
        &self,
        checks: &[Check],
        mode: Mode,
        now: u64,
        deadline: Option<Instant>,
    ) -> Result<Answer, StoreError> {
        if checks.is_empty() {
            return Ok(Answer { admitted: true, verdicts: Vec::new(), source: Source::Redis });
        }
        // A key twice in one script call would be read twice before either write: merge repeats
        // that the script does not write one by one.
        let merged = super::Merged::of(checks, mode);
        let checks = merged.as_ref().map_or(checks, |m| &m.checks);
        let started = Instant::now();
        let result = match &self.conn {
            Connection::Cluster(c) => self.run_by_slot(c, checks, mode, now, deadline).await,
            _ => self.decide_one(checks, mode, now, None, deadline).await,
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
        deadline: Option<Instant>,
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
        let groups = slot::by_slot(0..checks.len(), |&i| checks[i].key.as_str());
        let slot = |subset: &[Check]| Some(slot::key_slot(subset[0].key.as_bytes()));
        if groups.len() == 1 {
            return self.decide_one(checks, mode, now, slot(checks), deadline).await;
        }
        let subsets: Vec<Vec<Check>> =
            groups.iter().map(|members| members.iter().map(|&i| checks[i].clone()).collect()).collect();
        let calls = subsets.iter().map(|subset| self.decide_one(subset, mode, now, slot(subset), deadline));
        let outcomes = futures::future::try_join_all(calls).await?;
        let mut verdicts = vec![Verdict::default(); checks.len()];
        let mut admitted = true;
        for (members, outcome) in groups.iter().zip(outcomes) {
            admitted &= outcome.admitted;
            for (&i, verdict) in members.iter().zip(outcome.verdicts) {
                verdicts[i] = verdict;
            }
        }
        Ok(Answer { admitted, verdicts, source: Source::Redis })
    }

    /// One request of a script call: in the next batch at Redis's time (with the requests of its
    /// `slot`, in a Cluster), or alone at an instant chosen by the caller.
    async fn decide_one(
        &self,
        checks: &[Check],
        mode: Mode,
        now: u64,
        slot: Option<u16>,
        deadline: Option<Instant>,
    ) -> Result<Answer, StoreError> {
        if now == 0 {
            self.batch.decide(Encoded::new(checks, mode), slot, deadline).await
        } else {
            decide_alone(&self.conn, checks, mode, now).await
        }
    }

    /// Runs a command on the node that holds its first key (any node for none).
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        Ok(self.conn.query(cmd).await?)
    }

    /// Counts one failure on each tier-key, one script call per Cluster slot.
    pub async fn report_failures_at(&self, failures: &[Failure], now: u64) -> Result<(), StoreError> {
        let groups =
            slot::by_slot(failures.iter().filter(|f| f.adaptive || f.penalty.is_some()), |f| f.key.as_str());
        let calls = groups.iter().map(|members| {
            let cmd = protocol::report_cmd(members, now);
            async move { self.conn.fcall::<i64>(&cmd).await }
        });
        futures::future::try_join_all(calls).await?;
        Ok(())
    }

    /// Carries out an operator's action (see `Store::admin`).
    pub async fn admin_op(&self, op: AdminOp<'_>) -> Result<Vec<(String, String)>, StoreError> {
        let touched = |keys: &[String]| keys.iter().map(|k| ("key".to_owned(), k.clone())).collect();
        match op {
            AdminOp::SetReputation { key, ttl_ms } => {
                self.query::<()>(redis::cmd("SET").arg(key).arg("bad").arg("PX").arg(ttl_ms)).await?;
                Ok(touched(&[key.to_owned()]))
            }
            AdminOp::ClearReputation { key } => {
                self.query::<i64>(redis::cmd("DEL").arg(key)).await?;
                Ok(touched(&[key.to_owned()]))
            }
            AdminOp::Unblock { key } => {
                let pen = format!("{key}:{}", suffix::PENALTY);
                // penalty_unblock in lua/penalty.lua: the block lifted, the count of blocks kept
                self.conn.fcall::<i64>(redis::cmd("FCALL").arg(&LIBRARY.unblock).arg(1).arg(&pen)).await?;
                Ok(touched(&[pen]))
            }
            AdminOp::Reset { key } => {
                let keys: Vec<String> = suffix::ALL.iter().map(|s| format!("{key}:{s}")).collect();
                self.query::<i64>(redis::cmd("DEL").arg(&keys)).await?;
                Ok(touched(&keys))
            }
            AdminOp::Inspect { key } => {
                let mut fields = Vec::new();
                for suffix in
                    [suffix::WINDOW, suffix::FIXED, suffix::ATTEMPTS, suffix::FAILURES, suffix::PENALTY]
                {
                    let hash: Vec<(String, String)> =
                        self.query(redis::cmd("HGETALL").arg(format!("{key}:{suffix}"))).await?;
                    fields.extend(hash.into_iter().map(|(f, v)| (format!("{suffix}.{f}"), v)));
                }
                let count: i64 =
                    self.query(redis::cmd("ZCARD").arg(format!("{key}:{}", suffix::LOG))).await?;
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
        self.query::<String>(&cmd).await.map(drop)
    }
}

/// One FCALL of the decision function for one request alone, at an instant chosen by the caller.
async fn decide_alone(
    conn: &Connection,
    checks: &[Check],
    mode: Mode,
    now: u64,
) -> Result<Answer, StoreError> {
    let request = Encoded::new(checks, mode);
    let reply: Vec<u8> = conn.fcall(&protocol::decide_cmd(std::iter::once(&request), now)).await?;
    let mut answers = protocol::decode_replies(&reply, std::iter::once(request.checks))?;
    answers.pop().ok_or_else(|| StoreError::BadReply("no answer".into()))
}

impl Store for RedisStore {
    /// A call that misses the earliest deadline of the requests in it fails them all with a
    /// timeout (`FallbackStore` bounds its calls too, and answers without Redis when one is late).
    fn decide<'a>(
        &'a self,
        checks: &'a [Check],
        mode: Mode,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<Answer, StoreError>> {
        Box::pin(self.run(checks, mode, 0, deadline))
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
