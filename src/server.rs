//! Wiring: builds the store and engine from settings and serves gRPC and HTTP until `shutdown`
//! resolves. The binary only parses arguments and waits for signals; tests bind `127.0.0.1:0` and
//! call the same `run`.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::admin::AdminService;
use crate::api::envoy::EnvoyService;
use crate::api::native::NativeService;
use crate::config::Settings;
use crate::engine::{Engine, EngineSettings};
use crate::metrics;
use crate::store::Store;
use crate::store::fallback::{FallbackSettings, FallbackStore, SharedFallback};
use crate::store::local::{Counting, LocalStore};

/// How long start-up waits for a first Redis connection before serving from the fallback.
const CONNECT_PATIENCE: Duration = Duration::from_secs(3);
/// How often expired in-process keys are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// How often histogram samples are folded into their buckets.
const METRICS_UPKEEP_EVERY: Duration = Duration::from_secs(5);
/// How often the in-process stores are trimmed under their bound, and the over-limit cache swept.
const TRIM_EVERY: Duration = Duration::from_secs(1);

/// The two listeners, bound before `run` so that callers (and tests) know the ports.
#[derive(Debug)]
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: TcpListener,
    /// The admin API's, when it is configured.
    pub admin: Option<TcpListener>,
    /// The HTTP decision API's, when it is configured.
    pub http_api: Option<TcpListener>,
}

