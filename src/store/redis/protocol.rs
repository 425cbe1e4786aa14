//! The scripts' calling convention, the one Rust place that knows it: which keys a check or a
//! failure passes in KEYS, which numbers in ARGV, and what a reply holds. Its Lua twin is
//! lua/protocol.lua (`read_check`, `write_record`, `read_failure`), which documents each field; a
//! field added here is added there at the same position, and a test below holds the two to the
//! same lengths.
//!
//! decide.lua decides a batch of requests in one call. KEYS are, per request, its reputation keys,
//! then each check's `check_keys`; ARGV is `BATCH_HEADER` numbers, then one argument per request
//! holding its numbers packed (`pack`): its `DECIDE_HEADER` numbers and per check its `CHECK_ARGS`
//! numbers and those of its options (`ADAPTIVE_ARGS`, `PENALTY_ARGS`, `BASELINE_ARGS`). The reply
//! is one string of packed numbers: per request `REPLY_HEADER` values, then one `RECORD` per check.
//! `Encoded` is one request's part of a call. report.lua: KEYS are each failure's
//! `failure_keys`; ARGV is `REPORT_HEADER` numbers, then per failure its `FAILURE_ARGS` and, with a
//! penalty, its `PENALTY_ARGS`, all decimal.
//!
//! Packed numbers are 64-bit little-endian integers, which Lua's `struct` reads in one call per
//! part: Redis parsed one decimal argument per number before, about a quarter of its time per decision
//! (docs/performance.md).
//!
//! Keys are `<tier-key>:<suffix>`; the tier-key holds the hash tag, so a tier-key's keys share a
//! Cluster slot.

use crate::algorithm::baseline::Baseline;
use crate::algorithm::penalty::Penalty;
use crate::algorithm::{Algorithm, MAX_COUNT, Verdict};
use crate::check::{AdaptiveCheck, Answer, Check, Failure, Mode, Source};
use crate::store::StoreError;
use crate::store::script::LIBRARY;

/// decide.lua's ARGV before the first request: now (0: Redis `TIME`), the number of requests.
pub const BATCH_HEADER: usize = 2;
/// A request's ARGV before its first check: commit (1 consumes), the number of checks, the
/// number of reputation keys that begin the request's KEYS.
pub const DECIDE_HEADER: usize = 3;
/// Every check's numbers: algorithm code, limit, window, cost, shadow, counts code, and whether
/// it is adaptive, has a penalty, has a baseline.
pub const CHECK_ARGS: usize = 10;
/// An adaptive check's: client score and factor bits, the store-side factors' weights
/// (reputation, burst, failed logins), burst multiple, failed-logins threshold, reduction percent.
pub const ADAPTIVE_ARGS: usize = 8;
/// A penalty's: violations, period, base, factor, max.
pub const PENALTY_ARGS: usize = 5;
/// A baseline's: sensitivity and max, in percent.
pub const BASELINE_ARGS: usize = 2;
/// A request's reply before its first record: admitted, now.
pub const REPLY_HEADER: usize = 2;
/// One check's verdict in the reply: allowed, remaining, retry-after, reset-after, effective
/// limit, score, factor bits.
pub const RECORD: usize = 7;
/// report.lua's ARGV before the first failure: now (0: Redis `TIME`), the number of failures.
pub const REPORT_HEADER: usize = 2;
/// Every failure's numbers: window, and whether it is adaptive, has a penalty.
pub const FAILURE_ARGS: usize = 3;

/// Where a tier-key's data lives: `<tier-key>:<suffix>`.
pub mod suffix {
    /// A sliding window's hash.
    pub const WINDOW: &str = "sw";
    /// A sliding log's sorted set, and its running total of units.
    pub const LOG: &str = "log";
    pub const LOG_TOTAL: &str = "seq";
    /// A fixed window's hash.
    pub const FIXED: &str = "fw";
    /// An adaptive tier's attempts and reported failures in the window.
    pub const ATTEMPTS: &str = "att";
    pub const FAILURES: &str = "fail";
    /// A penalty's violations and block.
    pub const PENALTY: &str = "pen";
    /// A behavioural baseline's moving average.
    pub const BASELINE: &str = "base";

    /// All of them: what an operator's reset deletes.
    pub const ALL: [&str; 8] = [WINDOW, LOG, LOG_TOTAL, FIXED, ATTEMPTS, FAILURES, PENALTY, BASELINE];
}

