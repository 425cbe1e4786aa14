//! Load shedding: a bound on calls in flight, and the caller's deadline.
//!
//! Past `max_in_flight` calls at once, or with the caller's deadline already gone, a call is
//! answered at once by its tiers' failure modes (`Store::shed`) instead of joining the queue: a
//! gateway's deadline is never spent waiting in Sluice. A call takes one slot however many requests
//! it carries, so a batch is admitted or shed as a whole and never sheds its own entries. What is
//! shed is counted in `sluice_shed_total{reason}`. This keeps no counts and waits on nothing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crate::metrics;

#[derive(Debug)]
pub struct Shedding {
    in_flight: AtomicUsize,
    max_in_flight: usize,
}

/// Whether a call may ask the store. Holding it holds the call's slot.
#[derive(Debug)]
pub enum Admission<'a> {
    Admitted(Slot<'a>),
    Shed,
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

    /// Takes a slot for one call, or says it is shed (and counts why).
    pub fn admit(&self, deadline: Option<Instant>) -> Admission<'_> {
        if deadline.is_some_and(|d| d <= Instant::now()) {
            metrics::shed("deadline");
            return Admission::Shed;
        }
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            metrics::shed("queue");
            return Admission::Shed;
        }
        Admission::Admitted(Slot(&self.in_flight))
    }
}
