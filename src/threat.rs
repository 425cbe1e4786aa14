//! The adaptive threat score: how hostile a request looks, 0 to 100, and how much it shrinks a
//! tier's limit.
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

use std::net::IpAddr;

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

/// An address range such as `203.0.113.0/24` or `2001:db8::/32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let bad = || format!("{text:?} is not a CIDR range such as 203.0.113.0/24 or 2001:db8::/32");
        let (addr, prefix) = text.split_once('/').ok_or_else(bad)?;
        let network: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.trim().parse().map_err(|_| bad())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(format!("{text:?}: the prefix length must be at most {max}"));
        }
        Ok(Cidr { network, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // Compare like with like: an IPv4 range also holds IPv4-mapped IPv6 addresses.
        let ip = match (self.network, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map(IpAddr::V4),
            (IpAddr::V6(_), IpAddr::V4(v4)) => Some(IpAddr::V6(v4.to_ipv6_mapped())),
            _ => Some(ip),
        };
        let same_prefix = |net: u128, addr: u128, width: u32| {
            let shift = width - u32::from(self.prefix);
            shift >= width || net >> shift == addr >> shift
        };
        match (self.network, ip) {
            (IpAddr::V4(net), Some(IpAddr::V4(addr))) => {
                same_prefix(u128::from(u32::from(net)), u128::from(u32::from(addr)), 32)
            }
            (IpAddr::V6(net), Some(IpAddr::V6(addr))) => same_prefix(u128::from(net), u128::from(addr), 128),
            _ => false,
        }
    }
}

/// What the request itself says, checked once per request against the global lists.
#[derive(Debug, Default)]
pub struct Signals {
    pub patterns: Option<regex::RegexSet>,
    pub deny_ranges: Vec<Cidr>,
}

impl Signals {
    /// The client-side factor bits of a request for a tier with `adaptive`.
    pub fn client_factors(&self, adaptive: &Adaptive, attrs: &crate::tier::Attributes) -> u8 {
        let mut bits = 0;
        if attrs.user_agent.chars().count() < adaptive.min_user_agent_len {
            bits |= USER_AGENT;
        }
        if let Some(patterns) = &self.patterns
            && (patterns.is_match(&attrs.endpoint) || attrs.extra.values().any(|v| patterns.is_match(v)))
        {
            bits |= PARAMETERS;
        }
        if !self.deny_ranges.is_empty()
            && let Ok(ip) = attrs.ip.parse::<IpAddr>()
            && self.deny_ranges.iter().any(|r| r.contains(ip))
        {
            bits |= DENY_RANGE;
        }
        bits
    }
}

/// Patterns for suspicious parameters used when the configuration names none: path traversal,
/// script injection and common SQL injection.
pub const DEFAULT_PATTERNS: &[&str] = &[
    r"\.\./",
    r"\.\.\\",
    r"%2e%2e(%2f|%5c|/|\\)",
    r"<\s*script",
    r"javascript:",
    r"\bon(error|load)\s*=",
    r"'\s*or\s+'?\d+'?\s*=\s*'?\d+",
    r"\bunion\s+(all\s+)?select\b",
    r";\s*drop\s+table\b",
    r"'\s*;?\s*--",
];

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
    fn cidr_ranges() {
        let r = Cidr::parse("203.0.113.0/24").expect("cidr");
        assert!(r.contains("203.0.113.77".parse().expect("ip")));
        assert!(!r.contains("203.0.114.1".parse().expect("ip")));
        assert!(r.contains("::ffff:203.0.113.9".parse().expect("ip")));
        let v6 = Cidr::parse("2001:db8::/32").expect("cidr");
        assert!(v6.contains("2001:db8:1::5".parse().expect("ip")));
        assert!(!v6.contains("2001:db9::1".parse().expect("ip")));
        assert!(Cidr::parse("0.0.0.0/0").expect("cidr").contains("8.8.8.8".parse().expect("ip")));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("10.0.0.0").is_err());
        assert!(Cidr::parse("10.0.0.0/8").expect("cidr").contains("10.255.0.1".parse().expect("ip")));
    }

    #[test]
    fn default_patterns_catch_the_classics() {
        let set =
            regex::RegexSetBuilder::new(DEFAULT_PATTERNS).case_insensitive(true).build().expect("patterns");
        for hostile in [
            "/files/../../etc/passwd",
            "/a?q=<SCRIPT>alert(1)",
            "/s?q=' OR 1=1",
            "x UNION SELECT pw",
            "%2E%2E%2Fetc",
        ] {
            assert!(set.is_match(hostile), "{hostile}");
        }
        for fine in ["/api/v1/users/42", "/search?q=rock and roll", "/docs/v1.2/intro"] {
            assert!(!set.is_match(fine), "{fine}");
        }
    }
}
