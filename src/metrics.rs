//! Every metric Sluice exports, with its description, in one place.
//!
//! Names follow `sluice_<name>_<unit>[_total]`. Label values come from configuration (tier names) or
//! bounded enums (decision, source, error kind), never from clients.

use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{BuildError, PrometheusBuilder, PrometheusHandle};

pub const DECISIONS: &str = "sluice_decisions_total";
pub const API_DECISIONS: &str = "sluice_api_decisions_total";
pub const DECISION_DURATION: &str = "sluice_decision_duration_seconds";
pub const REDIS_DURATION: &str = "sluice_redis_duration_seconds";
pub const REDIS_ERRORS: &str = "sluice_redis_errors_total";
pub const REDIS_BATCH: &str = "sluice_redis_batch_requests";
pub const REQUESTS_REJECTED: &str = "sluice_requests_rejected_total";
pub const TIERS: &str = "sluice_tiers";
pub const LOCAL_KEYS: &str = "sluice_local_keys";
pub const CIRCUIT_OPEN: &str = "sluice_circuit_open";
pub const THREAT_SCORE: &str = "sluice_threat_score";
pub const CONFIG_RELOADS: &str = "sluice_config_reloads_total";
pub const ENVOY_DECISIONS: &str = "sluice_envoy_decisions_total";
pub const ENVOY_UNKNOWN_DOMAIN: &str = "sluice_envoy_unknown_domain_total";
pub const ENVOY_SHADOW: &str = "sluice_envoy_shadow_total";
pub const SECURITY_EVENTS: &str = "sluice_security_events_total";
pub const FALLBACK_TIME: &str = "sluice_fallback_seconds_total";
pub const SHED: &str = "sluice_shed_total";
pub const OVER_LIMIT_KEYS: &str = "sluice_over_limit_cache_keys";
pub const BUILD_INFO: &str = "sluice_build_info";
pub const CIRCUIT_OPENINGS: &str = "sluice_circuit_openings_total";
pub const RELOAD_SUCCESSFUL: &str = "sluice_config_last_reload_successful";
pub const RELOAD_SUCCESS_TIME: &str = "sluice_config_last_reload_success_timestamp_seconds";
pub const IN_FLIGHT: &str = "sluice_in_flight";
pub const IN_FLIGHT_LIMIT: &str = "sluice_in_flight_limit";
pub const UNITS: &str = "sluice_units_total";
pub const NEAR_LIMIT: &str = "sluice_near_limit_total";
pub const TLS_RELOADS: &str = "sluice_tls_reloads_total";
pub const TLS_RELOAD_SUCCESSFUL: &str = "sluice_tls_last_reload_successful";
pub const TLS_HANDSHAKE_FAILURES: &str = "sluice_tls_handshake_failures_total";

/// A decision is near its limit when what remains is under this share of the limit (in percent).
pub const NEAR_LIMIT_PERCENT: u64 = 20;

const LATENCY_BUCKETS: &[f64] =
    &[0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];

/// Installs the global recorder and returns the handle that renders `/metrics`. Installing twice
/// in one process (tests start several servers) hands back the first recorder's handle.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    static HANDLE: std::sync::Mutex<Option<PrometheusHandle>> = std::sync::Mutex::new(None);
    let mut installed = HANDLE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(handle) = installed.as_ref() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("_duration_seconds".into()),
            LATENCY_BUCKETS,
        )?
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(THREAT_SCORE.into()),
            &[0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0],
        )?
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(REDIS_BATCH.into()),
            &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0],
        )?
        .install_recorder()?;
    describe();
    let _ = HOT.set(Hot::register());
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "revision" => env!("SLUICE_REVISION"))
        .set(1.0);
    *installed = Some(handle.clone());
    Ok(handle)
}

/// The process's own metrics (CPU seconds, resident memory, open file descriptors, start time),
/// read anew before each scrape.
pub fn collect_process() {
    static COLLECTOR: std::sync::LazyLock<metrics_process::Collector> = std::sync::LazyLock::new(|| {
        let collector = metrics_process::Collector::default();
        collector.describe();
        collector
    });
    COLLECTOR.collect();
}

