//! libFuzzer entry point of [`apollo_fuzz::orchestrator_reply`] (`cargo fuzz run orchestrator_reply`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    apollo_fuzz::orchestrator_reply(data);
});
