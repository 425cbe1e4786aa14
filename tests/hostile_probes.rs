//! Hostile input over real gRPC, the second round: a caller's deadline, the over-limit cache,
//! Envoy's refunds, requests that can never pass, and adaptive limits at the burst threshold. Each
//! asserts what DESIGN.md and README.md promise, and each once failed: a client picked its own
//! failure mode with `grpc-timeout: 1n`, a cached denial told a wait too short, a refund was
//! charged, and a retry-after was wrong for the attempt that followed it.

mod common;

use std::time::Duration;

use common::{RedisServer, SluiceServer, request};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{RateLimitDescriptor, rate_limit_descriptor};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::UInt64Value;
use sluice::api::pb;
use sluice::api::pb::rate_limiter_client::RateLimiterClient;
use tonic::transport::Channel;

/// One gRPC call over a raw HTTP/2 stream, with a `grpc-timeout` header when given: sent as is,
/// so that the client itself does not give up before the answer arrives. `Err` holds the status.
async fn raw_call<Req: prost::Message, Resp: prost::Message + Default>(
    addr: std::net::SocketAddr,
    path: &str,
    message: &Req,
    grpc_timeout: Option<&str>,
) -> Result<Resp, String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut send, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut head = tonic::codegen::http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(t) = grpc_timeout {
        head = head.header("grpc-timeout", t);
    }
    let message = message.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(message.len()).expect("small").to_be_bytes());
    frame.extend_from_slice(&message);
    let (response, mut body) = send.send_request(head.body(()).expect("head"), false).expect("open a stream");
    // The server may answer (and close the stream) before the body is sent, when the deadline
    // has already passed.
    let _ = body.send_data(bytes::Bytes::from(frame), true);
    let call = async {
        let mut response = response.await.map_err(|e| format!("no response: {e}"))?;
        let mut data = Vec::new();
        let payload = response.body_mut();
        while let Some(chunk) = payload.data().await {
            let chunk = chunk.expect("body chunk");
            let _ = payload.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        let trailers = payload.trailers().await.expect("trailers").unwrap_or_default();
        let status = trailers
            .get("grpc-status")
            .or_else(|| response.headers().get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_owned();
        if status != "0" {
            let message = trailers.get("grpc-message").and_then(|v| v.to_str().ok()).unwrap_or_default();
            return Err(format!("grpc-status {status}: {message}"));
        }
        Ok(Resp::decode(&data[5..]).expect("a response message"))
    };
    tokio::time::timeout(Duration::from_secs(3), call).await.expect("answered in 3 s")
}

/// One `Check` of one request, with a raw `grpc-timeout` header when given.
async fn check_at(
    addr: std::net::SocketAddr,
    req: pb::RateRequest,
    grpc_timeout: Option<&str>,
) -> pb::Decision {
    let call = pb::CheckRequest { requests: vec![req], dry_run: false };
    let answer: pb::CheckResponse =
        raw_call(addr, "/sluice.v1.RateLimiter/Check", &call, grpc_timeout).await.expect("check");
    answer.decisions.into_iter().next().expect("one decision")
}

/// One `Check` of one request through the tonic client.
async fn check_with(
    c: &mut RateLimiterClient<Channel>,
    req: pb::RateRequest,
    _grpc_timeout: Option<&str>,
) -> pb::Decision {
    let call = tonic::Request::new(pb::CheckRequest { requests: vec![req], dry_run: false });
    let answer = tokio::time::timeout(Duration::from_secs(3), c.check(call)).await.expect("answered in 3 s");
    answer.expect("check").into_inner().decisions.remove(0)
}

fn costly(attrs: &[(&str, &str)], cost: u64) -> pb::RateRequest {
    pb::RateRequest { cost: Some(cost), ..request(attrs) }
}

fn entry(k: &str, v: &str) -> rate_limit_descriptor::Entry {
    rate_limit_descriptor::Entry { key: k.into(), value: v.into() }
}

async fn envoy(server: &SluiceServer) -> RateLimitServiceClient<Channel> {
    RateLimitServiceClient::connect(format!("http://{}", server.grpc_addr)).await.expect("connect")
}

async fn ask_with(
    c: &mut RateLimitServiceClient<Channel>,
    domain: &str,
    descriptors: Vec<RateLimitDescriptor>,
    _grpc_timeout: Option<&str>,
) -> RateLimitResponse {
    let call = RateLimitRequest { domain: domain.into(), descriptors, hits_addend: 1 };
    tokio::time::timeout(Duration::from_secs(3), c.should_rate_limit(call))
        .await
        .expect("answered in 3 s")
        .expect("ShouldRateLimit")
        .into_inner()
}

/// One `ShouldRateLimit` over a raw stream, with a raw `grpc-timeout` header when given.
async fn ask_at(
    addr: std::net::SocketAddr,
    domain: &str,
    descriptors: Vec<RateLimitDescriptor>,
    grpc_timeout: Option<&str>,
) -> Result<RateLimitResponse, String> {
    let call = RateLimitRequest { domain: domain.into(), descriptors, hits_addend: 1 };
    raw_call(addr, "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit", &call, grpc_timeout).await
}

fn header<'r>(r: &'r RateLimitResponse, name: &str) -> Option<&'r str> {
    r.response_headers_to_add.iter().find(|h| h.key.eq_ignore_ascii_case(name)).map(|h| h.value.as_str())
}

