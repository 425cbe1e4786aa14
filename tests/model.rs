//! Model-based tests: random hostile sequences of requests, decided by Sluice and by a plain model of
//! the documented semantics, must get the same answers.
//!
//! The contract the model holds Sluice to:
//!
//! 1. A request is admitted only if every enforcing (non-shadow) check allows; then every check
//!    consumes its cost (a shadow check only if it allows itself). A denied request consumes
//!    nothing, except checks that count denied requests (`count_denied` tiers, and Envoy
//!    sliding-window descriptors when the domain counts denied hits): they count every request that
//!    is not a dry run.
//! 2. Checks on one key within one request (identical Envoy descriptors, values under one shared
//!    wildcard, an override on the same entries) that count denied requests are decided in
//!    order, each counted before the next is looked at and each against its own limit, as
//!    envoyproxy/ratelimit counts them. Other repeats are one check costing the saturating sum at
//!    the strictest limit; each duplicate gets its status.
//! 3. Client numbers never wrap. Native: cost 0, or a cost above a matching tier's limit, is
//!    INVALID_ARGUMENT naming `cost`, and nothing of the call is counted. Envoy: a request's
//!    hits_addend 0 means 1; a descriptor's hits_addend 0 only looks (consumes nothing, and a full
//!    key is OK with 0 remaining); hits above a descriptor's limit are OVER_LIMIT and, where denied
//!    hits count, counted saturating.
//! 4. Retry-after is the shortest wait after which the same request passes if nothing else
//!    happens (unless it never can); with a penalty, the longest of the block and the window.
//! 5. Envoy limit overrides on the same entries share a counter when their units agree, each
//!    compared with its own rate; different units never share one.
//! 6. Adaptive: effective limit = floor(limit × (10000 − score × reduction_percent) / 10000), at
//!    least 1 and never below the request's cost.
//! 7. Redis down, failure mode `local`: token buckets of max(1, limit / replicas) per window; a
//!    cost above that share passes when the bucket is full, leaving it in debt; retry-after says when.
//! 8. A native batch larger than `server.max_in_flight` is decided by the store, entry by entry.
//!
//! The model (module `model`) is an independent reimplementation: no arithmetic from src/. Over
//! gRPC the clock is real, so the API test uses windows of an hour and more and treats every step
//! as one instant; the store tests pass explicit instants, roll windows, sweep, and wait out every
//! retry-after. The over-limit cache is off on the API servers (tests/over_limit.rs covers it): it
//! answers with fewer statuses by design. Where the contract leaves a number open (what a check of
//! a denied request reports as remaining, the retry-after of a request that can never pass), the
//! model accepts each reading.
//!
//! Tests: `both_apis_on_both_stores_follow_the_model` (sluice.v1 Check and ShouldRateLimit on the
//! in-process store and on Redis), `stores_at_fixed_instants_follow_the_model` (LocalStore and
//! RedisStore, retry-after waited out), `fallback_buckets_follow_the_model` (fair share) and
//! `hostile_calls_never_hold_up_others` (liveness).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{RedisServer, SluiceServer};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{RateLimitDescriptor, rate_limit_descriptor};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::UInt64Value;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestCaseResult, TestRunner};
use sluice::algorithm::adaptive::{Adaptive, Weights};
use sluice::algorithm::penalty::Penalty;
use sluice::algorithm::{Algorithm, Quota};
use sluice::api::pb;
use sluice::api::pb::rate_limiter_client::RateLimiterClient;
use sluice::check::{AdaptiveCheck, Answer, Check, Counts, FailureMode, Mode, Source};
use sluice::store::local::{Counting, LocalStore};
use sluice::store::redis::RedisStore;
use tonic::transport::Channel;

/// Cases per test, chosen so that the file runs in about a minute in a debug build.
const API_CASES: u32 = 450;
const STORE_CASES: u32 = 1200;
const BUCKET_CASES: u32 = 2000;

/// Synthetic instants start far from 0 (0 would mean "Redis TIME").
const T0: u64 = 1_000_000_000;

/// The plain model of the contract. Knows nothing of Sluice's types.
mod model {
    use std::collections::HashMap;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Algo {
        Window,
        Log,
        /// envoyproxy/ratelimit's fixed window: one count per window aligned to the epoch.
        Fixed,
    }

    #[derive(Clone, Copy, Debug)]
    pub struct PenaltySpec {
        pub violations: u64,
        pub period: u64,
        pub base: u64,
        pub factor: u64,
        pub max: u64,
    }

    /// Weights of the client-side factors (bits 1: user agent, 2: parameters, 4: deny range) and
    /// the reduction in percent.
    #[derive(Clone, Copy, Debug)]
    pub struct AdaptiveSpec {
        pub weights: [u64; 3],
        pub reduction: u64,
    }

    #[derive(Clone, Copy, Debug)]
    pub struct Spec {
        pub algo: Algo,
        pub limit: u64,
        pub window: u64,
        pub shadow: bool,
        /// Counts every request that is not a dry run, denied or not.
        pub everything: bool,
        /// One of the request's quotas: it denies only when every quota of the request is over.
        pub quota: bool,
        pub penalty: Option<PenaltySpec>,
        pub adaptive: Option<AdaptiveSpec>,
    }

    impl Spec {
        pub const fn window(limit: u64, window: u64) -> Spec {
            Spec {
                algo: Algo::Window,
                limit,
                window,
                shadow: false,
                everything: false,
                quota: false,
                penalty: None,
                adaptive: None,
            }
        }

        pub const fn log(limit: u64, window: u64) -> Spec {
            Spec { algo: Algo::Log, ..Spec::window(limit, window) }
        }

        pub const fn fixed(limit: u64, window: u64) -> Spec {
            Spec { algo: Algo::Fixed, ..Spec::window(limit, window) }
        }
    }

    #[derive(Clone, Debug)]
    pub struct Check {
        pub key: String,
        pub spec: Spec,
        pub cost: u64,
        pub factors: u8,
    }

    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Verdict {
        pub allowed: bool,
        /// Units left: after this request when it allows, now when it denies.
        pub remaining: u64,
        /// A second answer the contract leaves open: what a check of a denied request reports
        /// (left now, or after a consumption that did or did not happen).
        pub remaining_or: Option<u64>,
        /// The shortest wait for this check alone; `None` when the contract pins no value (never
        /// passes, or a check that counts denied requests, whose wait shows in the request's).
        pub retry: Option<u64>,
        pub limit: u64,
        pub score: u64,
    }

    impl Verdict {
        pub fn remaining_ok(&self, got: u64) -> bool {
            got == self.remaining || self.remaining_or == Some(got)
        }
    }

    #[derive(Clone, Debug)]
    pub struct Outcome {
        pub admitted: bool,
        pub verdicts: Vec<Verdict>,
        /// The shortest wait after which the same request passes (0 when admitted); `None`: never.
        pub wait: Option<u64>,
    }

    /// A sliding window counter: the current fixed window's start, its count and the previous one's.
    #[derive(Clone, Copy, Debug, Default)]
    struct Window {
        start: u64,
        current: u64,
        previous: u64,
    }

    impl Window {
        fn at(self, now: u64, w: u64) -> Window {
            let start = now - now % w;
            if self.start == start {
                self
            } else if self.start + w == start {
                Window { start, current: 0, previous: self.current }
            } else {
                Window { start, current: 0, previous: 0 }
            }
        }

        /// The estimate scaled by the window: previous × (W − elapsed) + current × W.
        fn scaled(self, now: u64, w: u64) -> u128 {
            let s = self.at(now, w);
            let elapsed = u128::from(now - s.start);
            u128::from(s.previous) * (u128::from(w) - elapsed) + u128::from(s.current) * u128::from(w)
        }
    }

    #[derive(Clone, Debug)]
    enum State {
        Window(Window),
        /// One instant per unit consumed.
        Log(Vec<u64>),
        /// The counted window's start and its count.
        Fixed(u64, u64),
    }

    impl State {
        fn fresh(algo: Algo) -> State {
            match algo {
                Algo::Window => State::Window(Window::default()),
                Algo::Log => State::Log(Vec::new()),
                Algo::Fixed => State::Fixed(0, 0),
            }
        }

        /// Used units scaled by W (the log's count times W), so both compare alike.
        fn scaled(&self, now: u64, w: u64) -> u128 {
            match self {
                State::Window(s) => s.scaled(now, w),
                State::Log(stamps) => stamps.iter().filter(|&&t| t + w > now).count() as u128 * u128::from(w),
                State::Fixed(start, count) if *start == now - now % w => u128::from(*count) * u128::from(w),
                State::Fixed(..) => 0,
            }
        }

        fn passes(&self, now: u64, w: u64, limit: u64, cost: u64) -> bool {
            self.scaled(now, w) + u128::from(cost) * u128::from(w) <= u128::from(limit) * u128::from(w)
        }

        /// Whole units left after consuming `cost` (0 when that would not fit).
        fn left(&self, now: u64, w: u64, limit: u64, cost: u64) -> u64 {
            let capacity = u128::from(limit) * u128::from(w);
            let used = self.scaled(now, w) + u128::from(cost) * u128::from(w);
            u64::try_from(capacity.saturating_sub(used) / u128::from(w)).unwrap_or(u64::MAX)
        }

