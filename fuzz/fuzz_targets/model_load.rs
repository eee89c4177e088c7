//! Fuzz target `model_load`: arbitrary bytes through [`recblocks_fuzz::model_load`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = recblocks_fuzz::model_load(data);
});
