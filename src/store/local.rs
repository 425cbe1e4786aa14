//! The in-process store: the same algorithms and the same all-or-nothing rule as the Lua script, on
//! a `DashMap` of per-key cells.
//!
//! `decide_at` takes lua/decide.lua's steps with the pure twins in `algorithm`: `evaluate` each
//! check (baseline, `adaptive::assess`, the tier's algorithm, penalty), admit when every enforcing
//! check allows, then `Cell::commit` what consumes. The arithmetic lives in `algorithm`; this file
//! only keeps state and decides what to write.
//!
//! A request locks the cells of all its keys, in key order so that two requests never wait on each
//! other in a cycle, decides, commits or not, and lets go. Nothing is held across an `.await`.
//! Every cell carries an expiry like a Redis TTL; `sweep` drops the expired ones.
//!
//! Memory is bounded: past 90% of `max_keys` (checked every second by the server's sweeper, and
//! inside a request only if the store is full), expired keys go first, then the keys closest to
//! expiring (those idle the longest for a given window), down to 90% of the bound. An evicted key starts
//! over from zero, so a flood of distinct keys can make another key's count restart, never make
//! the process grow.
//!
//! As the Redis fallback the store counts differently: every check becomes a token bucket holding
//! this replica's fair share of the tier's limit (`limit / replicas`, at least 1), refilled at that
//! share per window.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use dashmap::DashMap;
use futures::future::BoxFuture;
use tokio::time::Instant;

use super::{Merged, Store, StoreError};
use crate::algorithm::adaptive::{self, Count, Tally};
use crate::algorithm::fixed_window::Fixed;
use crate::algorithm::penalty::{Penalty, PenaltyState};
use crate::algorithm::token_bucket::{self, Bucket};
use crate::algorithm::{self, Algorithm, Quota, Verdict, sliding_log::Log, sliding_window::Window};
use crate::check::{AdminOp, Answer, Check, Counts, Failure, FailureMode, Mode, Source};

/// How the store counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counting {
    /// Each tier's own algorithm and limit: the store is the primary one.
    AsConfigured,
    /// Token buckets of `limit / replicas` per window: the store stands in for Redis.
    FairShare { replicas: u64 },
}

#[derive(Debug)]
enum State {
    Window(Window),
    Log(Log),
    Fixed(Fixed),
    Bucket(Bucket),
}

#[derive(Debug)]
struct Cell {
    state: State,
    /// Instant (store clock, ms) after which the state no longer matters.
    expires_at: u64,
    /// Only keys of adaptive, penalty and baseline tiers (or with reported failures) have one: a
    /// flood of plain keys does not pay for it.
    extra: Option<Box<Extra>>,
}

#[derive(Debug, Default)]
struct Extra {
    /// An adaptive tier's attempts and reported failures in the current window.
    attempts: Count,
    failures: Count,
    penalty: PenaltyState,
    /// The behavioural baseline: its moving average (thousandths of a unit per window) and the
    /// start of the first window not folded into it yet.
    baseline: (u64, u64),
}

/// Counts kept in this process. Clones share the same counts.
#[derive(Clone, Debug)]
pub struct LocalStore {
    cells: Arc<DashMap<String, Arc<Mutex<Cell>>>>,
    /// When the store began, on the monotonic clock and as ms since the Unix epoch (see `now_ms`).
    epoch: Instant,
    epoch_ms: u64,
    counting: Counting,
    max_keys: usize,
    evicting: Arc<AtomicBool>,
    /// Reputation keys marked bad, with the instant (store clock, ms) the mark expires.
    reputation: Arc<DashMap<String, u64>>,
}

/// The default bound on keys held in process.
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;

impl Default for LocalStore {
    fn default() -> Self {
        Self::new(Counting::AsConfigured, DEFAULT_MAX_KEYS)
    }
}

