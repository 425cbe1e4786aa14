//! Fuzzing Sluice's parsers of outside input. The targets in `fuzz_targets/` are one line each;
//! what they feed and assert lives in `checks`, which `tests/fuzz_regressions.rs` in the main
//! crate also includes, to replay the seed corpora and every crash found with `cargo test`.

pub mod checks;
