//! The one decision path, for `Check`, `ShouldRateLimit` and `Report` alike: the request's checks
//! (from its tiers, or from its Envoy descriptors via `envoy::prepare`), load shedding, the
//! over-limit cache, the store, the answer, metrics.
//!
//! The engine knows no gRPC and no Redis. All checks of one request go to the store in one call, so
//! a Redis store makes one round trip, and every request is all or nothing.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::check::{AdminOp, Answer, Check, Counts, Failure, Mode, SecurityEvent, Source};
use crate::decision::Decision;
use crate::envoy::{self, Descriptor, Domains};
use crate::metrics;
use crate::metrics::TierCounters;
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
    tiers: ArcSwap<Loaded>,
    /// Domains in envoyproxy/ratelimit's format, for `ShouldRateLimit`.
    domains: ArcSwap<Domains>,
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

/// The running tiers, with each tier's decision counters (by position).
#[derive(Debug)]
struct Loaded {
    tiers: Arc<Tiers>,
    counters: Vec<TierCounters>,
}

impl Loaded {
    fn new(tiers: Tiers) -> Loaded {
        metrics::tiers(tiers.len());
        let counters = (0..tiers.len()).map(|_| TierCounters::default()).collect();
        Loaded { tiers: Arc::new(tiers), counters }
    }
}

