//! Loading configuration: a YAML file (or the built-in default), overridden key by key from
//! `SLUICE__...` environment variables, then turned into typed settings once, so the hot path never
//! re-checks it. Every problem of a file is reported together, each naming its key.

pub mod schema;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::algorithm::adaptive::{Adaptive, Weights};
use crate::algorithm::baseline::Baseline;
use crate::algorithm::penalty::Penalty;
use crate::algorithm::{Algorithm, MAX_LIMIT_TIMES_WINDOW, MAX_LOG_LIMIT};
use crate::check::{Counts, FailureMode};
use crate::request::Attr;
use crate::store::redis::Topology;
use crate::threat::{Cidr, DEFAULT_PATTERNS, Signals};
use crate::tier::{Condition, Limit, Rule, Tier, Tiers};

/// The configuration used when no file is given: examples/sluice.yaml, which uses no Redis.
pub const DEFAULT_YAML: &str = include_str!("../../examples/sluice.yaml");

const MAX_NAME_LEN: usize = 64;

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
    pub tiers: Tiers,
    /// Most entries in the Redis security event stream.
    pub events_max_len: u64,
    pub admin: Option<AdminSettings>,
    /// Domains in envoyproxy/ratelimit's format, for `ShouldRateLimit`.
    pub domains: crate::envoy::Domains,
    /// The files and directories the domains were read from, watched for changes.
    pub envoy_paths: Vec<std::path::PathBuf>,
    pub envoy_headers: crate::decision::Headers,
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
    pub shutdown_grace: Duration,
    pub tls: Option<TlsSettings>,
    pub transport: Transport,
    /// Decisions in flight at once before load is shed.
    pub max_in_flight: usize,
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

/// The gRPC listener's certificate, key and (for mutual TLS) client CA, read at load time.
#[derive(Clone)]
pub struct TlsSettings {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub client_ca_pem: Option<Vec<u8>>,
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

#[derive(Clone, Debug)]
pub struct LogSettings {
    pub json: bool,
    pub level: String,
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

/// Reads `path` (or the built-in default) with overrides from the process environment.
pub fn load(path: Option<&Path>) -> Result<Settings, ConfigError> {
    load_with_env(path, None)
}

/// As `load`, with the environment given as a map (tests use this instead of `set_var`).
pub fn load_with_env(
    path: Option<&Path>,
    env: Option<HashMap<String, String>>,
) -> Result<Settings, ConfigError> {
    match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
            let mut settings = parse(&text, &path.display().to_string(), env)?;
            settings.source = Some(path.to_path_buf());
            Ok(settings)
        }
        None => parse(DEFAULT_YAML, "built-in default", env),
    }
}

/// Parses YAML text; `origin` names it in errors.
pub fn parse(
    text: &str,
    origin: &str,
    env: Option<HashMap<String, String>>,
) -> Result<Settings, ConfigError> {
    let parse_error = |message: String| ConfigError::Parse { origin: origin.to_owned(), message };
    let file = config::File::from_str(text, config::FileFormat::Yaml);
    // Looked at alone, before the environment is layered on: the environment may set keys (the
    // Helm chart always sets one) even when the file is empty.
    let written = config::Source::collect(&file).map_err(|e| parse_error(e.to_string()))?;
    if written.is_empty() {
        return Err(ConfigError::Empty { origin: origin.to_owned() });
    }
    let layered = config::Config::builder()
        .add_source(file)
        .add_source(config::Environment::with_prefix("SLUICE").separator("__").source(env))
        .build()
        .map_err(|e| parse_error(e.to_string()))?;
    let file: schema::File = serde_path_to_error::deserialize(layered).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." { parse_error(inner) } else { parse_error(format!("{path}: {inner}")) }
    })?;
    validate(file).map_err(|problems| ConfigError::Invalid { origin: origin.to_owned(), problems })
}

