//! The adaptive threat score: how hostile a request looks, 0 to 100, and how much it shrinks a
//! tier's limit. The pure twin of `lua/adaptive.lua` (`Count` of `adaptive_count`, `assess` of
//! `adaptive_assess`), used by the in-process store; `threat` finds the client-side factors.
//!
//! Factors, each adding its weight once:
//!
//! | factor | decided | when |
//! |---|---|---|
//! | `user_agent` | here | the user agent is missing or shorter than a configured length |
//! | `parameters` | here | the endpoint or a free-form attribute matches a suspicious pattern |
//! | `deny_range` | here | the IP lies in a configured deny range (CIDR) |
//! | `reputation` | in the store | an operator marked the IP or the user as bad (with a TTL) |
//! | `burst` | in the store | attempts on this tier-key in the current window exceed a multiple of the limit |
//! | `failed_logins` | in the store | reported failures on this tier-key in the window reach a threshold |
//!
//! The score is the sum, capped at 100; the effective limit is
//! `floor(limit * (1 - score * reduction / 10000))` with `reduction` in percent (50 by default, so
//! `floor(limit * (1 - score / 200))`), and never below 1 nor below the request's cost. The
//! client-side factors are computed once per request in Rust; the store adds its own inside the
//! same atomic decision, from the counts it keeps per tier-key (`Count`) and the reputation marks.

/// Factor bits, as they travel between Rust, the store and Lua.
pub const USER_AGENT: u8 = 1;
pub const PARAMETERS: u8 = 2;
pub const DENY_RANGE: u8 = 4;
pub const REPUTATION: u8 = 8;
pub const BURST: u8 = 16;
pub const FAILED_LOGINS: u8 = 32;

pub const FACTORS: [(u8, &str); 6] = [
    (USER_AGENT, "user_agent"),
    (PARAMETERS, "parameters"),
    (DENY_RANGE, "deny_range"),
    (REPUTATION, "reputation"),
    (BURST, "burst"),
    (FAILED_LOGINS, "failed_logins"),
];

/// The names of the factors set in `bits`.
pub fn factor_names(bits: u8) -> impl Iterator<Item = &'static str> {
    FACTORS.into_iter().filter(move |(bit, _)| bits & bit != 0).map(|(_, name)| name)
}

/// Points each factor adds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Weights {
    pub user_agent: u8,
    pub parameters: u8,
    pub deny_range: u8,
    pub reputation: u8,
    pub burst: u8,
    pub failed_logins: u8,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            user_agent: 20,
            parameters: 40,
            deny_range: 50,
            reputation: 50,
            burst: 30,
            failed_logins: 30,
        }
    }
}

impl Weights {
    /// The score of the factors in `bits`, capped at 100.
    pub fn score(&self, bits: u8) -> u8 {
        let points = [
            (USER_AGENT, self.user_agent),
            (PARAMETERS, self.parameters),
            (DENY_RANGE, self.deny_range),
            (REPUTATION, self.reputation),
            (BURST, self.burst),
            (FAILED_LOGINS, self.failed_logins),
        ];
        let sum: u32 = points.iter().filter(|(bit, _)| bits & bit != 0).map(|(_, w)| u32::from(*w)).sum();
        sum.min(100) as u8
    }
}

/// A tier's adaptive settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Adaptive {
    pub weights: Weights,
    /// A user agent shorter than this counts as missing.
    pub min_user_agent_len: usize,
    /// Attempts above `burst_multiple * limit` in the window make a burst.
    pub burst_multiple: u64,
    /// This many reported failures in the window set the failed-logins factor.
    pub failed_logins: u64,
    /// Percent of the limit that a score of 100 takes away.
    pub reduction_percent: u8,
    /// A denial scoring at least this writes a security event.
    pub event_threshold: u8,
}

impl Default for Adaptive {
    fn default() -> Self {
        Adaptive {
            weights: Weights::default(),
            min_user_agent_len: 10,
            burst_multiple: 2,
            failed_logins: 3,
            reduction_percent: 50,
            event_threshold: 50,
        }
    }
}

/// `floor(limit * (1 - score * reduction / 10000))`, at least 1.
pub fn effective_limit(limit: u64, score: u8, reduction_percent: u8) -> u64 {
    let keep = 10_000 - u128::from(score.min(100)) * u128::from(reduction_percent.min(100));
    u64::try_from(u128::from(limit) * keep / 10_000).unwrap_or(u64::MAX).max(1)
}

/// A count that restarts one window after its first unit: attempts or reported failures on one
/// tier-key. The twin of `adaptive_count` in lua/adaptive.lua.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Count {
    /// When the count restarts.
    pub reset_at: u64,
    pub count: u64,
}

