//! The storage seam: one async `Store` trait that decides a request against all of its tier-keys at
//! once, atomically, and the errors a store can return.
//!
//! A store knows keys, quotas and algorithms; it knows nothing of tiers' matching rules, gRPC or
//! headers. Where each lives:
//!
//! - `local`: `LocalStore`, state in this process, decided with the pure twins in `algorithm`;
//! - `redis/`: `RedisStore`, one request of a script call (per slot in a Cluster): `batch` (calls
//!   that decide many requests), `connection` (topologies, credentials, TLS), `protocol` (the
//!   scripts' KEYS, ARGV and reply), `slot` (`key_slot`);
//! - `script`: the Lua files of lua/ assembled into the two scripts;
//! - `fallback`: `FallbackStore`, Redis within a deadline, else a local store by failure mode.

pub mod events;
pub mod fallback;
pub mod local;
pub mod redis;
pub mod script;

use std::fmt;
use std::time::Instant;

use futures::future::BoxFuture;

use crate::algorithm::Verdict;
use crate::check::{AdminOp, Answer, Check, Failure, FailureMode, Mode, SecurityEvent, Source};

/// A request's checks with each key once, where a store could not decide its repeats one by one:
/// checks on the same key (two identical Envoy descriptors, two values under one shared wildcard,
/// an override on a file's descriptor) become one check whose cost is their sum and whose limit is
/// the strictest, so a store never reads, locks or writes a key twice for one request, and counts
/// stay exact. Repeats that count everything in a consumed request stay apart (`Check::in_sequence`).
#[derive(Debug)]
pub struct Merged {
    pub checks: Vec<Check>,
    /// For each check asked for, the merged check that decides it.
    of: Vec<usize>,
}

impl Merged {
    /// `None` when every key is already distinct (the common case, which allocates nothing more),
    /// or when every repeat is decided in sequence.
    pub fn of(checks: &[Check], mode: Mode) -> Option<Merged> {
        // Most requests have a few tiers: look for a repeat without allocating first.
        let repeats = match checks.len() {
            0 | 1 => false,
            n if n <= 8 => checks.iter().enumerate().any(|(i, c)| checks[..i].iter().any(|d| d.key == c.key)),
            _ => true,
        };
        if !repeats {
            return None;
        }
        // Sorted, so a request of many long keys costs n log n comparisons, not n squared.
        let mut order: Vec<usize> = (0..checks.len()).collect();
        order.sort_unstable_by(|&a, &b| checks[a].key.cmp(&checks[b].key).then(a.cmp(&b)));
        let same = |a: usize, b: usize| checks[a].key == checks[b].key;
        // Each check's representative: the first check asked for with its key, when its repeats
        // merge; itself otherwise.
        let mut first: Vec<usize> = (0..checks.len()).collect();
        let mut merging = false;
        for run in order.chunk_by(|&a, &b| same(a, b)) {
            if run.len() > 1 && !run.iter().all(|&i| checks[i].in_sequence(mode)) {
                merging = true;
                for &i in run {
                    first[i] = run[0];
                }
            }
        }
        if !merging {
            return None;
        }
        let mut merged: Vec<Check> = Vec::with_capacity(checks.len());
        let mut slot = vec![0; checks.len()];
        for (i, check) in checks.iter().enumerate() {
            if first[i] == i {
                slot[i] = merged.len();
                merged.push(check.clone());
            } else {
                let m = &mut merged[slot[first[i]]];
                m.quota.cost = m.quota.cost.saturating_add(check.quota.cost);
                m.quota.limit = m.quota.limit.min(check.quota.limit);
            }
        }
        let of = first.iter().map(|&f| slot[f]).collect();
        Some(Merged { checks: merged, of })
    }

    /// The merged outcome, one verdict per check asked for.
    pub fn expand(&self, outcome: Answer) -> Answer {
        Answer { verdicts: self.of.iter().map(|&j| outcome.verdicts[j]).collect(), ..outcome }
    }
}

/// Where counts live. Every method but `shed` may wait on I/O; none holds a lock across it.
pub trait Store: Send + Sync + fmt::Debug {
    /// Decides one request against every check at once: admitted only if every enforcing check
    /// allows, and then (unless dry run) every check consumes its cost; otherwise nothing changes.
    /// A store that waits on something answers by the failure mode rather than wait past
    /// `deadline` (the caller's, when it sent one); stores that never wait ignore it.
    fn decide<'a>(
        &'a self,
        checks: &'a [Check],
        mode: Mode,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<Answer, StoreError>>;

    /// Answers at once by each check's failure mode without waiting on anything: for load that
    /// Sluice sheds. `local` checks count in process where the store keeps counts there, and are
    /// allowed uncounted where it does not.
    fn shed(&self, checks: &[Check], mode: Mode) -> Answer {
        let _ = mode;
        uncounted_by_failure_mode(checks, SHED_RETRY_MS)
    }

    /// Counts one reported failure (e.g. a failed login) on each tier-key.
    fn report_failures<'a>(&'a self, failures: &'a [Failure]) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Carries out an operator's action; answers `(field, value)` pairs: what `Inspect` found, or
    /// `("key", name)` for each key touched.
    fn admin<'a>(&'a self, op: AdminOp<'a>) -> BoxFuture<'a, Result<Vec<(String, String)>, StoreError>>;

    /// Keeps a security event where operators can read it (`sluice events`), at most `max_len` of
    /// them. Stores without a place for events drop it; the log line and metric are written anyway.
    fn security_event<'a>(&'a self, _event: &'a SecurityEvent, _max_len: u64) -> BoxFuture<'a, ()> {
        Box::pin(std::future::ready(()))
    }
}

