//! Many decisions per call: the requests that arrive while a call to Redis is in flight go
//! together in the next one. decide.lua walks them in arrival order and decides each exactly as if
//! it had been sent alone (all or nothing per request, its own reply), and Redis runs the whole
//! call atomically, so counts stay exact. What a call saves is the fixed cost each one carries on
//! both sides: the hand-off to the connection's task and back, RESP framing, Redis's dispatch and
//! the setting up of a function call (docs/performance.md has the figures).
//!
//! An idle store waits for nothing: a request that finds no call in flight is sent at once, alone.
//! One task per store sends the calls, one at a time; in a Cluster, one call per hash slot of the
//! requests gathered, all in flight at once. A call is bounded by the earliest deadline of the
//! requests in it: when it misses that, every request in it fails with a timeout, which the
//! fallback store answers by each one's failure mode. A request whose caller stopped waiting
//! before its call was sent is dropped uncounted.
//!
//! Traced requests (see `traces`) each have a span from joining the queue to the answer, with an
//! event when their call was sent; each call carrying one of them has a span of its own, linked to
//! theirs. With none traced, a call carries no more than before.

use std::time::Instant;

use opentelemetry::trace::SpanContext;
use tokio::sync::{mpsc, oneshot};

use super::connection::Connection;
use super::protocol::{self, Encoded};
use crate::check::Answer;
use crate::metrics;
use crate::store::StoreError;
use crate::traces::{self, CallSeen};

/// At most this many requests in one call...
const MOST_REQUESTS: usize = 128;
/// ...and about this many bytes of keys and numbers, so that no call holds Redis for long.
const MOST_BYTES: usize = 256 * 1024;

/// The sending side of a store's batches. Dropping the last clone ends its task.
#[derive(Clone)]
pub(super) struct Batcher {
    jobs: mpsc::UnboundedSender<Job>,
}

/// One request waiting for a call.
struct Job {
    request: Encoded,
    /// Its hash slot, in a Cluster: calls hold one slot's requests only.
    slot: Option<u16>,
    deadline: Option<Instant>,
    /// The request's span, when it is traced: the call's span links to it.
    traced: Option<SpanContext>,
    answer: oneshot::Sender<Reply>,
}

/// A request's answer and, when it is traced, the call it went in.
type Reply = (Result<Answer, StoreError>, Option<CallSeen>);

impl Batcher {
    /// Starts the task that sends `conn`'s calls.
    pub(super) fn start(conn: Connection) -> Batcher {
        let (jobs, queue) = mpsc::unbounded_channel();
        tokio::spawn(send_calls(conn, queue));
        Batcher { jobs }
    }

    /// Decides `request` in the next call (with the others of its `slot`, in a Cluster).
    pub(super) async fn decide(
        &self,
        request: Encoded,
        slot: Option<u16>,
        deadline: Option<Instant>,
    ) -> Result<Answer, StoreError> {
        let (span, traced) = traces::redis_span();
        let (answer, answered) = oneshot::channel();
        let job = Job { request, slot, deadline, traced, answer };
        if self.jobs.send(job).is_err() {
            return Err(stopped());
        }
        let (answer, call) = answered.await.unwrap_or_else(|_| (Err(stopped()), None));
        traces::redis_answered(&span, call.as_ref(), answer.as_ref().err().map(StoreError::kind));
        answer
    }
}

fn stopped() -> StoreError {
    StoreError::BadReply("the task that sends calls to redis has stopped".into())
}