fn validate(file: schema::File) -> Result<Settings, Vec<String>> {
    let mut problems = Vec::new();
    let mut addr = |key: &str, value: &str| {
        value
            .parse::<SocketAddr>()
            .map_err(|_| problems.push(format!("{key}: {value:?} is not an address like 0.0.0.0:8081")))
            .ok()
    };
    let grpc_addr = addr("server.grpc_addr", &file.server.grpc_addr);
    let http_addr = addr("server.http_addr", &file.server.http_addr);
    let tls = file.server.tls.as_ref().and_then(|t| {
        let mut read = |key: &str, path: &str| {
            std::fs::read(path)
                .map_err(|e| problems.push(format!("server.tls.{key}: cannot read {path:?}: {e}")))
                .ok()
        };
        let cert_pem = read("cert_file", &t.cert_file);
        let key_pem = read("key_file", &t.key_file);
        let client_ca_pem = match &t.client_ca_file {
            Some(path) => Some(read("client_ca_file", path)?),
            None => None,
        };
        Some(TlsSettings { cert_pem: cert_pem?, key_pem: key_pem?, client_ca_pem })
    });

    let admin = file.admin.and_then(|a| {
        let grpc_addr = a
            .grpc_addr
            .parse::<SocketAddr>()
            .map_err(|_| {
                problems
                    .push(format!("admin.grpc_addr: {:?} is not an address like 127.0.0.1:8082", a.grpc_addr))
            })
            .ok();
        let tls = match a.tls.as_str() {
            "inherit" => Some(tls.clone()),
            "plaintext" => Some(None),
            other => {
                problems.push(format!("admin.tls: {other:?} is not one of inherit, plaintext"));
                None
            }
        };
        if a.token.chars().count() < 16 {
            problems.push("admin.token: must be at least 16 characters".into());
            return None;
        }
        Some(AdminSettings { grpc_addr: grpc_addr?, token: a.token, tls: tls? })
    });
    let mut domains = domains(&file.envoy, &mut problems);
    let envoy_headers = match file.envoy.headers.as_str() {
        "draft" => crate::decision::Headers::Draft,
        "x_ratelimit" => crate::decision::Headers::XRateLimit,
        "none" => crate::decision::Headers::None,
        other => {
            problems.push(format!("envoy.headers: {other:?} is not one of draft, x_ratelimit, none"));
            crate::decision::Headers::Draft
        }
    };
    let redis = file.redis.and_then(|r| redis(r, &mut problems));
    let default_failure = failure_mode("fallback.mode", &file.fallback.mode, &mut problems);
    domains.default_failure = default_failure;
    if file.fallback.replicas == 0 {
        problems.push("fallback.replicas: must be at least 1".into());
    }
    if file.local.max_keys == 0 {
        problems.push("local.max_keys: must be at least 1".into());
    }

    for (key, value) in [
        ("server.max_message_bytes", file.server.max_message_bytes),
        ("server.max_concurrent_streams", file.server.max_concurrent_streams as usize),
        ("server.max_header_list_bytes", file.server.max_header_list_bytes as usize),
        (
            "server.keepalive_timeout_secs",
            usize::try_from(file.server.keepalive_timeout_secs).unwrap_or(usize::MAX),
        ),
        ("server.max_in_flight", file.server.max_in_flight),
        ("limits.max_batch", file.limits.max_batch),
        ("limits.max_value_bytes", file.limits.max_value_bytes),
        ("limits.max_named_tiers", file.limits.max_named_tiers),
        ("limits.max_descriptors", file.limits.max_descriptors),
        ("limits.max_entries", file.limits.max_entries),
    ] {
        if value == 0 {
            problems.push(format!("{key}: must be at least 1"));
        }
    }
    let json = match file.log.format.as_str() {
        "text" => false,
        "json" => true,
        other => {
            problems.push(format!("log.format: {other:?} is not one of text, json"));
            false
        }
    };

    let signals = signals(&file.threat, &mut problems);
    let mut names = HashSet::new();
    if file.tiers.is_none() {
        problems.push("tiers: is required; list the tiers, or write `tiers: []` for none".into());
    }
    let tiers: Vec<Tier> = file
        .tiers
        .into_iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, t)| tier(&format!("tiers[{i}]"), t, default_failure, &mut names, &mut problems))
        .collect();

    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Settings {
        source: None,
        server: ServerSettings {
            grpc_addr: grpc_addr.expect("checked above"),
            http_addr: http_addr.expect("checked above"),
            shutdown_grace: Duration::from_secs(file.server.shutdown_grace_secs),
            tls,
            transport: Transport {
                max_message_bytes: file.server.max_message_bytes,
                max_concurrent_streams: file.server.max_concurrent_streams,
                max_header_list_bytes: file.server.max_header_list_bytes,
                keepalive_interval: secs(file.server.keepalive_interval_secs),
                keepalive_timeout: Duration::from_secs(file.server.keepalive_timeout_secs),
                idle_timeout: secs(file.server.idle_timeout_secs),
                max_connection_age: secs(file.server.max_connection_age_secs),
            },
            max_in_flight: file.server.max_in_flight,
        },
        redis,
        replicas: file.fallback.replicas,
        local_max_keys: file.local.max_keys,
        over_limit_max_keys: file.local.over_limit_max_keys,
        limits: InputLimits {
            max_batch: file.limits.max_batch,
            max_value_bytes: file.limits.max_value_bytes,
            max_extra: file.limits.max_extra,
            max_named_tiers: file.limits.max_named_tiers,
            max_descriptors: file.limits.max_descriptors,
            max_entries: file.limits.max_entries,
        },
        log: LogSettings { json, level: file.log.level },
        tiers: {
            let mut tiers = Tiers::new(tiers);
            tiers.signals = signals;
            tiers
        },
        events_max_len: file.threat.events_max_len.unwrap_or(10_000),
        admin,
        domains,
        envoy_paths: file.envoy.paths.iter().map(std::path::PathBuf::from).collect(),
        envoy_headers,
    })
}

