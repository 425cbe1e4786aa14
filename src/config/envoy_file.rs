//! Domain files in envoyproxy/ratelimit's format, into `envoy::Domains`: every file `envoy.paths`
//! names (a directory: its `.yaml` and `.yml` files, in name order), one domain each.
//!
//! A file holds one `domain` and a tree of `descriptors`, each with a `key`, an optional `value`
//! (`*` matches any run of characters), an optional `rate_limit` (`unit`, `requests_per_unit`,
//! `unlimited`, `name`, `replaces`) and nested `descriptors`, and the flags `shadow_mode`,
//! `detailed_metric`, `value_to_metric` and `share_threshold`; `envoy::domain` says how a request
//! walks the tree. Units: second, minute, hour, day, week, month (30 days), year (365 days), in any
//! case. Where no unit says a window (15 minutes), a descriptor may add Sluice's own
//! `sluice: {window: 15m}`, and with it a tier's algorithm, failure mode, adaptive and penalty
//! options.
//!
//! The YAML is read as the main configuration's is (by the `config` crate), then each descriptor
//! is deserialized on its own with unknown keys refused, so that the mistakes of every descriptor
//! are reported together. Scalars are taken as written: a number is a key, value or
//! `requests_per_unit` as its text, and a flag is read as YAML 1.1 reads one (`yes`, `on`, ...),
//! as the reference's YAML reader does.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Deserializer};

use super::duration::parse_duration_ms;
use super::schema::{self, AdaptiveSpec, Choice, PenaltySpec};
use super::tiers;
use crate::algorithm::adaptive::Adaptive;
use crate::algorithm::{Algorithm, MAX_LIMIT_TIMES_WINDOW, MAX_LOG_LIMIT};
use crate::check::FailureMode;
use crate::envoy::Domains;
use crate::envoy::domain::{Domain, Level, Node, Options, RateLimit, Unit};
use crate::request::Attr;

/// A file as written: the domain's name and the top level of its tree.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainFile {
    #[serde(default)]
    domain: Option<String>,
    /// Read one descriptor at a time (see `level`).
    #[serde(default, deserialize_with = "present")]
    descriptors: Option<serde_json::Value>,
}

/// One node of the tree as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DescriptorSpec {
    #[serde(default, deserialize_with = "scalar")]
    key: String,
    /// Empty: any value.
    #[serde(default, deserialize_with = "scalar")]
    value: String,
    #[serde(default, deserialize_with = "present")]
    rate_limit: Option<RateLimitSpec>,
    /// Read one descriptor at a time (see `level`).
    #[serde(default, deserialize_with = "present")]
    descriptors: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "flag")]
    shadow_mode: bool,
    #[serde(default, deserialize_with = "flag")]
    detailed_metric: bool,
    #[serde(default, deserialize_with = "flag")]
    value_to_metric: bool,
    #[serde(default, deserialize_with = "flag")]
    share_threshold: bool,
    #[serde(default, deserialize_with = "flag")]
    quota_mode: bool,
    /// Free-form, returned to the gateway when the descriptor passes (`envoy.response_metadata`).
    #[serde(default)]
    metadata: Option<crate::envoy::domain::Metadata>,
    /// Sluice's own options (`DescriptorOptions`), read on their own.
    #[serde(default, deserialize_with = "present")]
    sluice: Option<serde_json::Value>,
}

/// A descriptor's `rate_limit` as written.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a rate limit (unit, requests_per_unit, ...)")]
struct RateLimitSpec {
    #[serde(default, deserialize_with = "scalar")]
    unit: String,
    /// At most `u32::MAX`, as in Envoy's messages; absent: 0.
    #[serde(default, deserialize_with = "some_scalar")]
    requests_per_unit: Option<String>,
    #[serde(default, deserialize_with = "flag")]
    unlimited: bool,
    /// Shown to clients in the RateLimit headers, and what other limits' `replaces` name.
    #[serde(default, deserialize_with = "scalar")]
    name: String,
    #[serde(default, deserialize_with = "present")]
    replaces: Option<Vec<Replaced>>,
}

