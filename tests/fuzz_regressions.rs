//! The fuzz targets' properties under plain `cargo test`, without libFuzzer or nightly: every seed
//! in `fuzz/corpus/<target>/` and every crash ever found, kept in `fuzz/regressions/<target>/`,
//! goes through the same checks as `cargo +nightly fuzz run <target>` (`fuzz/src/checks.rs`,
//! included here by path), which panic when a parser panics or a property fails.
//!
//! To keep a new crash: copy libFuzzer's `fuzz/artifacts/<target>/crash-...` into
//! `fuzz/regressions/<target>/` under a name that says what it was.

#[path = "../fuzz/src/checks.rs"]
mod checks;

use std::path::{Path, PathBuf};

use checks::Handled;

/// A target's checks: raw input bytes in, what became of them out; panics on a failed property.
type Check = fn(&[u8]) -> Handled;

const TARGETS: [(&str, Check); 7] = [
    ("native_request", checks::native_request),
    ("envoy_request", checks::envoy_request),
    ("config", checks::config),
    ("key", checks::key),
    ("headers", checks::headers),
    ("grpc_timeout", checks::grpc_timeout),
    ("decide", checks::decide),
];

/// The files of `fuzz/<kind>/<target>/`, by name; none when the directory does not exist.
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(kind).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> =
        entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_file()).collect();
    files.sort();
    files
}

/// Runs every input of `kind` through its target's checks: `(target, file name, what happened)`.
fn replay(kind: &str) -> Vec<(&'static str, String, Handled)> {
    let mut results = Vec::new();
    for (target, check) in TARGETS {
        for path in inputs(kind, target) {
            let data = std::fs::read(&path).expect("a readable input");
            let name = path.file_name().expect("a file name").to_string_lossy().into_owned();
            let handled = std::panic::catch_unwind(|| check(&data))
                .unwrap_or_else(|_| panic!("fuzz/{kind}/{target}/{name} panicked (see above)"));
            results.push((target, name, handled));
        }
    }
    results
}

fn message<'a>(results: &'a [(&str, String, Handled)], target: &str, name: &str) -> &'a str {
    match results.iter().find(|(t, n, _)| *t == target && n == name) {
        Some((_, _, Handled::Rejected(message))) => message,
        Some((_, _, other)) => panic!(
            "fuzz/corpus/{target}/{name}: {other:?}, expected a rejection \
             (if a default input bound changed, rewrite the seeds: see fuzz/src/bin/seeds.rs)"
        ),
        None => panic!("fuzz/corpus/{target}/{name} is missing"),
    }
}

#[test]
fn seeds_reach_both_paths_of_every_parser_without_panicking() {
    let results = replay("corpus");
    for (target, _) in TARGETS {
        let of_target: Vec<&Handled> =
            results.iter().filter(|(t, _, _)| *t == target).map(|(_, _, h)| h).collect();
        assert!(of_target.contains(&&Handled::Accepted), "no seed of {target} is accepted: {of_target:?}");
        if matches!(target, "native_request" | "envoy_request" | "config" | "grpc_timeout") {
            assert!(
                of_target.iter().any(|h| matches!(h, Handled::Rejected(_))),
                "no seed of {target} is rejected: {of_target:?}"
            );
        }
    }
}

