//! The answer to one request, and the headers a gateway forwards with it, for both APIs.
//!
//! Headers follow the IETF draft's structured fields by default (`Headers::Draft`): `RateLimit-Policy: "tier";q=100;w=60` per tier
//! checked, `RateLimit: "tier";r=12;t=30` for the deciding tier, and `Retry-After` (whole seconds,
//! rounded up) on a denial.

use std::sync::Arc;

use crate::algorithm::Verdict;
use crate::check::{Answer, Source};
use crate::tier::Limit;

/// Which rate limit headers go back to the gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Headers {
    /// The IETF draft's `RateLimit-Policy` and `RateLimit`, and `Retry-After` when over.
    Draft,
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`.
    XRateLimit,
    /// `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (whole seconds, at least 1), and
    /// nothing else: envoyproxy/ratelimit's headers (`LIMIT_RESPONSE_HEADERS_ENABLED`).
    RateLimit,
    None,
}

/// One tier's part in a decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TierStatus {
    pub tier: Arc<str>,
    pub limit: Limit,
    pub verdict: Verdict,
    pub shadow: bool,
}

impl TierStatus {
    /// Shadow tiers report what they would have done but never deny.
    pub fn denies(&self) -> bool {
        !self.verdict.allowed && !self.shadow
    }

    pub fn label(&self) -> &'static str {
        match (self.verdict.allowed, self.shadow) {
            (true, _) => "allow",
            (false, false) => "deny",
            (false, true) => "shadow_deny",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub retry_after_ms: u64,
    pub limit: u64,
    pub remaining: u64,
    pub reset_after_ms: u64,
    /// The deciding tier; `None` when no tier applied.
    pub tier: Option<Arc<str>>,
    pub statuses: Vec<TierStatus>,
    /// Where counts came from; `None` when no store was asked (exempt, or nothing matched).
    pub source: Option<Source>,
    /// The highest threat score of the tiers checked, and its factor bits.
    pub threat_score: u8,
    pub threat_factors: u8,
}

impl Decision {
    /// Allowed without counting: an exempt tier matched, or no limited tier did.
    pub fn uncounted(tier: Option<Arc<str>>) -> Decision {
        Decision {
            allowed: true,
            retry_after_ms: 0,
            limit: 0,
            remaining: 0,
            reset_after_ms: 0,
            tier,
            statuses: Vec::new(),
            source: None,
            threat_score: 0,
            threat_factors: 0,
        }
    }

    /// Builds the decision from a store's outcome; `tiers` are in the order of the checks.
    pub fn counted(tiers: Vec<(Arc<str>, Limit, bool)>, outcome: Answer) -> Decision {
        let statuses: Vec<TierStatus> = tiers
            .into_iter()
            .zip(outcome.verdicts)
            .map(|((tier, mut limit, shadow), mut verdict)| {
                // An adaptive tier may have applied less than its configured limit.
                limit.limit = verdict.limit.max(1);
                if verdict.allowed && !outcome.admitted {
                    // Another tier denied, so this one consumed nothing: report what is left now.
                    verdict.remaining = verdict.remaining.saturating_add(limit.cost).min(limit.limit);
                }
                TierStatus { tier, limit, verdict, shadow }
            })
            .collect();
        let deciding = deciding(&statuses, |s| (&s.verdict, s.shadow));
        // Denied: the longest wait of any enforcing tier, including one that allowed but counted
        // the request's units anyway and would deny the retry until then.
        let retry = if outcome.admitted {
            0
        } else {
            statuses.iter().filter(|s| !s.shadow).map(|s| s.verdict.retry_after_ms).max().unwrap_or(0)
        };
        let (tier, limit, remaining, reset) = deciding.map_or((None, 0, 0, 0), |s| {
            (Some(Arc::clone(&s.tier)), s.limit.limit, s.verdict.remaining, s.verdict.reset_after_ms)
        });
        let threat = statuses
            .iter()
            .max_by_key(|s| s.verdict.score)
            .map_or((0, 0), |s| (s.verdict.score, s.verdict.factors));
        Decision {
            allowed: outcome.admitted,
            retry_after_ms: retry,
            limit,
            remaining,
            reset_after_ms: reset,
            tier,
            statuses,
            source: Some(outcome.source),
            threat_score: threat.0,
            threat_factors: threat.1,
        }
    }

    /// `(name, value)` pairs to forward to the client, in the draft's form.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let Some(deciding) = self.tier.as_ref().and_then(|t| self.statuses.iter().find(|s| &s.tier == t))
        else {
            return Vec::new();
        };
        fn described(s: &TierStatus) -> Described<'_> {
            Described { name: s.tier.as_ref().into(), limit: s.limit.limit, window_ms: s.limit.window_ms }
        }
        let policies: Vec<Described> = self.statuses.iter().map(described).collect();
        let retry = (!self.allowed).then_some(self.retry_after_ms);
        render(Headers::Draft, &policies, &described(deciding), self.remaining, self.reset_after_ms, retry)
    }
}

