//! The client-side factors of the adaptive threat score (see `algorithm::adaptive`): what the
//! request itself gives away, checked once per request against the configured lists.

use std::net::IpAddr;
use std::sync::Arc;

use crate::algorithm::adaptive::{Adaptive, DENY_RANGE, PARAMETERS, USER_AGENT};
use crate::check::AdaptiveCheck;
use crate::request::{Attributes, reputation_keys};

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
    /// The adaptive part of a check with `settings` for this request. The request's reputation keys
    /// are made once (`reputation`) and shared by all of its adaptive checks.
    pub fn adaptive_check(
        &self,
        settings: Adaptive,
        attrs: &Attributes,
        reputation: &mut Option<Arc<[String]>>,
    ) -> AdaptiveCheck {
        AdaptiveCheck {
            settings,
            client_factors: self.client_factors(&settings, attrs),
            reputation: Arc::clone(reputation.get_or_insert_with(|| reputation_keys(attrs).into())),
        }
    }

    /// The client-side factor bits of a request for a tier with `adaptive`.
    pub fn client_factors(&self, adaptive: &Adaptive, attrs: &Attributes) -> u8 {
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
