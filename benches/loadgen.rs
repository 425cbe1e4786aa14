//! A load generator for `sluice.v1.RateLimiter/Check`, and a no-op server to hold Sluice against.
//!
//! ```text
//! cargo bench --bench loadgen -- noop --listen 127.0.0.1:PORT
//! cargo bench --bench loadgen -- load --addr 127.0.0.1:PORT -c 64 --keys 1000 --pid SERVER_PID
//! ```
//!
//! `load` runs a closed loop: C tasks, each with one call in flight at a time, share min(C, 4)
//! HTTP/2 connections so that one connection's stream handling does not cap concurrency. Call n of
//! task w asks about ip = key (w + n * C) mod K, so concurrent calls rarely meet on one key. Calls
//! started during the warm-up are not counted; calls started in the measured window are. Around
//! that window it reads the CPU time (utime + stime) of the given processes from /proc, so the
//! server's cost per decision is known, not guessed, with the server's write system calls
//! (`syscw` of /proc/PID/io) and context switches (every thread's, voluntary or not) per decision.
//! The result is one line of `name=value` pairs.
//!
//! `noop` answers every entry of a Check with `allowed` and does nothing else: the floor that gRPC,
//! HTTP/2 and the loopback cost on this machine, against which Sluice's own work shows. It also
//! takes OTLP trace exports and drops them, counting the spans (printed when it stops): the sink a
//! Sluice with `tracing` on exports to when its cost is measured (`TRACING=` in benches/run.sh).
//!
//! Only 127.0.0.1 is accepted, both to listen on and to send to. Every loop ends by time and by
//! count.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, value_parser};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{RateLimitDescriptor, rate_limit_descriptor};
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use hdrhistogram::Histogram;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use sluice::api::pb;
use sluice::api::pb::rate_limiter_client::RateLimiterClient;
use sluice::api::pb::rate_limiter_server::{RateLimiter, RateLimiterServer};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint, Server};

/// Highest latency the histogram holds, in µs; slower calls are recorded as this.
const MAX_LATENCY_US: u64 = 60_000_000;
/// A task gives up after this many failed calls, so a dead server ends a run quickly.
const MAX_ERRORS_PER_TASK: u64 = 100;
/// How long to keep trying to connect to a server that is still starting.
const CONNECT_PATIENCE: Duration = Duration::from_secs(10);

#[derive(Debug, Parser)]
#[command(name = "loadgen", about = "Load generator and no-op server for sluice.v1.RateLimiter")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Appended by `cargo bench`; ignored.
    #[arg(long, global = true, hide = true)]
    bench: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send Check calls to a server for a fixed time and print one result line.
    Load(LoadArgs),
    /// Serve RateLimiter/Check, answering every entry "allowed" at once.
    Noop(NoopArgs),
}