fn describe() {
    describe_counter!(
        DECISIONS,
        "Decisions per tier, by decision (allow, deny, shadow_deny, exempt) and source"
    );
    describe_histogram!(DECISION_DURATION, metrics::Unit::Seconds, "Time to decide one request");
    describe_counter!(
        API_DECISIONS,
        "sluice.v1 decisions by the API that asked (grpc, http, forward_auth) and decision (allow, deny)"
    );
    describe_histogram!(
        REDIS_DURATION,
        metrics::Unit::Seconds,
        "Time from asking Redis for one decision to its answer, waiting for its call included"
    );
    describe_histogram!(REDIS_BATCH, "Requests decided by one call to Redis");
    describe_counter!(REDIS_ERRORS, "Failed or late Redis calls, by error type");
    describe_counter!(REQUESTS_REJECTED, "Requests rejected as invalid, by field");
    describe_gauge!(TIERS, "Tiers in the running configuration");
    describe_gauge!(LOCAL_KEYS, "Keys held by the in-process store, by role (local, fallback)");
    describe_histogram!(THREAT_SCORE, "Threat scores (0-100) of requests checked by adaptive tiers, by tier");
    describe_counter!(SECURITY_EVENTS, "Hostile requests denied, by tier and by factor present");
    describe_counter!(
        ENVOY_DECISIONS,
        "ShouldRateLimit decisions per limited descriptor, by domain, descriptor path (from the configuration), decision and source"
    );
    describe_counter!(ENVOY_UNKNOWN_DOMAIN, "ShouldRateLimit calls for a domain no file declares");
    describe_gauge!(BUILD_INFO, "Always 1, labelled by the version and the git revision built");
    describe_counter!(
        CIRCUIT_OPENINGS,
        "Times the circuit opened (Redis unavailable), however short the outage"
    );
    describe_gauge!(
        RELOAD_SUCCESSFUL,
        "1 when the last configuration load (start-up or reload) succeeded, else 0"
    );
    describe_gauge!(
        RELOAD_SUCCESS_TIME,
        metrics::Unit::Seconds,
        "Unix time of the last successful configuration load"
    );
    describe_gauge!(
        IN_FLIGHT,
        "Calls being decided now (a Check batch is one), against sluice_in_flight_limit"
    );
    describe_gauge!(IN_FLIGHT_LIMIT, "server.max_in_flight: past it, calls are shed");
    describe_counter!(UNITS, "Units consumed, by tier (a request's cost times the tier's)");
    describe_counter!(NEAR_LIMIT, "Admitted decisions that left less than 20% of the tier's limit, by tier");
    describe_counter!(
        ENVOY_SHADOW,
        "ShouldRateLimit answers made OK by envoy.shadow_mode that would have been OVER_LIMIT"
    );
    describe_counter!(CONFIG_RELOADS, "Configuration reloads, by result (ok, error)");
    describe_gauge!(CIRCUIT_OPEN, "1 while decisions come from the in-process fallback instead of Redis");
    describe_counter!(FALLBACK_TIME, metrics::Unit::Seconds, "Time spent with the circuit open");
    describe_counter!(
        SHED,
        "Decisions answered at once by the failure mode, by reason (queue: too many in flight; deadline: the caller's deadline could not be met)"
    );
    describe_gauge!(OVER_LIMIT_KEYS, "Keys held by the over-limit cache");
    describe_counter!(
        TLS_RELOADS,
        "Rotated certificate files taken up (ok) or refused (error), by target (grpc: the gRPC and admin listeners; redis: the Redis client)"
    );
    describe_gauge!(
        TLS_RELOAD_SUCCESSFUL,
        "1 when the target's certificate files as they are now are the ones in use, 0 while newer files are refused, by target"
    );
    describe_counter!(
        TLS_HANDSHAKE_FAILURES,
        "TLS handshakes that failed or timed out, by listener (grpc, admin) and reason (error, timeout)"
    );
}

const DECISION_LABELS: [&str; 4] = ["allow", "deny", "shadow_deny", "exempt"];
const SOURCE_LABELS: [&str; 6] = ["redis", "local", "fallback", "shed", "cache", "none"];

/// Decisions of one series set (a tier, or an Envoy descriptor) by decision and source, each
/// registered on first use and then incremented without a registry lookup.
#[derive(Debug, Default)]
pub struct DecisionCounters(
    [std::sync::OnceLock<metrics::Counter>; DECISION_LABELS.len() * SOURCE_LABELS.len()],
);

impl DecisionCounters {
    /// Counts one decision; `register` makes the counter of a (decision, source) pair first seen.
    fn increment(
        &self,
        decision: &'static str,
        source: &'static str,
        register: impl FnOnce(&'static str, &'static str) -> metrics::Counter,
    ) {
        let d = DECISION_LABELS.iter().position(|l| *l == decision).unwrap_or(0);
        let s = SOURCE_LABELS.iter().position(|l| *l == source).unwrap_or(SOURCE_LABELS.len() - 1);
        self.0[d * SOURCE_LABELS.len() + s]
            .get_or_init(|| register(DECISION_LABELS[d], SOURCE_LABELS[s]))
            .increment(1);
    }
}

