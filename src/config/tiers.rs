//! Tiers as the file writes them, into `tier::Tier`s: names, conditions, keys, the limit and its
//! algorithm, and the adaptive, penalty and baseline options (the last two shared with Envoy
//! descriptors' `sluice:` options); and the threat lists the adaptive tiers score with.

use std::collections::HashSet;

use super::duration::parse_duration_ms;
use super::schema;
use crate::algorithm::adaptive::{Adaptive, Weights};
use crate::algorithm::baseline::Baseline;
use crate::algorithm::penalty::Penalty;
use crate::algorithm::{Algorithm, MAX_LIMIT_TIMES_WINDOW, MAX_LOG_LIMIT};
use crate::check::{Counts, FailureMode};
use crate::request::Attr;
use crate::threat::{Cidr, DEFAULT_PATTERNS, Signals};
use crate::tier::{Condition, Limit, Rule, Tier, Tiers};

const MAX_NAME_LEN: usize = 64;

/// `tiers` (required: `tiers: []` says there are none) and the `threat` lists, into `Tiers`.
pub(super) fn tiers(
    list: Option<Vec<schema::Tier>>,
    threat: &schema::Threat,
    default_failure: FailureMode,
    problems: &mut Vec<String>,
) -> Tiers {
    let signals = signals(threat, problems);
    let mut names = HashSet::new();
    if list.is_none() {
        problems.push("tiers: is required; list the tiers, or write `tiers: []` for none".into());
    }
    let tiers: Vec<Tier> = list
        .into_iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, t)| tier(&format!("tiers[{i}]"), t, default_failure, &mut names, problems))
        .collect();
    let mut tiers = Tiers::new(tiers);
    tiers.signals = signals;
    tiers
}