#[derive(Debug, Args)]
struct LoadArgs {
    /// The server's gRPC address (127.0.0.1 only).
    #[arg(long)]
    addr: SocketAddr,
    /// Name for the `target=` field of the result line.
    #[arg(long, default_value = "unnamed")]
    target: String,
    /// Call Envoy's `ShouldRateLimit` for this domain (one descriptor `remote_address`) instead of
    /// `sluice.v1.RateLimiter/Check`.
    #[arg(long)]
    envoy_domain: Option<String>,
    /// Calls in flight (with `--rate`: workers, so at most this many).
    #[arg(short = 'c', long, default_value_t = 16, value_parser = value_parser!(u32).range(1..=100_000))]
    concurrency: u32,
    /// Distinct keys: the values of the ip attribute.
    #[arg(long, default_value_t = 1000, value_parser = value_parser!(u32).range(1..=1_000_000))]
    keys: u32,
    /// Every call asks about a key never used before (ip = 10.x.y.z, then 11.x.y.z, ...), instead
    /// of cycling through `--keys`: a flood of distinct keys.
    #[arg(long)]
    distinct: bool,
    /// With `--distinct`, ask about each new key this many times in a row (with a limit of 1, the
    /// second call is denied: what fills the over-limit cache).
    #[arg(long, default_value_t = 1, value_parser = value_parser!(u64).range(1..=100))]
    repeat: u64,
    /// Open loop: start this many calls per second whatever the answers, from C workers (a call
    /// no worker could start within 100 ms of its instant is counted as `unsent`), instead of C
    /// closed-loop tasks.
    #[arg(long, value_parser = value_parser!(u64).range(1..=1_000_000))]
    rate: Option<u64>,
    /// HTTP/2 connections [default: min(C, 4)].
    #[arg(long, value_parser = value_parser!(u32).range(1..=64))]
    connections: Option<u32>,
    /// Seconds of load before the measured window.
    #[arg(long, default_value_t = 2, value_parser = value_parser!(u64).range(0..=120))]
    warmup_secs: u64,
    /// Length of the measured window in seconds.
    #[arg(long, default_value_t = 8, value_parser = value_parser!(u64).range(1..=7_200))]
    secs: u64,
    /// Most calls in all, warm-up included; the run ends at whichever limit comes first.
    #[arg(long, default_value_t = 100_000_000, value_parser = value_parser!(u64).range(1..))]
    max_calls: u64,
    /// Deadline of one call, in ms.
    #[arg(long, default_value_t = 2_000, value_parser = value_parser!(u64).range(1..=60_000))]
    call_timeout_ms: u64,
    /// Send this deadline to the server (`grpc-timeout`), as a gateway does, in ms.
    #[arg(long, value_parser = value_parser!(u64).range(1..=60_000))]
    deadline_ms: Option<u64>,
    /// The server process, whose CPU time per decision is reported as `cpu_us_per_decision`, its
    /// write system calls as `writes_per_decision` and its context switches as
    /// `switches_per_decision`.
    #[arg(long)]
    pid: Option<u32>,
    /// A redis-server behind the server, reported as `redis_cpu_us_per_decision`.
    #[arg(long)]
    redis_pid: Option<u32>,
    /// Worker threads of this client.
    #[arg(long, default_value_t = 2, value_parser = value_parser!(u64).range(1..=64))]
    threads: u64,
}

#[derive(Debug, Args)]
struct NoopArgs {
    /// Where to listen (127.0.0.1 only).
    #[arg(long)]
    listen: SocketAddr,
    /// Stop after this many seconds even if nobody stops the server.
    #[arg(long, default_value_t = 3_600, value_parser = value_parser!(u64).range(1..=86_400))]
    max_secs: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(command) = cli.command else {
        // `cargo test --benches` runs this with no arguments: there is nothing to measure then.
        eprintln!("loadgen: nothing to do; see `cargo bench --bench loadgen -- --help`");
        return if cli.bench { ExitCode::from(2) } else { ExitCode::SUCCESS };
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Command::Load(args) = &command {
        runtime.worker_threads(args.threads as usize);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("loadgen: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match command {
            Command::Load(args) => load(args).await,
            Command::Noop(args) => noop(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn loopback_only(addr: SocketAddr) -> Result<(), String> {
    if addr.ip() == Ipv4Addr::LOCALHOST { Ok(()) } else { Err(format!("{addr}: only 127.0.0.1 is allowed")) }
}

// ---------------------------------------------------------------------------------------------
// The no-op server

#[derive(Debug)]
struct Noop;

#[tonic::async_trait]
impl RateLimiter for Noop {
    async fn check(
        &self,
        request: tonic::Request<pb::CheckRequest>,
    ) -> Result<tonic::Response<pb::CheckResponse>, tonic::Status> {
        let entries = request.get_ref().requests.len();
        let decisions = (0..entries).map(|_| pb::Decision { allowed: true, ..Default::default() }).collect();
        Ok(tonic::Response::new(pb::CheckResponse { decisions }))
    }

    async fn report(
        &self,
        _request: tonic::Request<pb::ReportRequest>,
    ) -> Result<tonic::Response<pb::ReportResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::ReportResponse::default()))
    }
}

/// Drops the spans it is sent, counting them.
#[derive(Debug, Default, Clone)]
struct SpanSink(Arc<AtomicU64>);

#[tonic::async_trait]
impl TraceService for SpanSink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans =
            request.get_ref().resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len());
        self.0.fetch_add(spans.sum::<usize>() as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

async fn noop(args: NoopArgs) -> Result<(), String> {
    loopback_only(args.listen)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot watch SIGTERM: {e}"))?;
    let max = Duration::from_secs(args.max_secs);
    let stop = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
            _ = tokio::time::sleep(max) => eprintln!("loadgen noop: stopping after {} s", max.as_secs()),
        }
    };
    // The same transport settings as Sluice's own server, so the comparison is of the work done.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let sink = SpanSink::default();
    let served = Server::builder()
        .add_service(RateLimiterServer::new(Noop))
        .add_service(TraceServiceServer::new(sink.clone()))
        .serve_with_incoming_shutdown(incoming, stop)
        .await
        .map_err(|e| format!("serving: {e}"));
    eprintln!("loadgen noop: {} spans received", sink.0.load(Ordering::Relaxed));
    served
}

