//! The scripts' calling convention: which keys, which arguments and which reply.

use crate::algorithm::penalty::Penalty;
use crate::algorithm::{Algorithm, Verdict};
use crate::check::{Answer, Check, Failure, Mode, Source};
use crate::store::StoreError;
use crate::store::script::{DECIDE, REPORT};

/// Every suffix a tier-key's data may live under.
pub(super) const SUFFIXES: [&str; 7] = ["sw", "log", "seq", "att", "fail", "pen", "base"];

/// One EVALSHA of the decision script for the checks of one request (see lua/decide.lua).
pub(super) fn decide_cmd(checks: &[Check], mode: Mode, now: u64) -> redis::Cmd {
    let reputation: &[String] =
        checks.iter().find_map(|c| c.adaptive.as_ref()).map_or(&[], |a| &a.reputation);
    let keys: usize = checks
        .iter()
        .map(|c| {
            let algorithm = if c.algorithm == Algorithm::SlidingLog { 2 } else { 1 };
            algorithm
                + if c.adaptive.is_some() { 2 } else { 0 }
                + usize::from(c.penalty.is_some())
                + usize::from(c.baseline.is_some())
        })
        .sum::<usize>()
        + reputation.len();
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(DECIDE.get_hash()).arg(keys);
    for check in checks {
        match check.algorithm {
            Algorithm::SlidingWindow => {
                cmd.arg(format!("{}:sw", check.key));
            }
            Algorithm::SlidingLog => {
                cmd.arg(format!("{}:log", check.key)).arg(format!("{}:seq", check.key));
            }
        }
        if check.adaptive.is_some() {
            cmd.arg(format!("{}:att", check.key)).arg(format!("{}:fail", check.key));
        }
        if check.penalty.is_some() {
            cmd.arg(format!("{}:pen", check.key));
        }
        if check.baseline.is_some() {
            cmd.arg(format!("{}:base", check.key));
        }
    }
    cmd.arg(reputation);
    cmd.arg(now).arg(u8::from(mode == Mode::Consume)).arg(checks.len()).arg(reputation.len());
    for check in checks {
        let q = check.quota;
        cmd.arg(check.algorithm.code())
            .arg(q.limit)
            .arg(q.window_ms)
            // Beyond MAX_COUNT every cost is over every limit alike; below it doubles are exact.
            .arg(q.cost.min(crate::algorithm::MAX_COUNT))
            .arg(u8::from(check.shadow))
            .arg(check.counts.code())
            .arg(u8::from(check.adaptive.is_some()))
            .arg(u8::from(check.penalty.is_some()))
            .arg(u8::from(check.baseline.is_some()));
        if let Some(a) = &check.adaptive {
            let s = a.settings;
            cmd.arg(s.weights.score(a.client_factors))
                .arg(a.client_factors)
                .arg(s.weights.reputation)
                .arg(s.weights.burst)
                .arg(s.weights.failed_logins)
                .arg(s.burst_multiple)
                .arg(s.failed_logins)
                .arg(s.reduction_percent);
        }
        if let Some(p) = &check.penalty {
            penalty_args(&mut cmd, p);
        }
        if let Some(b) = &check.baseline {
            cmd.arg(b.sensitivity_percent).arg(b.max_percent);
        }
    }
    cmd
}

/// One EVALSHA of the report script for failures whose keys share one slot (see lua/report.lua).
pub(super) fn report_cmd(failures: &[&Failure], now: u64) -> redis::Cmd {
    let keys: usize =
        failures.iter().map(|f| usize::from(f.adaptive) + usize::from(f.penalty.is_some())).sum();
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(REPORT.get_hash()).arg(keys);
    for f in failures {
        if f.adaptive {
            cmd.arg(format!("{}:fail", f.key));
        }
        if f.penalty.is_some() {
            cmd.arg(format!("{}:pen", f.key));
        }
    }
    cmd.arg(now).arg(failures.len());
    for f in failures {
        cmd.arg(f.window_ms).arg(u8::from(f.adaptive)).arg(u8::from(f.penalty.is_some()));
        if let Some(p) = &f.penalty {
            penalty_args(&mut cmd, p);
        }
    }
    cmd
}

fn penalty_args(cmd: &mut redis::Cmd, p: &Penalty) {
    cmd.arg(p.violations).arg(p.period_ms).arg(p.base_ms).arg(p.factor).arg(p.max_ms);
}

pub(super) fn parse_reply(reply: &[i64], n: usize) -> Result<Answer, StoreError> {
    if reply.len() != 2 + 7 * n {
        return Err(StoreError::BadReply(format!("{} values for {n} checks", reply.len())));
    }
    let non_negative =
        |v: i64| u64::try_from(v).map_err(|_| StoreError::BadReply(format!("negative value {v}")));
    let verdicts = reply[2..]
        .chunks_exact(7)
        .map(|v| {
            Ok(Verdict {
                allowed: v[0] == 1,
                remaining: non_negative(v[1])?,
                retry_after_ms: non_negative(v[2])?,
                reset_after_ms: non_negative(v[3])?,
                limit: non_negative(v[4])?,
                score: u8::try_from(v[5]).map_err(|_| StoreError::BadReply(format!("score {}", v[5])))?,
                factors: u8::try_from(v[6]).map_err(|_| StoreError::BadReply(format!("factors {}", v[6])))?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(Answer { admitted: reply[0] == 1, verdicts, source: Source::Redis })
}
