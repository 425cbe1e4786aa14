//! The decision path: tiers -> checks -> store -> `Decision`, with metrics.
//!
//! The engine knows no gRPC and no Redis. It picks the tiers that apply, builds one check per
//! limited tier, and hands them to the store in one call, so a Redis store makes one round trip.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::check::{AdaptiveCheck, Answer, Check, Counts, Failure, Mode, SecurityEvent, Source};
use crate::decision::Decision;
use crate::metrics;
use crate::over_limit::OverLimitCache;
use crate::request::Attributes;
use crate::shedding::{Admission, Shedding};
use crate::store::{Store, StoreError};
use crate::tier::{Rule, Tier, Tiers};

/// One gateway request to decide.
#[derive(Clone, Debug, Default)]
pub struct Request {
    pub attributes: Attributes,
    /// Units to consume, at least 1.
    pub cost: u64,
    /// Check only these tiers; empty means every tier that matches.
    pub tiers: Vec<String>,
    /// The gateway's request id, carried into security events and logs.
    pub correlation_id: String,
}

/// What became of a request, reported by the gateway after its response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reported {
    Success,
    /// E.g. a failed login: feeds the failed-logins factor of the adaptive tiers that match.
    Failure,
}

/// Why a request could not be decided.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The caller's fault; `field` is relative to the request (e.g. `cost`, `tiers[1]`).
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// The caller's deadline left no time to decide (see `shedding::MIN_DEADLINE`).
    #[error("the caller's deadline leaves no time to decide")]
    Late,
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug)]
pub struct Engine {
    tiers: ArcSwap<Tiers>,
    /// Domains in envoyproxy/ratelimit's format, for `ShouldRateLimit`.
    domains: ArcSwap<crate::envoy::Domains>,
    store: Arc<dyn Store>,
    events_max_len: u64,
    over_limit: OverLimitCache,
    shedding: Shedding,
}

/// What the engine is built with besides its tiers and store.
#[derive(Clone, Copy, Debug)]
pub struct EngineSettings {
    /// Bounds the stream of security events where the store keeps one.
    pub events_max_len: u64,
    /// Bounds the over-limit cache (0: no cache).
    pub over_limit_max_keys: usize,
    /// Calls in flight past which load is shed.
    pub max_in_flight: usize,
}

impl Engine {
    pub fn new(tiers: Tiers, store: Arc<dyn Store>, settings: EngineSettings) -> Engine {
        metrics::tiers(tiers.len());
        Engine {
            tiers: ArcSwap::from_pointee(tiers),
            domains: Default::default(),
            store,
            events_max_len: settings.events_max_len,
            over_limit: OverLimitCache::new(settings.over_limit_max_keys),
            shedding: Shedding::new(settings.max_in_flight),
        }
    }

    /// The over-limit cache, for the sweeper and operators' actions.
    pub fn over_limit(&self) -> &OverLimitCache {
        &self.over_limit
    }

    pub fn domains(&self) -> Arc<crate::envoy::Domains> {
        self.domains.load_full()
    }

    /// Swaps in new domains; calls in flight finish with the old ones.
    pub fn replace_domains(&self, domains: crate::envoy::Domains) {
        self.domains.store(Arc::new(domains));
    }

    /// Takes in a request's outcome. A failure counts once on every adaptive tier that matches it
    /// (its failed-logins factor) and as a violation on every tier with a penalty.
    pub async fn report(&self, request: &Request, outcome: Reported) -> Result<usize, RequestError> {
        if outcome == Reported::Success {
            return Ok(0);
        }
        let tiers = self.tiers.load();
        let matched = matching(&tiers, request)?;
        // Tiers that count failures only consume one unit now.
        let counted: Vec<Check> = matched
            .iter()
            .filter(|t| t.counts == Counts::Failures)
            .filter_map(|t| match t.rule {
                Rule::Limited(limit) => Some(Check::plain(
                    t.key_for(&request.attributes),
                    limit.algorithm,
                    crate::algorithm::Quota { limit: limit.limit, window_ms: limit.window_ms, cost: 1 },
                    t.on_failure,
                )),
                _ => None,
            })
            .collect();
        if !counted.is_empty() {
            self.store.decide(&counted, Mode::Consume, None).await?;
        }
        let failures: Vec<Failure> = matched
            .into_iter()
            .filter(|t| t.adaptive.is_some() || t.penalty.is_some())
            .filter_map(|t| match t.rule {
                Rule::Limited(limit) => Some(Failure {
                    key: t.key_for(&request.attributes),
                    window_ms: limit.window_ms,
                    adaptive: t.adaptive.is_some(),
                    penalty: t.penalty,
                }),
                _ => None,
            })
            .collect();
        if !failures.is_empty() {
            self.store.report_failures(&failures).await?;
        }
        // A tier both failure-only and adaptive (or with a penalty) counts once.
        let both = failures.iter().filter(|f| counted.iter().any(|c| c.key == f.key)).count();
        Ok(failures.len() + counted.len() - both)
    }

