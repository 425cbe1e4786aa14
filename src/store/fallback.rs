//! Redis first, the in-process fallback when Redis fails or misses its deadline: a circuit breaker.
//!
//! Closed: each request makes one Redis call bounded by the deadline. A transient failure (refused,
//! reset, timed out, loading, failing over) opens the circuit and that request is answered at
//! once from the fallback. Open: every request is answered from the fallback without touching
//! Redis, while one background probe pings Redis (asking the sentinels anew where they are used)
//! every `probe_interval`; the first answer closes the circuit. So a gateway never sees an error
//! because Redis is down and never waits longer than the deadline.
//!
//! What the fallback answers is each tier's failure mode: `local` counts the tier in fair-share
//! token buckets (`LocalStore` with `Counting::FairShare`), `allow` lets it pass uncounted, `deny`
//! denies it. Any Redis error opens the circuit, transient or not (an out-of-memory or
//! re-passworded Redis is no reason to fail a gateway); the ones that will not heal by themselves
//! are logged as errors.
//!
//! When the Redis TLS files rotate, `rotate` connects anew with them and swaps the new connection
//! in; calls in flight keep the old one, which closes after the last of them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use futures::future::BoxFuture;

use super::local::{Counting, LocalStore};
use super::redis::{Access, RedisStore, Topology};
use super::{Store, StoreError};
use crate::check::{AdminOp, Answer, Check, Failure, Mode, SecurityEvent, Source};
use crate::metrics;

/// How long before a caller's deadline the answer must be on its way, at least.
const ANSWER_MARGIN: Duration = Duration::from_millis(1);

/// When Redis counts as failed, and how the fallback then counts.
#[derive(Clone, Copy, Debug)]
pub struct FallbackSettings {
    /// Deadline of one Redis call.
    pub deadline: Duration,
    /// How often the probe tries Redis while the circuit is open.
    pub probe_interval: Duration,
    /// How many replicas share each limit while they decide on their own.
    pub replicas: u64,
    /// Bound on the fallback's token buckets.
    pub max_keys: usize,
}

/// Redis behind a circuit breaker, with the fallback's buckets (see the module doc).
#[derive(Debug)]
pub struct FallbackStore {
    /// Empty until the first connection succeeds; until then the circuit is open.
    redis: ArcSwapOption<RedisStore>,
    local: LocalStore,
    open: AtomicBool,
    settings: FallbackSettings,
    /// Where to connect when no connection was ever made.
    topology: Topology,
    /// What to connect with: replaced when the TLS files rotate (`rotate`).
    access: ArcSwap<Access>,
    /// Held by whoever is connecting anew to store the connection (the probe's first connection,
    /// `rotate`), so that an older connection never replaces a newer one.
    connecting: tokio::sync::Mutex<()>,
}

impl FallbackStore {
    /// Connects, waiting at most `patience` for the first connection; if Redis is not there by
    /// then, serves from the fallback while it keeps trying in the background, so Sluice serves
    /// even when Redis is down at start-up.
    pub async fn start(
        topology: Topology,
        access: Access,
        settings: FallbackSettings,
        patience: Duration,
    ) -> Arc<Self> {
        let connect = RedisStore::connect(&topology, &access, settings.deadline);
        let first = tokio::time::timeout(patience, connect).await;
        let store = Arc::new(FallbackStore {
            redis: ArcSwapOption::empty(),
            local: LocalStore::new(Counting::FairShare { replicas: settings.replicas }, settings.max_keys),
            open: AtomicBool::new(true),
            settings,
            topology,
            access: ArcSwap::from_pointee(access),
            connecting: tokio::sync::Mutex::new(()),
        });
        match first {
            Ok(Ok(redis)) => {
                store.redis.store(Some(Arc::new(redis)));
                store.set_open(false);
                tracing::info!(topology = ?store.topology, "connected to redis");
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot connect to redis yet; deciding in process meanwhile");
                store.set_open(true);
                tokio::spawn(Arc::clone(&store).probe());
            }
            Err(_) => {
                tracing::warn!("redis did not answer at start-up; deciding in process meanwhile");
                store.set_open(true);
                tokio::spawn(Arc::clone(&store).probe());
            }
        }
        store
    }