/// One request's part of a decide.lua call: its keys and numbers, encoded by the task that asks,
/// so that joining requests into one call only copies them.
#[derive(Debug)]
pub(super) struct Encoded {
    pub keys: Vec<String>,
    /// Its numbers, packed.
    pub numbers: Vec<u8>,
    /// How many checks, and so records in the reply.
    pub checks: usize,
}

/// Appends numbers as decide.lua's `struct.unpack` reads them: unsigned 64-bit little-endian.
fn pack(out: &mut Vec<u8>, numbers: impl IntoIterator<Item = u64>) {
    for n in numbers {
        out.extend_from_slice(&n.to_le_bytes());
    }
}

impl Encoded {
    pub fn new(checks: &[Check], mode: Mode) -> Encoded {
        let reputation: &[String] =
            checks.iter().find_map(|c| c.adaptive.as_ref()).map_or(&[], |a| &a.reputation);
        let mut keys = Vec::with_capacity(reputation.len() + checks.len());
        keys.extend(reputation.iter().cloned());
        for check in checks {
            keys.extend(check_keys(check).map(|suffix| {
                let mut key = String::with_capacity(check.key.len() + 1 + suffix.len());
                key.push_str(&check.key);
                key.push(':');
                key.push_str(suffix);
                key
            }));
        }
        let mut numbers = Vec::with_capacity(8 * (DECIDE_HEADER + CHECK_ARGS * checks.len()));
        pack(&mut numbers, [(mode == Mode::Consume).into(), checks.len() as u64, reputation.len() as u64]);
        for check in checks {
            pack(&mut numbers, check_args(check));
            if let Some(a) = &check.adaptive {
                pack(&mut numbers, adaptive_args(a));
            }
            if let Some(p) = &check.penalty {
                pack(&mut numbers, penalty_args(p));
            }
            if let Some(b) = &check.baseline {
                pack(&mut numbers, baseline_args(b));
            }
        }
        Encoded { keys, numbers, checks: checks.len() }
    }

    /// About the bytes it adds to a call.
    pub fn weight(&self) -> usize {
        self.keys.iter().map(|k| k.len() + 16).sum::<usize>() + self.numbers.len()
    }
}

/// One FCALL of decide.lua's function deciding `requests` in order (their keys all on one node)
/// at `now` (0: Redis `TIME`).
pub(super) fn decide_cmd<'a>(requests: impl Iterator<Item = &'a Encoded> + Clone, now: u64) -> redis::Cmd {
    let keys: usize = requests.clone().map(|r| r.keys.len()).sum();
    let count = requests.clone().count();
    let mut cmd = redis::cmd("FCALL");
    cmd.arg(&LIBRARY.decide).arg(keys);
    for r in requests.clone() {
        cmd.arg(&r.keys);
    }
    let header: [u64; BATCH_HEADER] = [now, count as u64];
    cmd.arg(&header);
    for r in requests {
        cmd.arg(&r.numbers[..]);
    }
    cmd
}

/// A check's keys, in order, as suffixes of its tier-key.
fn check_keys(check: &Check) -> impl Iterator<Item = &'static str> {
    let algorithm: &[&'static str] = match check.algorithm {
        Algorithm::SlidingWindow => &[suffix::WINDOW],
        Algorithm::SlidingLog => &[suffix::LOG, suffix::LOG_TOTAL],
        Algorithm::FixedWindow => &[suffix::FIXED],
    };
    let adaptive: &[&'static str] =
        if check.adaptive.is_some() { &[suffix::ATTEMPTS, suffix::FAILURES] } else { &[] };
    let penalty = check.penalty.map(|_| suffix::PENALTY);
    let baseline = check.baseline.map(|_| suffix::BASELINE);
    algorithm.iter().chain(adaptive).copied().chain(penalty).chain(baseline)
}

fn check_args(check: &Check) -> [u64; CHECK_ARGS] {
    let q = check.quota;
    [
        check.algorithm.code().into(),
        q.limit,
        q.window_ms,
        // Beyond MAX_COUNT every cost is over every limit alike; below it doubles are exact.
        q.cost.min(MAX_COUNT),
        check.shadow.into(),
        check.quota_mode.into(),
        check.counts.code().into(),
        check.adaptive.is_some().into(),
        check.penalty.is_some().into(),
        check.baseline.is_some().into(),
    ]
}

fn adaptive_args(a: &AdaptiveCheck) -> [u64; ADAPTIVE_ARGS] {
    let s = a.settings;
    [
        s.weights.score(a.client_factors).into(),
        a.client_factors.into(),
        s.weights.reputation.into(),
        s.weights.burst.into(),
        s.weights.failed_logins.into(),
        s.burst_multiple,
        s.failed_logins,
        s.reduction_percent.into(),
    ]
}

