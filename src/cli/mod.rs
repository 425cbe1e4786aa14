//! The command line: `serve`, `check-config`, `check`, `events` and `admin`. This module holds the
//! arguments and runs `serve` and `check-config`; `client` holds the gRPC clients of `check` and
//! `admin`, `events` prints the security events.

mod client;
mod events;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{self, ConfigError};
use crate::server::{self, Listeners};
use crate::traces::Traces;

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
    match Cli::parse().command {
        // The configuration is read first: it says how many worker threads to start.
        Command::Serve { config } => match config::load(config.as_deref()) {
            Ok(settings) => on_runtime(settings.server.worker_threads, serve(config, settings)),
            Err(e) => report_config_error(&e),
        },
        Command::CheckConfig { file } => check_config(&file),
        Command::Events { redis, count, follow } => on_runtime(None, events::events(&redis, count, follow)),
        Command::Admin { addr, token, tls, action } => {
            on_runtime(None, client::admin(addr, token, tls, action))
        }
        Command::Check { addr, attrs, cost, tiers, dry_run, json } => {
            on_runtime(None, client::check(addr, attrs, cost, tiers, dry_run, json))
        }
    }
}

/// Runs `work` to its end on a multi-threaded runtime of `threads` workers (`None`: tokio's
/// choice, `TOKIO_WORKER_THREADS` or one per core).
fn on_runtime(threads: Option<usize>, work: impl Future<Output = ExitCode>) -> ExitCode {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        builder.worker_threads(n);
    }
    // tokio panics when the system refuses a worker thread (a thread or memory limit), and the
    // unwinding then waits forever for the workers already started: say why and exit instead.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        eprintln!("sluice: cannot start the runtime: {info}");
        std::process::exit(1);
    }));
    let built = builder.enable_all().build();
    std::panic::set_hook(hook);
    match built {
        Ok(runtime) => runtime.block_on(work),
        Err(e) => {
            eprintln!("sluice: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

fn report_config_error(e: &ConfigError) -> ExitCode {
    for line in e.lines() {
        eprintln!("sluice: {line}");
    }
    ExitCode::from(EXIT_CONFIG)
}

/// How Envoy domain files count unless told otherwise.
const FIXED_NOTE: &str = "note: descriptors count as envoyproxy/ratelimit counts (a fixed window aligned to \
    the epoch, every hit counted) unless `envoy.algorithm` or a descriptor's `sluice: {algorithm: ...}` \
    says otherwise";

/// Where `envoy.algorithm: sliding_window` answers differently from the reference.
const SLIDING_NOTE: &str = "note: descriptors count with Sluice's sliding window (`envoy.algorithm`), which \
    answers differently from envoyproxy/ratelimit's fixed window: it allows no burst of twice the limit \
    across a window's edge, and where denied hits count (`envoy.count_denied`, the default) a client that \
    stays over a limit stays denied until it slows down, where the reference admits the limit again \
    every window";

fn check_config(file: &std::path::Path) -> ExitCode {
    // A directory is one of `envoy.paths`: every domain file in it.
    if file.is_dir() {
        let checked = config::envoy_file::check_path(&file.display().to_string()).and_then(|names| {
            if names.is_empty() {
                return Err(vec![format!("{}: no .yaml or .yml domain file in it", file.display())]);
            }
            Ok(format!("{} domains: {}", names.len(), names.join(", ")))
        });
        return domain_check(file, checked);
    }
    // A file in envoyproxy/ratelimit's format (a `domain` at the top) is checked as one.
    if let Ok(text) = std::fs::read_to_string(file)
        && text.lines().any(|l| l.starts_with("domain:"))
    {
        let checked = config::envoy_file::parse(&text, &file.display().to_string());
        return domain_check(file, checked.map(|domain| format!("domain {:?}", domain.name)));
    }
    match config::load(Some(file)) {
        Ok(settings) => {
            println!("{}: ok, {} tiers", file.display(), settings.tiers.len());
            for notice in &settings.notices {
                println!("note: {notice}");
            }
            let domains = &settings.domains;
            if !domains.by_name.is_empty() {
                println!(
                    "{} Envoy domains, counted with {} by default",
                    domains.by_name.len(),
                    domains.algorithm
                );
                if domains.algorithm == crate::algorithm::Algorithm::SlidingWindow {
                    println!("{SLIDING_NOTE}");
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => report_config_error(&e),
    }
}

/// What a check of domain files found, or every problem it met (exit 78).
fn domain_check(file: &std::path::Path, checked: Result<String, Vec<String>>) -> ExitCode {
    match checked {
        Ok(found) => {
            println!("{}: ok, {found}", file.display());
            println!("{FIXED_NOTE}");
            ExitCode::SUCCESS
        }
        Err(problems) => {
            for p in problems {
                eprintln!("sluice: {p}");
            }
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

async fn serve(path: Option<PathBuf>, settings: config::Settings) -> ExitCode {
    let traces = match settings.tracing.as_ref().map(Traces::start).transpose() {
        Ok(traces) => traces,
        Err(e) => {
            eprintln!("sluice: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_logging(&settings.log, traces.as_ref());
    if let Some(t) = &settings.tracing {
        tracing::info!(otlp_endpoint = %t.otlp_endpoint, sample_ratio = t.sample_ratio, "exporting traces");
    }
    for notice in &settings.notices {
        tracing::warn!("{notice}");
    }
    match &path {
        Some(p) => {
            tracing::info!(config = %p.display(), tiers = settings.tiers.len(), "configuration loaded")
        }
        None => tracing::info!(
            tiers = settings.tiers.len(),
            "no --config given: using the built-in default (examples/sluice.yaml)"
        ),
    }
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    tracing::info!(worker_threads = workers, "runtime started");
    let listeners = match Listeners::bind(&settings).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let served = server::run(settings, listeners, shutdown_signal()).await;
    // The spans of the last calls, sent within a bound whether or not the collector answers.
    if let Some(traces) = traces {
        traces.shutdown().await;
    }
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM (an orchestrator's) drains first; SIGINT (a person's Ctrl-C) stops at once.
async fn shutdown_signal() -> server::Stop {
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
        _ = ctrl_c => server::Stop::Now,
        _ = term => server::Stop::Drain,
    }
}

fn init_logging(log: &config::LogSettings, traces: Option<&Traces>) {
    use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    // Spans meant for the collector are not log lines, whatever the level.
    let filter =
        filter.add_directive(format!("{}=off", crate::traces::TARGET).parse().expect("a valid directive"));
    use std::io::IsTerminal;
    // Colour only for a person at a terminal: never escape codes in a file, a pipe or a collector.
    let ansi = std::io::stderr().is_terminal();
    let Some(traces) = traces else {
        let builder =
            tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
        let _ = match log.format {
            config::LogFormat::Json => builder.json().try_init(),
            config::LogFormat::Text => builder.try_init(),
        };
        return;
    };
    // Each layer filters for itself: a global filter at `warn` would disable the decision spans
    // (INFO) for the traces layer too.
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let fmt = match log.format {
        config::LogFormat::Json => fmt.json().boxed(),
        config::LogFormat::Text => fmt.boxed(),
    };
    let _ = tracing_subscriber::registry().with(fmt.with_filter(filter)).with(traces.layer()).try_init();
}
