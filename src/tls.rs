//! TLS on the gRPC and admin listeners: the rustls server configuration built from PEM bytes, and
//! the accept loop that hands tonic finished handshakes. Knows nothing of where the bytes come from
//! (`config` reads them at start, `certs` again when they rotate).
//!
//! The configuration sits in an `ArcSwap`: each handshake takes the configuration of the moment, and
//! a connection keeps the one it began with for its whole life. So a rotated certificate or client
//! CA is presented to (or required of) new connections at once, and no established connection is
//! touched. Each generation is a whole new `ServerConfig`, session cache included, so a session
//! begun under an old client CA cannot be resumed under a new one.
//!
//! Handshakes run in tasks of their own, each bounded by `HANDSHAKE_TIMEOUT`, at most
//! `MAX_HANDSHAKES` at once: a peer that connects and says nothing, or trickles its hello a byte at
//! a time, holds one permit for a while and blocks nobody. Past the cap, accepting pauses and new
//! connections wait in the kernel's backlog. tonic sees only finished handshakes.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

use crate::metrics;

/// How long a peer may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once, per listener.
pub const MAX_HANDSHAKES: usize = 1024;
/// After a failed `accept` (out of file descriptors, say): a pause, so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The listener's configuration of the moment, shared by the accept loop and whoever rotates it.
pub type SharedConfig = Arc<ArcSwap<ServerConfig>>;

/// Which file of a set is at fault, and why (no secret material is ever quoted).
#[derive(Debug, thiserror::Error)]
#[error("{file}: {reason}")]
pub struct PemError {
    /// The key naming the file within its section: `cert_file`, `key_file`, `client_ca_file` or
    /// `ca_file`.
    pub file: &'static str,
    pub reason: String,
}

fn problem(file: &'static str, reason: impl std::fmt::Display) -> PemError {
    PemError { file, reason: reason.to_string() }
}

/// Rustls with ring, named rather than left to the process default, so that no second provider
/// linked in by a dependency can make the choice ambiguous.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate of a PEM file, in order; at least one.
fn certificates(pem: &[u8], file: &'static str) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| problem(file, format_args!("not PEM certificates ({e})")))?;
    if chain.is_empty() {
        return Err(problem(file, "holds no CERTIFICATE block"));
    }
    Ok(chain)
}

fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| problem("key_file", format_args!("no PEM private key ({e})")))
}

/// The server side of TLS from PEM bytes: the certificate chain and its key, and for mutual TLS the
/// CA(s) that must have signed a client's certificate. ALPN says `h2`, all that tonic serves. A key
/// that does not match the certificate, an empty or unreadable CA, is an error: such a generation is
/// never served.
pub fn server_config(
    cert: &[u8],
    key: &[u8],
    client_ca: Option<&[u8]>,
) -> Result<Arc<ServerConfig>, PemError> {
    let chain = certificates(cert, "cert_file")?;
    let key = private_key(key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| problem("cert_file", e))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certificates(ca, "client_ca_file")? {
                roots.add(c).map_err(|e| problem("client_ca_file", format_args!("not a usable CA ({e})")))?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                    .build()
                    .map_err(|e| problem("client_ca_file", e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| problem("key_file", format_args!("does not fit cert_file ({e})")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Checks a client certificate and key as a TLS client will use them: both parse, and the key is
/// the certificate's. (The Redis client checks the pair only when it connects.)
pub fn check_client_pair(cert: &[u8], key: &[u8]) -> Result<(), PemError> {
    let chain = certificates(cert, "cert_file")?;
    let key = private_key(key)?;
    rustls::sign::CertifiedKey::from_der(chain, key, &provider())
        .map(drop)
        .map_err(|e| problem("key_file", format_args!("does not fit cert_file ({e})")))
}

/// Checks that a CA file holds at least one certificate a TLS client can trust.
pub fn check_ca(pem: &[u8]) -> Result<(), PemError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certificates(pem, "ca_file")? {
        roots.add(c).map_err(|e| problem("ca_file", format_args!("not a usable CA ({e})")))?;
    }
    Ok(())
}

/// The SHA-256 fingerprint of the first certificate of a PEM file (the leaf), as
/// `openssl x509 -noout -fingerprint -sha256` prints it, so an operator can tell which certificate
/// is served.
pub fn fingerprint(cert_pem: &[u8]) -> Option<String> {
    let leaf = CertificateDer::pem_slice_iter(cert_pem).next()?.ok()?;
    // rustls carries ring's SHA-256 in its cipher suites; no other hashing crate is needed.
    let sha256 = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256.tls13()?.common.hash_provider;
    let digest = sha256.hash(leaf.as_ref());
    let hex: Vec<String> = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
    Some(hex.join(":"))
}

/// What a listener serves over TLS, for ALPN: the configurations say `h2` (gRPC); the HTTP API
/// serves HTTP/1.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    H2,
    Http1,
}

impl Protocol {
    /// The configuration of the moment, saying this protocol.
    fn config(self, shared: &SharedConfig) -> Arc<ServerConfig> {
        let config = shared.load_full();
        match self {
            Protocol::H2 => config,
            Protocol::Http1 => {
                let mut own = (*config).clone();
                own.alpn_protocols = vec![b"http/1.1".to_vec()];
                Arc::new(own)
            }
        }
    }
}

/// Accepts connections on `listener` and yields each once its TLS handshake (under the
/// configuration of the moment, saying `protocol`) has finished, wrapped in `wrap` below TLS.
/// Failed and timed-out handshakes are counted under `name` and dropped. Accepting stops, and the
/// listening socket closes, as soon as the stream is dropped (tonic drops it when it stops
/// serving).
pub fn incoming<S, W>(
    name: &'static str,
    listener: TcpListener,
    config: SharedConfig,
    protocol: Protocol,
    wrap: W,
) -> impl futures::Stream<Item = Result<tokio_rustls::server::TlsStream<S>, std::convert::Infallible>>
+ Send
+ 'static
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    W: Fn(TcpStream) -> S + Send + 'static,
{
    // A small queue: tonic takes finished connections at once; a full one holds handshake tasks
    // (and their permits) back, which slows accepting rather than piling connections up.
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                _ = tx.closed() => return,
                permit = Arc::clone(&permits).acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            let tcp = tokio::select! {
                _ = tx.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => tcp,
                    Err(e) => {
                        tracing::debug!(listener = name, error = %e, "accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(protocol.config(&config));
            let tx = tx.clone();
            let io = wrap(tcp);
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => {
                        metrics::tls_handshake_failed(name, "error");
                        tracing::debug!(listener = name, error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        metrics::tls_handshake_failed(name, "timeout");
                        tracing::debug!(listener = name, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