impl LocalStore {
    /// An empty store that holds at most about `max_keys` keys (see the module doc).
    pub fn new(counting: Counting, max_keys: usize) -> Self {
        LocalStore {
            cells: Arc::new(DashMap::new()),
            epoch: Instant::now(),
            epoch_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX)),
            counting,
            max_keys: max_keys.max(1),
            evicting: Arc::new(AtomicBool::new(false)),
            reputation: Arc::new(DashMap::new()),
        }
    }

    /// Marks a reputation key (see `tier::reputation_keys`) bad until `ttl_ms` from now.
    pub fn set_reputation(&self, key: &str, ttl_ms: u64) {
        self.set_reputation_at(key, ttl_ms, self.now_ms());
    }

    /// As `set_reputation`, at an instant chosen by the caller (see `decide_at`).
    pub fn set_reputation_at(&self, key: &str, ttl_ms: u64, now: u64) {
        self.reputation.insert(key.to_owned(), now.saturating_add(ttl_ms));
    }

    pub fn clear_reputation(&self, key: &str) {
        self.reputation.remove(key);
    }

    fn bad_reputation(&self, keys: &[String], now: u64) -> bool {
        keys.iter().any(|k| self.reputation.get(k).is_some_and(|until| *until > now))
    }

    /// Counts one reported failure on each key (a tier-key of an adaptive tier) for its window.
    pub fn report_failures_at(&self, failures: &[Failure], now: u64) {
        for f in failures {
            let probe = Check::plain(
                f.key.clone(),
                Algorithm::SlidingWindow,
                Quota { limit: 1, window_ms: f.window_ms, cost: 1 },
                super::FailureMode::Local,
            );
            let cell = self.cell(&probe, now);
            let mut guard = cell.lock().unwrap_or_else(PoisonError::into_inner);
            let cell = &mut *guard;
            let extra = cell.extra.get_or_insert_default();
            if f.adaptive {
                extra.failures.add(now, f.window_ms, 1);
                cell.expires_at = cell.expires_at.max(extra.failures.reset_at);
            }
            if let Some(p) = f.penalty {
                extra.penalty.refresh(now, p);
                if !extra.penalty.blocked(now) {
                    extra.penalty.violate(now, p, 1);
                    cell.expires_at = cell.expires_at.max(extra.penalty.expires_at(p));
                }
            }
        }
    }

    /// Carries out an operator's action at `now` (see `Store::admin`).
    pub fn admin_at(&self, op: AdminOp<'_>, now: u64) -> Vec<(String, String)> {
        let touched = |key: &str| vec![("key".to_owned(), key.to_owned())];
        match op {
            AdminOp::SetReputation { key, ttl_ms } => {
                self.set_reputation_at(key, ttl_ms, now);
                touched(key)
            }
            AdminOp::ClearReputation { key } => {
                self.clear_reputation(key);
                touched(key)
            }
            AdminOp::Unblock { key } => {
                if let Some(cell) = self.cells.get(key).map(|c| Arc::clone(&c)) {
                    let mut cell = cell.lock().unwrap_or_else(PoisonError::into_inner);
                    if let Some(extra) = cell.extra.as_mut() {
                        extra.penalty.blocked_until = 0;
                        extra.penalty.violations = 0;
                    }
                }
                touched(key)
            }
            AdminOp::Reset { key } => {
                self.cells.remove(key);
                touched(key)
            }
            AdminOp::Inspect { key } => {
                let Some(cell) = self.cells.get(key).map(|c| Arc::clone(&c)) else { return Vec::new() };
                let cell = cell.lock().unwrap_or_else(PoisonError::into_inner);
                let mut fields = Vec::new();
                let mut field = |name: &str, value: u64| fields.push((name.to_owned(), value.to_string()));
                match &cell.state {
                    State::Window(w) => {
                        field("sw.c", w.current);
                        field("sw.p", w.previous);
                        field("sw.s", w.start_ms);
                    }
                    State::Log(log) => field("log.count", log.entries.len() as u64),
                    State::Fixed(f) => {
                        field("fw.c", f.count);
                        field("fw.s", f.start_ms);
                    }
                    State::Bucket(b) => field("bucket.tat", u64::try_from(b.tat).unwrap_or(u64::MAX)),
                }
                if let Some(extra) = cell.extra.as_deref() {
                    if extra.attempts.count > 0 && now < extra.attempts.reset_at {
                        field("att.c", extra.attempts.count);
                    }
                    if extra.failures.count > 0 && now < extra.failures.reset_at {
                        field("fail.c", extra.failures.count);
                    }
                    if extra.penalty != PenaltyState::default() {
                        field("pen.u", extra.penalty.blocked_until);
                        field("pen.n", u64::from(extra.penalty.blocks));
                        field("pen.v", extra.penalty.violations);
                    }
                }
                fields.sort();
                fields
            }
        }
    }

    /// What decisions report as their source.
    fn source(&self) -> Source {
        match self.counting {
            Counting::AsConfigured => Source::Local,
            Counting::FairShare { .. } => Source::Fallback,
        }
    }

    /// Each check as its failure mode says, all or nothing as ever: `local` checks counted here,
    /// `allow` allowed uncounted, `deny` denied with `deny_retry_ms`.
    pub fn by_failure_mode(&self, checks: &[Check], mode: Mode, deny_retry_ms: u64) -> Answer {
        let now = self.now_ms();
        if checks.iter().all(|c| c.on_failure == FailureMode::Local) {
            return self.decide_at(checks, mode, now);
        }
        // Whether the checks that fail closed deny the request whatever the counted ones say (an
        // enforcing one, or every quota-mode one): then the counted ones must not consume. When a
        // counted quota is over but one that fails open is within, the request passes uncounted.
        let closed = |c: &Check| c.on_failure == FailureMode::Deny && !c.shadow;
        let denies = checks.iter().any(|c| !c.quota_mode && closed(c))
            || (checks.iter().any(|c| c.quota_mode) && checks.iter().filter(|c| c.quota_mode).all(closed));
        let counted: Vec<Check> =
            checks.iter().filter(|c| c.on_failure == FailureMode::Local).cloned().collect();
        let answer = self.decide_at(&counted, if denies { Mode::DryRun } else { mode }, now);
        let mut counted_verdicts = answer.verdicts.into_iter();
        let verdicts: Vec<Verdict> = checks
            .iter()
            .map(|c| match c.on_failure {
                FailureMode::Local => counted_verdicts.next().unwrap_or_default(),
                FailureMode::Allow | FailureMode::Deny => super::failure_verdict(c, deny_retry_ms),
            })
            .collect();
        let admitted = !denies
            && algorithm::admits(verdicts.iter().zip(checks).map(|(v, c)| (v, c.shadow, c.quota_mode)));
        Answer { admitted, verdicts, source: answer.source }
    }

    /// Milliseconds since the Unix epoch: the wall clock's reading when the store began, moved on
    /// by the monotonic clock since. Windows align to the epoch as Redis's do (a fixed minute
    /// starts at :00, as envoyproxy/ratelimit's), and a wall clock set back never moves them.
    pub fn now_ms(&self) -> u64 {
        self.epoch_ms.saturating_add(u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    /// Number of keys held, expired or not.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// Drops every key whose state expired before `now`, and expired reputation marks; returns how
    /// many keys went.
    pub fn sweep(&self, now: u64) -> usize {
        self.reputation.retain(|_, until| *until > now);
        self.evict_where(usize::MAX, |expires_at| expires_at <= now)
    }

    /// Removes up to `most` keys whose expiry `doomed` accepts. The keys are found under each
    /// shard's read lock (requests for existing keys go on meanwhile) and removed one at a time,
    /// so no request waits on a whole shard being rewritten. A cell some request still holds
    /// (strong count above one) stays, or that request could commit into a cell no longer in the
    /// map; `remove_if` looks under the shard's write lock, where the count cannot rise.
    fn evict_where(&self, most: usize, doomed: impl Fn(u64) -> bool) -> usize {
        let candidates: Vec<String> = self
            .cells
            .iter()
            .filter(|e| e.value().try_lock().is_ok_and(|c| doomed(c.expires_at)))
            .map(|e| e.key().clone())
            .take(most)
            .collect();
        candidates
            .into_iter()
            .filter(|key| {
                self.cells
                    .remove_if(key, |_, cell| {
                        Arc::strong_count(cell) == 1 && cell.try_lock().is_ok_and(|c| doomed(c.expires_at))
                    })
                    .is_some()
            })
            .count()
    }

    /// Brings the store under 90% of `max_keys` when it is past that: what the sweeper calls
    /// every second, so requests rarely find the store full.
    pub fn trim(&self, now: u64) {
        if self.cells.len() > self.max_keys / 10 * 9 {
            self.make_room(now);
        }
    }

    /// Brings the store under 90% of `max_keys`: expired keys first, then those closest to
    /// expiring. One caller at a time; the others go on (overshooting by at most their number).
    fn make_room(&self, now: u64) {
        if self.evicting.swap(true, Ordering::Acquire) {
            return;
        }
        self.sweep(now);
        let target = self.max_keys / 10 * 9;
        if self.cells.len() > target {
            let mut expiries: Vec<u64> =
                self.cells.iter().filter_map(|cell| cell.try_lock().ok().map(|c| c.expires_at)).collect();
            let excess = self.cells.len() - target;
            if excess > 0 && excess <= expiries.len() {
                let (_, &mut cutoff, _) = expiries.select_nth_unstable(excess - 1);
                drop(expiries);
                self.evict_where(excess, |expires_at| expires_at <= cutoff);
            }
        }
        self.evicting.store(false, Ordering::Release);
    }

    /// Decides at an instant chosen by the caller: what the differential test uses to feed this
    /// store and the Lua script the same clock. The steps are lua/decide.lua's: evaluate every
    /// check, admit when every enforcing one allows, then commit what consumes.
    pub fn decide_at(&self, checks: &[Check], mode: Mode, now: u64) -> Answer {
        if let Some(merged) = Merged::of(checks, mode) {
            return merged.expand(self.decide_at(&merged.checks, mode, now));
        }
        // Each key locked once, even when repeats of it are decided in sequence.
        let (cells, cell_of) = self.cells_in_key_order(checks, now);
        let mut guards = lock_in_order(&cells);
        // Whether the request's IP or user is marked bad: looked up once, when a check asks.
        let mut bad_reputation = None;
        let mut pending: Vec<Pending> = Vec::with_capacity(checks.len());
        for (check, &at) in checks.iter().zip(&cell_of) {
            let cell = &mut guards[at];
            let mut p = self.evaluate(check, cell, mode, now, &mut bad_reputation);
            // Its units count whatever the request's fate: written now, so that a repeat of the
            // key later in this request sees them (`Check::in_sequence`).
            p.written = check.in_sequence(mode) && p.consumes(check, true);
            if p.written {
                cell.commit(check, &p, now);
            }
            pending.push(p);
        }
        let admitted =
            algorithm::admits(pending.iter().zip(checks).map(|(p, c)| (&p.verdict, c.shadow, c.quota_mode)));
        if mode == Mode::Consume {
            for ((check, &at), p) in checks.iter().zip(&cell_of).zip(&mut pending) {
                let cell = &mut guards[at];
                if !p.written && p.consumes(check, admitted) {
                    cell.commit(check, p, now);
                    p.written = true;
                }
                if p.written && !admitted {
                    cell.recount(check, p, now);
                }
            }
        }
        Answer { admitted, verdicts: pending.into_iter().map(|p| p.verdict).collect(), source: self.source() }
    }

    /// The cells of `checks`' keys (created when new), each once and sorted by key, and for each
    /// check the index of its cell.
    fn cells_in_key_order(&self, checks: &[Check], now: u64) -> (Vec<Arc<Mutex<Cell>>>, Vec<usize>) {
        let mut order: Vec<usize> = (0..checks.len()).collect();
        order.sort_by(|&a, &b| checks[a].key.cmp(&checks[b].key));
        let mut cells: Vec<Arc<Mutex<Cell>>> = Vec::with_capacity(checks.len());
        let mut cell_of = vec![0; checks.len()];
        for run in order.chunk_by(|&a, &b| checks[a].key == checks[b].key) {
            for &i in run {
                cell_of[i] = cells.len();
            }
            cells.push(self.cell(&checks[run[0]], now));
        }
        (cells, cell_of)
    }

    /// Decides one check against its cell: a baseline raises the limit, the threat score shrinks
    /// it, the algorithm decides, a penalty may block. Of what the request's fate decides, nothing
    /// is written yet; an adaptive tier's attempt and a penalty's violation count at once.
    fn evaluate(
        &self,
        check: &Check,
        cell: &mut Cell,
        mode: Mode,
        now: u64,
        bad_reputation: &mut Option<bool>,
    ) -> Pending {
        let mut quota = self.quota(check);
        // A look (cost 0) changes nothing: no attempt, no violation, no count.
        let counted = mode == Mode::Consume && quota.cost > 0;
        let mut baseline = None;
        if let Some(b) = check.baseline {
            let (avg, folded) = cell.fold_baseline(now, quota.window_ms);
            quota.limit = algorithm::baseline::limit(quota.limit, avg, b);
            baseline = Some((avg, folded));
        }
        let mut assessment = None;
        if let Some(a) = &check.adaptive {
            let bad = *bad_reputation.get_or_insert_with(|| self.bad_reputation(&a.reputation, now));
            let tally = cell.count_attempt(now, quota.window_ms, counted, bad);
            let assessed = adaptive::assess(
                &a.settings,
                a.client_factors,
                tally,
                check.quota.limit,
                quota.limit,
                quota.cost,
            );
            quota.limit = assessed.limit;
            assessment = Some(assessed);
        }
        let kind = self.kind(check);
        if !cell.state.counts_as(kind) {
            // The tier changed algorithm on a reload: start over with the new one.
            cell.state = State::fresh(kind);
        }
        let (verdict, next) = cell.state.check(now, quota, check.quota.limit);
        let (score, factors) = assessment.map_or((0, 0), |a| (a.score, a.factors));
        let mut verdict = Verdict { score, factors, ..verdict };
        if let Some(limit) =
            assessment.map(|a| a.retry_limit).filter(|&l| !verdict.allowed && l < quota.limit)
        {
            let retry = Quota { limit, ..quota };
            verdict.retry_after_ms = cell.state.check(now, retry, check.quota.limit).0.retry_after_ms;
        }
        let blocked = check.penalty.is_some_and(|p| cell.apply_penalty(p, &mut verdict, counted, now));
        Pending { verdict, next, baseline, blocked, written: false }
    }

    /// The state kind a check is counted with here.
    fn kind(&self, check: &Check) -> Kind {
        match self.counting {
            Counting::FairShare { .. } => Kind::Bucket,
            Counting::AsConfigured => match check.algorithm {
                Algorithm::SlidingWindow => Kind::Window,
                Algorithm::SlidingLog => Kind::Log,
                Algorithm::FixedWindow => Kind::Fixed,
            },
        }
    }

    fn quota(&self, check: &Check) -> Quota {
        match self.counting {
            Counting::AsConfigured => check.quota,
            Counting::FairShare { replicas } => {
                Quota { limit: (check.quota.limit / replicas.max(1)).max(1), ..check.quota }
            }
        }
    }

    fn cell(&self, check: &Check, now: u64) -> Arc<Mutex<Cell>> {
        if let Some(cell) = self.cells.get(&check.key) {
            return Arc::clone(&cell);
        }
        if self.cells.len() >= self.max_keys {
            self.make_room(now);
        }
        let entry = self.cells.entry(check.key.clone()).or_insert_with(|| {
            Arc::new(Mutex::new(Cell { state: State::fresh(self.kind(check)), expires_at: 0, extra: None }))
        });
        Arc::clone(&entry)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Window,
    Log,
    Fixed,
    Bucket,
}

/// The state a cell takes if the request is consumed, and the quota it was decided with.
#[derive(Clone, Copy)]
enum Next {
    Window(Window, Quota),
    Log,
    Fixed(Fixed, Quota),
    Bucket(Bucket, Quota),
}

/// One check decided, not yet committed.
struct Pending {
    verdict: Verdict,
    next: Next,
    /// The baseline's average folded up to now, and the first window not folded yet.
    baseline: Option<(u64, u64)>,
    /// The key is blocked by its penalty.
    blocked: bool,
    /// Its cost is counted in the cell.
    written: bool,
}

impl Pending {
    /// Whether the check consumes its cost, once the request is decided: admitted requests
    /// consume (a shadow tier only what it would allow, a failure-only tier never); a tier that
    /// counts everything consumes whatever was decided, unless its key is blocked; a look never.
    fn consumes(&self, check: &Check, admitted: bool) -> bool {
        check.quota.cost > 0
            && match check.counts {
                Counts::Everything => !self.blocked,
                Counts::Requests => admitted && self.verdict.allowed,
                Counts::Failures => false,
            }
    }
}

/// Locks `cells` in their order (by key, so that two requests never wait on each other in a
/// cycle).
fn lock_in_order(cells: &[Arc<Mutex<Cell>>]) -> Vec<MutexGuard<'_, Cell>> {
    cells.iter().map(|cell| cell.lock().unwrap_or_else(PoisonError::into_inner)).collect()
}

impl Cell {
    /// The baseline's average folded up to the window of `now` from the sliding window's own
    /// counters, and the first window not folded yet.
    fn fold_baseline(&self, now: u64, window_ms: u64) -> (u64, u64) {
        let (start, current) = match &self.state {
            State::Window(w) => (w.start_ms, w.current),
            _ => (0, 0),
        };
        let (avg, since) = self.extra.as_ref().map_or((0, 0), |e| e.baseline);
        algorithm::baseline::fold(avg, since, start, current, now - now % window_ms, window_ms)
    }

    /// Counts an adaptive tier's attempt (when `counted`) and reads its reported failures.
    fn count_attempt(&mut self, now: u64, window_ms: u64, counted: bool, bad_reputation: bool) -> Tally {
        let extra = self.extra.get_or_insert_default();
        let attempts = extra.attempts.add(now, window_ms, u64::from(counted));
        self.expires_at = self.expires_at.max(extra.attempts.reset_at);
        let failures = extra.failures.add(now, window_ms, 0);
        Tally { bad_reputation, attempts, counted, failures }
    }

    /// A penalty's part: a counted denial is a violation, and a blocked key is denied with the
    /// longest wait, the block's or the window's. Answers whether the key is blocked.
    fn apply_penalty(&mut self, p: Penalty, verdict: &mut Verdict, counted: bool, now: u64) -> bool {
        let penalty = &mut self.extra.get_or_insert_default().penalty;
        penalty.refresh(now, p);
        if !penalty.blocked(now) && !verdict.allowed && counted {
            penalty.violate(now, p, 1);
            self.expires_at = self.expires_at.max(penalty.expires_at(p));
        }
        if !penalty.blocked(now) {
            return false;
        }
        let wait = penalty.blocked_until - now;
        let window_wait = if verdict.allowed { 0 } else { verdict.retry_after_ms };
        *verdict = Verdict {
            allowed: false,
            remaining: 0,
            retry_after_ms: wait.max(window_wait),
            reset_after_ms: wait.max(verdict.reset_after_ms),
            ..*verdict
        };
        true
    }

    /// Consumes a check's cost: its new state and baseline, and how long the cell must be kept.
    /// When the request was denied, the check's own units count now, and its wait runs from the
    /// state they leave (`Verdict::after_counting`).
    fn commit(&mut self, check: &Check, p: &Pending, now: u64) {
        let q = check.quota;
        if let (Some(fold), Next::Window(..)) = (p.baseline, p.next) {
            self.extra.get_or_insert_default().baseline = fold;
            // As long as Redis keeps it (lua/baseline.lua): KEPT_WINDOWS + 1 windows from the
            // start of the window it was folded up to.
            let kept = q.window_ms.saturating_mul(algorithm::baseline::KEPT_WINDOWS + 1);
            self.expires_at = self.expires_at.max(fold.1.saturating_add(kept));
        }
        match (&mut self.state, p.next) {
            (State::Window(w), Next::Window(next, _)) => {
                *w = next;
                self.expires_at = self.expires_at.max(now + 2 * q.window_ms);
            }
            (State::Log(log), _) => {
                log.commit(now, q.cost);
                self.expires_at = self.expires_at.max(now + q.window_ms);
            }
            (State::Fixed(f), Next::Fixed(next, _)) => {
                *f = next;
                self.expires_at = self.expires_at.max(next.start_ms.saturating_add(q.window_ms));
            }
            (State::Bucket(b), Next::Bucket(next, applied)) => {
                *b = next;
                // Full again (and so forgettable) at tat.
                self.expires_at = self.expires_at.max(
                    u64::try_from(next.tat.div_ceil(u128::from(applied.limit.max(1)))).unwrap_or(u64::MAX),
                );
            }
            _ => unreachable!("the next state is computed from the same cell state"),
        }
    }

    /// A denied request's units counted all the same: its retry-after (and, where it denied, what
    /// is left) from the state the cell is in now, as a retry would find it
    /// (`Verdict::after_counting`). The log keeps what it decided, as lua/decide.lua does.
    fn recount(&self, check: &Check, p: &mut Pending, now: u64) {
        let after = match (&self.state, p.next) {
            (State::Window(w), Next::Window(_, applied)) => {
                algorithm::sliding_window::check(*w, now, applied).0
            }
            (State::Fixed(f), Next::Fixed(_, applied)) => algorithm::fixed_window::check(*f, now, applied).0,
            (State::Bucket(b), Next::Bucket(_, applied)) => {
                token_bucket::check(*b, now, applied, check.quota.limit).0
            }
            _ => return,
        };
        p.verdict.after_counting(after);
    }
}

impl State {
    fn fresh(kind: Kind) -> State {
        match kind {
            Kind::Window => State::Window(Window::default()),
            Kind::Log => State::Log(Log::default()),
            Kind::Fixed => State::Fixed(Fixed::default()),
            Kind::Bucket => State::Bucket(Bucket::default()),
        }
    }

    /// Decides a request of `quota`; a log drops what left the window first. `configured` is the
    /// tier's own limit: a bucket never charges a denied request more (see `token_bucket::check`).
    fn check(&mut self, now: u64, quota: Quota, configured: u64) -> (Verdict, Next) {
        match self {
            State::Window(w) => {
                let (v, next) = algorithm::sliding_window::check(*w, now, quota);
                (v, Next::Window(next, quota))
            }
            State::Log(log) => {
                log.trim(now, quota.window_ms);
                (log.check(now, quota), Next::Log)
            }
            State::Fixed(f) => {
                let (v, next) = algorithm::fixed_window::check(*f, now, quota);
                (v, Next::Fixed(next, quota))
            }
            State::Bucket(b) => {
                let (v, next) = token_bucket::check(*b, now, quota, configured);
                (v, Next::Bucket(next, quota))
            }
        }
    }

    fn counts_as(&self, kind: Kind) -> bool {
        matches!(
            (self, kind),
            (State::Window(_), Kind::Window)
                | (State::Log(_), Kind::Log)
                | (State::Fixed(_), Kind::Fixed)
                | (State::Bucket(_), Kind::Bucket)
        )
    }
}

impl Store for LocalStore {
    /// Never waits: the deadline does not matter.
    fn decide<'a>(
        &'a self,
        checks: &'a [Check],
        mode: Mode,
        _deadline: Option<std::time::Instant>,
    ) -> BoxFuture<'a, Result<Answer, StoreError>> {
        let outcome = self.decide_at(checks, mode, self.now_ms());
        Box::pin(std::future::ready(Ok(outcome)))
    }

    fn shed(&self, checks: &[Check], mode: Mode) -> Answer {
        let outcome = self.by_failure_mode(checks, mode, super::SHED_RETRY_MS);
        Answer { source: super::Source::Shed, ..outcome }
    }

    fn admin<'a>(&'a self, op: AdminOp<'a>) -> BoxFuture<'a, Result<Vec<(String, String)>, StoreError>> {
        Box::pin(std::future::ready(Ok(self.admin_at(op, self.now_ms()))))
    }

    fn report_failures<'a>(&'a self, failures: &'a [Failure]) -> BoxFuture<'a, Result<(), StoreError>> {
        self.report_failures_at(failures, self.now_ms());
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(key: String, limit: u64) -> Check {
        let quota = Quota { limit, window_ms: 60_000, cost: 1 };
        Check::plain(key, Algorithm::SlidingWindow, quota, FailureMode::Local)
    }

    #[test]
    fn plain_keys_keep_no_extra_state() {
        let store = LocalStore::default();
        let c = [check("sluice:{plain:1}".into(), 10)];
        store.decide_at(&c, Mode::Consume, 1_000);
        let cell = store.cells.get("sluice:{plain:1}").map(|c| Arc::clone(&c)).expect("a cell");
        assert!(cell.lock().expect("lock").extra.is_none());
        // What a held key costs beyond its name and the map's slot.
        assert!(std::mem::size_of::<Cell>() <= 64, "{} bytes", std::mem::size_of::<Cell>());
    }

    #[test]
    fn a_flood_of_distinct_keys_stays_within_the_bound() {
        for counting in [Counting::AsConfigured, Counting::FairShare { replicas: 3 }] {
            let store = LocalStore::new(counting, 1_000);
            for i in 0..50_000u64 {
                let c = [check(format!("sluice:{{flood:{i}}}"), 10)];
                assert!(store.decide_at(&c, Mode::Consume, 1_000 + i / 100).admitted);
                assert!(store.len() <= 1_000, "{counting:?}: {} keys after {i}", store.len());
            }
        }
    }

    #[test]
    fn trim_brings_the_store_under_ninety_percent_only_when_past_it() {
        let store = LocalStore::new(Counting::AsConfigured, 1_000);
        let fill = |from: u64, to: u64| {
            for i in from..to {
                store.decide_at(&[check(format!("sluice:{{t:{i}}}"), 10)], Mode::Consume, 1_000 + i);
            }
        };
        fill(0, 900);
        store.trim(2_000);
        assert_eq!(store.len(), 900, "at 90% nothing goes");
        fill(900, 990);
        store.trim(2_000);
        assert_eq!(store.len(), 900, "past 90%, down to 90%");
        let o = store.decide_at(&[check("sluice:{t:989}".into(), 10)], Mode::DryRun, 2_000);
        assert_eq!(o.verdicts[0].remaining, 8, "the newest keys stay (one counted, one looked at)");
    }

    #[test]
    fn the_idlest_keys_go_first() {
        let store = LocalStore::new(Counting::AsConfigured, 100);
        let busy = check("sluice:{t:busy}".into(), 1_000);
        for i in 0..300u64 {
            // The busy key is written at every step, so it is always the last to expire.
            store.decide_at(std::slice::from_ref(&busy), Mode::Consume, 10_000 + i);
            store.decide_at(&[check(format!("sluice:{{t:{i}}}"), 1_000)], Mode::Consume, 10_000 + i);
        }
        let o = store.decide_at(std::slice::from_ref(&busy), Mode::DryRun, 10_300);
        assert_eq!(o.verdicts[0].remaining, 1_000 - 300 - 1, "the busy key kept its count");
    }

    #[test]
    fn fair_share_divides_the_limit_and_full_buckets_are_swept() {
        let store = LocalStore::new(Counting::FairShare { replicas: 4 }, 100);
        let c = [check("sluice:{t:x}".into(), 20)];
        let admitted = (0..10).filter(|_| store.decide_at(&c, Mode::Consume, 5_000).admitted).count();
        assert_eq!(admitted, 5, "20 / 4 replicas");
        assert_eq!(store.sweep(5_000), 0, "an empty bucket is kept");
        // 5 per minute refill: full again after a minute, and then forgettable.
        assert_eq!(store.sweep(65_000), 1);
        assert!(store.is_empty());
    }
}
