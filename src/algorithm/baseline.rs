//! Behavioural baseline: a per-key moving average of the units consumed per window, which lets a
//! consistently heavy client go above the base limit, up to `typical * sensitivity`, capped at
//! `limit * max_percent / 100`, and never below the base limit. Twin of lua/baseline.lua.
//!
//! The average is kept in thousandths of a unit and moves by 1/8 per completed window (an
//! exponentially weighted moving average): `avg = avg - avg / 8 + count * 1000 / 8`. Windows with
//! no traffic count as zero. It is folded from the sliding window's own counters, when they roll
//! over, so it costs no extra counting.

/// Windows an average is kept without traffic (the Redis key and the in-process cell are kept
/// one window more, counted from the start of the window last folded: at least this many after
/// the last write); after that many quiet windows it would have faded to nothing anyway.
pub const KEPT_WINDOWS: u64 = 64;

/// A window's units count at most this many toward the average (a `count_denied` key can hold up
/// to `MAX_COUNT`), so the average, about 1000 times a window's units, stays exact in Lua's doubles.
pub const MAX_UNITS: u64 = super::MAX_COUNT / 1000;

/// A tier's baseline settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Baseline {
    /// Percent of the typical volume allowed (e.g. 150).
    pub sensitivity_percent: u64,
    /// The most the limit can grow to, in percent of the base limit (e.g. 300).
    pub max_percent: u64,
}

/// The average folded up to the window that starts at `now_start`: every window from `folded`
/// (the first one not folded yet; 0 when nothing was) to `now_start`, each with its units: `count`
/// for the window that started at `start_ms` (the sliding window's current one), 0 for the others.
/// Returns the new average and the new `folded`.
pub fn fold(
    avg_milli: u64,
    folded: u64,
    start_ms: u64,
    count: u64,
    now_start: u64,
    window_ms: u64,
) -> (u64, u64) {
    let from = match folded {
        0 if start_ms > 0 => start_ms,
        0 => now_start,
        w => w,
    };
    if from >= now_start {
        return (avg_milli, from);
    }
    let windows = (now_start - from) / window_ms;
    if windows > KEPT_WINDOWS {
        return (0, now_start);
    }
    let mut avg = avg_milli;
    for i in 0..windows {
        let units = if from + i * window_ms == start_ms { count.min(MAX_UNITS) } else { 0 };
        avg = avg - avg / 8 + units * 125;
    }
    (avg, now_start)
}

/// The limit a key may use given its typical volume.
pub fn limit(base: u64, avg_milli: u64, b: Baseline) -> u64 {
    let typical = avg_milli / 1000;
    let raised = typical.saturating_mul(b.sensitivity_percent) / 100;
    let cap = base.saturating_mul(b.max_percent) / 100;
    base.max(raised.min(cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_heavy_client_earns_more_up_to_the_cap() {
        let b = Baseline { sensitivity_percent: 150, max_percent: 300 };
        let (window, base) = (1_000, 10);
        let (mut avg, mut folded) = (0, 0);
        let mut allowed = base;
        for w in 1..200u64 {
            // The client uses its whole allowance every window.
            (avg, folded) = fold(avg, folded, w * window, allowed, (w + 1) * window, window);
            allowed = limit(base, avg, b);
        }
        assert_eq!(allowed, 30, "capped at 300% of the base");
        assert_eq!(limit(base, 0, b), 10, "never below the base");
        // Quiet windows count as zero, even when the sliding window's own state is gone.
        let (quiet, _) = fold(avg, folded, 0, 0, folded + 5 * window, window);
        assert!(quiet < avg * 6 / 10, "{quiet} after five quiet windows, from {avg}");
        assert_eq!(fold(8_000, 1_000, 0, 0, 100_000, 1_000), (0, 100_000), "a long silence forgets");
    }
}
