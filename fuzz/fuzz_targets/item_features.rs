//! Fuzz target `item_features`: arbitrary bytes through [`recblocks_fuzz::item_features`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = recblocks_fuzz::item_features(data);
});