impl Count {
    /// Adds `units` at `now` (0 reads only); answers the count in the current window.
    pub fn add(&mut self, now: u64, window_ms: u64, units: u64) -> u64 {
        let (reset_at, count) = if self.count == 0 || now >= self.reset_at {
            (now + window_ms, 0)
        } else {
            (self.reset_at, self.count)
        };
        if units > 0 {
            *self = Count { reset_at, count: count + units };
        }
        count + units
    }
}

/// What the store holds about one request on one adaptive tier-key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// An operator marked the request's IP or user as bad.
    pub bad_reputation: bool,
    /// Attempts on the tier-key in the current window, this one included when it counted.
    pub attempts: u64,
    /// Whether this attempt counted (neither a dry run nor a look): then a retry is one more.
    pub counted: bool,
    /// Failures reported on the tier-key in the current window.
    pub failures: u64,
}

/// What the threat score makes of one request on one tier-key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Assessment {
    pub score: u8,
    /// The client's factor bits and the store's.
    pub factors: u8,
    /// The limit the request is decided with.
    pub limit: u64,
    /// The limit a retry would be decided with: one more attempt may cross the burst threshold,
    /// so an honest retry-after is measured with it.
    pub retry_limit: u64,
}

/// Everything `adaptive_assess` in lua/adaptive.lua computes: the store-side factors on top of the
/// client's, the score, and the limits they leave. `configured` is the tier's limit, which the
/// burst threshold multiplies; `limit` is the one the score shrinks (the configured one, raised by
/// a baseline, or a replica's share); the shrunk limit never goes below `cost`, or no wait would
/// let the request pass.
pub fn assess(
    settings: &Adaptive,
    client_factors: u8,
    tally: Tally,
    configured: u64,
    limit: u64,
    cost: u64,
) -> Assessment {
    let factors_with = |attempts: u64| {
        let mut bits = client_factors;
        if tally.bad_reputation {
            bits |= REPUTATION;
        }
        if attempts > settings.burst_multiple.saturating_mul(configured) {
            bits |= BURST;
        }
        if tally.failures >= settings.failed_logins {
            bits |= FAILED_LOGINS;
        }
        bits
    };
    let limit_with = |bits: u8| {
        effective_limit(limit, settings.weights.score(bits), settings.reduction_percent).max(cost.min(limit))
    };
    let factors = factors_with(tally.attempts);
    let retry_factors = factors_with(tally.attempts.saturating_add(u64::from(tally.counted)));
    Assessment {
        score: settings.weights.score(factors),
        factors,
        limit: limit_with(factors),
        retry_limit: limit_with(retry_factors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_and_effective_limits() {
        let w = Weights::default();
        assert_eq!(w.score(USER_AGENT | REPUTATION), 70);
        assert_eq!(effective_limit(100, 70, 50), 65);
        assert_eq!(w.score(0xFF), 100);
        assert_eq!(effective_limit(100, 100, 50), 50);
        assert_eq!(effective_limit(1, 100, 100), 1, "never below 1");
        assert_eq!(factor_names(USER_AGENT | BURST).collect::<Vec<_>>(), ["user_agent", "burst"]);
    }

    #[test]
    fn a_count_restarts_one_window_after_its_first_unit() {
        let mut c = Count::default();
        assert_eq!(c.add(1_000, 100, 0), 0, "a read leaves nothing");
        assert_eq!(c.add(1_000, 100, 1), 1);
        assert_eq!(c.add(1_099, 100, 2), 3);
        assert_eq!(c.add(1_100, 100, 0), 0, "restarted");
        assert_eq!(c.add(1_100, 100, 1), 1);
    }

    #[test]
    fn the_store_side_factors_shrink_the_limit_and_a_retry_sees_the_burst_it_crosses() {
        let s = Adaptive::default();
        // Attempts at the burst threshold (2 x 10): no burst yet, but one more attempt crosses it.
        let tally = Tally { bad_reputation: true, attempts: 20, counted: true, failures: 3 };
        let a = assess(&s, USER_AGENT, tally, 10, 10, 1);
        assert_eq!(a.factors, USER_AGENT | REPUTATION | FAILED_LOGINS);
        assert_eq!((a.score, a.limit), (100, 5));
        assert_eq!(a.retry_limit, 5, "the score was already at its cap");
        let a = assess(&s, 0, Tally { attempts: 20, counted: true, ..Tally::default() }, 10, 30, 1);
        assert_eq!((a.score, a.limit, a.retry_limit), (0, 30, 25), "burst weighs 30: 30 * 0.85");
        let dry = assess(&s, 0, Tally { attempts: 20, counted: false, ..Tally::default() }, 10, 30, 1);
        assert_eq!(dry.retry_limit, 30, "a dry run adds no attempt");
        let big = assess(&s, 0, Tally { bad_reputation: true, ..Tally::default() }, 10, 10, 9);
        assert_eq!(big.limit, 9, "never below the request's own cost");
    }
}
