//! Rate limit configuration in envoyproxy/ratelimit's format, and its matching rules.
//!
//! A file holds one `domain` and a tree of `descriptors`. A request descriptor (an ordered list of
//! key/value entries) walks the tree one level per entry: an exact `key` + `value` node first, then
//! the wildcard values (`*` matches any run of characters) in file order, then a key-only node
//! (any value). No backtracking. A limit applies only when every entry matched and the node of the
//! last entry has a `rate_limit`; a request with more entries than the path is deep gets none.
//! Units: second, minute, hour, day, week, month (30 days), year (365 days), in any case. Where no
//! unit says a window (15 minutes), a descriptor may add Sluice's own `sluice: {window: 15m}`.

use std::collections::{HashMap, HashSet};

use crate::algorithm::Algorithm;
use crate::algorithm::adaptive::Adaptive;
use crate::algorithm::penalty::Penalty;
use crate::check::FailureMode;
use crate::config::schema::{AdaptiveSpec, DescriptorOptions};

/// A loaded domain.
#[derive(Clone, Debug, Default)]
pub struct Domain {
    pub name: String,
    root: Level,
}

#[derive(Clone, Debug, Default)]
struct Level {
    exact: HashMap<(String, String), Node>,
    wildcards: Vec<(String, String, Node)>,
    any_value: HashMap<String, Node>,
}

#[derive(Clone, Debug)]
pub struct Node {
    pub rule: Option<RateLimit>,
    pub options: Options,
    pub shadow_mode: bool,
    /// With a wildcard value: every matching value shares one counter.
    pub share_threshold: bool,
    pub detailed_metric: bool,
    /// A key-only or wildcard match shows the request's value in the metric path.
    pub value_to_metric: bool,
    children: Level,
}

/// Sluice's own options on a node (`sluice:`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    pub algorithm: Algorithm,
    /// `None`: the global `fallback.mode`.
    pub on_failure: Option<FailureMode>,
    pub adaptive: Option<Adaptive>,
    pub penalty: Option<Penalty>,
}

/// A node's `rate_limit`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub unlimited: bool,
    pub requests_per_unit: u64,
    pub window_ms: u64,
    /// The Envoy unit code (1 second, 2 minute, 3 hour, 4 day, 5 month, 6 year, 7 week).
    pub unit: i32,
    pub name: String,
    pub replaces: Vec<String>,
}

/// What a request descriptor matched.
#[derive(Debug)]
pub struct Match<'d> {
    pub node: &'d Node,
    /// The counter's identity: each entry's key and value (the pattern, for a shared wildcard).
    pub identity: Vec<(&'d str, String)>,
    /// The config path, for metrics: keys, wildcard patterns, and values only where detailed.
    pub path: String,
    /// Whether `path` holds values from the request (`detailed_metric`, or `value_to_metric` on a
    /// node that matched more than one value), so that its label values must be bounded.
    pub client_values: bool,
}

impl Domain {
    /// Matches one request descriptor; `None` when it gets no limit.
    pub fn matches<'d>(&'d self, entries: &[(String, String)]) -> Option<Match<'d>> {
        let mut level = &self.root;
        let mut node = None;
        let mut identity = Vec::with_capacity(entries.len());
        let mut path = Vec::with_capacity(entries.len());
        let mut client_values = false;
        for (key, value) in entries {
            let (n, part, shared) = if let Some((k, n)) =
                level.exact.get_key_value(&(key.clone(), value.clone())).map(|((k, _), n)| (k, n))
            {
                (n, format!("{k}_{value}"), None)
            } else if let Some((k, pattern, n)) =
                level.wildcards.iter().find(|(k, p, _)| k == key && wildcard_match(p, value))
            {
                let part = if n.value_to_metric && !n.share_threshold {
                    client_values = true;
                    format!("{k}_{value}")
                } else {
                    format!("{k}_{pattern}")
                };
                (n, part, n.share_threshold.then(|| pattern.clone()))
            } else if let Some((k, n)) = level.any_value.get_key_value(key) {
                client_values |= n.value_to_metric;
                (n, if n.value_to_metric { format!("{k}_{value}") } else { k.clone() }, None)
            } else {
                return None;
            };
            identity.push((key_of(level, key), shared.unwrap_or_else(|| value.clone())));
            path.push(part);
            node = Some(n);
            level = &n.children;
        }
        let node = node?;
        node.rule.as_ref()?;
        let path = if node.detailed_metric {
            client_values = true;
            entries.iter().map(|(k, v)| format!("{k}_{v}")).collect::<Vec<_>>().join(".")
        } else {
            path.join(".")
        };
        Some(Match { node, identity, path, client_values })
    }
}

