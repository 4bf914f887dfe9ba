#![no_main]
//! libFuzzer over `ember_fuzz_targets::codec` (see that crate for what it covers).

libfuzzer_sys::fuzz_target!(|data: &[u8]| ember_fuzz_targets::codec(data));
