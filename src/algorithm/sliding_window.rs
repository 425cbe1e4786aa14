//! Sliding window counter: O(1) memory per key.
//!
//! Time is cut into fixed windows of `W` ms. A key keeps the count of the current window and of the
//! previous one. At `e` ms into the current window the sliding window of length `W` ending now
//! overlaps the previous window by `W - e` ms, so its estimated count is
//!
//! ```text
//! estimate = previous * (W - e) / W + current
//! ```
//!
//! A request of `cost` passes when `estimate + cost <= limit`. All of it is computed scaled by `W`
//! in integers, so Rust and Lua agree to the unit. There is no double burst at a window boundary:
//! right after it the whole previous count still weighs in and fades linearly.
//!
//! Retry-after is the smallest whole number of ms after which the inequality holds with nothing else
//! happening: either later in this window (the previous count fades), or in the next one (the
//! current count becomes the previous one and starts fading).

use super::{Quota, Verdict};

/// The stored state of one key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    /// Start of the current window, a multiple of the window length.
    pub start_ms: u64,
    pub current: u64,
    pub previous: u64,
}

impl Window {
    /// The state rolled forward to the window that contains `now`. A state from a window later than
    /// `now` (a clock that stepped back) is kept as it is rather than forgotten.
    pub fn at(self, now: u64, window_ms: u64) -> Window {
        let start = now - now % window_ms;
        if self.start_ms >= start {
            self
        } else if self.start_ms + window_ms == start {
            Window { start_ms: start, current: 0, previous: self.current }
        } else {
            Window { start_ms: start, current: 0, previous: 0 }
        }
    }
}

/// Decides one request against one key; returns the verdict and the state to store if the request
/// is consumed.
pub fn check(state: Window, now: u64, q: Quota) -> (Verdict, Window) {
    let w = u128::from(q.window_ms);
    let s = state.at(now, q.window_ms);
    let elapsed = u128::from(now.saturating_sub(s.start_ms).min(q.window_ms));
    let (cur, prev, cost, limit) =
        (u128::from(s.current), u128::from(s.previous), u128::from(q.cost), u128::from(q.limit));

    let used = prev * (w - elapsed) + cur * w;
    let capacity = limit * w;
    let allowed = used + cost * w <= capacity;
    // What to store if the request is consumed; a count saturates rather than wraps.
    let next = Window { current: s.current.saturating_add(q.cost).min(super::MAX_COUNT), ..s };

    if allowed {
        let remaining = (capacity - used - cost * w) / w;
        let verdict = Verdict {
            allowed,
            remaining: to_u64(remaining),
            retry_after_ms: 0,
            reset_after_ms: reset_after(next, elapsed, w),
            limit: q.limit,
            ..Verdict::default()
        };
        return (verdict, next);
    }

    let retry = if cur + cost <= limit {
        // The previous window's share must fade: prev * (W - e - t) <= (limit - cur - cost) * W.
        let slack = (limit - cur - cost) * w;
        w - elapsed - slack / prev
    } else if cost <= limit {
        // Wait for the next window, where the current count fades in turn:
        // cur * (W - e2) <= (limit - cost) * W.
        let slack = (limit - cost) * w;
        (w - elapsed) + (w - slack / cur)
    } else {
        // A cost above the limit never passes: the native API rejects it, Envoy's answer shows the
        // limit it exceeds.
        2 * w - elapsed
    };
    let verdict = Verdict {
        allowed,
        remaining: to_u64(capacity.saturating_sub(used) / w),
        retry_after_ms: to_u64(retry),
        reset_after_ms: reset_after(s, elapsed, w),
        limit: q.limit,
        ..Verdict::default()
    };
    (verdict, next)
}

/// Until the estimate is zero: the current count weighs in until the end of the next window, the
/// previous one until the end of this one. With nothing counted, the end of this window: never 0, as
/// a limited answer's reset must not invite a retry at once.
fn reset_after(s: Window, elapsed: u128, w: u128) -> u64 {
    if s.current > 0 { to_u64(2 * w - elapsed) } else { to_u64(w - elapsed) }
}

fn to_u64(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const Q: Quota = Quota { limit: 10, window_ms: 1000, cost: 1 };

    fn run(state: &mut Window, now: u64, q: Quota) -> Verdict {
        let (v, next) = check(*state, now, q);
        if v.allowed {
            *state = next;
        }
        v
    }

    #[test]
    fn admits_the_limit_then_denies() {
        let mut s = Window::default();
        for i in 0..10 {
            let v = run(&mut s, 5_000, Q);
            assert!(v.allowed, "request {i}");
            assert_eq!(v.remaining, 9 - i);
        }
        let v = run(&mut s, 5_000, Q);
        assert!(!v.allowed);
        assert_eq!(v.remaining, 0);
        // All ten sit in the current window: they fade over the next one.
        // 10 * (1000 - e2) <= 9 * 1000  =>  e2 >= 100, so 1000 + 100 ms.
        assert_eq!(v.retry_after_ms, 1100);
    }

    #[test]
    fn no_double_burst_at_the_boundary() {
        let mut s = Window::default();
        for _ in 0..10 {
            assert!(run(&mut s, 1_999, Q).allowed);
        }
        // Just after the boundary the previous window still counts almost fully.
        assert!(!run(&mut s, 2_000, Q).allowed);
        // Halfway through, half of it has faded: 5 more pass, not 10.
        let admitted = (0..10).filter(|_| run(&mut s, 2_500, Q).allowed).count();
        assert_eq!(admitted, 5);
    }

    proptest! {
        /// Retrying exactly after retry-after passes; one millisecond earlier does not.
        #[test]
        fn retry_after_is_exact(
            prev in 0u64..50, cur in 0u64..50, limit in 1u64..50, cost in 1u64..5,
            window in 1u64..5000, offset in 0u64..5000,
        ) {
            prop_assume!(cost <= limit);
            let now = 10 * window + offset % window;
            let state = Window { start_ms: now - now % window, current: cur, previous: prev };
            let q = Quota { limit, window_ms: window, cost };
            let (v, _) = check(state, now, q);
            if !v.allowed {
                prop_assert!(v.retry_after_ms > 0);
                prop_assert!(check(state, now + v.retry_after_ms, q).0.allowed);
                prop_assert!(!check(state, now + v.retry_after_ms - 1, q).0.allowed);
            }
        }

        /// Never more than `limit` units pass within one fixed window.
        #[test]
        fn never_over_limit_in_a_window(steps in proptest::collection::vec((0u64..200, 1u64..4), 1..200)) {
            let q = Quota { limit: 20, window_ms: 1000, cost: 1 };
            let mut s = Window::default();
            let mut now = 0;
            let mut admitted: Vec<(u64, u64)> = Vec::new();
            for (dt, cost) in steps {
                now += dt;
                let q = Quota { cost, ..q };
                if run(&mut s, now, q).allowed {
                    admitted.push((now, cost));
                }
            }
            for &(t, _) in &admitted {
                let start = t - t % 1000;
                let in_window: u64 = admitted.iter().filter(|(u, _)| *u >= start && *u < start + 1000).map(|(_, c)| c).sum();
                prop_assert!(in_window <= 20);
            }
        }
    }
}