const LOGIN: &str = "
tiers:
  - name: login
    key: [ip]
    limit: 3
    window: 1m
";

/// A caller that sends a deadline it knows cannot be met is answered by the failure mode; with the
/// default `local` that is the fallback's own buckets, a second quota beside Redis's. Promised:
/// whatever a request holds, it cannot get more than the limit admits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_deadline_gets_no_more_than_the_limit_native() {
    let redis = RedisServer::start();
    let server = SluiceServer::start(LOGIN, Some(&redis.url())).await;
    let addr = server.grpc_addr;
    let attrs = [("ip", "198.51.100.7")];
    let mut admitted = 0;
    let mut sources = Vec::new();
    for _ in 0..3 {
        let d = check_at(addr, request(&attrs), None).await;
        admitted += u32::from(d.allowed);
        sources.push(d.source);
    }
    for timeout in ["1n", "0n", "1m", "500u"] {
        let call = pb::CheckRequest { requests: vec![request(&attrs)], dry_run: false };
        match raw_call::<_, pb::CheckResponse>(addr, "/sluice.v1.RateLimiter/Check", &call, Some(timeout))
            .await
        {
            Ok(answer) => {
                admitted += u32::from(answer.decisions[0].allowed);
                sources.push(answer.decisions[0].source.clone());
            }
            // Refused as late: DEADLINE_EXCEEDED from Sluice, or CANCELLED from tonic's own timer
            // when the machine is too busy to run the handler within the deadline at all.
            Err(status) => {
                assert!(
                    status.starts_with("grpc-status 4:") || status.starts_with("grpc-status 1:"),
                    "{status}"
                );
                sources.push(status);
            }
        }
    }
    assert!(admitted <= 3, "{admitted} admitted on a limit of 3 in one window; sources {sources:?}");
}

/// A tier that fails open while Redis is down (`on_redis_failure: allow`) is no limit at all for a
/// caller that sends a deadline of one nanosecond, though Redis is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_deadline_does_not_open_a_tier_that_fails_open() {
    let redis = RedisServer::start();
    let yaml =
        "tiers:\n  - name: feed\n    key: [ip]\n    limit: 3\n    window: 1m\n    on_redis_failure: allow\n";
    let server = SluiceServer::start(yaml, Some(&redis.url())).await;
    let attrs = [("ip", "198.51.100.9")];
    let mut admitted = 0;
    for _ in 0..50 {
        let call = pb::CheckRequest { requests: vec![request(&attrs)], dry_run: false };
        let answer: Result<pb::CheckResponse, String> =
            raw_call(server.grpc_addr, "/sluice.v1.RateLimiter/Check", &call, Some("1n")).await;
        admitted += u32::from(answer.is_ok_and(|a| a.decisions[0].allowed));
    }
    let d = check_at(server.grpc_addr, request(&attrs), None).await;
    assert!(
        admitted <= 3,
        "{admitted} of 50 admitted on a limit of 3; then Redis says {} remaining",
        d.remaining
    );
}