    /// The fallback's buckets.
    pub fn local(&self) -> &LocalStore {
        &self.local
    }

    /// Whether decisions currently come from the fallback.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    fn set_open(&self, open: bool) {
        self.open.store(open, Ordering::Release);
        metrics::circuit_open(open);
    }

    /// Until Redis answers: every probe interval, connect (if no connection was ever made) or
    /// ping (asking the sentinels anew where they are used); the first answer closes the circuit.
    async fn probe(self: Arc<Self>) {
        let mut last = Instant::now();
        loop {
            tokio::time::sleep(self.settings.probe_interval).await;
            metrics::fallback_time(last.elapsed());
            last = Instant::now();
            if Arc::strong_count(&self) == 1 {
                return;
            }
            let patience = self.settings.deadline * 4;
            let answered = match self.redis.load_full() {
                None => {
                    let _connecting = self.connecting.lock().await;
                    // `rotate` may have connected meanwhile: that was an answer too.
                    self.redis.load().is_some()
                        || match self.connect().await {
                            Ok(redis) => {
                                self.redis.store(Some(Arc::new(redis)));
                                true
                            }
                            Err(_) => false,
                        }
                }
                Some(redis) => {
                    let ping = async {
                        redis.recover().await?;
                        redis.ping().await
                    };
                    matches!(tokio::time::timeout(patience, ping).await, Ok(Ok(())))
                }
            };
            if answered {
                self.set_open(false);
                tracing::info!(topology = ?self.topology, "redis answers: decisions are shared again");
                return;
            }
        }
    }

    /// A new connection with the access of the moment, within the probe's patience.
    async fn connect(&self) -> Result<RedisStore, StoreError> {
        let patience = (self.settings.deadline * 4).max(Duration::from_secs(1));
        let access = self.access.load_full();
        match tokio::time::timeout(
            patience,
            RedisStore::connect(&self.topology, &access, self.settings.deadline),
        )
        .await
        {
            Ok(connected) => connected,
            Err(_) => Err(StoreError::Timeout(u64::try_from(patience.as_millis()).unwrap_or(u64::MAX))),
        }
    }

    /// From now on, connects with `access` (rotated TLS files): opens a connection with it and, once
    /// Redis has answered on it, makes it the one every new call uses. Calls in flight finish on the
    /// old connection, which closes when the last of them is done. If the new connection fails,
    /// the old one stays in use and the error says why; call again to retry.
    pub async fn rotate(&self, access: Access) -> Result<(), StoreError> {
        let _connecting = self.connecting.lock().await;
        self.access.store(Arc::new(access));
        let redis = self.connect().await?;
        self.redis.store(Some(Arc::new(redis)));
        Ok(())
    }

    /// Opens the circuit (once) and starts the probe that will close it.
    fn trip(self: &Arc<Self>, error: &StoreError) {
        if self.open.swap(true, Ordering::AcqRel) {
            return;
        }
        metrics::circuit_open(true);
        metrics::circuit_opened();
        tracing::warn!(error = %error, "redis unavailable: deciding in process until it answers again");
        tokio::spawn(Arc::clone(self).probe());
    }

    /// Redis within the deadline: our own (`redis.timeout_ms`), or the caller's when that comes
    /// first. A caller's deadline missed is no sign of a sick Redis, so it answers by the failure
    /// mode (counted as shed) without opening the circuit; a hostile client's 1 ms deadline must not
    /// push every other request off Redis.
    async fn run(
        self: &Arc<Self>,
        checks: &[Check],
        mode: Mode,
        deadline: Option<Instant>,
    ) -> Result<Answer, StoreError> {
        let redis = match self.redis.load_full() {
            Some(redis) if !self.is_open() => redis,
            _ => return Ok(self.without_redis(checks, mode)),
        };
        let mut budget = self.settings.deadline;
        let mut callers = false;
        if let Some(deadline) = deadline {
            // Leave the answer time to travel back: a tenth of what is left, at least a millisecond.
            let left = deadline.saturating_duration_since(Instant::now());
            let left = left.saturating_sub((left / 10).max(ANSWER_MARGIN));
            if left < budget {
                (budget, callers) = (left, true);
            }
        }
        if budget.is_zero() {
            return Ok(self.shed_for_deadline(checks, mode));
        }
        // Redis's call is bounded by our own deadline only: it may carry other requests (see
        // redis/batch.rs), which a short deadline of this caller's must not fail.
        let own = Instant::now() + self.settings.deadline;
        let error = match tokio::time::timeout(budget, redis.decide(checks, mode, Some(own))).await {
            Ok(Ok(outcome)) => return Ok(outcome),
            Ok(Err(e)) => e,
            Err(_) if callers => return Ok(self.shed_for_deadline(checks, mode)),
            Err(_) => StoreError::Timeout(u64::try_from(budget.as_millis()).unwrap_or(u64::MAX)),
        };
        if !error.is_transient() {
            // Out of memory, a misconfigured or re-passworded Redis, a script error: still no
            // reason to fail the gateway. Logged loudly, since it will not heal by itself.
            tracing::error!(error = %error, "redis refused a decision; deciding in process");
        }
        metrics::redis_error(error.kind());
        self.trip(&error);
        Ok(self.without_redis(checks, mode))
    }

    fn shed_for_deadline(&self, checks: &[Check], mode: Mode) -> Answer {
        metrics::shed("deadline");
        Answer { source: Source::Shed, ..self.without_redis(checks, mode) }
    }

    /// The fallback's answer: each tier as its failure mode says, all or nothing as ever.
    fn without_redis(&self, checks: &[Check], mode: Mode) -> Answer {
        let probe_ms = u64::try_from(self.settings.probe_interval.as_millis()).unwrap_or(u64::MAX);
        self.local.by_failure_mode(checks, mode, probe_ms)
    }
}

