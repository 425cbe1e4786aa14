//! Envoy's rate limit service semantics: which descriptors a request's domain limits (see
//! `domain`), one check per limited descriptor (`prepare`), and one status per descriptor from the
//! store's answer (`Prepared::finish`), as envoyproxy/ratelimit answers. The engine asks the store.
//!
//! As in that service, every limited descriptor counts its hits whether or not the request is over
//! (`count_denied`, on by default for these files), an unknown domain or an unmatched descriptor is
//! answered OK with nothing remaining, an unlimited one OK with `u32::MAX` remaining, and a limit
//! named in another matched limit's `replaces` is skipped.

pub mod domain;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::algorithm::{Algorithm, Quota, Verdict};
use crate::check::{Answer as StoreAnswer, Check, Counts, FailureMode, Mode};
use crate::metrics;
use crate::request::{Attributes, escape_into};
use crate::threat::Signals;
use domain::{Domain, RateLimit};

/// Every loaded domain, by name.
#[derive(Clone, Debug, Default)]
pub struct Domains {
    pub by_name: HashMap<String, Domain>,
    /// Count the hits of denied requests (the reference's default).
    pub count_denied: bool,
    /// How descriptors count unless their options say otherwise (`envoy.algorithm`).
    pub algorithm: Algorithm,
    /// Every descriptor in quota mode (`envoy.quota_mode`).
    pub quota_mode: bool,
    /// No request is denied: the overall code is OK even when a descriptor is over
    /// (`envoy.shadow_mode`, the reference's `SHADOW_MODE`).
    pub shadow_mode: bool,
    /// Answers carry dynamic metadata (`envoy.response_metadata`, the reference's
    /// `RESPONSE_DYNAMIC_METADATA`).
    pub response_metadata: bool,
    /// Descriptor entry keys that carry request attributes, for the adaptive threat score.
    pub attributes: Vec<(String, crate::request::Attr)>,
    /// Failure mode of descriptors that set none.
    pub default_failure: FailureMode,
}

/// One request descriptor: its entries, and an optional limit given in the request itself.
#[derive(Clone, Debug, Default)]
pub struct Descriptor {
    pub entries: Vec<(String, String)>,
    /// `(requests_per_unit, unit code)` from the request, which then bypasses the configuration.
    pub limit_override: Option<(u64, i32)>,
    /// This descriptor's own hits, if given: 0 looks without counting, even when the request's other
    /// descriptors count.
    pub hits: Option<u64>,
}

/// What one descriptor got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// No limit applies (unknown domain, no match, or replaced).
    Unmatched,
    Unlimited,
    Limited {
        rule: RateLimit,
        verdict: Verdict,
        shadow: bool,
        /// One of the request's quotas: over its limit it keeps its own OVER_LIMIT status, but
        /// denies the request only when every quota of the request is over.
        quota: bool,
        /// The hits counted on its key in this request exceed the limit: no wait lets it pass.
        never: bool,
    },
}

impl Status {
    /// This descriptor's own code is OVER_LIMIT.
    pub fn over(&self) -> bool {
        matches!(self, Status::Limited { verdict, shadow: false, .. } if !verdict.allowed)
    }
}

/// The answer to a `ShouldRateLimit` request: one status per descriptor, and the overall code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub statuses: Vec<Status>,
    /// The overall code is OVER_LIMIT (see `over`).
    pub over: bool,
    /// The answer carries dynamic metadata (`Domains::response_metadata`).
    pub metadata: bool,
    /// Where the counts came from; `None` when no store was asked (an unknown domain, no limited
    /// descriptor).
    pub source: Option<crate::check::Source>,
}

/// The request's overall code is OVER_LIMIT: a descriptor outside quota mode is over, or the request
/// has quota-mode descriptors and every one of them is over (envoyproxy/ratelimit's rule; under
/// `envoy.quota_mode` an unmatched descriptor is a quota within its limit).
pub fn over(statuses: &[Status], quota_mode: bool) -> bool {
    let (mut quotas, mut quotas_over) = (0, 0);
    for s in statuses {
        let quota = match s {
            Status::Limited { quota, .. } => *quota,
            Status::Unmatched => quota_mode,
            Status::Unlimited => false,
        };
        match (quota, s.over()) {
            (false, true) => return true,
            (true, over) => {
                quotas += 1;
                quotas_over += usize::from(over);
            }
            (false, false) => {}
        }
    }
    quotas > 0 && quotas == quotas_over
}

/// A descriptor that matched a limit: what applies and the counter it goes to.
struct Matched {
    rule: RateLimit,
    shadow: bool,
    quota: bool,
    key: String,
    metric: MetricPath,
    options: domain::Options,
}

/// Where a descriptor's decision is counted in `sluice_envoy_decisions_total`.
#[derive(Clone, Debug)]
pub enum MetricPath {
    /// The matched node's own series (its configuration path).
    Node(Arc<domain::NodeMetric>),
    /// A path with request values in it (bounded by `metrics::client_label`), or an override's.
    Other(String),
}