    /// Swaps in a new set of tiers; requests in flight finish with the old one.
    pub fn replace_tiers(&self, tiers: Tiers) {
        metrics::tiers(tiers.len());
        self.tiers.store(Arc::new(tiers));
        self.over_limit.clear();
    }

    pub fn tiers(&self) -> Arc<Tiers> {
        self.tiers.load_full()
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub async fn check(&self, request: &Request, mode: Mode) -> Result<Decision, RequestError> {
        self.check_by(request, mode, None).await
    }

    /// As `check`, answering by the failure mode rather than waiting past the caller's deadline.
    pub async fn check_by(
        &self,
        request: &Request,
        mode: Mode,
        deadline: Option<Instant>,
    ) -> Result<Decision, RequestError> {
        self.check_batch(std::slice::from_ref(request), mode, deadline)
            .await
            .map_err(|(_, e)| e)
            .map(|mut decisions| decisions.remove(0))
    }

    /// Decides a batch, each request as if it had been sent alone. Every request is checked first,
    /// so a batch with one invalid request (the index of the first is given) decides nothing; then
    /// the batch is admitted or shed as a whole (one slot for the call).
    pub async fn check_batch(
        &self,
        requests: &[Request],
        mode: Mode,
        deadline: Option<Instant>,
    ) -> Result<Vec<Decision>, (usize, RequestError)> {
        let started = Instant::now();
        // Held across the store's await: an owned handle, not a borrowed guard.
        let tiers = self.tiers.load_full();
        let prepared = requests
            .iter()
            .enumerate()
            .map(|(i, r)| prepare(&tiers, r).map_err(|e| (i, e)))
            .collect::<Result<Vec<_>, _>>()?;
        let admission = self.shedding.admit(deadline);
        if matches!(admission, Admission::Late) {
            return Err((0, RequestError::Late));
        }
        let admission = &admission;
        let decisions = prepared
            .into_iter()
            .zip(requests)
            .map(|(p, r)| self.decide_prepared(r, p, mode, deadline, admission, started));
        futures::future::join_all(decisions)
            .await
            .into_iter()
            .enumerate()
            .map(|(i, d)| d.map_err(|e| (i, RequestError::Store(e))))
            .collect()
    }

    /// Asks the store for one request's checks, or its failure modes when the call was shed:
    /// the one way from an API to the store.
    pub async fn decide(
        &self,
        checks: &[Check],
        mode: Mode,
        deadline: Option<Instant>,
    ) -> Result<Answer, RequestError> {
        let admission = self.shedding.admit(deadline);
        if matches!(admission, Admission::Late) {
            return Err(RequestError::Late);
        }
        Ok(self.decide_admitted(checks, mode, deadline, &admission).await?)
    }

    async fn decide_admitted(
        &self,
        checks: &[Check],
        mode: Mode,
        deadline: Option<Instant>,
        admission: &Admission<'_>,
    ) -> Result<Answer, StoreError> {
        match admission {
            Admission::Admitted(_) => self.store.decide(checks, mode, deadline).await,
            Admission::Shed | Admission::Late => Ok(self.store.shed(checks, mode)),
        }
    }

    async fn decide_prepared(
        &self,
        request: &Request,
        prepared: Prepared<'_>,
        mode: Mode,
        deadline: Option<Instant>,
        admission: &Admission<'_>,
        started: Instant,
    ) -> Result<Decision, StoreError> {
        let Checks { checks, mut counted, counters } = match prepared {
            Prepared::Uncounted(tier) => return Ok(Decision::uncounted(tier)),
            Prepared::Checks(p) => p,
        };
        if let Some((i, verdict)) = self.over_limit.denied(&checks) {
            // Only the tier that denies was looked at, so only it is reported.
            let outcome = Answer { admitted: false, verdicts: vec![verdict], source: Source::Cache };
            let decision = Decision::counted(vec![counted.swap_remove(i)], outcome);
            counters[i].0.record(&decision.statuses[0].tier, "deny", Source::Cache.as_str());
            metrics::decision_duration(started.elapsed());
            return Ok(decision);
        }
        let outcome = self.decide_admitted(&checks, mode, deadline, admission).await?;
        self.over_limit.remember(&checks, &outcome);
        let decision = Decision::counted(counted, outcome);
        let source = decision.source.map_or("none", |s| s.as_str());
        for (status, (counters, threshold)) in decision.statuses.iter().zip(&counters) {
            counters.record(&status.tier, status.label(), source);
            if threshold.is_some() {
                metrics::threat_score(&status.tier, status.verdict.score);
            }
        }
        if !decision.allowed {
            self.security_events(request, &decision, &counters);
        }
        metrics::decision_duration(started.elapsed());
        Ok(decision)
    }

    /// A denial by an adaptive tier scoring at or above its threshold: a log line, a counter per
    /// factor, and an entry in the store's event stream (written in the background).
    fn security_events(
        &self,
        request: &Request,
        decision: &Decision,
        tiers: &[(&crate::metrics::TierCounters, Option<u8>)],
    ) {
        for (status, (_, threshold)) in decision.statuses.iter().zip(tiers) {
            let Some(threshold) = threshold else { continue };
            if !status.denies() || status.verdict.score < *threshold {
                continue;
            }
            let event = SecurityEvent {
                tier: Arc::clone(&status.tier),
                score: status.verdict.score,
                factors: status.verdict.factors,
                correlation_id: request.correlation_id.clone(),
            };
            let factors: Vec<&str> = crate::algorithm::adaptive::factor_names(event.factors).collect();
            tracing::warn!(
                target: "sluice::security",
                tier = %event.tier,
                score = event.score,
                factors = %factors.join(","),
                correlation_id = %event.correlation_id,
                "hostile request denied"
            );
            for factor in &factors {
                metrics::security_event(&event.tier, factor);
            }
            let store = Arc::clone(&self.store);
            let max_len = self.events_max_len;
            tokio::spawn(async move { store.security_event(&event, max_len).await });
        }
    }
}

/// A request made ready for the store: everything that can refuse it has been checked.
enum Prepared<'t> {
    /// Allowed without asking the store: an exempt tier (named) matched, or no limited tier did.
    Uncounted(Option<Arc<str>>),
    Checks(Checks<'t>),
}

/// One check per limited tier, with what the decision and the metrics need of each tier.
struct Checks<'t> {
    checks: Vec<Check>,
    counted: Vec<(Arc<str>, crate::tier::Limit, bool)>,
    counters: Vec<(&'t crate::metrics::TierCounters, Option<u8>)>,
}

/// Matches a request's tiers and builds its checks; refuses a cost no wait could let through.
fn prepare<'t>(tiers: &'t Tiers, request: &Request) -> Result<Prepared<'t>, RequestError> {
    let matched = matching(tiers, request)?;
    if let Some(exempt) = matched.iter().find(|t| t.rule == Rule::Exempt) {
        exempt.counters.record(&exempt.name, "exempt", "none");
        return Ok(Prepared::Uncounted(Some(Arc::clone(&exempt.name))));
    }
    let mut checks = Vec::with_capacity(matched.len());
    let mut counted = Vec::with_capacity(matched.len());
    let mut counters = Vec::with_capacity(matched.len());
    let mut reputation: Option<Arc<[String]>> = None;
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
            penalty: tier.penalty,
            counts: tier.counts,
            baseline: tier.baseline,
            adaptive: tier.adaptive.map(|settings| AdaptiveCheck {
                settings,
                client_factors: tiers.signals.client_factors(&settings, &request.attributes),
                reputation: Arc::clone(
                    reputation
                        .get_or_insert_with(|| crate::request::reputation_keys(&request.attributes).into()),
                ),
            }),
        });
        counted.push((Arc::clone(&tier.name), crate::tier::Limit { cost, ..limit }, tier.shadow));
        counters.push((&tier.counters, tier.adaptive.map(|a| a.event_threshold)));
    }
    if checks.is_empty() {
        metrics::decision("(none)", "allow", "none");
        return Ok(Prepared::Uncounted(None));
    }
    Ok(Prepared::Checks(Checks { checks, counted, counters }))
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
