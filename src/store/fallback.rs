//! Redis first, the in-process store when Redis fails or misses its deadline.
//!
//! A transient failure (refused, reset, timed out, loading, failing over) is answered at once from
//! local counts, so a gateway never sees an error because Redis is down and never waits longer than
//! the deadline. A non-transient error (a reply the script should never give) is a bug and is
//! returned as one.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures::future::BoxFuture;

use super::redis::ConnectionKind;
use super::{Check, LocalStore, Mode, Outcome, RedisStore, Source, Store, StoreError};
use crate::metrics;

#[derive(Debug)]
pub struct FallbackStore {
    /// Empty until the first connection succeeds; until then every decision is local.
    redis: ArcSwapOption<RedisStore>,
    local: LocalStore,
    deadline: Duration,
}

impl FallbackStore {
    /// Connects, waiting at most `patience` for the first connection; if Redis is not there by
    /// then, keeps trying in the background while decisions come from the fallback, so Sluice
    /// serves even when Redis is down at start-up.
    pub async fn start(
        url: String,
        connection: ConnectionKind,
        deadline: Duration,
        patience: Duration,
    ) -> Arc<Self> {
        let store = Arc::new(FallbackStore {
            redis: ArcSwapOption::empty(),
            local: LocalStore::new(Source::Fallback),
            deadline,
        });
        if let Ok(Ok(redis)) =
            tokio::time::timeout(patience, RedisStore::connect(&url, connection, deadline)).await
        {
            store.redis.store(Some(Arc::new(redis)));
            tracing::info!("connected to redis");
            return store;
        }
        let weak = Arc::downgrade(&store);
        tokio::spawn(async move {
            let mut logged = false;
            loop {
                match RedisStore::connect(&url, connection, deadline).await {
                    Ok(redis) => {
                        let Some(store) = weak.upgrade() else { return };
                        store.redis.store(Some(Arc::new(redis)));
                        tracing::info!("connected to redis");
                        return;
                    }
                    Err(e) if !logged => {
                        tracing::warn!(error = %e, "cannot connect to redis yet; deciding locally meanwhile");
                        logged = true;
                    }
                    Err(_) => {}
                }
                if weak.strong_count() == 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        store
    }

    /// The in-process counts used while Redis is unavailable.
    pub fn local(&self) -> &LocalStore {
        &self.local
    }

    /// Whether a Redis connection has been made (it may have failed since).
    pub fn connected(&self) -> bool {
        self.redis.load().is_some()
    }

    async fn run(&self, checks: &[Check], mode: Mode) -> Result<Outcome, StoreError> {
        let deadline_ms = u64::try_from(self.deadline.as_millis()).unwrap_or(u64::MAX);
        let Some(redis) = self.redis.load_full() else {
            return Ok(self.local.decide_at(checks, mode, self.local.now_ms()));
        };
        let error = match tokio::time::timeout(self.deadline, redis.decide(checks, mode)).await {
            Ok(Ok(outcome)) => return Ok(outcome),
            Ok(Err(e)) if !e.is_transient() => return Err(e),
            Ok(Err(e)) => e,
            Err(_) => StoreError::Timeout(deadline_ms),
        };
        metrics::redis_error(error.kind());
        tracing::debug!(error = %error, "redis unavailable, deciding locally");
        Ok(self.local.decide_at(checks, mode, self.local.now_ms()))
    }
}

impl Store for FallbackStore {
    fn decide<'a>(&'a self, checks: &'a [Check], mode: Mode) -> BoxFuture<'a, Result<Outcome, StoreError>> {
        Box::pin(self.run(checks, mode))
    }
}
