//! Fuzz target `spec`: arbitrary bytes through [`recblocks_fuzz::spec`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = recblocks_fuzz::spec(data);
});