impl Listeners {
    /// Binds every listener; an error names the listener and its address.
    pub async fn bind(settings: &Settings) -> std::io::Result<Listeners> {
        async fn bind(what: &str, addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
            TcpListener::bind(addr)
                .await
                .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr} ({what}): {e}")))
        }
        let admin = match &settings.admin {
            Some(admin) => Some(bind("admin.grpc_addr", admin.grpc_addr).await?),
            None => None,
        };
        let http_api = match &settings.http_api {
            Some(api) => Some(bind("http_api.addr", api.addr).await?),
            None => None,
        };
        Ok(Listeners {
            grpc: bind("server.grpc_addr", settings.server.grpc_addr).await?,
            http: bind("server.http_addr", settings.server.http_addr).await?,
            admin,
            http_api,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("metrics: {0}")]
    Metrics(#[from] metrics_exporter_prometheus::BuildError),
    #[error("grpc: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("http: {0}")]
    Http(#[from] std::io::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("server.tls.{0}")]
    Tls(#[from] crate::tls::PemError),
}

/// How `run` stops when its shutdown future resolves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Say NOT_SERVING (gRPC health) and 503 (`/readyz`) at once, serve on for `server.drain_secs`
    /// while load balancers move away, then close the listeners: what SIGTERM asks.
    Drain,
    /// Close the listeners at once: what SIGINT (Ctrl-C) asks.
    Now,
}

/// Serves until `shutdown` resolves, drains as it says, then lets calls in flight finish (up to
/// the grace period).
pub async fn run(
    settings: Settings,
    listeners: Listeners,
    shutdown: impl Future<Output = Stop> + Send + 'static,
) -> Result<(), ServerError> {
    let handle = metrics::install()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let grpc_tls = match &settings.server.tls {
        Some(tls) => Some(crate::certs::watch_listener(tls, stop_rx.clone())?),
        None => None,
    };
    let store = build_store(&settings, stop_rx.clone()).await;
    let engine = Arc::new(Engine::new(
        settings.tiers,
        store,
        EngineSettings {
            events_max_len: settings.events_max_len,
            over_limit_max_keys: settings.over_limit_max_keys,
            max_in_flight: settings.server.max_in_flight,
        },
    ));
    spawn_cache_sweeper(Arc::clone(&engine), stop_rx.clone());
    metrics::in_flight_limit(settings.server.max_in_flight);
    metrics::config_loaded(true);
    spawn_metrics_upkeep(handle.clone(), stop_rx.clone());
    let native = NativeService::new(Arc::clone(&engine), settings.limits);
    engine.replace_domains(settings.domains);
    let envoy = EnvoyService::new(Arc::clone(&engine), settings.limits, settings.envoy_headers);
    if let Some(path) = settings.source.clone() {
        crate::reload::spawn_reloader(
            Arc::clone(&engine),
            path,
            settings.envoy_paths.clone(),
            stop_rx.clone(),
        );
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<crate::api::pb::rate_limiter_server::RateLimiterServer<NativeService>>().await;
    health
        .set_serving::<envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer<EnvoyService>>()
        .await;

    let ready = Arc::new(AtomicBool::new(true));
    let grace = settings.server.shutdown_grace;
    let drain = settings.server.drain;
    tokio::spawn({
        let ready = Arc::clone(&ready);
        async move {
            let stop = shutdown.await;
            ready.store(false, Ordering::Relaxed);
            health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
            health
                .set_not_serving::<crate::api::pb::rate_limiter_server::RateLimiterServer<NativeService>>()
                .await;
            health
                .set_not_serving::<envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer<EnvoyService>>()
                .await;
            if stop == Stop::Drain && !drain.is_zero() {
                tracing::info!(
                    drain_secs = drain.as_secs(),
                    "shutting down: not ready, serving on while load balancers move away"
                );
                tokio::time::sleep(drain).await;
            }
            tracing::info!("shutting down");
            let _ = stop_tx.send(true);
        }
    });
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let grpc_addr = listeners.grpc.local_addr()?;
    let http_addr = listeners.http.local_addr()?;
    tracing::info!(grpc = %grpc_addr, http = %http_addr, "serving");

    let transport = settings.server.transport;
    let idle =
        move |tcp: tokio::net::TcpStream| crate::transport::IdleTimeout::new(tcp, transport.idle_timeout);
    if let Some(tls) = &settings.server.tls {
        tracing::info!(
            mutual = tls.client_ca_pem.is_some(),
            sha256 = %crate::tls::fingerprint(&tls.cert_pem).unwrap_or_default(),
            reload_interval_ms = tls.reload_interval.as_millis() as u64,
            "TLS on the gRPC listener"
        );
    }
    let router = crate::transport::configure(tonic::transport::Server::builder(), &transport)
        .layer(tower::util::MapResponseLayer::new(crate::transport::name_message_bound(
            transport.max_message_bytes,
        )))
        .add_service(reflection()?.build_v1()?)
        .add_service(reflection()?.build_v1alpha()?)
        .add_service(health_service)
        .add_service(native.into_server().max_decoding_message_size(transport.max_message_bytes))
        .add_service(envoy.into_server().max_decoding_message_size(transport.max_message_bytes));
    let grpc: Serving = match &grpc_tls {
        Some(config) => Box::pin(router.serve_with_incoming_shutdown(
            crate::tls::incoming("grpc", listeners.grpc, Arc::clone(config), crate::tls::Protocol::H2, idle),
            stopped(stop_rx.clone()),
        )),
        None => {
            let incoming = futures::StreamExt::map(
                tonic::transport::server::TcpIncoming::from(listeners.grpc).with_nodelay(Some(true)),
                move |conn| conn.map(idle),
            );
            Box::pin(router.serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone())))
        }
    };
    let http = axum::serve(
        crate::http::IdleListener::new(listeners.http, transport.idle_timeout),
        crate::http::router(handle, ready, Arc::clone(&engine)),
    )
    .with_graceful_shutdown(stopped(stop_rx.clone()));

    let api_stop = stop_rx.clone();
    let api_engine = Arc::clone(&engine);
    let limits = settings.limits;
    let max_body_bytes = transport.max_message_bytes;
    // `http_api.tls: inherit`: the gRPC listener's configuration, rotated with it.
    let api_tls = grpc_tls.clone();
    let http_api = async move {
        match (listeners.http_api, settings.http_api.clone()) {
            (Some(listener), Some(api)) => {
                let addr = listener.local_addr()?;
                let tls = api.tls.then_some(api_tls).flatten();
                tracing::info!(http_api = %addr, tls = tls.is_some(), "serving the HTTP decision API");
                let app = crate::api::http_api::router(api_engine, limits, api, max_body_bytes)
                    .into_make_service_with_connect_info::<crate::http::Peer>();
                match tls {
                    Some(config) => {
                        let incoming = crate::tls::incoming(
                            "http_api",
                            listener,
                            config,
                            crate::tls::Protocol::Http1,
                            idle,
                        );
                        axum::serve(crate::http::TlsListener::new(addr, incoming), app)
                            .with_graceful_shutdown(stopped(api_stop))
                            .await
                    }
                    None => {
                        axum::serve(crate::http::IdleListener::new(listener, transport.idle_timeout), app)
                            .with_graceful_shutdown(stopped(api_stop))
                            .await
                    }
                }
                .map_err(ServerError::from)
            }
            _ => Ok(()),
        }
    };

    let admin_stop = stop_rx.clone();
    let admin_engine = Arc::clone(&engine);
    // `admin.tls: inherit`: the gRPC listener's configuration, rotated with it.
    let admin_tls = grpc_tls.clone();
    let admin = async move {
        match (listeners.admin, settings.admin) {
            (Some(listener), Some(admin)) => {
                let addr = listener.local_addr()?;
                let mutual = admin.tls.as_ref().map(|t| t.client_ca_pem.is_some());
                tracing::info!(admin = %addr, tls = admin.tls.is_some(), mutual, "serving the admin API");
                if admin.tls.is_none() && !addr.ip().is_loopback() {
                    tracing::warn!(
                        admin = %addr,
                        "the admin API is served without TLS on a non-loopback address: its bearer token crosses the network in the clear"
                    );
                }
                let router = crate::transport::configure(tonic::transport::Server::builder(), &transport)
                    .add_service(AdminService::into_server(admin_engine, admin.token));
                let serving: Serving = match (&admin.tls, admin_tls) {
                    (Some(_), Some(config)) => Box::pin(router.serve_with_incoming_shutdown(
                        crate::tls::incoming("admin", listener, config, crate::tls::Protocol::H2, idle),
                        stopped(admin_stop),
                    )),
                    // TLS of its own, should the admin listener ever have it.
                    (Some(tls), None) => Box::pin(router.serve_with_incoming_shutdown(
                        crate::tls::incoming(
                            "admin",
                            listener,
                            crate::certs::watch_listener(tls, admin_stop.clone())?,
                            crate::tls::Protocol::H2,
                            idle,
                        ),
                        stopped(admin_stop),
                    )),
                    (None, _) => {
                        let incoming = futures::StreamExt::map(
                            tonic::transport::server::TcpIncoming::from(listener),
                            move |conn| conn.map(idle),
                        );
                        Box::pin(router.serve_with_incoming_shutdown(incoming, stopped(admin_stop)))
                    }
                };
                serving.await.map_err(ServerError::from)
            }
            _ => Ok(()),
        }
    };
    let serving = async {
        tokio::try_join!(
            async { grpc.await.map_err(ServerError::from) },
            async { http.await.map_err(ServerError::from) },
            admin,
            http_api
        )
    };
    tokio::pin!(serving);
    tokio::select! {
        result = &mut serving => { result?; }
        _ = stopped(stop_rx) => {
            match tokio::time::timeout(grace, &mut serving).await {
                Ok(result) => { result?; }
                Err(_) => tracing::warn!(grace_secs = grace.as_secs(), "calls still in flight after the grace period; stopping anyway"),
            }
        }
    }
    Ok(())
}

/// A tonic server at work, whichever stream of connections it serves.
type Serving = std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>>;

/// Envoy's rate limit service and everything it imports, compiled by build.rs (empty when the
/// proto files were not found at build time).
const ENVOY_RLS_DESCRIPTOR: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_rls_descriptor.bin"));

/// Server reflection over the services this port serves (v1, and v1alpha for older tools such as
/// grpcurl 1.8): Sluice's, health, reflection itself, and Envoy's rate limit service whenever its
/// descriptor was compiled in.
fn reflection() -> Result<tonic_reflection::server::Builder<'static>, ServerError> {
    let mut builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::api::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
    if !ENVOY_RLS_DESCRIPTOR.is_empty() {
        builder = builder
            .register_encoded_file_descriptor_set(ENVOY_RLS_DESCRIPTOR)
            .with_service_name("envoy.service.ratelimit.v3.RateLimitService");
    }
    for name in [
        "sluice.v1.RateLimiter",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        builder = builder.with_service_name(name);
    }
    Ok(builder)
}

/// The store settings ask for; with Redis, its certificates follow their files (`certs`).
async fn build_store(settings: &Settings, stop: watch::Receiver<bool>) -> Arc<dyn Store> {
    match &settings.redis {
        None => {
            tracing::info!(
                "no redis configured: counts are kept in this process only and not shared between replicas"
            );
            let local = LocalStore::new(Counting::AsConfigured, settings.local_max_keys);
            spawn_sweeper(local.clone(), "local", stop);
            Arc::new(local)
        }
        Some(redis) => {
            tracing::info!(topology = ?redis.topology, timeout_ms = redis.timeout.as_millis() as u64, "using redis");
            let fallback = FallbackSettings {
                deadline: redis.timeout,
                probe_interval: redis.probe_interval,
                replicas: settings.replicas,
                max_keys: settings.local_max_keys,
            };
            let store = FallbackStore::start(
                redis.topology.clone(),
                redis.access.clone(),
                fallback,
                CONNECT_PATIENCE,
            )
            .await;
            spawn_sweeper(store.local().clone(), "fallback", stop.clone());
            crate::certs::watch_redis(&redis.access, redis.tls_reload_interval, Arc::clone(&store), stop);
            Arc::new(SharedFallback(store))
        }
    }
}

/// Runs `task` every `period` (the first run at once) until the server stops.
fn spawn_every<F, Fut>(period: Duration, mut stop: watch::Receiver<bool>, mut task: F)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut every = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
            task().await;
        }
    });
}

