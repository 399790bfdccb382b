//! libFuzzer entry point of [`apollo_fuzz::trace_openb_nodes`] (`cargo fuzz run trace_openb_nodes`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    apollo_fuzz::trace_openb_nodes(data);
});
