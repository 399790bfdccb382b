//! libFuzzer entry point of [`apollo_fuzz::nats_orchestration_policy`] (`cargo fuzz run nats_orchestration_policy`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    apollo_fuzz::nats_orchestration_policy(data);
});
