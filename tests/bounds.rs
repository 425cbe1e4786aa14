//! Every input bound just at and just past its limit: at it, served; past it, INVALID_ARGUMENT (or
//! RESOURCE_EXHAUSTED for the message size) naming the bound. Transport bounds are held at the
//! HTTP/2 level: streams per connection, idle connections, unanswered keepalive pings.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::{SluiceServer, request};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{RateLimitDescriptor, rate_limit_descriptor};
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use prost::Message;
use sluice::api::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

const TIERS: &str = "tiers:
  - name: edge
    key: [user]
    limit: 10
    window: 1m
  - name: api
    match: {endpoint: {prefix: /api/}}
    limit: 1000
    window: 1m
";

fn batch(requests: Vec<pb::RateRequest>) -> pb::CheckRequest {
    pb::CheckRequest { requests, dry_run: false }
}

async fn outcome(server: &SluiceServer, req: pb::CheckRequest) -> Result<(), tonic::Status> {
    server.client().await.check(req).await.map(drop)
}

fn assert_refused(result: Result<(), tonic::Status>, code: Code, field: &str, bound: &str) {
    let status = result.expect_err("past the bound, the request is refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().starts_with(field), "{field:?} not named first in {:?}", status.message());
    assert!(status.message().contains(bound), "{bound:?} not named in {:?}", status.message());
}

#[tokio::test]
async fn sluice_v1_bounds_at_and_past_their_limits() {
    let yaml = format!(
        "limits:\n  max_batch: 3\n  max_value_bytes: 16\n  max_extra: 2\n  max_named_tiers: 2\n{TIERS}"
    );
    let server = SluiceServer::start(&yaml, None).await;
    let user = |n: usize| request(&[("user", &"u".repeat(n))]);

    assert!(outcome(&server, batch(vec![user(1); 3])).await.is_ok());
    let past = outcome(&server, batch(vec![user(1); 4])).await;
    assert_refused(past, Code::InvalidArgument, "requests:", "limits.max_batch (3)");

    assert!(outcome(&server, batch(vec![user(16)])).await.is_ok());
    let past = outcome(&server, batch(vec![user(17)])).await;
    assert_refused(
        past,
        Code::InvalidArgument,
        "requests[0].attributes.user:",
        "limits.max_value_bytes (16)",
    );

    let extras = |n: usize| {
        let names: Vec<String> = (0..n).map(|i| format!("x{i}")).collect();
        let mut attrs: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
        attrs.push(("user", "eve"));
        request(&attrs)
    };
    assert!(outcome(&server, batch(vec![extras(2)])).await.is_ok());
    let past = outcome(&server, batch(vec![extras(3)])).await;
    assert_refused(past, Code::InvalidArgument, "requests[0].attributes.extra:", "limits.max_extra (2)");

    let named = |n: usize| pb::RateRequest { tiers: vec!["edge".into(); n], ..user(3) };
    assert!(outcome(&server, batch(vec![named(2)])).await.is_ok());
    let past = outcome(&server, batch(vec![named(3)])).await;
    assert_refused(past, Code::InvalidArgument, "requests[0].tiers:", "limits.max_named_tiers (2)");

    let costly = |cost: u64| pb::RateRequest { cost: Some(cost), ..request(&[("user", "carol")]) };
    assert!(outcome(&server, batch(vec![costly(10)])).await.is_ok(), "a cost of the whole limit passes");
    let past = outcome(&server, batch(vec![costly(11)])).await;
    assert_refused(past, Code::InvalidArgument, "requests[0].cost:", "exceed the limit of 10");
}

#[tokio::test]
async fn envoy_bounds_at_and_past_their_limits() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("d.yaml"),
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 100}\n",
    )
    .expect("write the domain");
    let yaml = format!(
        "limits:\n  max_value_bytes: 16\n  max_descriptors: 2\n  max_entries: 2\nenvoy:\n  paths: [\"{}\"]\ntiers: []\n",
        dir.path().display()
    );
    let server = SluiceServer::start(&yaml, None).await;
    let mut client =
        RateLimitServiceClient::connect(format!("http://{}", server.grpc_addr)).await.expect("connect");
    let descriptor = |entries: usize, value: &str| RateLimitDescriptor {
        entries: (0..entries)
            .map(|i| rate_limit_descriptor::Entry { key: format!("k{i}"), value: value.into() })
            .collect(),
        ..Default::default()
    };
    let mut ask = async |domain: &str, descriptors: Vec<RateLimitDescriptor>| {
        client
            .should_rate_limit(RateLimitRequest { domain: domain.into(), descriptors, hits_addend: 0 })
            .await
            .map(drop)
    };

    assert!(ask("d", vec![descriptor(1, "v"); 2]).await.is_ok());
    let past = ask("d", vec![descriptor(1, "v"); 3]).await;
    assert_refused(past, Code::InvalidArgument, "descriptors:", "limits.max_descriptors (2)");

    assert!(ask("d", vec![descriptor(2, "v")]).await.is_ok());
    let past = ask("d", vec![descriptor(3, "v")]).await;
    assert_refused(past, Code::InvalidArgument, "descriptors[0].entries:", "limits.max_entries (2)");

    // Values come from the client, and an error would let Envoy pass the request: one past the
    // bound is counted (tests/envoy.rs has the counts), where a key past it is refused.
    assert!(ask("d", vec![descriptor(1, &"v".repeat(17))]).await.is_ok());
    let long_key = RateLimitDescriptor {
        entries: vec![rate_limit_descriptor::Entry { key: "k".repeat(17), value: "v".into() }],
        ..Default::default()
    };
    let past = ask("d", vec![long_key]).await;
    assert_refused(
        past,
        Code::InvalidArgument,
        "descriptors[0].entries[0].key:",
        "limits.max_value_bytes (16)",
    );

    assert!(ask(&"d".repeat(16), vec![descriptor(1, "v")]).await.is_ok(), "an unknown domain is answered");
    let past = ask(&"d".repeat(17), vec![descriptor(1, "v")]).await;
    assert_refused(past, Code::InvalidArgument, "domain:", "limits.max_value_bytes (16)");
}

