//! libFuzzer entry point of [`apollo_fuzz::nats_forecast`] (`cargo fuzz run nats_forecast`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    apollo_fuzz::nats_forecast(data);
});