        /// The shortest wait after which `cost` passes with nothing else happening.
        fn wait(&self, now: u64, w: u64, limit: u64, cost: u64) -> Option<u64> {
            if cost > limit {
                return None;
            }
            // Two windows on, everything consumed until now has left.
            Some(first(0, 2 * w, |t| self.passes(now + t, w, limit, cost)))
        }

        fn add(&mut self, now: u64, w: u64, cost: u64) {
            match self {
                State::Window(s) => {
                    *s = s.at(now, w);
                    s.current = s.current.saturating_add(cost);
                }
                State::Log(stamps) => {
                    let cost = usize::try_from(cost).expect("a log consumes at most its limit");
                    stamps.extend(std::iter::repeat_n(now, cost));
                }
                State::Fixed(start, count) => {
                    let window = now - now % w;
                    if *start != window {
                        (*start, *count) = (window, 0);
                    }
                    *count = count.saturating_add(cost);
                }
            }
        }
    }

    /// The smallest `t` in `lo..=hi` for which `pred` holds, `pred` being monotone and true at `hi`.
    pub fn first(mut lo: u64, mut hi: u64, pred: impl Fn(u64) -> bool) -> u64 {
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if pred(mid) { hi = mid } else { lo = mid + 1 }
        }
        hi
    }

    /// A key's penalty: violations in the current period, when the period restarts, the block's
    /// end and the number of blocks so far.
    #[derive(Clone, Copy, Debug, Default)]
    struct Block {
        violations: u64,
        restart_at: u64,
        until: u64,
        blocks: u32,
    }

    impl Block {
        /// Forgotten `max` after the last block or period ends.
        fn refreshed(self, now: u64, p: PenaltySpec) -> Block {
            if self.restart_at != 0 && now >= self.until.max(self.restart_at) + p.max {
                Block::default()
            } else {
                self
            }
        }

        fn violate(&mut self, now: u64, p: PenaltySpec) {
            if now >= self.restart_at {
                self.violations = 0;
                self.restart_at = now + p.period;
            }
            self.violations += 1;
            if self.violations >= p.violations {
                let length = p.factor.checked_pow(self.blocks).and_then(|f| f.checked_mul(p.base));
                self.until = now + length.map_or(p.max, |l| l.min(p.max));
                self.blocks += 1;
                self.violations = 0;
                self.restart_at = now + p.period;
            }
        }

        fn left(&self, now: u64) -> u64 {
            self.until.saturating_sub(now)
        }
    }

    /// The limit a check applies: shrunk by its threat score, at least 1, never below its cost.
    pub fn effective_limit(c: &Check) -> (u64, u64) {
        let Some(a) = c.spec.adaptive else { return (c.spec.limit, 0) };
        let score: u64 =
            (0..3).filter(|i| c.factors & (1 << i) != 0).map(|i| a.weights[i]).sum::<u64>().min(100);
        let keep = 10_000 - u128::from(score * a.reduction);
        let shrunk = u64::try_from(u128::from(c.spec.limit) * keep / 10_000).unwrap_or(u64::MAX);
        (shrunk.max(1).max(c.cost.min(c.spec.limit)), score)
    }

    /// Every key's counts and penalty state.
    #[derive(Debug, Default)]
    pub struct Store {
        states: HashMap<String, State>,
        blocks: HashMap<String, Block>,
    }

    impl Store {
        fn state(&self, c: &Check) -> State {
            self.states.get(&c.key).cloned().unwrap_or_else(|| State::fresh(c.spec.algo))
        }

        /// The wait of one check given the state now held.
        fn wait_of(&self, c: &Check, limit: u64, now: u64) -> Option<u64> {
            let count = self.state(c).wait(now, c.spec.window, limit, c.cost)?;
            let block = self.blocks.get(&c.key).map_or(0, |b| b.left(now));
            Some(count.max(block))
        }

        pub fn decide(&mut self, checks: &[Check], consume: bool, now: u64) -> Outcome {
            let mut verdicts = Vec::with_capacity(checks.len());
            let mut before = Vec::with_capacity(checks.len());
            for c in checks {
                let (limit, score) = effective_limit(c);
                let w = c.spec.window;
                let state = self.state(c);
                let passes = state.passes(now, w, limit, c.cost);
                let mut blocked = false;
                if let Some(p) = c.spec.penalty {
                    let mut block = self.blocks.get(&c.key).copied().unwrap_or_default().refreshed(now, p);
                    blocked = block.until > now;
                    if !blocked && !passes && consume {
                        block.violate(now, p);
                    }
                    self.blocks.insert(c.key.clone(), block);
                }
                let allowed = passes && !blocked;
                let left_now = state.left(now, w, limit, 0);
                let (remaining, remaining_or) = if blocked {
                    (0, Some(left_now))
                } else if allowed {
                    (state.left(now, w, limit, c.cost), None)
                } else if self.blocks.get(&c.key).is_some_and(|b| b.until > now) {
                    // Blocked by this very denial: what is left is 0, or what the window says.
                    (left_now, Some(0))
                } else {
                    (left_now, None)
                };
                let retry = if allowed { Some(0) } else { self.wait_of(c, limit, now) };
                let retry = if c.spec.everything { None } else { retry };
                verdicts.push(Verdict { allowed, remaining, remaining_or, retry, limit, score });
                if c.spec.everything && consume {
                    // Counted at once: a repeat of the key later in the request sees it.
                    let mut after = state.clone();
                    after.add(now, w, c.cost);
                    self.states.insert(c.key.clone(), after);
                }
                before.push(state);
            }
            let within = |(v, c): (&Verdict, &Check)| v.allowed || c.spec.shadow;
            let quotas = checks.iter().any(|c| c.spec.quota);
            let admitted = verdicts.iter().zip(checks).filter(|(_, c)| !c.spec.quota).all(within)
                && (!quotas || verdicts.iter().zip(checks).filter(|(_, c)| c.spec.quota).any(within));
            if consume {
                for (c, v) in checks.iter().zip(&verdicts) {
                    if !c.spec.everything && admitted && v.allowed {
                        let mut state = self.state(c);
                        state.add(now, c.spec.window, c.cost);
                        self.states.insert(c.key.clone(), state);
                    }
                }
            }
            if !admitted {
                for ((c, v), state) in checks.iter().zip(&mut verdicts).zip(&before) {
                    if v.allowed {
                        v.remaining_or = Some(state.left(now, c.spec.window, v.limit, 0));
                    } else if c.spec.everything {
                        v.remaining_or = Some(self.state(c).left(now, c.spec.window, v.limit, 0));
                    }
                }
            }
            // Every enforcing check must pass, and one of the quotas (none to wait for when one is
            // shadow, since it always counts as within).
            let wait = if admitted {
                Some(0)
            } else {
                let each = checks.iter().zip(&verdicts).filter(|(c, _)| !c.spec.shadow);
                let regular = each
                    .clone()
                    .filter(|(c, _)| !c.spec.quota)
                    .try_fold(0, |most, (c, v)| self.wait_of(c, v.limit, now).map(|w| w.max(most)));
                let quota = if checks.iter().any(|c| c.spec.quota && c.spec.shadow) {
                    Some(0)
                } else {
                    each.filter(|(c, _)| c.spec.quota)
                        .filter_map(|(c, v)| self.wait_of(c, v.limit, now))
                        .min()
                };
                match (regular, quotas) {
                    (Some(r), true) => quota.map(|q| q.max(r)),
                    (r, _) => r,
                }
            };
            Outcome { admitted, verdicts, wait }
        }
    }

    /// The fallback's fair-share token buckets: `share = max(1, limit / replicas)` units per
    /// window, with a full bucket of `share`. Time is counted in 1/share ms so that one unit
    /// refills in exactly `window` of them.
    #[derive(Debug)]
    pub struct Buckets {
        replicas: u64,
        /// When each bucket is full again, in 1/share ms.
        full_at: HashMap<String, u128>,
    }

    #[derive(Clone, Debug)]
    pub struct BucketCheck {
        pub key: String,
        pub limit: u64,
        pub window: u64,
        pub cost: u64,
    }

    impl Buckets {
        pub fn new(replicas: u64) -> Buckets {
            Buckets { replicas, full_at: HashMap::new() }
        }

        pub fn share(&self, limit: u64) -> u64 {
            (limit / self.replicas).max(1)
        }

        fn passes(&self, c: &BucketCheck, now: u64) -> bool {
            let share = u128::from(self.share(c.limit));
            let now = u128::from(now) * share;
            let full_at = self.full_at.get(&c.key).copied().unwrap_or(0);
            let debt = full_at.saturating_sub(now) + u128::from(c.cost) * u128::from(c.window);
            let fits = debt <= share * u128::from(c.window);
            fits || (u128::from(c.cost) > share && full_at <= now)
        }

        /// Whole units left in the bucket, after `cost` when given.
        fn left(&self, c: &BucketCheck, now: u64, cost: u64) -> u64 {
            let share = u128::from(self.share(c.limit));
            let now = u128::from(now) * share;
            let full_at = self.full_at.get(&c.key).copied().unwrap_or(0);
            let debt = full_at.saturating_sub(now) + u128::from(cost) * u128::from(c.window);
            u64::try_from((share * u128::from(c.window)).saturating_sub(debt) / u128::from(c.window))
                .unwrap_or(u64::MAX)
        }

        fn wait(&self, c: &BucketCheck, now: u64) -> u64 {
            let share = u128::from(self.share(c.limit));
            let full_at = self.full_at.get(&c.key).copied().unwrap_or(0);
            let until_full = u64::try_from(full_at.div_ceil(share)).unwrap_or(u64::MAX).saturating_sub(now);
            first(0, until_full + c.window, |t| self.passes(c, now + t))
        }

        pub fn decide(&mut self, checks: &[BucketCheck], consume: bool, now: u64) -> Outcome {
            let verdicts: Vec<Verdict> = checks
                .iter()
                .map(|c| {
                    let allowed = self.passes(c, now);
                    Verdict {
                        allowed,
                        remaining: self.left(c, now, if allowed { c.cost } else { 0 }),
                        remaining_or: None,
                        retry: Some(if allowed { 0 } else { self.wait(c, now) }),
                        limit: self.share(c.limit),
                        score: 0,
                    }
                })
                .collect();
            let admitted = verdicts.iter().all(|v| v.allowed);
            let wait = checks.iter().map(|c| self.wait(c, now)).max().unwrap_or(0);
            if admitted && consume {
                for c in checks {
                    let share = u128::from(self.share(c.limit));
                    let now = u128::from(now) * share;
                    let full_at = self.full_at.get(&c.key).copied().unwrap_or(0).max(now);
                    self.full_at.insert(c.key.clone(), full_at + u128::from(c.cost) * u128::from(c.window));
                }
            }
            let mut verdicts = verdicts;
            if !admitted {
                for (c, v) in checks.iter().zip(&mut verdicts) {
                    if v.allowed {
                        v.remaining_or = Some(self.left(c, now, 0));
                    }
                }
            }
            Outcome { admitted, verdicts, wait: Some(if admitted { 0 } else { wait }) }
        }
    }
}

