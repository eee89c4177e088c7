//! Fuzz target `parquet`: arbitrary bytes through [`recblocks_fuzz::parquet`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = recblocks_fuzz::parquet(data);
});
