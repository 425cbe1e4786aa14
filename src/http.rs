//! The HTTP side port: `/metrics` for Prometheus, `/healthz` (the process runs) and `/readyz` (it
//! accepts decisions; 503 once shutting down, so load balancers drain it first).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

#[derive(Clone)]
struct Http {
    metrics: PrometheusHandle,
    ready: Arc<AtomicBool>,
    engine: Arc<crate::engine::Engine>,
}

pub fn router(
    metrics: PrometheusHandle,
    ready: Arc<AtomicBool>,
    engine: Arc<crate::engine::Engine>,
) -> Router {
    Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Http { metrics, ready, engine })
}

async fn render(State(http): State<Http>) -> ([(&'static str, &'static str); 1], String) {
    // Gauges read at the scrape: the calls in flight now, and the process's own figures.
    crate::metrics::in_flight(http.engine.in_flight());
    crate::metrics::collect_process();
    http.metrics.run_upkeep();
    ([("content-type", "text/plain; version=0.0.4")], http.metrics.render())
}

async fn readyz(State(http): State<Http>) -> (StatusCode, &'static str) {
    if http.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// The HTTP listener with the gRPC port's idle rule: a connection that sends nothing for `idle`
/// is closed, so idle sockets cannot pile up here either.
#[derive(Debug)]
pub struct IdleListener {
    inner: tokio::net::TcpListener,
    idle: Option<std::time::Duration>,
}

impl IdleListener {
    pub fn new(inner: tokio::net::TcpListener, idle: Option<std::time::Duration>) -> Self {
        IdleListener { inner, idle }
    }
}

impl axum::serve::Listener for IdleListener {
    type Io = crate::transport::IdleTimeout<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        (crate::transport::IdleTimeout::new(io, self.idle), addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection's peer address, for handlers served through `IdleListener`
/// (`ConnectInfo<Peer>`).
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub std::net::SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, IdleListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, IdleListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

/// A TLS listener for axum: the connections of `tls::incoming`, each with its peer's address.
pub struct TlsListener {
    local: std::net::SocketAddr,
    incoming: std::pin::Pin<Box<dyn futures::Stream<Item = TlsConnection> + Send>>,
}

type TlsConnection = Result<
    tokio_rustls::server::TlsStream<crate::transport::IdleTimeout<tokio::net::TcpStream>>,
    std::convert::Infallible,
>;

impl TlsListener {
    pub fn new(
        local: std::net::SocketAddr,
        incoming: impl futures::Stream<Item = TlsConnection> + Send + 'static,
    ) -> Self {
        TlsListener { local, incoming: Box::pin(incoming) }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<crate::transport::IdleTimeout<tokio::net::TcpStream>>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match futures::StreamExt::next(&mut self.incoming).await {
                Some(Ok(io)) => {
                    let Ok(peer) = io.get_ref().0.get_ref().peer_addr() else { continue };
                    return (io, peer);
                }
                // The accept loop has stopped: only shutdown is left.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}
