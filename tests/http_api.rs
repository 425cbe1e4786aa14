//! The HTTP decision API and forward-auth (`http_api`), over real HTTP/1.1 on loopback: the JSON
//! API answers as gRPC does (same decisions, same field-naming errors), and forward-auth takes the
//! original request from a gateway's headers, believing `X-Forwarded-For` only from trusted peers.

mod common;

use std::sync::Arc;

use common::SluiceServer;
use common::http1::{Answer, exchange, loopback};
use sluice::api::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TIERS: &str = "
tiers:
  - name: login
    match:
      endpoint: /auth/login
      method: POST
    key: [ip]
    limit: 1
    window: 1h
  - name: edge
    key: [ip]
    limit: 3
    window: 1h
  - name: api
    key: [user]
    limit: 2
    window: 1h
";

/// A server with the HTTP API; `extra` goes in its `http_api` section.
async fn server(extra: &str) -> SluiceServer {
    let yaml = format!("http_api:\n  addr: 127.0.0.1:0\n{extra}{TIERS}");
    SluiceServer::start(&yaml, None).await
}

async fn post(server: &SluiceServer, path: &str, body: &str) -> Answer {
    let to = server.http_api_addr.expect("the HTTP API listens");
    exchange(to, loopback(1), "POST", path, &[("Content-Type", "application/json")], body).await
}

