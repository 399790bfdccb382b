//! libFuzzer entry point of [`apollo_fuzz::ingest_workload_signature`] (`cargo fuzz run ingest_workload_signature`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    apollo_fuzz::ingest_workload_signature(data);
});
