//! The in-process hot path without any I/O: one algorithm step, and a whole `LocalStore` decision.
//!
//! `cargo bench --bench algorithms`. Quotas are far above the rates reached here, so every request
//! is admitted and consumes: the common case, and the one that writes.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use sluice::algorithm::sliding_log::Log;
use sluice::algorithm::sliding_window::{self, Window};
use sluice::algorithm::{Algorithm, Quota};
use sluice::check::{Check, FailureMode, Mode};
use sluice::store::local::LocalStore;

const KEYS: usize = 1000;

fn sliding_window(c: &mut Criterion) {
    let q = Quota { limit: 1_000, window_ms: 60_000, cost: 1 };
    let state = Window { start_ms: 120_000, current: 300, previous: 400 };
    c.bench_function("sliding_window/check", |b| {
        b.iter(|| sliding_window::check(black_box(state), black_box(150_000), black_box(q)))
    });
}

fn sliding_log(c: &mut Criterion) {
    // One request every 10 ms against a 1 s window: about 100 entries live, one leaves per step.
    let q = Quota { limit: 200, window_ms: 1_000, cost: 1 };
    let mut log = Log::default();
    let mut now = 0u64;
    c.bench_function("sliding_log/trim_check_commit", |b| {
        b.iter(|| {
            now += 10;
            log.trim(now, q.window_ms);
            let verdict = log.check(black_box(now), q);
            if verdict.allowed {
                log.commit(now, q.cost);
            }
            verdict
        })
    });
}

/// One request's checks for each of `KEYS` clients: `tiers` sliding-window tiers keyed by ip.
fn requests(tiers: &[&str]) -> Vec<Vec<Check>> {
    let quota = Quota { limit: 100_000_000, window_ms: 1_000, cost: 1 };
    (0..KEYS)
        .map(|i| {
            tiers
                .iter()
                .map(|tier| {
                    let key = format!("sluice:{{{tier}:10.0.{}.{}}}", i / 256, i % 256);
                    Check::plain(key, Algorithm::SlidingWindow, quota, FailureMode::Local)
                })
                .collect()
        })
        .collect()
}

fn local_store(c: &mut Criterion) {
    let mut group = c.benchmark_group("local_store/decide_at");
    for (name, tiers) in
        [("1_check", &["edge_ip"][..]), ("3_checks", &["edge_ip", "burst_ip", "daily_ip"][..])]
    {
        let store = LocalStore::default();
        let requests = requests(tiers);
        let mut n = 0usize;
        group.bench_function(format!("{name}/{KEYS}_keys"), |b| {
            b.iter(|| {
                n += 1;
                // The clock advances 1 ms every 64 requests, so windows roll over now and then.
                let now = 1_000_000 + (n / 64) as u64;
                store.decide_at(&requests[n % KEYS], Mode::Consume, black_box(now))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, sliding_window, sliding_log, local_store);
criterion_main!(benches);
