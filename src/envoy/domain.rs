//! A domain's descriptor tree, in envoyproxy/ratelimit's terms, and how a request walks it.
//!
//! A request descriptor (an ordered list of key/value entries) walks the tree one level per entry:
//! an exact `key` + `value` node first, then the wildcard values (`*` matches any run of
//! characters) in file order, then a key-only node (any value). No backtracking. A limit applies
//! only when every entry matched and the node of the last entry has a `rate_limit`; a request with
//! more entries than the path is deep gets none.
//!
//! The domain files themselves are read by `config::envoy_file`; this module knows nothing of
//! their format.

use std::collections::HashMap;
use std::sync::Arc;

use crate::algorithm::Algorithm;
use crate::algorithm::adaptive::Adaptive;
use crate::algorithm::penalty::Penalty;
use crate::check::FailureMode;

/// A loaded domain.
#[derive(Clone, Debug, Default)]
pub struct Domain {
    pub name: String,
    root: Level,
}

/// The nodes under one parent, by how they match an entry's value.
#[derive(Clone, Debug, Default)]
pub struct Level {
    /// By key, then value: looked up with the request's strings as they are.
    exact: HashMap<String, HashMap<String, Node>>,
    wildcards: Vec<(String, String, Node)>,
    any_value: HashMap<String, Node>,
}

impl Level {
    /// Adds a node for `key`: an empty `value` matches any value, one holding `*` is a wildcard
    /// (tried in the order added, after the exact values), any other matches itself.
    pub fn insert(&mut self, key: String, value: String, node: Node) {
        if value.is_empty() {
            self.any_value.insert(key, node);
        } else if value.contains('*') {
            self.wildcards.push((key, value, node));
        } else {
            self.exact.entry(key).or_default().insert(value, node);
        }
    }
}

#[derive(Clone, Debug)]
pub struct Node {
    pub rule: Option<RateLimit>,
    pub options: Options,
    pub shadow_mode: bool,
    /// One of a request's quotas (see `algorithm::admits`).
    pub quota_mode: bool,
    /// With a wildcard value: every matching value shares one counter.
    pub share_threshold: bool,
    pub detailed_metric: bool,
    /// A key-only or wildcard match shows the request's value in the metric path.
    pub value_to_metric: bool,
    pub children: Level,
    /// Its path in the configuration and its decision counters, filled in by `Domain::new`.
    pub metric: Arc<NodeMetric>,
}

/// A node's `sluice_envoy_decisions_total` series when its path holds no request value: the path
/// is known once the tree is, and the counters are registered on first use.
#[derive(Debug, Default)]
pub struct NodeMetric {
    pub path: String,
    pub counters: crate::metrics::DecisionCounters,
}

/// Sluice's own options on a node (`sluice:`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// `None`: the domains' default (`envoy.algorithm`).
    pub algorithm: Option<Algorithm>,
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
    /// The Envoy code of its `Unit`, reported back to the gateway; 0 (UNKNOWN) when only a
    /// `sluice.window` gives the window.
    pub unit: i32,
    pub name: String,
    pub replaces: Vec<String>,
    /// The descriptor's `metadata`, returned to the gateway when it passes (with
    /// `envoy.response_metadata`).
    pub metadata: Option<Arc<Metadata>>,
}

/// A descriptor's free-form `metadata`: a JSON object.
pub type Metadata = serde_json::Map<String, serde_json::Value>;

/// What a request descriptor matched.
#[derive(Debug)]
pub struct Match<'d> {
    pub node: &'d Node,
    /// The counter's identity: each entry's key and value (the pattern, for a shared wildcard).
    pub identity: Vec<(&'d str, String)>,
    /// The config path for metrics when it holds values from the request (`detailed_metric`, or
    /// `value_to_metric` on a node that matched more than one value), so that its label values
    /// must be bounded; `None` when the node's own path (`NodeMetric`) is the one.
    pub client_path: Option<String>,
}

/// How one entry of a request descriptor matched: its key as stored, the request's value, the node,
/// and how.
struct Step<'d, 'r> {
    key: &'d str,
    value: &'r str,
    node: &'d Node,
    how: How<'d>,
}

#[derive(Clone, Copy)]
enum How<'d> {
    Exact,
    Wildcard(&'d str),
    AnyValue,
}

impl Step<'_, '_> {
    /// Whether the metric path shows the request's value where the configuration has none.
    fn shows_value(&self) -> bool {
        match self.how {
            How::Exact => false,
            How::Wildcard(_) => self.node.value_to_metric && !self.node.share_threshold,
            How::AnyValue => self.node.value_to_metric,
        }
    }
}

impl Domain {
    pub fn new(name: String, mut root: Level) -> Domain {
        name_paths(&mut root, "");
        Domain { name, root }
    }

    /// Matches one request descriptor; `None` when it gets no limit.
    pub fn matches<'d>(&'d self, entries: &[(String, String)]) -> Option<Match<'d>> {
        let mut level = &self.root;
        let mut steps: Vec<Step<'d, '_>> = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            let step = if let Some((k, n)) =
                level.exact.get_key_value(key.as_str()).and_then(|(k, values)| Some((k, values.get(value)?)))
            {
                Step { key: k, value, node: n, how: How::Exact }
            } else if let Some((k, pattern, n)) =
                level.wildcards.iter().find(|(k, p, _)| k == key && wildcard_match(p, value))
            {
                Step { key: k, value, node: n, how: How::Wildcard(pattern) }
            } else if let Some((k, n)) = level.any_value.get_key_value(key) {
                Step { key: k, value, node: n, how: How::AnyValue }
            } else {
                return None;
            };
            level = &step.node.children;
            steps.push(step);
        }
        let node = steps.last()?.node;
        node.rule.as_ref()?;
        let identity = steps
            .iter()
            .map(|s| match s.how {
                How::Wildcard(pattern) if s.node.share_threshold => (s.key, pattern.to_owned()),
                _ => (s.key, s.value.to_owned()),
            })
            .collect();
        Some(Match { node, identity, client_path: client_path(&steps, entries) })
    }
}