fn penalty_args(p: &Penalty) -> [u64; PENALTY_ARGS] {
    [p.violations, p.period_ms, p.base_ms, p.factor, p.max_ms]
}

fn baseline_args(b: &Baseline) -> [u64; BASELINE_ARGS] {
    [b.sensitivity_percent, b.max_percent]
}

/// decide.lua's reply for requests of so many checks each: per request, whether it was admitted
/// and each check's verdict.
pub(super) fn decode_replies(
    reply: &[u8],
    checks: impl Iterator<Item = usize> + Clone,
) -> Result<Vec<Answer>, StoreError> {
    let expected: usize = checks.clone().map(|n| REPLY_HEADER + RECORD * n).sum();
    if reply.len() != 8 * expected {
        return Err(StoreError::BadReply(format!("{} bytes where {expected} numbers were due", reply.len())));
    }
    let values: Vec<i64> = reply
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
        .collect();
    let mut rest = &values[..];
    checks
        .map(|n| {
            let (one, after) = rest.split_at(REPLY_HEADER + RECORD * n);
            rest = after;
            let (header, records) = one.split_at(REPLY_HEADER);
            let verdicts = records.chunks_exact(RECORD).map(decode_record).collect::<Result<Vec<_>, _>>()?;
            Ok(Answer { admitted: header[0] == 1, verdicts, source: Source::Redis })
        })
        .collect()
}

/// One check's verdict, as `write_record` in lua/protocol.lua writes it.
fn decode_record(record: &[i64]) -> Result<Verdict, StoreError> {
    let Ok([allowed, remaining, retry, reset, limit, score, factors]) = <[i64; RECORD]>::try_from(record)
    else {
        return Err(StoreError::BadReply(format!("a record of {} values", record.len())));
    };
    let non_negative =
        |v: i64| u64::try_from(v).map_err(|_| StoreError::BadReply(format!("negative value {v}")));
    Ok(Verdict {
        allowed: allowed == 1,
        remaining: non_negative(remaining)?,
        retry_after_ms: non_negative(retry)?,
        reset_after_ms: non_negative(reset)?,
        limit: non_negative(limit)?,
        score: u8::try_from(score).map_err(|_| StoreError::BadReply(format!("score {score}")))?,
        factors: u8::try_from(factors).map_err(|_| StoreError::BadReply(format!("factors {factors}")))?,
    })
}

/// One FCALL of report.lua's function counting `failures` (all in one slot) at `now` (0: Redis `TIME`).
pub(super) fn report_cmd(failures: &[&Failure], now: u64) -> redis::Cmd {
    let keys = failures.iter().map(|f| failure_keys(f).count()).sum::<usize>();
    let mut cmd = redis::cmd("FCALL");
    cmd.arg(&LIBRARY.report).arg(keys);
    for f in failures {
        for suffix in failure_keys(f) {
            cmd.arg(format!("{}:{suffix}", f.key));
        }
    }
    let header: [u64; REPORT_HEADER] = [now, failures.len() as u64];
    cmd.arg(&header);
    for f in failures {
        let args: [u64; FAILURE_ARGS] = [f.window_ms, f.adaptive.into(), f.penalty.is_some().into()];
        cmd.arg(&args);
        if let Some(p) = &f.penalty {
            cmd.arg(&penalty_args(p));
        }
    }
    cmd
}

