//! The configuration file as operators write it. These `///` docs are the reference; README.md
//! repeats them with an example. Unknown keys are errors, so a typo never silently does nothing.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::de::Unexpected;
use serde::{Deserialize, Deserializer};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    #[serde(default)]
    pub server: Server,
    /// Where counts live. Absent: the in-process store (one replica's counts, nothing shared).
    #[serde(default)]
    pub redis: Option<Redis>,
    /// What replicas do on their own while Redis is unavailable.
    #[serde(default)]
    pub fallback: Fallback,
    /// Bounds of the in-process store (the primary one without Redis, and the fallback).
    #[serde(default)]
    pub local: Local,
    /// What makes a request look hostile, for tiers with `adaptive`.
    #[serde(default)]
    pub threat: Threat,
    /// The admin API; absent, it is not served.
    #[serde(default)]
    pub admin: Option<Admin>,
    /// `envoy.service.ratelimit.v3.RateLimitService` and its configuration files.
    #[serde(default)]
    pub envoy: Envoy,
    /// The HTTP decision API and forward-auth for gateways; absent, they are not served.
    #[serde(default)]
    pub http_api: Option<HttpApi>,
    /// Size limits on every request, so hostile input costs bounded memory.
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub log: Log,
    /// OpenTelemetry traces of decisions, exported over OTLP/gRPC; absent (the default), none are
    /// made and nothing is exported.
    #[serde(default)]
    pub tracing: Option<Tracing>,
    /// Checked in order; a request is checked against every tier that matches it. Required:
    /// a configuration without tiers says `tiers: []`, so that a file emptied by accident (a
    /// truncated write, a half-updated ConfigMap) is refused instead of limiting nothing.
    #[serde(default)]
    pub tiers: Option<Vec<Tier>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// gRPC listener: `sluice.v1.RateLimiter` and `grpc.health.v1.Health`.
    pub grpc_addr: String,
    /// HTTP listener: `/metrics`, `/healthz`, `/readyz`.
    pub http_addr: String,
    /// On SIGTERM, how long to keep serving once gRPC health says NOT_SERVING and `/readyz` 503, so
    /// that load balancers and gateways move away before the listeners close. SIGINT (Ctrl-C)
    /// skips it.
    #[serde(deserialize_with = "whole")]
    pub drain_secs: u64,
    /// Then, how long calls in flight may take to finish.
    #[serde(deserialize_with = "whole")]
    pub shutdown_grace_secs: u64,
    /// TLS on the gRPC listener; absent, plaintext.
    pub tls: Option<Tls>,
    /// Largest gRPC request message, in bytes.
    #[serde(deserialize_with = "whole")]
    pub max_message_bytes: usize,
    /// Most concurrent streams (calls) on one HTTP/2 connection.
    #[serde(deserialize_with = "whole")]
    pub max_concurrent_streams: u32,
    /// Largest block of request headers (metadata), in bytes.
    #[serde(deserialize_with = "whole")]
    pub max_header_list_bytes: u32,
    /// How often an HTTP/2 ping checks a connection; 0: never.
    #[serde(deserialize_with = "whole")]
    pub keepalive_interval_secs: u64,
    /// How long a ping may go unanswered before the connection is closed.
    #[serde(deserialize_with = "whole")]
    pub keepalive_timeout_secs: u64,
    /// A connection that sends nothing for this long is closed; 0: never.
    #[serde(deserialize_with = "whole")]
    pub idle_timeout_secs: u64,
    /// Connections older than this are asked to go away (GOAWAY) and reconnect; 0: never.
    #[serde(deserialize_with = "whole")]
    pub max_connection_age_secs: u64,
    /// Calls in flight at once (a `Check` batch is one call); past it, calls are answered at once by
    /// the failure mode.
    #[serde(deserialize_with = "whole")]
    pub max_in_flight: usize,
    /// Worker threads of the runtime; absent, `TOKIO_WORKER_THREADS` or one per core.
    #[serde(deserialize_with = "whole_opt")]
    pub worker_threads: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chain of the server.
    pub cert_file: String,
    /// PEM private key of the server.
    pub key_file: String,
    /// PEM CA certificate(s): when set, clients must present a certificate it signed (mutual TLS).
    #[serde(default)]
    pub client_ca_file: Option<String>,
    /// How often the three files are read for a rotation (as cert-manager renews a mounted
    /// Secret); new files are taken up once they read the same twice in a row.
    #[serde(default = "default_tls_reload_interval_ms", deserialize_with = "whole")]
    pub reload_interval_ms: u64,
}

