//! The over-limit cache: a tier-key denied until a known instant is denied again, without asking
//! the store, until that instant. Under a flood from one client this keeps Redis load flat.
//!
//! Only denials that cannot end early are kept: the tier enforces (not shadow, not one of a
//! request's quotas), the request counts (not a look), the tier counts admitted
//! requests only (a tier counting every request, or failures, must see each one), has no adaptive
//! limit or baseline (either can rise for the next request) and no penalty (its violations are
//! counted in the store). A denial holds for the same algorithm, limit and window, and for a cost
//! no smaller than the one denied; traffic elsewhere can only make the real wait longer. Only the
//! store's own answers (Redis or the in-process store) are kept, never the fallback's or shed ones.
//!
//! Bounded: at most `max_keys` entries. When full, new denials are not kept until the sweeper
//! drops expired ones, so a flood of distinct keys costs cache hits, never memory. An operator's
//! action through the admin API, and a reload, empty it.

use dashmap::DashMap;
use tokio::time::Instant;

use crate::algorithm::{Algorithm, Verdict};
use crate::check::{Answer, Check, Counts, Source};

#[derive(Debug)]
pub struct OverLimitCache {
    entries: DashMap<String, Entry>,
    max_keys: usize,
    epoch: Instant,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    /// Store clock (ms since `epoch`) until which the key denies.
    until: u64,
    /// ... and until which its count is not back to zero.
    reset: u64,
    algorithm: Algorithm,
    limit: u64,
    window_ms: u64,
    cost: u64,
}