fn tier(
    at: &str,
    mut t: schema::Tier,
    default_failure: FailureMode,
    names: &mut HashSet<String>,
    problems: &mut Vec<String>,
) -> Option<Tier> {
    let before = problems.len();
    let mut problem = |key: &str, reason: String| problems.push(format!("{at}.{key}: {reason}"));

    if t.name.is_empty()
        || t.name.len() > MAX_NAME_LEN
        || !t.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        problem("name", format!("{:?} must be 1 to {MAX_NAME_LEN} letters, digits, _ or -", t.name));
    } else if !names.insert(t.name.clone()) {
        problem("name", format!("{:?} is already the name of another tier", t.name));
    }

    let mut conditions = Vec::new();
    for (attr, cond) in std::mem::take(&mut t.matches) {
        let values = match cond {
            schema::Condition::Equals(v) => Condition::AnyOf(vec![v]),
            schema::Condition::AnyOf(v) => Condition::AnyOf(v),
            schema::Condition::Prefix(p) => Condition::Prefix(p.prefix.into_vec()),
        };
        let (Condition::AnyOf(v) | Condition::Prefix(v)) = &values;
        if v.is_empty() {
            problem(&format!("match.{attr}"), "needs at least one value".into());
        }
        if attr.is_empty() {
            problem("match", "an attribute name is empty".into());
        }
        conditions.push((Attr::parse(&attr), values));
    }
    let mut seen = HashSet::new();
    for (j, name) in t.key.iter().enumerate() {
        if name.is_empty() {
            problem(&format!("key[{j}]"), "an attribute name is empty".into());
        } else if !seen.insert(name) {
            problem(&format!("key[{j}]"), format!("{name:?} is listed twice"));
        }
    }
    let key: Vec<Attr> = t.key.iter().map(|k| Attr::parse(k)).collect();

    let has_limit = t.limit.is_some() || t.window.is_some() || t.algorithm.is_some() || t.cost.is_some();
    let rule = match (t.exempt, t.unlimited) {
        (true, true) => {
            problem("exempt", "a tier is exempt or unlimited, not both".into());
            None
        }
        (true, false) | (false, true) if has_limit => {
            let which = if t.exempt { "exempt" } else { "unlimited" };
            problem(which, "takes no limit, window, algorithm or cost".into());
            None
        }
        (true, false) => Some(Rule::Exempt),
        (false, true) => Some(Rule::Unlimited),
        (false, false) => limit(&t, &mut problem).map(Rule::Limited),
    };
    if t.shadow && !matches!(rule, Some(Rule::Limited(_)) | None) {
        problem("shadow", "only a limited tier can run in shadow mode".into());
    }
    let adaptive = match t.adaptive.take() {
        None | Some(schema::AdaptiveSpec::Enabled(false)) => None,
        Some(schema::AdaptiveSpec::Enabled(true)) => Some(Adaptive::default()),
        Some(schema::AdaptiveSpec::Settings(s)) => adaptive(&format!("{at}.adaptive"), s, problems),
    };
    if adaptive.is_some() {
        match &rule {
            Some(Rule::Limited(l)) if l.limit > MAX_ADAPTIVE_LIMIT => problems.push(format!(
                "{at}.limit: {} is too large for an adaptive tier (at most {MAX_ADAPTIVE_LIMIT})",
                l.limit
            )),
            Some(Rule::Limited(_)) | None => {}
            Some(_) => problems.push(format!("{at}.adaptive: only a limited tier can adapt")),
        }
    }
    let penalty = t.penalty.take().and_then(|p| penalty(&format!("{at}.penalty"), p, problems));
    if penalty.is_some() && (t.shadow || !matches!(rule, Some(Rule::Limited(_)) | None)) {
        problems.push(format!("{at}.penalty: only a limited tier that is not in shadow mode can block"));
    }
    let baseline = t.baseline.take().and_then(|b| {
        let before = problems.len();
        if !(100..=1_000).contains(&b.sensitivity_percent) {
            problems.push(format!("{at}.baseline.sensitivity_percent: must be 100 to 1000"));
        }
        if !(100..=10_000).contains(&b.max_percent) {
            problems.push(format!("{at}.baseline.max_percent: must be 100 to 10000"));
        }
        let sliding_window =
            matches!(&rule, Some(Rule::Limited(l)) if l.algorithm == Algorithm::SlidingWindow);
        if !sliding_window && rule.is_some() {
            problems.push(format!("{at}.baseline: only a sliding_window tier keeps a baseline"));
        }
        (problems.len() == before)
            .then_some(Baseline { sensitivity_percent: b.sensitivity_percent, max_percent: b.max_percent })
    });
    let count = match t.count.take() {
        None => Some(schema::Count::Requests),
        Some(count) => count.or_report(&format!("{at}.count"), problems),
    };
    let counts = match count {
        Some(schema::Count::Requests) if t.count_denied => {
            let windowed = matches!(&rule, Some(Rule::Limited(l))
                if matches!(l.algorithm, Algorithm::SlidingWindow | Algorithm::FixedWindow));
            if !windowed && rule.is_some() {
                problems.push(format!(
                    "{at}.count_denied: only a sliding_window or fixed_window tier can count denied requests"
                ));
            }
            if t.penalty.is_some() || penalty.is_some() {
                problems
                    .push(format!("{at}.count_denied: a tier that counts denied requests takes no penalty"));
            }
            Counts::Everything
        }
        Some(schema::Count::Requests) | None => Counts::Requests,
        Some(schema::Count::Failures) if t.count_denied => {
            problems.push(format!(
                "{at}.count_denied: a tier that counts failures only cannot count denied requests"
            ));
            Counts::Failures
        }
        Some(schema::Count::Failures) => Counts::Failures,
    };
    let on_failure = match t.on_redis_failure.take() {
        Some(mode) => mode.or_report(&format!("{at}.on_redis_failure"), problems).unwrap_or_default().into(),
        None => default_failure,
    };
    if problems.len() > before {
        return None;
    }
    let mut tier = Tier::new(&t.name, conditions, key, rule?);
    tier.shadow = t.shadow;
    tier.on_failure = on_failure;
    tier.adaptive = adaptive;
    tier.penalty = penalty;
    tier.counts = counts;
    tier.baseline = baseline;
    Some(tier)
}

