//! Bad input gets INVALID_ARGUMENT naming the field, never a panic; the server keeps serving.

mod common;

use common::{SluiceServer, check, request};
use sluice::api::pb;
use tonic::Code;

const YAML: &str = "tiers:\n  - name: edge\n    key: [ip]\n    limit: 10\n    window: 1m\n";

async fn expect_invalid(server: &SluiceServer, req: pb::CheckRequest, field: &str) {
    let mut client = server.client().await;
    let status = client.check(req).await.expect_err("must be rejected");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with(field), "{field:?} not named first in {:?}", status.message());
    assert!(status.message().len() < 300, "the message echoes too much: {} bytes", status.message().len());
}

fn batch(requests: Vec<pb::RateRequest>) -> pb::CheckRequest {
    pb::CheckRequest { requests, dry_run: false }
}

#[tokio::test]
async fn each_bad_input_names_its_field() {
    let server = SluiceServer::start(YAML, None).await;
    expect_invalid(&server, batch(vec![]), "requests:").await;
    expect_invalid(
        &server,
        batch(vec![request(&[("ip", "1.1.1.1")]); 10_000]),
        "requests: 10000 requests exceed",
    )
    .await;

    let huge = "x".repeat(1 << 20);
    expect_invalid(
        &server,
        batch(vec![request(&[("ip", "1.1.1.1"), ("user_agent", &huge)])]),
        "requests[0].attributes.user_agent:",
    )
    .await;
    expect_invalid(
        &server,
        batch(vec![request(&[("ip", "1.1.1.1"), ("username", &huge)])]),
        "requests[0].attributes.extra[\"username\"]:",
    )
    .await;

    let mut zero = request(&[("ip", "1.1.1.1")]);
    zero.cost = Some(0);
    expect_invalid(&server, batch(vec![request(&[("ip", "1.1.1.2")]), zero]), "requests[1].cost:").await;

    let mut too_costly = request(&[("ip", "1.1.1.1")]);
    too_costly.cost = Some(11);
    expect_invalid(&server, batch(vec![too_costly]), "requests[0].cost:").await;

    let mut unknown_tier = request(&[("ip", "1.1.1.1")]);
    unknown_tier.tiers = vec!["edge".into(), "nope".into()];
    expect_invalid(&server, batch(vec![unknown_tier]), "requests[0].tiers[1]:").await;

    let mut builtin = request(&[("ip", "1.1.1.1")]);
    builtin.attributes.as_mut().expect("attributes").extra.insert("user".into(), "mallory".into());
    expect_invalid(&server, batch(vec![builtin]), "requests[0].attributes.extra[\"user\"]:").await;

    // None of it was counted, and the server still answers.
    let mut client = server.client().await;
    let d = check(&mut client, request(&[("ip", "1.1.1.1")])).await;
    assert!(d.allowed);
    assert_eq!(d.remaining, 9, "a rejected request consumed quota");
}

#[tokio::test]
async fn documented_answers_for_the_rest() {
    let server = SluiceServer::start(YAML, None).await;
    let mut client = server.client().await;
    // No tier matches (no ip): allowed, no tier, no headers.
    let d = check(&mut client, request(&[("user", "bob")])).await;
    assert!(d.allowed && d.tier.is_empty() && d.headers.is_empty());
    // A full batch at the limit is decided entry by entry.
    let response = client
        .check(batch(vec![request(&[("ip", "2.2.2.2")]); 1000]))
        .await
        .expect("a batch of 1000")
        .into_inner();
    assert_eq!(response.decisions.len(), 1000);
    assert_eq!(response.decisions.iter().filter(|d| d.allowed).count(), 10);
    // A message above the transport's size limit is refused by gRPC itself, not by a crash.
    let flood = "y".repeat(5 << 20);
    let status = client.check(batch(vec![request(&[("ip", &flood)])])).await.expect_err("too large");
    assert!(matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted), "{status:?}");
    assert!(check(&mut client, request(&[("ip", "3.3.3.3")])).await.allowed);
}
