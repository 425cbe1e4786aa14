//! Load shedding: a bound on decisions in flight, and the caller's deadline.
//!
//! Past `max_in_flight` decisions at once, or with the caller's deadline already gone, a request is
//! answered at once by its tiers' failure modes (`Store::shed`) instead of joining the queue: a
//! gateway's deadline is never spent waiting in Sluice. What is shed is counted in
//! `sluice_shed_total{reason}`. This layer keeps no counts of its own and must not wait on anything.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use futures::future::BoxFuture;

use super::{AdminOp, Check, Failure, Mode, Outcome, SecurityEvent, Store, StoreError};
use crate::metrics;

#[derive(Debug)]
pub struct Shedding {
    inner: Arc<dyn Store>,
    in_flight: AtomicUsize,
    max_in_flight: usize,
}

impl Shedding {
    pub fn new(inner: Arc<dyn Store>, max_in_flight: usize) -> Shedding {
        Shedding { inner, in_flight: AtomicUsize::new(0), max_in_flight: max_in_flight.max(1) }
    }
}

/// Gives a slot back however the decision ends, even when its caller goes away.
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Store for Shedding {
    fn decide<'a>(&'a self, checks: &'a [Check], mode: Mode) -> BoxFuture<'a, Result<Outcome, StoreError>> {
        self.decide_by(checks, mode, None)
    }

    fn decide_by<'a>(
        &'a self,
        checks: &'a [Check],
        mode: Mode,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<Outcome, StoreError>> {
        if deadline.is_some_and(|d| d <= Instant::now()) {
            metrics::shed("deadline");
            return Box::pin(std::future::ready(Ok(self.inner.shed(checks, mode))));
        }
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            metrics::shed("queue");
            return Box::pin(std::future::ready(Ok(self.inner.shed(checks, mode))));
        }
        let slot = Slot(&self.in_flight);
        Box::pin(async move {
            let _slot = slot;
            self.inner.decide_by(checks, mode, deadline).await
        })
    }

    fn shed(&self, checks: &[Check], mode: Mode) -> Outcome {
        self.inner.shed(checks, mode)
    }

    fn report_failures<'a>(&'a self, failures: &'a [Failure]) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.report_failures(failures)
    }

    fn admin<'a>(&'a self, op: AdminOp<'a>) -> BoxFuture<'a, Result<Vec<(String, String)>, StoreError>> {
        self.inner.admin(op)
    }

    fn security_event<'a>(&'a self, event: &'a SecurityEvent, max_len: u64) -> BoxFuture<'a, ()> {
        self.inner.security_event(event, max_len)
    }
}
