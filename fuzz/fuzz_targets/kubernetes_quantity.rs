//! libFuzzer entry point of [`apollo_fuzz::kubernetes_quantity`] (`cargo fuzz run kubernetes_quantity`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    apollo_fuzz::kubernetes_quantity(data);
});
