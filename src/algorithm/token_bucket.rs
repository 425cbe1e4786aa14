//! Token bucket as GCRA (generic cell rate algorithm): one instant per key.
//!
//! A bucket of `capacity` units refills at `capacity` units per window, i.e. one unit every
//! `T = window / capacity`. Instead of a token count, the state is the *theoretical arrival time*
//! `tat`: the instant at which the bucket would be full again. A request of `cost` moves it to
//! `max(tat, now) + cost * T` and passes when that lies no further than `capacity * T` ahead of
//! now. Over any span of length `W` at most `2 * capacity` units pass (a full bucket plus a window of
//! refill), and on average `capacity` per window.
//!
//! A request costing more than the whole bucket passes when the bucket is full and leaves it that
//! much in debt: the rate stays `capacity` per window, and every cost can pass once the bucket has
//! refilled, which is what its retry-after says.
//!
//! To keep `T` exact when the window does not divide by the capacity, time is counted in units of
//! `1 / capacity` ms: then `T` is `window_ms` units and `capacity * T` is `capacity * window_ms`.

use super::{Quota, Verdict};

/// The stored state: the theoretical arrival time, in `1 / capacity` ms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    pub tat: u128,
}

/// Decides one request; returns the verdict and the state to store if it is consumed. `q.limit` is
/// the bucket's capacity; `most` is the largest cost that may ever pass (the tier's own limit). A
/// larger cost is denied, and charges at most `most` where denied requests are counted, so no single
/// request puts a key in debt for longer than a full limit takes to refill.
pub fn check(state: Bucket, now: u64, q: Quota, most: u64) -> (Verdict, Bucket) {
    let capacity = u128::from(q.limit.max(1));
    let t = u128::from(q.window_ms);
    let now_scaled = u128::from(now) * capacity;
    let full = capacity * t;
    let cost = u128::from(q.cost.min(most));
    // How far ahead this request may push `tat`: a whole bucket, or its own cost when larger.
    let horizon = full.max(cost * t);
    let start = state.tat.max(now_scaled);
    let new_tat = start + cost * t;
    let ahead = new_tat - now_scaled;
    let to_ms = |scaled: u128| u64::try_from(scaled.div_ceil(capacity)).unwrap_or(u64::MAX);
    if ahead <= horizon && q.cost <= most {
        let verdict = Verdict {
            allowed: true,
            remaining: u64::try_from(full.saturating_sub(ahead) / t).unwrap_or(u64::MAX),
            retry_after_ms: 0,
            reset_after_ms: to_ms(ahead),
            limit: q.limit,
            ..Verdict::default()
        };
        return (verdict, Bucket { tat: new_tat });
    }
    let verdict = Verdict {
        allowed: false,
        remaining: u64::try_from(full.saturating_sub(start - now_scaled) / t).unwrap_or(u64::MAX),
        // For a cost above `most`, which never passes: until the bucket is full.
        retry_after_ms: to_ms(ahead.saturating_sub(horizon).max(1)),
        reset_after_ms: to_ms(start - now_scaled),
        limit: q.limit,
        ..Verdict::default()
    };
    (verdict, Bucket { tat: new_tat })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_full_bucket_then_the_refill_rate() {
        let q = Quota { limit: 4, window_ms: 1000, cost: 1 };
        let mut b = Bucket::default();
        let now = 10_000;
        for i in 0..4 {
            let (v, next) = check(b, now, q, 100);
            assert!(v.allowed, "unit {i}");
            assert_eq!(v.remaining, 3 - i);
            b = next;
        }
        let (v, _) = check(b, now, q, 100);
        assert!(!v.allowed);
        assert_eq!(v.retry_after_ms, 250, "one unit refills every 250 ms");
        assert!(check(b, now + 250, q, 100).0.allowed);
    }

    #[test]
    fn a_cost_above_the_bucket_passes_when_it_is_full() {
        // A fair share of 2 per second, asked for 3 units at once.
        let q = Quota { limit: 2, window_ms: 1000, cost: 3 };
        let (v, b) = check(Bucket::default(), 10_000, q, 10);
        assert!(v.allowed, "a full bucket lets it through");
        let (v, _) = check(b, 10_000, q, 100);
        assert!(!v.allowed);
        assert_eq!(v.retry_after_ms, 1500, "3 units at 2 per second");
        assert!(check(b, 11_500, q, 100).0.allowed);
        // Past the tier's own limit (10) nothing passes, not even from a full bucket, and a counted
        // denial charges no more than the limit: the debt ends within five windows.
        let (v, b) = check(Bucket::default(), 10_000, Quota { cost: u64::MAX, ..q }, 10);
        assert!(!v.allowed, "no overflow at the type's maximum");
        assert!(check(b, 15_000, Quota { cost: 1, ..q }, 10).0.allowed);
    }

    proptest! {
        #[test]
        fn retry_after_is_exact(capacity in 1u64..50, window in 1u64..10_000, costs in proptest::collection::vec(1u64..4, 1..60), cost in 0u64..120) {
            let now = 1_000_000;
            let mut b = Bucket::default();
            for c in costs {
                let q = Quota { limit: capacity, window_ms: window, cost: c.min(capacity) };
                let (v, next) = check(b, now, q, 100);
                if v.allowed { b = next; }
            }
            let q = Quota { limit: capacity, window_ms: window, cost };
            let (v, _) = check(b, now, q, u64::MAX);
            if !v.allowed {
                prop_assert!(check(b, now + v.retry_after_ms, q, u64::MAX).0.allowed);
                prop_assert!(!check(b, now + v.retry_after_ms - 1, q, u64::MAX).0.allowed);
            }
        }

        #[test]
        fn at_most_two_capacities_per_window(capacity in 1u64..20, steps in proptest::collection::vec(0u64..50, 1..300)) {
            let q = Quota { limit: capacity, window_ms: 1000, cost: 1 };
            let mut b = Bucket::default();
            let mut now = 5_000;
            let mut admitted = Vec::new();
            for dt in steps {
                now += dt;
                let (v, next) = check(b, now, q, 100);
                if v.allowed { b = next; admitted.push(now); }
            }
            for &t in &admitted {
                let in_span = admitted.iter().filter(|&&u| u >= t && u < t + 1000).count() as u64;
                prop_assert!(in_span <= 2 * capacity);
            }
        }
    }
}
