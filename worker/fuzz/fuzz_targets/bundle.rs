//! Fuzz target: any bytes as a connector bundle zip (see `checks::bundle`).
#![no_main]

#[path = "checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::bundle(data));
