//! Fuzz target: any bytes as `dtrust.properties` (see `checks::properties`).
#![no_main]

#[path = "checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::properties(data));
