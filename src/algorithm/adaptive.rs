//! The adaptive threat score: how hostile a request looks, 0 to 100, and how much it shrinks a
//! tier's limit. The pure twin of `lua/adaptive.lua`; `threat` finds the client-side factors.
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
//! `floor(limit * (1 - score / 200))`), and never below 1. The client-side factors are computed
//! once per request in Rust; the store adds its own inside the same atomic decision.

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
}
