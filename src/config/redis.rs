//! The `redis` section into `RedisSettings`: the topology (standalone, Cluster or Sentinel), ACL
//! credentials (a password or a password file) and TLS certificates. URLs are never echoed in a
//! problem: they may hold a password.

use std::time::Duration;

use super::schema::RedisTls;
use super::validate::MIN_TLS_RELOAD_INTERVAL_MS;
use super::{RedisSettings, schema};
use crate::store::redis::{Access, Credentials, TlsFiles, TlsPaths, Topology};

/// The `redis` section: exactly one topology, its URLs, credentials and TLS files.
pub(super) fn settings(r: schema::Redis, problems: &mut Vec<String>) -> Option<RedisSettings> {
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
    let credentials = password.map(|password| Credentials { username: r.username, password });
    let reload_interval_ms =
        r.tls.as_ref().map_or(RedisTls::default().reload_interval_ms, |t| t.reload_interval_ms);
    if reload_interval_ms < MIN_TLS_RELOAD_INTERVAL_MS {
        problems.push(format!("redis.tls.reload_interval_ms: must be at least {MIN_TLS_RELOAD_INTERVAL_MS}"));
    }
    let tls = redis_tls(&topology, r.tls, problems);
    (problems.len() == before).then(|| RedisSettings {
        topology,
        access: Access { credentials, tls },
        timeout: Duration::from_millis(r.timeout_ms),
        probe_interval: Duration::from_millis(r.probe_interval_ms),
        tls_reload_interval: Duration::from_millis(reload_interval_ms),
    })
}

/// TLS is on when every URL says `rediss://`; `redis.tls` only brings certificates.
fn redis_tls(
    topology: &Topology,
    files: Option<schema::RedisTls>,
    problems: &mut Vec<String>,
) -> Option<TlsFiles> {
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
    // The Redis client would only find out when it connects, and then say less.
    let checked = ca_pem.as_deref().map_or(Ok(()), crate::tls::check_ca).and_then(|()| {
        client.as_ref().map_or(Ok(()), |(cert, key)| crate::tls::check_client_pair(cert, key))
    });
    if let Err(e) = checked {
        problems.push(format!("redis.tls.{e}"));
    }
    let paths = TlsPaths {
        ca: files.ca_file.map(Into::into),
        client: files.cert_file.zip(files.key_file).map(|(cert, key)| (cert.into(), key.into())),
    };
    Some(TlsFiles { ca_pem, client, paths })
}