/// A failure's keys, in order, as suffixes of its tier-key.
fn failure_keys(f: &Failure) -> impl Iterator<Item = &'static str> {
    let adaptive = f.adaptive.then_some(suffix::FAILURES);
    let penalty = f.penalty.map(|_| suffix::PENALTY);
    adaptive.into_iter().chain(penalty)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The count of a `local NAME = N -- its fields` line in lua/protocol.lua.
    fn lua_count(name: &str) -> usize {
        let lua = include_str!("../../../lua/protocol.lua");
        let line = lua
            .lines()
            .find_map(|l| l.strip_prefix(&format!("local {name} = ")))
            .unwrap_or_else(|| panic!("{name} in protocol.lua"));
        line.split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{name}: {line}"))
    }

    #[test]
    fn the_lua_side_reads_and_writes_what_this_side_does() {
        for (name, len) in [
            ("BATCH_HEADER", BATCH_HEADER),
            ("DECIDE_HEADER", DECIDE_HEADER),
            ("CHECK_ARGS", CHECK_ARGS),
            ("ADAPTIVE_ARGS", ADAPTIVE_ARGS),
            ("PENALTY_ARGS", PENALTY_ARGS),
            ("BASELINE_ARGS", BASELINE_ARGS),
            ("REPLY_HEADER", REPLY_HEADER),
            ("RECORD", RECORD),
            ("REPORT_HEADER", REPORT_HEADER),
            ("FAILURE_ARGS", FAILURE_ARGS),
        ] {
            assert_eq!(lua_count(name), len, "{name}");
        }
        let lua = include_str!("../../../lua/protocol.lua");
        for (name, len, number) in [
            ("DECIDE_FORMAT", DECIDE_HEADER, "I8"),
            ("CHECK_FORMAT", CHECK_ARGS, "I8"),
            ("ADAPTIVE_FORMAT", ADAPTIVE_ARGS, "I8"),
            ("PENALTY_FORMAT", PENALTY_ARGS, "I8"),
            ("BASELINE_FORMAT", BASELINE_ARGS, "I8"),
            ("REPLY_FORMAT", REPLY_HEADER, "i8"),
            ("RECORD_FORMAT", RECORD, "i8"),
            ("PLAIN_FORMAT", DECIDE_HEADER + CHECK_ARGS, "I8"),
            ("PLAIN_REPLY_FORMAT", REPLY_HEADER + RECORD, "i8"),
        ] {
            let format = lua
                .lines()
                .find_map(|l| l.strip_prefix(&format!("local {name} = '")))
                .and_then(|rest| rest.strip_suffix('\''))
                .unwrap_or_else(|| panic!("{name} in protocol.lua"));
            assert_eq!(format, format!("<{}", number.repeat(len)), "{name}");
        }
    }

    #[test]
    fn a_check_passes_every_key_and_number_of_its_options() {
        use crate::algorithm::Quota;
        use crate::check::FailureMode;
        let quota = Quota { limit: 10, window_ms: 1_000, cost: 1 };
        let mut check = Check::plain("t".into(), Algorithm::SlidingLog, quota, FailureMode::Local);
        check.adaptive = Some(AdaptiveCheck {
            settings: Default::default(),
            client_factors: 0,
            reputation: vec!["rep".to_owned()].into(),
        });
        check.penalty = Some(Penalty { violations: 3, period_ms: 1, base_ms: 1, factor: 2, max_ms: 9 });
        check.baseline = Some(Baseline { sensitivity_percent: 150, max_percent: 300 });
        let one = Encoded::new(std::slice::from_ref(&check), Mode::Consume);
        let cmd = decide_cmd([&one, &one].into_iter(), 5);
        let args: Vec<String> = cmd
            .args_iter()
            .map(|a| match a {
                redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                _ => "cursor".to_owned(),
            })
            .collect();
        let keys = ["rep", "t:log", "t:seq", "t:att", "t:fail", "t:pen", "t:base"];
        assert_eq!(args[2], (2 * keys.len()).to_string(), "two requests' keys");
        assert_eq!(args[3..3 + keys.len()], keys);
        assert_eq!(args[3 + keys.len()..][..keys.len()], keys);
        let header = &args[3 + 2 * keys.len()..];
        assert_eq!(header[..BATCH_HEADER], ["5", "2"]);
        let packed: Vec<&[u8]> = cmd
            .args_iter()
            .skip(3 + 2 * keys.len() + BATCH_HEADER)
            .map(|a| match a {
                redis::Arg::Simple(bytes) => bytes,
                _ => &[][..],
            })
            .collect();
        assert_eq!(packed.len(), 2, "one argument a request");
        let each = DECIDE_HEADER + CHECK_ARGS + ADAPTIVE_ARGS + PENALTY_ARGS + BASELINE_ARGS;
        let numbers: Vec<u64> =
            packed[0].chunks_exact(8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes"))).collect();
        assert_eq!(packed[0].len(), 8 * each);
        assert_eq!(numbers[..DECIDE_HEADER + 2], [1, 1, 1, Algorithm::SlidingLog.code().into(), 10]);
        assert_eq!(numbers[DECIDE_HEADER + CHECK_ARGS + ADAPTIVE_ARGS..][..PENALTY_ARGS], [3, 1, 1, 2, 9]);
        assert_eq!(numbers[each - BASELINE_ARGS..], [150, 300]);
        assert_eq!(packed[0], packed[1]);
    }
}
