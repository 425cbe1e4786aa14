//! Fuzz target `decide`: see `sluice_fuzz::checks::decide` for what it feeds and what it asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = sluice_fuzz::checks::decide(data);
});
