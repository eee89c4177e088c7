//! The fuzz targets' smoke run on the stable toolchain: every committed seed
//! (`fuzz/seeds/<target>/`) and every input a fuzzer found to crash, hang or abort
//! (`fuzz/regressions/<target>/`) goes through the same calls as the targets
//! (`fuzz/src/lib.rs`, included here). Seeds named `valid-*` must also be accepted, so the
//! targets are known to reach past the first check. The Parquet and model directory seeds are
//! built here; with `RECBLOCKS_WRITE_FUZZ_SEEDS=DIR` they are also written to `DIR/<target>/` to
//! start a fuzzer's corpus (see docs/reliability.md, "Fuzzing").

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray};

#[allow(dead_code, missing_docs)]
#[path = "../../../fuzz/src/lib.rs"]
mod harness;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Runs `target` on its committed seeds and regressions and on `generated` (name, bytes);
/// returns how many inputs ran.
fn replay(target: &str, run: fn(&[u8]) -> bool, generated: Vec<(String, Vec<u8>)>) -> usize {
    if let Some(out) = std::env::var_os("RECBLOCKS_WRITE_FUZZ_SEEDS") {
        let dir = Path::new(&out).join(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in &generated {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
    let mut inputs = generated;
    for kind in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join(kind).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let name = format!(
                "{kind}/{target}/{}",
                path.file_name().unwrap().to_string_lossy()
            );
            inputs.push((name, std::fs::read(&path).unwrap()));
        }
    }
    for (name, bytes) in &inputs {
        let accepted = run(bytes);
        let base = name.rsplit('/').next().unwrap_or(name);
        if base.starts_with("valid-") {
            assert!(accepted, "{target}: the valid seed {name} was refused");
        }
    }
    harness::remove_scratch();
    inputs.len()
}

#[test]
fn fuzz_spec_seeds_and_regressions() {
    assert!(replay("spec", harness::spec, Vec::new()) >= 5);
}

#[test]
fn fuzz_csv_seeds_and_regressions() {
    assert!(replay("csv", harness::csv, Vec::new()) >= 3);
}

#[test]
fn fuzz_item_features_seeds_and_regressions() {
    assert!(replay("item_features", harness::item_features, Vec::new()) >= 2);
}

fn parquet_bytes(
    columns: Vec<(&str, ArrayRef)>,
    compression: parquet::basic::Compression,
) -> Vec<u8> {
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let properties = parquet::file::properties::WriterProperties::builder()
        .set_compression(compression)
        .build();
    let mut out = Vec::new();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(&mut out, batch.schema(), Some(properties)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    out
}

#[test]
fn fuzz_parquet_seeds_and_regressions() {
    use parquet::basic::Compression;
    let text_ids = || -> Vec<(&str, ArrayRef)> {
        vec![
            (
                "user_id",
                Arc::new(StringArray::from(vec!["u1", "u2", "u1"])),
            ),
            ("item_id", Arc::new(StringArray::from(vec!["a", "b", "b"]))),
            ("weight", Arc::new(Float64Array::from(vec![1.5, 0.0, 2.0]))),
            ("datetime", Arc::new(Int64Array::from(vec![30, 10, 20]))),
        ]
    };
    let generated = vec![
        (
            "valid-text-ids-snappy.parquet".to_string(),
            parquet_bytes(text_ids(), Compression::SNAPPY),
        ),
        (
            "valid-text-ids-plain.parquet".to_string(),
            parquet_bytes(text_ids(), Compression::UNCOMPRESSED),
        ),
        (
            "valid-int-ids-iso-datetimes.parquet".to_string(),
            parquet_bytes(
                vec![
                    (
                        "user_id",
                        Arc::new(Int32Array::from(vec![7, 8])) as ArrayRef,
                    ),
                    ("item_id", Arc::new(Int64Array::from(vec![100, 101]))),
                    (
                        "datetime",
                        Arc::new(StringArray::from(vec![
                            "2021-11-30",
                            "2021-11-30T12:00:00Z",
                        ])),
                    ),
                ],
                Compression::SNAPPY,
            ),
        ),
    ];
    assert!(replay("parquet", harness::parquet, generated) >= 3);
}

#[test]
fn fuzz_model_load_seeds_and_regressions() {
    let generated = harness::MODEL_FILES
        .iter()
        .enumerate()
        .map(|(i, file)| {
            let (_, bytes) = harness::base_model_files()
                .iter()
                .find(|(name, _)| name == file)
                .unwrap();
            let mut input = vec![i as u8];
            input.extend_from_slice(bytes);
            (format!("valid-{file}"), input)
        })
        .collect();
    assert!(replay("model_load", harness::model_load, generated) >= 3);
}

#[test]
fn fuzz_pickle_seeds_and_regressions() {
    assert!(replay("pickle", harness::pickle, Vec::new()) >= 3);
}

#[test]
fn a_tensor_record_candles_reader_panics_on_is_refused_as_a_corrupt_checkpoint() {
    // Found by the pickle target: candle's `rebuild_args` removes an argument past the end.
    let data = std::fs::read(
        fuzz_dir().join("regressions/pickle/crash-rebuild-args-remove-past-end-69c9342d"),
    )
    .unwrap();
    let err = harness::pickle_import(&data).unwrap_err();
    harness::remove_scratch();
    assert!(
        err.contains("the checkpoint is corrupt") && err.contains("removal index"),
        "{err}"
    );
}