use model::{AdaptiveSpec, Algo, PenaltySpec, Spec};

/// A fresh suffix for the keys of one case, so that cases never share a counter.
fn fresh() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("m{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        max_shrink_iters: 400,
        max_shrink_time: 60_000,
        failure_persistence: None,
        ..Config::default()
    })
}

fn fail(msg: String) -> TestCaseError {
    TestCaseError::fail(msg)
}

// ---------------------------------------------------------------------------------------------
// The API test: sluice.v1 Check and Envoy's ShouldRateLimit on both stores.
// ---------------------------------------------------------------------------------------------

/// The native tiers, in the config's order: each is keyed by its own free-form attribute, so a
/// request chooses its tiers by the attributes it carries.
struct NativeTier {
    name: &'static str,
    attr: &'static str,
    spec: Spec,
    /// The tier's own `cost`, multiplied by the request's.
    tier_cost: u64,
}

const DAY_MS: u64 = 86_400_000;
const ADAPTIVE: AdaptiveSpec = AdaptiveSpec { weights: [30, 50, 40], reduction: 100 };

fn native_tiers() -> [NativeTier; 6] {
    [
        NativeTier { name: "sw", attr: "a", spec: Spec::window(6, DAY_MS), tier_cost: 1 },
        NativeTier { name: "log", attr: "b", spec: Spec::log(4, DAY_MS), tier_cost: 2 },
        NativeTier {
            name: "shadow",
            attr: "c",
            spec: Spec { shadow: true, ..Spec::window(3, DAY_MS) },
            tier_cost: 1,
        },
        NativeTier {
            name: "cd",
            attr: "d",
            spec: Spec { everything: true, ..Spec::window(5, DAY_MS) },
            tier_cost: 1,
        },
        NativeTier {
            name: "pen",
            attr: "e",
            spec: Spec {
                penalty: Some(PenaltySpec {
                    violations: 2,
                    period: DAY_MS,
                    base: 3_600_000,
                    factor: 2,
                    max: DAY_MS,
                }),
                ..Spec::window(3, DAY_MS)
            },
            tier_cost: 1,
        },
        NativeTier {
            name: "adp",
            attr: "f",
            spec: Spec { adaptive: Some(ADAPTIVE), ..Spec::window(8, DAY_MS) },
            tier_cost: 1,
        },
    ]
}

const TIERS_YAML: &str = "
tiers:
  - name: sw
    key: [a]
    limit: 6
    window: 1d
  - name: log
    key: [b]
    algorithm: sliding_log
    limit: 4
    window: 1d
    cost: 2
  - name: shadow
    key: [c]
    limit: 3
    window: 1d
    shadow: true
  - name: cd
    key: [d]
    limit: 5
    window: 1d
    count_denied: true
  - name: pen
    key: [e]
    limit: 3
    window: 1d
    penalty: {violations: 2, period: 1d, base: 1h, factor: 2, max: 1d}
  - name: adp
    key: [f]
    limit: 8
    window: 1d
    adaptive:
      weights: {user_agent: 30, parameters: 50, deny_range: 40, reputation: 0, burst: 0, failed_logins: 0}
      reduction_percent: 100
";

/// An Envoy domain in envoyproxy/ratelimit's format. Everything per case hangs under a key-only
/// `tenant` (or a key-only top-level key), so fresh values make fresh counters.
const DOMAIN_YAML: &str = "
domain: model
descriptors:
  - key: client
    rate_limit: {unit: day, requests_per_unit: 4}
  - key: tenant
    descriptors:
      - key: file
        value: 'f*'
        share_threshold: true
        rate_limit: {unit: day, requests_per_unit: 5}
      - key: path
        value: 'p*'
        rate_limit: {unit: day, requests_per_unit: 3}
      - key: user
        rate_limit: {unit: day, requests_per_unit: 3}
      - key: user
        value: vip
        rate_limit: {unit: day, requests_per_unit: 6}
      - key: shadow
        shadow_mode: true
        rate_limit: {unit: day, requests_per_unit: 2}
      - key: login
        rate_limit: {unit: day, requests_per_unit: 3}
        sluice: {algorithm: sliding_log}
      - key: free
        rate_limit: {unlimited: true}
      - key: plan
        value: basic
        rate_limit: {unit: hour, requests_per_unit: 2, name: basic}
      - key: plan
        value: gold
        rate_limit: {unit: day, requests_per_unit: 4, replaces: [{name: basic}]}
";

/// Server settings; `max_in_flight` small so that batches go past it, `max_batch` small so that
/// some go past it too.
fn server_yaml(domain_dir: &std::path::Path, redis_url: Option<&str>, bounds: &str) -> String {
    let mut yaml = format!(
        "{bounds}
local:
  over_limit_max_keys: 0
threat:
  deny_ranges: ['203.0.113.0/24']
envoy:
  paths: ['{}']
  headers: none
  count_denied: true
{TIERS_YAML}",
        domain_dir.display()
    );
    if let Some(url) = redis_url {
        yaml.push_str(&format!("redis:\n  url: {url}\n  timeout_ms: 2000\n  probe_interval_ms: 50\n"));
    }
    yaml
}

const API_BOUNDS: &str = "server:\n  max_in_flight: 4\nlimits:\n  max_batch: 40\n";
const MAX_BATCH: usize = 40;

#[derive(Clone)]
struct NativeEntry {
    /// Per tier, the value index of its key attribute, or absent (the tier does not apply).
    values: [Option<u8>; 6],
    cost: Option<u64>,
    short_agent: bool,
    suspicious: bool,
    deny_range: bool,
}

#[derive(Clone, Copy, Debug)]
enum Hits {
    Zero,
    One,
    Two,
    Limit,
    OverLimit,
    Max,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Desc {
    Client(u8),
    /// Under the shared wildcard `f*`: every value is one counter.
    File(u8),
    /// Under the wildcard `p*`: one counter per value.
    Path(u8),
    /// 0 and 1 take the key-only limit, 2 is `vip`.
    User(u8),
    Shadow(u8),
    Login(u8),
    Free,
    /// basic (2 per hour, named) or gold (4 per day, replaces basic).
    Plan(bool),
    /// No limit: an intermediate node, an unknown key, one entry too deep.
    Tenant,
    Unknown,
    TooDeep,
    Override {
        rpu: u32,
        unit: i32,
        v: u8,
    },
}

#[derive(Clone)]
struct EnvoyDesc {
    desc: Desc,
    hits: Option<Hits>,
}

/// Compact, so that a minimal counterexample reads at a glance: `{sw:0 cd:1} cost Some(2) ua`.
impl std::fmt::Debug for NativeEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tiers = native_tiers();
        let keys: Vec<String> = self
            .values
            .iter()
            .zip(&tiers)
            .filter_map(|(v, t)| v.map(|v| format!("{}:{v}", t.name)))
            .collect();
        write!(f, "{{{}}} cost {:?}", keys.join(" "), self.cost)?;
        for (on, factor) in
            [(self.short_agent, "ua"), (self.suspicious, "params"), (self.deny_range, "deny_range")]
        {
            if on {
                write!(f, " {factor}")?;
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for EnvoyDesc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.hits {
            Some(h) => write!(f, "{:?} hits {h:?}", self.desc),
            None => write!(f, "{:?}", self.desc),
        }
    }
}

#[derive(Clone, Debug)]
enum Step {
    /// A `Check` call: `entries` repeated `copies` times.
    Native {
        entries: Vec<NativeEntry>,
        copies: usize,
        dry_run: bool,
    },
    Envoy {
        descriptors: Vec<EnvoyDesc>,
        hits_addend: u32,
    },
}

fn native_cost() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![
        10 => Just(None),
        4 => Just(Some(1)),
        3 => Just(Some(2)),
        2 => Just(Some(3)),
        1 => Just(Some(0)),
        1 => Just(Some(4)),
        1 => Just(Some(7)),
        1 => Just(Some(u64::MAX)),
    ]
}

