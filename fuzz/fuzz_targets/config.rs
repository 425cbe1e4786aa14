//! Fuzz target `config`: see `sluice_fuzz::checks::config` for what it feeds and what it asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = sluice_fuzz::checks::config(data);
});