fn tier(
    at: &str,
    mut t: schema::Tier,
    default_failure: FailureMode,
    names: &mut HashSet<String>,
    problems: &mut Vec<String>,
) -> Option<Tier> {
    let before = problems.len();
    let mut problem = |key: &str, reason: String| problems.push(format!("{at}.{key}: {reason}"));

    if t.name.is_empty()
        || t.name.len() > MAX_NAME_LEN
        || !t.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        problem("name", format!("{:?} must be 1 to {MAX_NAME_LEN} letters, digits, _ or -", t.name));
    } else if !names.insert(t.name.clone()) {
        problem("name", format!("{:?} is already the name of another tier", t.name));
    }

    let mut conditions = Vec::new();
    for (attr, cond) in std::mem::take(&mut t.matches) {
        let values = match cond {
            schema::Condition::Equals(v) => Condition::AnyOf(vec![v]),
            schema::Condition::AnyOf(v) => Condition::AnyOf(v),
            schema::Condition::Prefix(p) => Condition::Prefix(p.prefix.into_vec()),
        };
        let (Condition::AnyOf(v) | Condition::Prefix(v)) = &values;
        if v.is_empty() {
            problem(&format!("match.{attr}"), "needs at least one value".into());
        }
        if attr.is_empty() {
            problem("match", "an attribute name is empty".into());
        }
        conditions.push((Attr::parse(&attr), values));
    }
    let mut seen = HashSet::new();
    for (j, name) in t.key.iter().enumerate() {
        if name.is_empty() {
            problem(&format!("key[{j}]"), "an attribute name is empty".into());
        } else if !seen.insert(name) {
            problem(&format!("key[{j}]"), format!("{name:?} is listed twice"));
        }
    }
    let key: Vec<Attr> = t.key.iter().map(|k| Attr::parse(k)).collect();

    let has_limit = t.limit.is_some() || t.window.is_some() || t.algorithm.is_some() || t.cost.is_some();
    let rule = match (t.exempt, t.unlimited) {
        (true, true) => {
            problem("exempt", "a tier is exempt or unlimited, not both".into());
            None
        }
        (true, false) | (false, true) if has_limit => {
            let which = if t.exempt { "exempt" } else { "unlimited" };
            problem(which, "takes no limit, window, algorithm or cost".into());
            None
        }
        (true, false) => Some(Rule::Exempt),
        (false, true) => Some(Rule::Unlimited),
        (false, false) => limit(&t, &mut problem).map(Rule::Limited),
    };
    if t.shadow && !matches!(rule, Some(Rule::Limited(_)) | None) {
        problem("shadow", "only a limited tier can run in shadow mode".into());
    }
    let adaptive = match t.adaptive.take() {
        None | Some(schema::AdaptiveSpec::Enabled(false)) => None,
        Some(schema::AdaptiveSpec::Enabled(true)) => Some(Adaptive::default()),
        Some(schema::AdaptiveSpec::Settings(s)) => adaptive(&format!("{at}.adaptive"), s, problems),
    };
    if adaptive.is_some() {
        match &rule {
            Some(Rule::Limited(l)) if l.limit > MAX_ADAPTIVE_LIMIT => problems.push(format!(
                "{at}.limit: {} is too large for an adaptive tier (at most {MAX_ADAPTIVE_LIMIT})",
                l.limit
            )),
            Some(Rule::Limited(_)) | None => {}
            Some(_) => problems.push(format!("{at}.adaptive: only a limited tier can adapt")),
        }
    }
    let penalty = t.penalty.take().and_then(|p| penalty(&format!("{at}.penalty"), p, problems));
    if penalty.is_some() && (t.shadow || !matches!(rule, Some(Rule::Limited(_)) | None)) {
        problems.push(format!("{at}.penalty: only a limited tier that is not in shadow mode can block"));
    }
    let baseline = t.baseline.take().and_then(|b| {
        let before = problems.len();
        if !(100..=1_000).contains(&b.sensitivity_percent) {
            problems.push(format!("{at}.baseline.sensitivity_percent: must be 100 to 1000"));
        }
        if !(100..=10_000).contains(&b.max_percent) {
            problems.push(format!("{at}.baseline.max_percent: must be 100 to 10000"));
        }
        let sliding_window =
            matches!(&rule, Some(Rule::Limited(l)) if l.algorithm == Algorithm::SlidingWindow);
        if !sliding_window && rule.is_some() {
            problems.push(format!("{at}.baseline: only a sliding_window tier keeps a baseline"));
        }
        (problems.len() == before)
            .then_some(Baseline { sensitivity_percent: b.sensitivity_percent, max_percent: b.max_percent })
    });
    let counts = match t.count.as_deref() {
        None | Some("requests") if t.count_denied => {
            let sliding_window =
                matches!(&rule, Some(Rule::Limited(l)) if l.algorithm == Algorithm::SlidingWindow);
            if !sliding_window && rule.is_some() {
                problems
                    .push(format!("{at}.count_denied: only a sliding_window tier can count denied requests"));
            }
            if t.penalty.is_some() || penalty.is_some() {
                problems
                    .push(format!("{at}.count_denied: a tier that counts denied requests takes no penalty"));
            }
            Counts::Everything
        }
        None | Some("requests") => Counts::Requests,
        Some("failures") if t.count_denied => {
            problems.push(format!(
                "{at}.count_denied: a tier that counts failures only cannot count denied requests"
            ));
            Counts::Failures
        }
        Some("failures") => Counts::Failures,
        Some(other) => {
            problems.push(format!("{at}.count: {other:?} is not one of requests, failures"));
            Counts::Requests
        }
    };
    let on_failure = match &t.on_redis_failure {
        Some(mode) => failure_mode(&format!("{at}.on_redis_failure"), mode, problems),
        None => default_failure,
    };
    if problems.len() > before {
        return None;
    }
    let mut tier = Tier::new(&t.name, conditions, key, rule?);
    tier.shadow = t.shadow;
    tier.on_failure = on_failure;
    tier.adaptive = adaptive;
    tier.penalty = penalty;
    tier.counts = counts;
    tier.baseline = baseline;
    Some(tier)
}

