//! Reading a configuration: the file (or the built-in default), layered under `SLUICE__...`
//! environment variables by the `config` crate, deserialized into the schema with the key path of
//! any mistake, then validated into settings.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::validate::validate;
use super::{ConfigError, Settings, schema};

/// The configuration used when no file is given: examples/sluice.yaml, which uses no Redis.
pub const DEFAULT_YAML: &str = include_str!("../../examples/sluice.yaml");

/// Reads `path` (or the built-in default) with overrides from the process environment.
pub fn load(path: Option<&Path>) -> Result<Settings, ConfigError> {
    load_with_env(path, None)
}

/// As `load`, with the environment given as a map (tests use this instead of `set_var`).
pub fn load_with_env(
    path: Option<&Path>,
    env: Option<HashMap<String, String>>,
) -> Result<Settings, ConfigError> {
    match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
            let mut settings = parse(&text, &path.display().to_string(), env)?;
            settings.source = Some(path.to_path_buf());
            Ok(settings)
        }
        None => parse(DEFAULT_YAML, "built-in default", env),
    }
}

/// Parses YAML text; `origin` names it in errors.
pub fn parse(
    text: &str,
    origin: &str,
    env: Option<HashMap<String, String>>,
) -> Result<Settings, ConfigError> {
    let parse_error = |message: String| ConfigError::Parse { origin: origin.to_owned(), message };
    super::yaml::check_size(text).map_err(parse_error)?;
    let file = ::config::File::from_str(text, ::config::FileFormat::Yaml);
    // Looked at alone, before the environment is layered on: the environment may set keys (the
    // Helm chart always sets one) even when the file is empty.
    let written = ::config::Source::collect(&file).map_err(|e| parse_error(e.to_string()))?;
    if written.is_empty() {
        return Err(ConfigError::Empty { origin: origin.to_owned() });
    }
    let layered = ::config::Config::builder()
        .add_source(file)
        .add_source(::config::Environment::with_prefix("SLUICE").separator("__").source(env))
        .build()
        .map_err(|e| parse_error(e.to_string()))?;
    let file: schema::File = match serde_path_to_error::deserialize(layered.clone()) {
        Ok(file) => file,
        Err(e) => {
            // Reading it whole stops at the first mistake: look again, key by key, for all of them.
            let problems = every_problem(&layered);
            if problems.is_empty() {
                let path = e.path().to_string();
                let inner = e.into_inner().to_string();
                return Err(if path == "." {
                    parse_error(inner)
                } else {
                    parse_error(format!("{path}: {inner}"))
                });
            }
            return Err(ConfigError::Invalid { origin: origin.to_owned(), problems });
        }
    };
    validate(file).map_err(|problems| ConfigError::Invalid { origin: origin.to_owned(), problems })
}

/// Every mistake of a configuration that does not read as a whole: each unknown key and each
/// value of the wrong type, found by reading each key on its own (a tier's, one tier at a time),
/// with its key and, when the environment set it, the variable; then the problems of the values
/// that did read, as `validate` finds them, except on keys already named.
fn every_problem(layered: &::config::Config) -> Vec<String> {
    use ::config::{Value, ValueKind};
    let Ok(top) = ::config::Source::collect(layered) else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    let mut kept = ::config::Map::new();
    for (key, value) in top {
        let value = match &value.kind {
            ValueKind::Array(items) if key == "tiers" => {
                let tiers = items
                    .iter()
                    .enumerate()
                    .map(|(i, tier)| {
                        probe::<schema::Tier>(&format!("tiers[{i}]"), tier, &mut problems, |field, v| {
                            table([(field, v)])
                        })
                    })
                    .collect::<Vec<_>>();
                Value::new(None, ValueKind::Array(tiers))
            }
            // A section's keys are read in place, so that a problem's key starts with the section's.
            ValueKind::Table(_) => probe::<schema::File>("", &value, &mut problems, |field, v| {
                table([(key.clone(), table([(field, v)]))])
            }),
            _ => match problem::<schema::File>("", table([(key.clone(), value.clone())]), &value) {
                Some(p) => {
                    problems.push(p);
                    continue;
                }
                None => value,
            },
        };
        kept.insert(key, value);
    }
    problems.sort();
    // What remains reads as a whole (or says what it still lacks); its values are checked next.
    let named: Vec<String> =
        problems.iter().map(|p| p.split(": ").next().unwrap_or_default().to_owned()).collect();
    // `tiers[1]` names `tiers[1].limit`, not `tiers[10].limit`.
    let unnamed = |p: &String| {
        !named
            .iter()
            .any(|key| p.strip_prefix(key.as_str()).is_some_and(|rest| rest.starts_with([':', '.', '['])))
    };
    let rest = Value::new(None, ValueKind::Table(kept));
    match serde_path_to_error::deserialize::<_, schema::File>(rest) {
        // Still unreadable (a tier that is no mapping, a missing required key): said once.
        Err(e) => problems.extend(
            Some(format!("{}: {}", e.path(), without_key_suffix(e.inner().to_string()))).filter(unnamed),
        ),
        Ok(file) => {
            if let Err(more) = validate(file) {
                problems.extend(more.into_iter().filter(unnamed));
            }
        }
    }
    problems
}

