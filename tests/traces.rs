//! OpenTelemetry traces (`tracing` in the configuration), received by a real OTLP/gRPC receiver:
//! a decision's span joins the caller's W3C trace, its Redis call shows under it, an unsampled
//! caller gets no spans, and headers that are too long or malformed change nothing but the trace.
//!
//! The in-process servers share one global subscriber and one exporter (a process has one), on a
//! runtime of their own that outlives every test; the binary's tests run their own process.

mod common;

use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::otlp::{CLIENT, INTERNAL, Receiver, SERVER, Span, attr, hex};
use common::{RedisServer, SluiceServer, pick_port, request};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{RateLimitDescriptor, rate_limit_descriptor};
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use sluice::api::pb;
use sluice::traces::Traces;
use tonic::metadata::AsciiMetadataValue;
use tracing_subscriber::layer::SubscriberExt;

const CHECK: &str = "sluice.v1.RateLimiter/Check";
const REPORT: &str = "sluice.v1.RateLimiter/Report";
const SHOULD_RATE_LIMIT: &str = "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

/// One request per minute per ip.
const TIERS: &str = "tiers:\n  - name: per_ip\n    key: [ip]\n    limit: 1\n    window: 1m\n";

/// The receiver and the exporter the in-process servers' spans go to (sample_ratio 1, so that a
/// request whose headers are ignored shows as a trace of its own).
struct Collector {
    receiver: Receiver,
    traces: Traces,
    _runtime: tokio::runtime::Runtime,
}

fn collector() -> &'static Collector {
    static COLLECTOR: OnceLock<Collector> = OnceLock::new();
    // Built on a thread of its own: a test's runtime cannot block on another runtime.
    COLLECTOR.get_or_init(|| std::thread::spawn(start_collector).join().expect("start the collector"))
}

fn start_collector() -> Collector {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let (receiver, traces) = runtime.block_on(async {
        let receiver = Receiver::start().await;
        let yaml = format!(
            "tracing:\n  otlp_endpoint: {}\n  sample_ratio: 1\n  service_name: sluice-test\ntiers: []\n",
            receiver.endpoint()
        );
        let settings = sluice::config::parse(&yaml, "traces.yaml", Some(Default::default())).expect("config");
        let traces = Traces::start(&settings.tracing.expect("tracing on")).expect("exporter");
        (receiver, traces)
    });
    // As the binary has it: a log layer filtered at `warn`, which must not hide the INFO spans.
    let log = tracing_subscriber::fmt::layer()
        .with_test_writer()
        .with_filter(tracing_subscriber::EnvFilter::new("warn,sluice::otel=off"));
    use tracing_subscriber::Layer as _;
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(log).with(traces.layer()))
        .expect("the only global subscriber of this test binary");
    Collector { receiver, traces, _runtime: runtime }
}

impl Collector {
    /// The spans of trace `trace_id` once there are at least `count`, sending what has ended.
    async fn wait_for(&self, trace_id: &str, count: usize) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            self.traces.flush().await;
            let spans = self.receiver.trace(trace_id);
            if spans.len() >= count {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "{} spans of trace {trace_id}, not {count}: {spans:#?}",
                spans.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Decision spans of `name` with no parent: traces begun here, for requests whose headers were
    /// ignored.
    fn roots(&self, name: &str) -> Vec<Span> {
        self.receiver
            .spans()
            .into_iter()
            .map(|e| e.span)
            .filter(|s| s.name == name && s.parent_span_id.is_empty())
            .collect()
    }
}

/// A caller's span: a fresh trace id and span id.
struct Parent {
    trace_id: String,
    span_id: String,
    sampled: bool,
}

impl Parent {
    fn new(sampled: bool) -> Parent {
        let nonzero = |n: u128| n.max(1);
        Parent {
            trace_id: format!("{:032x}", nonzero(rand::random())),
            span_id: format!("{:016x}", rand::random::<u64>().max(1)),
            sampled,
        }
    }

