//! The Redis store: one EVALSHA of the decision script per request, covering every tier-key.
//!
//! Redis's own clock (`TIME` inside the script) decides, so replicas with skewed clocks agree.
//! Keys: `<check key>:sw` for a sliding window (a hash), `<check key>:log` and `<check key>:seq` for
//! a sliding log; the check key ends in the hash tag, so a tier-key's keys share a Cluster slot.

use std::time::Duration;

use futures::future::BoxFuture;
use redis::aio::ConnectionManager;

use super::script::DECIDE;
use super::{Check, Mode, Outcome, Source, Store, StoreError};
use crate::algorithm::{Algorithm, Verdict};

/// How requests reach Redis.
#[derive(Clone)]
pub enum RedisConnection {
    /// One multiplexed connection shared by every request (pipelined by redis-rs); reconnects on
    /// its own after a failure.
    Multiplexed(ConnectionManager),
    /// A pool of multiplexed connections (deadpool-redis).
    Pool(deadpool_redis::Pool),
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisConnection::Multiplexed(_) => f.write_str("Multiplexed"),
            RedisConnection::Pool(p) => write!(f, "Pool(max {})", p.status().max_size),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RedisStore {
    conn: RedisConnection,
}

impl RedisStore {
    /// Connects to a standalone Redis. `url` may carry credentials; it is never logged.
    pub async fn connect(
        url: &str,
        connection: ConnectionKind,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let conn = match connection {
            ConnectionKind::Multiplexed => {
                let client = redis::Client::open(url)?;
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout.max(Duration::from_millis(100))))
                    .set_response_timeout(None)
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                RedisConnection::Multiplexed(client.get_connection_manager_with_config(config).await?)
            }
            ConnectionKind::Pool { size } => {
                let mut cfg = deadpool_redis::Config::from_url(url);
                cfg.pool = Some(deadpool_redis::PoolConfig::new(size));
                let pool = cfg
                    .create_pool(Some(deadpool_redis::Runtime::Tokio1))
                    .map_err(|e| StoreError::Pool(e.to_string()))?;
                RedisConnection::Pool(pool)
            }
        };
        Ok(RedisStore { conn })
    }

    /// Decides with `now` in ms instead of Redis `TIME`: for the differential test only.
    pub async fn decide_at(&self, checks: &[Check], mode: Mode, now: u64) -> Result<Outcome, StoreError> {
        self.run(checks, mode, now).await
    }

    /// PING, for readiness and probes.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let cmd = redis::cmd("PING");
        match &self.conn {
            RedisConnection::Multiplexed(c) => cmd.query_async::<()>(&mut c.clone()).await?,
            RedisConnection::Pool(p) => {
                let mut c = p.get().await.map_err(|e| StoreError::Pool(e.to_string()))?;
                cmd.query_async::<()>(&mut *c).await?
            }
        }
        Ok(())
    }

    async fn run(&self, checks: &[Check], mode: Mode, now: u64) -> Result<Outcome, StoreError> {
        let mut invocation = DECIDE.prepare_invoke();
        invocation.arg(now).arg(u8::from(mode == Mode::Consume)).arg(checks.len());
        for check in checks {
            match check.algorithm {
                Algorithm::SlidingWindow => {
                    invocation.key(format!("{}:sw", check.key));
                }
                Algorithm::SlidingLog => {
                    invocation.key(format!("{}:log", check.key)).key(format!("{}:seq", check.key));
                }
            }
            let q = check.quota;
            invocation
                .arg(check.algorithm.code())
                .arg(q.limit)
                .arg(q.window_ms)
                .arg(q.cost)
                .arg(u8::from(check.shadow));
        }
        let reply: Vec<i64> = match &self.conn {
            RedisConnection::Multiplexed(c) => invocation.invoke_async(&mut c.clone()).await?,
            RedisConnection::Pool(p) => {
                let mut c = p.get().await.map_err(|e| StoreError::Pool(e.to_string()))?;
                invocation.invoke_async(&mut *c).await?
            }
        };
        parse_reply(&reply, checks.len())
    }
}

/// Whether to share one multiplexed connection or use a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionKind {
    Multiplexed,
    Pool { size: usize },
}

fn parse_reply(reply: &[i64], n: usize) -> Result<Outcome, StoreError> {
    if reply.len() != 2 + 4 * n {
        return Err(StoreError::BadReply(format!("{} values for {n} checks", reply.len())));
    }
    let non_negative =
        |v: i64| u64::try_from(v).map_err(|_| StoreError::BadReply(format!("negative value {v}")));
    let verdicts = reply[2..]
        .chunks_exact(4)
        .map(|v| {
            Ok(Verdict {
                allowed: v[0] == 1,
                remaining: non_negative(v[1])?,
                retry_after_ms: non_negative(v[2])?,
                reset_after_ms: non_negative(v[3])?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(Outcome { admitted: reply[0] == 1, verdicts, source: Source::Redis })
}

impl Store for RedisStore {
    fn decide<'a>(&'a self, checks: &'a [Check], mode: Mode) -> BoxFuture<'a, Result<Outcome, StoreError>> {
        Box::pin(self.run(checks, mode, 0))
    }
}