/// A mapping of `entries`, as the `config` crate holds one.
fn table<const N: usize>(entries: [(String, ::config::Value); N]) -> ::config::Value {
    ::config::Value::new(None, ::config::ValueKind::Table(entries.into_iter().collect()))
}

/// `value`'s fields read one at a time as a `T`, each placed by `alone` where a `T` has it (the item
/// at `prefix`, say a tier): the fields that read are kept, and each that does not is a problem.
fn probe<T: serde::de::DeserializeOwned>(
    prefix: &str,
    value: &::config::Value,
    problems: &mut Vec<String>,
    alone: impl Fn(String, ::config::Value) -> ::config::Value,
) -> ::config::Value {
    let ::config::ValueKind::Table(fields) = &value.kind else {
        problems.extend(problem::<T>(prefix, value.clone(), value));
        return value.clone();
    };
    let mut kept = ::config::Map::new();
    for (field, v) in fields {
        match problem::<T>(prefix, alone(field.clone(), v.clone()), v) {
            Some(p) => problems.push(p),
            None => {
                kept.insert(field.clone(), v.clone());
            }
        }
    }
    ::config::Value::new(None, ::config::ValueKind::Table(kept))
}

/// An error without the key the `config` crate adds at its end: the key leads the line already.
fn without_key_suffix(why: String) -> String {
    match why.rfind(" for key `") {
        Some(at) if why.ends_with('`') => why[..at].to_owned(),
        _ => why,
    }
}

/// Why `value` does not read as a `T`, as `<key>: <why>`, the key under `prefix`; `None` when it
/// reads, or when all it lacks is a sibling field (a key read alone lacks its siblings). `leaf` is
/// the value the key holds: from the environment, the problem names the variable.
fn problem<T: serde::de::DeserializeOwned>(
    prefix: &str,
    value: ::config::Value,
    leaf: &::config::Value,
) -> Option<String> {
    let e = serde_path_to_error::deserialize::<_, T>(value).err()?;
    let why = e.inner().to_string();
    if why.starts_with("missing field") || why.starts_with("missing configuration field") {
        return None;
    }
    let why = without_key_suffix(why);
    let path = e.path().to_string();
    let key = match (prefix.is_empty(), path.as_str()) {
        (true, p) => p.to_owned(),
        (false, ".") => prefix.to_owned(),
        (false, p) => format!("{prefix}.{p}"),
    };
    Some(if leaf.origin() == Some("the environment") {
        let variable = format!("SLUICE__{}", key.to_uppercase().replace('.', "__"));
        format!("{key}: {why} (set by the environment variable {variable})")
    } else {
        format!("{key}: {why}")
    })
}

