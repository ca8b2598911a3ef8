#![no_main]
//! libFuzzer entry: [`shmvm_fuzz_targets::watchdog`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| shmvm_fuzz_targets::watchdog(data));