/// An entry of `replaces`: the name of a limit this one stands in for.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a replaced limit ({name: ...})")]
struct Replaced {
    #[serde(default, deserialize_with = "scalar")]
    name: String,
}

/// Sluice's own options on a descriptor, under `sluice:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct DescriptorOptions {
    /// A window no unit can say, e.g. `15m`.
    window: Option<String>,
    /// `sliding_window`, `sliding_log` or `fixed_window`; default `envoy.algorithm`.
    algorithm: Option<Choice<schema::Algorithm>>,
    /// `local`, `allow` or `deny`; default `fallback.mode`.
    on_redis_failure: Option<Choice<schema::FailureMode>>,
    adaptive: Option<AdaptiveSpec>,
    penalty: Option<PenaltySpec>,
}

/// A key written with nothing after it (`rate_limit:`) is there, and empty, rather than absent.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(d: D) -> Result<Option<T>, D::Error> {
    Ok(Some(Option::<T>::deserialize(d)?.unwrap_or_default()))
}

/// A scalar as text: a string as is, nothing as empty, anything else as its JSON text (`5`, `true`).
fn scalar<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => s,
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    })
}

fn some_scalar<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    scalar(d).map(Some)
}

/// A flag as the reference's YAML reader (YAML 1.1) takes one: `true`/`false`, and `yes`/`no`,
/// `on`/`off`, `y`/`n` in lower, title or upper case. Anything else is refused, as the reference
/// refuses it, rather than read as off: a `shadow_mode: yes` read as off would deny real traffic.
fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    const ON: [&str; 11] = ["y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"];
    const OFF: [&str; 11] = ["n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"];
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Bool(b) => Ok(b),
        serde_json::Value::Null => Ok(false),
        serde_json::Value::String(s) if ON.contains(&s.as_str()) => Ok(true),
        serde_json::Value::String(s) if OFF.contains(&s.as_str()) => Ok(false),
        other => Err(serde::de::Error::custom(format!(
            "{other} is not a flag (true or false; yes, no, on, off, y and n as YAML 1.1 reads them)"
        ))),
    }
}

/// Checks the domain files at `path`, a file or a directory, as `envoy.paths` reads them: the names of
/// their domains, sorted, or every problem.
pub fn check_path(path: &str) -> Result<Vec<String>, Vec<String>> {
    let mut problems = Vec::new();
    let envoy = schema::Envoy { paths: vec![path.to_owned()], ..Default::default() };
    let domains = domains(&envoy, &mut problems);
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut names: Vec<String> = domains.by_name.into_keys().collect();
    names.sort();
    Ok(names)
}

/// Loads every file of `envoy.paths`.
pub(super) fn domains(e: &schema::Envoy, problems: &mut Vec<String>) -> Domains {
    let mut files = Vec::new();
    for (i, path) in e.paths.iter().enumerate() {
        let p = Path::new(path);
        match yaml_files_in(p) {
            Ok(found) => files.extend(found),
            Err(_) if p.is_file() => files.push(p.to_path_buf()),
            Err(e) => problems.push(format!("envoy.paths[{i}]: cannot read {path:?}: {e}")),
        }
    }
    let mut by_name = HashMap::new();
    let mut declared_in: HashMap<String, String> = HashMap::new();
    for file in files {
        let origin = file.display().to_string();
        match std::fs::read_to_string(&file) {
            Err(e) => problems.push(format!("{origin}: cannot read: {e}")),
            Ok(text) => match parse(&text, &origin) {
                Ok(domain) => {
                    if let Some(first) = declared_in.get(&domain.name) {
                        problems.push(format!(
                            "{origin}: duplicate domain {:?}, already declared in {first}",
                            domain.name
                        ));
                    } else {
                        declared_in.insert(domain.name.clone(), origin);
                        by_name.insert(domain.name.clone(), domain);
                    }
                }
                Err(file_problems) => problems.extend(file_problems),
            },
        }
    }
    let attributes = e.attributes.iter().map(|(key, attr)| (key.clone(), Attr::parse(attr))).collect();
    let algorithm = match e.algorithm.clone().or_report("envoy.algorithm", problems).map(Algorithm::from) {
        Some(Algorithm::SlidingLog) => {
            problems.push(
                "envoy.algorithm: sliding_log suits small limits; give it to a descriptor with `sluice: \
                 {algorithm: sliding_log}`"
                    .to_owned(),
            );
            Algorithm::SlidingWindow
        }
        other => other.unwrap_or_default(),
    };
    Domains {
        by_name,
        algorithm,
        count_denied: e.count_denied,
        quota_mode: e.quota_mode,
        shadow_mode: e.shadow_mode,
        response_metadata: e.response_metadata,
        attributes,
        default_failure: FailureMode::Local,
    }
}

