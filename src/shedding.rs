//! Load shedding: a bound on calls in flight, and the caller's deadline.
//!
//! Past `max_in_flight` calls at once, a call is answered at once by its tiers' failure modes
//! (`Store::shed`) instead of joining the queue: a gateway's deadline is never spent waiting in
//! Sluice. A call takes one slot however many requests it carries, so a batch is admitted or shed
//! as a whole and never sheds its own entries.
//!
//! A call whose deadline leaves less than `MIN_DEADLINE` is refused as late (DEADLINE_EXCEEDED),
//! not answered by the failure modes: the caller picks its deadline, and a failure mode's answer
//! (fair-share buckets beside Redis's counts, or `allow`) must not be something a client can ask
//! for by sending `grpc-timeout: 1n` while Redis is healthy. A gateway whose deadline has run out
//! has given up on the answer anyway. What is shed or refused is counted in
//! `sluice_shed_total{reason}`. This keeps no counts and waits on nothing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::metrics;

#[derive(Debug)]
pub struct Shedding {
    in_flight: AtomicUsize,
    max_in_flight: usize,
}

/// The least time a caller's deadline must leave for Sluice to ask the store: the store gets at
/// least a millisecond once the answer's margin is kept (see `store::fallback`).
pub const MIN_DEADLINE: Duration = Duration::from_millis(2);

/// Whether a call may ask the store. Holding it holds the call's slot.
#[derive(Debug)]
pub enum Admission<'a> {
    Admitted(Slot<'a>),
    Shed,
    /// The caller's deadline leaves no time to decide.
    Late,
}

/// Gives a slot back however the call ends, even when its caller goes away.
#[derive(Debug)]
pub struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Shedding {
    pub fn new(max_in_flight: usize) -> Shedding {
        Shedding { in_flight: AtomicUsize::new(0), max_in_flight: max_in_flight.max(1) }
    }

    /// Calls holding a slot now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Takes a slot for one call, or says it is shed or late (and counts why).
    pub fn admit(&self, deadline: Option<Instant>) -> Admission<'_> {
        if deadline.is_some_and(|d| d.saturating_duration_since(Instant::now()) < MIN_DEADLINE) {
            metrics::shed("deadline");
            return Admission::Late;
        }
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            metrics::shed("queue");
            return Admission::Shed;
        }
        Admission::Admitted(Slot(&self.in_flight))
    }
}