/// The stored key string, so that `Match` borrows from the domain rather than the request.
fn key_of<'d>(level: &'d Level, key: &str) -> &'d str {
    level
        .exact
        .keys()
        .map(|(k, _)| k.as_str())
        .chain(level.wildcards.iter().map(|(k, _, _)| k.as_str()))
        .chain(level.any_value.keys().map(String::as_str))
        .find(|k| *k == key)
        .unwrap_or("")
}

/// `*` matches any run of characters, anywhere in the pattern.
pub fn wildcard_match(pattern: &str, value: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, rest) = parts.split_first().expect("split yields at least one part");
    let Some(mut tail) = value.strip_prefix(first) else { return false };
    for (i, part) in rest.iter().enumerate() {
        if i == rest.len() - 1 {
            return tail.ends_with(part);
        }
        match tail.find(part) {
            Some(at) => tail = &tail[at + part.len()..],
            None => return false,
        }
    }
    tail.is_empty()
}

/// A `rate_limit`'s unit, as Envoy numbers them in `RateLimitResponse.RateLimit.Unit` (0 is
/// UNKNOWN). Months are 30 days and years 365, as in envoyproxy/ratelimit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Second = 1,
    Minute = 2,
    Hour = 3,
    Day = 4,
    Month = 5,
    Year = 6,
    Week = 7,
}

impl Unit {
    pub const ALL: [Unit; 7] =
        [Unit::Second, Unit::Minute, Unit::Hour, Unit::Day, Unit::Month, Unit::Year, Unit::Week];

    /// The unit of an Envoy code; `None` for UNKNOWN or out of range.
    pub fn from_code(code: i32) -> Option<Unit> {
        Unit::ALL.into_iter().find(|u| u.code() == code)
    }

    pub fn code(self) -> i32 {
        self as i32
    }

    pub fn window_ms(self) -> u64 {
        const DAY_MS: u64 = 86_400_000;
        match self {
            Unit::Second => 1_000,
            Unit::Minute => 60_000,
            Unit::Hour => 3_600_000,
            Unit::Day => DAY_MS,
            Unit::Month => 30 * DAY_MS,
            Unit::Year => 365 * DAY_MS,
            Unit::Week => 7 * DAY_MS,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Unit::Second => "second",
            Unit::Minute => "minute",
            Unit::Hour => "hour",
            Unit::Day => "day",
            Unit::Month => "month",
            Unit::Year => "year",
            Unit::Week => "week",
        }
    }
}

/// A unit name in any case, as domain files write it (`second`, `MINUTE`, `Hour`).
impl std::str::FromStr for Unit {
    type Err = UnknownUnit;

    fn from_str(name: &str) -> Result<Unit, UnknownUnit> {
        Unit::ALL
            .into_iter()
            .find(|u| u.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| UnknownUnit(name.to_owned()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid rate limit unit {0:?}")]
pub struct UnknownUnit(pub String);

const FIELDS: [&str; 17] = [
    "domain",
    "descriptors",
    "key",
    "value",
    "rate_limit",
    "unit",
    "requests_per_unit",
    "unlimited",
    "name",
    "replaces",
    "shadow_mode",
    "quota_mode",
    "detailed_metric",
    "value_to_metric",
    "share_threshold",
    "metadata",
    "sluice",
];

/// Parses one file; `origin` names it in errors. Every problem is reported.
pub fn parse(text: &str, origin: &str) -> Result<Domain, Vec<String>> {
    let doc: serde_json::Value = serde_yaml_ng_value(text).map_err(|e| vec![format!("{origin}: {e}")])?;
    let mut problems = Vec::new();
    check_keys(&doc, &mut problems, origin);
    let name = doc.get("domain").and_then(|d| d.as_str()).unwrap_or_default().to_owned();
    if name.is_empty() {
        problems.push(format!("{origin}: domain: must not be empty"));
    }
    let mut root = Level::default();
    if let Some(list) = doc.get("descriptors") {
        level(list, &name, "descriptors", &mut root, &mut problems, origin);
    }
    if problems.is_empty() { Ok(Domain { name, root }) } else { Err(problems) }
}

fn serde_yaml_ng_value(text: &str) -> Result<serde_json::Value, String> {
    let value = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Yaml))
        .build()
        .map_err(|e| e.to_string())?;
    value.try_deserialize::<serde_json::Value>().map_err(|e| e.to_string())
}

fn check_keys(v: &serde_json::Value, problems: &mut Vec<String>, origin: &str) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, child) in map {
                if !FIELDS.contains(&k.as_str()) {
                    problems.push(format!("{origin}: unknown key {k:?}"));
                }
                if k != "metadata" && k != "sluice" {
                    check_keys(child, problems, origin);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| check_keys(i, problems, origin)),
        _ => {}
    }
}