/// Parses one file; `origin` names it in errors. Every problem is reported.
pub fn parse(text: &str, origin: &str) -> Result<Domain, Vec<String>> {
    let mut tree = super::yaml::as_json(text).map_err(|e| vec![format!("{origin}: {e}")])?;
    merge_keys(&mut tree).map_err(|e| vec![format!("{origin}: {e}")])?;
    drop_misplaced(&mut tree, &["domain", "descriptors"]);
    let file: DomainFile =
        serde_path_to_error::deserialize(tree).map_err(|e| vec![mistake(origin, None, e)])?;
    let mut problems = Vec::new();
    let name = file.domain.unwrap_or_default();
    if name.is_empty() {
        problems.push(format!("{origin}: domain: must not be empty"));
    }
    let mut root = Level::default();
    if let Some(list) = file.descriptors {
        level(list, &name, "descriptors", &mut root, &mut problems, origin);
    }
    if problems.is_empty() { Ok(Domain::new(name, root)) } else { Err(problems) }
}

/// The keys the reference knows (its `validKeys`). It accepts each of them at any level of a file
/// and ignores one where it means nothing (a `name` on a descriptor, a `shadow_mode` inside a
/// `rate_limit`); so does Sluice, so that the reference's files load as they are. A key it does not
/// know is refused by both.
const REFERENCE_KEYS: [&str; 16] = [
    "domain",
    "key",
    "value",
    "descriptors",
    "rate_limit",
    "unit",
    "requests_per_unit",
    "unlimited",
    "shadow_mode",
    "quota_mode",
    "name",
    "replaces",
    "detailed_metric",
    "value_to_metric",
    "share_threshold",
    "metadata",
];

/// The keys a descriptor uses (`sluice` is Sluice's own).
const DESCRIPTOR_KEYS: &[&str] = &[
    "key",
    "value",
    "rate_limit",
    "descriptors",
    "shadow_mode",
    "detailed_metric",
    "value_to_metric",
    "share_threshold",
    "quota_mode",
    "metadata",
    "sluice",
];

/// Removes from a mapping the reference's keys that `used` does not name (see `REFERENCE_KEYS`).
fn drop_misplaced(part: &mut serde_json::Value, used: &[&str]) {
    if let serde_json::Value::Object(map) = part {
        map.retain(|k, _| used.contains(&k.as_str()) || !REFERENCE_KEYS.contains(&k.as_str()));
    }
}

