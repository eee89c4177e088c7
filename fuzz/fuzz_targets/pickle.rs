//! Fuzz target `pickle`: arbitrary bytes through [`recblocks_fuzz::pickle`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = recblocks_fuzz::pickle(data);
});
