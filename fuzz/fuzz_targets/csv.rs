//! Fuzz target `csv`: arbitrary bytes through [`recblocks_fuzz::csv`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = recblocks_fuzz::csv(data);
});