    /// A child span of the same trace, for calls made concurrently.
    fn sibling(&self) -> Parent {
        Parent {
            span_id: format!("{:016x}", rand::random::<u64>().max(1)),
            trace_id: self.trace_id.clone(),
            ..*self
        }
    }

    fn traceparent(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.span_id, if self.sampled { "01" } else { "00" })
    }
}

fn with_headers<T>(message: T, headers: &[(&'static str, AsciiMetadataValue)]) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    for (name, value) in headers {
        request.metadata_mut().insert(*name, value.clone());
    }
    request
}

fn traceparent(parent: &Parent) -> [(&'static str, AsciiMetadataValue); 1] {
    [("traceparent", parent.traceparent().parse().expect("ascii"))]
}

fn check_request(ip: &str) -> pb::CheckRequest {
    pb::CheckRequest { requests: vec![request(&[("ip", ip)])], dry_run: false }
}

async fn check(
    client: &mut pb::rate_limiter_client::RateLimiterClient<tonic::transport::Channel>,
    ip: &str,
    headers: &[(&'static str, AsciiMetadataValue)],
) -> pb::Decision {
    let response = client.check(with_headers(check_request(ip), headers)).await.expect("check answered");
    response.into_inner().decisions.remove(0)
}

/// Headers a hostile or broken caller sends; each must be ignored, the decision made as ever.
fn garbage() -> Vec<Vec<(&'static str, AsciiMetadataValue)>> {
    let huge = format!("00-{}-00f067aa0ba902b7-01", "4bf92f3577b34da6a3ce929d0e0e4736".repeat(250));
    let valid_looking_but_long =
        format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-{}", "0".repeat(300));
    let value = |s: &str| AsciiMetadataValue::try_from(s).expect("ascii");
    vec![
        vec![("traceparent", value(&huge))],
        vec![("traceparent", value(&valid_looking_but_long))],
        vec![("traceparent", value("00-zzzz-yyyy-01")), ("tracestate", value(&"k=v,".repeat(2000)))],
        vec![("traceparent", value("00-00000000000000000000000000000000-00f067aa0ba902b7-01"))],
        vec![(
            "traceparent",
            AsciiMetadataValue::try_from(
                &b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-\xff\xfe"[..],
            )
            .expect("obs-text is a header value"),
        )],
    ]
}

fn only<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    let named: Vec<&Span> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(named.len(), 1, "one {name} span expected in {spans:#?}");
    named[0]
}

/// The decision span of a call under `parent`: its trace, its parent, a server span, the gRPC
/// attributes.
fn decision<'a>(spans: &'a [Span], name: &str, parent: &Parent) -> &'a Span {
    let span = spans
        .iter()
        .find(|s| s.name == name && hex(&s.parent_span_id) == parent.span_id)
        .unwrap_or_else(|| panic!("no {name} span under {}: {spans:#?}", parent.span_id));
    assert_eq!(hex(&span.trace_id), parent.trace_id);
    assert_eq!(span.kind, SERVER);
    assert_eq!(attr(span, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(attr(span, "rpc.method").as_deref(), name.rsplit('/').next());
    assert_eq!(attr(span, "rpc.grpc.status_code").as_deref(), Some("0"));
    span
}

fn children<'a>(spans: &'a [Span], of: &Span) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.parent_span_id == of.span_id).collect()
}