impl MetricPath {
    pub fn record(&self, domain: &str, decision: &'static str, source: &'static str) {
        match self {
            MetricPath::Node(node) => {
                metrics::envoy_path_decision(&node.counters, domain, &node.path, decision, source);
            }
            MetricPath::Other(path) => metrics::envoy_decision(domain, path, decision, source),
        }
    }
}

/// Window length in ms of an Envoy unit code; `None` for UNKNOWN or out of range.
pub fn unit_window_ms(code: i32) -> Option<u64> {
    domain::Unit::from_code(code).map(domain::Unit::window_ms)
}

/// A request's descriptors made ready for the store: the statuses known without it, one check per
/// limited descriptor, and where each check's verdict goes.
#[derive(Debug)]
pub struct Prepared<'d> {
    statuses: Vec<Status>,
    pub checks: Vec<Check>,
    slots: Vec<Slot>,
    /// The domain's name from the configuration, for metrics.
    pub domain: &'d str,
}

/// Where one check's verdict goes.
#[derive(Debug)]
struct Slot {
    descriptor: usize,
    rule: RateLimit,
    shadow: bool,
    quota: bool,
    metric: MetricPath,
}

impl Prepared<'_> {
    /// The statuses of a request whose domain is unknown: no limit applies.
    pub fn unmatched(descriptors: usize) -> Vec<Status> {
        vec![Status::Unmatched; descriptors]
    }

    /// Each limited descriptor's status from the store's answer, with what metrics need of it.
    pub fn finish(mut self, answer: StoreAnswer) -> (Vec<Status>, Vec<(MetricPath, &'static str)>) {
        // Whether a denied descriptor could ever pass: repeats of a key count together, the ones
        // before it when they are decided in sequence, all of them when merged (`store::Merged`).
        // Only a denial needs to know, so an admitted request skips the sums.
        let never: Vec<bool> = if answer.verdicts.iter().all(|v| v.allowed) {
            vec![false; self.checks.len()]
        } else {
            let mut total: HashMap<&str, u64> = HashMap::new();
            for c in &self.checks {
                let sum = total.entry(c.key.as_str()).or_default();
                *sum = sum.saturating_add(c.quota.cost);
            }
            let mut so_far: HashMap<&str, u64> = HashMap::new();
            self.checks
                .iter()
                .map(|c| {
                    let before = so_far.entry(c.key.as_str()).or_default();
                    *before = before.saturating_add(c.quota.cost);
                    let hits = if c.in_sequence(Mode::Consume) { *before } else { total[c.key.as_str()] };
                    hits > c.quota.limit
                })
                .collect()
        };
        let mut decided = Vec::with_capacity(self.slots.len());
        for ((slot, verdict), never) in self.slots.into_iter().zip(answer.verdicts).zip(never) {
            let label = match (verdict.allowed, slot.shadow) {
                (true, _) => "allow",
                (false, false) => "deny",
                (false, true) => "shadow_deny",
            };
            decided.push((slot.metric, label));
            self.statuses[slot.descriptor] =
                Status::Limited { rule: slot.rule, verdict, shadow: slot.shadow, quota: slot.quota, never };
        }
        (self.statuses, decided)
    }

    /// The statuses when no descriptor is limited (nothing to ask the store).
    pub fn into_statuses(self) -> Vec<Status> {
        self.statuses
    }
}

