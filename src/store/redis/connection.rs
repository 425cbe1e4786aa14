//! Reaching Redis: where it is (`Topology`), what lets us in (`Access`: ACL credentials and TLS
//! certificates, never logged), and the one open connection of each topology. Knows nothing of the
//! scripts' layout (that is `protocol`).
//!
//! Every call goes over one multiplexed connection per node, which pipelines concurrent calls.
//! Gathering them into explicit pipelines was measured and bought nothing: Redis spends its time
//! running the script, not reading sockets (see docs/performance.md).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelServerType};

use crate::store::StoreError;
use crate::store::script::LIBRARY;

/// ACL credentials, applied to every connection; never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: Option<String>,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).finish_non_exhaustive()
    }
}

impl Credentials {
    fn apply(&self, info: redis::RedisConnectionInfo) -> redis::RedisConnectionInfo {
        let info = info.set_password(&self.password);
        match &self.username {
            Some(user) => info.set_username(user),
            None => info,
        }
    }
}

/// Certificates for TLS to Redis (`rediss://` URLs), as PEM bytes. Without a CA the system's roots
/// are trusted; a certificate and key are presented to servers that verify clients.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca_pem: Option<Vec<u8>>,
    pub client: Option<(Vec<u8>, Vec<u8>)>,
    /// Where the bytes were read from, to be read again when the files rotate.
    pub paths: TlsPaths,
}

/// The files behind `TlsFiles`: the CA, and the client certificate and key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsPaths {
    pub ca: Option<PathBuf>,
    pub client: Option<(PathBuf, PathBuf)>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles")
            .field("ca", &self.ca_pem.is_some())
            .field("client_certificate", &self.client.is_some())
            .finish()
    }
}

impl TlsFiles {
    fn certificates(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: self.client.as_ref().map(|(cert, key)| redis::ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.clone(),
            }),
            root_cert: self.ca_pem.clone(),
        }
    }
}

/// What it takes to be let in: ACL credentials and TLS certificates, both optional.
#[derive(Clone, Debug, Default)]
pub struct Access {
    pub credentials: Option<Credentials>,
    pub tls: Option<TlsFiles>,
}

/// Where Redis is and how to reach it. URLs may hold credentials; they are never logged.
#[derive(Clone, PartialEq, Eq)]
pub enum Topology {
    Standalone { url: String },
    Cluster { nodes: Vec<String> },
    Sentinel { nodes: Vec<String>, master_name: String },
}

impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Topology::Standalone { .. } => f.write_str("standalone"),
            Topology::Cluster { nodes } => write!(f, "cluster ({} seed nodes)", nodes.len()),
            Topology::Sentinel { nodes, master_name } => {
                write!(f, "sentinel (master {master_name:?}, {} sentinels)", nodes.len())
            }
        }
    }
}

/// The open connection of one topology. Cloning shares it.
#[derive(Clone)]
pub(super) enum Connection {
    /// A standalone server; the manager reconnects by itself.
    Manager(ConnectionManager),
    /// Redis Cluster; the client follows MOVED and failovers by itself.
    Cluster(ClusterConnection),
    /// The master the sentinels named when last asked (see `recover`).
    Sentinel(Arc<SentinelConnection>),
}

pub(super) struct SentinelConnection {
    client: tokio::sync::Mutex<SentinelClient>,
    current: ArcSwap<MultiplexedConnection>,
}

impl Connection {
    /// Connects; `timeout` bounds connecting, not the calls (callers put their own deadline on
    /// those).
    pub(super) async fn open(
        topology: &Topology,
        access: &Access,
        timeout: Duration,
    ) -> Result<Connection, StoreError> {
        let credentials = access.credentials.as_ref();
        let connect_timeout = timeout.max(Duration::from_millis(200));
        Ok(match topology {
            Topology::Standalone { url } => {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(None)
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                let mut info = redis::IntoConnectionInfo::into_connection_info(url.as_str())?;
                if let Some(c) = credentials {
                    let settings = c.apply(info.redis_settings().clone());
                    info = info.set_redis_settings(settings);
                }
                let client = match &access.tls {
                    Some(tls) => redis::Client::build_with_tls(info, tls.certificates())?,
                    None => redis::Client::open(info)?,
                };
                Connection::Manager(client.get_connection_manager_with_config(config).await?)
            }
            Topology::Cluster { nodes } => {
                let mut builder = redis::cluster::ClusterClientBuilder::new(nodes.iter().map(String::as_str))
                    .connection_timeout(connect_timeout)
                    .response_timeout(connect_timeout * 5)
                    .retries(2);
                if let Some(c) = credentials {
                    builder = builder.password(&c.password);
                    if let Some(user) = &c.username {
                        builder = builder.username(user);
                    }
                }
                if let Some(tls) = &access.tls {
                    builder = builder.certs(tls.certificates());
                }
                let client = builder.build()?;
                Connection::Cluster(client.get_async_connection().await?)
            }
            Topology::Sentinel { nodes, master_name } => {
                let mut client = sentinel_client(nodes, master_name, access)?;
                let current = client.get_async_connection().await?;
                Connection::Sentinel(Arc::new(SentinelConnection {
                    client: tokio::sync::Mutex::new(client),
                    current: ArcSwap::from_pointee(current),
                }))
            }
        })
    }

