//! Sliding log: one entry per request consumed, oldest first.
//!
//! Exact: a request of `cost` passes when the units consumed in the last `W` ms plus `cost` stay
//! within the limit. An entry stamped `t` counts while `now < t + W`.
//!
//! An entry carries its request's units as a span of a running total: the key's units are numbered
//! 1, 2, 3, ... in the order they were consumed, and an entry holds units `start + 1 ..= end`. So
//! the units in the window are `total - oldest.start` however many each request carried, and memory
//! and time grow with the number of requests, never with their cost. When denied, the request
//! needs `k = count + cost - limit` units to leave the window: the entry holding unit
//! `oldest.start + k` leaves at `t + W`, which is the exact retry-after; a binary search over the
//! ascending `end`s finds it.

use std::collections::VecDeque;

use super::{Quota, Verdict};

/// One consumed request: when, and which units of the running total it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub at: u64,
    pub start: u64,
    pub end: u64,
}

/// The stored state of one key: its entries, oldest first, and the running total of units.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Log {
    pub entries: VecDeque<Entry>,
    pub total: u64,
}

impl Log {
    /// Drops the entries that have left the window ending at `now`.
    pub fn trim(&mut self, now: u64, window_ms: u64) {
        while self.entries.front().is_some_and(|e| e.at.saturating_add(window_ms) <= now) {
            self.entries.pop_front();
        }
    }

    /// Units consumed within the window (after `trim`).
    pub fn count(&self) -> u64 {
        self.entries.front().map_or(0, |oldest| self.total - oldest.start)
    }

    /// Decides one request; the log must be trimmed to `now` first. Consuming is `commit`.
    pub fn check(&self, now: u64, q: Quota) -> Verdict {
        let count = self.count();
        if count.saturating_add(q.cost) <= q.limit {
            // The newest entry would be this request's, leaving the window W from now.
            return Verdict {
                allowed: true,
                remaining: q.limit - count - q.cost,
                retry_after_ms: 0,
                reset_after_ms: if q.cost > 0 { q.window_ms } else { self.reset_after(now, q.window_ms) },
                limit: q.limit,
                ..Verdict::default()
            };
        }
        let retry_after_ms = match self.leaving_at(count.saturating_add(q.cost) - q.limit) {
            Some(at) => at.saturating_add(q.window_ms).saturating_sub(now),
            // A cost above the limit never passes: the native API rejects it, Envoy's answer shows
            // the limit it exceeds.
            None => q.window_ms,
        };
        Verdict {
            allowed: false,
            remaining: q.limit.saturating_sub(count),
            retry_after_ms,
            reset_after_ms: self.reset_after(now, q.window_ms),
            limit: q.limit,
            ..Verdict::default()
        }
    }

    /// The stamp of the entry holding the `k`-th oldest unit in the window, if there are `k`.
    fn leaving_at(&self, k: u64) -> Option<u64> {
        let target = self.entries.front()?.start.checked_add(k)?;
        let i = self.entries.partition_point(|e| e.end < target);
        self.entries.get(i).map(|e| e.at)
    }

    /// Consumes `cost` units at `now`; a look (0) leaves no entry.
    pub fn commit(&mut self, now: u64, cost: u64) {
        if cost == 0 {
            return;
        }
        let start = self.total;
        self.total = start.saturating_add(cost).min(super::MAX_COUNT);
        self.entries.push_back(Entry { at: now, start, end: self.total });
    }

    /// Until the newest entry leaves the window; a whole window when there is none, never 0.
    fn reset_after(&self, now: u64, window_ms: u64) -> u64 {
        self.entries.back().map_or(window_ms, |e| e.at.saturating_add(window_ms).saturating_sub(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn five_per_window_then_exact_retry() {
        let q = Quota { limit: 5, window_ms: 900_000, cost: 1 };
        let mut log = Log::default();
        for i in 0..5 {
            log.trim(1_000 + i, q.window_ms);
            let v = log.check(1_000 + i, q);
            assert!(v.allowed);
            log.commit(1_000 + i, 1);
        }
        let v = log.check(2_000, q);
        assert!(!v.allowed);
        assert_eq!(v.retry_after_ms, 1_000 + 900_000 - 2_000);
        let mut later = log.clone();
        later.trim(901_000, q.window_ms);
        assert!(later.check(901_000, q).allowed);
    }

    #[test]
    fn a_huge_cost_is_one_entry_and_never_wraps() {
        let q = Quota { limit: 5, window_ms: 1_000, cost: u64::MAX };
        let mut log = Log::default();
        log.commit(0, 3);
        let v = log.check(10, q);
        assert!(!v.allowed);
        assert_eq!(v.remaining, 2);
        log.commit(10, u64::MAX);
        assert_eq!(log.entries.len(), 2, "one entry per request, whatever its cost");
        assert_eq!(log.count(), crate::algorithm::MAX_COUNT, "saturated, not wrapped");
        assert!(!log.check(20, Quota { cost: 0, ..q }).allowed, "a look sees the saturated count");
    }

    proptest! {
        #[test]
        fn retry_after_is_exact(
            stamps in proptest::collection::vec((0u64..1000, 1u64..6), 0..30), limit in 1u64..30, cost in 0u64..8,
        ) {
            prop_assume!(cost <= limit);
            let q = Quota { limit, window_ms: 1000, cost };
            let mut sorted = stamps.clone();
            sorted.sort_unstable();
            let mut log = Log::default();
            for (t, units) in sorted {
                log.commit(t, units);
            }
            let now = 1000;
            log.trim(now, q.window_ms);
            let v = log.check(now, q);
            if !v.allowed {
                let mut at = log.clone();
                at.trim(now + v.retry_after_ms, q.window_ms);
                prop_assert!(at.check(now + v.retry_after_ms, q).allowed);
                let mut before = log.clone();
                before.trim(now + v.retry_after_ms - 1, q.window_ms);
                prop_assert!(!before.check(now + v.retry_after_ms - 1, q).allowed);
            }
        }
    }
}
