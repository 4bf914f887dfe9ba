#![no_main]
//! libFuzzer over `ember_fuzz_targets::scheduler_request` (see that crate for what it covers).

libfuzzer_sys::fuzz_target!(|data: &[u8]| ember_fuzz_targets::scheduler_request(data));
