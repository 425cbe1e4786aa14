//! The differential test: a long random sequence of requests, decided by the in-process store and
//! by lua/decide.lua in a real Redis at the same instants, must get the same answers throughout.
//! The requests are hostile too: costs of 0, the limit, past it and `u64::MAX`, the same key twice
//! in one request, and long silences with the in-process store swept meanwhile (a key it forgets
//! must be one whose state no longer matters, as Redis's TTLs say).

mod common;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sluice::algorithm::adaptive::Adaptive;
use sluice::algorithm::baseline::Baseline;
use sluice::algorithm::penalty::Penalty;
use sluice::algorithm::{Algorithm, Quota};
use sluice::check::{AdaptiveCheck, Check, Counts, Failure, FailureMode, Mode};
use sluice::store::local::LocalStore;

const PENALTY: Penalty = Penalty { violations: 3, period_ms: 2_000, base_ms: 500, factor: 3, max_ms: 4_000 };

#[tokio::test]
async fn lua_and_rust_agree_over_a_long_random_run() {
    let server = common::RedisServer::start();
    let redis = server.store().await;
    let local = LocalStore::default();

    // A few tiers over a few keys, so counts collide and windows roll over many times.
    let tiers = [
        (Algorithm::SlidingWindow, 5, 1_000),
        (Algorithm::SlidingWindow, 20, 3_000),
        (Algorithm::SlidingLog, 4, 700),
        (Algorithm::SlidingLog, 9, 2_500),
        (Algorithm::FixedWindow, 6, 1_500),
        // No options: alone in a request, it takes decide.lua's short path (decide_plain).
        (Algorithm::SlidingWindow, 7, 1_200),
    ];
    let seed = 0x5eed_u64;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut now: u64 = 1_000_000_000;
    let mut allowed = 0;
    let steps = 4_000;
    for step in 0..steps {
        now += match rng.random_range(0..40) {
            // A long silence: past the baselines' and penalties' memory, or just short of it.
            0 => rng.random_range(3_000..80_000),
            1..=4 => rng.random_range(500..4_000),
            5..=14 => 0,
            _ => rng.random_range(1..120),
        };
        let n_checks = rng.random_range(1..=3);
        let mut picked: Vec<usize> = (0..tiers.len()).collect();
        for i in 0..n_checks {
            let j = rng.random_range(i..tiers.len());
            picked.swap(i, j);
        }
        let mut checks: Vec<Check> = picked[..n_checks]
            .iter()
            .map(|&t| {
                let (algorithm, limit, window_ms) = tiers[t];
                let key = rng.random_range(0..3);
                Check {
                    key: format!("sluice:{{t{t}:k{key}}}"),
                    algorithm,
                    quota: Quota { limit, window_ms, cost: hostile_cost(&mut rng, limit) },
                    shadow: rng.random_range(0..8) == 0,
                    quota_mode: rng.random_range(0..6) == 0,
                    on_failure: FailureMode::Local,
                    // Every tier-key of tier 1 has a penalty (so the same keys always carry it).
                    penalty: (t == 1).then_some(PENALTY),
                    // Tier 3 counts reported failures only: its checks never consume.
                    // Tier 0's key k0 counts every request, denied or not.
                    counts: match (t, key) {
                        (3, _) => Counts::Failures,
                        (0, 0) | (4, 1) | (5, 2) => Counts::Everything,
                        _ => Counts::Requests,
                    },
                    // Tier 0 keeps a baseline.
                    baseline: (t == 0).then_some(Baseline { sensitivity_percent: 150, max_percent: 300 }),
                    // A third of the checks adapt: attempts, reported failures and client factors.
                    adaptive: (rng.random_range(0..3) == 0).then(|| AdaptiveCheck {
                        settings: Adaptive { burst_multiple: 1, failed_logins: 2, ..Adaptive::default() },
                        client_factors: rng.random_range(0..8),
                        reputation: Vec::new().into(),
                    }),
                }
            })
            .collect();
        if rng.random_range(0..10) == 0 {
            // The same key again in the same request, with a cost of its own.
            let mut again = checks[rng.random_range(0..checks.len())].clone();
            again.quota.cost = hostile_cost(&mut rng, again.quota.limit);
            checks.insert(rng.random_range(0..=checks.len()), again);
        }
        if rng.random_range(0..25) == 0 {
            local.sweep(now);
        }
        if rng.random_range(0..20) == 0 {
            let (t, key) = (rng.random_range(0..tiers.len()), rng.random_range(0..3));
            let failure = [Failure {
                key: format!("sluice:{{t{t}:k{key}}}"),
                window_ms: tiers[t].2,
                adaptive: rng.random_range(0..2) == 0,
                penalty: Some(PENALTY),
            }];
            local.report_failures_at(&failure, now);
            redis.report_failures_at(&failure, now).await.expect("report");
        }
        let mode = if rng.random_range(0..10) == 0 { Mode::DryRun } else { Mode::Consume };
        let expected = local.decide_at(&checks, mode, now);
        let got = redis.decide_at(&checks, mode, now).await.expect("redis decision");
        assert_eq!(
            (got.admitted, &got.verdicts),
            (expected.admitted, &expected.verdicts),
            "step {step} (seed {seed:#x}) at {now}: {checks:?}"
        );
        allowed += usize::from(got.admitted);
    }
    // The run must exercise both answers, or it proves little.
    assert!(allowed > steps / 5 && allowed < steps * 4 / 5, "admitted {allowed} of {steps}");
}