// ---------------------------------------------------------------------------------------------
// The load

/// What one task saw.
struct Tally {
    /// Latency of each counted call, in µs.
    latency: Histogram<u64>,
    denied: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant bounds are valid"),
            denied: 0,
            errors: 0,
            first_error: None,
        }
    }

    fn error(&mut self, message: impl FnOnce() -> String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(message());
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latency.add(&other.latency).expect("histograms of the same bounds add up");
        self.denied += other.denied;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// The instants one run is cut into.
#[derive(Clone, Copy)]
struct Schedule {
    measure_from: Instant,
    measure_until: Instant,
    call_timeout: Duration,
}

async fn connect(addr: SocketAddr) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("bad address {addr}: {e}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(1));
    let give_up = Instant::now() + CONNECT_PATIENCE;
    loop {
        // Each `connect` opens a connection of its own.
        match endpoint.connect().await {
            Ok(channel) => return Ok(channel),
            Err(e) if Instant::now() >= give_up => {
                return Err(format!("cannot connect to {addr}: {e}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The ip of key number `key`: 10.0.0.0 upwards, 16.7 million to a first octet.
fn ip_of(key: u64) -> String {
    format!("{}.{}.{}.{}", 10 + (key >> 24), (key >> 16) & 0xff, (key >> 8) & 0xff, key & 0xff)
}

fn request_for(key: u64) -> pb::CheckRequest {
    let ip = ip_of(key);
    pb::CheckRequest {
        requests: vec![pb::RateRequest {
            attributes: Some(pb::Attributes { ip, ..Default::default() }),
            cost: None,
            tiers: Vec::new(),
        }],
        dry_run: false,
    }
}

/// One of the two APIs, and the deadline to send; requests are built per call from a key number.
#[derive(Clone)]
enum Caller {
    Native(RateLimiterClient<Channel>, Option<Duration>),
    Envoy(RateLimitServiceClient<Channel>, Arc<str>, Option<Duration>),
}

fn with_deadline<T>(message: T, deadline: Option<Duration>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(deadline) = deadline {
        request.set_timeout(deadline);
    }
    request
}

impl Caller {
    /// Whether the call was allowed; `Err` with a message when it failed.
    async fn call(&mut self, key: u64) -> Result<bool, String> {
        match self {
            Caller::Native(client, deadline) => {
                match client.check(with_deadline(request_for(key), *deadline)).await {
                    Ok(r) => {
                        let d = r.into_inner().decisions;
                        Ok(!d.is_empty() && d.iter().all(|d| d.allowed))
                    }
                    Err(status) => Err(format!("{:?}: {}", status.code(), status.message())),
                }
            }
            Caller::Envoy(client, domain, deadline) => {
                match client.should_rate_limit(with_deadline(envoy_request_for(domain, key), *deadline)).await
                {
                    Ok(r) => Ok(r.into_inner().overall_code == 1),
                    Err(status) => Err(format!("{:?}: {}", status.code(), status.message())),
                }
            }
        }
    }
}

/// Which key each call asks about.
#[derive(Clone)]
enum Keys {
    /// Cycle through this many, task w starting at w and striding by the concurrency.
    Cycle(u64),
    /// A new key every `.1` calls.
    Fresh(Arc<std::sync::atomic::AtomicU64>, u64),
}

impl Keys {
    fn next(&self, cursor: &mut u64, stride: u64) -> u64 {
        match self {
            Keys::Cycle(n) => {
                let key = *cursor % n;
                *cursor = (*cursor + stride) % n;
                key
            }
            Keys::Fresh(counter, repeat) => {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed) / repeat
            }
        }
    }
}

fn envoy_request_for(domain: &str, key: u64) -> RateLimitRequest {
    let ip = ip_of(key);
    RateLimitRequest {
        domain: domain.to_owned(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![rate_limit_descriptor::Entry { key: "remote_address".into(), value: ip }],
            ..Default::default()
        }],
        hits_addend: 1,
    }
}

async fn task(
    mut caller: Caller,
    keys: Keys,
    first: u64,
    stride: u64,
    max_calls: u64,
    schedule: Schedule,
) -> Tally {
    let mut tally = Tally::new();
    let mut cursor = first;
    for _ in 0..max_calls {
        let sent = Instant::now();
        if sent >= schedule.measure_until || tally.errors >= MAX_ERRORS_PER_TASK {
            break;
        }
        let key = keys.next(&mut cursor, stride);
        let answer = tokio::time::timeout(schedule.call_timeout, caller.call(key)).await;
        record(&mut tally, sent, answer, schedule);
    }
    tally
}

/// Counts one answer, if its call started in the measured window.
fn record(
    tally: &mut Tally,
    sent: Instant,
    answer: Result<Result<bool, String>, tokio::time::error::Elapsed>,
    schedule: Schedule,
) {
    let took = sent.elapsed();
    let allowed = match answer {
        Ok(Ok(allowed)) => allowed,
        Ok(Err(message)) => return tally.error(|| message),
        Err(_) => {
            return tally.error(|| format!("no answer within {} ms", schedule.call_timeout.as_millis()));
        }
    };
    if sent < schedule.measure_from {
        return;
    }
    tally.latency.saturating_record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1));
    if !allowed {
        tally.denied += 1;
    }
}

/// Open loop: call n is due at n / rate seconds from the start. `workers` tasks take the next due
/// call, wait for its instant, and make it; a call that is already `late` (every worker was busy)
/// is skipped and counted as unsent rather than sent late, so the offered rate is what the server
/// sees, not a client's backlog. Returns the merged tally and the unsent count.
async fn open_loop(
    callers: Vec<Caller>,
    keys: Keys,
    rate: u64,
    workers: usize,
    schedule: Schedule,
) -> (Tally, u64) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let next = Arc::new(AtomicU64::new(0));
    let unsent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let late = schedule.call_timeout.min(Duration::from_millis(100));
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (next, unsent, keys) = (Arc::clone(&next), Arc::clone(&unsent), keys.clone());
            let mut caller = callers[w % callers.len()].clone();
            tokio::spawn(async move {
                let mut tally = Tally::new();
                let mut cursor = w as u64;
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let due = started + Duration::from_nanos(n.saturating_mul(1_000_000_000) / rate);
                    if due >= schedule.measure_until {
                        return tally;
                    }
                    if Instant::now() > due + late {
                        unsent.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    tokio::time::sleep_until(due).await;
                    let key = keys.next(&mut cursor, workers as u64);
                    let sent = Instant::now();
                    let answer = tokio::time::timeout(schedule.call_timeout, caller.call(key)).await;
                    record(&mut tally, sent, answer, schedule);
                }
            })
        })
        .collect();
    let mut total = Tally::new();
    for task in tasks {
        if let Ok(tally) = task.await {
            total.merge(tally);
        }
    }
    (total, unsent.load(Ordering::Relaxed))
}

