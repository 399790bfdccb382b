//! libFuzzer entry point of [`apollo_fuzz::trace_genai`] (`cargo fuzz run trace_genai`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    apollo_fuzz::trace_genai(data);
});
