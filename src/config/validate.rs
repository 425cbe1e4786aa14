//! From the file as written (`schema::File`) to `Settings`: the listeners, the admin API, the
//! bounds and the log here; tiers, Redis and Envoy domain files in their own modules. Every
//! problem is collected, each naming its key, so that one pass over a file reports them all.

use std::net::SocketAddr;
use std::time::Duration;

use super::duration::secs;
use super::{
    AdminSettings, HttpApiSettings, InputLimits, LogSettings, ServerSettings, Settings, TlsSettings,
    TraceSettings, Transport, envoy_file, redis, schema, tiers,
};

/// Reading certificate files more often than this buys nothing and costs a busy loop.
pub(super) const MIN_TLS_RELOAD_INTERVAL_MS: u64 = 100;

/// More worker threads than this is a typo, not a machine: each one is an OS thread at start-up.
const MOST_WORKER_THREADS: usize = 1024;

/// The settings a file describes, or every problem it has.
pub(super) fn validate(file: schema::File) -> Result<Settings, Vec<String>> {
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
        if t.reload_interval_ms < MIN_TLS_RELOAD_INTERVAL_MS {
            problems.push(format!(
                "server.tls.reload_interval_ms: must be at least {MIN_TLS_RELOAD_INTERVAL_MS}"
            ));
        }
        let (cert_pem, key_pem) = (cert_pem?, key_pem?);
        // Built here only to be checked, so that `check-config` names the file at fault; the server
        // builds its own.
        if let Err(e) = crate::tls::server_config(&cert_pem, &key_pem, client_ca_pem.as_deref()) {
            problems.push(format!("server.tls.{e}"));
            return None;
        }
        Some(TlsSettings {
            cert_pem,
            key_pem,
            client_ca_pem,
            cert_file: t.cert_file.clone().into(),
            key_file: t.key_file.clone().into(),
            client_ca_file: t.client_ca_file.clone().map(Into::into),
            reload_interval: Duration::from_millis(t.reload_interval_ms),
        })
    });

    let mut notices = Vec::new();
    let admin = file.admin.and_then(|a| {
        let Some(addr) = a.grpc_addr else {
            notices.push(
                "the admin API is off: admin.grpc_addr is not set (an admin token alone, e.g. \
                 SLUICE__ADMIN__TOKEN for `sluice admin`, does not open it)"
                    .to_owned(),
            );
            return None;
        };
        let grpc_addr = addr
            .parse::<SocketAddr>()
            .map_err(|_| {
                problems.push(format!("admin.grpc_addr: {addr:?} is not an address like 127.0.0.1:8082"))
            })
            .ok();
        let tls = a.tls.or_report("admin.tls", &mut problems).map(|choice| match choice {
            schema::AdminTls::Inherit => tls.clone(),
            schema::AdminTls::Plaintext => None,
        });
        if a.token.chars().count() < 16 {
            problems.push("admin.token: must be at least 16 characters".into());
            return None;
        }
        Some(AdminSettings { grpc_addr: grpc_addr?, token: a.token, tls: tls? })
    });
    let http_api = file.http_api.and_then(|h| http_api(h, tls.is_some(), &mut problems, &mut notices));
    let mut domains = envoy_file::domains(&file.envoy, &mut problems);
    let envoy_headers = file.envoy.headers.or_report("envoy.headers", &mut problems).unwrap_or_default();
    let redis = file.redis.and_then(|r| redis::settings(r, &mut problems));
    let default_failure =
        file.fallback.mode.or_report("fallback.mode", &mut problems).unwrap_or_default().into();
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
    if let Some(n) = file.server.worker_threads
        && !(1..=MOST_WORKER_THREADS).contains(&n)
    {
        problems.push(format!("server.worker_threads: {n} is not between 1 and {MOST_WORKER_THREADS}"));
    }
    let log_format = file.log.format.or_report("log.format", &mut problems).unwrap_or_default();
    let tracing = file.tracing.and_then(|t| tracing(t, &mut problems));

    let tiers = tiers::tiers(file.tiers, &file.threat, default_failure, &mut problems);

    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Settings {
        source: None,
        server: ServerSettings {
            grpc_addr: grpc_addr.expect("checked above"),
            http_addr: http_addr.expect("checked above"),
            drain: Duration::from_secs(file.server.drain_secs),
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
            worker_threads: file.server.worker_threads,
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
        log: LogSettings { format: log_format, level: file.log.level },
        tracing,
        tiers,
        events_max_len: file.threat.events_max_len.unwrap_or(10_000),
        admin,
        http_api,
        notices,
        domains,
        envoy_paths: file.envoy.paths.iter().map(std::path::PathBuf::from).collect(),
        envoy_headers: envoy_headers.into(),
    })
}

