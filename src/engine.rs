//! The decision path: tiers -> checks -> store -> `Decision`, with metrics.
//!
//! The engine knows no gRPC and no Redis. It picks the tiers that apply, builds one check per
//! limited tier, and hands them to the store in one call, so a Redis store makes one round trip.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::decision::Decision;
use crate::metrics;
use crate::store::{Check, Mode, Store, StoreError};
use crate::tier::{Attributes, Rule, Tier, Tiers};

/// One gateway request to decide.
#[derive(Clone, Debug, Default)]
pub struct Request {
    pub attributes: Attributes,
    /// Units to consume, at least 1.
    pub cost: u64,
    /// Check only these tiers; empty means every tier that matches.
    pub tiers: Vec<String>,
}

/// Why a request could not be decided.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The caller's fault; `field` is relative to the request (e.g. `cost`, `tiers[1]`).
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug)]
pub struct Engine {
    tiers: ArcSwap<Tiers>,
    store: Arc<dyn Store>,
}

impl Engine {
    pub fn new(tiers: Tiers, store: Arc<dyn Store>) -> Engine {
        metrics::tiers(tiers.len());
        Engine { tiers: ArcSwap::from_pointee(tiers), store }
    }

    /// Swaps in a new set of tiers; requests in flight finish with the old one.
    pub fn replace_tiers(&self, tiers: Tiers) {
        metrics::tiers(tiers.len());
        self.tiers.store(Arc::new(tiers));
    }

    pub fn tiers(&self) -> Arc<Tiers> {
        self.tiers.load_full()
    }

    pub async fn check(&self, request: &Request, mode: Mode) -> Result<Decision, RequestError> {
        let started = Instant::now();
        let tiers = self.tiers.load();
        let matched = matching(&tiers, request)?;

        if let Some(exempt) = matched.iter().find(|t| t.rule == Rule::Exempt) {
            exempt.counters.record(&exempt.name, "exempt", "none");
            return Ok(Decision::uncounted(Some(Arc::clone(&exempt.name))));
        }

        let mut checks = Vec::with_capacity(matched.len());
        let mut counted = Vec::with_capacity(matched.len());
        let mut counters = Vec::with_capacity(matched.len());
        for tier in matched {
            let Rule::Limited(limit) = tier.rule else { continue };
            let cost = request.cost.saturating_mul(limit.cost);
            if cost > limit.limit {
                return Err(RequestError::Invalid {
                    field: "cost".into(),
                    reason: format!(
                        "{cost} units exceed the limit of {} per window of tier {:?}, so the request could never pass",
                        limit.limit, tier.name
                    ),
                });
            }
            checks.push(Check {
                key: tier.key_for(&request.attributes),
                algorithm: limit.algorithm,
                quota: crate::algorithm::Quota { limit: limit.limit, window_ms: limit.window_ms, cost },
                shadow: tier.shadow,
                on_failure: tier.on_failure,
            });
            counted.push((Arc::clone(&tier.name), crate::tier::Limit { cost, ..limit }, tier.shadow));
            counters.push(&tier.counters);
        }
        if checks.is_empty() {
            metrics::decision("(none)", "allow", "none");
            return Ok(Decision::uncounted(None));
        }

        let outcome = self.store.decide(&checks, mode).await?;
        let decision = Decision::counted(counted, outcome);
        let source = decision.source.map_or("none", |s| s.as_str());
        for (status, counters) in decision.statuses.iter().zip(counters) {
            counters.record(&status.tier, status.label(), source);
        }
        metrics::decision_duration(started.elapsed());
        Ok(decision)
    }
}

/// The tiers that apply: the named ones when the request names some (each must exist), else all;
/// then only those whose conditions hold and whose key attributes are present.
fn matching<'t>(tiers: &'t Tiers, request: &Request) -> Result<Vec<&'t Arc<Tier>>, RequestError> {
    if request.tiers.is_empty() {
        return Ok(tiers.all().iter().filter(|t| t.matches(&request.attributes)).collect());
    }
    let mut named = Vec::with_capacity(request.tiers.len());
    for (i, name) in request.tiers.iter().enumerate() {
        let tier = tiers.by_name(name).ok_or_else(|| RequestError::Invalid {
            field: format!("tiers[{i}]"),
            reason: format!("no tier is named {name:?}"),
        })?;
        if !named.iter().any(|t: &&Arc<Tier>| Arc::ptr_eq(t, tier)) && tier.matches(&request.attributes) {
            named.push(tier);
        }
    }
    Ok(named)
}
