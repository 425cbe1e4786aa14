//! Pure rate-limit arithmetic: `(state, now, limit, cost) -> (verdict, new state)`.
//!
//! Nothing here does I/O or reads a clock; the caller passes `now` in milliseconds. The algorithms
//! Redis runs (sliding window, sliding log, penalty, baseline, adaptive) each have a twin in `lua/`
//! that must give the same answers for the same instants, which the differential and model tests
//! hold them to; `token_bucket` serves the in-process fallback only and has none.

pub mod adaptive;
pub mod baseline;
pub mod fixed_window;
pub mod penalty;
pub mod sliding_log;
pub mod sliding_window;
pub mod token_bucket;

use std::fmt;

/// How a tier counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Two fixed-window counters, the previous weighted by its overlap with the sliding window.
    #[default]
    SlidingWindow,
    /// One timestamp per unit consumed: exact, for small limits such as logins.
    SlidingLog,
    /// One count per window aligned to the epoch: envoyproxy/ratelimit's counting, with its burst
    /// of up to twice the limit across a window's edge.
    FixedWindow,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::SlidingWindow => "sliding_window",
            Algorithm::SlidingLog => "sliding_log",
            Algorithm::FixedWindow => "fixed_window",
        }
    }

    /// The code the Lua script dispatches on.
    pub fn code(self) -> u8 {
        match self {
            Algorithm::SlidingWindow => 1,
            Algorithm::SlidingLog => 2,
            Algorithm::FixedWindow => 3,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The numbers one tier applies to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub limit: u64,
    pub window_ms: u64,
    /// Units this request consumes. 0 looks without consuming (an Envoy descriptor's `hits_addend`
    /// of 0). Any value is safe: a cost above the limit is denied, and counts saturate at
    /// `MAX_COUNT` rather than wrap.
    pub cost: u64,
}

/// Where stored counts saturate: the largest integer that Lua's doubles hold exactly, so Rust and
/// the scripts agree to the unit. Configured limits are far below it, so a count held here is over
/// every limit.
pub const MAX_COUNT: u64 = (1 << 53) - 1;

/// Where configured limits stop so that counts stay exact in Lua's doubles: a limit times its window
/// in milliseconds stays far below 2^53.
pub const MAX_LIMIT_TIMES_WINDOW: u128 = 1 << 50;

/// A sliding log keeps one entry per unit, so its limit is capped.
pub const MAX_LOG_LIMIT: u64 = 10_000;

/// What one tier says about one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// Units left after this request (when allowed) or now (when denied).
    pub remaining: u64,
    /// Shortest wait after which the same request would be allowed: 0 when allowed, unless the
    /// request was denied by another tier and this one counted its units anyway.
    pub retry_after_ms: u64,
    /// Time until the count is back to zero, assuming this request was consumed if allowed.
    pub reset_after_ms: u64,
    /// The limit applied: the tier's own, or less for a request that looks hostile.
    pub limit: u64,
    /// Threat score (0-100) and factor bits (see `threat`); 0 unless the tier is adaptive.
    pub score: u8,
    pub factors: u8,
}

impl Verdict {
    /// A denied request whose units this tier counted all the same (it counts denied requests):
    /// the wait is measured from the state they leave, as a retry would find it, so an honest
    /// retry-after covers this tier too even where it allowed the request. A tier that denied also
    /// reports what is left and the reset from that state.
    pub fn after_counting(&mut self, after: Verdict) {
        self.retry_after_ms = after.retry_after_ms;
        if !self.allowed {
            self.remaining = after.remaining;
            self.reset_after_ms = after.reset_after_ms;
        }
    }
}

/// Whether a request is admitted, from each of its checks' verdict, shadow flag and quota mode:
/// every enforcing (not shadow) check allows it, and when it has quota-mode checks, at least one of
/// them is within its quota (a shadow one always is), as envoyproxy/ratelimit decides.
pub fn admits<'a>(verdicts: impl IntoIterator<Item = (&'a Verdict, bool, bool)>) -> bool {
    let (mut quotas, mut quota_within) = (0usize, false);
    for (v, shadow, quota_mode) in verdicts {
        if quota_mode {
            quotas += 1;
            quota_within |= v.allowed || shadow;
        } else if !v.allowed && !shadow {
            return false;
        }
    }
    quotas == 0 || quota_within
}