/// Matches a request's descriptors for `domain`, `hits` each unless a descriptor says otherwise;
/// `None` when the domain is unknown.
pub fn prepare<'d>(
    domains: &'d Domains,
    signals: &Signals,
    domain: &str,
    descriptors: &[Descriptor],
    hits: u64,
) -> Option<Prepared<'d>> {
    let (domain_label, config) = domains.by_name.get_key_value(domain)?;
    // Metric labels come from the configuration (its domain and paths), never from the request,
    // except the values of a `detailed_metric` node, which its author asked for.
    let attrs = attributes(domains, descriptors);
    let mut reputation: Option<Arc<[String]>> = None;
    let matched: Vec<Option<Matched>> = descriptors
        .iter()
        .map(|d| match d.limit_override {
            Some((requests_per_unit, unit)) => unit_window_ms(unit).map(|window_ms| {
                let rule = RateLimit {
                    unlimited: false,
                    requests_per_unit,
                    window_ms,
                    unit,
                    name: String::new(),
                    replaces: vec![],
                    metadata: None,
                };
                // The reference counts an override in the counter of the file's limit for the
                // same entries, each compared with its own limit: so does Sluice, when the file's
                // limit has the same window and none of Sluice's own options (which an override
                // cannot carry). Otherwise the unit is part of the key, so that one key is always
                // one window.
                let file = config.matches(&d.entries).filter(|m| {
                    m.node.rule.as_ref().is_some_and(|r| r.window_ms == window_ms)
                        && m.node.options == domain::Options::default()
                });
                let key = match file {
                    Some(m) => identity(domain, "", m.identity.into_iter()),
                    None => identity(
                        domain,
                        &format!("override|{unit}"),
                        d.entries.iter().map(|(k, v)| (k.as_str(), v.clone())),
                    ),
                };
                Matched {
                    rule,
                    shadow: false,
                    quota: domains.quota_mode,
                    key,
                    metric: MetricPath::Other("(override)".to_owned()),
                    options: Default::default(),
                }
            }),
            None => config.matches(&d.entries).map(|m| {
                let rule = m.node.rule.clone().expect("a match has a rule");
                let options = m.node.options.clone();
                let key = identity(domain, "", m.identity.into_iter());
                Matched {
                    rule,
                    shadow: m.node.shadow_mode,
                    quota: m.node.quota_mode || domains.quota_mode,
                    key,
                    metric: match m.client_path {
                        Some(path) => MetricPath::Other(metrics::client_label(path)),
                        None => MetricPath::Node(Arc::clone(&m.node.metric)),
                    },
                    options,
                }
            }),
        })
        .collect();
    // Owned, so that the matches can be taken apart below (a file seldom names any).
    let replaced: HashSet<String> =
        matched.iter().flatten().flat_map(|m| m.rule.replaces.iter().cloned()).collect();

    let mut checks = Vec::new();
    let mut statuses: Vec<Status> = Vec::with_capacity(descriptors.len());
    let mut slots = Vec::new();
    for (i, (d, m)) in descriptors.iter().zip(matched).enumerate() {
        let Some(Matched { rule, shadow, quota, key, metric, options }) = m else {
            statuses.push(Status::Unmatched);
            continue;
        };
        // Unlimited first: as in the reference, a limit that another replaces stays unlimited.
        if rule.unlimited {
            statuses.push(Status::Unlimited);
            continue;
        }
        if !rule.name.is_empty() && replaced.contains(&rule.name) {
            statuses.push(Status::Unmatched);
            continue;
        }
        let cost = d.hits.unwrap_or(hits);
        let algorithm = options.algorithm.unwrap_or(domains.algorithm);
        let counts = if domains.count_denied
            && matches!(algorithm, Algorithm::SlidingWindow | Algorithm::FixedWindow)
            && options.penalty.is_none()
        {
            Counts::Everything
        } else {
            Counts::Requests
        };
        checks.push(Check {
            key,
            algorithm,
            // 0 looks without consuming, even when other descriptors of the request count.
            quota: Quota { limit: rule.requests_per_unit, window_ms: rule.window_ms, cost },
            shadow,
            quota_mode: quota,
            on_failure: options.on_failure.unwrap_or(domains.default_failure),
            adaptive: options
                .adaptive
                .map(|settings| signals.adaptive_check(settings, &attrs, &mut reputation)),
            penalty: options.penalty,
            counts,
            baseline: None,
        });
        slots.push(Slot { descriptor: i, rule, shadow, quota, metric });
        statuses.push(Status::Unmatched);
    }
    Some(Prepared { statuses, checks, slots, domain: domain_label })
}

/// The request attributes the descriptors carry, by `envoy.attributes`.
fn attributes(domains: &Domains, descriptors: &[Descriptor]) -> Attributes {
    let mut attrs = Attributes::default();
    if domains.attributes.is_empty() {
        return attrs;
    }
    for (key, value) in descriptors.iter().flat_map(|d| d.entries.iter()) {
        if let Some((_, attr)) = domains.attributes.iter().find(|(k, _)| k == key) {
            // The head of a long value, as the native API bounds an attribute.
            let end =
                (0..=value.len().min(domain::LONG_VALUE_BYTES)).rev().find(|&i| value.is_char_boundary(i));
            attrs.set(attr, value[..end.unwrap_or(0)].to_owned());
        }
    }
    attrs
}

/// `sluice:{envoy|<domain>|<kind>|<k1>|<v1>|...}`, every part escaped, so that no two descriptors
/// of any two domains share a counter unless the configuration says so; a value longer than
/// `domain::LONG_VALUE_BYTES` as its digest (`domain::short`), which no escaped value can equal.
fn identity<'a>(domain: &str, kind: &str, entries: impl Iterator<Item = (&'a str, String)>) -> String {
    let mut key = String::from("sluice:{envoy|");
    escape_into(&mut key, domain);
    key.push('|');
    key.push_str(kind);
    for (k, v) in entries {
        key.push('|');
        escape_into(&mut key, k);
        key.push('|');
        match domain::short(&v) {
            std::borrow::Cow::Borrowed(v) => escape_into(&mut key, v),
            std::borrow::Cow::Owned(digest) => key.push_str(&digest),
        }
    }
    key.push('}');
    key
}