/// The `http_api` section: its listener, trusted proxies, denial status and header attributes.
fn http_api(
    h: schema::HttpApi,
    server_tls: bool,
    problems: &mut Vec<String>,
    notices: &mut Vec<String>,
) -> Option<HttpApiSettings> {
    let Some(addr) = h.addr else {
        notices.push("the HTTP API is off: http_api.addr is not set".to_owned());
        return None;
    };
    let addr = addr
        .parse::<SocketAddr>()
        .map_err(|_| problems.push(format!("http_api.addr: {addr:?} is not an address like 0.0.0.0:8083")))
        .ok();
    let mut trusted_proxies = Vec::with_capacity(h.trusted_proxies.len());
    for (i, entry) in h.trusted_proxies.iter().enumerate() {
        let net = entry
            .parse::<ipnet::IpNet>()
            .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match net {
            Ok(net) => trusted_proxies.push(net.trunc()),
            Err(_) => problems.push(format!(
                "http_api.trusted_proxies[{i}]: {entry:?} is not an address or a CIDR like 10.0.0.0/8"
            )),
        }
    }
    if !(400..=499).contains(&h.deny_status) {
        problems.push(format!(
            "http_api.deny_status: {} is not a 4xx status (429, or 403 for NGINX)",
            h.deny_status
        ));
    }
    let mut attributes = Vec::with_capacity(h.attributes.len());
    for (header, attribute) in &h.attributes {
        let key = format!("http_api.attributes[{header:?}]");
        if axum::http::HeaderName::from_bytes(header.as_bytes()).is_err() {
            problems.push(format!("{key}: not a header name"));
            continue;
        }
        if attribute.is_empty() || !attribute.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            problems.push(format!("{key}: {attribute:?} is not an attribute name (letters, digits, _)"));
            continue;
        }
        attributes.push((header.to_ascii_lowercase(), crate::request::Attr::parse(attribute)));
    }
    let tls = h.tls.or_report("http_api.tls", problems).map(|choice| match choice {
        schema::AdminTls::Inherit => server_tls,
        schema::AdminTls::Plaintext => false,
    });
    Some(HttpApiSettings { addr: addr?, trusted_proxies, deny_status: h.deny_status, attributes, tls: tls? })
}

/// The `tracing` section: an endpoint the exporter can dial, a ratio that is one.
fn tracing(t: schema::Tracing, problems: &mut Vec<String>) -> Option<TraceSettings> {
    let before = problems.len();
    if let Err(reason) = otlp_endpoint(&t.otlp_endpoint) {
        problems.push(format!("tracing.otlp_endpoint: {:?} {reason}", t.otlp_endpoint));
    }
    if !(0.0..=1.0).contains(&t.sample_ratio) {
        problems.push(format!("tracing.sample_ratio: {} is not between 0 and 1", t.sample_ratio));
    }
    if t.service_name.trim().is_empty() {
        problems.push("tracing.service_name: must not be empty".into());
    }
    (problems.len() == before).then_some(TraceSettings {
        otlp_endpoint: t.otlp_endpoint,
        sample_ratio: t.sample_ratio,
        service_name: t.service_name,
    })
}