fn flag(v: &serde_json::Value, name: &str) -> bool {
    match v.get(name) {
        Some(serde_json::Value::Bool(b)) => *b,
        Some(serde_json::Value::String(s)) => s == "true",
        _ => false,
    }
}

fn level(
    list: &serde_json::Value,
    path: &str,
    at: &str,
    into: &mut Level,
    problems: &mut Vec<String>,
    origin: &str,
) {
    let Some(items) = list.as_array() else {
        problems.push(format!("{origin}: {at}: must be a list"));
        return;
    };
    let mut seen = HashSet::new();
    for (i, d) in items.iter().enumerate() {
        let at = format!("{at}[{i}]");
        let key = d.get("key").map(scalar).unwrap_or_default();
        let value = d.get("value").map(scalar).unwrap_or_default();
        if key.is_empty() {
            problems.push(format!("{origin}: {at}.key: must not be empty"));
            continue;
        }
        let composite = if value.is_empty() { key.clone() } else { format!("{key}_{value}") };
        if !seen.insert(composite.clone()) {
            problems.push(format!("{origin}: {at}: duplicate descriptor composite key '{path}.{composite}'"));
            continue;
        }
        let share_threshold = flag(d, "share_threshold");
        if share_threshold && !value.contains('*') {
            problems
                .push(format!("{origin}: {at}.share_threshold: only with a wildcard value (containing '*')"));
        }
        let rule =
            d.get("rate_limit").and_then(|r| rule(r, d, &format!("{at}.rate_limit"), problems, origin));
        let options = options(d.get("sluice"), &format!("{origin}: {at}.sluice"), problems);
        // The same caps as a tier's: counts exact in Lua's numbers, and a log holds one entry per
        // request within the window.
        if let Some(r) = rule.as_ref().filter(|r| !r.unlimited)
            && u128::from(r.requests_per_unit) * u128::from(r.window_ms)
                > crate::algorithm::MAX_LIMIT_TIMES_WINDOW
        {
            problems.push(format!(
                "{origin}: {at}.rate_limit.requests_per_unit: {} per {} ms is too large (limit x window in ms \
                 must stay under 2^50)",
                r.requests_per_unit, r.window_ms
            ));
        }
        if let Some(r) = rule.as_ref().filter(|r| !r.unlimited && options.algorithm == Algorithm::SlidingLog)
            && r.requests_per_unit > crate::algorithm::MAX_LOG_LIMIT
        {
            problems.push(format!(
                "{origin}: {at}.rate_limit.requests_per_unit: {} is too large for sliding_log (at most {}; use \
                 sliding_window)",
                r.requests_per_unit,
                crate::algorithm::MAX_LOG_LIMIT
            ));
        }
        let mut node = Node {
            rule,
            options,
            shadow_mode: flag(d, "shadow_mode"),
            share_threshold,
            detailed_metric: flag(d, "detailed_metric"),
            value_to_metric: flag(d, "value_to_metric"),
            children: Level::default(),
        };
        if let Some(children) = d.get("descriptors") {
            level(
                children,
                &format!("{path}.{composite}"),
                &format!("{at}.descriptors"),
                &mut node.children,
                problems,
                origin,
            );
        }
        if value.is_empty() {
            into.any_value.insert(key, node);
        } else if value.contains('*') {
            into.wildcards.push((key, value, node));
        } else {
            into.exact.insert((key, value), node);
        }
    }
}

