//! Sliding log: one timestamp per unit consumed, oldest first.
//!
//! Exact: a request of `cost` passes when the units consumed in the last `W` ms plus `cost` stay
//! within the limit. An entry stamped `t` counts while `now < t + W`. Memory is one entry per unit,
//! so configuration caps the limit of a log tier. When denied, the request needs
//! `k = count + cost - limit` of the oldest entries to leave the window; the k-th oldest leaves at
//! `t_k + W`, which is the exact retry-after.

use std::collections::VecDeque;

use super::{Quota, Verdict};

/// The stored state of one key: the instants of the units consumed, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Log {
    pub entries: VecDeque<u64>,
}

impl Log {
    /// Drops the entries that have left the window ending at `now`.
    pub fn trim(&mut self, now: u64, window_ms: u64) {
        while self.entries.front().is_some_and(|&t| t.saturating_add(window_ms) <= now) {
            self.entries.pop_front();
        }
    }

    /// Decides one request; the log must be trimmed to `now` first. Consuming is `commit`.
    pub fn check(&self, now: u64, q: Quota) -> Verdict {
        let count = self.entries.len() as u64;
        if count + q.cost <= q.limit {
            // The newest entry would be this request's, leaving the window W from now.
            return Verdict {
                allowed: true,
                remaining: q.limit - count - q.cost,
                retry_after_ms: 0,
                reset_after_ms: q.window_ms,
                limit: q.limit,
                ..Verdict::default()
            };
        }
        let k = count + q.cost - q.limit;
        let retry_after_ms = match self.entries.get((k - 1) as usize) {
            Some(&t) => (t + q.window_ms).saturating_sub(now),
            // cost above the limit: never passes; the engine rejects it before it gets here.
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

    pub fn commit(&mut self, now: u64, cost: u64) {
        self.entries.extend(std::iter::repeat_n(now, cost as usize));
    }

    fn reset_after(&self, now: u64, window_ms: u64) -> u64 {
        self.entries.back().map_or(0, |&t| (t + window_ms).saturating_sub(now))
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

    proptest! {
        #[test]
        fn retry_after_is_exact(stamps in proptest::collection::vec(0u64..1000, 0..30), limit in 1u64..30, cost in 1u64..4) {
            prop_assume!(cost <= limit);
            let q = Quota { limit, window_ms: 1000, cost };
            let mut sorted = stamps.clone();
            sorted.sort_unstable();
            let mut log = Log { entries: sorted.into_iter().collect() };
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
