//! Configuration: what an operator writes, into typed settings that the rest of Sluice uses as is,
//! so the hot path never re-checks them. Every problem of a file is reported together, each
//! naming its key.
//!
//! - `schema`: the file as operators write it (serde, unknown keys refused; its docs are the
//!   reference)
//! - `load`: reading the file (or the built-in default) under `SLUICE__...` environment overrides
//! - `validate`: the schema into `Settings`; it checks the listeners, admin API, bounds and log
//!   itself and hands each other section to its module:
//!   - `tiers`: tiers, their adaptive, penalty and baseline options, and the threat lists
//!   - `redis`: the Redis topology, credentials and TLS files
//!   - `envoy_file`: domain files in envoyproxy/ratelimit's format
//! - `duration`: `15m`-style durations
//!
//! Config only produces settings: it builds the types of the layers it configures (`tier::Tier`,
//! `envoy::Domains`, `store::redis::Topology`), and nothing outside it needs more than `Settings`
//! and the loading functions.

mod duration;
pub mod envoy_file;
mod load;
mod redis;
pub mod schema;
mod tiers;
mod validate;
mod yaml;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use load::{DEFAULT_YAML, files_read, load, load_with_env, parse};

/// The sections a reload swaps in; every other one takes effect at the next start.
const RELOADED_SECTIONS: [&str; 3] = ["tiers", "threat", "envoy"];

/// The sections of the file at `path` that take effect only at a start, as written (a JSON
/// object), so that a reload can say which changes wait for a restart; `None` when it does not read.
pub fn restart_sections(path: &std::path::Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut tree = yaml::as_json(&text).ok()?;
    if let serde_json::Value::Object(map) = &mut tree {
        map.retain(|section, _| !RELOADED_SECTIONS.contains(&section.as_str()));
    }
    Some(tree)
}

/// The sections whose text differs between `before` and `after` (from `restart_sections`), sorted.
pub fn changed_sections(before: &serde_json::Value, after: &serde_json::Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let (a, b) = (before.as_object().unwrap_or(&empty), after.as_object().unwrap_or(&empty));
    let mut changed: Vec<String> =
        a.keys().chain(b.keys()).filter(|k| a.get(*k) != b.get(*k)).cloned().collect();
    changed.sort();
    changed.dedup();
    changed
}
pub use schema::LogFormat;

use crate::store::redis::Topology;
use crate::tier::Tiers;

#[derive(Debug)]
pub struct Settings {
    /// The file these settings came from (`None`: the built-in default); reloads read it again.
    pub source: Option<std::path::PathBuf>,
    pub server: ServerSettings,
    pub redis: Option<RedisSettings>,
    /// Replicas sharing each limit while each decides alone.
    pub replicas: u64,
    /// Bound on keys held in process.
    pub local_max_keys: usize,
    /// Bound on the over-limit cache; 0: no cache.
    pub over_limit_max_keys: usize,
    pub limits: InputLimits,
    pub log: LogSettings,
    /// OpenTelemetry traces; `None`: off.
    pub tracing: Option<TraceSettings>,
    pub tiers: Tiers,
    /// Most entries in the Redis security event stream.
    pub events_max_len: u64,
    pub admin: Option<AdminSettings>,
    /// The HTTP decision API and forward-auth; `None`: not served.
    pub http_api: Option<HttpApiSettings>,
    /// Domains in envoyproxy/ratelimit's format, for `ShouldRateLimit`.
    pub domains: crate::envoy::Domains,
    /// The files and directories the domains were read from, watched for changes.
    pub envoy_paths: Vec<std::path::PathBuf>,
    pub envoy_headers: crate::decision::Headers,
    /// What the settings leave off that an operator may have meant on, for the log at start.
    pub notices: Vec<String>,
}

/// The HTTP API's listener and how forward-auth reads a request (`http_api`).
#[derive(Clone, Debug)]
pub struct HttpApiSettings {
    pub addr: SocketAddr,
    /// Peers whose forwarding headers are believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Forward-auth's status for a denial.
    pub deny_status: u16,
    /// Header name (lower case) to attribute, for forward-auth.
    pub attributes: Vec<(String, crate::request::Attr)>,
    /// Served with the gRPC listener's TLS (`http_api.tls: inherit` with `server.tls`).
    pub tls: bool,
}

/// The admin API's listener, its TLS and its token (never logged).
#[derive(Clone)]
pub struct AdminSettings {
    pub grpc_addr: SocketAddr,
    pub token: String,
    /// The gRPC listener's TLS (`admin.tls: inherit`), or none (`plaintext`, or no `server.tls`).
    pub tls: Option<TlsSettings>,
}

impl std::fmt::Debug for AdminSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSettings")
            .field("grpc_addr", &self.grpc_addr)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug)]
pub struct ServerSettings {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// On SIGTERM: serving on, while health and readiness say otherwise (`server.drain_secs`).
    pub drain: Duration,
    pub shutdown_grace: Duration,
    pub tls: Option<TlsSettings>,
    pub transport: Transport,
    /// Decisions in flight at once before load is shed.
    pub max_in_flight: usize,
    /// The runtime's worker threads (`None`: tokio's choice, one per core unless
    /// `TOKIO_WORKER_THREADS` says otherwise). Read once, when the runtime is built.
    pub worker_threads: Option<usize>,
}