/// The longest block, so that block arithmetic stays exact in Lua's doubles.
const MAX_BLOCK_MS: u64 = 30 * 86_400_000;

pub(crate) fn penalty(at: &str, p: schema::PenaltySpec, problems: &mut Vec<String>) -> Option<Penalty> {
    let before = problems.len();
    let mut duration = |key: &str, text: &str| match parse_duration_ms(text) {
        Ok(ms) if ms > MAX_BLOCK_MS => {
            problems.push(format!("{at}.{key}: {text:?} is longer than 30 days"));
            0
        }
        Ok(ms) => ms,
        Err(reason) => {
            problems.push(format!("{at}.{key}: {reason}"));
            0
        }
    };
    let penalty = Penalty {
        violations: p.violations,
        period_ms: duration("period", &p.period),
        base_ms: duration("base", &p.base),
        factor: p.factor,
        max_ms: duration("max", &p.max),
    };
    if penalty.violations == 0 {
        problems.push(format!("{at}.violations: must be at least 1"));
    }
    if !(1..=100).contains(&penalty.factor) {
        problems.push(format!("{at}.factor: must be 1 to 100"));
    }
    if penalty.max_ms < penalty.base_ms {
        problems.push(format!("{at}.max: must not be shorter than base"));
    }
    (problems.len() == before).then_some(penalty)
}

/// The `.yaml` and `.yml` files of a directory, in name order.
pub fn yaml_files_in(dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut found: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|f| f.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    found.sort();
    Ok(found)
}

/// Loads every file of `envoy.paths` (a directory: its `.yaml` and `.yml` files, in name order).
fn domains(e: &schema::Envoy, problems: &mut Vec<String>) -> crate::envoy::Domains {
    let mut files = Vec::new();
    for (i, path) in e.paths.iter().enumerate() {
        let p = Path::new(path);
        match yaml_files_in(p) {
            Ok(found) => files.extend(found),
            Err(_) if p.is_file() => files.push(p.to_path_buf()),
            Err(e) => problems.push(format!("envoy.paths[{i}]: cannot read {path:?}: {e}")),
        }
    }
    let mut by_name = HashMap::new();
    for file in files {
        let origin = file.display().to_string();
        match std::fs::read_to_string(&file) {
            Err(e) => problems.push(format!("{origin}: cannot read: {e}")),
            Ok(text) => match crate::envoy::domain::parse(&text, &origin) {
                Ok(domain) => {
                    if by_name.contains_key(&domain.name) {
                        problems.push(format!("{origin}: duplicate domain {:?}", domain.name));
                    } else {
                        by_name.insert(domain.name.clone(), domain);
                    }
                }
                Err(file_problems) => problems.extend(file_problems),
            },
        }
    }
    let attributes = e.attributes.iter().map(|(key, attr)| (key.clone(), Attr::parse(attr))).collect();
    crate::envoy::Domains {
        by_name,
        count_denied: e.count_denied,
        attributes,
        default_failure: FailureMode::Local,
    }
}