/// Values longer than this are matched as sent, but stand in keys and metric paths as their
/// SHA-256 (`short`): the reference takes values of any length, and Envoy lets a request through
/// when its rate limit service answers with an error, so refusing them would let a client that
/// controls a value pass every limit of its request.
pub const LONG_VALUE_BYTES: usize = 4096;

/// `value`, or when it is longer than `LONG_VALUE_BYTES`, `%#` and the hex of its SHA-256: text
/// that no escaped value holds (an escaped `%` is followed by two hex digits).
pub fn short(value: &str) -> std::borrow::Cow<'_, str> {
    if value.len() <= LONG_VALUE_BYTES {
        return value.into();
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, value.as_bytes());
    let mut out = String::with_capacity(2 + 64);
    out.push_str("%#");
    for b in digest.as_ref() {
        use std::fmt::Write;
        let _ = write!(out, "{b:02x}");
    }
    out.into()
}

/// A matched path's metric label when it holds request values (see `Match::client_path`).
fn client_path(steps: &[Step<'_, '_>], entries: &[(String, String)]) -> Option<String> {
    let last = steps.last()?.node;
    if last.detailed_metric {
        return Some(entries.iter().map(|(k, v)| format!("{k}_{}", short(v))).collect::<Vec<_>>().join("."));
    }
    if !steps.iter().any(Step::shows_value) {
        return None;
    }
    let parts: Vec<String> = steps
        .iter()
        .map(|s| match s.how {
            _ if s.shows_value() => format!("{}_{}", s.key, short(s.value)),
            How::Exact => format!("{}_{}", s.key, s.value),
            How::Wildcard(pattern) => format!("{}_{pattern}", s.key),
            How::AnyValue => s.key.to_owned(),
        })
        .collect();
    Some(parts.join("."))
}

/// Fills in each node's metric path: keys, exact values and wildcard patterns from the root.
fn name_paths(level: &mut Level, prefix: &str) {
    let join = |part: String| if prefix.is_empty() { part } else { format!("{prefix}.{part}") };
    for (key, values) in &mut level.exact {
        for (value, node) in values {
            let path = join(format!("{key}_{value}"));
            name_paths(&mut node.children, &path);
            node.metric = Arc::new(NodeMetric { path, ..NodeMetric::default() });
        }
    }
    for (key, pattern, node) in &mut level.wildcards {
        let path = join(format!("{key}_{pattern}"));
        name_paths(&mut node.children, &path);
        node.metric = Arc::new(NodeMetric { path, ..NodeMetric::default() });
    }
    for (key, node) in &mut level.any_value {
        let path = join(key.clone());
        name_paths(&mut node.children, &path);
        node.metric = Arc::new(NodeMetric { path, ..NodeMetric::default() });
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn node(limit: u64) -> Node {
        Node {
            rule: Some(RateLimit {
                unlimited: false,
                requests_per_unit: limit,
                window_ms: 1_000,
                unit: Unit::Second.code(),
                name: String::new(),
                replaces: vec![],
                metadata: None,
            }),
            options: Options::default(),
            shadow_mode: false,
            quota_mode: false,
            share_threshold: false,
            detailed_metric: false,
            value_to_metric: false,
            children: Level::default(),
            metric: Default::default(),
        }
    }

    fn limit_of(domain: &Domain, pairs: &[(&str, &str)]) -> Option<u64> {
        let entries: Vec<(String, String)> =
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        domain.matches(&entries).map(|m| m.node.rule.as_ref().expect("a match has a rule").requests_per_unit)
    }

    #[test]
    fn exact_then_wildcards_in_order_then_any_value() {
        let mut root = Level::default();
        root.insert("k".into(), String::new(), node(1));
        root.insert("k".into(), "a*".into(), node(2));
        root.insert("k".into(), "ab*".into(), node(3));
        root.insert("k".into(), "abc".into(), node(4));
        let mut parent = node(5);
        parent.rule = None;
        parent.children.insert("sub".into(), String::new(), node(6));
        root.insert("p".into(), String::new(), parent);
        let domain = Domain::new("d".into(), root);
        assert_eq!(limit_of(&domain, &[("k", "abc")]), Some(4), "exact first");
        assert_eq!(limit_of(&domain, &[("k", "abd")]), Some(2), "the first wildcard added");
        assert_eq!(limit_of(&domain, &[("k", "x")]), Some(1), "any value last");
        assert_eq!(limit_of(&domain, &[("p", "x")]), None, "no rule on the node");
        assert_eq!(limit_of(&domain, &[("p", "x"), ("sub", "y")]), Some(6));
        assert_eq!(limit_of(&domain, &[("k", "x"), ("sub", "y")]), None, "deeper than the tree");
        assert_eq!(limit_of(&domain, &[("q", "x")]), None);
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
}
