//! libFuzzer entry point of [`apollo_fuzz::prometheus_node_exporter`] (`cargo fuzz run prometheus_node_exporter`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    apollo_fuzz::prometheus_node_exporter(data);
});