/// Every second: trims the store when it is past 90% of its bound, so eviction happens here and
/// not inside a request; every `SWEEP_EVERY`, drops expired keys. Both walk the whole map, so they
/// run on the blocking pool, off the threads that answer requests.
fn spawn_sweeper(local: LocalStore, role: &'static str, stop: watch::Receiver<bool>) {
    let mut last_sweep = tokio::time::Instant::now();
    spawn_every(TRIM_EVERY, stop, move || {
        let sweep = last_sweep.elapsed() >= SWEEP_EVERY;
        if sweep {
            last_sweep = tokio::time::Instant::now();
        }
        let store = local.clone();
        async move {
            let held = tokio::task::spawn_blocking(move || {
                let now = store.now_ms();
                if sweep {
                    store.sweep(now);
                }
                store.trim(now);
                store.len()
            })
            .await;
            if let Ok(held) = held {
                metrics::local_keys(role, held);
            }
        }
    });
}

/// Histograms keep their samples until they are folded into buckets, which a scrape does; with no
/// scraper they would grow by every decision. Folding them every few seconds keeps them bounded.
fn spawn_metrics_upkeep(handle: metrics_exporter_prometheus::PrometheusHandle, stop: watch::Receiver<bool>) {
    spawn_every(METRICS_UPKEEP_EVERY, stop, move || {
        handle.run_upkeep();
        std::future::ready(())
    });
}

/// Every second: drops the over-limit cache's ended denials, on the blocking pool.
fn spawn_cache_sweeper(engine: Arc<Engine>, stop: watch::Receiver<bool>) {
    spawn_every(TRIM_EVERY, stop, move || {
        let cache = Arc::clone(&engine);
        async move {
            let held = tokio::task::spawn_blocking(move || {
                cache.over_limit().sweep();
                cache.over_limit().len()
            })
            .await;
            if let Ok(held) = held {
                metrics::over_limit_keys(held);
            }
        }
    });
}