/// Applies YAML merge keys (`<<: *base`, or `<<: [*a, *b]`), as the reference's YAML reader does
/// and the `config` crate does not: the merged mappings' keys are added where the mapping has none
/// of its own, the first of a list winning over the later ones, and a merged mapping's own merge
/// keys first. A merge of anything but mappings is an error, as there.
fn merge_keys(tree: &mut serde_json::Value) -> Result<(), String> {
    match tree {
        serde_json::Value::Object(map) => {
            if let Some(merged) = map.remove("<<") {
                let sources = match merged {
                    serde_json::Value::Array(list) => list,
                    one => vec![one],
                };
                for mut source in sources {
                    merge_keys(&mut source)?;
                    let serde_json::Value::Object(source) = source else {
                        return Err("<<: merges mappings only (a mapping, or a list of them)".to_owned());
                    };
                    for (k, v) in source {
                        map.entry(k).or_insert(v);
                    }
                }
            }
            map.values_mut().try_for_each(merge_keys)
        }
        serde_json::Value::Array(list) => list.iter_mut().try_for_each(merge_keys),
        _ => Ok(()),
    }
}

/// The problem of a part that did not deserialize: an unknown key by its name alone, anything
/// else under its key path (`at`, the part's own place in the file, then the path inside it).
fn mistake(origin: &str, at: Option<&str>, e: serde_path_to_error::Error<serde_json::Error>) -> String {
    let path = e.path().to_string();
    let message = e.into_inner().to_string();
    if let Some(key) = unknown_field(&message) {
        return format!("{origin}: unknown key {key:?}");
    }
    match (at, path.as_str()) {
        (None, ".") => format!("{origin}: {message}"),
        (None, path) => format!("{origin}: {path}: {message}"),
        (Some(at), ".") => format!("{origin}: {at}: {message}"),
        (Some(at), path) => format!("{origin}: {at}.{path}: {message}"),
    }
}

/// The key that serde's message for an unknown field names: "unknown field \`colour\`, expected
/// one of ...".
fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    let end = rest.find("`, expected").or_else(|| rest.find("`, there are no fields"))?;
    Some(&rest[..end])
}