/// The limit a response describes: when some enforcing limit denies, the denying one with the
/// longest wait; otherwise the enforcing one with the least remaining (the first when every limit
/// is shadow). `verdict` gives an item's verdict and whether it is shadow.
pub fn deciding<T>(items: &[T], verdict: impl Fn(&T) -> (&Verdict, bool)) -> Option<&T> {
    let denies = |t: &&T| {
        let (v, shadow) = verdict(t);
        !v.allowed && !shadow
    };
    if items.iter().any(|t| denies(&t)) {
        return items.iter().filter(denies).max_by_key(|t| verdict(t).0.retry_after_ms);
    }
    items.iter().filter(|t| !verdict(t).1).min_by_key(|t| verdict(t).0.remaining).or_else(|| items.first())
}

/// One limit as the headers name it.
#[derive(Clone, Debug)]
pub struct Described<'a> {
    pub name: std::borrow::Cow<'a, str>,
    pub limit: u64,
    pub window_ms: u64,
}

/// The rate limit headers of one answer in the configured style: `policies` are every limit
/// checked, `deciding` the one the answer describes (see `deciding`), `retry_ms` present only when
/// denied with a wait that lets the request pass.
pub fn render(
    style: Headers,
    policies: &[Described<'_>],
    deciding: &Described<'_>,
    remaining: u64,
    reset_ms: u64,
    retry_ms: Option<u64>,
) -> Vec<(&'static str, String)> {
    let mut out = match style {
        Headers::None => return Vec::new(),
        Headers::RateLimit => {
            return vec![
                ("RateLimit-Limit", deciding.limit.to_string()),
                ("RateLimit-Remaining", remaining.to_string()),
                ("RateLimit-Reset", ceil_secs(reset_ms).max(1).to_string()),
            ];
        }
        Headers::XRateLimit => vec![
            ("X-RateLimit-Limit", deciding.limit.to_string()),
            ("X-RateLimit-Remaining", remaining.to_string()),
            ("X-RateLimit-Reset", ceil_secs(reset_ms).to_string()),
        ],
        Headers::Draft => {
            use std::fmt::Write;
            // Written in place: this runs on every decision.
            let mut policy = String::with_capacity(policies.iter().map(|p| p.name.len() + 32).sum());
            for (i, p) in policies.iter().enumerate() {
                let separator = if i == 0 { "" } else { ", " };
                let _ =
                    write!(policy, "{separator}\"{}\";q={};w={}", p.name, p.limit, ceil_secs(p.window_ms));
            }
            let mut current = String::with_capacity(deciding.name.len() + 32);
            let _ = write!(current, "\"{}\";r={remaining};t={}", deciding.name, ceil_secs(reset_ms));
            vec![("RateLimit-Policy", policy), ("RateLimit", current)]
        }
    };
    if let Some(retry) = retry_ms {
        out.push(("Retry-After", ceil_secs(retry).to_string()));
    }
    out
}

fn ceil_secs(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::Algorithm;

    fn limit(limit: u64, window_ms: u64) -> Limit {
        Limit { algorithm: Algorithm::SlidingWindow, limit, window_ms, cost: 1 }
    }

    #[test]
    fn the_longest_denial_decides_and_headers_follow_the_draft() {
        let verdict = |allowed, remaining, retry, limit| Verdict {
            allowed,
            remaining,
            retry_after_ms: retry,
            reset_after_ms: 30_000,
            limit,
            ..Verdict::default()
        };
        let outcome = Answer {
            admitted: false,
            verdicts: vec![verdict(true, 7, 0, 10), verdict(false, 0, 1_500, 5), verdict(false, 0, 9_001, 5)],
            source: Source::Local,
        };
        let d = Decision::counted(
            vec![
                ("ip".into(), limit(10, 60_000), false),
                ("user".into(), limit(5, 60_000), false),
                ("auth".into(), limit(5, 900_000), false),
            ],
            outcome,
        );
        assert!(!d.allowed);
        assert_eq!(d.tier.as_deref(), Some("auth"));
        assert_eq!(d.retry_after_ms, 9_001);
        // The allowing tier consumed nothing.
        assert_eq!(d.statuses[0].verdict.remaining, 8);
        let headers = d.headers();
        assert_eq!(
            headers[0],
            ("RateLimit-Policy", "\"ip\";q=10;w=60, \"user\";q=5;w=60, \"auth\";q=5;w=900".to_owned())
        );
        assert_eq!(headers[1], ("RateLimit", "\"auth\";r=0;t=30".to_owned()));
        assert_eq!(headers[2], ("Retry-After", "10".to_owned()));
    }
}
