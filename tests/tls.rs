//! TLS and mutual TLS on the gRPC port: a client without a certificate, or with one from another
//! CA, is refused; a client with a certificate from the configured CA passes.

mod common;

use common::certs::Ca;
use sluice::api::pb::rate_limiter_client::RateLimiterClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

async fn call(
    server: &common::SluiceServer,
    ca: &str,
    identity: Option<(String, String)>,
) -> Result<(), String> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Channel::from_shared(format!("https://localhost:{}", server.grpc_addr.port()))
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    RateLimiterClient::new(channel)
        .check(sluice::api::pb::CheckRequest {
            requests: vec![common::request(&[("ip", "1.2.3.4")])],
            dry_run: false,
        })
        .await
        .map(drop)
        .map_err(|s| format!("{s:?}"))
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_good_certificate() {
    let (ca, other) = (Ca::new("sluice test ca"), Ca::new("another ca"));
    let dir = tempfile::tempdir().expect("dir");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path.display().to_string()
    };
    let (server_cert, server_key) = ca.leaf(&["localhost", "127.0.0.1"]);
    let yaml = format!(
        "server:\n  tls:\n    cert_file: {}\n    key_file: {}\n    client_ca_file: {}\ntiers: []\n",
        write("server.crt", &server_cert),
        write("server.key", &server_key),
        write("ca.crt", &ca.pem())
    );
    let server = common::SluiceServer::start(&yaml, None).await;

    assert!(call(&server, &ca.pem(), Some(ca.leaf(&["gateway"]))).await.is_ok(), "a client of the CA passes");
    let none = call(&server, &ca.pem(), None).await;
    assert!(none.is_err(), "a client without a certificate is refused");
    let foreign = call(&server, &ca.pem(), Some(other.leaf(&["intruder"]))).await;
    assert!(foreign.is_err(), "a certificate from another CA is refused");
    // Plaintext gRPC does not get through either.
    let plain = RateLimiterClient::connect(format!("http://{}", server.grpc_addr)).await;
    let refused = match plain {
        Err(_) => true,
        Ok(mut c) => c
            .check(sluice::api::pb::CheckRequest {
                requests: vec![common::request(&[("ip", "1.2.3.4")])],
                dry_run: false,
            })
            .await
            .is_err(),
    };
    assert!(refused, "plaintext is refused");
}