/// Reads one `descriptors` list into `into`; `path` is the composite key of its parent (for
/// duplicates), `at` its place in the file.
fn level(
    list: serde_json::Value,
    path: &str,
    at: &str,
    into: &mut Level,
    problems: &mut Vec<String>,
    origin: &str,
) {
    let serde_json::Value::Array(items) = list else {
        problems.push(format!("{origin}: {at}: must be a list"));
        return;
    };
    let mut seen = HashSet::new();
    for (i, item) in items.into_iter().enumerate() {
        let at = format!("{at}[{i}]");
        if !item.is_object() {
            // Not a mapping (`- 5`, `- x`): it has no key, and that is what is reported.
            problems.push(format!("{origin}: {at}.key: must not be empty"));
            continue;
        }
        let mut item = item;
        drop_misplaced(&mut item, DESCRIPTOR_KEYS);
        if let Some(rate_limit) = item.get_mut("rate_limit") {
            drop_misplaced(rate_limit, &["unit", "requests_per_unit", "unlimited", "name", "replaces"]);
            if let Some(serde_json::Value::Array(replaced)) = rate_limit.get_mut("replaces") {
                replaced.iter_mut().for_each(|r| drop_misplaced(r, &["name"]));
            }
        }
        let d: DescriptorSpec = match serde_path_to_error::deserialize(item) {
            Ok(d) => d,
            Err(e) => {
                problems.push(mistake(origin, Some(&at), e));
                continue;
            }
        };
        let (key, value) = (d.key, d.value);
        if key.is_empty() {
            problems.push(format!("{origin}: {at}.key: must not be empty"));
            continue;
        }
        let composite = if value.is_empty() { key.clone() } else { format!("{key}_{value}") };
        if !seen.insert(composite.clone()) {
            problems.push(format!("{origin}: {at}: duplicate descriptor composite key '{path}.{composite}'"));
            continue;
        }
        if d.share_threshold && !value.contains('*') {
            problems
                .push(format!("{origin}: {at}.share_threshold: only with a wildcard value (containing '*')"));
        }
        let sluice = d.sluice.map(serde_json::from_value::<DescriptorOptions>);
        let window = match &sluice {
            Some(Ok(options)) => options.window.as_deref(),
            _ => None,
        };
        let rule = d
            .rate_limit
            .and_then(|r| rule(r, window, &format!("{at}.rate_limit"), problems, origin))
            .map(|r| RateLimit {
                metadata: d.metadata.filter(|m| !m.is_empty()).map(std::sync::Arc::new),
                ..r
            });
        let options = match sluice {
            None => Options::default(),
            Some(Ok(spec)) => options(spec, &format!("{origin}: {at}.sluice"), problems),
            Some(Err(e)) => {
                problems.push(format!("{origin}: {at}.sluice: {e}"));
                Options::default()
            }
        };
        // The same caps as a tier's: counts exact in Lua's numbers, and a log holds one entry per
        // request within the window.
        if let Some(r) = rule.as_ref().filter(|r| !r.unlimited)
            && u128::from(r.requests_per_unit) * u128::from(r.window_ms) > MAX_LIMIT_TIMES_WINDOW
        {
            problems.push(format!(
                "{origin}: {at}.rate_limit.requests_per_unit: {} per {} ms is too large (limit x window in ms \
                 must stay under 2^50)",
                r.requests_per_unit, r.window_ms
            ));
        }
        if let Some(r) =
            rule.as_ref().filter(|r| !r.unlimited && options.algorithm == Some(Algorithm::SlidingLog))
            && r.requests_per_unit > MAX_LOG_LIMIT
        {
            problems.push(format!(
                "{origin}: {at}.rate_limit.requests_per_unit: {} is too large for sliding_log (at most \
                 {MAX_LOG_LIMIT}; use sliding_window)",
                r.requests_per_unit,
            ));
        }
        let mut node = Node {
            rule,
            options,
            shadow_mode: d.shadow_mode,
            quota_mode: d.quota_mode,
            share_threshold: d.share_threshold,
            detailed_metric: d.detailed_metric,
            value_to_metric: d.value_to_metric,
            children: Level::default(),
            metric: Default::default(),
        };
        if let Some(children) = d.descriptors {
            level(
                children,
                &format!("{path}.{composite}"),
                &format!("{at}.descriptors"),
                &mut node.children,
                problems,
                origin,
            );
        }
        into.insert(key, value, node);
    }
}

fn options(spec: DescriptorOptions, at: &str, problems: &mut Vec<String>) -> Options {
    let algorithm =
        spec.algorithm.map(|a| a.or_report(&format!("{at}.algorithm"), problems).unwrap_or_default());
    Options {
        algorithm: algorithm.map(Algorithm::from),
        on_failure: spec.on_redis_failure.map(|mode| {
            mode.or_report(&format!("{at}.on_redis_failure"), problems).unwrap_or_default().into()
        }),
        adaptive: match spec.adaptive {
            None | Some(AdaptiveSpec::Enabled(false)) => None,
            Some(AdaptiveSpec::Enabled(true)) => Some(Adaptive::default()),
            Some(AdaptiveSpec::Settings(s)) => tiers::adaptive(&format!("{at}.adaptive"), s, problems),
        },
        penalty: spec.penalty.and_then(|p| tiers::penalty(&format!("{at}.penalty"), p, problems)),
    }
}

