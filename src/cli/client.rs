//! The gRPC clients of `sluice check` (one decision from `sluice.v1.RateLimiter`) and `sluice
//! admin` (the admin API, over TLS for an `https://` address): each prints what the server answered,
//! or the status it refused with.

use std::path::PathBuf;
use std::process::ExitCode;

use super::{AdminAction, ClientTls, KeyArgs};
use crate::api::pb;

pub(super) async fn admin(addr: String, token: String, tls: ClientTls, action: AdminAction) -> ExitCode {
    let channel = match connect_admin(&addr, &tls).await {
        Ok(channel) => channel,
        Err(message) => {
            eprintln!("sluice: {message}");
            return ExitCode::FAILURE;
        }
    };
    let mut client = pb::admin_client::AdminClient::new(channel);
    let Ok(bearer) = format!("Bearer {token}").parse::<tonic::metadata::MetadataValue<_>>() else {
        eprintln!("sluice: the token holds characters a header cannot carry");
        return ExitCode::FAILURE;
    };
    fn with<T>(
        bearer: &tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
        message: T,
    ) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert("authorization", bearer.clone());
        request
    }
    let key = |k: KeyArgs| pb::KeyRequest { tier: k.tier, attributes: Some(attributes(k.attrs)) };
    let result = match action {
        AdminAction::SetReputation { ip, user, ttl_ms } => client
            .set_reputation(with(
                &bearer,
                pb::SetReputationRequest {
                    ip: ip.unwrap_or_default(),
                    user: user.unwrap_or_default(),
                    ttl_ms,
                },
            ))
            .await
            .map(|r| serde_json::json!({ "keys": r.into_inner().keys })),
        AdminAction::ClearReputation { ip, user } => client
            .clear_reputation(with(
                &bearer,
                pb::ClearReputationRequest { ip: ip.unwrap_or_default(), user: user.unwrap_or_default() },
            ))
            .await
            .map(|r| serde_json::json!({ "keys": r.into_inner().keys })),
        AdminAction::Unblock(k) => client
            .unblock(with(&bearer, key(k)))
            .await
            .map(|r| serde_json::json!({ "keys": r.into_inner().keys })),
        AdminAction::Reset(k) => client
            .reset(with(&bearer, key(k)))
            .await
            .map(|r| serde_json::json!({ "keys": r.into_inner().keys })),
        AdminAction::Inspect(k) => client.inspect(with(&bearer, key(k))).await.map(|r| {
            let r = r.into_inner();
            serde_json::json!({ "key": r.key, "fields": r.fields })
        }),
    };
    match result {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            eprintln!(
                "sluice: {addr} does not serve the admin API (sluice.v1.Admin): the admin API has a listener \
                 of its own, admin.grpc_addr in the server's configuration, not the decision port"
            );
            ExitCode::FAILURE
        }
        Err(status) => {
            eprintln!("sluice: {}: {}", status.code(), status.message());
            ExitCode::FAILURE
        }
    }
}

/// A channel to the admin API: plaintext for `http://`, TLS for `https://`.
/// An address as given, or `http://` before a bare `host:port`.
fn with_scheme(addr: &str) -> String {
    if addr.contains("://") { addr.to_owned() } else { format!("http://{addr}") }
}

async fn connect_admin(addr: &str, tls: &ClientTls) -> Result<tonic::transport::Channel, String> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let addr = &with_scheme(addr);
    let mut endpoint =
        Endpoint::from_shared(addr.to_owned()).map_err(|e| format!("{addr:?} is not an address: {e}"))?;
    let read =
        |path: &PathBuf| std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()));
    if addr.starts_with("https://") {
        // No system roots are built in: the CA is always named.
        let ca = tls
            .ca_file
            .as_ref()
            .ok_or("an https:// address needs --ca-file (the CA that signed the server's certificate)")?;
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
        if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        if let Some(name) = &tls.tls_server_name {
            config = config.domain_name(name.clone());
        }
        endpoint = endpoint.tls_config(config).map_err(|e| format!("TLS: {}", error_chain(&e)))?;
    } else if tls.ca_file.is_some() || tls.cert_file.is_some() || tls.tls_server_name.is_some() {
        return Err(format!("TLS options were given but {addr:?} is not an https:// address"));
    }
    endpoint.connect().await.map_err(|e| format!("cannot connect to {addr}: {}", error_chain(&e)))
}