/// Keeps the adaptive arithmetic exact in Lua's doubles: limit * 10000 < 2^53.
const MAX_ADAPTIVE_LIMIT: u64 = 100_000_000_000;

pub(crate) fn adaptive(
    at: &str,
    s: schema::AdaptiveSettings,
    problems: &mut Vec<String>,
) -> Option<Adaptive> {
    let before = problems.len();
    let d = Adaptive::default();
    let w = s.weights;
    let mut weight = |name: &str, value: Option<u8>, default: u8| {
        let v = value.unwrap_or(default);
        if v > 100 {
            problems.push(format!("{at}.weights.{name}: {v} is above 100"));
        }
        v
    };
    let weights = Weights {
        user_agent: weight("user_agent", w.user_agent, d.weights.user_agent),
        parameters: weight("parameters", w.parameters, d.weights.parameters),
        deny_range: weight("deny_range", w.deny_range, d.weights.deny_range),
        reputation: weight("reputation", w.reputation, d.weights.reputation),
        burst: weight("burst", w.burst, d.weights.burst),
        failed_logins: weight("failed_logins", w.failed_logins, d.weights.failed_logins),
    };
    let adaptive = Adaptive {
        weights,
        min_user_agent_len: s.min_user_agent_len.unwrap_or(d.min_user_agent_len),
        burst_multiple: s.burst_multiple.unwrap_or(d.burst_multiple),
        failed_logins: s.failed_logins.unwrap_or(d.failed_logins),
        reduction_percent: s.reduction_percent.unwrap_or(d.reduction_percent),
        event_threshold: s.event_threshold.unwrap_or(d.event_threshold),
    };
    for (key, value) in
        [("burst_multiple", adaptive.burst_multiple), ("failed_logins", adaptive.failed_logins)]
    {
        if value == 0 {
            problems.push(format!("{at}.{key}: must be at least 1"));
        }
    }
    for (key, value) in
        [("reduction_percent", adaptive.reduction_percent), ("event_threshold", adaptive.event_threshold)]
    {
        if value > 100 {
            problems.push(format!("{at}.{key}: {value} is above 100"));
        }
    }
    (problems.len() == before).then_some(adaptive)
}

fn signals(t: &schema::Threat, problems: &mut Vec<String>) -> Signals {
    let patterns: Vec<String> = match &t.patterns {
        Some(p) => p.clone(),
        None => DEFAULT_PATTERNS.iter().map(|p| (*p).to_owned()).collect(),
    };
    let mut valid = true;
    for (i, p) in patterns.iter().enumerate() {
        if let Err(e) = regex::RegexBuilder::new(p).size_limit(1 << 20).build() {
            problems
                .push(format!("threat.patterns[{i}]: {}", e.to_string().lines().last().unwrap_or("invalid")));
            valid = false;
        }
    }
    let patterns = (valid && !patterns.is_empty())
        .then(|| {
            regex::RegexSetBuilder::new(&patterns).case_insensitive(true).size_limit(1 << 22).build().ok()
        })
        .flatten();
    let deny_ranges = t
        .deny_ranges
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            Cidr::parse(r).map_err(|e| problems.push(format!("threat.deny_ranges[{i}]: {e}"))).ok()
        })
        .collect();
    Signals { patterns, deny_ranges }
}