#[tokio::test]
async fn decisions_on_the_in_process_store_join_the_callers_trace() {
    let collector = collector();
    let server = SluiceServer::start(TIERS, None).await;
    let mut client = server.client().await;

    let caller = Parent::new(true);
    let mut headers = traceparent(&caller).to_vec();
    headers.push(("tracestate", "congo=t61rcWkgMzE".parse().expect("ascii")));
    assert!(check(&mut client, "10.0.0.1", &headers).await.allowed);
    let second = caller.sibling();
    assert!(!check(&mut client, "10.0.0.1", &traceparent(&second)).await.allowed);
    // A tracestate past its bound is dropped; the traceparent still counts.
    let long_state = caller.sibling();
    let mut headers = traceparent(&long_state).to_vec();
    headers.push(("tracestate", format!("a={}", "b".repeat(600)).parse().expect("ascii")));
    check(&mut client, "10.0.0.2", &headers).await;
    let report = caller.sibling();
    let message = pb::ReportRequest {
        attributes: request(&[("ip", "10.0.0.3")]).attributes,
        outcome: pb::Outcome::Failure.into(),
        tiers: vec![],
    };
    client.report(with_headers(message, &traceparent(&report))).await.expect("report answered");

    let unsampled = Parent::new(false);
    check(&mut client, "10.0.0.4", &traceparent(&unsampled)).await;
    let roots_before = collector.roots(CHECK).len();
    let garbage = garbage();
    for (i, headers) in garbage.iter().enumerate() {
        let d = check(&mut client, &format!("10.0.1.{i}"), headers).await;
        assert!(d.allowed && d.source == "local", "garbage {i}: the decision is made as ever: {d:?}");
    }

    let spans = collector.wait_for(&caller.trace_id, 4).await;
    let allowed = decision(&spans, CHECK, &caller);
    assert_eq!(allowed.trace_state, "congo=t61rcWkgMzE", "the caller's tracestate is carried on");
    for (key, value) in [
        ("sluice.api", "native"),
        ("sluice.decision", "allow"),
        ("sluice.source", "local"),
        ("sluice.tiers", "1"),
        ("sluice.requests", "1"),
        ("rpc.service", "sluice.v1.RateLimiter"),
    ] {
        assert_eq!(attr(allowed, key).as_deref(), Some(value), "{key} of {allowed:#?}");
    }
    assert!(children(&spans, allowed).is_empty(), "no Redis, no Redis span: {spans:#?}");
    let denied = decision(&spans, CHECK, &second);
    assert_eq!(attr(denied, "sluice.decision").as_deref(), Some("deny"));
    assert_eq!(decision(&spans, CHECK, &long_state).trace_state, "");
    let reported = decision(&spans, REPORT, &report);
    assert_eq!(attr(reported, "sluice.tiers").as_deref(), Some("0"));
    assert_eq!(attr(reported, "sluice.decision"), None);
    for span in &spans {
        let names: Vec<&str> = span.attributes.iter().map(|kv| kv.key.as_str()).collect();
        assert!(
            names.iter().all(|n| n.starts_with("rpc.") || n.starts_with("sluice.")),
            "only the API's and Sluice's attributes, never the request's: {names:?}"
        );
    }
    let service = collector.receiver.spans().into_iter().find(|e| e.span.span_id == allowed.span_id);
    assert_eq!(service.map(|e| e.service).as_deref(), Some("sluice-test"));

    // Ignored headers: a trace begun here for each, which the caller's values never reach.
    let roots = collector.roots(CHECK);
    assert_eq!(roots.len() - roots_before, garbage.len(), "one fresh trace per ignored header: {roots:#?}");
    assert!(
        roots
            .iter()
            .all(|s| hex(&s.trace_id) != "4bf92f3577b34da6a3ce929d0e0e4736" && s.trace_state.is_empty())
    );
    assert!(collector.receiver.trace(&unsampled.trace_id).is_empty(), "an unsampled caller gets no spans");
    server.shutdown().await;
}

const EDGE: &str = "domain: edge\ndescriptors:\n  - key: remote_address\n    rate_limit: {unit: minute, requests_per_unit: 1}\n";

fn envoy_request(domain: &str, address: &str) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![rate_limit_descriptor::Entry {
                key: "remote_address".into(),
                value: address.into(),
            }],
            ..Default::default()
        }],
        hits_addend: 1,
    }
}