/// One tier's counters: decisions by decision and source, units consumed, and near-limit
/// decisions, each registered on first use.
#[derive(Debug, Default)]
pub struct TierCounters {
    decisions: DecisionCounters,
    units: std::sync::OnceLock<metrics::Counter>,
    near_limit: std::sync::OnceLock<metrics::Counter>,
}

impl TierCounters {
    pub fn record(&self, tier: &std::sync::Arc<str>, decision: &'static str, source: &'static str) {
        self.decisions.increment(decision, source, |decision, source| {
            let tier = std::sync::Arc::clone(tier);
            counter!(DECISIONS, "tier" => tier, "decision" => decision, "source" => source)
        });
    }

    /// `units` consumed on the tier; `near` when what remains is under `NEAR_LIMIT_PERCENT` of the
    /// limit.
    pub fn consumed(&self, tier: &std::sync::Arc<str>, units: u64, near: bool) {
        if units > 0 {
            self.units
                .get_or_init(|| counter!(UNITS, "tier" => std::sync::Arc::clone(tier)))
                .increment(units);
        }
        if near {
            self.near_limit
                .get_or_init(|| counter!(NEAR_LIMIT, "tier" => std::sync::Arc::clone(tier)))
                .increment(1);
        }
    }
}

/// For decisions no tier counted.
pub fn decision(tier: &'static str, decision: &'static str, source: &'static str) {
    counter!(DECISIONS, "tier" => tier, "decision" => decision, "source" => source).increment(1);
}

/// The APIs that carry a `Check`, as `sluice_api_decisions_total` labels them.
pub const API_LABELS: [&str; 3] = ["grpc", "http", "forward_auth"];

/// The metrics recorded on every decision, registered once with the recorder, so that a decision
/// pays no registry lookup (a hash of its name and labels) for them.
struct Hot {
    decision_duration: metrics::Histogram,
    redis_duration: metrics::Histogram,
    redis_batch: metrics::Histogram,
    /// By `API_LABELS` position, then allowed (0) or denied (1).
    api_decisions: [[metrics::Counter; 2]; API_LABELS.len()],
}

/// Set by `install`; until then (a process without a recorder) the metrics below are not kept.
static HOT: std::sync::OnceLock<Hot> = std::sync::OnceLock::new();

impl Hot {
    fn register() -> Hot {
        let api = |api: &'static str| {
            ["allow", "deny"].map(|decision| counter!(API_DECISIONS, "api" => api, "decision" => decision))
        };
        Hot {
            decision_duration: histogram!(DECISION_DURATION),
            redis_duration: histogram!(REDIS_DURATION),
            redis_batch: histogram!(REDIS_BATCH),
            api_decisions: API_LABELS.map(api),
        }
    }
}

pub fn decision_duration(elapsed: Duration) {
    if let Some(hot) = HOT.get() {
        hot.decision_duration.record(elapsed.as_secs_f64());
    }
}

pub fn redis_duration(elapsed: Duration) {
    if let Some(hot) = HOT.get() {
        hot.redis_duration.record(elapsed.as_secs_f64());
    }
}

/// One `Check` decision, by the API that carried it (an index into `API_LABELS`).
pub fn api_decision(api: usize, allowed: bool) {
    if let Some(counter) = HOT.get().and_then(|hot| hot.api_decisions.get(api)) {
        counter[usize::from(!allowed)].increment(1);
    }
}

pub fn redis_batch(requests: usize) {
    if let Some(hot) = HOT.get() {
        hot.redis_batch.record(requests as f64);
    }
}

pub fn redis_error(kind: &'static str) {
    counter!(REDIS_ERRORS, "error_type" => kind).increment(1);
}

pub fn rejected(field: &'static str) {
    counter!(REQUESTS_REJECTED, "field" => field).increment(1);
}

pub fn tiers(count: usize) {
    gauge!(TIERS).set(count as f64);
}

pub fn threat_score(tier: &std::sync::Arc<str>, score: u8) {
    histogram!(THREAT_SCORE, "tier" => std::sync::Arc::clone(tier)).record(f64::from(score));
}

pub fn security_event(tier: &std::sync::Arc<str>, factor: &'static str) {
    counter!(SECURITY_EVENTS, "tier" => std::sync::Arc::clone(tier), "factor" => factor).increment(1);
}

/// An Envoy descriptor's decision, in the series of a configured path (`counters` are that path's).
pub fn envoy_path_decision(
    counters: &DecisionCounters,
    domain: &str,
    path: &str,
    decision: &'static str,
    source: &'static str,
) {
    counters.increment(decision, source, |decision, source| {
        counter!(ENVOY_DECISIONS, "domain" => domain.to_owned(), "descriptor" => path.to_owned(), "decision" => decision, "source" => source)
    });
}