/// The store is shared as `Arc<FallbackStore>`; the probe needs its own handle.
#[derive(Clone, Debug)]
pub struct SharedFallback(pub Arc<FallbackStore>);

impl Store for SharedFallback {
    fn decide<'a>(
        &'a self,
        checks: &'a [Check],
        mode: Mode,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<Answer, StoreError>> {
        Box::pin(self.0.run(checks, mode, deadline))
    }

    fn shed(&self, checks: &[Check], mode: Mode) -> Answer {
        Answer { source: Source::Shed, ..self.0.without_redis(checks, mode) }
    }

    fn report_failures<'a>(&'a self, failures: &'a [Failure]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            match self.0.redis.load_full() {
                Some(redis) if !self.0.is_open() => {
                    match tokio::time::timeout(self.0.settings.deadline, redis.report_failures(failures))
                        .await
                    {
                        Ok(Ok(())) => return Ok(()),
                        Ok(Err(e)) if !e.is_transient() => return Err(e),
                        _ => {}
                    }
                }
                _ => {}
            }
            self.0.local.report_failures_at(failures, self.0.local.now_ms());
            Ok(())
        })
    }

    /// Applies to the fallback's buckets and, when it answers, to Redis.
    fn admin<'a>(&'a self, op: AdminOp<'a>) -> BoxFuture<'a, Result<Vec<(String, String)>, StoreError>> {
        Box::pin(async move {
            let local = self.0.local.admin_at(op, self.0.local.now_ms());
            let patience = self.0.settings.deadline * 4;
            match self.0.redis.load_full() {
                Some(redis) => match tokio::time::timeout(patience, redis.admin(op)).await {
                    Ok(result) => result,
                    Err(_) => {
                        Err(StoreError::Timeout(u64::try_from(patience.as_millis()).unwrap_or(u64::MAX)))
                    }
                },
                None => Ok(local),
            }
        })
    }

    fn security_event<'a>(&'a self, event: &'a SecurityEvent, max_len: u64) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Some(redis) = self.0.redis.load_full().filter(|_| !self.0.is_open()) {
                redis.security_event(event, max_len).await;
            }
        })
    }
}
