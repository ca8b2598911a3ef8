#![no_main]
//! libFuzzer entry: [`shmvm_fuzz_targets::vhost_user_replies`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| shmvm_fuzz_targets::vhost_user_replies(data));