/// An Envoy descriptor's decision under a path no configured node names alone (one holding request
/// values, or an override's): registered anew each time.
pub fn envoy_decision(domain: &str, descriptor: &str, decision: &'static str, source: &'static str) {
    counter!(ENVOY_DECISIONS, "domain" => domain.to_owned(), "descriptor" => descriptor.to_owned(), "decision" => decision, "source" => source)
        .increment(1);
}

/// Most distinct descriptor labels built from request values (`detailed_metric`, `value_to_metric`)
/// over the whole process; past it, new ones show as `(other)`, so even a configuration that asks
/// for request values keeps the series bounded.
pub const MAX_CLIENT_LABELS: usize = 1000;

/// `path` if it is already a label or there is room for one more, else `(other)`.
pub fn client_label(path: String) -> String {
    static SEEN: std::sync::LazyLock<std::sync::Mutex<std::collections::HashSet<String>>> =
        std::sync::LazyLock::new(Default::default);
    let mut seen = SEEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if seen.contains(&path) || seen.len() < MAX_CLIENT_LABELS {
        seen.insert(path.clone());
        path
    } else {
        "(other)".to_owned()
    }
}

pub fn envoy_shadowed() {
    counter!(ENVOY_SHADOW).increment(1);
}

pub fn envoy_unknown_domain() {
    counter!(ENVOY_UNKNOWN_DOMAIN).increment(1);
}

pub fn config_reload(result: &'static str) {
    counter!(CONFIG_RELOADS, "result" => result).increment(1);
    config_loaded(result == "ok");
}

/// The outcome of a configuration load, at start-up or on a reload.
pub fn config_loaded(ok: bool) {
    gauge!(RELOAD_SUCCESSFUL).set(if ok { 1.0 } else { 0.0 });
    if ok {
        let now = std::time::SystemTime::UNIX_EPOCH.elapsed().unwrap_or_default();
        gauge!(RELOAD_SUCCESS_TIME).set(now.as_secs_f64());
    }
}

/// Certificate files of `target` (`grpc`, `redis`) read at start, taken up or refused on a change.
pub fn tls_loaded(target: &'static str, ok: bool) {
    gauge!(TLS_RELOAD_SUCCESSFUL, "target" => target).set(if ok { 1.0 } else { 0.0 });
}

pub fn tls_reload(target: &'static str, result: &'static str) {
    counter!(TLS_RELOADS, "target" => target, "result" => result).increment(1);
    tls_loaded(target, result == "ok");
}

pub fn tls_handshake_failed(listener: &'static str, reason: &'static str) {
    counter!(TLS_HANDSHAKE_FAILURES, "listener" => listener, "reason" => reason).increment(1);
}

pub fn circuit_opened() {
    counter!(CIRCUIT_OPENINGS).increment(1);
}

pub fn in_flight(now: usize) {
    gauge!(IN_FLIGHT).set(now as f64);
}

pub fn in_flight_limit(limit: usize) {
    gauge!(IN_FLIGHT_LIMIT).set(limit as f64);
}

pub fn circuit_open(open: bool) {
    gauge!(CIRCUIT_OPEN).set(if open { 1.0 } else { 0.0 });
}

/// Adds time spent in fallback. Counters are whole numbers, so milliseconds are summed here and the
/// counter shows the whole seconds of the total.
pub fn fallback_time(elapsed: Duration) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static TOTAL_MS: AtomicU64 = AtomicU64::new(0);
    let ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    let total = TOTAL_MS.fetch_add(ms, Ordering::Relaxed).saturating_add(ms);
    counter!(FALLBACK_TIME).absolute(total / 1000);
}

pub fn shed(reason: &'static str) {
    counter!(SHED, "reason" => reason).increment(1);
}

pub fn over_limit_keys(count: usize) {
    gauge!(OVER_LIMIT_KEYS).set(count as f64);
}

pub fn local_keys(role: &'static str, count: usize) {
    gauge!(LOCAL_KEYS, "role" => role).set(count as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_from_request_values_stay_bounded() {
        let labels: std::collections::HashSet<String> =
            (0..MAX_CLIENT_LABELS + 500).map(|i| client_label(format!("user_{i}"))).collect();
        assert_eq!(labels.len(), MAX_CLIENT_LABELS + 1, "the bound, plus (other)");
        assert!(labels.contains("(other)"));
        assert_eq!(client_label("user_0".into()), "user_0", "a label already shown keeps its name");
    }
}
