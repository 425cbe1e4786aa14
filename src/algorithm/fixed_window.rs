//! Fixed window counter: envoyproxy/ratelimit's own counting, for users who need its exact counts.
//!
//! Time is cut into windows of `W` ms aligned to the Unix epoch (a minute starts at :00, a day at
//! 00:00 UTC, a week on a Thursday, as the reference aligns them). A key counts the units of the
//! window that holds `now`; a request of `cost` passes when `count + cost <= limit`, and its reset is
//! the end of the window, never 0. Unlike the sliding window, a client can spend the limit at the end
//! of one window and again at the start of the next: up to twice the limit in a short span.
//!
//! A denied request waits for the next window, where the count starts again from 0; a cost above
//! the limit never passes.

use super::{Quota, Verdict};

/// The stored state of one key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fixed {
    /// Start of the window counted, a multiple of the window length.
    pub start_ms: u64,
    pub count: u64,
}

impl Fixed {
    /// The count of the window that contains `now`: 0 once the stored window has ended. A state
    /// from a window later than `now` (a clock that stepped back) is kept rather than forgotten.
    pub fn at(self, now: u64, window_ms: u64) -> Fixed {
        let start = now - now % window_ms;
        if self.start_ms >= start { self } else { Fixed { start_ms: start, count: 0 } }
    }
}

/// Decides one request against one key; returns the verdict and the state to store if the request
/// is consumed.
pub fn check(state: Fixed, now: u64, q: Quota) -> (Verdict, Fixed) {
    let s = state.at(now, q.window_ms);
    let after = s.count.saturating_add(q.cost).min(super::MAX_COUNT);
    let allowed = after <= q.limit;
    // Until the window ends: at least 1 ms, since `now` lies inside it.
    let reset = (s.start_ms + q.window_ms).saturating_sub(now).max(1);
    let verdict = Verdict {
        allowed,
        remaining: if allowed { q.limit - after } else { q.limit.saturating_sub(s.count) },
        retry_after_ms: if allowed { 0 } else { reset },
        reset_after_ms: reset,
        limit: q.limit,
        ..Verdict::default()
    };
    (verdict, Fixed { count: after, ..s })
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: Quota = Quota { limit: 3, window_ms: 60_000, cost: 1 };

    fn run(state: &mut Fixed, now: u64, q: Quota) -> Verdict {
        let (v, next) = check(*state, now, q);
        if v.allowed {
            *state = next;
        }
        v
    }

    #[test]
    fn counts_up_to_the_limit_and_resets_at_the_window_edge() {
        let mut s = Fixed::default();
        // 1234.5 s: the minute that started at 1200 s ends 25.5 s later.
        for i in 0..3 {
            let v = run(&mut s, 1_234_500, Q);
            assert!(v.allowed, "request {i}");
            assert_eq!((v.remaining, v.reset_after_ms), (2 - i, 25_500));
        }
        let v = run(&mut s, 1_234_500, Q);
        assert!(!v.allowed);
        assert_eq!((v.remaining, v.retry_after_ms, v.reset_after_ms), (0, 25_500, 25_500));
        // The last millisecond of the window, then the first of the next: a fresh count.
        assert!(!run(&mut s, 1_259_999, Q).allowed);
        assert_eq!(check(s, 1_259_999, Q).0.reset_after_ms, 1);
        let v = run(&mut s, 1_260_000, Q);
        assert!(v.allowed);
        assert_eq!((v.remaining, v.reset_after_ms), (2, 60_000));
    }

    #[test]
    fn a_look_never_counts_and_a_cost_above_the_limit_never_passes() {
        let full = Fixed { start_ms: 0, count: 3 };
        let look = Quota { cost: 0, ..Q };
        let (v, next) = check(full, 10, look);
        assert!(v.allowed, "a look at a count equal to the limit passes");
        assert_eq!((v.remaining, next.count), (0, 3));
        let (v, _) = check(Fixed::default(), 10, Quota { cost: 4, ..Q });
        assert!(!v.allowed);
        assert_eq!(v.reset_after_ms, 59_990, "the end of the window, not 0");
        let (v, next) = check(Fixed { start_ms: 0, count: u64::MAX }, 10, Quota { cost: u64::MAX, ..Q });
        assert!(!v.allowed);
        assert_eq!(next.count, super::super::MAX_COUNT, "saturates, never wraps");
    }
}
