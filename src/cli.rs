//! The command line: `serve`, `check-config`, `check`, `events` and `admin`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::api::pb;
use crate::config::{self, ConfigError};
use crate::server::{self, Listeners};
use crate::store::EVENTS_STREAM;

/// sysexits' EX_CONFIG: the configuration is wrong.
const EXIT_CONFIG: u8 = 78;

#[derive(Debug, Parser)]
#[command(name = "sluice", version, about = "A distributed rate-limiting service")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve decisions over gRPC (and metrics over HTTP).
    Serve {
        /// YAML configuration; without it the built-in default runs on the in-process store.
        #[arg(long, short, env = "SLUICE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file; exits 78 naming every bad key.
    CheckConfig { file: PathBuf },
    /// Print the security events kept in Redis (oldest first), one JSON object a line.
    Events {
        /// The Redis that Sluice uses (a standalone URL).
        #[arg(long, env = "SLUICE__REDIS__URL", hide_env_values = true)]
        redis: String,
        /// How many of the newest events to print.
        #[arg(long, default_value_t = 100)]
        count: usize,
        /// Keep printing new events as they arrive.
        #[arg(long)]
        follow: bool,
    },
    /// Operators' actions through the admin API.
    Admin {
        /// The admin API's address; `https://...` when the server has TLS (the admin listener
        /// uses the gRPC listener's TLS unless `admin.tls: plaintext`).
        #[arg(long, default_value = "http://127.0.0.1:8082")]
        addr: String,
        /// The admin token.
        #[arg(long, env = "SLUICE__ADMIN__TOKEN", hide_env_values = true)]
        token: String,
        #[command(flatten)]
        tls: ClientTls,
        #[command(subcommand)]
        action: AdminAction,
    },
    /// Ask a running Sluice for one decision.
    Check {
        /// Sluice's gRPC address.
        #[arg(long, default_value = "http://127.0.0.1:8081")]
        addr: String,
        /// An attribute as name=value (ip, user, endpoint, method, user_agent, client_tier, or any
        /// other name as a free-form attribute); repeatable.
        #[arg(long = "attr", value_parser = parse_attr)]
        attrs: Vec<(String, String)>,
        /// Units to consume.
        #[arg(long)]
        cost: Option<u64>,
        /// Check only this tier; repeatable.
        #[arg(long = "tier")]
        tiers: Vec<String>,
        /// Decide without counting.
        #[arg(long)]
        dry_run: bool,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// TLS to the admin API, for an `https://` address.
#[derive(Debug, clap::Args)]
struct ClientTls {
    /// PEM CA certificate(s) that signed the server's certificate.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// PEM client certificate, for a server with mutual TLS (`server.tls.client_ca_file`).
    #[arg(long, requires = "key_file")]
    cert_file: Option<PathBuf>,
    /// PEM private key of `--cert-file`.
    #[arg(long, requires = "cert_file")]
    key_file: Option<PathBuf>,
    /// The name the server's certificate must carry, when it is not the host of `--addr` (e.g.
    /// through `kubectl port-forward` to localhost).
    #[arg(long)]
    tls_server_name: Option<String>,
}

#[derive(Debug, Subcommand)]
enum AdminAction {
    /// Mark an IP or a user as of bad reputation for a while.
    SetReputation {
        #[arg(long, conflicts_with = "user", required_unless_present = "user")]
        ip: Option<String>,
        #[arg(long)]
        user: Option<String>,
        /// How long, in milliseconds.
        #[arg(long, allow_hyphen_values = true)]
        ttl_ms: i64,
    },
    /// Lift a reputation mark.
    ClearReputation {
        #[arg(long, conflicts_with = "user", required_unless_present = "user")]
        ip: Option<String>,
        #[arg(long)]
        user: Option<String>,
    },
    /// Lift a tier-key's penalty block.
    Unblock(KeyArgs),
    /// Forget what a tier counted for a key.
    Reset(KeyArgs),
    /// Show what a tier holds for a key.
    Inspect(KeyArgs),
}

#[derive(Debug, clap::Args)]
struct KeyArgs {
    /// The tier.
    #[arg(long)]
    tier: String,
    /// The attributes the tier's key is built from, as name=value; repeatable.
    #[arg(long = "attr", value_parser = parse_attr)]
    attrs: Vec<(String, String)>,
}

fn parse_attr(s: &str) -> Result<(String, String), String> {
    let (name, value) = s.split_once('=').ok_or_else(|| format!("{s:?} is not name=value"))?;
    Ok((name.to_owned(), value.to_owned()))
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Serve { config } => serve(config).await,
            Command::CheckConfig { file } => check_config(&file),
            Command::Events { redis, count, follow } => events(&redis, count, follow).await,
            Command::Admin { addr, token, tls, action } => admin(addr, token, tls, action).await,
            Command::Check { addr, attrs, cost, tiers, dry_run, json } => {
                check(addr, attrs, cost, tiers, dry_run, json).await
            }
        }
    })
}

fn report_config_error(e: &ConfigError) -> ExitCode {
    for line in e.lines() {
        eprintln!("sluice: {line}");
    }
    ExitCode::from(EXIT_CONFIG)
}

