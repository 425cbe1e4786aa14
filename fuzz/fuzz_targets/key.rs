//! Fuzz target `key`: see `sluice_fuzz::checks::key` for what it feeds and what it asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = sluice_fuzz::checks::key(data);
});