    /// The topology's name, for `Debug`.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Connection::Manager(..) => "standalone",
            Connection::Cluster(_) => "cluster",
            Connection::Sentinel(..) => "sentinel",
        }
    }

    /// Runs `cmd` on the node that holds its first key (any node for none).
    pub(super) async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> Result<T, redis::RedisError> {
        self.send(cmd, false).await
    }

    /// Runs `cmd`, an FCALL of the library, as `query` does (see `call`).
    pub(super) async fn fcall<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> Result<T, redis::RedisError> {
        self.send(cmd, true).await
    }

    async fn send<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        fcall: bool,
    ) -> Result<T, redis::RedisError> {
        async fn on<T: redis::FromRedisValue>(
            conn: &mut impl redis::aio::ConnectionLike,
            cmd: &redis::Cmd,
            fcall: bool,
        ) -> Result<T, redis::RedisError> {
            if fcall { call(conn, cmd).await } else { cmd.query_async(conn).await }
        }
        match self {
            Connection::Manager(c) => on(&mut c.clone(), cmd, fcall).await,
            Connection::Cluster(c) => on(&mut c.clone(), cmd, fcall).await,
            Connection::Sentinel(s) => on(&mut (**s.current.load()).clone(), cmd, fcall).await,
        }
    }

    /// After failures: asks the sentinels for the current master and connects to it. The other
    /// topologies reconnect by themselves.
    pub(super) async fn recover(&self) -> Result<(), StoreError> {
        if let Connection::Sentinel(s) = self {
            let fresh = s.client.lock().await.get_async_connection().await?;
            s.current.store(Arc::new(fresh));
        }
        Ok(())
    }
}

/// A client for the master the sentinels name. The sentinels take their credentials from their
/// URLs (the first that has any); `access` is the master's. TLS to the sentinels (`rediss://`)
/// means TLS to the master too.
fn sentinel_client(
    nodes: &[String],
    master_name: &str,
    access: &Access,
) -> Result<SentinelClient, StoreError> {
    let infos = nodes
        .iter()
        .map(|url| redis::IntoConnectionInfo::into_connection_info(url.as_str()))
        .collect::<Result<Vec<_>, _>>()?;
    let secure = infos.iter().any(|i| matches!(i.addr(), redis::ConnectionAddr::TcpTls { .. }));
    let mut builder = redis::sentinel::SentinelClientBuilder::new(
        infos.iter().map(|i| i.addr().clone()),
        master_name,
        SentinelServerType::Master,
    )?;
    if let Some(own) = infos.iter().map(|i| i.redis_settings()).find(|s| s.password().is_some()) {
        if let Some(user) = own.username() {
            builder = builder.set_client_to_sentinel_username(user);
        }
        if let Some(password) = own.password() {
            builder = builder.set_client_to_sentinel_password(password);
        }
    }
    if let Some(c) = &access.credentials {
        builder = builder.set_client_to_redis_password(&c.password);
        if let Some(user) = &c.username {
            builder = builder.set_client_to_redis_username(user);
        }
    }
    if secure {
        builder = builder
            .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure)
            .set_client_to_redis_tls_mode(redis::TlsMode::Secure);
        if let Some(tls) = &access.tls {
            builder = builder
                .set_client_to_sentinel_certificates(tls.certificates())
                .set_client_to_redis_certificates(tls.certificates());
        }
    }
    Ok(builder.build()?)
}

/// Runs `cmd`, an FCALL of the library; when the node lacks the library (a fresh or flushed Redis,
/// a node new to the Cluster), loads it and calls again: one extra round trip, not a failed
/// decision. A Redis older than 7.0, which has no functions, gets an error that says so.
pub(super) async fn call<T: redis::FromRedisValue>(
    conn: &mut impl redis::aio::ConnectionLike,
    cmd: &redis::Cmd,
) -> Result<T, redis::RedisError> {
    match cmd.query_async::<T>(conn).await {
        Err(e)
            if e.code() == Some("ERR") && e.detail().is_some_and(|d| d.starts_with("Function not found")) =>
        {
            load(conn).await?;
            cmd.query_async::<T>(conn).await
        }
        Err(e) if e.detail().is_some_and(|d| d.starts_with("unknown command") && d.contains("FCALL")) => {
            Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "Redis 7.0 or newer is needed (Sluice's decisions are Redis functions, called with FCALL)",
                e.to_string(),
            )))
        }
        other => other,
    }
}

/// Loads the library (in a Cluster, on every master). REPLACE makes a concurrent load by another
/// replica of the same release harmless: the text, and so the functions, are the same.
async fn load(conn: &mut impl redis::aio::ConnectionLike) -> Result<(), redis::RedisError> {
    redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(&LIBRARY.source)
        .query_async::<redis::Value>(conn)
        .await
        .map(drop)
}