/// Mostly small costs, sometimes one at a boundary a client can pick: 0 (a look), the limit, one
/// past it, or the type's maximum.
fn hostile_cost(rng: &mut StdRng, limit: u64) -> u64 {
    match rng.random_range(0..20) {
        0 => 0,
        1 => limit,
        2 => limit + 1,
        3 => u64::MAX,
        _ => rng.random_range(1..=limit.min(3)),
    }
}

/// A look (cost 0) changes nothing in Redis, on either window algorithm and either way of
/// counting, alone in its request (decide.lua's short path) or beside another check: it creates
/// no key, and it does not move a window its key holds, even one long over.
#[tokio::test]
async fn a_look_writes_nothing() {
    let server = common::RedisServer::start();
    let redis = server.store().await;
    let now: u64 = 1_000_000_000;
    let mut case = 0;
    for algorithm in [Algorithm::SlidingWindow, Algorithm::FixedWindow] {
        for counts in [Counts::Requests, Counts::Everything] {
            for beside in [false, true] {
                case += 1;
                let check = |key: &str, cost| Check {
                    counts,
                    ..Check::plain(
                        key.to_owned(),
                        algorithm,
                        Quota { limit: 5, window_ms: 60_000, cost },
                        FailureMode::Local,
                    )
                };
                let mut checks = vec![check(&format!("sluice:{{look{case}}}"), 0)];
                if beside {
                    checks.push(check(&format!("sluice:{{look{case}}}:other"), 0));
                }
                let answer = redis.decide_at(&checks, Mode::Consume, now).await.expect("a look");
                assert!(answer.admitted, "case {case}");
                let keys: Vec<String> = server.cmd(redis::cmd("KEYS").arg("*"));
                assert!(keys.is_empty(), "case {case}: a look at fresh keys made {keys:?}");

                // A unit counted, then a look three windows later, when the count no longer
                // matters but the key still holds it.
                checks.iter_mut().for_each(|c| c.quota.cost = 1);
                redis.decide_at(&checks, Mode::Consume, now).await.expect("a unit");
                let before: Vec<Vec<(String, String)>> = checks
                    .iter()
                    .map(|c| {
                        server.cmd(redis::cmd("HGETALL").arg(format!("{}:{}", c.key, suffix(algorithm))))
                    })
                    .collect();
                assert!(before.iter().all(|h| !h.is_empty()), "case {case}: {before:?}");
                checks.iter_mut().for_each(|c| c.quota.cost = 0);
                redis.decide_at(&checks, Mode::Consume, now + 150_000).await.expect("a later look");
                let after: Vec<Vec<(String, String)>> = checks
                    .iter()
                    .map(|c| {
                        server.cmd(redis::cmd("HGETALL").arg(format!("{}:{}", c.key, suffix(algorithm))))
                    })
                    .collect();
                assert_eq!(after, before, "case {case}: a look moved the window");
                server.cmd::<()>(&mut redis::cmd("FLUSHALL"));
            }
        }
    }
}

/// Where an algorithm keeps a tier-key's window.
fn suffix(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::SlidingWindow => "sw",
        Algorithm::FixedWindow => "fw",
        Algorithm::SlidingLog => "log",
    }
}