impl Engine {
    pub fn new(tiers: Tiers, store: Arc<dyn Store>, settings: EngineSettings) -> Engine {
        Engine {
            tiers: ArcSwap::from_pointee(Loaded::new(tiers)),
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

    pub fn domains(&self) -> Arc<Domains> {
        self.domains.load_full()
    }

    /// Swaps in new domains; calls in flight finish with the old ones.
    pub fn replace_domains(&self, domains: Domains) {
        self.domains.store(Arc::new(domains));
    }

    /// Takes in a request's outcome. A failure counts once on every adaptive tier that matches it
    /// (its failed-logins factor) and as a violation on every tier with a penalty.
    pub async fn report(&self, request: &Request, outcome: Reported) -> Result<usize, RequestError> {
        if outcome == Reported::Success {
            return Ok(0);
        }
        let loaded = self.tiers.load_full();
        let matched: Vec<&Arc<Tier>> =
            matching(&loaded.tiers, request)?.into_iter().map(|(_, t)| t).collect();
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
        self.tiers.store(Arc::new(Loaded::new(tiers)));
        self.over_limit.clear();
    }

    pub fn tiers(&self) -> Arc<Tiers> {
        Arc::clone(&self.tiers.load().tiers)
    }

    /// Carries out an operator's action on stored state. The over-limit cache is emptied first, so
    /// that a reset or unblock is not undone by a denial remembered from before it.
    pub async fn admin(&self, op: AdminOp<'_>) -> Result<Vec<(String, String)>, RequestError> {
        self.over_limit.clear();
        Ok(self.store.admin(op).await?)
    }

    /// Calls being decided now (see `Shedding`).
    pub fn in_flight(&self) -> usize {
        self.shedding.in_flight()
    }

    /// Decides a `ShouldRateLimit` request: `hits` for each descriptor unless it carries its own.
    /// Every limited descriptor is checked in one store call; an unknown domain limits nothing.
    pub async fn should_rate_limit(
        &self,
        domain: &str,
        descriptors: &[Descriptor],
        hits: u64,
        deadline: Option<Instant>,
    ) -> Result<envoy::Answer, RequestError> {
        let started = Instant::now();
        let domains = self.domains.load_full();
        let signals = &self.tiers.load().tiers.signals;
        let answer = |statuses: Vec<envoy::Status>, source: Option<Source>| {
            let over = envoy::over(&statuses, domains.quota_mode);
            if over && domains.shadow_mode {
                metrics::envoy_shadowed();
            }
            envoy::Answer {
                over: over && !domains.shadow_mode,
                statuses,
                metadata: domains.response_metadata,
                source,
            }
        };
        let Some(prepared) = envoy::prepare(&domains, signals, domain, descriptors, hits) else {
            metrics::envoy_unknown_domain();
            return Ok(answer(envoy::Prepared::unmatched(descriptors.len()), None));
        };
        if prepared.checks.is_empty() {
            return Ok(answer(prepared.into_statuses(), None));
        }
        let admission = self.shedding.admit(deadline);
        if matches!(admission, Admission::Late) {
            return Err(RequestError::Late);
        }
        // From the over-limit cache only when every descriptor's check is held there (Envoy's answer
        // has a status for each); with `count_denied` (the default) every denied hit must reach the
        // store, so none is.
        let asked = match self.over_limit.denied_each(&prepared.checks) {
            Some(verdicts) => crate::check::Answer { admitted: false, verdicts, source: Source::Cache },
            None => {
                let asked = self.ask(&prepared.checks, Mode::Consume, deadline, &admission).await?;
                self.over_limit.remember(&prepared.checks, &asked);
                asked
            }
        };
        let source = asked.source;
        let domain = prepared.domain;
        let (statuses, decided) = prepared.finish(asked);
        for (path, label) in &decided {
            path.record(domain, label, source.as_str());
        }
        metrics::decision_duration(started.elapsed());
        Ok(answer(statuses, Some(source)))
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
        let loaded = self.tiers.load_full();
        let prepared = requests
            .iter()
            .enumerate()
            .map(|(i, r)| prepare(&loaded, r).map_err(|e| (i, e)))
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

    /// Asks the store for one request's checks, or answers by their failure modes when the call
    /// was shed: the one way from a decision to the store.
    async fn ask(
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
        let outcome = self.ask(&checks, mode, deadline, admission).await?;
        self.over_limit.remember(&checks, &outcome);
        let decision = Decision::counted(counted, outcome);
        let source = decision.source.map_or("none", |s| s.as_str());
        for ((status, check), (counters, threshold)) in decision.statuses.iter().zip(&checks).zip(&counters) {
            counters.record(&status.tier, status.label(), source);
            if mode == Mode::Consume && decision.source != Some(Source::Shed) {
                // What the tier's count took: an admitted request's units where the tier allowed
                // them, and every request's on a tier that counts denied ones too.
                let counts_it = match check.counts {
                    crate::check::Counts::Requests => decision.allowed && status.verdict.allowed,
                    crate::check::Counts::Everything => true,
                    crate::check::Counts::Failures => false,
                };
                let units = if counts_it { check.quota.cost } else { 0 };
                let left = u128::from(status.verdict.remaining) * 100;
                let near = decision.allowed
                    && status.verdict.allowed
                    && left < u128::from(status.verdict.limit) * u128::from(metrics::NEAR_LIMIT_PERCENT);
                counters.consumed(&status.tier, units, near);
            }
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
    fn security_events(&self, request: &Request, decision: &Decision, tiers: &[(&TierCounters, Option<u8>)]) {
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
    counters: Vec<(&'t TierCounters, Option<u8>)>,
}

/// Matches a request's tiers and builds its checks; refuses a cost no wait could let through.
fn prepare<'t>(loaded: &'t Loaded, request: &Request) -> Result<Prepared<'t>, RequestError> {
    let tiers = &loaded.tiers;
    let matched = matching(tiers, request)?;
    if let Some(&(i, exempt)) = matched.iter().find(|(_, t)| t.rule == Rule::Exempt) {
        loaded.counters[i].record(&exempt.name, "exempt", "none");
        return Ok(Prepared::Uncounted(Some(Arc::clone(&exempt.name))));
    }
    let mut checks = Vec::with_capacity(matched.len());
    let mut counted = Vec::with_capacity(matched.len());
    let mut counters = Vec::with_capacity(matched.len());
    let mut reputation: Option<Arc<[String]>> = None;
    for (i, tier) in matched {
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
            quota_mode: false,
            on_failure: tier.on_failure,
            penalty: tier.penalty,
            counts: tier.counts,
            baseline: tier.baseline,
            adaptive: tier
                .adaptive
                .map(|settings| tiers.signals.adaptive_check(settings, &request.attributes, &mut reputation)),
        });
        counted.push((Arc::clone(&tier.name), crate::tier::Limit { cost, ..limit }, tier.shadow));
        counters.push((&loaded.counters[i], tier.adaptive.map(|a| a.event_threshold)));
    }
    if checks.is_empty() {
        metrics::decision("(none)", "allow", "none");
        return Ok(Prepared::Uncounted(None));
    }
    Ok(Prepared::Checks(Checks { checks, counted, counters }))
}

/// The tiers that apply, with their positions: the named ones when the request names some (each
/// must exist), else all; then only those whose conditions hold and whose key attributes are present.
fn matching<'t>(tiers: &'t Tiers, request: &Request) -> Result<Vec<(usize, &'t Arc<Tier>)>, RequestError> {
    if request.tiers.is_empty() {
        return Ok(tiers.all().iter().enumerate().filter(|(_, t)| t.matches(&request.attributes)).collect());
    }
    let mut named: Vec<(usize, &Arc<Tier>)> = Vec::with_capacity(request.tiers.len());
    for (i, name) in request.tiers.iter().enumerate() {
        let (at, tier) = tiers.position(name).ok_or_else(|| RequestError::Invalid {
            field: format!("tiers[{i}]"),
            reason: format!("no tier is named {name:?}"),
        })?;
        if !named.iter().any(|&(j, _)| j == at) && tier.matches(&request.attributes) {
            named.push((at, tier));
        }
    }
    Ok(named)
}
