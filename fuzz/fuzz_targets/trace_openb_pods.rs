//! libFuzzer entry point of [`apollo_fuzz::trace_openb_pods`] (`cargo fuzz run trace_openb_pods`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    apollo_fuzz::trace_openb_pods(data);
});