#[tokio::test]
async fn a_message_past_max_message_bytes_is_resource_exhausted() {
    let yaml = format!("server:\n  max_message_bytes: 2048\nlimits:\n  max_value_bytes: 4096\n{TIERS}");
    let server = SluiceServer::start(&yaml, None).await;
    // A request whose encoding is exactly `size` bytes.
    let sized = |size: usize| {
        let mut agent = String::new();
        loop {
            let req = batch(vec![request(&[("user", "dan"), ("user_agent", &agent)])]);
            match req.encoded_len() {
                n if n == size => return req,
                n if n > size => panic!("cannot make a request of exactly {size} bytes"),
                _ => agent.push('a'),
            }
        }
    };
    assert!(outcome(&server, sized(2048)).await.is_ok(), "a message of exactly the bound passes");
    let past = outcome(&server, sized(2049)).await;
    assert_refused(
        past,
        Code::ResourceExhausted,
        "the request message",
        "server.max_message_bytes (2048 bytes)",
    );
    assert!(outcome(&server, sized(100)).await.is_ok(), "the server keeps serving");
}

/// A raw HTTP/2 connection, to hold streams open and watch the connection itself.
async fn h2_connection(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (send, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    send
}

/// Opens a `Check` call whose body is not sent yet.
fn open_check(
    send: &mut h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
    let head = tonic::codegen::http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/sluice.v1.RateLimiter/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request head");
    send.send_request(head, false).expect("open a stream")
}

/// Sends the body of an opened `Check` call and waits for its gRPC status.
async fn finish_check(response: h2::client::ResponseFuture, mut body: h2::SendStream<Bytes>) -> String {
    let message = batch(vec![request(&[("user", "h2")])]).encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(message.len()).expect("small").to_be_bytes());
    frame.extend_from_slice(&message);
    body.send_data(Bytes::from(frame), true).expect("send the body");
    let mut response = response.await.expect("a response");
    let payload = response.body_mut();
    while let Some(chunk) = payload.data().await {
        chunk.expect("body chunk");
    }
    let trailers = payload.trailers().await.expect("trailers").unwrap_or_default();
    let status = trailers.get("grpc-status").or_else(|| response.headers().get("grpc-status"));
    status.and_then(|v| v.to_str().ok()).unwrap_or("none").to_owned()
}