/// The same through `ShouldRateLimit`, which has no over-limit cache: a flood of short-deadline
/// calls is counted only in the fallback buckets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_deadline_gets_no_more_than_the_limit_envoy() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("d.yaml"),
        "domain: d\ndescriptors:\n  - key: ip\n    rate_limit: {unit: minute, requests_per_unit: 3}\n",
    )
    .expect("write");
    let yaml = format!("envoy:\n  paths: [\"{}\"]\ntiers: []\n", dir.path().display());
    let server = SluiceServer::start(&yaml, Some(&redis.url())).await;
    let d = || RateLimitDescriptor { entries: vec![entry("ip", "198.51.100.8")], ..Default::default() };
    let mut ok = 0;
    let mut answers = Vec::new();
    for i in 0..8 {
        let timeout = if i % 2 == 0 { None } else { Some("1m") };
        match ask_at(server.grpc_addr, "d", vec![d()], timeout).await {
            Ok(r) => {
                ok += u32::from(r.overall_code == Code::Ok as i32);
                answers.push(format!("{timeout:?}: {:?}", Code::try_from(r.overall_code)));
            }
            Err(status) => answers.push(format!("{timeout:?}: {status}")),
        }
    }
    assert!(ok <= 3, "{ok} of 8 calls OK on a limit of 3 per minute: {answers:?}");
}

/// Both stores, one tier of 10 per 2 s on a sliding window.
async fn both(yaml: &str) -> (RedisServer, Vec<(&'static str, SluiceServer)>) {
    let redis = RedisServer::start();
    let mut servers = Vec::new();
    if wanted("in process") {
        servers.push(("in process", SluiceServer::start(yaml, None).await));
    }
    if wanted("redis") {
        servers.push(("redis", SluiceServer::start(yaml, Some(&redis.url())).await));
    }
    (redis, servers)
}

/// `SLUICE_PROBE_STORE=redis` (or `in process`) runs the two-store probes on one store only.
fn wanted(store: &str) -> bool {
    std::env::var("SLUICE_PROBE_STORE").map_or(true, |s| s == store)
}

const TEN: &str = "
tiers:
  - name: ten
    key: [ip]
    limit: 10
    window: 2s
";

/// The over-limit cache answers a larger cost with the retry-after of the smaller cost it saw
/// denied. Promised: retry-after is the shortest wait after which the same request passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_denial_tells_the_retry_of_the_request_asked() {
    let (_redis, servers) = both(TEN).await;
    for (store, server) in &servers {
        let mut c = server.client().await;
        let attrs = [("ip", "203.0.113.50")];
        // Start early in a fixed window so that the waits below stay apart.
        let d = check_with(&mut c, costly(&attrs, 10), None).await;
        assert!(d.allowed, "{store}");
        let small = check_with(&mut c, costly(&attrs, 1), None).await;
        assert!(!small.allowed, "{store}");
        let big = check_with(&mut c, costly(&attrs, 10), None).await;
        assert!(!big.allowed, "{store}");
        tokio::time::sleep(Duration::from_millis(big.retry_after_ms + 30)).await;
        let again = check_with(&mut c, costly(&attrs, 10), None).await;
        assert!(
            again.allowed,
            "{store}: cost 10 denied again after waiting its retry-after of {} ms (source {}; cost 1 was told {} ms; \
             now told {} ms more)",
            big.retry_after_ms, big.source, small.retry_after_ms, again.retry_after_ms
        );
    }
}

