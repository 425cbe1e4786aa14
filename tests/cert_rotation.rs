//! Certificates that rotate while serving, as cert-manager renews a mounted Secret: the gRPC (and
//! admin) listener's certificate and client CA, and the Redis client certificate, are replaced on
//! disk by a symlink swap under steady calls. New handshakes get the new certificate, no call fails,
//! files that do not make a working configuration keep the old one serving, and handshakes that
//! never finish block nobody. Real TLS over loopback and a real TLS redis-server throughout.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::certs::{Ca, SecretDir, leaf_der};
use common::{RedisServer, SluiceServer, request};
use sluice::api::pb;
use sluice::api::pb::rate_limiter_client::RateLimiterClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const TOKEN: &str = "admin-token-for-the-rotation-tests";
/// How often the tests' servers read their certificate files.
const RELOAD_MS: u64 = 100;
/// How long a rotation may take to show: two looks at the files and then some, on a busy machine.
const PATIENCE: Duration = Duration::from_secs(10);

/// The leaf certificate the server at `addr` presents to a new TLS connection that trusts `ca` and
/// offers `identity`; the handshake must agree on HTTP/2.
async fn presented(addr: SocketAddr, ca: &str, identity: Option<(&str, &str)>) -> Result<Vec<u8>, String> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca.as_bytes()).expect("CA PEM")).expect("a CA");
    let builder =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).expect("client PEM")],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("client key PEM"),
            )
            .expect("a client identity"),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let name = ServerName::try_from("localhost").expect("a name");
    let handshake = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp);
    let tls = tokio::time::timeout(Duration::from_secs(5), handshake)
        .await
        .map_err(|_| "handshake timed out".to_owned())?
        .map_err(|e| format!("handshake: {e}"))?;
    let (_, conn) = tls.get_ref();
    assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]), "the listener speaks HTTP/2 over ALPN");
    let leaf = conn.peer_certificates().and_then(|c| c.first()).ok_or("no certificate presented")?;
    Ok(leaf.to_vec())
}

/// `(name, content)` pairs as `SecretDir` takes them.
fn named<'a>(files: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    files.iter().map(|(n, c)| (*n, c.as_str())).collect()
}

/// A channel to `addr` over TLS, trusting `ca`, presenting `identity` when given.
async fn channel(addr: SocketAddr, ca: &str, identity: Option<(&str, &str)>) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://localhost:{}", addr.port()))
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))
}

/// One `Check` call; the decision's source, or why the call failed.
async fn check(client: &mut RateLimiterClient<Channel>, ip: &str) -> Result<String, String> {
    let call = client.check(pb::CheckRequest { requests: vec![request(&[("ip", ip)])], dry_run: false });
    match tokio::time::timeout(Duration::from_secs(5), call).await {
        Ok(Ok(r)) => Ok(r.into_inner().decisions[0].source.clone()),
        Ok(Err(status)) => Err(format!("{status:?}")),
        Err(_) => Err("no answer within 5 s".into()),
    }
}

/// A new connection with `identity`, and one call on it.
async fn call_anew(addr: SocketAddr, ca: &str, identity: Option<(&str, &str)>) -> Result<String, String> {
    let mut client = RateLimiterClient::new(channel(addr, ca, identity).await?);
    check(&mut client, "192.0.2.1").await
}

/// The value of a counter in the server's `/metrics` with every one of `labels`; 0 before it
/// exists.
async fn counter(server: &SluiceServer, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (status, body) = common::http_get(server.http_addr, "/metrics").await;
    assert_eq!(status, 200);
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Calls that run until stopped and record what happened to each.
struct Calls {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(Vec<String>, Vec<String>)>,
}

impl Calls {
    /// `Check` every `pause`; over one connection throughout (`fresh: false`) or a new connection
    /// for each call (`fresh: true`, so every call needs a handshake).
    fn start(addr: SocketAddr, ca: String, pause: Duration, fresh: bool) -> Calls {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let stop = Arc::clone(&stop);
            async move {
                let (mut sources, mut failures) = (Vec::new(), Vec::new());
                let mut kept = None;
                while !stop.load(Ordering::Relaxed) {
                    if fresh || kept.is_none() {
                        match channel(addr, &ca, None).await {
                            Ok(c) => kept = Some(RateLimiterClient::new(c)),
                            Err(e) => {
                                failures.push(e);
                                tokio::time::sleep(pause).await;
                                continue;
                            }
                        }
                    }
                    match check(kept.as_mut().expect("connected"), "198.51.100.7").await {
                        Ok(source) => sources.push(source),
                        Err(e) => failures.push(e),
                    }
                    tokio::time::sleep(pause).await;
                }
                (sources, failures)
            }
        });
        Calls { stop, task }
    }

    /// Stops; every decision's source and every failure.
    async fn finish(self) -> (Vec<String>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the calling task")
    }
}

