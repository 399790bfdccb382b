//! libFuzzer entry point of [`apollo_fuzz::subject_token`] (`cargo fuzz run subject_token`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    apollo_fuzz::subject_token(data);
});