fn default_tls_reload_interval_ms() -> u64 {
    5000
}

impl Default for Server {
    fn default() -> Self {
        Server {
            grpc_addr: "0.0.0.0:8081".into(),
            http_addr: "0.0.0.0:9090".into(),
            drain_secs: 5,
            shutdown_grace_secs: 10,
            tls: None,
            max_message_bytes: 4 * 1024 * 1024,
            max_concurrent_streams: 256,
            max_header_list_bytes: 16 * 1024,
            keepalive_interval_secs: 30,
            keepalive_timeout_secs: 10,
            idle_timeout_secs: 300,
            max_connection_age_secs: 0,
            max_in_flight: 256,
            worker_threads: None,
        }
    }
}

/// Exactly one of `url`, `cluster` and `sentinel`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redis {
    /// A standalone server: `redis://[user:password@]host:port[/db]`; never logged.
    #[serde(default)]
    pub url: Option<String>,
    /// Redis Cluster: seed node URLs (any few nodes; the rest are discovered); a list, or one
    /// comma-separated string (as from the environment).
    #[serde(default)]
    pub cluster: Option<UrlList>,
    /// Redis Sentinel: the sentinels and the name of the master they watch.
    #[serde(default)]
    pub sentinel: Option<Sentinel>,
    /// While Redis is unavailable, how often one probe tries it again.
    #[serde(default = "default_probe_interval_ms", deserialize_with = "whole")]
    pub probe_interval_ms: u64,
    /// ACL user (Redis 6+); with a password, it overrides any user in the URLs.
    #[serde(default)]
    pub username: Option<String>,
    /// The password, best set from the environment (`SLUICE__REDIS__PASSWORD`); never logged.
    #[serde(default)]
    pub password: Option<String>,
    /// A file holding the password (e.g. a mounted Secret); trailing newlines are ignored.
    #[serde(default)]
    pub password_file: Option<String>,
    /// Deadline of one decision call to Redis; past it the request is decided in process.
    #[serde(default = "default_timeout_ms", deserialize_with = "whole")]
    pub timeout_ms: u64,
    /// Certificates for TLS to Redis; TLS itself is on when the URLs say `rediss://`.
    #[serde(default)]
    pub tls: Option<RedisTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisTls {
    /// PEM CA certificate(s) that signed the servers' certificates; absent, the system's roots.
    pub ca_file: Option<String>,
    /// PEM client certificate, for servers that verify clients (`tls-auth-clients yes`).
    pub cert_file: Option<String>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<String>,
    /// How often these files are read for a rotation; new files are taken up (with a new
    /// connection to Redis) once they read the same twice in a row.
    #[serde(deserialize_with = "whole")]
    pub reload_interval_ms: u64,
}

impl Default for RedisTls {
    fn default() -> Self {
        RedisTls {
            ca_file: None,
            cert_file: None,
            key_file: None,
            reload_interval_ms: default_tls_reload_interval_ms(),
        }
    }
}