/// Bounds on the gRPC transport. A request message past `max_message_bytes` gets
/// RESOURCE_EXHAUSTED naming `server.max_message_bytes`; the others are HTTP/2 settings and
/// timers the peer is held to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transport {
    pub max_message_bytes: usize,
    pub max_concurrent_streams: u32,
    pub max_header_list_bytes: u32,
    pub keepalive_interval: Option<Duration>,
    pub keepalive_timeout: Duration,
    pub idle_timeout: Option<Duration>,
    pub max_connection_age: Option<Duration>,
}

/// The gRPC listener's certificate, key and (for mutual TLS) client CA: what the files held at
/// load time, and where they are, since they are read again every `reload_interval` while serving
/// (see `certs`).
#[derive(Clone)]
pub struct TlsSettings {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub client_ca_pem: Option<Vec<u8>>,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: Option<PathBuf>,
    pub reload_interval: Duration,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings").field("mutual", &self.client_ca_pem.is_some()).finish_non_exhaustive()
    }
}

/// Redis and the fallback. `Topology`'s `Debug` leaves out URLs, which may hold passwords.
#[derive(Clone, Debug)]
pub struct RedisSettings {
    pub topology: Topology,
    /// ACL credentials for every Redis node (and the master behind Sentinel), and TLS
    /// certificates.
    pub access: crate::store::redis::Access,
    pub timeout: Duration,
    pub probe_interval: Duration,
    /// How often the TLS files in `access` are read for a rotation.
    pub tls_reload_interval: Duration,
}

/// Bounds on what one request may carry; past one, the request is refused with
/// INVALID_ARGUMENT naming the field and the bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InputLimits {
    /// Requests in one `Check` call.
    pub max_batch: usize,
    /// Bytes in one attribute value, tier name, domain, descriptor key or value.
    pub max_value_bytes: usize,
    /// Free-form attributes in one request.
    pub max_extra: usize,
    /// Tier names one `Check` request may list.
    pub max_named_tiers: usize,
    /// Descriptors in one `ShouldRateLimit` request.
    pub max_descriptors: usize,
    /// Entries in one descriptor.
    pub max_entries: usize,
}

impl Default for InputLimits {
    fn default() -> Self {
        InputLimits {
            max_batch: 1000,
            max_value_bytes: 4096,
            max_extra: 32,
            max_named_tiers: 64,
            max_descriptors: 1000,
            max_entries: 64,
        }
    }
}

/// How log lines are written, and which: a tracing filter such as `info` (`RUST_LOG` overrides it).
#[derive(Clone, Debug)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

/// Where decisions' spans go and how many are made (`tracing`).
#[derive(Clone, Debug, PartialEq)]
pub struct TraceSettings {
    /// An `http://` or `https://` OTLP/gRPC endpoint.
    pub otlp_endpoint: String,
    /// In [0, 1]: the share of decisions without a caller's trace context that are traced.
    pub sample_ratio: f64,
    pub service_name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("{origin}: {}", .problems.join("; "))]
    Invalid { origin: String, problems: Vec<String> },
    /// Nothing but whitespace and comments: most likely a file caught mid-write, never meant as a
    /// configuration (one with no tiers says `tiers: []`).
    #[error(
        "{origin}: holds no settings (it is empty or only comments); a configuration without tiers says `tiers: []`"
    )]
    Empty { origin: String },
}

impl ConfigError {
    /// One line per problem, for `check-config` and start-up.
    pub fn lines(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid { origin, problems } => {
                problems.iter().map(|p| format!("{origin}: {p}")).collect()
            }
            other => vec![other.to_string()],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{changed_sections, restart_sections};

    /// A reload names the sections it leaves for the next start, and only those.
    #[test]
    fn the_sections_a_reload_leaves_waiting() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("sluice.yaml");
        let write = |text: &str| std::fs::write(&path, text).expect("write");
        write(
            "redis: {url: \"redis://a:6379\"}\nlimits: {max_batch: 10}\ntiers: [{name: a, key: [ip], limit: 1, window: 1s}]\n",
        );
        let started = restart_sections(&path).expect("reads");
        write(
            "redis: {url: \"redis://b:6379\"}\nlimits: {max_batch: 10}\ntiers: [{name: a, key: [ip], limit: 2, window: 1s}]\n",
        );
        assert_eq!(changed_sections(&started, &restart_sections(&path).expect("reads")), ["redis"]);
        write("limits: {max_batch: 10}\nlog: {level: warn}\ntiers: []\nenvoy: {paths: []}\n");
        assert_eq!(changed_sections(&started, &restart_sections(&path).expect("reads")), ["log", "redis"]);
        write("redis: {url: \"redis://a:6379\"}\nlimits: {max_batch: 10}\ntiers: []\n");
        assert!(changed_sections(&started, &restart_sections(&path).expect("reads")).is_empty());
    }
}