#[tokio::test]
async fn the_json_api_decides_as_grpc_does() {
    let server = server("").await;
    let ask = r#"{"requests": [{"attributes": {"user": "ann"}, "tiers": ["api"]}]}"#;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let answer = post(&server, "/v1/check", ask).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.header("content-type"), Some("application/json"));
        seen.push(answer.json()["decisions"][0].clone());
    }
    // Canonical JSON: lowerCamelCase names, 64-bit numbers as strings, every field written.
    assert_eq!(seen[0]["allowed"], true);
    assert_eq!(seen[0]["remaining"], "1");
    assert_eq!(seen[0]["tier"], "api");
    assert_eq!(seen[0]["source"], "local");
    assert_eq!(seen[2]["allowed"], false, "a denial is 200 with allowed: false: {}", seen[2]);
    let retry: u64 = seen[2]["retryAfterMs"].as_str().expect("a string").parse().expect("a number");
    assert!(retry > 0 && retry <= 7_200_000, "a sliding window: at most two windows: {retry}");
    assert!(seen[2]["headers"].as_array().expect("headers").iter().any(|h| h["name"] == "Retry-After"));

    // Both spellings of a field are read; a dry run counts nothing.
    for dry in [r#""dry_run": true"#, r#""dryRun": true"#] {
        let body = format!(r#"{{"requests": [{{"attributes": {{"user": "bea"}}, "cost": "2"}}], {dry}}}"#);
        let answer = post(&server, "/v1/check", &body).await;
        assert_eq!(answer.json()["decisions"][0]["remaining"], "0", "{}", answer.body);
    }
    let answer =
        post(&server, "/v1/check", r#"{"requests": [{"attributes": {"user": "bea"}, "cost": 2}]}"#).await;
    assert_eq!(answer.json()["decisions"][0]["allowed"], true, "the dry runs left the quota whole");

    // Report: the tiers it counted.
    let answer =
        post(&server, "/v1/report", r#"{"attributes": {"user": "ann"}, "outcome": "FAILURE"}"#).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.json()["tiersCounted"].is_number(), "{}", answer.body);
}

#[tokio::test]
async fn bad_input_is_400_with_grpc_s_message() {
    let server = server("").await;
    // The same refusal over gRPC, for its message.
    let mut grpc = server.client().await;
    let mut bad = common::request(&[("user", "x")]);
    bad.cost = Some(0);
    let refused = grpc
        .check(pb::CheckRequest { requests: vec![bad], dry_run: false })
        .await
        .expect_err("cost 0 is refused");
    let answer =
        post(&server, "/v1/check", r#"{"requests": [{"attributes": {"user": "x"}, "cost": "0"}]}"#).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.json()["message"], refused.message(), "the field is named as over gRPC");
    assert_eq!(answer.json()["code"], 3, "INVALID_ARGUMENT");

    for (body, names) in [
        (r#"{"requests": []}"#, "requests"),
        (r#"{"requests": [{"cost": "many"}]}"#, "requests[0].cost"),
        (r#"{"requests": [{"attributes": {"colour": "blue"}}]}"#, "colour"),
        (r#"{"requests": [{}], "dryrun": true}"#, "dryrun"),
        (r#"{"requests": "#, "EOF"),
        ("", "EOF"),
        (r#"{"requests": [{"attributes": {"user": "x"}}]} xyz"#, "trailing characters"),
        (r#"{"attributes": {"user": "x"}, "outcome": "MAYBE"}"#, "outcome"),
    ] {
        let path = if body.contains("outcome") { "/v1/report" } else { "/v1/check" };
        let answer = post(&server, path, body).await;
        assert_eq!(answer.status, 400, "{body}: {}", answer.body);
        let message = answer.json()["message"].as_str().expect("a message").to_owned();
        assert!(message.contains(names), "{body}: {message}");
    }
    // A body past the message bound.
    let huge = format!(r#"{{"requests": [{{"attributes": {{"user": "{}"}}}}]}}"#, "x".repeat(5 << 20));
    let answer = post(&server, "/v1/check", &huge).await;
    assert_eq!(answer.status, 413);
    assert_eq!(answer.json()["code"], 8, "RESOURCE_EXHAUSTED, in the API's own form: {}", answer.body);
    // Wrong method on the JSON API.
    let to = server.http_api_addr.expect("addr");
    let answer = exchange(to, loopback(1), "GET", "/v1/check", &[], "").await;
    assert_eq!(answer.status, 405);
}

#[tokio::test]
async fn forward_auth_counts_the_original_request_and_answers_with_headers() {
    let server = server("  trusted_proxies: [127.0.0.1/32]\n  attributes: {X-User: user}\n").await;
    let to = server.http_api_addr.expect("addr");
    // The gateway (127.0.0.1, trusted) forwards clients 198.51.100.7 and 198.51.100.8.
    let gateway = loopback(1);
    let as_client = |ip: &'static str| {
        [("X-Forwarded-For", ip), ("X-Forwarded-Method", "GET"), ("X-Forwarded-Uri", "/x?q=1")]
    };
    for remaining in ["2", "1", "0"] {
        let answer = exchange(to, gateway, "GET", "/v1/forward-auth", &as_client("198.51.100.7"), "").await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let ratelimit = answer.header("ratelimit").expect("a RateLimit header");
        assert!(ratelimit.contains(&format!("r={remaining}")), "{ratelimit}");
        assert!(answer.header("ratelimit-policy").expect("a policy").contains("\"edge\";q=3"));
    }
    let answer = exchange(to, gateway, "GET", "/v1/forward-auth", &as_client("198.51.100.7"), "").await;
    assert_eq!(answer.status, 429, "the fourth: {}", answer.body);
    let retry: u64 = answer.header("retry-after").expect("Retry-After").parse().expect("seconds");
    assert!((1..=7200).contains(&retry), "at most two windows: {retry}");
    // Another client behind the same gateway has its own count.
    let answer = exchange(to, gateway, "GET", "/v1/forward-auth", &as_client("198.51.100.8"), "").await;
    assert_eq!(answer.status, 200);
    let metrics = common::http_get(server.http_addr, "/metrics").await.1;
    for series in [r#"api="forward_auth",decision="allow""#, r#"api="forward_auth",decision="deny""#] {
        assert!(metrics.contains(&format!("sluice_api_decisions_total{{{series}}}")), "{series}: {metrics}");
    }

    // The method and path (not the query) reach the tiers: one login, then denied, whatever query.
    let login = |query: &'static str| {
        [("X-Forwarded-For", "198.51.100.9"), ("X-Original-Method", "POST"), ("X-Original-URI", query)]
    };
    let first = exchange(to, gateway, "GET", "/v1/forward-auth", &login("/auth/login?a=1"), "").await;
    let second = exchange(to, gateway, "GET", "/v1/forward-auth", &login("/auth/login?a=2"), "").await;
    assert_eq!((first.status, second.status), (200, 429));

    // A configured header past the bound on values is refused, naming it; a long chain of
    // forwarded addresses is walked from the right, as far as it needs.
    let huge = "u".repeat(5000);
    let answer = exchange(to, gateway, "GET", "/v1/forward-auth", &[("X-User", huge.as_str())], "").await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(answer.body.contains("x-user"), "{}", answer.body);
    let chain = format!("{}198.51.100.30", "203.0.113.77, ".repeat(3000));
    let answer =
        exchange(to, gateway, "GET", "/v1/forward-auth", &[("X-Forwarded-For", chain.as_str())], "").await;
    assert_eq!(answer.status, 200, "the right-most address is the client");
    // A configured header becomes an attribute: the api tier counts by user, across addresses.
    for (i, client) in ["198.51.100.20", "198.51.100.21", "198.51.100.22"].into_iter().enumerate() {
        let headers = [("X-Forwarded-For", client), ("X-User", "u1")];
        let answer = exchange(to, gateway, "GET", "/v1/forward-auth", &headers, "").await;
        assert_eq!(answer.status, if i < 2 { 200 } else { 429 }, "request {i} of user u1");
    }
}

#[tokio::test]
async fn a_forged_x_forwarded_for_cannot_choose_the_key() {
    let server = server("  trusted_proxies: [127.0.0.1/32]\n  deny_status: 403\n").await;
    let to = server.http_api_addr.expect("addr");
    // An untrusted peer (127.0.0.2) sends a different X-Forwarded-For each time: its own address
    // is counted, so the fourth request is denied all the same, with the configured status.
    for (i, forged) in ["203.0.113.1", "203.0.113.2", "203.0.113.3", "203.0.113.4"].into_iter().enumerate() {
        let headers = [("X-Forwarded-For", forged), ("X-Real-IP", forged)];
        let answer = exchange(to, loopback(2), "GET", "/v1/forward-auth", &headers, "").await;
        let expected = if i < 3 { 200 } else { 403 };
        assert_eq!(answer.status, expected, "request {i} forged {forged}");
    }
    // Through the trusted gateway, a client that prepends a forged entry is still itself: the
    // gateway appended the real address, and the walk stops at the right-most untrusted entry.
    for i in 0..4 {
        let xff = format!("203.0.113.{}, 198.51.100.50", 10 + i);
        let answer =
            exchange(to, loopback(1), "GET", "/v1/forward-auth", &[("X-Forwarded-For", xff.as_str())], "")
                .await;
        let expected = if i < 3 { 200 } else { 403 };
        assert_eq!(answer.status, expected, "request {i}: {xff}");
    }
    // Garbage in X-Forwarded-For from the gateway: the gateway itself is counted, never nobody.
    let answer =
        exchange(to, loopback(1), "GET", "/v1/forward-auth", &[("X-Forwarded-For", "unknown")], "").await;
    assert_eq!(answer.status, 200);
}

/// What a client can put in the original request does not make it someone else: a header that is
/// not ASCII (on the gateway's `X-Forwarded-For` line, or a configured attribute header) is read,
/// not dropped, and a path is counted as the application resolves it (`//`, `%61`, `..`, `.`).
#[tokio::test]
async fn bytes_and_paths_a_client_writes_cannot_dodge_a_tier() {
    let server = server("  trusted_proxies: [127.0.0.1/32]\n  attributes: {X-User: user}\n").await;
    let to = server.http_api_addr.expect("addr");
    let gateway = loopback(1);
    // The client's own bytes, then the address the gateway appended, with a forged X-Real-IP
    // each time: the appended address is counted (edge: 3 an hour).
    for i in 0..4 {
        let forged = format!("203.0.113.{i}");
        let headers = [("X-Forwarded-For", "é, 198.51.100.60"), ("X-Real-IP", forged.as_str())];
        let answer = exchange(to, gateway, "GET", "/v1/forward-auth", &headers, "").await;
        assert_eq!(answer.status, if i < 3 { 200 } else { 429 }, "request {i}");
    }
    // A user that is not ASCII is still a user (api: 2 an hour, by user).
    for (i, client) in ["198.51.100.61", "198.51.100.62", "198.51.100.63"].into_iter().enumerate() {
        let headers = [("X-Forwarded-For", client), ("X-User", "josé")];
        let answer = exchange(to, gateway, "GET", "/v1/forward-auth", &headers, "").await;
        assert_eq!(answer.status, if i < 2 { 200 } else { 429 }, "request {i} of user josé");
    }
    // One login an hour, however its path is written.
    let login = |path: &'static str| {
        [("X-Forwarded-For", "198.51.100.64"), ("X-Original-Method", "POST"), ("X-Original-URI", path)]
    };
    let first = exchange(to, gateway, "GET", "/v1/forward-auth", &login("/auth/login"), "").await;
    assert_eq!(first.status, 200);
    for path in ["//auth/login", "/%61uth/login", "/x/../auth/login", "/auth/./login", "/auth//login?é=1"] {
        let answer = exchange(to, gateway, "GET", "/v1/forward-auth", &login(path), "").await;
        assert_eq!(answer.status, 429, "{path}");
    }
}

/// Bodies are read whole before a decision, so what they may hold together is bounded, however
/// many connections send them: sixteen bodies of the largest size (here 2 KiB, so 32 KiB in all).
/// Past that a request is 503 at once; a body declared past the bound is 413 before it is read.
#[tokio::test]
async fn request_bodies_in_flight_are_bounded_together() {
    let yaml = format!("server:\n  max_message_bytes: 2048\nhttp_api:\n  addr: 127.0.0.1:0\n{TIERS}");
    let server = SluiceServer::start(&yaml, None).await;
    let to = server.http_api_addr.expect("addr");
    let head = |length: u64| {
        format!(
            "POST /v1/check HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
        )
    };
    // Sixteen slow clients, each 2,000 bytes into a body of 2,048.
    let mut slow = Vec::new();
    for _ in 0..16 {
        let mut c = tokio::net::TcpStream::connect(to).await.expect("connect");
        c.write_all(head(2048).as_bytes()).await.expect("head");
        c.write_all(&[b' '; 2000]).await.expect("part of a body");
        slow.push(c);
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    // 32,000 of 32,768 bytes held: a body of 1,000 more does not fit.
    let body = format!(r#"{{"requests": [{{"attributes": {{"user": "x"}}}}]}}{}"#, " ".repeat(950));
    let body = body.as_str();
    let answer = post(&server, "/v1/check", body).await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_eq!(answer.json()["code"], 14, "UNAVAILABLE: {}", answer.body);
    // A body declared past the bound: refused before it is read.
    let mut c = tokio::net::TcpStream::connect(to).await.expect("connect");
    c.write_all(head(99_999_999_999).as_bytes()).await.expect("head");
    let mut answered = vec![0u8; 512];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), c.read(&mut answered))
        .await
        .expect("answered without the body")
        .expect("read");
    assert!(
        String::from_utf8_lossy(&answered[..n]).starts_with("HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&answered[..n])
    );
    // The slow clients gone, their share of the budget is free again.
    drop(slow);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let answer = post(&server, "/v1/check", body).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}

/// `http_api.tls: inherit` with mutual TLS on `server.tls`: HTTP/1.1 over TLS (ALPN says so), a
/// client without a certificate refused; `plaintext` serves without TLS beside a TLS gRPC port.
#[tokio::test]
async fn the_http_api_inherits_mutual_tls() {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

    let ca = common::certs::Ca::new("http-api-ca");
    let (cert, key) = ca.leaf(&["localhost"]);
    let (client_cert, client_key) = ca.leaf(&["client"]);
    let dir = tempfile::tempdir().expect("dir");
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path.display().to_string()
    };
    let tls = format!(
        "server:\n  tls:\n    cert_file: {}\n    key_file: {}\n    client_ca_file: {}\n",
        file("cert.pem", &cert),
        file("key.pem", &key),
        file("ca.pem", &ca.pem())
    );
    let server = SluiceServer::start(&format!("{tls}http_api:\n  addr: 127.0.0.1:0\n{TIERS}"), None).await;
    let to = server.http_api_addr.expect("addr");

    let connect = |identity: bool| {
        let ca = ca.pem();
        let (client_cert, client_key) = (client_cert.clone(), client_key.clone());
        async move {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(CertificateDer::from_pem_slice(ca.as_bytes()).expect("CA")).expect("a CA");
            let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
            let mut config = if identity {
                builder
                    .with_client_auth_cert(
                        vec![CertificateDer::from_pem_slice(client_cert.as_bytes()).expect("cert")],
                        PrivateKeyDer::from_pem_slice(client_key.as_bytes()).expect("key"),
                    )
                    .expect("identity")
            } else {
                builder.with_no_client_auth()
            };
            // What an HTTP client offers: both, and the listener picks HTTP/1.1.
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            let tcp = tokio::net::TcpStream::connect(to).await.expect("connect");
            let name = ServerName::try_from("localhost").expect("name");
            tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await
        }
    };
    let mut stream = connect(true).await.expect("a handshake with a client certificate");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let body = r#"{"requests": [{"attributes": {"user": "tls"}}]}"#;
    let request = format!(
        "POST /v1/check HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    let raw = String::from_utf8_lossy(&raw);
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.contains(r#""allowed":true"#), "{raw}");

    // Without a client certificate: refused (at the handshake, or at the first read in TLS 1.3).
    let refused = match connect(false).await {
        Err(_) => true,
        Ok(mut stream) => {
            let _ = stream.write_all(request.as_bytes()).await;
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).await.is_err() || raw.is_empty()
        }
    };
    assert!(refused, "a client without a certificate was served");

    // Plaintext on request, beside the TLS gRPC port.
    let yaml = format!("{tls}http_api:\n  addr: 127.0.0.1:0\n  tls: plaintext\n{TIERS}");
    let plain = SluiceServer::start(&yaml, None).await;
    let answer = post(&plain, "/v1/check", body).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}