fn native_entry() -> impl Strategy<Value = NativeEntry> {
    (
        proptest::array::uniform6(proptest::option::weighted(0.4, 0u8..2)),
        native_cost(),
        proptest::bool::weighted(0.25),
        proptest::bool::weighted(0.25),
        proptest::bool::weighted(0.25),
    )
        .prop_map(|(values, cost, short_agent, suspicious, deny_range)| NativeEntry {
            values,
            cost,
            short_agent,
            suspicious,
            deny_range,
        })
}

fn hits() -> impl Strategy<Value = Option<Hits>> {
    prop_oneof![
        8 => Just(None),
        3 => Just(Some(Hits::Zero)),
        2 => Just(Some(Hits::One)),
        1 => Just(Some(Hits::Two)),
        1 => Just(Some(Hits::Limit)),
        1 => Just(Some(Hits::OverLimit)),
        1 => Just(Some(Hits::Max)),
    ]
}

fn desc() -> impl Strategy<Value = Desc> {
    prop_oneof![
        3 => (0u8..2).prop_map(Desc::Client),
        3 => (0u8..3).prop_map(Desc::File),
        1 => (0u8..2).prop_map(Desc::Path),
        2 => (0u8..3).prop_map(Desc::User),
        1 => (0u8..2).prop_map(Desc::Shadow),
        2 => (0u8..2).prop_map(Desc::Login),
        1 => Just(Desc::Free),
        1 => any::<bool>().prop_map(Desc::Plan),
        1 => prop_oneof![Just(Desc::Tenant), Just(Desc::Unknown), Just(Desc::TooDeep)],
        3 => (
            prop_oneof![Just(0u32), Just(1), Just(2), Just(3), Just(5), Just(u32::MAX)],
            // Units of a day and more, so that no window rolls during a case (UNKNOWN too).
            prop_oneof![1 => Just(0i32), 5 => 4i32..=7],
            0u8..2,
        )
            .prop_map(|(rpu, unit, v)| Desc::Override { rpu, unit, v }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let envoy = (
        proptest::collection::vec((desc(), hits()).prop_map(|(desc, hits)| EnvoyDesc { desc, hits }), 1..5),
        proptest::option::weighted(0.3, (any::<proptest::sample::Index>(), hits())),
        prop_oneof![4 => Just(0u32), 4 => Just(1), 1 => Just(2), 1 => Just(3), 1 => Just(u32::MAX)],
    )
        .prop_map(|(mut descriptors, dup, hits_addend)| {
            if let Some((i, hits)) = dup {
                let copy = EnvoyDesc { hits, ..descriptors[i.index(descriptors.len())].clone() };
                descriptors.push(copy);
            }
            Step::Envoy { descriptors, hits_addend }
        });
    prop_oneof![
        6 => (proptest::collection::vec(native_entry(), 1..4), proptest::bool::weighted(0.15))
            .prop_map(|(entries, dry_run)| Step::Native { entries, copies: 1, dry_run }),
        1 => (native_entry(), prop_oneof![3 => 5usize..12, 1 => Just(MAX_BATCH + 1)])
            .prop_map(|(entry, copies)| Step::Native { entries: vec![entry], copies, dry_run: false }),
        6 => envoy,
    ]
}

/// What the model expects of one `Check` call.
#[derive(Debug)]
enum NativeExpected {
    /// INVALID_ARGUMENT naming `requests` (too many).
    Batch,
    /// INVALID_ARGUMENT naming `requests[i].cost` for one of these `i`.
    Cost(Vec<usize>),
    Decisions(Vec<Option<model::Outcome>>),
}

/// The checks of a native entry, in the tiers' order; `None` when its cost is invalid.
fn native_checks(e: &NativeEntry, suffix: &str) -> Option<Vec<model::Check>> {
    let cost = match e.cost {
        Some(0) => return None,
        c => c.unwrap_or(1),
    };
    let factors = u8::from(e.short_agent) | u8::from(e.suspicious) << 1 | u8::from(e.deny_range) << 2;
    let mut checks = Vec::new();
    for (i, t) in native_tiers().into_iter().enumerate() {
        let Some(v) = e.values[i] else { continue };
        let cost = cost.saturating_mul(t.tier_cost);
        if cost > t.spec.limit {
            return None;
        }
        checks.push(model::Check {
            key: format!("native|{}|{v}|{suffix}", t.name),
            spec: t.spec,
            cost,
            factors,
        });
    }
    Some(checks)
}

fn native_expect(
    m: &mut model::Store,
    entries: &[NativeEntry],
    dry_run: bool,
    suffix: &str,
) -> NativeExpected {
    if entries.len() > MAX_BATCH {
        return NativeExpected::Batch;
    }
    let checks: Vec<_> = entries.iter().map(|e| native_checks(e, suffix)).collect();
    let invalid: Vec<usize> =
        checks.iter().enumerate().filter(|(_, c)| c.is_none()).map(|(i, _)| i).collect();
    if !invalid.is_empty() {
        return NativeExpected::Cost(invalid);
    }
    NativeExpected::Decisions(
        checks
            .into_iter()
            .map(|c| {
                let c = c.expect("every entry is valid");
                (!c.is_empty()).then(|| m.decide(&c, !dry_run, T0))
            })
            .collect(),
    )
}

fn native_request(e: &NativeEntry, suffix: &str) -> pb::RateRequest {
    let tiers = native_tiers();
    let extra = e
        .values
        .iter()
        .zip(&tiers)
        .filter_map(|(v, t)| v.map(|v| (t.attr.to_owned(), format!("{}{v}-{suffix}", t.attr))))
        .collect();
    pb::RateRequest {
        attributes: Some(pb::Attributes {
            ip: if e.deny_range { "203.0.113.9" } else { "198.51.100.7" }.into(),
            endpoint: if e.suspicious { "/files/../../etc/passwd" } else { "/api/items" }.into(),
            user_agent: if e.short_agent { "x" } else { "sluice-model/1.0" }.into(),
            extra,
            ..Default::default()
        }),
        cost: e.cost,
        tiers: vec![],
    }
}

/// Compares one decision with the model; `source` is the store's name on the wire.
fn compare_decision(
    d: &pb::Decision,
    expected: &Option<model::Outcome>,
    entry: &NativeEntry,
    source: &str,
) -> Result<(), String> {
    let Some(o) = expected else {
        return (d.allowed && d.tiers.is_empty() && d.tier.is_empty() && d.source.is_empty())
            .then_some(())
            .ok_or_else(|| format!("no tier applies, so allowed with nothing counted; got {d:?}"));
    };
    let tiers = native_tiers();
    let applied: Vec<&NativeTier> =
        tiers.iter().zip(&entry.values).filter(|(_, v)| v.is_some()).map(|(t, _)| t).collect();
    if d.allowed != o.admitted {
        return Err(format!(
            "allowed {} but the model says {}; got {d:?}, expected {o:?}",
            d.allowed, o.admitted
        ));
    }
    if d.source != source {
        return Err(format!("decided by {:?}, not by the store ({source}): {d:?}", d.source));
    }
    let names: Vec<&str> = d.tiers.iter().map(|s| s.tier.as_str()).collect();
    let expected_names: Vec<&str> = applied.iter().map(|t| t.name).collect();
    if names != expected_names {
        return Err(format!("tiers {names:?}, expected {expected_names:?}: {d:?}"));
    }
    for ((s, v), t) in d.tiers.iter().zip(&o.verdicts).zip(&applied) {
        let shadow_deny = t.spec.shadow && !v.allowed;
        if s.allowed != v.allowed
            || s.limit != v.limit
            || !v.remaining_ok(s.remaining)
            || s.shadow != shadow_deny
            || u64::from(s.threat_score) != v.score
        {
            return Err(format!("tier {}: got {s:?}, expected {v:?}", t.name));
        }
    }
    if o.admitted {
        let deciding = d
            .tiers
            .iter()
            .zip(&applied)
            .filter(|(_, t)| !t.spec.shadow)
            .map(|(s, _)| s)
            .min_by_key(|s| s.remaining)
            .or(d.tiers.first())
            .expect("a status");
        if d.retry_after_ms != 0
            || d.tier != deciding.tier
            || d.remaining != deciding.remaining
            || d.limit != deciding.limit
        {
            return Err(format!("allowed, so no retry and the tier with least remaining decides: {d:?}"));
        }
    } else {
        let deciding =
            d.tiers.iter().zip(&applied).find(|(s, t)| s.tier == d.tier && !s.allowed && !t.spec.shadow);
        match deciding {
            Some((s, _)) if d.retry_after_ms > 0 && d.limit == s.limit && d.remaining == s.remaining => {}
            _ => return Err(format!("denied, so a denying tier decides with a retry-after: {d:?}")),
        }
    }
    Ok(())
}

/// Matches a descriptor as the domain file says: its entries on the wire, and its rule.
enum Matched {
    None,
    Unlimited,
    Limited {
        key: String,
        spec: Spec,
        rpu: u64,
        unit: i32,
        name: &'static str,
        replaces: Option<&'static str>,
    },
}

fn unit_ms(unit: i32) -> Option<u64> {
    Some(match unit {
        1 => 1_000,
        2 => 60_000,
        3 => 3_600_000,
        4 => DAY_MS,
        5 => 30 * DAY_MS,
        6 => 365 * DAY_MS,
        7 => 7 * DAY_MS,
        _ => return None,
    })
}

/// A descriptor as sent (its entries and limit override) and as the domain file limits it.
struct Described {
    entries: Vec<(String, String)>,
    limit_override: Option<(u32, i32)>,
    matched: Matched,
}

fn envoy_desc(d: Desc, suffix: &str) -> Described {
    let described = |entries, matched| Described { entries, limit_override: None, matched };
    let tenant = ("tenant".to_owned(), format!("t-{suffix}"));
    let t = &tenant.1;
    let limited = |key: String, spec: Spec, unit: i32| Matched::Limited {
        key,
        rpu: spec.limit,
        spec,
        unit,
        name: "",
        replaces: None,
    };
    let day = |limit| Spec { everything: true, ..Spec::window(limit, DAY_MS) };
    let under = |k: &str, v: String| vec![tenant.clone(), (k.to_owned(), v)];
    match d {
        Desc::Client(v) => {
            let value = format!("c{v}-{suffix}");
            described(vec![("client".into(), value.clone())], limited(format!("client|{value}"), day(4), 4))
        }
        Desc::File(v) => {
            described(under("file", format!("f{v}")), limited(format!("{t}|file|f*"), day(5), 4))
        }
        Desc::Path(v) => {
            described(under("path", format!("p{v}")), limited(format!("{t}|path|p{v}"), day(3), 4))
        }
        Desc::User(2) => described(under("user", "vip".into()), limited(format!("{t}|user=vip"), day(6), 4)),
        Desc::User(v) => {
            described(under("user", format!("u{v}")), limited(format!("{t}|user|u{v}"), day(3), 4))
        }
        Desc::Shadow(v) => described(
            under("shadow", format!("s{v}")),
            limited(format!("{t}|shadow|s{v}"), Spec { shadow: true, ..day(2) }, 4),
        ),
        Desc::Login(v) => described(
            under("login", format!("l{v}")),
            limited(format!("{t}|login|l{v}"), Spec::log(3, DAY_MS), 4),
        ),
        Desc::Free => described(under("free", "x".into()), Matched::Unlimited),
        Desc::Plan(false) => described(
            under("plan", "basic".into()),
            Matched::Limited {
                key: format!("{t}|plan=basic"),
                spec: Spec { everything: true, ..Spec::window(2, 3_600_000) },
                rpu: 2,
                unit: 3,
                name: "basic",
                replaces: None,
            },
        ),
        Desc::Plan(true) => described(
            under("plan", "gold".into()),
            Matched::Limited {
                key: format!("{t}|plan=gold"),
                spec: day(4),
                rpu: 4,
                unit: 4,
                name: "",
                replaces: Some("basic"),
            },
        ),
        Desc::Tenant => described(vec![tenant.clone()], Matched::None),
        Desc::Unknown => described(vec![("nope".into(), format!("n-{suffix}"))], Matched::None),
        Desc::TooDeep => described(
            vec![("client".into(), format!("c0-{suffix}")), ("extra".into(), "x".into())],
            Matched::None,
        ),
        Desc::Override { rpu, unit, v } => {
            let entries = vec![("ov".to_owned(), format!("o{v}-{suffix}"))];
            let matched = match unit_ms(unit) {
                Some(window) => Matched::Limited {
                    key: format!("ov|o{v}|{unit}"),
                    spec: Spec { everything: true, ..Spec::window(u64::from(rpu), window) },
                    rpu: u64::from(rpu),
                    unit,
                    name: "",
                    replaces: None,
                },
                None => Matched::None,
            };
            Described { entries, limit_override: Some((rpu, unit)), matched }
        }
    }
}

/// An override past the bound every limit keeps: requests_per_unit x window under 2^50 ms.
fn too_large(d: Desc) -> bool {
    match d {
        Desc::Override { rpu, unit, .. } => {
            unit_ms(unit).is_some_and(|w| u128::from(rpu) * u128::from(w) > 1 << 50)
        }
        _ => false,
    }
}

fn resolve_hits(h: Hits, matched: &Matched) -> u64 {
    let limit = match matched {
        Matched::Limited { rpu, .. } => *rpu,
        _ => 3,
    };
    match h {
        Hits::Zero => 0,
        Hits::One => 1,
        Hits::Two => 2,
        Hits::Limit => limit,
        Hits::OverLimit => limit + 1,
        Hits::Max => u64::MAX,
    }
}

/// One descriptor's expected status: code, current limit (requests_per_unit, unit, name) and the
/// accepted values of limit_remaining.
#[derive(Debug)]
struct ExpectedStatus {
    over: bool,
    limit: Option<(u32, i32, &'static str)>,
    remaining: Vec<u32>,
}

/// What the model says of a ShouldRateLimit call, and the request to send.
fn envoy_expect(
    m: &mut model::Store,
    step: &[EnvoyDesc],
    hits_addend: u32,
    suffix: &str,
) -> (RateLimitRequest, bool, Vec<ExpectedStatus>) {
    let resolved: Vec<_> = step.iter().map(|d| envoy_desc(d.desc, suffix)).collect();
    let request = RateLimitRequest {
        domain: "model".into(),
        hits_addend,
        descriptors: step
            .iter()
            .zip(&resolved)
            .map(|(d, Described { entries, limit_override, matched })| RateLimitDescriptor {
                entries: entries
                    .iter()
                    .map(|(k, v)| rate_limit_descriptor::Entry { key: k.clone(), value: v.clone() })
                    .collect(),
                limit: limit_override.map(|(requests_per_unit, unit)| {
                    rate_limit_descriptor::RateLimitOverride { requests_per_unit, unit }
                }),
                hits_addend: d.hits.map(|h| UInt64Value { value: resolve_hits(h, matched) }),
                ..Default::default()
            })
            .collect(),
    };
    let replaced: Vec<&str> = resolved
        .iter()
        .filter_map(|d| match d.matched {
            Matched::Limited { replaces, .. } => replaces,
            _ => None,
        })
        .collect();
    let default_hits = u64::from(hits_addend.max(1));
    // Repeats on one key that count everything stay apart, decided in order; others merge into
    // the saturating sum of their hits at the strictest limit.
    let mut checks: Vec<model::Check> = Vec::new();
    let mut slot_of: Vec<Option<usize>> = Vec::new();
    for (d, Described { matched, .. }) in step.iter().zip(&resolved) {
        let Matched::Limited { key, spec, name, .. } = matched else {
            slot_of.push(None);
            continue;
        };
        if replaced.contains(name) {
            slot_of.push(None);
            continue;
        }
        let cost = d.hits.map_or(default_hits, |h| resolve_hits(h, matched));
        match checks.iter().position(|c| &c.key == key && !(c.spec.everything && spec.everything)) {
            Some(i) => {
                checks[i].cost = checks[i].cost.saturating_add(cost);
                checks[i].spec.limit = checks[i].spec.limit.min(spec.limit);
                slot_of.push(Some(i));
            }
            None => {
                checks.push(model::Check { key: key.clone(), spec: *spec, cost, factors: 0 });
                slot_of.push(Some(checks.len() - 1));
            }
        }
    }
    let outcome = (!checks.is_empty()).then(|| m.decide(&checks, true, T0));
    let statuses: Vec<ExpectedStatus> = resolved
        .iter()
        .zip(&slot_of)
        .map(|(Described { matched, .. }, slot)| match (matched, slot) {
            (Matched::Limited { spec, rpu, unit, name, .. }, Some(i)) => {
                let v = &outcome.as_ref().expect("an outcome").verdicts[*i];
                let to_u32 = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
                let remaining = if v.allowed {
                    std::iter::once(v.remaining).chain(v.remaining_or).map(to_u32).collect()
                } else {
                    vec![0]
                };
                ExpectedStatus {
                    over: !v.allowed && !spec.shadow,
                    limit: Some((to_u32(*rpu), *unit, name)),
                    remaining,
                }
            }
            (Matched::Unlimited, _) => ExpectedStatus { over: false, limit: None, remaining: vec![u32::MAX] },
            _ => ExpectedStatus { over: false, limit: None, remaining: vec![0] },
        })
        .collect();
    let over = statuses.iter().any(|s| s.over);
    (request, over, statuses)
}

fn compare_envoy(r: &RateLimitResponse, over: bool, expected: &[ExpectedStatus]) -> Result<(), String> {
    let code = |over: bool| if over { Code::OverLimit as i32 } else { Code::Ok as i32 };
    if r.overall_code != code(over) || r.statuses.len() != expected.len() {
        return Err(format!(
            "overall {} (expected over: {over}) with {} statuses; expected {expected:?}, got {r:?}",
            r.overall_code,
            r.statuses.len()
        ));
    }
    for (i, (s, e)) in r.statuses.iter().zip(expected).enumerate() {
        let limit = s.current_limit.as_ref().map(|l| (l.requests_per_unit, l.unit, l.name.as_str()));
        if s.code != code(e.over) || limit != e.limit || !e.remaining.contains(&s.limit_remaining) {
            return Err(format!("descriptor {i}: expected {e:?}, got {s:?}"));
        }
    }
    Ok(())
}

struct ApiServer {
    name: &'static str,
    source: &'static str,
    native: RateLimiterClient<Channel>,
    envoy: RateLimitServiceClient<Channel>,
}

impl ApiServer {
    async fn connect(server: &SluiceServer, name: &'static str, source: &'static str) -> ApiServer {
        let envoy =
            RateLimitServiceClient::connect(format!("http://{}", server.grpc_addr)).await.expect("connect");
        ApiServer { name, source, native: server.client().await, envoy }
    }

    /// Waits until decisions come from the store again (a case before may have opened the circuit).
    async fn settle(&self, suffix: &str) -> Result<(), String> {
        let probe = NativeEntry {
            values: [Some(0), None, None, None, None, None],
            cost: None,
            short_agent: false,
            suspicious: false,
            deny_range: false,
        };
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let request = pb::CheckRequest {
                requests: vec![native_request(&probe, &format!("probe-{suffix}"))],
                dry_run: true,
            };
            let got =
                self.native.clone().check(request).await.map(|r| r.into_inner().decisions[0].source.clone());
            match got {
                Ok(source) if source == self.source => return Ok(()),
                other if Instant::now() > deadline => {
                    return Err(format!(
                        "{}: decisions did not come from {} again: {other:?}",
                        self.name, self.source
                    ));
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}

async fn api_case(servers: &[ApiServer], steps: &[Step]) -> TestCaseResult {
    let suffix = fresh();
    for s in servers {
        s.settle(&suffix).await.map_err(fail)?;
    }
    let mut m = model::Store::default();
    for (i, step) in steps.iter().enumerate() {
        match step {
            Step::Native { entries, copies, dry_run } => {
                let batch: Vec<NativeEntry> =
                    entries.iter().cycle().take(entries.len() * copies).cloned().collect();
                let expected = native_expect(&mut m, &batch, *dry_run, &suffix);
                for s in servers {
                    let request = pb::CheckRequest {
                        requests: batch.iter().map(|e| native_request(e, &suffix)).collect(),
                        dry_run: *dry_run,
                    };
                    let got = s.native.clone().check(request).await;
                    let at = |msg: String| fail(format!("step {i} on {}: {msg}", s.name));
                    match (&expected, got) {
                        (NativeExpected::Batch, Err(status))
                            if status.code() == tonic::Code::InvalidArgument
                                && status.message().starts_with("requests:") => {}
                        (NativeExpected::Cost(invalid), Err(status))
                            if status.code() == tonic::Code::InvalidArgument
                                && invalid.iter().any(|j| {
                                    status.message().starts_with(&format!("requests[{j}].cost:"))
                                }) => {}
                        (NativeExpected::Decisions(outcomes), Ok(response)) => {
                            let decisions = response.into_inner().decisions;
                            if decisions.len() != outcomes.len() {
                                return Err(at(format!(
                                    "{} decisions for {} requests",
                                    decisions.len(),
                                    outcomes.len()
                                )));
                            }
                            for (j, ((d, o), e)) in decisions.iter().zip(outcomes).zip(&batch).enumerate() {
                                compare_decision(d, o, e, s.source)
                                    .map_err(|msg| at(format!("requests[{j}]: {msg}")))?;
                            }
                        }
                        (expected, got) => return Err(at(format!("expected {expected:?}, got {got:?}"))),
                    }
                }
            }
            Step::Envoy { descriptors, hits_addend } if descriptors.iter().any(|d| too_large(d.desc)) => {
                // A limit whose counts Lua's numbers could not hold exactly is refused, and counts
                // nothing.
                let (request, _, _) =
                    envoy_expect(&mut model::Store::default(), descriptors, *hits_addend, &suffix);
                for s in servers {
                    let at = |msg: String| fail(format!("step {i} on {}: {msg}", s.name));
                    match s.envoy.clone().should_rate_limit(request.clone()).await {
                        Err(status)
                            if status.code() == tonic::Code::InvalidArgument
                                && status.message().contains(".limit") => {}
                        other => {
                            return Err(at(format!(
                                "expected INVALID_ARGUMENT naming the limit, got {other:?}"
                            )));
                        }
                    }
                }
            }
            Step::Envoy { descriptors, hits_addend } => {
                let (request, over, expected) = envoy_expect(&mut m, descriptors, *hits_addend, &suffix);
                for s in servers {
                    let at = |msg: String| fail(format!("step {i} on {}: {msg}", s.name));
                    let got = s
                        .envoy
                        .clone()
                        .should_rate_limit(request.clone())
                        .await
                        .map_err(|e| at(format!("{e:?}")))?;
                    compare_envoy(got.get_ref(), over, &expected).map_err(at)?;
                }
            }
        }
    }
    Ok(())
}

fn domain_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("model.yaml"), DOMAIN_YAML).expect("write the domain file");
    dir
}

#[test]
fn both_apis_on_both_stores_follow_the_model() {
    let rt = runtime();
    let redis = RedisServer::start();
    let dir = domain_dir();
    let (local, on_redis) = rt.block_on(async {
        let local = SluiceServer::start(&server_yaml(dir.path(), None, API_BOUNDS), None).await;
        let on_redis =
            SluiceServer::start(&server_yaml(dir.path(), Some(&redis.url()), API_BOUNDS), None).await;
        (local, on_redis)
    });
    let servers = rt.block_on(async {
        vec![
            ApiServer::connect(&local, "in-process store", "local").await,
            ApiServer::connect(&on_redis, "redis", "redis").await,
        ]
    });
    let started = Instant::now();
    let result = runner(API_CASES)
        .run(&proptest::collection::vec(step(), 1..40), |steps| rt.block_on(api_case(&servers, &steps)));
    eprintln!("API model: {API_CASES} cases in {:?}", started.elapsed());
    rt.block_on(async {
        local.shutdown().await;
        on_redis.shutdown().await;
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

// ---------------------------------------------------------------------------------------------
// The stores at instants chosen by the test: windows roll, the local store is swept, and every
// retry-after is waited out.
// ---------------------------------------------------------------------------------------------

const STORE_PENALTY: PenaltySpec =
    PenaltySpec { violations: 2, period: 20_000, base: 2_000, factor: 3, max: 30_000 };

/// The store-level tiers (costs from 1 to the limit, as the engine guarantees).
fn store_tiers() -> [Spec; 12] {
    [
        Spec::window(5, 10_000),
        Spec::log(4, 7_000),
        Spec { shadow: true, ..Spec::window(3, 10_000) },
        Spec { everything: true, ..Spec::window(5, 10_000) },
        Spec { penalty: Some(STORE_PENALTY), ..Spec::window(3, 10_000) },
        Spec { penalty: Some(STORE_PENALTY), ..Spec::log(3, 7_000) },
        Spec { adaptive: Some(ADAPTIVE), ..Spec::window(6, 10_000) },
        Spec { adaptive: Some(ADAPTIVE), ..Spec::log(4, 7_000) },
        Spec::fixed(4, 10_000),
        Spec { everything: true, ..Spec::fixed(3, 6_000) },
        Spec { quota: true, ..Spec::window(2, 10_000) },
        Spec { quota: true, ..Spec::fixed(3, 6_000) },
    ]
}

fn sluice_check(c: &model::Check) -> Check {
    let s = c.spec;
    Check {
        key: format!("sluice:{{{}}}", c.key),
        algorithm: match s.algo {
            Algo::Window => Algorithm::SlidingWindow,
            Algo::Log => Algorithm::SlidingLog,
            Algo::Fixed => Algorithm::FixedWindow,
        },
        quota: Quota { limit: s.limit, window_ms: s.window, cost: c.cost },
        shadow: s.shadow,
        quota_mode: s.quota,
        on_failure: FailureMode::Local,
        adaptive: s.adaptive.map(|a| AdaptiveCheck {
            settings: Adaptive {
                weights: Weights {
                    user_agent: a.weights[0] as u8,
                    parameters: a.weights[1] as u8,
                    deny_range: a.weights[2] as u8,
                    reputation: 0,
                    burst: 0,
                    failed_logins: 0,
                },
                reduction_percent: a.reduction as u8,
                ..Adaptive::default()
            },
            client_factors: c.factors,
            reputation: Vec::new().into(),
        }),
        penalty: s.penalty.map(|p| Penalty {
            violations: p.violations,
            period_ms: p.period,
            base_ms: p.base,
            factor: p.factor,
            max_ms: p.max,
        }),
        counts: if s.everything { Counts::Everything } else { Counts::Requests },
        baseline: None,
    }
}

#[derive(Clone, Copy, Debug)]
enum Dt {
    Zero,
    Ms(u64),
    /// Whole windows of 10 s plus a few ms.
    Windows(u64, u64),
}

impl Dt {
    fn ms(self) -> u64 {
        match self {
            Dt::Zero => 0,
            Dt::Ms(ms) => ms,
            Dt::Windows(n, ms) => n * 10_000 + ms,
        }
    }
}

fn dt() -> impl Strategy<Value = Dt> {
    prop_oneof![
        4 => Just(Dt::Zero),
        4 => (1u64..300).prop_map(Dt::Ms),
        2 => (300u64..12_000).prop_map(Dt::Ms),
        1 => (1u64..3, 0u64..50).prop_map(|(n, ms)| Dt::Windows(n, ms)),
    ]
}

#[derive(Clone)]
struct StoreStep {
    /// (tier, key, cost from 1 to the tier's limit)
    checks: Vec<(usize, u8, u64)>,
    factors: u8,
    dry_run: bool,
    dt: Dt,
    /// When denied: wait retry-after less 1 ms (still denied), then retry-after (passes).
    wait_it_out: bool,
    sweep: bool,
}

/// Compact: `+12ms [t1/k0 cost 2, t4/k1 cost 1] factors 5 dry-run wait sweep`.
impl std::fmt::Debug for StoreStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let checks: Vec<String> = self.checks.iter().map(|(t, k, c)| format!("t{t}/k{k} cost {c}")).collect();
        write!(f, "+{}ms [{}] factors {}", self.dt.ms(), checks.join(", "), self.factors)?;
        for (on, what) in [(self.dry_run, "dry-run"), (self.wait_it_out, "wait"), (self.sweep, "sweep")] {
            if on {
                write!(f, " {what}")?;
            }
        }
        Ok(())
    }
}

fn store_step(limits: Vec<u64>) -> impl Strategy<Value = StoreStep> {
    let checks = proptest::sample::subsequence((0..limits.len()).collect::<Vec<_>>(), 1..=3).prop_flat_map(
        move |picked| picked.into_iter().map(|t| (Just(t), 0u8..2, 1..=limits[t])).collect::<Vec<_>>(),
    );
    (
        checks,
        0u8..8,
        proptest::bool::weighted(0.1),
        dt(),
        proptest::bool::weighted(0.4),
        proptest::bool::weighted(0.3),
    )
        .prop_map(|(checks, factors, dry_run, dt, wait_it_out, sweep)| StoreStep {
            checks,
            factors,
            dry_run,
            dt,
            wait_it_out,
            sweep,
        })
}

fn compare_outcome(got: &Answer, expected: &model::Outcome, store: &str) -> Result<(), String> {
    let mismatch = || format!("{store}: got {got:?}, expected {expected:?}");
    if got.admitted != expected.admitted || got.verdicts.len() != expected.verdicts.len() {
        return Err(mismatch());
    }
    for (g, e) in got.verdicts.iter().zip(&expected.verdicts) {
        let retry_ok = e.retry.is_none_or(|r| r == g.retry_after_ms);
        if g.allowed != e.allowed
            || !e.remaining_ok(g.remaining)
            || !retry_ok
            || g.limit != e.limit
            || u64::from(g.score) != e.score
        {
            return Err(mismatch());
        }
    }
    Ok(())
}

/// The wait a store's answer promises: the longest retry-after of its enforcing checks outside
/// quota mode, and at least the shortest of its quotas' (none when a quota is shadow).
fn promised(got: &Answer, checks: &[model::Check]) -> u64 {
    let retry = |quota: bool| {
        got.verdicts
            .iter()
            .zip(checks)
            .filter(move |(_, c)| !c.spec.shadow && c.spec.quota == quota)
            .map(|(v, _)| v.retry_after_ms)
    };
    let quota_open = checks.iter().any(|c| c.spec.quota && c.spec.shadow);
    let quota = if quota_open { 0 } else { retry(true).min().unwrap_or(0) };
    retry(false).max().unwrap_or(0).max(quota)
}

async fn store_case(redis: &RedisStore, steps: &[StoreStep]) -> TestCaseResult {
    let suffix = fresh();
    let tiers = store_tiers();
    let local = LocalStore::default();
    let mut m = model::Store::default();
    let mut now = T0;
    for (i, step) in steps.iter().enumerate() {
        now += step.dt.ms();
        let checks: Vec<model::Check> = step
            .checks
            .iter()
            .map(|&(t, k, c)| {
                let spec = tiers[t];
                model::Check { key: format!("{suffix}:t{t}:k{k}"), spec, cost: c, factors: step.factors }
            })
            .collect();
        let sent: Vec<Check> = checks.iter().map(sluice_check).collect();
        let decide = async |m: &mut model::Store,
                            mode: Mode,
                            now: u64|
               -> Result<(model::Outcome, Answer, Answer), TestCaseError> {
            let expected = m.decide(&checks, mode == Mode::Consume, now);
            let l = local.decide_at(&sent, mode, now);
            let r =
                redis.decide_at(&sent, mode, now).await.map_err(|e| fail(format!("step {i}: redis: {e}")))?;
            let at = |msg: String| fail(format!("step {i} at T0+{} ({mode:?}): {msg}", now - T0));
            compare_outcome(&l, &expected, "local").map_err(at)?;
            compare_outcome(&r, &expected, "redis").map_err(at)?;
            Ok((expected, l, r))
        };
        let mode = if step.dry_run { Mode::DryRun } else { Mode::Consume };
        let (expected, l, r) = decide(&mut m, mode, now).await?;
        if step.wait_it_out && !expected.admitted {
            let wait = expected.wait.expect("costs within the limits always pass in the end");
            for (store, got) in [("local", &l), ("redis", &r)] {
                let promise = promised(got, &checks);
                if promise != wait {
                    return Err(fail(format!(
                        "step {i} at T0+{}: {store} says retry after {promise} ms, but the same request passes after {wait} ms: {got:?}",
                        now - T0
                    )));
                }
            }
            if wait > 1 {
                let (before, _, _) = decide(&mut m, Mode::DryRun, now + wait - 1).await?;
                prop_assert!(!before.admitted, "the model passes before its own wait");
            }
            now += wait;
            let (after, _, _) = decide(&mut m, Mode::Consume, now).await?;
            prop_assert!(after.admitted, "the model denies after its own wait");
        }
        if step.sweep {
            local.sweep(now);
        }
    }
    Ok(())
}

async fn redis_store(server: &RedisServer) -> RedisStore {
    server.store().await
}

#[test]
fn stores_at_fixed_instants_follow_the_model() {
    let rt = runtime();
    let server = RedisServer::start();
    let redis = rt.block_on(redis_store(&server));
    let started = Instant::now();
    let strategy =
        proptest::collection::vec(store_step(store_tiers().iter().map(|s| s.limit).collect()), 1..40);
    let result = runner(STORE_CASES).run(&strategy, |steps| rt.block_on(store_case(&redis, &steps)));
    eprintln!("store model: {STORE_CASES} cases in {:?}", started.elapsed());
    if let Err(e) = result {
        panic!("{e}");
    }
}

// ---------------------------------------------------------------------------------------------
// The fallback's fair-share buckets, at instants chosen by the test.
// ---------------------------------------------------------------------------------------------

const REPLICAS: u64 = 3;

/// (limit, window): shares of 2, 1 and 3 units.
const BUCKET_TIERS: [(u64, u64); 3] = [(7, 10_000), (4, 6_000), (10, 9_000)];

fn bucket_case(steps: &[StoreStep]) -> TestCaseResult {
    let store = LocalStore::new(Counting::FairShare { replicas: REPLICAS }, 10_000);
    let mut m = model::Buckets::new(REPLICAS);
    let mut now = T0;
    for (i, step) in steps.iter().enumerate() {
        now += step.dt.ms();
        let checks: Vec<model::BucketCheck> = step
            .checks
            .iter()
            .map(|&(t, k, c)| {
                let (limit, window) = BUCKET_TIERS[t];
                model::BucketCheck { key: format!("sluice:{{b{t}:k{k}}}"), limit, window, cost: c }
            })
            .collect();
        let sent: Vec<Check> = checks
            .iter()
            .map(|c| {
                Check::plain(
                    c.key.clone(),
                    Algorithm::SlidingWindow,
                    Quota { limit: c.limit, window_ms: c.window, cost: c.cost },
                    FailureMode::Local,
                )
            })
            .collect();
        let mut decide = |mode: Mode, now: u64| -> Result<(model::Outcome, Answer), TestCaseError> {
            let expected = m.decide(&checks, mode == Mode::Consume, now);
            let got = store.decide_at(&sent, mode, now);
            if got.source != Source::Fallback {
                return Err(fail(format!("step {i}: source {:?}", got.source)));
            }
            compare_outcome(&got, &expected, "fallback").map_err(|msg| {
                fail(format!(
                    "step {i} at T0+{} ({mode:?}), shares {:?}: {msg}",
                    now - T0,
                    checks.iter().map(|c| m.share(c.limit)).collect::<Vec<_>>()
                ))
            })?;
            Ok((expected, got))
        };
        let mode = if step.dry_run { Mode::DryRun } else { Mode::Consume };
        let (expected, _) = decide(mode, now)?;
        if step.wait_it_out && !expected.admitted {
            let wait = expected.wait.expect("a wait");
            if wait > 1 {
                decide(Mode::DryRun, now + wait - 1)?;
            }
            now += wait;
            let (after, _) = decide(Mode::Consume, now)?;
            prop_assert!(after.admitted, "the model denies after its own wait");
        }
        if step.sweep {
            store.sweep(now);
        }
    }
    Ok(())
}

#[test]
fn fallback_buckets_follow_the_model() {
    let started = Instant::now();
    let strategy = proptest::collection::vec(store_step(BUCKET_TIERS.iter().map(|t| t.0).collect()), 1..40);
    let result = runner(BUCKET_CASES).run(&strategy, |steps| bucket_case(&steps));
    eprintln!("fallback model: {BUCKET_CASES} cases in {:?}", started.elapsed());
    if let Err(e) = result {
        panic!("{e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Liveness: hostile calls in flight never hold up other calls, nor themselves.
// ---------------------------------------------------------------------------------------------

/// How long any call may take, hostile or not.
const PATIENCE: Duration = Duration::from_secs(2);

fn envoy_call(descriptors: Vec<RateLimitDescriptor>, hits_addend: u32) -> RateLimitRequest {
    RateLimitRequest { domain: "model".into(), descriptors, hits_addend }
}

fn entries(pairs: &[(&str, &str)]) -> Vec<rate_limit_descriptor::Entry> {
    pairs.iter().map(|(k, v)| rate_limit_descriptor::Entry { key: (*k).into(), value: (*v).into() }).collect()
}

/// The hostile calls: duplicates, numbers at their type's maximum, batches past every bound.
fn hostile_calls(suffix: &str) -> Vec<(&'static str, Hostile)> {
    let tenant = format!("t-{suffix}");
    let same = |pairs: &[(&str, &str)], hits: Option<u64>, n: usize| -> Vec<RateLimitDescriptor> {
        (0..n)
            .map(|_| RateLimitDescriptor {
                entries: entries(pairs),
                hits_addend: hits.map(|value| UInt64Value { value }),
                ..Default::default()
            })
            .collect()
    };
    let hot = format!("hot-{suffix}");
    let files: Vec<RateLimitDescriptor> = (0..1000)
        .map(|i| RateLimitDescriptor {
            entries: entries(&[("tenant", &tenant), ("file", &format!("f{i}"))]),
            hits_addend: Some(UInt64Value { value: u64::MAX - i }),
            ..Default::default()
        })
        .collect();
    let overrides: Vec<RateLimitDescriptor> = (0..1000)
        .map(|i| RateLimitDescriptor {
            entries: entries(&[("ov", &format!("o{}", i % 3))]),
            limit: Some(rate_limit_descriptor::RateLimitOverride {
                requests_per_unit: u32::MAX,
                unit: 3 + (i % 5),
            }),
            hits_addend: Some(UInt64Value { value: if i % 2 == 0 { u64::MAX } else { 0 } }),
            ..Default::default()
        })
        .collect();
    let mut mixed = same(&[("tenant", &tenant), ("login", "l0")], Some(u64::MAX), 500);
    mixed.extend(same(&[("client", &hot)], Some(3), 500));
    let entry = |cost: Option<u64>| NativeEntry {
        values: [Some(0), Some(0), Some(0), Some(0), Some(0), Some(0)],
        cost,
        short_agent: true,
        suspicious: true,
        deny_range: true,
    };
    let batch = |cost: Option<u64>, n: usize| pb::CheckRequest {
        requests: (0..n).map(|_| native_request(&entry(cost), suffix)).collect(),
        dry_run: false,
    };
    vec![
        (
            "1000 identical descriptors, hits_addend u32::MAX",
            Hostile::Envoy(envoy_call(same(&[("client", &hot)], None, 1000), u32::MAX)),
        ),
        ("1000 values under one shared wildcard, hits near u64::MAX", Hostile::Envoy(envoy_call(files, 1))),
        ("1000 overrides at u32::MAX per unit, hits u64::MAX or 0", Hostile::Envoy(envoy_call(overrides, 0))),
        (
            "a sliding log at hits u64::MAX, 500 times, and 500 duplicates",
            Hostile::Envoy(envoy_call(mixed, 1)),
        ),
        // Past server.max_in_flight (256): decided by the store, so kept to what it decides in time.
        ("a batch of 300 on one key", Hostile::Native(batch(None, 300))),
        ("a batch of 1000 at cost u64::MAX", Hostile::Native(batch(Some(u64::MAX), 1000))),
        ("a batch of 1001", Hostile::Native(batch(None, 1001))),
    ]
}

#[derive(Clone)]
enum Hostile {
    Envoy(RateLimitRequest),
    Native(pb::CheckRequest),
}

/// One round: every hostile call at once, while plain calls and /healthz go on; returns what
/// went wrong.
async fn liveness_round(server: &SluiceServer, round: usize) -> Vec<String> {
    let suffix = fresh();
    let native = server.client().await;
    let envoy =
        RateLimitServiceClient::connect(format!("http://{}", server.grpc_addr)).await.expect("connect");
    let mut tasks = Vec::new();
    for (what, call) in hostile_calls(&suffix) {
        let (mut native, mut envoy) = (native.clone(), envoy.clone());
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let answer = tokio::time::timeout(PATIENCE, async {
                match call {
                    Hostile::Envoy(r) => envoy.should_rate_limit(r).await.map(drop),
                    Hostile::Native(r) => native.check(r).await.map(drop),
                }
            })
            .await;
            match answer {
                Err(_) => Some(format!("round {round}: {what}: no answer within {PATIENCE:?}")),
                Ok(Err(status)) if status.code() != tonic::Code::InvalidArgument => Some(format!(
                    "round {round}: {what}: {:?} {:?} after {:?}",
                    status.code(),
                    status.message(),
                    started.elapsed()
                )),
                Ok(_) => None,
            }
        }));
    }
    let http = server.http_addr;
    for client in 0..3 {
        let (mut native, mut envoy) = (native.clone(), envoy.clone());
        let suffix = suffix.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..10 {
                let plain = NativeEntry {
                    values: [Some(1), None, None, None, None, None],
                    cost: None,
                    short_agent: false,
                    suspicious: false,
                    deny_range: false,
                };
                let request = pb::CheckRequest {
                    requests: vec![native_request(&plain, &format!("{suffix}-{client}-{n}"))],
                    dry_run: false,
                };
                let descriptor = RateLimitDescriptor {
                    entries: entries(&[("client", &format!("plain-{suffix}-{client}-{n}"))]),
                    ..Default::default()
                };
                let started = Instant::now();
                let answers = tokio::time::timeout(PATIENCE, async {
                    let d = native
                        .check(request)
                        .await
                        .map_err(|s| format!("Check: {s:?}"))?
                        .into_inner()
                        .decisions;
                    let r = envoy
                        .should_rate_limit(envoy_call(vec![descriptor], 1))
                        .await
                        .map_err(|s| format!("ShouldRateLimit: {s:?}"))?
                        .into_inner();
                    let (status, _) = common::http_get(http, "/healthz").await;
                    // A fresh key under its limit passes, whatever else is going on.
                    match (d[0].allowed, r.overall_code == Code::Ok as i32, status) {
                        (true, true, 200) => Ok(()),
                        other => Err(format!("plain calls answered {other:?}")),
                    }
                })
                .await;
                match answers {
                    Err(_) => {
                        return Some(format!(
                            "round {round}: plain calls of client {client} took over {PATIENCE:?} (call {n})"
                        ));
                    }
                    Ok(Err(e)) => {
                        return Some(format!(
                            "round {round}: client {client} call {n}: {e} after {:?}",
                            started.elapsed()
                        ));
                    }
                    Ok(Ok(())) => {}
                }
            }
            None
        }));
    }
    let mut problems = Vec::new();
    for task in tasks {
        if let Some(problem) = task.await.expect("liveness task") {
            problems.push(problem);
        }
    }
    problems
}

#[test]
fn hostile_calls_never_hold_up_others() {
    let rt = runtime();
    let redis = RedisServer::start();
    let dir = domain_dir();
    let started = Instant::now();
    let problems = rt.block_on(async {
        let mut problems = Vec::new();
        for redis_url in [None, Some(redis.url())] {
            let server = SluiceServer::start(&server_yaml(dir.path(), redis_url.as_deref(), ""), None).await;
            let name = if redis_url.is_some() { "redis" } else { "in-process store" };
            for round in 0..3 {
                problems
                    .extend(liveness_round(&server, round).await.into_iter().map(|p| format!("{name}: {p}")));
            }
            server.shutdown().await;
        }
        problems
    });
    eprintln!("liveness: {:?}", started.elapsed());
    assert!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
}