/// Each check as its failure mode says, with nowhere to count: `deny` checks denied with
/// `deny_retry_ms`, the others allowed uncounted (see `LocalStore::by_failure_mode` for a store
/// that counts `local` checks).
pub fn uncounted_by_failure_mode(checks: &[Check], deny_retry_ms: u64) -> Answer {
    let verdicts: Vec<Verdict> = checks.iter().map(|c| failure_verdict(c, deny_retry_ms)).collect();
    let admitted =
        crate::algorithm::admits(verdicts.iter().zip(checks).map(|(v, c)| (v, c.shadow, c.quota_mode)));
    Answer { admitted, verdicts, source: Source::Shed }
}

/// The verdict of a check that is not counted: denied when it fails closed, else allowed whole.
pub(crate) fn failure_verdict(check: &Check, deny_retry_ms: u64) -> Verdict {
    let limit = check.quota.limit;
    match check.on_failure {
        FailureMode::Deny => {
            Verdict { allowed: false, retry_after_ms: deny_retry_ms, limit, ..Verdict::default() }
        }
        FailureMode::Local | FailureMode::Allow => {
            Verdict { allowed: true, remaining: limit, limit, ..Verdict::default() }
        }
    }
}

/// The retry-after of a check that fails closed (`deny`) when its load is shed.
pub const SHED_RETRY_MS: u64 = 1000;

/// The Redis stream of security events.
pub const EVENTS_STREAM: &str = "sluice:events";

/// Why a store could not decide.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("redis did not answer within {0} ms")]
    Timeout(u64),
    #[error("unexpected reply from the decision script: {0}")]
    BadReply(String),
}

impl StoreError {
    /// Whether trying again later (or elsewhere) may help: the store was unreachable or late, as
    /// opposed to a bug in what we sent.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Redis(e) => {
                e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_refusal()
                    || e.is_connection_dropped()
                    || e.is_cluster_error()
                    || matches!(
                        e.kind(),
                        ::redis::ErrorKind::Server(
                            ::redis::ServerErrorKind::BusyLoading
                                | ::redis::ServerErrorKind::TryAgain
                                | ::redis::ServerErrorKind::ClusterDown
                                | ::redis::ServerErrorKind::MasterDown
                                | ::redis::ServerErrorKind::ReadOnly
                        )
                    )
            }
            StoreError::Timeout(_) => true,
            StoreError::BadReply(_) => false,
        }
    }

    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Redis(e) if e.is_timeout() => "timeout",
            StoreError::Redis(e) if e.is_connection_refusal() => "refused",
            StoreError::Redis(e) if e.is_io_error() || e.is_connection_dropped() => "io",
            StoreError::Redis(_) => "server",
            StoreError::Timeout(_) => "deadline",
            StoreError::BadReply(_) => "bad_reply",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::{Algorithm, Quota};
    use crate::check::Counts;

    fn check(key: &str, cost: u64) -> Check {
        let quota = Quota { limit: 10, window_ms: 1_000, cost };
        Check::plain(key.into(), Algorithm::SlidingWindow, quota, FailureMode::Local)
    }

    #[test]
    fn repeats_merge_into_the_first_with_the_summed_cost_few_keys_or_many() {
        assert!(Merged::of(&[check("a", 1), check("b", 1)], Mode::Consume).is_none());
        for n in [3, 9, 40] {
            let mut checks: Vec<Check> = (0..n).map(|i| check(&format!("k{i}"), 1)).collect();
            assert!(Merged::of(&checks, Mode::Consume).is_none(), "{n} distinct keys");
            checks.push(check("k1", 4));
            checks.push(check("k1", u64::MAX));
            let m = Merged::of(&checks, Mode::Consume).expect("a repeat");
            assert_eq!(m.checks.len(), n);
            assert_eq!(m.checks[1].quota.cost, u64::MAX, "saturated, not wrapped");
            let verdicts = (0..n).map(|i| Verdict { remaining: i as u64, ..Verdict::default() }).collect();
            let out = m.expand(Answer { admitted: true, verdicts, source: Source::Local });
            assert_eq!(out.verdicts.len(), n + 2);
            assert_eq!((out.verdicts[n].remaining, out.verdicts[n + 1].remaining), (1, 1));
        }
    }

    #[test]
    fn repeats_take_the_strictest_limit_unless_they_count_everything_in_a_consumed_request() {
        let tight = Check { quota: Quota { limit: 3, ..check("k", 2).quota }, ..check("k", 2) };
        let m = Merged::of(&[check("k", 1), tight.clone()], Mode::Consume).expect("a repeat");
        assert_eq!((m.checks.len(), m.checks[0].quota.limit, m.checks[0].quota.cost), (1, 3, 3));

        let everything = |c: Check| Check { counts: Counts::Everything, ..c };
        let checks = [everything(check("k", 1)), everything(tight), everything(check("j", 1))];
        assert!(Merged::of(&checks, Mode::Consume).is_none(), "decided in sequence");
        let dry = Merged::of(&checks, Mode::DryRun).expect("a dry run writes nothing between repeats");
        assert_eq!((dry.checks.len(), dry.checks[0].quota.limit, dry.checks[0].quota.cost), (2, 3, 3));
        // One of the repeats counts admitted requests only: the whole key merges.
        let mixed = [everything(check("k", 1)), check("k", 1)];
        assert_eq!(Merged::of(&mixed, Mode::Consume).expect("merged").checks.len(), 1);
    }
}