/// The longest block, so that block arithmetic stays exact in Lua's doubles.
const MAX_BLOCK_MS: u64 = 30 * 86_400_000;

pub(super) fn penalty(at: &str, p: schema::PenaltySpec, problems: &mut Vec<String>) -> Option<Penalty> {
    let before = problems.len();
    let mut duration = |key: &str, text: &str| match parse_duration_ms(text) {
        Ok(ms) if ms > MAX_BLOCK_MS => {
            problems.push(format!("{at}.{key}: {text:?} is longer than 30 days"));
            0
        }
        Ok(ms) => ms,
        Err(reason) => {
            problems.push(format!("{at}.{key}: {reason}"));
            0
        }
    };
    let penalty = Penalty {
        violations: p.violations,
        period_ms: duration("period", &p.period),
        base_ms: duration("base", &p.base),
        factor: p.factor,
        max_ms: duration("max", &p.max),
    };
    if penalty.violations == 0 {
        problems.push(format!("{at}.violations: must be at least 1"));
    }
    if !(1..=100).contains(&penalty.factor) {
        problems.push(format!("{at}.factor: must be 1 to 100"));
    }
    if penalty.max_ms < penalty.base_ms {
        problems.push(format!("{at}.max: must not be shorter than base"));
    }
    (problems.len() == before).then_some(penalty)
}

/// Keeps the adaptive arithmetic exact in Lua's doubles: limit * 10000 < 2^53.
const MAX_ADAPTIVE_LIMIT: u64 = 100_000_000_000;

pub(super) fn adaptive(
    at: &str,
    s: schema::AdaptiveSettings,
    problems: &mut Vec<String>,
) -> Option<Adaptive> {
    let before = problems.len();
    let d = Adaptive::default();
    let w = s.weights;
    let mut weight = |name: &str, value: Option<u8>, default: u8| {
        let v = value.unwrap_or(default);
        if v > 100 {
            problems.push(format!("{at}.weights.{name}: {v} is above 100"));
        }
        v
    };
    let weights = Weights {
        user_agent: weight("user_agent", w.user_agent, d.weights.user_agent),
        parameters: weight("parameters", w.parameters, d.weights.parameters),
        deny_range: weight("deny_range", w.deny_range, d.weights.deny_range),
        reputation: weight("reputation", w.reputation, d.weights.reputation),
        burst: weight("burst", w.burst, d.weights.burst),
        failed_logins: weight("failed_logins", w.failed_logins, d.weights.failed_logins),
    };
    let adaptive = Adaptive {
        weights,
        min_user_agent_len: s.min_user_agent_len.unwrap_or(d.min_user_agent_len),
        burst_multiple: s.burst_multiple.unwrap_or(d.burst_multiple),
        failed_logins: s.failed_logins.unwrap_or(d.failed_logins),
        reduction_percent: s.reduction_percent.unwrap_or(d.reduction_percent),
        event_threshold: s.event_threshold.unwrap_or(d.event_threshold),
    };
    for (key, value) in
        [("burst_multiple", adaptive.burst_multiple), ("failed_logins", adaptive.failed_logins)]
    {
        if value == 0 {
            problems.push(format!("{at}.{key}: must be at least 1"));
        }
    }
    for (key, value) in
        [("reduction_percent", adaptive.reduction_percent), ("event_threshold", adaptive.event_threshold)]
    {
        if value > 100 {
            problems.push(format!("{at}.{key}: {value} is above 100"));
        }
    }
    (problems.len() == before).then_some(adaptive)
}