/// An error and its causes on one line: tonic's own message ("transport error") says little.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Attributes from name=value pairs: the built-in names go to their fields, others to `extra`.
fn attributes(pairs: Vec<(String, String)>) -> pb::Attributes {
    let mut a = crate::request::Attributes::default();
    for (name, value) in pairs {
        a.set(&crate::request::Attr::parse(&name), value);
    }
    a.into()
}

pub(super) async fn check(
    addr: String,
    attrs: Vec<(String, String)>,
    cost: Option<u64>,
    tiers: Vec<String>,
    dry_run: bool,
    json: bool,
) -> ExitCode {
    let a = attributes(attrs);
    let request =
        pb::CheckRequest { requests: vec![pb::RateRequest { attributes: Some(a), cost, tiers }], dry_run };
    let addr = with_scheme(&addr);
    let mut client = match pb::rate_limiter_client::RateLimiterClient::connect(addr.clone()).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice: cannot connect to {addr}: {} (is Sluice serving there?)", error_chain(&e));
            return ExitCode::FAILURE;
        }
    };
    let decision = match client.check(request).await {
        Ok(r) => r.into_inner().decisions.into_iter().next(),
        Err(status) => {
            eprintln!("sluice: {}: {}", status.code(), status.message());
            return ExitCode::FAILURE;
        }
    };
    let Some(d) = decision else {
        eprintln!("sluice: the server answered no decision");
        return ExitCode::FAILURE;
    };
    if json {
        let headers: serde_json::Map<String, serde_json::Value> =
            d.headers.iter().map(|h| (h.name.clone(), h.value.clone().into())).collect();
        let tiers: Vec<serde_json::Value> = d
            .tiers
            .iter()
            .map(|t| {
                serde_json::json!({
                    "tier": t.tier,
                    "allowed": t.allowed,
                    "shadow": t.shadow,
                    "limit": t.limit,
                    "remaining": t.remaining,
                    "retry_after_ms": t.retry_after_ms,
                    "reset_after_ms": t.reset_after_ms,
                    "threat_score": t.threat_score,
                    "threat_factors": t.threat_factors,
                })
            })
            .collect();
        let out = serde_json::json!({
            "allowed": d.allowed,
            "retry_after_ms": d.retry_after_ms,
            "limit": d.limit,
            "remaining": d.remaining,
            "reset_after_ms": d.reset_after_ms,
            "tier": d.tier,
            "source": d.source,
            "threat_score": d.threat_score,
            "threat_factors": d.threat_factors,
            "tiers": tiers,
            "headers": headers,
        });
        println!("{out}");
    } else {
        let verdict = if d.allowed { "allowed" } else { "denied" };
        let tier = if d.tier.is_empty() { "(no tier matched)" } else { d.tier.as_str() };
        let source = if d.source.is_empty() { "nothing counted" } else { d.source.as_str() };
        println!(
            "{verdict} by {tier} ({source}): limit {}, remaining {}, retry after {} ms, reset after {} ms",
            d.limit, d.remaining, d.retry_after_ms, d.reset_after_ms
        );
        if d.threat_score > 0 || !d.threat_factors.is_empty() {
            println!("threat score {} ({})", d.threat_score, d.threat_factors.join(", "));
        }
        for t in &d.tiers {
            let verdict = match (t.allowed, t.shadow) {
                (true, _) => "allows",
                (false, false) => "denies",
                (false, true) => "would deny (shadow)",
            };
            println!(
                "  tier {} {verdict}: limit {}, remaining {}, retry after {} ms",
                t.tier, t.limit, t.remaining, t.retry_after_ms
            );
        }
        for h in &d.headers {
            println!("{}: {}", h.name, h.value);
        }
    }
    ExitCode::SUCCESS
}