impl OverLimitCache {
    /// `max_keys` 0 turns the cache off.
    pub fn new(max_keys: usize) -> Self {
        OverLimitCache { entries: DashMap::new(), max_keys, epoch: Instant::now() }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// When every enforcing check of the request is known to be denied now (shadow checks never
    /// deny), the one with the longest wait and the verdict to answer for it: then waiting that long
    /// lets the request pass, as the store would have said. Never for a request with a tier whose
    /// state a denial changes, or with any check not held here for the same rule and cost, whose
    /// wait could be longer.
    pub fn denied(&self, checks: &[Check]) -> Option<(usize, Verdict)> {
        if self.max_keys == 0 || self.entries.is_empty() {
            return None;
        }
        // A denial still changes what these tiers keep (denied hits counted, attempts, violations),
        // so a request holding one must reach the store.
        if checks
            .iter()
            .any(|c| c.counts == Counts::Everything || c.adaptive.is_some() || c.penalty.is_some())
        {
            return None;
        }
        let now = self.now_ms();
        let mut longest: Option<(usize, Verdict)> = None;
        for (i, c) in checks.iter().enumerate().filter(|(_, c)| !c.shadow) {
            let v = self.held(c, now)?;
            if longest.is_none_or(|(_, l)| v.retry_after_ms > l.retry_after_ms) {
                longest = Some((i, v));
            }
        }
        longest
    }

    /// The denial held for `c` now: for the same rule and cost, and only when `c` qualifies.
    fn held(&self, c: &Check, now: u64) -> Option<Verdict> {
        let e = *self.entries.get(&c.key)?;
        let same_rule = e.algorithm == c.algorithm
            && e.limit == c.quota.limit
            && e.window_ms == c.quota.window_ms
            && c.quota.cost == e.cost;
        (same_rule && eligible(c) && e.until > now).then(|| Verdict {
            allowed: false,
            remaining: 0,
            retry_after_ms: e.until - now,
            reset_after_ms: e.reset.saturating_sub(now),
            limit: e.limit,
            score: 0,
            factors: 0,
        })
    }

    /// When every check of the request is known to be denied now, each one's verdict: the answer
    /// for a `ShouldRateLimit` request, whose every descriptor has a status (so a request with any
    /// check not held here, or not eligible, must reach the store).
    pub fn denied_each(&self, checks: &[Check]) -> Option<Vec<Verdict>> {
        if self.max_keys == 0 || self.entries.is_empty() || checks.is_empty() {
            return None;
        }
        let now = self.now_ms();
        checks.iter().map(|c| self.held(c, now)).collect()
    }

    /// Keeps the denials of `outcome` that qualify.
    pub fn remember(&self, checks: &[Check], outcome: &Answer) {
        if self.max_keys == 0 || outcome.admitted || !matches!(outcome.source, Source::Redis | Source::Local)
        {
            return;
        }
        let now = self.now_ms();
        for (c, v) in checks.iter().zip(&outcome.verdicts) {
            if v.allowed || v.retry_after_ms == 0 || !eligible(c) {
                continue;
            }
            if self.entries.len() >= self.max_keys && !self.entries.contains_key(&c.key) {
                return;
            }
            let entry = Entry {
                until: now.saturating_add(v.retry_after_ms),
                reset: now.saturating_add(v.reset_after_ms.max(v.retry_after_ms)),
                algorithm: c.algorithm,
                limit: c.quota.limit,
                window_ms: c.quota.window_ms,
                cost: c.quota.cost,
            };
            self.entries.insert(c.key.clone(), entry);
        }
    }

    /// Drops the denials that have run out; returns how many went.
    pub fn sweep(&self) -> usize {
        let now = self.now_ms();
        let before = self.entries.len();
        self.entries.retain(|_, e| e.until > now);
        before.saturating_sub(self.entries.len())
    }

    pub fn clear(&self) {
        self.entries.clear();
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn eligible(c: &Check) -> bool {
    !c.shadow
        && !c.quota_mode
        && c.quota.cost > 0
        && c.counts == Counts::Requests
        && c.adaptive.is_none()
        && c.penalty.is_none()
        && c.baseline.is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::Quota;
    use crate::check::FailureMode;

    fn check(key: &str, cost: u64) -> Check {
        let quota = Quota { limit: 5, window_ms: 60_000, cost };
        Check::plain(key.into(), Algorithm::SlidingWindow, quota, FailureMode::Local)
    }

    fn denied(retry_after_ms: u64) -> Answer {
        let verdict = Verdict {
            allowed: false,
            retry_after_ms,
            reset_after_ms: 60_000,
            limit: 5,
            ..Verdict::default()
        };
        Answer { admitted: false, verdicts: vec![verdict], source: Source::Redis }
    }

    #[tokio::test(start_paused = true)]
    async fn a_denial_holds_until_its_retry_after_for_the_same_rule_and_no_smaller_cost() {
        let cache = OverLimitCache::new(10);
        cache.remember(&[check("k", 2)], &denied(1_000));
        let (i, v) = cache.denied(&[check("k", 2)]).expect("denied from the cache");
        assert_eq!((i, v.allowed, v.retry_after_ms), (0, false, 1_000));
        assert!(cache.denied(&[check("other", 1), check("k", 2)]).is_none(), "another tier may wait longer");
        assert!(cache.denied(&[check("k", 1)]).is_none(), "a smaller cost may pass sooner");
        assert!(cache.denied(&[check("k", 3)]).is_none(), "a larger cost may wait longer");
        let other_limit = Check { quota: Quota { limit: 6, ..check("k", 2).quota }, ..check("k", 2) };
        assert!(cache.denied(&[other_limit]).is_none(), "a retuned limit asks the store");
        tokio::time::advance(std::time::Duration::from_millis(400)).await;
        assert_eq!(cache.denied(&[check("k", 2)]).expect("still denied").1.retry_after_ms, 600);
        tokio::time::advance(std::time::Duration::from_millis(600)).await;
        assert!(cache.denied(&[check("k", 2)]).is_none(), "over at the retry-after");
        assert_eq!(cache.sweep(), 1);
        assert!(cache.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn only_plain_enforcing_tiers_and_the_stores_own_answers_are_kept() {
        let cache = OverLimitCache::new(10);
        let shadow = Check { shadow: true, ..check("a", 1) };
        let everything = Check { counts: Counts::Everything, ..check("b", 1) };
        for c in [shadow, everything] {
            cache.remember(std::slice::from_ref(&c), &denied(1_000));
        }
        let fallback = Answer { source: Source::Fallback, ..denied(1_000) };
        cache.remember(&[check("c", 1)], &fallback);
        let shed = Answer { source: Source::Shed, ..denied(1_000) };
        cache.remember(&[check("d", 1)], &shed);
        assert!(cache.is_empty(), "nothing qualified");
        // A kept denial does not answer for a request whose other tier counts denied hits.
        cache.remember(&[check("e", 1)], &denied(1_000));
        assert!(cache.denied(&[check("e", 1)]).is_some());
        let counts_all = Check { counts: Counts::Everything, ..check("f", 1) };
        assert!(cache.denied(&[check("e", 1), counts_all]).is_none(), "the store must count it");
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_cache_keeps_no_new_keys() {
        let cache = OverLimitCache::new(2);
        for key in ["a", "b", "c"] {
            cache.remember(&[check(key, 1)], &denied(1_000));
        }
        assert_eq!(cache.len(), 2);
        assert!(cache.denied(&[check("c", 1)]).is_none());
        cache.remember(&[check("a", 1)], &denied(2_000));
        assert_eq!(
            cache.denied(&[check("a", 1)]).expect("renewed").1.retry_after_ms,
            2_000,
            "a kept key is renewed"
        );
    }
}
