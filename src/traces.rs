//! OpenTelemetry traces of decisions (`tracing` in the configuration): one span per call of either
//! API, a child for each request's part in a Redis call, one span per Redis call linked to the
//! requests it carried; exported over OTLP/gRPC in batches from a thread of the SDK's own.
//!
//! Spans are `tracing` spans with the target `sluice::otel`, turned into OpenTelemetry spans by a
//! layer with a filter of its own, so that `log.level` never hides them and the log never prints
//! them. Off (the default) no layer is installed and nothing here does more than read an atomic.
//! On, a span is made only when it can be sampled: a caller's sampled `traceparent`, or none and
//! a `sample_ratio` above 0 (the SDK's ratio then decides). A caller's unsampled `traceparent`
//! costs one parse.
//!
//! What a span records is bounded and never the caller's: the API, the decision, where it came
//! from, how many tiers, the Envoy domain only when it is a configured one, the size of a Redis
//! call. Never an attribute value, a descriptor, a key or an address. A `traceparent` or
//! `tracestate` past its bound, or one that does not parse, is ignored.
//!
//! Must not: decide anything, block a request on the collector, or make spans the caller's headers
//! could multiply.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{Link, SpanContext, SpanKind, TraceContextExt, TraceId};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SamplingDecision, SamplingResult, SdkTracerProvider, ShouldSample};
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::{OpenTelemetrySpanExt, SetParentError};

use crate::config::TraceSettings;

/// The target of every span meant for the collector, and only of those.
pub const TARGET: &str = "sluice::otel";

/// Longest `traceparent` read: version 00's is 55 bytes; later versions may append fields.
const MOST_TRACEPARENT_BYTES: usize = 256;
/// Longest `tracestate` read, the length W3C asks every vendor to pass on; a longer one is
/// dropped whole (the `traceparent` still counts), since its parsing allocates per member.
const MOST_TRACESTATE_BYTES: usize = 512;
/// How long one export may take before the batch is dropped.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long stopping waits for the last spans to go out.
pub const SHUTDOWN_PATIENCE: Duration = Duration::from_secs(3);

/// Spans may be made: the layer exists.
static ON: AtomicBool = AtomicBool::new(false);
/// A decision without a caller's trace context may be sampled: `sample_ratio` > 0.
static ROOTS: AtomicBool = AtomicBool::new(false);

/// Which call a decision span is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    Check,
    Report,
    ShouldRateLimit,
}

impl Api {
    /// The span's name, as gRPC instrumentation names server spans.
    fn rpc(self) -> &'static str {
        match self {
            Api::Check => "sluice.v1.RateLimiter/Check",
            Api::Report => "sluice.v1.RateLimiter/Report",
            Api::ShouldRateLimit => "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
        }
    }

    fn service(self) -> &'static str {
        match self {
            Api::Check | Api::Report => "sluice.v1.RateLimiter",
            Api::ShouldRateLimit => "envoy.service.ratelimit.v3.RateLimitService",
        }
    }

    fn method(self) -> &'static str {
        match self {
            Api::Check => "Check",
            Api::Report => "Report",
            Api::ShouldRateLimit => "ShouldRateLimit",
        }
    }

    fn family(self) -> &'static str {
        match self {
            Api::Check | Api::Report => "native",
            Api::ShouldRateLimit => "envoy",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("tracing.otlp_endpoint: cannot set up the exporter: {0}")]
pub struct TraceError(#[from] opentelemetry_otlp::ExporterBuildError);

/// The exporter and its provider. `shutdown` sends what is left; dropping it does not.
#[derive(Debug)]
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// Builds the exporter (it connects lazily, so a collector that is down is no error) and the
    /// provider, and lets spans be made. Inside the tokio runtime: the gRPC channel lives on it.
    pub fn start(settings: &TraceSettings) -> Result<Traces, TraceError> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(&settings.otlp_endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            // A batch that fails is dropped: retrying would hold the export thread for a collector
            // that is down, while new spans queue up behind it and are dropped anyway.
            .with_retry_policy(opentelemetry_otlp::RetryPolicy::disabled())
            .build()?;
        let root = Sampler::TraceIdRatioBased(settings.sample_ratio);
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(LinkAware(Sampler::ParentBased(Box::new(root))))
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(settings.service_name.clone())
                    .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                    .build(),
            )
            .build();
        ROOTS.store(settings.sample_ratio > 0.0, Ordering::Relaxed);
        ON.store(true, Ordering::Relaxed);
        Ok(Traces { provider })
    }

    /// The layer that turns `sluice::otel` spans (and no others) into exported spans.
    pub fn layer<S>(&self) -> impl tracing_subscriber::Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        use opentelemetry::trace::TracerProvider as _;
        use tracing_subscriber::Layer as _;
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("sluice"))
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_level(false)
            .with_tracked_inactivity(false)
            .with_error_events_to_exceptions(false)
            .with_error_events_to_status(false)
            .with_filter(tracing_subscriber::filter::Targets::new().with_target(TARGET, tracing::Level::INFO))
    }

    /// Sends the spans that have ended (the SDK blocks on it: off the runtime's threads).
    pub async fn flush(&self) {
        let provider = self.provider.clone();
        let _ = tokio::task::spawn_blocking(move || provider.force_flush()).await;
    }

    /// Sends what is left and stops the export thread, waiting `SHUTDOWN_PATIENCE` at most however
    /// the collector fares.
    pub async fn shutdown(self) {
        ON.store(false, Ordering::Relaxed);
        let provider = self.provider;
        let stopping = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_PATIENCE));
        match tokio::time::timeout(SHUTDOWN_PATIENCE + Duration::from_millis(500), stopping).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "traces: the last spans were not all sent"),
            Ok(Err(_)) | Err(_) => tracing::warn!("traces: the exporter did not stop in time"),
        }
    }
}