fn limit(t: &schema::Tier, problem: &mut impl FnMut(&str, String)) -> Option<Limit> {
    let algorithm = match t.algorithm.as_deref().unwrap_or("sliding_window") {
        "sliding_window" => Some(Algorithm::SlidingWindow),
        "sliding_log" => Some(Algorithm::SlidingLog),
        other => {
            problem("algorithm", format!("{other:?} is not one of sliding_window, sliding_log"));
            None
        }
    };
    let limit = match t.limit {
        None => {
            problem("limit", "is required (or set exempt or unlimited)".into());
            None
        }
        Some(0) => {
            problem("limit", "must be at least 1".into());
            None
        }
        Some(n) => Some(n),
    };
    let window_ms = match t.window.as_deref() {
        None => {
            problem("window", "is required, e.g. 1m".into());
            None
        }
        Some(w) => match parse_duration_ms(w) {
            Ok(ms) => Some(ms),
            Err(reason) => {
                problem("window", reason);
                None
            }
        },
    };
    let cost = t.cost.unwrap_or(1);
    if cost == 0 {
        problem("cost", "must be at least 1".into());
    }
    let (algorithm, limit, window_ms) = (algorithm?, limit?, window_ms?);
    if u128::from(limit) * u128::from(window_ms) > MAX_LIMIT_TIMES_WINDOW {
        problem(
            "limit",
            format!("{limit} per {window_ms} ms is too large (limit x window in ms must stay under 2^50)"),
        );
        return None;
    }
    if algorithm == Algorithm::SlidingLog && limit > MAX_LOG_LIMIT {
        problem(
            "limit",
            format!("{limit} is too large for sliding_log (at most {MAX_LOG_LIMIT}; use sliding_window)"),
        );
        return None;
    }
    if cost > limit {
        problem("cost", format!("{cost} exceeds the limit {limit}, so no request could pass"));
        return None;
    }
    (cost > 0).then_some(Limit { algorithm, limit, window_ms, cost })
}

fn redis(r: schema::Redis, problems: &mut Vec<String>) -> Option<RedisSettings> {
    let before = problems.len();
    let url_problem = |problems: &mut Vec<String>, key: String, url: &str| {
        let schemes = ["redis://", "rediss://", "redis+unix://", "unix://"];
        if !schemes.iter().any(|s| url.starts_with(s)) {
            // The value is not echoed: it may hold a password.
            problems
                .push(format!("{key}: must start with redis://, rediss:// (TLS), redis+unix:// or unix://"));
        }
    };
    let topology = match (r.url, r.cluster, r.sentinel) {
        (Some(url), None, None) => {
            url_problem(problems, "redis.url".into(), &url);
            Topology::Standalone { url }
        }
        (None, Some(nodes), None) => {
            let nodes = nodes.into_vec();
            if nodes.is_empty() {
                problems.push("redis.cluster: needs at least one seed node URL".into());
            }
            for (i, url) in nodes.iter().enumerate() {
                url_problem(problems, format!("redis.cluster[{i}]"), url);
            }
            Topology::Cluster { nodes }
        }
        (None, None, Some(sentinel)) => {
            let (master_name, nodes) = (sentinel.master_name, sentinel.nodes.into_vec());
            if master_name.is_empty() {
                problems.push("redis.sentinel.master_name: must not be empty".into());
            }
            if nodes.is_empty() {
                problems.push("redis.sentinel.nodes: needs at least one sentinel URL".into());
            }
            for (i, url) in nodes.iter().enumerate() {
                url_problem(problems, format!("redis.sentinel.nodes[{i}]"), url);
            }
            Topology::Sentinel { nodes, master_name }
        }
        (None, None, None) => {
            problems.push(
                "redis: set one of url, cluster or sentinel (or remove the section to use the in-process store)"
                    .into(),
            );
            return None;
        }
        _ => {
            problems.push("redis: set only one of url, cluster and sentinel".into());
            return None;
        }
    };
    for (key, value) in [("redis.timeout_ms", r.timeout_ms), ("redis.probe_interval_ms", r.probe_interval_ms)]
    {
        if value == 0 {
            problems.push(format!("{key}: must be at least 1"));
        }
    }
    let password = match (r.password, r.password_file) {
        (Some(_), Some(_)) => {
            problems.push("redis.password: set password or password_file, not both".into());
            None
        }
        (Some(p), None) => Some(p),
        (None, Some(path)) => match std::fs::read_to_string(&path) {
            Ok(text) => Some(text.trim_end_matches(['\n', '\r']).to_owned()),
            Err(e) => {
                problems.push(format!("redis.password_file: cannot read {path:?}: {e}"));
                None
            }
        },
        (None, None) => None,
    };
    if r.username.is_some() && password.is_none() {
        problems.push("redis.username: needs a password (redis.password or redis.password_file)".into());
    }
    let credentials =
        password.map(|password| crate::store::redis::Credentials { username: r.username, password });
    let tls = redis_tls(&topology, r.tls, problems);
    (problems.len() == before).then(|| RedisSettings {
        topology,
        access: crate::store::redis::Access { credentials, tls },
        timeout: Duration::from_millis(r.timeout_ms),
        probe_interval: Duration::from_millis(r.probe_interval_ms),
    })
}