fn check_config(file: &std::path::Path) -> ExitCode {
    // A file in envoyproxy/ratelimit's format (a `domain` at the top) is checked as one.
    if let Ok(text) = std::fs::read_to_string(file)
        && text.lines().any(|l| l.starts_with("domain:"))
    {
        return match config::envoy_file::parse(&text, &file.display().to_string()) {
            Ok(domain) => {
                println!("{}: ok, domain {:?}", file.display(), domain.name);
                ExitCode::SUCCESS
            }
            Err(problems) => {
                for p in problems {
                    eprintln!("sluice: {p}");
                }
                ExitCode::from(EXIT_CONFIG)
            }
        };
    }
    match config::load(Some(file)) {
        Ok(settings) => {
            println!("{}: ok, {} tiers", file.display(), settings.tiers.len());
            ExitCode::SUCCESS
        }
        Err(e) => report_config_error(&e),
    }
}

async fn serve(path: Option<PathBuf>) -> ExitCode {
    let settings = match config::load(path.as_deref()) {
        Ok(s) => s,
        Err(e) => return report_config_error(&e),
    };
    init_logging(&settings.log);
    match &path {
        Some(p) => {
            tracing::info!(config = %p.display(), tiers = settings.tiers.len(), "configuration loaded")
        }
        None => tracing::info!(
            tiers = settings.tiers.len(),
            "no --config given: using the built-in default (examples/sluice.yaml)"
        ),
    }
    let listeners = match Listeners::bind(&settings).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    match server::run(settings, listeners, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

fn init_logging(log: &config::LogSettings) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match log.format {
        config::schema::LogFormat::Json => builder.json().try_init(),
        config::schema::LogFormat::Text => builder.try_init(),
    };
}

async fn events(url: &str, count: usize, follow: bool) -> ExitCode {
    match print_events(url, count, follow).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: events: {e}");
            ExitCode::FAILURE
        }
    }
}

/// How long one XREAD of `events --follow` waits for new entries before asking again.
const FOLLOW_BLOCK: Duration = Duration::from_secs(5);

/// Prints the newest `count` events; with `follow`, then waits for new ones until interrupted.
async fn print_events(url: &str, count: usize, follow: bool) -> Result<(), redis::RedisError> {
    use redis::streams::{StreamId, StreamRangeReply, StreamReadOptions, StreamReadReply};
    // A blocking XREAD answers only when an event arrives or its BLOCK ends, so the connection must
    // wait longer than the BLOCK: the client's default response timeout (500 ms) would end
    // `--follow` after half a second of quiet. A Redis that stops answering altogether is still
    // noticed, a few seconds after the BLOCK.
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(FOLLOW_BLOCK * 2));
    let mut conn = redis::Client::open(url)?.get_multiplexed_async_connection_with_config(&config).await?;
    let print = |entry: &StreamId| {
        let mut fields = serde_json::Map::new();
        fields.insert("id".into(), entry.id.clone().into());
        for (field, value) in &entry.map {
            let text: String = redis::from_redis_value_ref(value).unwrap_or_default();
            fields.insert(field.clone(), text.into());
        }
        println!("{}", serde_json::Value::Object(fields));
    };
    // At least the newest entry is fetched, printed or not, so that following starts right after it.
    let newest: StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(EVENTS_STREAM)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(count.max(1))
        .query_async(&mut conn)
        .await?;
    for entry in newest.ids.iter().take(count).rev() {
        print(entry);
    }
    if !follow {
        return Ok(());
    }
    // After the newest entry seen, or from the start of an empty stream: unlike `$`, an ID never
    // misses an event written between two reads.
    let mut last = newest.ids.first().map_or_else(|| "0-0".to_owned(), |e| e.id.clone());
    let block_ms = usize::try_from(FOLLOW_BLOCK.as_millis()).unwrap_or(usize::MAX);
    loop {
        let options = StreamReadOptions::default().block(block_ms).count(100);
        let reply: Option<StreamReadReply> =
            redis::AsyncCommands::xread_options(&mut conn, &[EVENTS_STREAM], &[&last], &options).await?;
        for key in reply.map(|r| r.keys).unwrap_or_default() {
            for entry in &key.ids {
                print(entry);
                last.clone_from(&entry.id);
            }
        }
    }
}

async fn admin(addr: String, token: String, tls: ClientTls, action: AdminAction) -> ExitCode {
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
        Err(status) => {
            eprintln!("sluice: {}: {}", status.code(), status.message());
            ExitCode::FAILURE
        }
    }
}

/// A channel to the admin API: plaintext for `http://`, TLS for `https://`.
async fn connect_admin(addr: &str, tls: &ClientTls) -> Result<tonic::transport::Channel, String> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
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

async fn check(
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
    let mut client = match pb::rate_limiter_client::RateLimiterClient::connect(addr.clone()).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice: cannot connect to {addr}: {e}");
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
        let out = serde_json::json!({
            "allowed": d.allowed,
            "retry_after_ms": d.retry_after_ms,
            "limit": d.limit,
            "remaining": d.remaining,
            "reset_after_ms": d.reset_after_ms,
            "tier": d.tier,
            "headers": headers,
        });
        println!("{out}");
    } else {
        let verdict = if d.allowed { "allowed" } else { "denied" };
        let tier = if d.tier.is_empty() { "(no tier matched)" } else { d.tier.as_str() };
        println!(
            "{verdict} by {tier}: limit {}, remaining {}, retry after {} ms, reset after {} ms",
            d.limit, d.remaining, d.retry_after_ms, d.reset_after_ms
        );
        for h in &d.headers {
            println!("{}: {}", h.name, h.value);
        }
    }
    ExitCode::SUCCESS
}