const TWO_TIERS: &str = "
tiers:
  - name: per_ip
    key: [ip]
    limit: 1
    window: 2s
  - name: per_user
    key: [user]
    limit: 2
    window: 6s
";

/// The cache answers from the first tier it holds, though another tier of the request denies
/// for longer. Promised: the retry-after is the maximum over the denying tiers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_denial_waits_for_every_denying_tier() {
    let (_redis, servers) = both(TWO_TIERS).await;
    for (store, server) in &servers {
        let mut c = server.client().await;
        let a = [("ip", "192.0.2.1"), ("user", "mallory")];
        let b = [("ip", "192.0.2.2"), ("user", "mallory")];
        assert!(check_with(&mut c, request(&a), None).await.allowed, "{store}");
        // per_ip denies for ip a: kept in the cache.
        let first = check_with(&mut c, request(&a), None).await;
        assert!(!first.allowed && first.tier == "per_ip", "{store}: {first:?}");
        // Another ip uses up the user's quota.
        assert!(check_with(&mut c, request(&b), None).await.allowed, "{store}");
        let cached = check_with(&mut c, request(&a), None).await;
        assert!(!cached.allowed, "{store}");
        tokio::time::sleep(Duration::from_millis(cached.retry_after_ms + 30)).await;
        let again = check_with(&mut c, request(&a), None).await;
        assert!(
            again.allowed,
            "{store}: denied by {} after waiting the {} ms the {} answer gave (tier {})",
            again.tier, cached.retry_after_ms, cached.source, cached.tier
        );
    }
}

const REFUND: &str =
    "domain: r\ndescriptors:\n  - key: ip\n    rate_limit: {unit: minute, requests_per_unit: 10}\n";

async fn envoy_both(
    domain_file: &str,
    extra: &str,
) -> (RedisServer, tempfile::TempDir, Vec<(&'static str, SluiceServer)>) {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("d.yaml"), domain_file).expect("write");
    let yaml = format!("envoy:\n  paths: [\"{}\"]\n{extra}tiers: []\n", dir.path().display());
    let mut servers = Vec::new();
    if wanted("in process") {
        servers.push(("in process", SluiceServer::start(&yaml, None).await));
    }
    if wanted("redis") {
        servers.push(("redis", SluiceServer::start(&yaml, Some(&redis.url())).await));
    }
    (redis, dir, servers)
}

/// `is_negative_hits` asks to give units back. Taking them instead turns a gateway's refund into
/// a second charge; the field must be honoured or refused, never read as more hits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_is_never_counted_as_hits() {
    let (_redis, _dir, servers) = envoy_both(REFUND, "").await;
    for (store, server) in &servers {
        let mut c = envoy(server).await;
        let d = |hits: u64, negative: bool| RateLimitDescriptor {
            entries: vec![entry("ip", "10.1.1.1")],
            hits_addend: Some(UInt64Value { value: hits }),
            is_negative_hits: negative,
            ..Default::default()
        };
        let r = ask_with(&mut c, "r", vec![d(5, false)], None).await;
        assert_eq!(r.statuses[0].limit_remaining, 5, "{store}");
        let refund = c
            .should_rate_limit(RateLimitRequest {
                domain: "r".into(),
                descriptors: vec![d(5, true)],
                hits_addend: 1,
            })
            .await;
        if let Err(status) = &refund {
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{store}: {status:?}");
            assert!(status.message().contains("is_negative_hits"), "{store}: {status:?}");
            let look = ask_with(&mut c, "r", vec![d(0, false)], None).await;
            assert_eq!(look.statuses[0].limit_remaining, 5, "{store}: a refused refund counts nothing");
        }
        if let Ok(refund) = refund {
            let refund = refund.into_inner();
            let look = ask_with(&mut c, "r", vec![d(0, false)], None).await;
            assert!(
                look.statuses[0].limit_remaining >= 5,
                "{store}: a refund of 5 left {} remaining (the refund itself answered {:?} with {} remaining)",
                look.statuses[0].limit_remaining,
                Code::try_from(refund.overall_code),
                refund.statuses[0].limit_remaining
            );
        }
    }
}