#[tokio::test]
async fn streams_past_max_concurrent_streams_wait_for_a_free_one() {
    let yaml = format!("server:\n  max_concurrent_streams: 2\n{TIERS}");
    let server = SluiceServer::start(&yaml, None).await;
    let addr = server.grpc_addr;
    let mut send = h2_connection(addr).await;
    // One whole call first, so the server's SETTINGS have arrived.
    let (response, body) = open_check(&mut send, addr);
    assert_eq!(finish_check(response, body).await, "0");
    assert_eq!(send.current_max_send_streams(), 2, "the server announces its bound");

    let (first, first_body) = open_check(&mut send, addr);
    let (second, second_body) = open_check(&mut send, addr);
    let (third, third_body) = open_check(&mut send, addr);
    let mut third = tokio::spawn(finish_check(third, third_body));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut third).await.is_err(),
        "a third stream is not served while two are open"
    );
    assert_eq!(finish_check(first, first_body).await, "0", "two streams at once are served");
    assert_eq!(third.await.expect("third call"), "0", "the third is served once a stream is free");
    assert_eq!(finish_check(second, second_body).await, "0");
}

/// Reads (and discards) until the peer closes the connection or `patience` passes; `true` if closed.
async fn closed_within(tcp: &mut tokio::net::TcpStream, patience: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let read_all = async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(patience, read_all).await.is_ok()
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_idle_timeout() {
    let yaml = format!("server:\n  idle_timeout_secs: 1\n  keepalive_interval_secs: 0\n{TIERS}");
    let server = SluiceServer::start(&yaml, None).await;
    for (port, addr) in [("gRPC", server.grpc_addr), ("HTTP", server.http_addr)] {
        let mut silent = tokio::net::TcpStream::connect(addr).await.expect("connect");
        assert!(
            !closed_within(&mut silent, Duration::from_millis(500)).await,
            "{port}: closed before the idle timeout"
        );
        assert!(closed_within(&mut silent, Duration::from_secs(3)).await, "{port}: never closed");
    }

    // A connection in use is not idle: calls every 300 ms for 2.5 s on one HTTP/2 connection.
    let mut send = h2_connection(server.grpc_addr).await;
    for _ in 0..8 {
        let (response, body) = open_check(&mut send, server.grpc_addr);
        assert_eq!(finish_check(response, body).await, "0", "the busy connection was closed");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn a_peer_that_does_not_answer_pings_is_closed() {
    let yaml = format!(
        "server:\n  idle_timeout_secs: 0\n  keepalive_interval_secs: 1\n  keepalive_timeout_secs: 1\n{TIERS}"
    );
    let server = SluiceServer::start(&yaml, None).await;
    // Speaks the HTTP/2 preface and empty SETTINGS, then never answers anything.
    let mut mute = tokio::net::TcpStream::connect(server.grpc_addr).await.expect("connect");
    mute.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.expect("preface");
    assert!(closed_within(&mut mute, Duration::from_secs(6)).await, "an unanswered ping must close it");

    // An HTTP/2 client answers pings and keeps its connection.
    let mut send = h2_connection(server.grpc_addr).await;
    let (response, body) = open_check(&mut send, server.grpc_addr);
    assert_eq!(finish_check(response, body).await, "0");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (response, body) = open_check(&mut send, server.grpc_addr);
    assert_eq!(finish_check(response, body).await, "0", "a live peer keeps its connection across pings");
}

#[tokio::test]
async fn headers_past_max_header_list_bytes_are_refused() {
    let yaml = format!("server:\n  max_header_list_bytes: 4096\n{TIERS}");
    let server = SluiceServer::start(&yaml, None).await;
    let mut client = server.client().await;
    let with_header = |n: usize| {
        let mut req = tonic::Request::new(batch(vec![request(&[("user", "meta")])]));
        req.metadata_mut().insert("x-padding", "p".repeat(n).parse().expect("ascii"));
        req
    };
    assert!(client.check(with_header(1024)).await.is_ok());
    let refused = client.check(with_header(8192)).await;
    assert!(refused.is_err(), "headers past the bound are refused: {refused:?}");
    assert!(server.client().await.check(with_header(10)).await.is_ok(), "the server keeps serving");
}