fn listener_yaml(secret: &SecretDir, mutual: bool, extra: &str) -> String {
    let client_ca =
        if mutual { format!("    client_ca_file: {}\n", secret.path("ca.crt")) } else { String::new() };
    format!(
        "server:\n  tls:\n    cert_file: {}\n    key_file: {}\n{client_ca}    reload_interval_ms: {RELOAD_MS}\n{extra}tiers: []\n",
        secret.path("tls.crt"),
        secret.path("tls.key"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_listener_certificate_reaches_new_handshakes_and_no_call_fails() {
    let ca = Ca::new("listener ca");
    let first = ca.leaf(&["localhost", "127.0.0.1"]);
    let second = ca.leaf(&["localhost", "127.0.0.1"]);
    let mut secret = SecretDir::new(&[("tls.crt", &first.0), ("tls.key", &first.1)]);
    let admin = format!("admin:\n  grpc_addr: 127.0.0.1:0\n  token: {TOKEN}\n");
    let server = SluiceServer::start(&listener_yaml(&secret, false, &admin), None).await;
    let admin_addr = server.admin_addr.expect("the admin API is configured");
    let (ca_pem, first_der, second_der) = (ca.pem(), leaf_der(&first.0), leaf_der(&second.0));

    assert_eq!(presented(server.grpc_addr, &ca_pem, None).await, Ok(first_der.clone()));
    assert_eq!(presented(admin_addr, &ca_pem, None).await, Ok(first_der.clone()));
    let reloads = counter(&server, "sluice_tls_reloads_total", &[("target", "grpc"), ("result", "ok")]).await;

    // One connection calling throughout, and calls that each open a connection of their own.
    let kept = Calls::start(server.grpc_addr, ca_pem.clone(), Duration::from_millis(10), false);
    let fresh = Calls::start(server.grpc_addr, ca_pem.clone(), Duration::from_millis(20), true);
    tokio::time::sleep(Duration::from_millis(300)).await;

    secret.rotate(&[("tls.crt", &second.0), ("tls.key", &second.1)]);
    let rotated = Instant::now();
    assert_eventually!(
        presented(server.grpc_addr, &ca_pem, None).await == Ok(second_der.clone()),
        PATIENCE,
        "the gRPC listener still presents the old certificate"
    );
    eprintln!("the new certificate showed after {:?}", rotated.elapsed());
    assert_eq!(
        presented(admin_addr, &ca_pem, None).await,
        Ok(second_der.clone()),
        "the admin listener (admin.tls: inherit) presents the new certificate too"
    );
    assert!(
        counter(&server, "sluice_tls_reloads_total", &[("target", "grpc"), ("result", "ok")]).await > reloads,
        "the reload is counted"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (kept_sources, kept_failures) = kept.finish().await;
    let (fresh_sources, fresh_failures) = fresh.finish().await;
    assert!(kept_failures.is_empty(), "calls over the kept connection failed: {kept_failures:?}");
    assert!(fresh_failures.is_empty(), "calls over new connections failed: {fresh_failures:?}");
    assert!(kept_sources.len() >= 20, "too few calls over the kept connection: {}", kept_sources.len());
    assert!(fresh_sources.len() >= 5, "too few calls over new connections: {}", fresh_sources.len());
    // A client that trusts only the new certificate's CA connects as ever.
    assert!(call_anew(server.grpc_addr, &ca_pem, None).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_client_ca_admits_its_clients_and_refuses_the_old_ones() {
    let server_ca = Ca::new("server ca");
    let (old_ca, new_ca) = (Ca::new("old client ca"), Ca::new("new client ca"));
    let leaf = server_ca.leaf(&["localhost"]);
    let files =
        |ca: &Ca| vec![("tls.crt", leaf.0.clone()), ("tls.key", leaf.1.clone()), ("ca.crt", ca.pem())];
    let mut secret = SecretDir::new(&named(&files(&old_ca)));
    let server = SluiceServer::start(&listener_yaml(&secret, true, ""), None).await;
    let (addr, ca_pem) = (server.grpc_addr, server_ca.pem());
    let old_client = old_ca.leaf(&["gateway"]);
    let new_client = new_ca.leaf(&["gateway"]);
    let old_id = Some((old_client.0.as_str(), old_client.1.as_str()));
    let new_id = Some((new_client.0.as_str(), new_client.1.as_str()));

    let mut established =
        RateLimiterClient::new(channel(addr, &ca_pem, old_id).await.expect("an old-CA client"));
    assert_eq!(check(&mut established, "192.0.2.9").await.map(drop), Ok(()));
    assert!(
        call_anew(addr, &ca_pem, new_id).await.is_err(),
        "the new CA's client is refused before the rotation"
    );
    assert!(call_anew(addr, &ca_pem, None).await.is_err(), "a client without a certificate is refused");

    secret.rotate(&named(&files(&new_ca)));
    assert_eventually!(
        call_anew(addr, &ca_pem, new_id).await.is_ok(),
        PATIENCE,
        "a client of the new CA is still refused"
    );
    let old = call_anew(addr, &ca_pem, old_id).await;
    assert!(old.is_err(), "a new connection with the old CA's certificate must be refused: {old:?}");
    assert!(call_anew(addr, &ca_pem, None).await.is_err(), "still no client without a certificate");
    // The connection made under the old CA was left alone.
    for _ in 0..5 {
        assert_eq!(
            check(&mut established, "192.0.2.9").await.map(drop),
            Ok(()),
            "the established connection"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_that_do_not_make_a_certificate_keep_the_old_one_serving() {
    let ca = Ca::new("listener ca");
    let first = ca.leaf(&["localhost"]);
    let second = ca.leaf(&["localhost"]);
    let mut secret = SecretDir::new(&[("tls.crt", &first.0), ("tls.key", &first.1)]);
    let server = SluiceServer::start(&listener_yaml(&secret, false, ""), None).await;
    let (addr, ca_pem) = (server.grpc_addr, ca.pem());
    let mut client = RateLimiterClient::new(channel(addr, &ca_pem, None).await.expect("connect"));
    let errors = || counter(&server, "sluice_tls_reloads_total", &[("target", "grpc"), ("result", "error")]);

    let bad = [
        ("a key that is not the certificate's", second.0.as_str(), first.1.as_str()),
        ("a certificate that is not PEM", "not a certificate\n", second.1.as_str()),
        ("an empty key", second.0.as_str(), ""),
    ];
    for (what, cert, key) in bad {
        let before = errors().await;
        secret.rotate(&[("tls.crt", cert), ("tls.key", key)]);
        assert_eventually!(errors().await > before, PATIENCE, "{what}: no refused reload was counted");
        assert_eq!(
            presented(addr, &ca_pem, None).await,
            Ok(leaf_der(&first.0)),
            "{what}: the old certificate serves"
        );
        assert_eq!(check(&mut client, "192.0.2.3").await.map(drop), Ok(()), "{what}: calls go on");
        assert!(call_anew(addr, &ca_pem, None).await.is_ok(), "{what}: new connections go on");
        // A refused set is not tried again while it stays the same.
        tokio::time::sleep(Duration::from_millis(5 * RELOAD_MS)).await;
        assert_eq!(errors().await, before + 1.0, "{what}: refused once, not at every look");
    }

    secret.rotate(&[("tls.crt", &second.0), ("tls.key", &second.1)]);
    assert_eventually!(
        presented(addr, &ca_pem, None).await == Ok(leaf_der(&second.0)),
        PATIENCE,
        "good files after bad ones are taken up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_that_never_finish_do_not_hold_up_the_others() {
    let ca = Ca::new("listener ca");
    let leaf = ca.leaf(&["localhost"]);
    let secret = SecretDir::new(&[("tls.crt", &leaf.0), ("tls.key", &leaf.1)]);
    let server = SluiceServer::start(&listener_yaml(&secret, false, ""), None).await;
    let (addr, ca_pem) = (server.grpc_addr, ca.pem());
    let timeouts = counter(
        &server,
        "sluice_tls_handshake_failures_total",
        &[("listener", "grpc"), ("reason", "timeout")],
    )
    .await;

    // Fifty peers that connect and say nothing, and five that trickle the start of a ClientHello,
    // a byte every half second: more bytes keep resetting the idle timeout, not the handshake's.
    let started = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..50 {
        silent.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    }
    let trickling: Vec<_> = (0..5)
        .map(|_| {
            tokio::spawn(async move {
                let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
                let hello = [0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03];
                for byte in hello.iter().cycle() {
                    if tcp.write_all(&[*byte]).await.is_err() {
                        break;
                    }
                    let mut buf = [0u8; 64];
                    // Anything back (an alert, or the end) means the server has given up on it.
                    if tokio::time::timeout(Duration::from_millis(500), tcp.read(&mut buf)).await.is_ok() {
                        break;
                    }
                }
                started.elapsed()
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(200)).await;
    let asked = Instant::now();
    assert!(presented(addr, &ca_pem, None).await.is_ok(), "a proper client gets its handshake");
    assert!(call_anew(addr, &ca_pem, None).await.is_ok(), "and its calls");
    assert!(asked.elapsed() < Duration::from_secs(3), "the others held it up for {:?}", asked.elapsed());

    // The silent ones are closed at the handshake timeout, long before the idle timeout (300 s).
    let timeout = sluice::tls::HANDSHAKE_TIMEOUT;
    for mut tcp in silent {
        let read = tokio::time::timeout(timeout + Duration::from_secs(5), tcp.read(&mut [0u8; 16])).await;
        assert!(matches!(read, Ok(Ok(0) | Err(_))), "a silent peer was not closed: {read:?}");
    }
    let closed = started.elapsed();
    assert!(closed >= timeout - Duration::from_millis(500), "closed after {closed:?}, before the timeout");
    for task in trickling {
        let closed = task.await.expect("a trickling peer");
        assert!(
            closed >= timeout - Duration::from_millis(500) && closed < timeout + Duration::from_secs(5),
            "a trickling peer was closed after {closed:?}"
        );
    }
    let now = counter(
        &server,
        "sluice_tls_handshake_failures_total",
        &[("listener", "grpc"), ("reason", "timeout")],
    )
    .await;
    assert!(now >= timeouts + 55.0, "timed-out handshakes counted: {timeouts} then {now}");
}

/// Redis over TLS that verifies clients, Sluice presenting a client certificate from a Secret-like
/// directory. The server first trusts the fixture's CA and S1's; Sluice starts with an S1
/// certificate. Each step changes what Redis trusts with `CONFIG SET tls-ca-cert-file`, which
/// applies to new connections only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_redis_client_certificate_is_used_for_new_connections_and_no_decision_falls_back() {
    let fixture = Ca::new("redis fixture ca");
    let redis = RedisServer::start_tls(&fixture);
    let (s1, s2, s3) = (Ca::new("sluice ca 1"), Ca::new("sluice ca 2"), Ca::new("sluice ca 3"));
    let trust = |name: &str, cas: &[&Ca]| {
        let bundle: String = std::iter::once(fixture.pem()).chain(cas.iter().map(|c| c.pem())).collect();
        let path = redis.file(name, &bundle);
        let _: () = redis.cmd(redis::cmd("CONFIG").arg("SET").arg("tls-ca-cert-file").arg(path));
    };
    trust("trust-1.crt", &[&s1]);

    let server_ca = std::fs::read_to_string(&redis.tls().expect("a TLS server").ca).expect("the server's CA");
    let pair = |ca: &Ca| ca.leaf(&["sluice"]);
    let (p1, p2, p3) = (pair(&s1), pair(&s2), pair(&s3));
    let files = |p: &(String, String)| {
        vec![("ca.crt", server_ca.clone()), ("tls.crt", p.0.clone()), ("tls.key", p.1.clone())]
    };
    let mut rotating = SecretDir::new(&named(&files(&p1)));
    let control = SecretDir::new(&named(&files(&p1)));
    let yaml = |secret: &SecretDir| {
        format!(
            "tiers:\n  - name: edge\n    key: [ip]\n    limit: 1000000\n    window: 1m\nredis:\n  url: {}\n  timeout_ms: 1000\n  tls:\n    ca_file: {}\n    cert_file: {}\n    key_file: {}\n    reload_interval_ms: {RELOAD_MS}\n",
            redis.plain_url(),
            secret.path("ca.crt"),
            secret.path("tls.crt"),
            secret.path("tls.key"),
        )
    };
    let a = SluiceServer::start(&yaml(&rotating), None).await;
    let b = SluiceServer::start(&yaml(&control), None).await;
    let (mut client_a, mut client_b) = (a.client().await, b.client().await);
    assert_eq!(check(&mut client_a, "192.0.2.10").await, Ok("redis".into()));
    assert_eq!(check(&mut client_b, "192.0.2.10").await, Ok("redis".into()));
    let ok = || counter(&a, "sluice_tls_reloads_total", &[("target", "redis"), ("result", "ok")]);
    let errors = || counter(&a, "sluice_tls_reloads_total", &[("target", "redis"), ("result", "error")]);
    let oks = ok().await;

    // Decisions from A all along, over plaintext gRPC, each of which must come from Redis.
    let load = common::Load::start(a.grpc_addr, 2, Duration::from_millis(5), |client, n| {
        request(&[("ip", &format!("10.9.{client}.{}", n % 200))])
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 1. Redis trusts S2 as well; A moves to S2 under load.
    trust("trust-12.crt", &[&s1, &s2]);
    rotating.rotate(&named(&files(&p2)));
    assert_eventually!(ok().await > oks, PATIENCE, "A never reconnected with the S2 certificate");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 2. A moves to S3, which Redis does not trust yet: the S2 connection stays in use, and the new
    //    files are tried again until Redis trusts S3 (and no longer S1 or S2; connections made
    //    under them stay open).
    let errs = errors().await;
    rotating.rotate(&named(&files(&p3)));
    assert_eventually!(
        errors().await > errs,
        PATIENCE,
        "connecting with the untrusted S3 certificate did not fail"
    );
    assert_eq!(ok().await, oks + 1.0, "an S3 connection was taken up although Redis refuses it");
    tokio::time::sleep(Duration::from_millis(300)).await;
    trust("trust-3.crt", &[&s3]);
    assert_eventually!(ok().await > oks + 1.0, PATIENCE, "A never reconnected with the S3 certificate");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (seen, failed) = load.finish().await;
    assert!(failed.is_empty(), "calls failed: {failed:?}");
    assert!(seen.len() >= 100, "too few decisions: {}", seen.len());
    let elsewhere: Vec<_> = seen.iter().filter(|s| s.source != "redis").map(|s| s.source.as_str()).collect();
    assert!(
        elsewhere.is_empty(),
        "{} of {} decisions did not come from Redis: {elsewhere:?}",
        elsewhere.len(),
        seen.len()
    );

    // 3. Every client connection is cut. A reconnects with its S3 certificate; B, still on S1,
    //    which Redis no longer trusts, cannot, and decides in process. A's S2 connection could not
    //    have come back either: A's new certificate is what lets it in.
    let _: i64 =
        redis.cmd(redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("normal").arg("SKIPME").arg("yes"));
    assert_eventually!(
        check(&mut client_b, "192.0.2.11").await == Ok("fallback".into()),
        PATIENCE,
        "B, whose S1 certificate Redis no longer trusts, still decides through Redis"
    );
    assert_eventually!(
        check(&mut client_a, "192.0.2.11").await == Ok("redis".into()),
        PATIENCE,
        "A does not get back to Redis with its S3 certificate"
    );
    for _ in 0..10 {
        assert_eq!(check(&mut client_a, "192.0.2.12").await, Ok("redis".into()));
    }
    assert_eq!(check(&mut client_b, "192.0.2.12").await, Ok("fallback".into()), "B stays refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_listener_stops_accepting_when_the_server_stops() {
    let ca = Ca::new("listener ca");
    let leaf = ca.leaf(&["localhost"]);
    let secret = SecretDir::new(&[("tls.crt", &leaf.0), ("tls.key", &leaf.1)]);
    let server = SluiceServer::start(&listener_yaml(&secret, false, ""), None).await;
    let addr = server.grpc_addr;
    assert!(call_anew(addr, &ca.pem(), None).await.is_ok());
    server.shutdown().await;
    assert_eventually!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        Duration::from_secs(2),
        "the listening socket is still open after the server stopped"
    );
}