/// Whether spans may be made at all: when not, callers skip even reading trace headers.
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// The span of one call of `api`, child of the caller's span when its `traceparent` (and
/// `tracestate`) say so; `Span::none()` when it could not be sampled. Set the parent before the
/// span is entered: the sampler runs then.
pub fn decision_span(api: Api, traceparent: Option<&str>, tracestate: Option<&str>) -> Span {
    if !enabled() {
        return Span::none();
    }
    let parent = caller(traceparent, tracestate);
    let remote = parent.span().span_context().clone();
    let sampled = if remote.is_valid() { remote.is_sampled() } else { ROOTS.load(Ordering::Relaxed) };
    if !sampled {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: TARGET,
        "decision",
        otel.name = api.rpc(),
        otel.kind = "server",
        otel.status_code = Empty,
        rpc.system = "grpc",
        rpc.service = api.service(),
        rpc.method = api.method(),
        rpc.grpc.status_code = Empty,
        sluice.api = api.family(),
        sluice.decision = Empty,
        sluice.source = Empty,
        sluice.tiers = Empty,
        sluice.requests = Empty,
        sluice.domain = Empty,
    );
    set_parent(&span, parent);
    span
}

/// What a decision span records once the call is answered.
#[derive(Clone, Copy, Debug, Default)]
pub struct Outcome<'a> {
    /// `Some(true)`: every request allowed; `Some(false)`: one or more denied; `None`: a report.
    pub allowed: Option<bool>,
    /// Where the counts came from (`Source::as_str`), or `None` when no store was asked.
    pub source: Option<&'a str>,
    /// Tiers (or Envoy descriptors) checked or counted.
    pub tiers: usize,
    /// Requests in a `Check` batch.
    pub requests: Option<usize>,
    /// The Envoy domain, only when it is a configured one.
    pub domain: Option<&'a str>,
    /// The call's gRPC status code (0: OK).
    pub grpc_code: i32,
}

/// Records `outcome` on a decision span (nothing when it is `Span::none()`).
pub fn answered(span: &Span, outcome: Outcome<'_>) {
    if span.is_disabled() {
        return;
    }
    if let Some(allowed) = outcome.allowed {
        span.record("sluice.decision", if allowed { "allow" } else { "deny" });
    }
    if let Some(source) = outcome.source {
        span.record("sluice.source", source);
    }
    span.record("sluice.tiers", outcome.tiers as u64);
    if let Some(n) = outcome.requests {
        span.record("sluice.requests", n as u64);
    }
    if let Some(domain) = outcome.domain {
        span.record("sluice.domain", domain);
    }
    span.record("rpc.grpc.status_code", i64::from(outcome.grpc_code));
    if outcome.grpc_code != 0 {
        span.record("otel.status_code", "error");
    }
}

/// One request's wait for, and part in, a Redis call: a child of the decision span being polled,
/// when that one is sampled. With it, that span's context, for the call's span to link to.
pub fn redis_span() -> (Span, Option<SpanContext>) {
    if !enabled() {
        return (Span::none(), None);
    }
    let decision = Span::current();
    let ours = decision.metadata().is_some_and(|m| m.target() == TARGET);
    if !ours || !decision.context().span().span_context().is_sampled() {
        return (Span::none(), None);
    }
    let span = tracing::info_span!(
        target: TARGET,
        parent: &decision,
        "redis",
        otel.name = "sluice.redis.batch",
        db.system.name = "redis",
        db.operation.name = "FCALL",
        db.operation.batch.size = Empty,
        error.type = Empty,
    );
    let own = span.context().span().span_context().clone();
    (span, own.is_sampled().then_some(own))
}

/// What a traced request learns of the call it went in.
#[derive(Clone, Debug)]
pub struct CallSeen {
    /// When the call was sent: the request waited until then.
    pub sent: Instant,
    /// Requests in the call.
    pub size: usize,
    /// The call's span.
    pub call: SpanContext,
}