/// A `rate_limit`; `window` is the descriptor's `sluice.window`, which wins over the unit.
fn rule(
    r: RateLimitSpec,
    window: Option<&str>,
    at: &str,
    problems: &mut Vec<String>,
    origin: &str,
) -> Option<RateLimit> {
    let RateLimitSpec { unit, requests_per_unit, unlimited, name, replaces } = r;
    let replaces: Vec<String> = replaces.unwrap_or_default().into_iter().map(|r| r.name).collect();
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
    let requests_per_unit = match requests_per_unit {
        None => 0,
        // `1_000` is 1000 to the reference's YAML reader.
        Some(text) => match text.replace('_', "").parse::<u64>() {
            Ok(n) if n <= u64::from(u32::MAX) => n,
            _ => {
                problems.push(format!(
                    "{origin}: {at}.requests_per_unit: {text} is not a whole number up to 4294967295"
                ));
                0
            }
        },
    };
    let unit = unit.parse::<Unit>();
    if unlimited {
        if unit.is_ok() {
            problems.push(format!("{origin}: {at}.unit: should not be given when unlimited"));
        }
        return Some(RateLimit {
            unlimited,
            requests_per_unit,
            window_ms: 0,
            unit: 0,
            name,
            replaces,
            metadata: None,
        });
    }
    let (window_ms, code) = match (unit, window) {
        (unit, Some(w)) => match parse_duration_ms(w) {
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
    Some(RateLimit { unlimited, requests_per_unit, window_ms, unit: code, name, replaces, metadata: None })
}

/// The `.yaml` and `.yml` files of a directory, in name order.
pub(crate) fn yaml_files_in(dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut found: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|f| f.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    found.sort();
    Ok(found)
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

    /// Flags as the reference's YAML 1.1 reader takes them; anything else is refused, not off.
    #[test]
    fn flags_read_as_yaml_1_1() {
        let file = |flag: &str| {
            format!(
                "domain: d\ndescriptors:\n  - key: a\n    shadow_mode: {flag}\n    rate_limit: {{unit: second, requests_per_unit: 1}}\n  - key: b\n    rate_limit: {{unlimited: {flag}}}\n"
            )
        };
        for (written, on) in
            [("yes", true), ("On", true), ("Y", true), ("TRUE", true), ("no", false), ("off", false)]
        {
            if !on {
                // Off, `b` has neither a unit nor `unlimited`: refused for that.
                assert!(parse(&file(written), "t.yaml").is_err(), "{written}");
                continue;
            }
            let d = parse(&file(written), "t.yaml").unwrap_or_else(|e| panic!("{written}: {e:?}"));
            let a = d.matches(&entries(&[("a", "x")])).expect("a");
            assert!(a.node.shadow_mode, "shadow_mode: {written}");
            let b = d.matches(&entries(&[("b", "x")])).expect("b");
            assert!(b.node.rule.as_ref().expect("rule").unlimited, "unlimited: {written}");
        }
        let d = parse(
            "domain: d\ndescriptors:\n  - key: a\n    shadow_mode: off\n    rate_limit: {unit: second, requests_per_unit: 1}\n",
            "t.yaml",
        )
        .expect("off is a flag");
        assert!(!d.matches(&entries(&[("a", "x")])).expect("a").node.shadow_mode);
        for bad in ["maybe", "1", "enabled"] {
            let problems = parse(&file(bad), "t.yaml").expect_err(bad);
            assert!(problems.iter().any(|p| p.contains("is not a flag")), "{bad}: {problems:?}");
        }
    }

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
        let key_only = d.matches(&entries(&[("remote_address", "9.9.9.9")])).expect("key-only");
        assert_eq!((key_only.node.metric.path.as_str(), key_only.client_path), ("remote_address", None));
        let injected = parse(
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1, name: \"a\\\"b\\r\\nX: 1\"}\n",
            "t",
        );
        assert!(
            injected.as_ref().is_err_and(|p| p.iter().any(|p| p.contains("rate_limit.name"))),
            "{injected:?}"
        );
        let shown = parse("domain: d\ndescriptors:\n  - key: route\n    value_to_metric: true\n    rate_limit: {unit: second, requests_per_unit: 1}\n", "t").expect("valid");
        assert_eq!(
            shown.matches(&entries(&[("route", "api")])).expect("match").client_path.as_deref(),
            Some("route_api")
        );
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

    /// What the reference's reader loads: its keys at any level (ignored where they mean nothing),
    /// YAML merge keys, and `_` in numbers.
    #[test]
    fn files_the_reference_loads() {
        let yaml = "domain: d
key: stray
base: &base
  unit: minute
  requests_per_unit: 1_000
descriptors:
  - key: a
    name: ignored
    rate_limit:
      <<: *base
      shadow_mode: true
  - <<: {key: b, rate_limit: {unit: second, requests_per_unit: 1}}
    value: x
";
        // `base` is no key of the reference's: refused, as the reference refuses it.
        let problems = parse(yaml, "t").expect_err("base");
        assert_eq!(problems, ["t: unknown key \"base\""]);
        let yaml = yaml.replace("base: &base\n  unit: minute\n  requests_per_unit: 1_000\n", "").replace(
            "      <<: *base\n",
            "      <<: [{unit: minute, requests_per_unit: 1_000}, {unit: hour}]\n",
        );
        let d = parse(&yaml, "t").expect("the reference loads it");
        let a = d.matches(&entries(&[("a", "v")])).expect("a");
        let rule = a.node.rule.as_ref().expect("rule");
        assert_eq!((rule.requests_per_unit, rule.window_ms), (1000, 60_000), "the first merged wins");
        assert!(!a.node.shadow_mode, "a shadow_mode inside rate_limit means nothing, as in the reference");
        let b = d.matches(&entries(&[("b", "x")])).expect("b, merged in");
        assert_eq!(b.node.rule.as_ref().expect("rule").window_ms, 1000);
        // A merge of a mapping that merges another; a merge of a scalar is refused.
        let nested = "domain: d
descriptors:
  - key: a
    rate_limit: {<<: {<<: {unit: hour}, requests_per_unit: 7}}
";
        let d = parse(nested, "t").expect("nested merges");
        let rule = d.matches(&entries(&[("a", "v")])).expect("a").node.rule.clone().expect("rule");
        assert_eq!((rule.requests_per_unit, rule.window_ms), (7, 3_600_000));
        let scalar = parse("domain: d\ndescriptors:\n  - key: a\n    <<: 5\n", "t").expect_err("a scalar");
        assert!(scalar[0].contains("merges mappings only"), "{scalar:?}");
    }

    #[test]
    fn unknown_keys_are_named_at_every_depth() {
        for (yaml, key) in [
            ("domain: d\nfoo: 1\n", "foo"),
            (
                "domain: d\ndescriptors:\n  - key: a\n    descriptors:\n      - key: b\n        colour: red\n",
                "colour",
            ),
            ("domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, per: 1}\n", "per"),
            (
                "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unlimited: true, replaces: [{nme: b}]}\n",
                "nme",
            ),
        ] {
            let problems = parse(yaml, "t").expect_err("an unknown key");
            assert_eq!(problems, [format!("t: unknown key {key:?}")], "{yaml}");
        }
        let free =
            "domain: d\ndescriptors:\n  - key: a\n    quota_mode: true\n    metadata: {any: [thing]}\n";
        parse(free, "t").expect("metadata and quota_mode take anything");
    }

    #[test]
    fn scalars_are_taken_as_written() {
        let yaml = "domain: d\ndescriptors:\n  - key: 7\n    value: true\n    shadow_mode: 'true'\n    \
                    detailed_metric: yes\n    rate_limit: {unit: SECOND, requests_per_unit: '10'}\n";
        let d = parse(yaml, "t").expect("valid");
        let m = d.matches(&entries(&[("7", "true")])).expect("a match");
        assert_eq!(m.node.rule.as_ref().map(|r| (r.requests_per_unit, r.unit)), Some((10, 1)));
        // `yes` is on, as YAML 1.1 (the reference's reader) has it.
        assert!(m.node.shadow_mode && m.node.detailed_metric);
        let empty =
            parse("domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n  - 5\n", "t").expect_err("invalid");
        assert_eq!(
            empty,
            [
                "t: descriptors[0].rate_limit.unit: invalid rate limit unit \"\"",
                "t: descriptors[1].key: must not be empty"
            ]
        );
    }
}