const SMALL: &str =
    "domain: s\ndescriptors:\n  - key: ip\n    rate_limit: {unit: second, requests_per_unit: 10}\n";

/// A request that can never pass (its hits above the limit, or the sum of repeats of one
/// descriptor above it) is told to retry after a wait. Promised: retry-after stays true.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_retry_after_for_a_request_that_can_never_pass() {
    let (_redis, _dir, servers) = envoy_both(SMALL, "  headers: draft\n").await;
    for (store, server) in &servers {
        let mut c = envoy(server).await;
        let d = |v: &str, hits: u64| RateLimitDescriptor {
            entries: vec![entry("ip", v)],
            hits_addend: Some(UInt64Value { value: hits }),
            ..Default::default()
        };
        // Each repeat alone is within the limit; together they are not.
        let r = ask_with(&mut c, "s", vec![d("10.2.2.2", 6), d("10.2.2.2", 6)], None).await;
        assert_eq!(r.overall_code, Code::OverLimit as i32, "{store}");
        if let Some(retry) = header(&r, "Retry-After") {
            let secs: u64 = retry.parse().expect("seconds");
            tokio::time::sleep(Duration::from_millis(secs * 1000 + 50)).await;
            let again = ask_with(&mut c, "s", vec![d("10.2.2.2", 6), d("10.2.2.2", 6)], None).await;
            assert_eq!(
                again.overall_code,
                Code::Ok as i32,
                "{store}: Retry-After: {retry}, waited, and the same request is over again"
            );
        }
    }
}

const ADAPTIVE: &str = "
tiers:
  - name: adaptive
    key: [ip]
    limit: 4
    window: 2s
    adaptive:
      weights: {user_agent: 0, parameters: 0, deny_range: 0, reputation: 0, burst: 100, failed_logins: 0}
      burst_multiple: 2
      reduction_percent: 50
";

/// An adaptive tier's denial at the burst threshold: the retry-after is measured with the limit
/// this attempt saw, but the attempt that follows it crosses the threshold and sees half of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adaptive_retry_after_holds_for_the_next_attempt() {
    let (_redis, servers) = both(ADAPTIVE).await;
    for (store, server) in &servers {
        let mut c = server.client().await;
        let attrs = [("ip", "203.0.113.77"), ("user_agent", "a long enough user agent")];
        // Find where this store's 2 s fixed windows start (the in-process store's are counted
        // from its own start): another key's first denial says, as its retry-after is 2500 ms
        // minus the time into the window. Then start in the second half of a window, so that the
        // attempts counter outlives the retry-after, which lands early in the next window.
        let warm = [("ip", "203.0.113.78"), ("user_agent", "a long enough user agent")];
        for _ in 0..4 {
            assert!(check_with(&mut c, request(&warm), None).await.allowed, "{store}");
        }
        let probe = check_with(&mut c, request(&warm), None).await;
        assert!(!probe.allowed, "{store}");
        let into = 2500u64.saturating_sub(probe.retry_after_ms) % 2000;
        if into < 1100 {
            tokio::time::sleep(Duration::from_millis(1100 - into)).await;
        }
        let mut last = None;
        for i in 0..8 {
            let d = check_with(&mut c, request(&attrs), None).await;
            assert_eq!(d.allowed, i < 4, "{store}: attempt {i}: {d:?}");
            last = Some(d);
        }
        // Attempt 8 (the 8th) is at the threshold of 2 x 4, not over it.
        let last = last.expect("eight");
        assert_eq!(last.threat_score, 0, "{store}");
        tokio::time::sleep(Duration::from_millis(last.retry_after_ms + 30)).await;
        let again = check_with(&mut c, request(&attrs), None).await;
        assert!(
            again.allowed,
            "{store}: waited the {} ms retry-after and was denied (score {}, limit {}, retry {} ms more)",
            last.retry_after_ms, again.threat_score, again.limit, again.retry_after_ms
        );
    }
}
