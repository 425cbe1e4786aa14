//! TLS and mutual TLS on the gRPC port: a client without a certificate, or with one from another
//! CA, is refused; a client with a certificate from the configured CA passes. The admin listener
//! has the same TLS (its bearer token never travels in the clear) unless `admin.tls: plaintext`.

mod common;

use std::net::SocketAddr;

use common::certs::Ca;
use sluice::api::pb;
use sluice::api::pb::rate_limiter_client::RateLimiterClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const TOKEN: &str = "admin-token-for-the-tls-tests";
const BIN: &str = env!("CARGO_BIN_EXE_sluice");

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

/// A CA, a server certificate for localhost from it, and the PEM files in a temporary directory.
struct Pki {
    ca: Ca,
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        Pki { ca: Ca::new("sluice test ca"), dir: tempfile::tempdir().expect("dir") }
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path.display().to_string()
    }

    /// A configuration with `server.tls` (mutual when `mutual`), the admin API on a loopback port,
    /// and `admin_extra` lines under `admin`.
    fn yaml(&self, mutual: bool, admin_extra: &str) -> String {
        let (cert, key) = self.ca.leaf(&["localhost", "127.0.0.1"]);
        let client_ca = if mutual {
            format!("    client_ca_file: {}\n", self.write("ca.crt", &self.ca.pem()))
        } else {
            String::new()
        };
        format!(
            "server:\n  tls:\n    cert_file: {}\n    key_file: {}\n{client_ca}admin:\n  grpc_addr: 127.0.0.1:0\n  token: {TOKEN}\n{admin_extra}tiers: []\n",
            self.write("server.crt", &cert),
            self.write("server.key", &key),
        )
    }
}

/// How an admin client talks: plaintext, or TLS trusting `ca` with an optional client identity.
enum Transport<'a> {
    Plaintext,
    Tls { ca: &'a str, identity: Option<(String, String)> },
}

/// One `SetReputation` call with the token; the keys it marked, or why it failed.
async fn set_reputation(
    addr: SocketAddr,
    transport: Transport<'_>,
    token: &str,
) -> Result<Vec<String>, String> {
    let channel = match transport {
        Transport::Plaintext => Channel::from_shared(format!("http://{addr}")),
        Transport::Tls { .. } => Channel::from_shared(format!("https://localhost:{}", addr.port())),
    }
    .map_err(|e| e.to_string())?;
    let channel = match transport {
        Transport::Plaintext => channel,
        Transport::Tls { ca, identity } => {
            let mut tls =
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
            if let Some((cert, key)) = identity {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            channel.tls_config(tls).map_err(|e| e.to_string())?
        }
    };
    let channel = channel.connect().await.map_err(|e| format!("connect: {e:?}"))?;
    let mut request = tonic::Request::new(pb::SetReputationRequest {
        ip: "203.0.113.9".into(),
        user: String::new(),
        ttl_ms: 60_000,
    });
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("header value"));
    pb::admin_client::AdminClient::new(channel)
        .set_reputation(request)
        .await
        .map(|r| r.into_inner().keys)
        .map_err(|s| format!("{s:?}"))
}

fn admin_addr(server: &common::SluiceServer) -> SocketAddr {
    server.admin_addr.expect("the admin API is configured")
}

#[tokio::test]
async fn the_admin_api_has_the_grpc_listeners_tls() {
    let pki = Pki::new();
    let server = common::SluiceServer::start(&pki.yaml(false, ""), None).await;
    let (addr, ca) = (admin_addr(&server), pki.ca.pem());

    let keys = set_reputation(addr, Transport::Tls { ca: &ca, identity: None }, TOKEN).await;
    assert!(keys.as_ref().is_ok_and(|k| !k.is_empty()), "a TLS client with the token is served: {keys:?}");
    let wrong = set_reputation(addr, Transport::Tls { ca: &ca, identity: None }, "not-the-admin-token").await;
    assert!(wrong.as_ref().is_err_and(|e| e.contains("Unauthenticated")), "{wrong:?}");
    let plain = set_reputation(addr, Transport::Plaintext, TOKEN).await;
    assert!(plain.is_err(), "a plaintext client is refused, token or not: {plain:?}");

    // The command line, through a name other than the address's host.
    let ca_file = pki.write("ca.crt", &ca);
    // Run off the runtime's thread: the server answering it lives on that thread.
    let cli = |scheme: &str, tls: &[&str]| {
        let mut args =
            vec!["admin".to_owned(), "--addr".to_owned(), format!("{scheme}://127.0.0.1:{}", addr.port())];
        args.extend(tls.iter().map(|a| (*a).to_owned()));
        args.extend(["set-reputation", "--user", "mallory", "--ttl-ms", "60000"].map(String::from));
        tokio::task::spawn_blocking(move || {
            use std::process::{Command, Stdio};
            let mut child = Command::new(BIN)
                .args(args)
                .env("SLUICE__ADMIN__TOKEN", TOKEN)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run sluice admin");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while child.try_wait().expect("try_wait").is_none() {
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("sluice admin did not finish within 10 s");
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            child.wait_with_output().expect("output of sluice admin")
        })
    };
    let out = cli("https", &["--ca-file", &ca_file, "--tls-server-name", "localhost"]).await.expect("cli");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"keys\""),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = cli("http", &[]).await.expect("cli");
    assert!(!out.status.success(), "sluice admin in plaintext is refused");
}

#[tokio::test]
async fn mutual_tls_on_the_admin_api_refuses_clients_without_a_certificate() {
    let pki = Pki::new();
    let server = common::SluiceServer::start(&pki.yaml(true, ""), None).await;
    let (addr, ca) = (admin_addr(&server), pki.ca.pem());

    let with_cert = Transport::Tls { ca: &ca, identity: Some(pki.ca.leaf(&["operator"])) };
    let keys = set_reputation(addr, with_cert, TOKEN).await;
    assert!(keys.is_ok(), "a client of the CA with the token is served: {keys:?}");
    let none = set_reputation(addr, Transport::Tls { ca: &ca, identity: None }, TOKEN).await;
    assert!(none.is_err(), "a client without a certificate is refused, token or not");
    let foreign = Transport::Tls { ca: &ca, identity: Some(Ca::new("another ca").leaf(&["intruder"])) };
    assert!(set_reputation(addr, foreign, TOKEN).await.is_err(), "a certificate from another CA is refused");
    assert!(set_reputation(addr, Transport::Plaintext, TOKEN).await.is_err(), "plaintext is refused");
}

#[tokio::test]
async fn admin_tls_plaintext_leaves_the_admin_listener_without_tls() {
    let pki = Pki::new();
    let server = common::SluiceServer::start(&pki.yaml(true, "  tls: plaintext\n"), None).await;
    let (addr, ca) = (admin_addr(&server), pki.ca.pem());

    let keys = set_reputation(addr, Transport::Plaintext, TOKEN).await;
    assert!(keys.is_ok(), "{keys:?}");
    let tls =
        set_reputation(addr, Transport::Tls { ca: &ca, identity: Some(pki.ca.leaf(&["operator"])) }, TOKEN)
            .await;
    assert!(tls.is_err(), "the admin listener speaks no TLS: {tls:?}");
}