#[tokio::test]
async fn decisions_on_redis_show_their_batched_call() {
    let collector = collector();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("edge.yaml"), EDGE).expect("domain file");
    let yaml = format!("envoy:\n  paths: [\"{}\"]\n{TIERS}", dir.path().display());
    let server = SluiceServer::start_with_timeout(&yaml, Some(&redis.url()), 2000).await;
    let mut client = server.client().await;
    let mut envoy =
        RateLimitServiceClient::connect(format!("http://{}", server.grpc_addr)).await.expect("connect");

    // Concurrent calls of one trace, so that some share a Redis call.
    let caller = Parent::new(true);
    let parents: Vec<Parent> = (0..16).map(|_| caller.sibling()).collect();
    let calls = parents.iter().enumerate().map(|(i, p)| {
        let mut client = client.clone();
        async move { check(&mut client, &format!("10.1.0.{i}"), &traceparent(p)).await }
    });
    for d in futures::future::join_all(calls).await {
        assert!(d.allowed && d.source == "redis", "{d:?}");
    }

    let envoy_caller = Parent::new(true);
    let first = envoy
        .should_rate_limit(with_headers(envoy_request("edge", "10.2.0.1"), &traceparent(&envoy_caller)))
        .await
        .expect("answered");
    assert_eq!(first.into_inner().overall_code, Code::Ok as i32);
    let over = envoy_caller.sibling();
    let second = envoy
        .should_rate_limit(with_headers(envoy_request("edge", "10.2.0.1"), &traceparent(&over)))
        .await
        .expect("answered");
    assert_eq!(second.into_inner().overall_code, Code::OverLimit as i32);
    // A domain nobody configured is the caller's text: it is not recorded.
    let unknown = envoy_caller.sibling();
    envoy
        .should_rate_limit(with_headers(envoy_request("customer-4711", "10.2.0.1"), &traceparent(&unknown)))
        .await
        .expect("answered");

    let unsampled = Parent::new(false);
    check(&mut client, "10.3.0.1", &traceparent(&unsampled)).await;
    envoy
        .should_rate_limit(with_headers(envoy_request("edge", "10.3.0.2"), &traceparent(&unsampled)))
        .await
        .expect("answered");
    let roots_before = collector.roots(SHOULD_RATE_LIMIT).len();
    let garbage = garbage();
    for (i, headers) in garbage.iter().enumerate() {
        let answer = envoy
            .should_rate_limit(with_headers(envoy_request("edge", &format!("10.4.0.{i}")), headers))
            .await
            .unwrap_or_else(|e| panic!("garbage {i}: the decision is made as ever: {e:?}"));
        assert_eq!(answer.into_inner().overall_code, Code::Ok as i32);
    }

    // Each Check: its decision span, with a Redis span under it that links to its call's span.
    let spans = collector.wait_for(&caller.trace_id, 2 * parents.len()).await;
    let all: Vec<Span> = collector.receiver.spans().into_iter().map(|e| e.span).collect();
    for parent in &parents {
        let decided = decision(&spans, CHECK, parent);
        assert_eq!(attr(decided, "sluice.source").as_deref(), Some("redis"));
        assert_eq!(attr(decided, "sluice.decision").as_deref(), Some("allow"));
        let under = children(&spans, decided);
        assert_eq!(under.len(), 1, "one Redis span under each decision: {under:#?}");
        let part = under[0];
        assert_eq!((part.name.as_str(), part.kind), ("sluice.redis.batch", INTERNAL));
        assert_eq!(attr(part, "db.system.name").as_deref(), Some("redis"));
        assert_eq!(attr(part, "db.operation.name").as_deref(), Some("FCALL"));
        assert!(part.events.iter().any(|e| e.name == "sent"), "{part:#?}");
        assert!(part.start_time_unix_nano >= decided.start_time_unix_nano);
        assert!(part.end_time_unix_nano <= decided.end_time_unix_nano);
        let size: usize =
            attr(part, "db.operation.batch.size").and_then(|n| n.parse().ok()).expect("batch size");
        assert_eq!(part.links.len(), 1, "{part:#?}");
        let call = all
            .iter()
            .find(|s| s.span_id == part.links[0].span_id)
            .unwrap_or_else(|| panic!("the linked call span was exported: {part:#?}"));
        assert_eq!((call.name.as_str(), call.kind), ("FCALL decide", CLIENT));
        assert!(call.parent_span_id.is_empty(), "a call's span begins a trace of its own");
        assert_eq!(attr(call, "db.operation.batch.size"), Some(size.to_string()));
        assert!(call.links.iter().any(|l| l.span_id == part.span_id), "the call links back: {call:#?}");
        assert!(call.links.len() <= size);
    }

    let spans = collector.wait_for(&envoy_caller.trace_id, 5).await;
    let ok = decision(&spans, SHOULD_RATE_LIMIT, &envoy_caller);
    let denied = decision(&spans, SHOULD_RATE_LIMIT, &over);
    for (span, verdict) in [(ok, "allow"), (denied, "deny")] {
        assert_eq!(attr(span, "sluice.api").as_deref(), Some("envoy"));
        assert_eq!(attr(span, "sluice.domain").as_deref(), Some("edge"));
        assert_eq!(attr(span, "sluice.decision").as_deref(), Some(verdict));
        assert_eq!(attr(span, "sluice.source").as_deref(), Some("redis"));
        assert_eq!(attr(span, "sluice.tiers").as_deref(), Some("1"));
        assert_eq!(
            only(&children(&spans, span).into_iter().cloned().collect::<Vec<_>>(), "sluice.redis.batch").kind,
            INTERNAL
        );
    }
    let unknown_span = decision(&spans, SHOULD_RATE_LIMIT, &unknown);
    assert_eq!(attr(unknown_span, "sluice.domain"), None, "{unknown_span:#?}");
    assert_eq!(attr(unknown_span, "sluice.decision").as_deref(), Some("allow"));
    assert!(children(&spans, unknown_span).is_empty(), "nothing asked of Redis");

    let roots = collector.roots(SHOULD_RATE_LIMIT);
    assert_eq!(roots.len() - roots_before, garbage.len(), "one fresh trace per ignored header: {roots:#?}");
    assert!(collector.receiver.trace(&unsampled.trace_id).is_empty(), "an unsampled caller gets no spans");
    server.shutdown().await;
}

