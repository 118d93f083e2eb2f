//! Fuzz target: any bytes as a job message (see `checks::job`).
#![no_main]

#[path = "checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::job(data));