/// `http://host[:port][/]` or `https://...`: what the OTLP/gRPC exporter dials.
fn otlp_endpoint(endpoint: &str) -> Result<(), &'static str> {
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .ok_or("is not an http:// or https:// URL like http://127.0.0.1:4317")?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
        return Err("must be a scheme and host[:port] only, like http://127.0.0.1:4317");
    }
    if !authority.chars().all(|c| c.is_ascii_alphanumeric() || "-._:[]".contains(c)) {
        return Err("has a character that is not in a host name or address");
    }
    // An IPv6 address is bracketed; a port is what follows the last colon outside the brackets.
    let port = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => {
            if host.is_empty() {
                return Err("has no host");
            }
            Some(port)
        }
        _ => None,
    };
    if let Some(port) = port
        && port.parse::<u16>().is_err()
    {
        return Err("has a port that is not a number from 0 to 65535");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use crate::config::parse;

    #[test]
    fn certificate_files_are_not_read_more_often_than_every_100_ms() {
        let yaml = "server:\n  tls:\n    cert_file: /nonexistent/tls.crt\n    key_file: /nonexistent/tls.key\n    reload_interval_ms: 10\nredis:\n  url: rediss://127.0.0.1:6379\n  tls:\n    reload_interval_ms: 99\ntiers: []\n";
        let lines = parse(yaml, "t.yaml", Some(HashMap::new())).expect_err("bad").lines();
        for key in ["server.tls.reload_interval_ms", "redis.tls.reload_interval_ms"] {
            assert!(lines.contains(&format!("t.yaml: {key}: must be at least 100")), "{key}: {lines:?}");
        }
        let redis = "redis:\n  url: rediss://127.0.0.1:6379\ntiers: []\n";
        let settings = parse(redis, "t.yaml", Some(HashMap::new())).expect("valid");
        assert_eq!(settings.redis.expect("redis").tls_reload_interval, std::time::Duration::from_secs(5));
    }

    #[test]
    fn http_api_problems_name_their_keys() {
        let yaml = "http_api:\n  addr: nowhere\n  trusted_proxies: [10.0.0.0/8, 10.0.0.0/33, bogus]\n  \
                    deny_status: 200\n  attributes: {\"X User\": user, X-Tier: \"client tier\"}\ntiers: []\n";
        let lines = parse(yaml, "t.yaml", Some(HashMap::new())).expect_err("bad").lines();
        for key in [
            "http_api.addr",
            "http_api.trusted_proxies[1]",
            "http_api.trusted_proxies[2]",
            "http_api.deny_status",
            "http_api.attributes[\"X User\"]",
            "http_api.attributes[\"X-Tier\"]",
        ] {
            assert!(lines.iter().any(|l| l.contains(key)), "{key} in {lines:?}");
        }
        let ok = "http_api:\n  addr: 127.0.0.1:8083\n  trusted_proxies: [10.1.2.3/8, \"::1\"]\n  \
                  attributes: {X-User: user, X-Login-Name: username}\ntiers: []\n";
        let api = parse(ok, "t.yaml", Some(HashMap::new())).expect("valid").http_api.expect("served");
        assert_eq!(api.deny_status, 429, "the default");
        assert_eq!(api.trusted_proxies[0].to_string(), "10.0.0.0/8", "host bits dropped");
        assert_eq!(api.attributes[0].0, "x-login-name", "header names in lower case");
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
    fn tracing_names_a_bad_endpoint_or_ratio() {
        let tracing = |section: &str| format!("tracing:\n{section}tiers: []\n");
        let lines = |section: &str| {
            parse(&tracing(section), "t.yaml", Some(HashMap::new())).expect_err("bad").lines()
        };
        let bad = lines("  otlp_endpoint: collector:4317\n  sample_ratio: 1.5\n");
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert!(
            bad[0].starts_with("t.yaml: tracing.otlp_endpoint: \"collector:4317\" is not an http://"),
            "{bad:?}"
        );
        assert_eq!(bad[1], "t.yaml: tracing.sample_ratio: 1.5 is not between 0 and 1");
        for endpoint in ["http://", "http://host:port", "https://a/b", "http://us er:1", "http://:4317"] {
            let bad = lines(&format!("  otlp_endpoint: \"{endpoint}\"\n"));
            assert!(bad.len() == 1 && bad[0].contains("tracing.otlp_endpoint"), "{endpoint}: {bad:?}");
        }
        assert_eq!(lines("  otlp_endpoint: http://c:4317\n  sample_ratio: -0.1\n").len(), 1);

        let settings = |section: &str, env: &[(&str, &str)]| {
            let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
            parse(&tracing(section), "t.yaml", Some(env)).expect("valid").tracing.expect("on")
        };
        let on = settings("  otlp_endpoint: http://127.0.0.1:4317\n", &[]);
        assert_eq!((on.sample_ratio, on.service_name.as_str()), (0.01, "sluice"));
        for endpoint in ["https://otel-collector.observability.svc:4317", "http://[::1]:4317/", "http://c"] {
            assert_eq!(settings(&format!("  otlp_endpoint: {endpoint}\n"), &[]).otlp_endpoint, endpoint);
        }
        let from_env = settings(
            "  otlp_endpoint: http://127.0.0.1:4317\n",
            &[("SLUICE__TRACING__SAMPLE_RATIO", "0.25"), ("SLUICE__TRACING__SERVICE_NAME", "edge-rl")],
        );
        assert_eq!((from_env.sample_ratio, from_env.service_name.as_str()), (0.25, "edge-rl"));
        assert!(parse("tiers: []\n", "t.yaml", Some(HashMap::new())).expect("valid").tracing.is_none());
    }
}