fn default_timeout_ms() -> u64 {
    50
}
fn default_probe_interval_ms() -> u64 {
    250
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Envoy {
    /// Files, or directories of `.yaml`/`.yml` files, in envoyproxy/ratelimit's format: one
    /// domain each.
    pub paths: Vec<String>,
    /// Headers for the gateway: `draft` (default), `x_ratelimit`, `ratelimit` (the reference's
    /// `RateLimit-Limit`, `-Remaining` and `-Reset`) or `none` (the reference's default).
    pub headers: Choice<Headers>,
    /// How descriptors count unless their `sluice:` options say otherwise: `fixed_window`
    /// (default), the reference's own counting, or `sliding_window`.
    pub algorithm: Choice<Algorithm>,
    /// Count the hits of denied requests on every descriptor, as the reference does by default.
    pub count_denied: bool,
    /// Every descriptor in quota mode, as the reference's `QUOTA_MODE`: a request is denied only
    /// when a descriptor outside quota mode is over, or every quota-mode one is.
    pub quota_mode: bool,
    /// Never deny, as the reference's `SHADOW_MODE`: an answer that would be OVER_LIMIT is OK
    /// (the statuses and headers keep saying what was over), and
    /// `sluice_envoy_shadow_total` counts it.
    pub shadow_mode: bool,
    /// Answer with dynamic metadata, as the reference's `RESPONSE_DYNAMIC_METADATA`: the domain,
    /// the request's descriptors and hits, and the merged `metadata` of the descriptors that passed.
    pub response_metadata: bool,
    /// Descriptor entry key -> request attribute, for the adaptive threat score, e.g.
    /// `{remote_address: ip, user_agent: user_agent, path: endpoint}`.
    pub attributes: std::collections::BTreeMap<String, String>,
}

impl Default for Envoy {
    fn default() -> Self {
        Envoy {
            paths: Vec::new(),
            headers: Choice::default(),
            // The reference's counting, so that its files give its answers. A sliding window
            // that counts denied hits keeps a client that stays over its limit denied for as
            // long as it does, where the reference admits the limit again every window.
            algorithm: Choice(Ok(Algorithm::FixedWindow)),
            count_denied: true,
            quota_mode: false,
            shadow_mode: false,
            response_metadata: false,
            attributes: Default::default(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Its own gRPC listener, e.g. 127.0.0.1:8082. Without it the admin API is off, even when a
    /// token is given (say, `SLUICE__ADMIN__TOKEN` exported for `sluice admin`).
    #[serde(default)]
    pub grpc_addr: Option<String>,
    /// Callers present `authorization: Bearer <token>`; at least 16 characters. Set it from the
    /// environment (`SLUICE__ADMIN__TOKEN`) rather than the file; it is never logged.
    pub token: String,
    /// `inherit` (default): the admin listener uses `server.tls`, mutual TLS included, so the
    /// token never crosses the network in the clear when the gRPC listener is protected;
    /// plaintext when `server.tls` is absent. `plaintext`: no TLS on the admin listener even with
    /// `server.tls` (for a loopback address behind a proxy that terminates TLS).
    #[serde(default)]
    pub tls: Choice<AdminTls>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").field("grpc_addr", &self.grpc_addr).finish_non_exhaustive()
    }
}

/// Decisions over HTTP, on a listener of its own: `POST /v1/check` and `POST /v1/report` (sluice.v1's
/// messages in their canonical JSON form) and `/v1/forward-auth` (any method), which takes the
/// original request from the headers a gateway sends (NGINX `auth_request`, Caddy `forward_auth`,
/// Traefik `forwardAuth`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpApi {
    /// Its listener, e.g. 0.0.0.0:8083. Without it the HTTP API is off.
    #[serde(default)]
    pub addr: Option<String>,
    /// The peers (addresses or CIDRs, e.g. 10.0.0.0/8) whose `X-Forwarded-For` and `X-Real-IP` are
    /// believed: the client is the right-most address of `X-Forwarded-For` that is not one of
    /// them. From any other peer, the peer's own address is the client. Empty (default): no header
    /// is believed.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Forward-auth's status for a denied request: 429 (default), or 403 for NGINX, whose
    /// `auth_request` passes on only 401 and 403 (its example maps 403 back to 429).
    #[serde(default = "default_deny_status", deserialize_with = "whole")]
    pub deny_status: u16,
    /// Request headers whose values become attributes for forward-auth, by header name: e.g.
    /// `{X-User: user, X-Client-Tier: client_tier, X-Login-Name: username}` (a name that is not a
    /// built-in attribute is a free-form one). The gateway must set or remove these headers, or a
    /// client could choose them.
    #[serde(default)]
    pub attributes: std::collections::BTreeMap<String, String>,
    /// `inherit` (default): the listener has `server.tls`, mutual TLS and rotation included;
    /// plaintext when `server.tls` is absent. `plaintext`: no TLS even with `server.tls` (a
    /// gateway on the same host or network calling over loopback).
    #[serde(default)]
    pub tls: Choice<AdminTls>,
}

fn default_deny_status() -> u16 {
    429
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sentinel {
    pub master_name: String,
    /// Sentinel URLs, e.g. `redis://10.0.0.7:26379`; a list, or one comma-separated string.
    pub nodes: UrlList,
}

/// A list of URLs, or one comma-separated string of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum UrlList {
    List(Vec<String>),
    Joined(String),
}

impl UrlList {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            UrlList::List(urls) => urls,
            UrlList::Joined(s) => {
                s.split(',').map(str::trim).filter(|u| !u.is_empty()).map(String::from).collect()
            }
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Fallback {
    /// Default failure mode of every tier: `local` (default), `allow` or `deny`.
    pub mode: Choice<FailureMode>,
    /// Replicas sharing each limit while each decides alone: a tier's limit is divided by it.
    #[serde(deserialize_with = "whole")]
    pub replicas: u64,
}

impl Default for Fallback {
    fn default() -> Self {
        Fallback { mode: Choice::default(), replicas: 1 }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Local {
    /// Most keys held in process; past it the idlest are evicted.
    #[serde(deserialize_with = "whole")]
    pub max_keys: usize,
    /// Most keys in the over-limit cache (denied keys answered without the store); 0: no cache.
    #[serde(deserialize_with = "whole")]
    pub over_limit_max_keys: usize,
}

impl Default for Local {
    fn default() -> Self {
        Local { max_keys: 1_000_000, over_limit_max_keys: 100_000 }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Most requests in one `Check` batch.
    #[serde(deserialize_with = "whole")]
    pub max_batch: usize,
    /// Longest attribute value, in bytes.
    #[serde(deserialize_with = "whole")]
    pub max_value_bytes: usize,
    /// Most free-form attributes in one request.
    #[serde(deserialize_with = "whole")]
    pub max_extra: usize,
    /// Most tier names one `Check` request may list.
    #[serde(deserialize_with = "whole")]
    pub max_named_tiers: usize,
    /// Most descriptors in one `ShouldRateLimit` request.
    #[serde(deserialize_with = "whole")]
    pub max_descriptors: usize,
    /// Most entries in one descriptor.
    #[serde(deserialize_with = "whole")]
    pub max_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        let d = crate::config::InputLimits::default();
        Limits {
            max_batch: d.max_batch,
            max_value_bytes: d.max_value_bytes,
            max_extra: d.max_extra,
            max_named_tiers: d.max_named_tiers,
            max_descriptors: d.max_descriptors,
            max_entries: d.max_entries,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// `text` (default) or `json`.
    pub format: Choice<LogFormat>,
    /// A tracing filter such as `info` or `sluice=debug`; `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for Log {
    fn default() -> Self {
        Log { format: Choice::default(), level: "info".into() }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tracing {
    /// The collector's OTLP/gRPC endpoint, `http://host:4317` or `https://host:4317` (the
    /// system's CA roots). Spans go in batches from a thread of their own; a collector that is
    /// down costs dropped spans, never a decision.
    pub otlp_endpoint: String,
    /// The share of decisions traced that arrive without a caller's trace context, from 0 to 1.
    /// A caller's `traceparent` decides for itself: sampled, Sluice's spans join its trace;
    /// unsampled, Sluice makes none.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    /// `service.name` of the spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
}

fn default_sample_ratio() -> f64 {
    0.01
}

fn default_service_name() -> String {
    "sluice".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    /// Unique; letters, digits, `_` and `-`. Used in keys, headers and metric labels.
    pub name: String,
    /// Attribute name -> condition; all must hold. Empty: matches every request.
    #[serde(default, rename = "match")]
    pub matches: BTreeMap<String, Condition>,
    /// Attributes whose values identify a counter, e.g. `[ip]` or `[ip, username]`. A request
    /// missing any of them is not counted by this tier. Empty: one counter for all.
    #[serde(default)]
    pub key: Vec<String>,
    /// `sliding_window` (default), `sliding_log` or `fixed_window`.
    #[serde(default)]
    pub algorithm: Option<Choice<Algorithm>>,
    /// Units allowed per window.
    #[serde(default, deserialize_with = "whole_opt")]
    pub limit: Option<u64>,
    /// Window length: a number and a unit, `ms`, `s`, `m`, `h` or `d` (e.g. `15m`).
    #[serde(default)]
    pub window: Option<String>,
    /// Units one request consumes in this tier, multiplied by the request's own cost. Default 1.
    #[serde(default, deserialize_with = "whole_opt")]
    pub cost: Option<u64>,
    /// A matching request is allowed without checking or counting any tier.
    #[serde(default)]
    pub exempt: bool,
    /// This tier never limits and counts nothing; other tiers still apply.
    #[serde(default)]
    pub unlimited: bool,
    /// Count and report, but never deny: for trying a limit on live traffic.
    #[serde(default)]
    pub shadow: bool,
    /// While Redis is unavailable: `local`, `allow` or `deny`; default `fallback.mode`.
    #[serde(default)]
    pub on_redis_failure: Option<Choice<FailureMode>>,
    /// `true` (the defaults) or settings: the limit shrinks as the threat score grows.
    #[serde(default)]
    pub adaptive: Option<AdaptiveSpec>,
    /// Block a key after repeated violations (denials by this tier, or reported failures).
    #[serde(default)]
    pub penalty: Option<PenaltySpec>,
    /// Let a key's typical volume raise its limit (sliding_window tiers only).
    #[serde(default)]
    pub baseline: Option<BaselineSpec>,
    /// What consumes the quota: `requests` (default), or `failures`, counted only when `Report`
    /// says a request failed (e.g. failed logins, not successful ones).
    #[serde(default)]
    pub count: Option<Choice<Count>>,
    /// Count every request, denied or not, whatever the other tiers say (as envoyproxy/ratelimit
    /// does): attacker pressure then extends its own wait. sliding_window tiers only.
    #[serde(default)]
    pub count_denied: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PenaltySpec {
    /// Violations within `period` that trigger a block.
    #[serde(deserialize_with = "whole")]
    pub violations: u64,
    pub period: String,
    /// The first block's length; each further block is `factor` times longer, up to `max`.
    pub base: String,
    #[serde(default = "default_factor", deserialize_with = "whole")]
    pub factor: u64,
    pub max: String,
}

fn default_factor() -> u64 {
    2
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineSpec {
    /// Percent of the typical volume per window a key may use (default 150).
    #[serde(default = "default_sensitivity", deserialize_with = "whole")]
    pub sensitivity_percent: u64,
    /// The highest the limit may grow, in percent of the base limit (default 300).
    #[serde(default = "default_max_percent", deserialize_with = "whole")]
    pub max_percent: u64,
}

fn default_sensitivity() -> u64 {
    150
}
fn default_max_percent() -> u64 {
    300
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum AdaptiveSpec {
    Enabled(bool),
    Settings(AdaptiveSettings),
}

/// Every field is optional; absent ones take the defaults in the README.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdaptiveSettings {
    pub weights: FactorWeights,
    /// A user agent shorter than this counts as missing (default 10).
    #[serde(deserialize_with = "whole_opt")]
    pub min_user_agent_len: Option<usize>,
    /// Attempts above this multiple of the limit in a window make a burst (default 2).
    #[serde(deserialize_with = "whole_opt")]
    pub burst_multiple: Option<u64>,
    /// Reported failures in a window that set the failed-logins factor (default 3).
    #[serde(deserialize_with = "whole_opt")]
    pub failed_logins: Option<u64>,
    /// Percent of the limit a score of 100 takes away (default 50).
    #[serde(deserialize_with = "whole_opt")]
    pub reduction_percent: Option<u8>,
    /// A denial scoring at least this writes a security event (default 50).
    #[serde(deserialize_with = "whole_opt")]
    pub event_threshold: Option<u8>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FactorWeights {
    #[serde(deserialize_with = "whole_opt")]
    pub user_agent: Option<u8>,
    #[serde(deserialize_with = "whole_opt")]
    pub parameters: Option<u8>,
    #[serde(deserialize_with = "whole_opt")]
    pub deny_range: Option<u8>,
    #[serde(deserialize_with = "whole_opt")]
    pub reputation: Option<u8>,
    #[serde(deserialize_with = "whole_opt")]
    pub burst: Option<u8>,
    #[serde(deserialize_with = "whole_opt")]
    pub failed_logins: Option<u8>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Threat {
    /// Regular expressions (case-insensitive) for suspicious parameters, matched against the
    /// endpoint and free-form attributes. Absent: path traversal, script and SQL injection.
    pub patterns: Option<Vec<String>>,
    /// CIDR ranges whose IPs set the `deny_range` factor.
    pub deny_ranges: Vec<String>,
    /// Most entries kept in the Redis security event stream (default 10000).
    #[serde(deserialize_with = "whole_opt")]
    pub events_max_len: Option<u64>,
}

/// `value` (equal), `[a, b]` (equal to one of them) or `{prefix: /api/}` / `{prefix: [/a, /b]}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Condition {
    Equals(String),
    AnyOf(Vec<String>),
    Prefix(PrefixCondition),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefixCondition {
    pub prefix: OneOrMany,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// How a tier counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Two fixed windows, the previous weighted by its overlap: constant memory per key.
    #[default]
    SlidingWindow,
    /// One timestamp per unit: exact, for small limits such as logins.
    SlidingLog,
    /// One count per window aligned to the epoch: envoyproxy/ratelimit's own counting.
    FixedWindow,
}

impl From<Algorithm> for crate::algorithm::Algorithm {
    fn from(a: Algorithm) -> Self {
        match a {
            Algorithm::SlidingWindow => crate::algorithm::Algorithm::SlidingWindow,
            Algorithm::SlidingLog => crate::algorithm::Algorithm::SlidingLog,
            Algorithm::FixedWindow => crate::algorithm::Algorithm::FixedWindow,
        }
    }
}

/// What a tier gets while Redis is unavailable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Counted in process against this replica's fair share of the limit.
    #[default]
    Local,
    /// Fail open: allowed, not counted.
    Allow,
    /// Fail closed: denied.
    Deny,
}

impl From<FailureMode> for crate::check::FailureMode {
    fn from(mode: FailureMode) -> Self {
        match mode {
            FailureMode::Local => crate::check::FailureMode::Local,
            FailureMode::Allow => crate::check::FailureMode::Allow,
            FailureMode::Deny => crate::check::FailureMode::Deny,
        }
    }
}

/// What consumes a tier's quota.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Count {
    /// Every admitted request.
    #[default]
    Requests,
    /// Only the failures `Report` tells of (e.g. failed logins).
    Failures,
}

/// The rate limit headers sent back to the gateway.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Headers {
    /// The IETF draft's `RateLimit-Policy` and `RateLimit`, and `Retry-After` when over.
    #[default]
    Draft,
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset`.
    #[serde(rename = "x_ratelimit")]
    XRateLimit,
    /// `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`, as envoyproxy/ratelimit
    /// sends them with `LIMIT_RESPONSE_HEADERS_ENABLED`.
    #[serde(rename = "ratelimit")]
    RateLimit,
    None,
}

impl From<Headers> for crate::decision::Headers {
    fn from(h: Headers) -> Self {
        match h {
            Headers::Draft => crate::decision::Headers::Draft,
            Headers::XRateLimit => crate::decision::Headers::XRateLimit,
            Headers::RateLimit => crate::decision::Headers::RateLimit,
            Headers::None => crate::decision::Headers::None,
        }
    }
}

/// TLS on the admin listener (and on the HTTP API's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminTls {
    /// The gRPC listener's `server.tls`, mutual TLS included; plaintext without it.
    #[default]
    Inherit,
    /// None, even with `server.tls`.
    Plaintext,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// For people.
    #[default]
    Text,
    /// One JSON object a line, for collectors.
    Json,
}

/// One name out of the variants of `T` (a serde enum of unit variants). A name that is none of
/// them is kept as written rather than failing the whole file, so that validation reports it
/// together with the file's other problems.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice<T>(Result<T, NotOneOf>);

/// A name that is none of a choice's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotOneOf {
    written: String,
    expected: &'static [&'static str],
}

impl fmt::Display for NotOneOf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} is not one of {}", self.written, self.expected.join(", "))
    }
}

impl<T> Choice<T> {
    pub fn known(self) -> Result<T, NotOneOf> {
        self.0
    }

    /// The choice, or `None` having added `<key>: "<written>" is not one of <names>` to `problems`.
    pub fn or_report(self, key: &str, problems: &mut Vec<String>) -> Option<T> {
        self.0.map_err(|e| problems.push(format!("{key}: {e}"))).ok()
    }
}

impl<T: Default> Default for Choice<T> {
    fn default() -> Self {
        Choice(Ok(T::default()))
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Choice<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let written = String::deserialize(deserializer)?;
        let name = serde::de::value::StrDeserializer::<Expected>::new(&written);
        Ok(Choice(T::deserialize(name).map_err(|Expected(expected)| NotOneOf { written, expected })))
    }
}

/// How a `Choice` learns its variants' names: serde hands them to `unknown_variant`.
#[derive(Debug)]
struct Expected(&'static [&'static str]);

impl serde::de::Error for Expected {
    fn custom<M: fmt::Display>(_: M) -> Self {
        Expected(&[])
    }

    fn unknown_variant(_: &str, expected: &'static [&'static str]) -> Self {
        Expected(expected)
    }
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not one of {}", self.0.join(", "))
    }
}

impl std::error::Error for Expected {}

/// A count as written: a whole number, or its digits in a string (as the environment gives it).
/// The `config` crate would round `2.5` to 3 and read `true` as 1, so that a slip in a limit
/// would pass unseen; here it is a type error that names the key.
struct Whole(u64);

impl<'de> Deserialize<'de> for Whole {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Whole;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Whole, E> {
                Ok(Whole(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Whole, E> {
                u64::try_from(v).map(Whole).map_err(|_| E::invalid_type(Unexpected::Signed(v), &self))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Whole, E> {
                let digits = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
                match v.parse() {
                    Ok(n) if digits => Ok(Whole(n)),
                    _ => Err(E::invalid_type(Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// A count field (`deserialize_with`): see `Whole`.
fn whole<'de, D: Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<T, D::Error> {
    Whole::deserialize(d)?.fit()
}

/// An optional count field (`deserialize_with`), as `whole`.
fn whole_opt<'de, D: Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<Option<T>, D::Error> {
    Option::<Whole>::deserialize(d)?.map(Whole::fit).transpose()
}

impl Whole {
    /// The count as the field's type, which it must fit (a `u8` weight is at most 255).
    fn fit<T: TryFrom<u64>, E: serde::de::Error>(self) -> Result<T, E> {
        T::try_from(self.0)
            .map_err(|_| E::invalid_value(Unexpected::Unsigned(self.0), &"a smaller whole number"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choice<T: DeserializeOwned>(written: &str) -> Choice<T> {
        serde_json::from_value(serde_json::Value::String(written.into())).expect("any string is a choice")
    }

    #[test]
    fn a_choice_is_a_variant_or_what_was_written() {
        assert_eq!(choice::<Headers>("x_ratelimit").known(), Ok(Headers::XRateLimit));
        assert_eq!(choice::<Count>("failures").known(), Ok(Count::Failures));
        assert_eq!(Choice::<LogFormat>::default().known(), Ok(LogFormat::Text));
        let mut problems = Vec::new();
        assert_eq!(choice::<FailureMode>("Deny").or_report("fallback.mode", &mut problems), None);
        assert_eq!(problems, ["fallback.mode: \"Deny\" is not one of local, allow, deny"]);
    }
}