#[test]
fn refused_seeds_name_the_field_at_fault() {
    let results = replay("corpus");
    for (target, name, expected) in [
        ("native_request", "empty_batch", "requests: must hold at least one request"),
        ("native_request", "zero_cost", "requests[0].cost: must be at least 1"),
        ("native_request", "built_in_extra", "requests[0].attributes.extra[\"ip\"]: is a built-in attribute"),
        ("native_request", "empty_extra_name", "requests[0].attributes.extra: an entry has an empty name"),
        ("native_request", "long_value", "requests[0].attributes.ip: "),
        ("envoy_request", "no_domain", "domain: must not be empty"),
        ("envoy_request", "no_descriptors", "descriptors: must hold at least one descriptor"),
        ("envoy_request", "empty_key", "descriptors[0].entries[0].key: must not be empty"),
        ("envoy_request", "too_many_descriptors", "descriptors: "),
        ("config", "unknown_key.yaml", "fuzz: tiers[0]"),
    ] {
        let got = message(&results, target, name);
        assert!(got.starts_with(expected), "fuzz/corpus/{target}/{name}: {got:?}, expected {expected:?}...");
    }
    // Past a bound, the message names the bound (the seeds are sized from the defaults).
    for (target, name, bound) in [
        ("native_request", "long_value", "limits.max_value_bytes"),
        ("envoy_request", "too_many_descriptors", "limits.max_descriptors"),
    ] {
        let got = message(&results, target, name);
        assert!(got.contains(&format!("exceed {bound} (")), "fuzz/corpus/{target}/{name}: {got:?}");
    }
    let problems = message(&results, "config", "every_problem.yaml");
    for key in [
        "server.grpc_addr",
        "server.http_addr",
        "redis: set only one",
        "fallback.mode",
        "fallback.replicas",
        "local.max_keys",
        "threat.patterns[0]",
        "threat.deny_ranges[0]",
        "threat.deny_ranges[1]",
        "threat.deny_ranges[2]",
        "admin.grpc_addr",
        "admin.token",
        "envoy.headers",
        "envoy.paths[0]",
        "limits.max_batch",
        "limits.max_value_bytes",
        "log.format",
        "tiers[0].name",
        "tiers[0].match.endpoint",
        "tiers[0].key[1]",
        "tiers[0].algorithm",
        "tiers[1].exempt",
        "tiers[2].name",
        "tiers[2].adaptive.weights.burst",
        "tiers[2].penalty.violations",
        "tiers[2].baseline.sensitivity_percent",
        "tiers[2].on_redis_failure",
    ] {
        assert!(
            problems.lines().any(|l| l.starts_with("fuzz: ") && l.contains(key)),
            "{key} not in:\n{problems}"
        );
    }
    let domain_problems = message(&results, "config", "envoy_problems.yaml");
    for fragment in [
        "domain: must not be empty",
        "fortnight",
        "duplicate descriptor",
        "unknown key \"colour\"",
        "rate_limit.name: \"g\\\"\\r\\nX-Injected: 1\" must be printable ASCII",
    ] {
        assert!(domain_problems.contains(fragment), "{fragment} not in:\n{domain_problems}");
    }
}

/// Crashes fuzzing found, and what their input must come to once fixed: each must still reach the
/// code that crashed, so that a change to the checks' decoding cannot quietly retire it.
const KNOWN_CRASHES: [(&str, &str, Handled); 2] = [
    // Decision::counted added a tier's cost to its remaining quota unchecked (u64 overflow).
    ("headers", "overflow-remaining-plus-cost", Handled::Accepted),
    // A denial whose longest wait is held by a tier that allowed (one that counts denied requests):
    // the check still required the longest wait of the denying tiers only.
    ("headers", "allowed-tier-holding-a-wait", Handled::Accepted),
];

#[test]
fn crashes_found_by_fuzzing_stay_fixed() {
    // Every file of fuzz/regressions/, known or not, is replayed; none may panic.
    let results = replay("regressions");
    for (target, name, expected) in KNOWN_CRASHES {
        let got = results.iter().find(|(t, n, _)| *t == target && n == name).map(|(_, _, h)| h);
        assert_eq!(got, Some(&expected), "fuzz/regressions/{target}/{name}");
    }
}

/// The deciding target over many random runs, on stable and in every `cargo test`: what a short
/// fuzzing session would try first, so a regression in what decides shows up without nightly.
#[test]
fn random_runs_keep_the_deciding_promises() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xdec1de);
    let mut accepted = 0;
    for _ in 0..20_000 {
        let len = rng.random_range(0..400);
        let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        accepted += usize::from(checks::decide(&data) == Handled::Accepted);
    }
    assert!(accepted > 13_000, "only {accepted} of 20,000 runs reached every check");
}