/// Every file a configuration at `path` reads: the file itself, then for each of its
/// `envoy_paths` a directory's `.yaml`/`.yml` files in name order, or the path itself. A path
/// that cannot be read is listed all the same, so that its appearing is noticed.
pub fn files_read(path: &Path, envoy_paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut files = vec![path.to_path_buf()];
    for p in envoy_paths {
        match super::envoy_file::yaml_files_in(p) {
            Ok(found) => files.extend(found),
            Err(_) => files.push(p.clone()),
        }
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RedisSettings;
    use crate::store::redis::Topology;

    #[test]
    fn the_default_is_valid_and_uses_no_redis() {
        let settings = parse(DEFAULT_YAML, "default", Some(HashMap::new())).expect("default config");
        assert!(settings.redis.is_none());
        assert!(settings.tiers.len() >= 4);
    }

    #[test]
    fn environment_overrides_a_key() {
        let env = HashMap::from([("SLUICE__REDIS__URL".to_owned(), "redis://127.0.0.1:1".to_owned())]);
        let settings = parse(DEFAULT_YAML, "default", Some(env)).expect("config");
        let topology = settings.redis.expect("redis").topology;
        assert!(matches!(topology, Topology::Standalone { url, .. } if url == "redis://127.0.0.1:1"));
    }

    #[test]
    fn every_problem_is_named_at_once() {
        let yaml = "tiers:\n  - name: a\n    limit: 0\n    window: 15x\n  - name: a\n    exempt: true\n    limit: 3\n";
        let err = parse(yaml, "t.yaml", Some(HashMap::new())).expect_err("invalid");
        let lines = err.lines();
        assert!(lines.iter().any(|l| l.contains("tiers[0].limit: must be at least 1")), "{lines:?}");
        assert!(lines.iter().any(|l| l.contains("tiers[0].window: \"15x\"")), "{lines:?}");
        assert!(lines.iter().any(|l| l.contains("tiers[1].name")), "{lines:?}");
        assert!(lines.iter().any(|l| l.contains("tiers[1].exempt")), "{lines:?}");
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_named_at_once_with_the_rest() {
        let yaml = "server:\n  colour: blue\n  grpc_addr: nowhere\ntiers:\n  - name: bad name!\n    limit: -5\n    \
                    window: 10x\n  - name: ok\n    limit: 3\n    window: 1m\n    shadw: true\n";
        let env = HashMap::from([("SLUICE__LOG__COLOUR".to_owned(), "red".to_owned())]);
        let lines = parse(yaml, "t.yaml", Some(env)).expect_err("invalid").lines();
        let has = |needle: &str| lines.iter().any(|l| l.contains(needle));
        assert!(has("t.yaml: server.colour: unknown field `colour`"), "{lines:?}");
        assert!(
            has("server.grpc_addr: \"nowhere\" is not an address"),
            "a value problem beside them: {lines:?}"
        );
        assert!(has("tiers[0].limit: invalid type: integer `-5`"), "{lines:?}");
        assert!(has("tiers[0].name"), "{lines:?}");
        assert!(has("tiers[0].window: \"10x\""), "{lines:?}");
        assert!(has("tiers[1].shadw: unknown field"), "{lines:?}");
        assert!(has("log.colour: unknown field `colour`") && has("SLUICE__LOG__COLOUR"), "{lines:?}");
        assert!(!lines.iter().any(|l| l.contains("tiers[0]limit")), "{lines:?}");
        assert_eq!(lines.iter().filter(|l| l.contains("tiers[0].limit")).count(), 1, "{lines:?}");
    }

    /// Counts are whole numbers that fit their key: a fraction, a boolean, a word or a number too
    /// large is an error that names the key, where the `config` crate alone would round 2.5 to 3
    /// and read `true` as 1.
    #[test]
    fn counts_are_whole_numbers() {
        let yaml = "server:\n  max_in_flight: 2.5\n  worker_threads: true\nfallback:\n  replicas: 0.4\n\
                    http_api:\n  addr: 127.0.0.1:8083\n  deny_status: 70000\ntiers:\n  - name: a\n    limit: 1e3\n    window: 1m\n    cost: \"7\"\n";
        let env = HashMap::from([("SLUICE__LOCAL__MAX_KEYS".to_owned(), "12.0".to_owned())]);
        let lines = parse(yaml, "t.yaml", Some(env)).expect_err("invalid").lines();
        let has = |needle: &str| lines.iter().any(|l| l.contains(needle));
        for needle in [
            "server.max_in_flight: invalid type: floating point `2.5`, expected a whole number",
            "server.worker_threads: invalid type: boolean `true`",
            "fallback.replicas: invalid type: floating point `0.4`",
            "tiers[0].limit: invalid type: floating point `1000.0`",
            "local.max_keys: invalid type: string \"12.0\"",
            "http_api.deny_status: invalid value: integer `70000`, expected a smaller whole number",
        ] {
            assert!(has(needle), "{needle:?} missing from {lines:?}");
        }
        assert!(!has("tiers[0].cost"), "digits in a string are a count: {lines:?}");
        assert!(!has("is not between"), "no problem with a value nobody wrote: {lines:?}");

        let yaml = "server:\n  max_in_flight: 7\ntiers:\n  - name: a\n    limit: \"5\"\n    window: 1m\n";
        let env = HashMap::from([("SLUICE__SERVER__DRAIN_SECS".to_owned(), "0".to_owned())]);
        let settings = parse(yaml, "t.yaml", Some(env)).expect("whole numbers read as before");
        assert_eq!(settings.server.max_in_flight, 7);
        assert_eq!(settings.server.drain, std::time::Duration::ZERO);
        match &settings.tiers.all()[0].rule {
            crate::tier::Rule::Limited(limit) => assert_eq!(limit.limit, 5),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_tier_that_does_not_read_is_said_once() {
        // tiers[1] is no mapping at all; tiers[10]'s value problem is still named.
        let mut yaml = String::from("tiers:\n");
        for i in 0..11 {
            match i {
                1 => yaml.push_str("  - not a tier\n"),
                10 => yaml.push_str("  - name: bad name!\n    limit: 3\n    window: 1m\n"),
                i => yaml.push_str(&format!("  - name: t{i}\n    limit: 3\n    window: 1m\n")),
            }
        }
        let lines = parse(&yaml, "t.yaml", Some(HashMap::new())).expect_err("invalid").lines();
        assert_eq!(
            lines,
            ["t.yaml: tiers[1]: invalid type: string \"not a tier\", expected struct Tier"],
            "said once"
        );
        // A tier whose field does not read leaves the others checked, tiers[10] among them.
        let yaml = yaml.replace("  - not a tier\n", "  - name: t1\n    limit: -1\n    window: 1m\n");
        let lines = parse(&yaml, "t.yaml", Some(HashMap::new())).expect_err("invalid").lines();
        assert!(lines.iter().any(|l| l.contains("tiers[1].limit: invalid type")), "{lines:?}");
        assert!(lines.iter().any(|l| l.contains("tiers[10].name: \"bad name!\"")), "{lines:?}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let err =
            parse("tiers:\n  - name: a\n    limt: 3\n", "t.yaml", Some(HashMap::new())).expect_err("invalid");
        let text = err.to_string();
        assert!(text.contains("tiers[0]") && text.contains("limt"), "{text}");
    }

    #[test]
    fn an_empty_file_is_refused_and_no_tiers_must_be_said() {
        let env = HashMap::from([("SLUICE__FALLBACK__REPLICAS".to_owned(), "3".to_owned())]);
        for text in ["", "   \n\n", "# all commented out\n#tiers: []\n"] {
            let err = parse(text, "t.yaml", Some(env.clone())).expect_err("empty");
            assert!(matches!(err, ConfigError::Empty { .. }), "{text:?}: {err:?}");
            assert!(err.to_string().starts_with("t.yaml: holds no settings"), "{err}");
        }
        let lines =
            parse("log:\n  level: debug\n", "t.yaml", Some(HashMap::new())).expect_err("no tiers").lines();
        assert_eq!(lines, ["t.yaml: tiers: is required; list the tiers, or write `tiers: []` for none"]);
        let none = parse("tiers: []\n", "t.yaml", Some(HashMap::new())).expect("explicitly no tiers");
        assert_eq!(none.tiers.len(), 0);
    }

    #[test]
    fn env_numbers_and_secrets() {
        let env = HashMap::from([
            ("SLUICE__REDIS__URL".to_owned(), "redis://127.0.0.1:1".to_owned()),
            ("SLUICE__REDIS__TIMEOUT_MS".to_owned(), "75".to_owned()),
            ("SLUICE__ADMIN__GRPC_ADDR".to_owned(), "127.0.0.1:0".to_owned()),
            ("SLUICE__ADMIN__TOKEN".to_owned(), "00012345678901234567890123".to_owned()),
        ]);
        let s = parse("tiers: []\n", "t", Some(env)).expect("valid");
        assert_eq!(s.redis.expect("redis").timeout, std::time::Duration::from_millis(75));
        assert_eq!(
            s.admin.expect("admin").token,
            "00012345678901234567890123",
            "a token of digits stays as written"
        );
        let env = HashMap::from([(
            "SLUICE__REDIS__CLUSTER".to_owned(),
            "redis://a:7000, redis://b:7000".to_owned(),
        )]);
        let s = parse("tiers: []\n", "t", Some(env)).expect("valid");
        let Some(RedisSettings { topology: Topology::Cluster { nodes }, .. }) = s.redis else {
            panic!("a cluster")
        };
        assert_eq!(nodes, ["redis://a:7000", "redis://b:7000"]);
    }

    #[test]
    fn a_directory_is_read_as_its_yaml_files_in_name_order() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        for name in ["b.yml", "a.yaml", "notes.txt"] {
            std::fs::write(dir.path().join(name), "domain: d\n").expect("write");
        }
        let missing = dir.path().join("missing.yaml");
        let files = files_read(Path::new("sluice.yaml"), &[dir.path().to_path_buf(), missing.clone()]);
        let expected =
            [PathBuf::from("sluice.yaml"), dir.path().join("a.yaml"), dir.path().join("b.yml"), missing];
        assert_eq!(files, expected);
    }
}
