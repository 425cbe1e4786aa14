//! Fuzz target `grpc_timeout`: see `sluice_fuzz::checks::grpc_timeout` for what it feeds and what it asserts.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = sluice_fuzz::checks::grpc_timeout(data);
});