/// Gathers what is waiting, sends it, hands out the answers; until every `Batcher` is dropped.
async fn send_calls(conn: Connection, mut queue: mpsc::UnboundedReceiver<Job>) {
    let mut jobs: Vec<Job> = Vec::with_capacity(MOST_REQUESTS);
    while let Some(first) = queue.recv().await {
        let mut bytes = first.request.weight();
        jobs.push(first);
        while jobs.len() < MOST_REQUESTS && bytes < MOST_BYTES {
            let Ok(job) = queue.try_recv() else { break };
            bytes += job.request.weight();
            jobs.push(job);
        }
        let now = Instant::now();
        jobs.retain(|j| !j.answer.is_closed());
        for late in jobs.extract_if(.., |j| j.deadline.is_some_and(|d| d <= now)) {
            let _ = late.answer.send((Err(StoreError::Timeout(0)), None));
        }
        if jobs.is_empty() {
            continue;
        }
        metrics::redis_batch(jobs.len());
        let earliest = jobs.iter().filter_map(|j| j.deadline).min();
        let groups = by_slot(&jobs);
        let traced =
            if jobs.iter().any(|j| j.traced.is_some()) { call_spans(&jobs, &groups) } else { Vec::new() };
        let calls = futures::future::join_all(groups.iter().map(|members| {
            let cmd = protocol::decide_cmd(members.iter().map(|&i| &jobs[i].request), 0);
            let conn = &conn;
            async move { conn.fcall::<Vec<u8>>(&cmd).await }
        }));
        let replies = match earliest {
            Some(deadline) => tokio::time::timeout_at(deadline.into(), calls).await.ok(),
            None => Some(calls.await),
        };
        let mut answers: Vec<Option<Result<Answer, StoreError>>> = (0..jobs.len()).map(|_| None).collect();
        match replies {
            None => {
                for (span, _) in traced.iter().flatten() {
                    span.record("error.type", "timeout");
                }
                let waited = earliest.map_or(0, |d| d.saturating_duration_since(now).as_millis());
                for a in &mut answers {
                    *a = Some(Err(StoreError::Timeout(u64::try_from(waited).unwrap_or(u64::MAX))));
                }
            }
            Some(replies) => {
                for (members, reply) in groups.iter().zip(replies) {
                    let decoded = reply.map_err(StoreError::from).and_then(|values| {
                        protocol::decode_replies(&values, members.iter().map(|&i| jobs[i].request.checks))
                    });
                    match decoded {
                        Ok(each) => {
                            for (&i, answer) in members.iter().zip(each) {
                                answers[i] = Some(Ok(answer));
                            }
                        }
                        Err(e) => {
                            for &i in members {
                                answers[i] = Some(Err(e.clone()));
                            }
                        }
                    }
                }
            }
        }
        let mut seen = calls_seen(&jobs, &groups, traced, now);
        for (i, (job, answer)) in jobs.drain(..).zip(answers).enumerate() {
            let answer = answer.unwrap_or_else(|| Err(StoreError::BadReply("no answer in the call".into())));
            let _ = job.answer.send((answer, seen.get_mut(i).and_then(Option::take)));
        }
    }
}

/// A span for each call that carries a traced request (`None` for the others), by group.
fn call_spans(jobs: &[Job], groups: &[Vec<usize>]) -> Vec<Option<(tracing::Span, SpanContext)>> {
    groups
        .iter()
        .map(|members| {
            let traced = members.iter().filter_map(|&i| jobs[i].traced.as_ref());
            traces::redis_call_span(traced, members.len())
        })
        .collect()
}

/// What each traced job learns of its call (by job; empty when none is traced). Ends the calls'
/// spans.
fn calls_seen(
    jobs: &[Job],
    groups: &[Vec<usize>],
    spans: Vec<Option<(tracing::Span, SpanContext)>>,
    sent: Instant,
) -> Vec<Option<CallSeen>> {
    if spans.is_empty() {
        return Vec::new();
    }
    let mut seen: Vec<Option<CallSeen>> = (0..jobs.len()).map(|_| None).collect();
    for (members, span) in groups.iter().zip(spans) {
        let Some((_, call)) = span else { continue };
        for &i in members.iter().filter(|&&i| jobs[i].traced.is_some()) {
            seen[i] = Some(CallSeen { sent, size: members.len(), call: call.clone() });
        }
    }
    seen
}

/// The indices of `jobs` by call: one call per hash slot in a Cluster, one call otherwise; in
/// arrival order within each.
fn by_slot(jobs: &[Job]) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by_key(|&i| jobs[i].slot);
    order.chunk_by(|&a, &b| jobs[a].slot == jobs[b].slot).map(<[usize]>::to_vec).collect()
}