fn signals(t: &schema::Threat, problems: &mut Vec<String>) -> Signals {
    let patterns: Vec<String> = match &t.patterns {
        Some(p) => p.clone(),
        None => DEFAULT_PATTERNS.iter().map(|p| (*p).to_owned()).collect(),
    };
    let mut valid = true;
    for (i, p) in patterns.iter().enumerate() {
        if let Err(e) = regex::RegexBuilder::new(p).size_limit(1 << 20).build() {
            problems
                .push(format!("threat.patterns[{i}]: {}", e.to_string().lines().last().unwrap_or("invalid")));
            valid = false;
        }
    }
    let patterns = (valid && !patterns.is_empty())
        .then(|| {
            regex::RegexSetBuilder::new(&patterns).case_insensitive(true).size_limit(1 << 22).build().ok()
        })
        .flatten();
    let deny_ranges = t
        .deny_ranges
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            Cidr::parse(r).map_err(|e| problems.push(format!("threat.deny_ranges[{i}]: {e}"))).ok()
        })
        .collect();
    Signals { patterns, deny_ranges }
}

fn limit(t: &schema::Tier, problem: &mut impl FnMut(&str, String)) -> Option<Limit> {
    let algorithm = match t.algorithm.clone().unwrap_or_default().known() {
        Ok(algorithm) => Some(Algorithm::from(algorithm)),
        Err(e) => {
            problem("algorithm", e.to_string());
            None
        }
    };
    let limit = match t.limit {
        None => {
            problem("limit", "is required (or set exempt or unlimited)".into());
            None
        }
        Some(0) => {
            problem("limit", "must be at least 1".into());
            None
        }
        Some(n) => Some(n),
    };
    let window_ms = match t.window.as_deref() {
        None => {
            problem("window", "is required, e.g. 1m".into());
            None
        }
        Some(w) => match parse_duration_ms(w) {
            Ok(ms) => Some(ms),
            Err(reason) => {
                problem("window", reason);
                None
            }
        },
    };
    let cost = t.cost.unwrap_or(1);
    if cost == 0 {
        problem("cost", "must be at least 1".into());
    }
    let (algorithm, limit, window_ms) = (algorithm?, limit?, window_ms?);
    if u128::from(limit) * u128::from(window_ms) > MAX_LIMIT_TIMES_WINDOW {
        problem(
            "limit",
            format!("{limit} per {window_ms} ms is too large (limit x window in ms must stay under 2^50)"),
        );
        return None;
    }
    if algorithm == Algorithm::SlidingLog && limit > MAX_LOG_LIMIT {
        problem(
            "limit",
            format!("{limit} is too large for sliding_log (at most {MAX_LOG_LIMIT}; use sliding_window)"),
        );
        return None;
    }
    if cost > limit {
        problem("cost", format!("{cost} exceeds the limit {limit}, so no request could pass"));
        return None;
    }
    (cost > 0).then_some(Limit { algorithm, limit, window_ms, cost })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use crate::config::parse;

    #[test]
    fn adaptive_settings_and_threat_lists_are_checked() {
        let yaml = "threat:
  patterns: ['(unclosed']
  deny_ranges: [10.0.0.0/8, 300.1.1.1/8]
tiers:
  - name: a
    limit: 10
    window: 1m
    adaptive: {weights: {burst: 101}, reduction_percent: 150, burst_multiple: 0}
  - name: b
    exempt: true
    adaptive: true
";
        let lines = parse(yaml, "t.yaml", Some(HashMap::new())).expect_err("invalid").lines();
        for expected in [
            "threat.patterns[0]",
            "threat.deny_ranges[1]",
            "tiers[0].adaptive.weights.burst: 101 is above 100",
            "tiers[0].adaptive.reduction_percent",
            "tiers[0].adaptive.burst_multiple: must be at least 1",
            "tiers[1].adaptive: only a limited tier can adapt",
        ] {
            assert!(lines.iter().any(|l| l.contains(expected)), "{expected} not in {lines:?}");
        }
        let ok = parse(
            "tiers:\n  - name: a\n    limit: 10\n    window: 1m\n    adaptive: {weights: {user_agent: 5}}\n",
            "t",
            Some(HashMap::new()),
        )
        .expect("valid");
        let adaptive = ok.tiers.all()[0].adaptive.expect("adaptive");
        assert_eq!((adaptive.weights.user_agent, adaptive.weights.burst), (5, 30));
    }
}
