//! Envoy's rate limit service semantics on top of the engine's store: which descriptors a request's
//! domain limits (see `descriptor`), one check per limited descriptor, all of them in one store
//! call, and one status per descriptor as envoyproxy/ratelimit answers.
//!
//! As in that service, every limited descriptor counts its hits whether or not the request is over
//! (`count_denied`, on by default for these files), an unknown domain or an unmatched descriptor is
//! answered OK with nothing remaining, an unlimited one OK with `u32::MAX` remaining, and a limit
//! named in another matched limit's `replaces` is skipped.

pub mod domain;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::algorithm::{Algorithm, Quota, Verdict};
use crate::check::{AdaptiveCheck, Check, Counts, FailureMode, Mode};
use crate::engine::Engine;
use crate::metrics;
use crate::request::{escape_into, reputation_keys};
use domain::{Domain, RateLimit};

/// Every loaded domain, by name.
#[derive(Clone, Debug, Default)]
pub struct Domains {
    pub by_name: HashMap<String, Domain>,
    /// Count the hits of denied requests (the reference's default).
    pub count_denied: bool,
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
        /// The hits counted on its key in this request exceed the limit: no wait lets it pass.
        never: bool,
    },
}

impl Status {
    pub fn over(&self) -> bool {
        matches!(self, Status::Limited { verdict, shadow: false, .. } if !verdict.allowed)
    }
}

/// A descriptor that matched a limit: what applies and the counter it goes to.
struct Matched {
    rule: RateLimit,
    shadow: bool,
    key: String,
    /// The configuration path, for metrics.
    path: String,
    options: domain::Options,
}

/// Window length in ms of an Envoy unit code; `None` for UNKNOWN or out of range.
pub fn unit_window_ms(code: i32) -> Option<u64> {
    domain::Unit::from_code(code).map(domain::Unit::window_ms)
}

/// Decides a request's descriptors for `domain`, `hits` each unless a descriptor says otherwise.
pub async fn decide(
    engine: &Engine,
    domain: &str,
    descriptors: &[Descriptor],
    hits: u64,
    deadline: Option<std::time::Instant>,
) -> Result<Vec<Status>, crate::engine::RequestError> {
    let domains = engine.domains();
    let tiers = engine.tiers();
    let signals = &tiers.signals;
    let Some((domain_label, config)) = domains.by_name.get_key_value(domain) else {
        metrics::envoy_unknown_domain();
        return Ok(vec![Status::Unmatched; descriptors.len()]);
    };
    // Metric labels come from the configuration (its domain and paths), never from the request,
    // except the values of a `detailed_metric` node, which its author asked for.
    let attrs = attributes(&domains, descriptors);
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
                };
                // The rate and unit are part of the key: two overrides never share a counter.
                let kind = format!("override|{requests_per_unit}|{unit}");
                let key = identity(domain, &kind, d.entries.iter().map(|(k, v)| (k.as_str(), v.clone())));
                Matched {
                    rule,
                    shadow: false,
                    key,
                    path: "(override)".to_owned(),
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
                    key,
                    path: if m.client_values { metrics::client_label(m.path) } else { m.path },
                    options,
                }
            }),
        })
        .collect();
    let replaced: HashSet<&str> =
        matched.iter().flatten().flat_map(|m| m.rule.replaces.iter().map(String::as_str)).collect();

    let mut checks = Vec::new();
    let mut statuses: Vec<Status> = Vec::with_capacity(descriptors.len());
    let mut slots = Vec::new();
    for (i, (d, m)) in descriptors.iter().zip(&matched).enumerate() {
        let Some(Matched { rule, shadow, key, path, options }) = m else {
            statuses.push(Status::Unmatched);
            continue;
        };
        if !rule.name.is_empty() && replaced.contains(rule.name.as_str()) {
            statuses.push(Status::Unmatched);
            continue;
        }
        if rule.unlimited {
            statuses.push(Status::Unlimited);
            continue;
        }
        let cost = d.hits.unwrap_or(hits);
        let counts = if domains.count_denied
            && options.algorithm == Algorithm::SlidingWindow
            && options.penalty.is_none()
        {
            Counts::Everything
        } else {
            Counts::Requests
        };
        checks.push(Check {
            key: key.clone(),
            algorithm: options.algorithm,
            // 0 looks without consuming, even when other descriptors of the request count.
            quota: Quota { limit: rule.requests_per_unit, window_ms: rule.window_ms, cost },
            shadow: *shadow,
            on_failure: options.on_failure.unwrap_or(domains.default_failure),
            adaptive: options.adaptive.map(|settings| AdaptiveCheck {
                settings,
                client_factors: signals.client_factors(&settings, &attrs),
                reputation: Arc::clone(reputation.get_or_insert_with(|| reputation_keys(&attrs).into())),
            }),
            penalty: options.penalty,
            counts,
            baseline: None,
        });
        slots.push((i, rule.clone(), *shadow, path.clone()));
        statuses.push(Status::Unmatched);
    }
    if checks.is_empty() {
        return Ok(statuses);
    }
    let outcome = engine.decide(&checks, Mode::Consume, deadline).await?;
    let source = outcome.source.as_str();
    // Whether a denied descriptor could ever pass; repeats of a key count together (see
    // `store::Merged`). Only a denial needs to know, so an admitted request skips the sums.
    let never: Vec<bool> = if outcome.verdicts.iter().all(|v| v.allowed) {
        vec![false; checks.len()]
    } else {
        let mut hits_on: HashMap<&str, u64> = HashMap::new();
        for c in &checks {
            let sum = hits_on.entry(c.key.as_str()).or_default();
            *sum = sum.saturating_add(c.quota.cost);
        }
        checks.iter().map(|c| hits_on[c.key.as_str()] > c.quota.limit).collect()
    };
    for (((i, rule, shadow, path), verdict), never) in slots.into_iter().zip(outcome.verdicts).zip(never) {
        let decision = match (verdict.allowed, shadow) {
            (true, _) => "allow",
            (false, false) => "deny",
            (false, true) => "shadow_deny",
        };
        metrics::envoy_decision(domain_label, &path, decision, source);
        statuses[i] = Status::Limited { rule, verdict, shadow, never };
    }
    Ok(statuses)
}

/// The request attributes the descriptors carry, by `envoy.attributes`.
fn attributes(domains: &Domains, descriptors: &[Descriptor]) -> crate::request::Attributes {
    let mut attrs = crate::request::Attributes::default();
    if domains.attributes.is_empty() {
        return attrs;
    }
    for (key, value) in descriptors.iter().flat_map(|d| d.entries.iter()) {
        if let Some((_, attr)) = domains.attributes.iter().find(|(k, _)| k == key) {
            attrs.set(attr, value.clone());
        }
    }
    attrs
}

/// `sluice:{envoy|<domain>|<kind>|<k1>|<v1>|...}`, every part escaped, so that no two descriptors
/// of any two domains share a counter unless the configuration says so.
fn identity<'a>(domain: &str, kind: &str, entries: impl Iterator<Item = (&'a str, String)>) -> String {
    let mut key = String::from("sluice:{envoy|");
    escape_into(&mut key, domain);
    key.push('|');
    key.push_str(kind);
    for (k, v) in entries {
        key.push('|');
        escape_into(&mut key, k);
        key.push('|');
        escape_into(&mut key, &v);
    }
    key.push('}');
    key
}