fn options(v: Option<&serde_json::Value>, at: &str, problems: &mut Vec<String>) -> Options {
    let Some(v) = v else { return Options::default() };
    let spec: DescriptorOptions = match serde_json::from_value(v.clone()) {
        Ok(spec) => spec,
        Err(e) => {
            problems.push(format!("{at}: {e}"));
            return Options::default();
        }
    };
    let algorithm = match spec.algorithm.as_deref() {
        None | Some("sliding_window") => Algorithm::SlidingWindow,
        Some("sliding_log") => Algorithm::SlidingLog,
        Some(other) => {
            problems.push(format!("{at}.algorithm: {other:?} is not one of sliding_window, sliding_log"));
            Algorithm::SlidingWindow
        }
    };
    Options {
        algorithm,
        on_failure: spec
            .on_redis_failure
            .map(|m| crate::config::failure_mode(&format!("{at}.on_redis_failure"), &m, problems)),
        adaptive: match spec.adaptive {
            None | Some(AdaptiveSpec::Enabled(false)) => None,
            Some(AdaptiveSpec::Enabled(true)) => Some(Adaptive::default()),
            Some(AdaptiveSpec::Settings(s)) => {
                crate::config::adaptive(&format!("{at}.adaptive"), s, problems)
            }
        },
        penalty: spec.penalty.and_then(|p| crate::config::penalty(&format!("{at}.penalty"), p, problems)),
    }
}