async fn load(args: LoadArgs) -> Result<(), String> {
    loopback_only(args.addr)?;
    let concurrency = args.concurrency as usize;
    let connections = args.connections.unwrap_or(args.concurrency.min(4)).min(args.concurrency) as usize;
    let ticks_per_sec = clock_ticks_per_sec();

    let mut callers = Vec::with_capacity(connections);
    for _ in 0..connections {
        let channel = connect(args.addr).await?;
        let deadline = args.deadline_ms.map(Duration::from_millis);
        callers.push(match &args.envoy_domain {
            Some(domain) => {
                Caller::Envoy(RateLimitServiceClient::new(channel), Arc::from(domain.as_str()), deadline)
            }
            None => Caller::Native(RateLimiterClient::new(channel), deadline),
        });
    }
    let keys = if args.distinct {
        Keys::Fresh(Arc::default(), args.repeat)
    } else {
        Keys::Cycle(u64::from(args.keys))
    };

    let measure_from = Instant::now() + Duration::from_secs(args.warmup_secs);
    let schedule = Schedule {
        measure_from,
        measure_until: measure_from + Duration::from_secs(args.secs),
        call_timeout: Duration::from_millis(args.call_timeout_ms),
    };
    let calls_per_task = (args.max_calls / args.concurrency as u64).max(1);
    let running = match args.rate {
        Some(rate) => tokio::spawn(open_loop(callers, keys, rate, concurrency, schedule)),
        None => {
            let tasks: Vec<_> = (0..concurrency)
                .map(|w| {
                    let caller = callers[w % connections].clone();
                    tokio::spawn(task(
                        caller,
                        keys.clone(),
                        w as u64,
                        concurrency as u64,
                        calls_per_task,
                        schedule,
                    ))
                })
                .collect();
            tokio::spawn(async move {
                let mut total = Tally::new();
                for handle in tasks {
                    if let Ok(tally) = handle.await {
                        total.merge(tally);
                    }
                }
                (total, 0)
            })
        }
    };

    let mut running = running;
    let mut finished = None;
    tokio::select! {
        _ = tokio::time::sleep_until(schedule.measure_from) => {}
        done = &mut running => finished = Some(done),
    }
    let cpu_before = Cpu::read(args.pid, args.redis_pid)?;
    let window_started = Instant::now();
    // The window ends at `--secs`, or earlier when `--max-calls` have all been made.
    if finished.is_none() {
        tokio::select! {
            _ = tokio::time::sleep_until(schedule.measure_until) => {}
            done = &mut running => finished = Some(done),
        }
    }
    let cpu_after = Cpu::read(args.pid, args.redis_pid)?;
    let window = window_started.elapsed();
    let done = match finished {
        Some(done) => done,
        None => running.await,
    };
    let (total, unsent) = done.map_err(|e| format!("the load failed: {e}"))?;

    let decisions = total.latency.len();
    let count_per_decision = |before: Option<u64>, after: Option<u64>| match (before, after) {
        (Some(b), Some(a)) if decisions > 0 => {
            format!("{:.2}", a.saturating_sub(b) as f64 / decisions as f64)
        }
        _ => "-".to_owned(),
    };
    let per_decision = |before: Option<u64>, after: Option<u64>| match (before, after) {
        (Some(b), Some(a)) if decisions > 0 => {
            let us = (a.saturating_sub(b)) as f64 * 1e6 / ticks_per_sec as f64;
            format!("{:.1}", us / decisions as f64)
        }
        _ => "-".to_owned(),
    };
    let percentile = |q: f64| {
        if decisions > 0 { total.latency.value_at_quantile(q).to_string() } else { "-".to_owned() }
    };
    println!(
        "target={} c={} keys={} rate={} conns={} secs={:.2} decisions={} rps={:.0} p50_us={} p99_us={} p999_us={} max_us={} \
         denied={} errors={} unsent={unsent} cpu_us_per_decision={} redis_cpu_us_per_decision={} client_cpu_us_per_decision={} \
         writes_per_decision={} switches_per_decision={}",
        args.target,
        args.concurrency,
        if args.distinct { "distinct".to_owned() } else { args.keys.to_string() },
        args.rate.map_or("closed".to_owned(), |r| r.to_string()),
        connections,
        window.as_secs_f64(),
        decisions,
        decisions as f64 / window.as_secs_f64(),
        percentile(0.5),
        percentile(0.99),
        percentile(0.999),
        if decisions > 0 { total.latency.max().to_string() } else { "-".to_owned() },
        total.denied,
        total.errors,
        per_decision(cpu_before.server, cpu_after.server),
        per_decision(cpu_before.redis, cpu_after.redis),
        per_decision(Some(cpu_before.client), Some(cpu_after.client)),
        count_per_decision(cpu_before.server_writes, cpu_after.server_writes),
        count_per_decision(cpu_before.server_switches, cpu_after.server_switches),
    );
    if let Some(error) = total.first_error {
        return Err(format!("{} calls failed; the first: {error}", total.errors));
    }
    if decisions == 0 {
        return Err("no call completed in the measured window".into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// CPU time from /proc

/// Clock ticks (utime + stime) consumed so far by each process watched, and the server's write
/// system calls and context switches (`None` where /proc does not show them).
struct Cpu {
    server: Option<u64>,
    redis: Option<u64>,
    client: u64,
    server_writes: Option<u64>,
    server_switches: Option<u64>,
}

impl Cpu {
    fn read(server: Option<u32>, redis: Option<u32>) -> Result<Cpu, String> {
        Ok(Cpu {
            server: server.map(cpu_ticks).transpose()?,
            redis: redis.map(cpu_ticks).transpose()?,
            client: cpu_ticks(std::process::id())?,
            server_writes: server.and_then(write_calls),
            server_switches: server.and_then(context_switches),
        })
    }
}

/// `syscw` of /proc/PID/io: the write system calls `pid` has made (its own user or root may read it).
fn write_calls(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines().find_map(|line| line.strip_prefix("syscw:")?.trim().parse().ok())
}

/// The context switches of every thread of `pid`, voluntary and not, from /proc/PID/task/*/status.
/// Threads that ended in between take theirs with them, which a server's fixed pool does not do.
fn context_switches(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut switches = 0;
    for task in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else { continue };
        switches += status
            .lines()
            .filter(|l| {
                l.starts_with("voluntary_ctxt_switches:") || l.starts_with("nonvoluntary_ctxt_switches:")
            })
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    Some(switches)
}

/// utime + stime of every thread of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    // The command name (field 2) is in parentheses and may itself hold spaces or parentheses: the
    // fields counted here start after the last ')', with field 3 (state).
    let rest = stat.rfind(')').map(|at| &stat[at + 1..]).ok_or_else(|| format!("{path}: no command name"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<u64, String> {
        fields
            .get(n - 3)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{path}: field {n} is not a number"))
    };
    Ok(field(14)? + field(15)?)
}

/// `getconf CLK_TCK`, which is 100 on every Linux this runs on in practice.
fn clock_ticks_per_sec() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .filter(|&ticks| ticks > 0)
        .unwrap_or(100)
}