/// `sluice serve` with `tracing` configured: the file's section and an environment override.
fn serve(endpoint: &str) -> (common::Process, u16, u16, tempfile::NamedTempFile) {
    let (grpc, http) = (pick_port(false), pick_port(false));
    let file = common::write_config(&format!(
        "server:\n  grpc_addr: 127.0.0.1:{grpc}\n  http_addr: 127.0.0.1:{http}\n  drain_secs: 0\nlog:\n  level: warn\n\
         tracing:\n  otlp_endpoint: {endpoint}\n  sample_ratio: 0\n{TIERS}"
    ));
    let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--config"])
        .arg(file.path())
        .env("SLUICE__TRACING__SERVICE_NAME", "edge-limiter")
        .env_remove("SLUICE__REDIS__URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sluice serve");
    (common::Process(child), grpc, http, file)
}

async fn ready(http: u16) {
    let addr = format!("127.0.0.1:{http}").parse().expect("addr");
    assert_eventually!(
        tokio::net::TcpStream::connect(addr).await.is_ok()
            && common::http_get(addr, "/readyz").await.0 == 200,
        Duration::from_secs(10),
        "sluice serve did not become ready"
    );
}

/// SIGTERM, then how long it took to exit (successfully).
async fn stop(process: &mut common::Process) -> Duration {
    let asked = Instant::now();
    common::signal(process.id(), "TERM");
    loop {
        if let Some(status) = process.exited() {
            assert!(status.success(), "sluice exited with {status}");
            return asked.elapsed();
        }
        assert!(asked.elapsed() < Duration::from_secs(20), "sluice did not stop within 20 s of SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_binary_sends_its_last_spans_when_it_stops() {
    let receiver = Receiver::start().await;
    let (mut process, grpc, http, _file) = serve(&receiver.endpoint());
    ready(http).await;
    let mut client = pb::rate_limiter_client::RateLimiterClient::connect(format!("http://127.0.0.1:{grpc}"))
        .await
        .expect("connect");
    let caller = Parent::new(true);
    assert!(check(&mut client, "10.5.0.1", &traceparent(&caller)).await.allowed);
    // sample_ratio 0: without a caller's trace, nothing.
    check(&mut client, "10.5.0.2", &[]).await;

    // The exporter sends every 5 s; stopping sends at once.
    stop(&mut process).await;
    let spans = receiver.spans();
    let decided = spans.iter().find(|e| hex(&e.span.trace_id) == caller.trace_id);
    let decided = decided.unwrap_or_else(|| panic!("the span was sent on SIGTERM: {spans:#?}"));
    assert_eq!(decided.service, "edge-limiter", "SLUICE__TRACING__SERVICE_NAME");
    assert_eq!(hex(&decided.span.parent_span_id), caller.span_id);
    assert_eq!(decided.span.name, CHECK, "log.level warn hides no span");
    assert_eq!(spans.len(), 1, "ratio 0: no trace begins in Sluice: {spans:#?}");
}

#[tokio::test]
async fn a_collector_that_never_answers_changes_no_decision_and_delays_shutdown_a_little() {
    // Accepts connections (the kernel does) and never answers: the worst a collector can do.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = format!("http://{}", silent.local_addr().expect("addr"));
    let (mut process, grpc, http, _file) = serve(&endpoint);
    ready(http).await;
    let mut client = pb::rate_limiter_client::RateLimiterClient::connect(format!("http://127.0.0.1:{grpc}"))
        .await
        .expect("connect");
    let started = Instant::now();
    for i in 0..50 {
        let d = check(&mut client, &format!("10.6.0.{i}"), &traceparent(&Parent::new(true))).await;
        assert!(d.allowed && d.source == "local", "{d:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(5), "50 decisions took {:?}", started.elapsed());
    let stopping = stop(&mut process).await;
    assert!(stopping < Duration::from_secs(8), "stopping took {stopping:?}: the exporter's wait is bounded");
    drop(silent);
}

/// The HTTP API reads `traceparent` from its headers: `/v1/check` and forward-auth make `Check`
/// spans under the caller's span.
#[tokio::test]
async fn http_calls_join_the_callers_trace() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let collector = collector();
    let yaml = format!("http_api:\n  addr: 127.0.0.1:0\n{TIERS}");
    let server = SluiceServer::start(&yaml, None).await;
    let to = server.http_api_addr.expect("the HTTP API");
    let send = |method: &'static str, path: &'static str, traceparent: String, body: &'static str| async move {
        let mut stream = tokio::net::TcpStream::connect(to).await.expect("connect");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\ntraceparent: {traceparent}\r\n\
             X-Forwarded-For: 10.9.9.9\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read");
        String::from_utf8_lossy(&raw).into_owned()
    };
    let caller = Parent::new(true);
    let json = send(
        "POST",
        "/v1/check",
        caller.traceparent(),
        r#"{"requests": [{"attributes": {"ip": "10.8.0.1"}}]}"#,
    )
    .await;
    assert!(json.starts_with("HTTP/1.1 200"), "{json}");
    let gate = caller.sibling();
    let answer = send("GET", "/v1/forward-auth", gate.traceparent(), "").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let spans = collector.wait_for(&caller.trace_id, 2).await;
    for parent in [&caller, &gate] {
        let span = decision(&spans, CHECK, parent);
        assert_eq!(attr(span, "sluice.decision").as_deref(), Some("allow"));
        assert_eq!(attr(span, "sluice.source").as_deref(), Some("local"));
    }
}