fn scalar(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn rule(
    r: &serde_json::Value,
    d: &serde_json::Value,
    at: &str,
    problems: &mut Vec<String>,
    origin: &str,
) -> Option<RateLimit> {
    let unlimited = flag(r, "unlimited");
    let unit_name = r.get("unit").map(scalar).unwrap_or_default();
    let name = r.get("name").map(scalar).unwrap_or_default();
    let replaces: Vec<String> = r
        .get("replaces")
        .and_then(|l| l.as_array())
        .map(|l| l.iter().map(|e| e.get("name").map(scalar).unwrap_or_default()).collect())
        .unwrap_or_default();
    if replaces.iter().any(String::is_empty) {
        problems.push(format!("{origin}: {at}.replaces: should not have an empty entry"));
    }
    // The name is written into the RateLimit headers as a quoted string: printable ASCII only, and
    // no quote or backslash, so no name can end the string or the header.
    if name.bytes().any(|b| !(0x20..0x7f).contains(&b) || b == b'"' || b == b'\\') {
        problems.push(format!(
            "{origin}: {at}.name: {name:?} must be printable ASCII without quotes or backslashes"
        ));
    }
    if !name.is_empty() && replaces.contains(&name) {
        problems.push(format!("{origin}: {at}.replaces: should not contain its own name {name:?}"));
    }
    let requests_per_unit = match r.get("requests_per_unit") {
        None => 0,
        Some(v) => match scalar(v).parse::<u64>() {
            Ok(n) if n <= u64::from(u32::MAX) => n,
            _ => {
                problems.push(format!(
                    "{origin}: {at}.requests_per_unit: {} is not a whole number up to 4294967295",
                    scalar(v)
                ));
                0
            }
        },
    };
    let window = d.get("sluice").and_then(|s| s.get("window")).map(scalar);
    let unit = unit_name.parse::<Unit>();
    if unlimited {
        if unit.is_ok() {
            problems.push(format!("{origin}: {at}.unit: should not be given when unlimited"));
        }
        return Some(RateLimit { unlimited, requests_per_unit, window_ms: 0, unit: 0, name, replaces });
    }
    let (window_ms, code) = match (unit, window) {
        (unit, Some(w)) => match crate::config::parse_duration_ms(&w) {
            Ok(ms) => (ms, unit.map_or(0, Unit::code)),
            Err(reason) => {
                problems.push(format!("{origin}: {at}: sluice.window: {reason}"));
                return None;
            }
        },
        (Ok(u), None) => (u.window_ms(), u.code()),
        (Err(e), None) => {
            problems.push(format!("{origin}: {at}.unit: {e}"));
            return None;
        }
    };
    Some(RateLimit { unlimited, requests_per_unit, window_ms, unit: code, name, replaces })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    const CONFIG: &str = "
domain: edge
descriptors:
  - key: remote_address
    rate_limit: {unit: second, requests_per_unit: 10}
  - key: remote_address
    value: 50.0.0.5
    rate_limit: {unit: second, requests_per_unit: 0}
  - key: key
    value: value
    descriptors:
      - key: subkey
        rate_limit: {unit: Minute, requests_per_unit: 300}
  - key: database
    value: ldap
    rate_limit: {unlimited: true}
  - key: files
    value: files/*
    share_threshold: true
    rate_limit: {unit: hour, requests_per_unit: 10}
  - key: login
    rate_limit: {unit: minute, requests_per_unit: 5}
    sluice: {window: 15m}
";

    #[test]
    fn the_reference_rules() {
        let d = parse(CONFIG, "t.yaml").expect("valid");
        let m = d.matches(&entries(&[("remote_address", "50.0.0.1")])).expect("key-only");
        assert_eq!(m.node.rule.as_ref().expect("rule").requests_per_unit, 10);
        let m = d.matches(&entries(&[("remote_address", "50.0.0.5")])).expect("exact first");
        assert_eq!(m.node.rule.as_ref().expect("rule").requests_per_unit, 0);
        assert!(d.matches(&entries(&[("key", "value")])).is_none(), "no limit on the intermediate node");
        assert!(d.matches(&entries(&[("remote_address", "1"), ("extra", "x")])).is_none(), "too deep");
        let m = d.matches(&entries(&[("key", "value"), ("subkey", "x")])).expect("nested");
        assert_eq!(m.node.rule.as_ref().expect("rule").window_ms, 60_000);
        assert!(
            d.matches(&entries(&[("database", "ldap")]))
                .expect("unlimited")
                .node
                .rule
                .as_ref()
                .expect("rule")
                .unlimited
        );
        let a = d.matches(&entries(&[("files", "files/a.pdf")])).expect("wildcard");
        let b = d.matches(&entries(&[("files", "files/b.csv")])).expect("wildcard");
        assert_eq!(a.identity, b.identity, "a shared wildcard is one counter");
        assert_eq!(
            d.matches(&entries(&[("login", "x")]))
                .expect("login")
                .node
                .rule
                .as_ref()
                .expect("rule")
                .window_ms,
            900_000
        );
        assert!(d.matches(&entries(&[("unknown", "x")])).is_none());
        assert_eq!(
            d.matches(&entries(&[("remote_address", "9.9.9.9")])).expect("key-only").path,
            "remote_address"
        );
        let injected = parse(
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1, name: \"a\\\"b\\r\\nX: 1\"}\n",
            "t",
        );
        assert!(
            injected.as_ref().is_err_and(|p| p.iter().any(|p| p.contains("rate_limit.name"))),
            "{injected:?}"
        );
        let shown = parse("domain: d\ndescriptors:\n  - key: route\n    value_to_metric: true\n    rate_limit: {unit: second, requests_per_unit: 1}\n", "t").expect("valid");
        assert_eq!(shown.matches(&entries(&[("route", "api")])).expect("match").path, "route_api");
    }

    #[test]
    fn units_by_name_and_code() {
        for unit in Unit::ALL {
            assert_eq!(Unit::from_code(unit.code()), Some(unit));
            assert_eq!(unit.name().to_ascii_uppercase().parse(), Ok(unit));
        }
        assert_eq!("Minute".parse::<Unit>().map(Unit::window_ms), Ok(60_000));
        assert_eq!(Unit::Month.window_ms(), 30 * Unit::Day.window_ms());
        assert_eq!((Unit::from_code(0), Unit::from_code(8)), (None, None));
        assert_eq!(
            "fortnight".parse::<Unit>().map_err(|e| e.to_string()),
            Err("invalid rate limit unit \"fortnight\"".to_owned())
        );
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_match("files/*", "files/a"));
        assert!(wildcard_match("files/*", "files/"));
        assert!(wildcard_match("a*c*e", "abcde"));
        assert!(!wildcard_match("a*c*e", "abcd"));
        assert!(!wildcard_match("files/*", "file"));
    }

    #[test]
    fn errors_name_the_problem() {
        let bad = "domain: ''\ndescriptors:\n  - key: a\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n  - key: a\n  - key: b\n    colour: red\n  - key: c\n    value: x\n    share_threshold: true\n";
        let problems = parse(bad, "bad.yaml").expect_err("invalid");
        for expected in [
            "domain: must not be empty",
            "invalid rate limit unit \"fortnight\"",
            "duplicate descriptor composite key",
            "unknown key \"colour\"",
            "share_threshold",
        ] {
            assert!(problems.iter().any(|p| p.contains(expected)), "{expected} not in {problems:?}");
        }
    }
}