/// Records on a request's Redis span the call it went in, and how it ended.
pub fn redis_answered(span: &Span, call: Option<&CallSeen>, error: Option<&'static str>) {
    if span.is_disabled() {
        return;
    }
    if let Some(call) = call {
        span.record("db.operation.batch.size", call.size as u64);
        let sent = SystemTime::now().checked_sub(call.sent.elapsed()).unwrap_or_else(SystemTime::now);
        span.add_event_with_timestamp("sent", sent, Vec::new());
        span.add_link(call.call.clone());
    }
    if let Some(kind) = error {
        span.record("error.type", kind);
        span.record("otel.status_code", "error");
    }
}

/// The span of one Redis call, linked to the spans of the traced requests in it (a root of its
/// own: the requests belong to many traces). `None` when no request in it is traced.
pub fn redis_call_span<'a>(
    members: impl Iterator<Item = &'a SpanContext>,
    size: usize,
) -> Option<(Span, SpanContext)> {
    let mut members = members.peekable();
    members.peek()?;
    let span = tracing::info_span!(
        target: TARGET,
        parent: None,
        "redis call",
        otel.name = "FCALL decide",
        otel.kind = "client",
        db.system.name = "redis",
        db.operation.name = "FCALL",
        db.operation.batch.size = size as u64,
        error.type = Empty,
    );
    set_parent(&span, Context::new());
    // Links before the span starts, so that the sampler sees them (see `LinkAware`).
    for member in members {
        span.add_link(member.clone());
    }
    let own = span.context().span().span_context().clone();
    Some((span, own))
}

/// Sets a span's parent, which must happen before the span starts; should it ever not, the span is
/// exported as a root of its own, and the log says so (in every build).
fn set_parent(span: &Span, parent: Context) {
    if let Err(SetParentError::AlreadyStarted) = span.set_parent(parent) {
        tracing::warn!(target: "sluice", "a trace span started before its parent was set: exported without it");
    }
}

/// The caller's trace context, from its W3C headers; empty when they are absent, too long or
/// malformed. Never the context of whatever this thread ran before.
fn caller(traceparent: Option<&str>, tracestate: Option<&str>) -> Context {
    let Some(traceparent) = traceparent.filter(|t| t.len() <= MOST_TRACEPARENT_BYTES) else {
        return Context::new();
    };
    let headers =
        Headers { traceparent, tracestate: tracestate.filter(|t| t.len() <= MOST_TRACESTATE_BYTES) };
    TraceContextPropagator::new().extract_with_context(&Context::new(), &headers)
}

/// The two headers the W3C propagator reads.
struct Headers<'a> {
    traceparent: &'a str,
    tracestate: Option<&'a str>,
}

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => Some(self.traceparent),
            "tracestate" => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        let mut keys = vec!["traceparent"];
        keys.extend(self.tracestate.map(|_| "tracestate"));
        keys
    }
}

/// The configured sampler, except that a span with no parent linked to a sampled span is sampled:
/// a Redis call's span, whose requests are traced, would otherwise fall to `sample_ratio` as a
/// root of its own and be lost at small ratios.
#[derive(Clone, Debug)]
struct LinkAware(Sampler);

impl ShouldSample for LinkAware {
    fn should_sample(
        &self,
        parent: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let has_parent = parent.is_some_and(|cx| cx.has_active_span());
        if !has_parent && links.iter().any(|l| l.span_context.is_sampled()) {
            return SamplingResult {
                decision: SamplingDecision::RecordAndSample,
                attributes: Vec::new(),
                trace_state: Default::default(),
            };
        }
        self.0.should_sample(parent, trace_id, name, kind, attributes, links)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_caller_context_is_read_within_bounds_or_not_at_all() {
        let cx = caller(Some(PARENT), Some("congo=t61rcWkgMzE"));
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid() && sc.is_sampled() && sc.is_remote());
        assert_eq!(sc.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(sc.trace_state().get("congo"), Some("t61rcWkgMzE"));

        let long_state = format!("a={}", "x".repeat(MOST_TRACESTATE_BYTES));
        let sc = caller(Some(PARENT), Some(&long_state)).span().span_context().clone();
        assert!(sc.is_valid() && sc.trace_state().header().is_empty(), "the traceparent still counts");

        let long_parent = format!("{PARENT}-{}", "0".repeat(MOST_TRACEPARENT_BYTES));
        for bad in [
            long_parent.as_str(),
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz",
            "----------------------------------------------------------",
        ] {
            assert!(!caller(Some(bad), Some("a=b")).span().span_context().is_valid(), "{bad:?}");
        }
        assert!(!caller(None, Some("a=b")).has_active_span());
    }

    #[test]
    fn without_a_layer_no_span_is_made() {
        assert!(decision_span(Api::Check, Some(PARENT), None).is_none());
        assert!(redis_span().0.is_none());
    }
}