/// TLS is on when every URL says `rediss://`; `redis.tls` only brings certificates.
fn redis_tls(
    topology: &Topology,
    files: Option<schema::RedisTls>,
    problems: &mut Vec<String>,
) -> Option<crate::store::redis::TlsFiles> {
    let urls: &[String] = match topology {
        Topology::Standalone { url } => std::slice::from_ref(url),
        Topology::Cluster { nodes } | Topology::Sentinel { nodes, .. } => nodes,
    };
    let secure = urls.iter().filter(|u| u.starts_with("rediss://")).count();
    if secure != 0 && secure != urls.len() {
        problems.push("redis: either every URL uses rediss:// (TLS) or none does".into());
        return None;
    }
    let Some(files) = files else {
        return (secure != 0).then(Default::default);
    };
    if secure == 0 {
        problems
            .push("redis.tls: certificates are set but the URLs use redis://; use rediss:// for TLS".into());
        return None;
    }
    let mut read = |key: &str, path: &str| match std::fs::read(path) {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            problems.push(format!("{key}: cannot read {path:?}: {e}"));
            None
        }
    };
    let ca_pem = files.ca_file.as_deref().and_then(|p| read("redis.tls.ca_file", p));
    let client = match (files.cert_file.as_deref(), files.key_file.as_deref()) {
        (Some(cert), Some(key)) => read("redis.tls.cert_file", cert).zip(read("redis.tls.key_file", key)),
        (None, None) => None,
        _ => {
            problems.push("redis.tls: set both cert_file and key_file, or neither".into());
            None
        }
    };
    Some(crate::store::redis::TlsFiles { ca_pem, client })
}

pub(crate) fn failure_mode(key: &str, value: &str, problems: &mut Vec<String>) -> FailureMode {
    match value {
        "local" => FailureMode::Local,
        "allow" => FailureMode::Allow,
        "deny" => FailureMode::Deny,
        other => {
            problems.push(format!("{key}: {other:?} is not one of local, allow, deny"));
            FailureMode::Local
        }
    }
}

/// `500ms`, `30s`, `15m`, `1h`, `1d` -> milliseconds.
/// Whole seconds, with 0 meaning "never".
fn secs(n: u64) -> Option<Duration> {
    (n > 0).then(|| Duration::from_secs(n))
}

pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a duration such as 500ms, 30s, 15m, 1h or 1d");
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = t.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let scale = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    let ms = n.checked_mul(scale).ok_or_else(bad)?;
    if ms == 0 {
        return Err(format!("{text:?} must be longer than zero"));
    }
    Ok(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_valid_and_uses_no_redis() {
        let settings = parse(DEFAULT_YAML, "default", Some(HashMap::new())).expect("default config");
        assert!(settings.redis.is_none());
        assert!(settings.tiers.len() >= 4);
    }

    #[test]
    fn environment_overrides_a_key() {
        let env = HashMap::from([("SLUICE__REDIS__URL".to_owned(), "redis://127.0.0.1:1".to_owned())]);
        let settings = parse(DEFAULT_YAML, "default", Some(env)).expect("config");
        let topology = settings.redis.expect("redis").topology;
        assert!(matches!(topology, Topology::Standalone { url, .. } if url == "redis://127.0.0.1:1"));
    }

    #[test]
    fn every_problem_is_named_at_once() {
        let yaml = "tiers:\n  - name: a\n    limit: 0\n    window: 15x\n  - name: a\n    exempt: true\n    limit: 3\n";
        let err = parse(yaml, "t.yaml", Some(HashMap::new())).expect_err("invalid");
        let lines = err.lines();
        assert!(lines.iter().any(|l| l.contains("tiers[0].limit: must be at least 1")), "{lines:?}");
        assert!(lines.iter().any(|l| l.contains("tiers[0].window: \"15x\"")), "{lines:?}");
        assert!(lines.iter().any(|l| l.contains("tiers[1].name")), "{lines:?}");
        assert!(lines.iter().any(|l| l.contains("tiers[1].exempt")), "{lines:?}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let err =
            parse("tiers:\n  - name: a\n    limt: 3\n", "t.yaml", Some(HashMap::new())).expect_err("invalid");
        let text = err.to_string();
        assert!(text.contains("tiers[0]") && text.contains("limt"), "{text}");
    }

    #[test]
    fn adaptive_settings_and_threat_lists_are_checked() {
        let yaml = "threat:
  patterns: ['(unclosed']
  deny_ranges: [10.0.0.0/8, 300.1.1.1/8]
tiers:
  - name: a
    limit: 10
    window: 1m
    adaptive: {weights: {burst: 101}, reduction_percent: 150, burst_multiple: 0}
  - name: b
    exempt: true
    adaptive: true
";
        let lines = parse(yaml, "t.yaml", Some(HashMap::new())).expect_err("invalid").lines();
        for expected in [
            "threat.patterns[0]",
            "threat.deny_ranges[1]",
            "tiers[0].adaptive.weights.burst: 101 is above 100",
            "tiers[0].adaptive.reduction_percent",
            "tiers[0].adaptive.burst_multiple: must be at least 1",
            "tiers[1].adaptive: only a limited tier can adapt",
        ] {
            assert!(lines.iter().any(|l| l.contains(expected)), "{expected} not in {lines:?}");
        }
        let ok = parse(
            "tiers:\n  - name: a\n    limit: 10\n    window: 1m\n    adaptive: {weights: {user_agent: 5}}\n",
            "t",
            Some(HashMap::new()),
        )
        .expect("valid");
        let adaptive = ok.tiers.all()[0].adaptive.expect("adaptive");
        assert_eq!((adaptive.weights.user_agent, adaptive.weights.burst), (5, 30));
    }

    #[test]
    fn an_empty_file_is_refused_and_no_tiers_must_be_said() {
        let env = HashMap::from([("SLUICE__FALLBACK__REPLICAS".to_owned(), "3".to_owned())]);
        for text in ["", "   \n\n", "# all commented out\n#tiers: []\n"] {
            let err = parse(text, "t.yaml", Some(env.clone())).expect_err("empty");
            assert!(matches!(err, ConfigError::Empty { .. }), "{text:?}: {err:?}");
            assert!(err.to_string().starts_with("t.yaml: holds no settings"), "{err}");
        }
        let lines =
            parse("log:\n  level: debug\n", "t.yaml", Some(HashMap::new())).expect_err("no tiers").lines();
        assert_eq!(lines, ["t.yaml: tiers: is required; list the tiers, or write `tiers: []` for none"]);
        let none = parse("tiers: []\n", "t.yaml", Some(HashMap::new())).expect("explicitly no tiers");
        assert_eq!(none.tiers.len(), 0);
    }

    #[test]
    fn admin_tls_is_inherit_or_plaintext() {
        let admin = |tls: &str| {
            format!("admin:\n  grpc_addr: 127.0.0.1:8082\n  token: 0123456789abcdef\n{tls}tiers: []\n")
        };
        let lines = parse(&admin("  tls: off\n"), "t.yaml", Some(HashMap::new())).expect_err("bad").lines();
        assert_eq!(lines, ["t.yaml: admin.tls: \"off\" is not one of inherit, plaintext"]);
        for tls in ["", "  tls: inherit\n", "  tls: plaintext\n"] {
            let settings = parse(&admin(tls), "t.yaml", Some(HashMap::new())).expect("valid");
            assert!(settings.admin.expect("admin").tls.is_none(), "no server.tls to inherit: {tls:?}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("15m"), Ok(900_000));
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert!(parse_duration_ms("0s").is_err());
        assert!(parse_duration_ms("m").is_err());
        assert!(parse_duration_ms("99999999999999999999d").is_err());
    }
}

#[cfg(test)]
mod env_tests {
    use super::*;

    #[test]
    fn env_numbers_and_secrets() {
        let env = HashMap::from([
            ("SLUICE__REDIS__URL".to_owned(), "redis://127.0.0.1:1".to_owned()),
            ("SLUICE__REDIS__TIMEOUT_MS".to_owned(), "75".to_owned()),
            ("SLUICE__ADMIN__GRPC_ADDR".to_owned(), "127.0.0.1:0".to_owned()),
            ("SLUICE__ADMIN__TOKEN".to_owned(), "00012345678901234567890123".to_owned()),
        ]);
        let s = parse("tiers: []\n", "t", Some(env)).expect("valid");
        assert_eq!(s.redis.expect("redis").timeout, Duration::from_millis(75));
        assert_eq!(
            s.admin.expect("admin").token,
            "00012345678901234567890123",
            "a token of digits stays as written"
        );
        let env = HashMap::from([(
            "SLUICE__REDIS__CLUSTER".to_owned(),
            "redis://a:7000, redis://b:7000".to_owned(),
        )]);
        let s = parse("tiers: []\n", "t", Some(env)).expect("valid");
        let Some(RedisSettings { topology: Topology::Cluster { nodes }, .. }) = s.redis else {
            panic!("a cluster")
        };
        assert_eq!(nodes, ["redis://a:7000", "redis://b:7000"]);
    }
}
