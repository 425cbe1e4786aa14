//! The in-process store: the same algorithms and the same all-or-nothing rule as the Lua script, on
//! a `DashMap` of per-key cells.
//!
//! A request locks the cells of all its keys, in key order so that two requests never wait on each
//! other in a cycle, decides, commits or not, and lets go. Nothing is held across an `.await`.
//! Every cell carries an expiry like a Redis TTL; `sweep` drops the expired ones.

use std::sync::{Arc, Mutex, PoisonError};

use dashmap::DashMap;
use futures::future::BoxFuture;
use tokio::time::Instant;

use super::{Check, Mode, Outcome, Source, Store, StoreError};
use crate::algorithm::{self, Algorithm, sliding_log::Log, sliding_window::Window};

#[derive(Debug)]
enum State {
    Window(Window),
    Log(Log),
}

#[derive(Debug)]
struct Cell {
    state: State,
    /// Instant (store clock, ms) after which the state no longer matters.
    expires_at: u64,
}

/// Counts kept in this process. Clones share the same counts.
#[derive(Clone, Debug)]
pub struct LocalStore {
    cells: Arc<DashMap<String, Arc<Mutex<Cell>>>>,
    epoch: Instant,
    source: Source,
}

impl Default for LocalStore {
    fn default() -> Self {
        Self::new(Source::Local)
    }
}

impl LocalStore {
    /// `source` is what decisions report: `Local` for the primary store, `Fallback` when it stands
    /// in for Redis.
    pub fn new(source: Source) -> Self {
        LocalStore { cells: Arc::new(DashMap::new()), epoch: Instant::now(), source }
    }

    /// Milliseconds on this store's monotonic clock.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Number of keys held, expired or not.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// Drops every key whose state expired before `now`; returns how many went.
    pub fn sweep(&self, now: u64) -> usize {
        let before = self.cells.len();
        // A cell some request still holds (strong count above one) is kept even if expired, or that
        // request could commit into a cell no longer in the map. Clones are only taken under the
        // shard lock that `retain` holds, so the count cannot rise meanwhile.
        self.cells.retain(|_, cell| {
            Arc::strong_count(cell) > 1 || cell.try_lock().map_or(true, |cell| cell.expires_at > now)
        });
        before.saturating_sub(self.cells.len())
    }

    /// Decides at an instant chosen by the caller: what the differential test uses to feed this
    /// store and the Lua script the same clock.
    pub fn decide_at(&self, checks: &[Check], mode: Mode, now: u64) -> Outcome {
        let mut order: Vec<usize> = (0..checks.len()).collect();
        order.sort_by(|&a, &b| checks[a].key.cmp(&checks[b].key));
        // Keys are distinct within a request (each names its tier); a repeat would lock twice.
        debug_assert!(order.windows(2).all(|w| checks[w[0]].key != checks[w[1]].key));
        let cells: Vec<(usize, Arc<Mutex<Cell>>)> =
            order.iter().map(|&i| (i, self.cell(&checks[i]))).collect();
        let mut guards: Vec<_> =
            cells.iter().map(|(i, cell)| (*i, cell.lock().unwrap_or_else(PoisonError::into_inner))).collect();
        guards.sort_by_key(|(i, _)| *i);

        let mut verdicts = Vec::with_capacity(checks.len());
        let mut next_windows = Vec::with_capacity(checks.len());
        for (check, (_, cell)) in checks.iter().zip(guards.iter_mut()) {
            if !cell.state.counts_with(check.algorithm) {
                // The tier changed algorithm on a reload: start over with the new one.
                cell.state = State::fresh(check.algorithm);
            }
            let (verdict, next) = match &mut cell.state {
                State::Window(w) => {
                    let (v, next) = algorithm::sliding_window::check(*w, now, check.quota);
                    (v, Some(next))
                }
                State::Log(log) => {
                    log.trim(now, check.quota.window_ms);
                    (log.check(now, check.quota), None)
                }
            };
            verdicts.push(verdict);
            next_windows.push(next);
        }

        let admitted = algorithm::admits(verdicts.iter().zip(checks.iter().map(|c| c.shadow)));
        if admitted && mode == Mode::Consume {
            for ((check, (_, cell)), next) in checks.iter().zip(guards.iter_mut()).zip(next_windows) {
                let q = check.quota;
                match &mut cell.state {
                    State::Window(w) => {
                        *w = next.unwrap_or(*w);
                        cell.expires_at = now + 2 * q.window_ms;
                    }
                    State::Log(log) => {
                        log.commit(now, q.cost);
                        cell.expires_at = now + q.window_ms;
                    }
                }
            }
        }
        Outcome { admitted, verdicts, source: self.source }
    }

    fn cell(&self, check: &Check) -> Arc<Mutex<Cell>> {
        if let Some(cell) = self.cells.get(&check.key) {
            return Arc::clone(&cell);
        }
        let entry = self.cells.entry(check.key.clone()).or_insert_with(|| {
            Arc::new(Mutex::new(Cell { state: State::fresh(check.algorithm), expires_at: 0 }))
        });
        Arc::clone(&entry)
    }
}

impl State {
    fn fresh(algorithm: Algorithm) -> State {
        match algorithm {
            Algorithm::SlidingWindow => State::Window(Window::default()),
            Algorithm::SlidingLog => State::Log(Log::default()),
        }
    }

    fn counts_with(&self, algorithm: Algorithm) -> bool {
        matches!(
            (self, algorithm),
            (State::Window(_), Algorithm::SlidingWindow) | (State::Log(_), Algorithm::SlidingLog)
        )
    }
}

impl Store for LocalStore {
    fn decide<'a>(&'a self, checks: &'a [Check], mode: Mode) -> BoxFuture<'a, Result<Outcome, StoreError>> {
        let outcome = self.decide_at(checks, mode, self.now_ms());
        Box::pin(std::future::ready(Ok(outcome)))
    }
}
