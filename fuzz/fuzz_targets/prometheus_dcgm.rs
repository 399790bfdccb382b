//! libFuzzer entry point of [`apollo_fuzz::prometheus_dcgm`] (`cargo fuzz run prometheus_dcgm`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    apollo_fuzz::prometheus_dcgm(data);
});
