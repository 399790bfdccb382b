//! libFuzzer entry point of [`apollo_fuzz::nats_cluster_insight`] (`cargo fuzz run nats_cluster_insight`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    apollo_fuzz::nats_cluster_insight(data);
});
