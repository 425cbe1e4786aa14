//! The vocabulary every layer shares: what the engine asks a store (`Check`), how (`Mode`), and what
//! it answers (`Answer`), with the settings a check carries from its tier or descriptor.
//!
//! Nothing here decides anything; `engine` builds these, `store` decides them, `algorithm` does the
//! arithmetic.

use std::sync::Arc;

use crate::algorithm::adaptive::Adaptive;
use crate::algorithm::baseline::Baseline;
use crate::algorithm::penalty::Penalty;
use crate::algorithm::{Algorithm, Quota, Verdict};

/// One tier-key of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// `sluice:{<tier>:<identity>}`: stores append their own suffixes after the hash tag.
    pub key: String,
    pub algorithm: Algorithm,
    pub quota: Quota,
    /// Evaluated and reported, never denies.
    pub shadow: bool,
    /// One of the request's quotas (Envoy's `quota_mode`): over its limit it denies the request only
    /// when every quota-mode check of the request is over (see `algorithm::admits`).
    pub quota_mode: bool,
    /// What the fallback does with this check while Redis is unavailable.
    pub on_failure: FailureMode,
    /// Present when the tier's limit adapts to the threat score.
    pub adaptive: Option<AdaptiveCheck>,
    /// Present when repeated violations block the key.
    pub penalty: Option<Penalty>,
    /// What consumes the tier's quota.
    pub counts: Counts,
    /// Present when a heavy key's typical volume may raise its limit (sliding windows only).
    pub baseline: Option<Baseline>,
}

impl Check {
    /// Whether the repeats of this check's key in one request are decided one after another,
    /// each counted before the next is looked at and each against its own limit, as
    /// envoyproxy/ratelimit counts them: when it counts everything it is asked (its units count
    /// whatever the request's fate) and the request is consumed. Stores write such a check as soon
    /// as it is decided; other repeats merge (`store::Merged`).
    pub fn in_sequence(&self, mode: Mode) -> bool {
        mode == Mode::Consume && self.counts == Counts::Everything
    }

    /// A check that counts admitted requests and nothing more: not shadow, not adaptive, no
    /// penalty or baseline.
    pub fn plain(key: String, algorithm: Algorithm, quota: Quota, on_failure: FailureMode) -> Check {
        Check {
            key,
            algorithm,
            quota,
            shadow: false,
            quota_mode: false,
            on_failure,
            adaptive: None,
            penalty: None,
            counts: Counts::Requests,
            baseline: None,
        }
    }
}

/// What a tier gets while Redis is unavailable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailureMode {
    /// Counted in this replica's fair share of the limit.
    #[default]
    Local,
    /// Fail open: allowed, not counted.
    Allow,
    /// Fail closed: denied.
    Deny,
}

/// What consumes a tier's quota.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Counts {
    /// Every admitted request.
    #[default]
    Requests,
    /// Only failures reported afterwards (e.g. failed logins): checks deny once the quota is used
    /// up, but do not consume it.
    Failures,
    /// Every request that is not a dry run, denied or not, whatever the other tiers say: how
    /// envoyproxy/ratelimit counts (sliding_window tiers only).
    Everything,
}

impl Counts {
    /// The code the Lua script reads.
    pub fn code(self) -> u8 {
        match self {
            Counts::Failures => 0,
            Counts::Requests => 1,
            Counts::Everything => 2,
        }
    }
}

/// One reported failure on one tier-key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The tier-key, as in `Check::key`.
    pub key: String,
    pub window_ms: u64,
    /// Counts toward the failed-logins factor.
    pub adaptive: bool,
    /// Counts as a violation.
    pub penalty: Option<Penalty>,
}

/// The adaptive part of a check: the tier's settings, what the request itself gave away, and the
/// reputation keys of its IP and user (shared by every adaptive check of the request).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdaptiveCheck {
    pub settings: Adaptive,
    pub client_factors: u8,
    pub reputation: Arc<[String]>,
}

/// Whether an admitted request consumes its cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Consume,
    DryRun,
}

/// Where a decision came from, for metrics and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Redis,
    Local,
    /// The in-process buckets answered because Redis failed or missed its deadline.
    Fallback,
    /// Answered at once by the failure mode: Sluice was overloaded or the caller's deadline could
    /// not be met.
    Shed,
    /// The over-limit cache denied it without asking the store.
    Cache,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Redis => "redis",
            Source::Local => "local",
            Source::Fallback => "fallback",
            Source::Shed => "shed",
            Source::Cache => "cache",
        }
    }
}

/// A store's answer for one request: one verdict per check, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub admitted: bool,
    pub verdicts: Vec<Verdict>,
    pub source: Source,
}

/// What operators do to stored state. Keys are reputation keys (`tier::reputation_keys`) or
/// tier-keys (`Tier::key_for`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminOp<'a> {
    SetReputation { key: &'a str, ttl_ms: u64 },
    ClearReputation { key: &'a str },
    Unblock { key: &'a str },
    Reset { key: &'a str },
    Inspect { key: &'a str },
}

/// A hostile request denied: what was seen and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecurityEvent {
    pub tier: Arc<str>,
    pub score: u8,
    pub factors: u8,
    pub correlation_id: String,
}

impl SecurityEvent {
    /// `(field, value)` pairs, as written to the stream.
    pub fn fields(&self) -> [(&'static str, String); 4] {
        [
            ("tier", self.tier.to_string()),
            ("score", self.score.to_string()),
            ("factors", crate::algorithm::adaptive::factor_names(self.factors).collect::<Vec<_>>().join(",")),
            ("correlation_id", self.correlation_id.clone()),
        ]
    }
}
