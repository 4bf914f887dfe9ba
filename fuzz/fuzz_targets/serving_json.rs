#![no_main]
//! libFuzzer over `ember_fuzz_targets::serving_json` (see that crate for what it covers).

libfuzzer_sys::fuzz_target!(|data: &[u8]| ember_fuzz_targets::serving_json(data));
