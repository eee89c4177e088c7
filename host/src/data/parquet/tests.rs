//! Tests of the Parquet reader: text, integer and dictionary ids, float and integer weights,
//! integer, timestamp and ISO-8601 text datetimes, bad values, missing columns, wrong types, and
//! files that are not Parquet.

use std::sync::Arc;

use arrow_array::builder::StringDictionaryBuilder;
use arrow_array::types::Int32Type;
use arrow_array::{
    ArrayRef, Float32Array, Float64Array, Int32Array, Int64Array, LargeStringArray, RecordBatch,
    StringArray, TimestampMillisecondArray,
};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use super::{read_interactions_parquet, ColumnNames, DataError, Interactions, ReadOptions};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Writes `columns` as a one-row-group Parquet file (Snappy-compressed, as pandas writes).
fn parquet_file(
    columns: Vec<(&str, ArrayRef)>,
) -> Result<tempfile::NamedTempFile, Box<dyn std::error::Error>> {
    let batch = RecordBatch::try_from_iter(columns)?;
    let file = tempfile::Builder::new().suffix(".parquet").tempfile()?;
    let properties = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut writer = ArrowWriter::try_new(file.reopen()?, batch.schema(), Some(properties))?;
    writer.write(&batch)?;
    writer.close()?;
    Ok(file)
}

fn read(
    file: &tempfile::NamedTempFile,
    skip_bad_rows: bool,
) -> Result<(Interactions, usize), DataError> {
    read_interactions_parquet(
        file.path(),
        &ColumnNames::default(),
        &ReadOptions { skip_bad_rows },
    )
}

#[test]
fn reads_text_ids_float_weights_and_integer_seconds() -> TestResult {
    let file = parquet_file(vec![
        (
            "user_id",
            Arc::new(StringArray::from(vec!["u1", "u2", "u1"])) as ArrayRef,
        ),
        (
            "item_id",
            Arc::new(StringArray::from(vec!["a, b", "c", "c"])),
        ),
        ("weight", Arc::new(Float64Array::from(vec![1.5, 2.0, 0.25]))),
        ("datetime", Arc::new(Int64Array::from(vec![30, 10, 20]))),
    ])?;
    let (log, skipped) = read(&file, false)?;
    assert_eq!(skipped, 0);
    assert_eq!(log.user_ids, ["u1", "u2"]);
    assert_eq!(log.item_ids, ["a, b", "c"]);
    assert_eq!(log.users, [0, 1, 0]);
    assert_eq!(log.items, [0, 1, 1]);
    assert_eq!(log.weights, [1.5, 2.0, 0.25]);
    assert_eq!(log.datetimes, [30, 10, 20]);
    Ok(())
}

#[test]
fn reads_integer_ids_timestamps_and_no_weight() -> TestResult {
    let file = parquet_file(vec![
        (
            "datetime",
            Arc::new(TimestampMillisecondArray::from(vec![1_500, -1])) as ArrayRef,
        ),
        ("user_id", Arc::new(Int64Array::from(vec![7, 8]))),
        ("item_id", Arc::new(Int32Array::from(vec![100, 100]))),
    ])?;
    let (log, _) = read(&file, false)?;
    assert_eq!(log.user_ids, ["7", "8"]);
    assert_eq!(log.item_ids, ["100"]);
    assert_eq!(log.weights, [1.0, 1.0]);
    assert_eq!(log.datetimes, [1, -1]);
    Ok(())
}

#[test]
fn reads_dictionary_ids_and_iso_text_datetimes() -> TestResult {
    let mut items = StringDictionaryBuilder::<Int32Type>::new();
    items.append_value("x");
    items.append_value("y");
    items.append_value("x");
    let file = parquet_file(vec![
        (
            "user_id",
            Arc::new(LargeStringArray::from(vec!["u", "u", "v"])) as ArrayRef,
        ),
        ("item_id", Arc::new(items.finish())),
        ("weight", Arc::new(Int32Array::from(vec![1, 2, 3]))),
        (
            "datetime",
            Arc::new(StringArray::from(vec![
                "2021-11-30",
                "2021-11-30T00:00:01Z",
                "1638230402",
            ])),
        ),
    ])?;
    let (log, _) = read(&file, false)?;
    assert_eq!(log.item_ids, ["x", "y"]);
    assert_eq!(log.items, [0, 1, 0]);
    assert_eq!(log.weights, [1.0, 2.0, 3.0]);
    assert_eq!(log.datetimes, [1_638_230_400, 1_638_230_401, 1_638_230_402]);
    Ok(())
}

#[test]
fn bad_values_name_row_and_column_or_are_skipped() -> TestResult {
    let file = parquet_file(vec![
        (
            "user_id",
            Arc::new(StringArray::from(vec![Some("u1"), None, Some("u3")])) as ArrayRef,
        ),
        (
            "item_id",
            Arc::new(StringArray::from(vec!["i1", "i2", "i3"])),
        ),
        (
            "weight",
            Arc::new(Float32Array::from(vec![1.0, 1.0, f32::NAN])),
        ),
        ("datetime", Arc::new(Int64Array::from(vec![1, 2, 3]))),
    ])?;
    let message = read(&file, false)
        .err()
        .ok_or("expected an error")?
        .to_string();
    let expected = format!(
        "{}, row 2, column `user_id`: found \"null\", expected a non-empty id",
        file.path().display()
    );
    assert_eq!(message, expected);

    let (log, skipped) = read(&file, true)?;
    assert_eq!(skipped, 2);
    assert_eq!(log.user_ids, ["u1"]);
    Ok(())
}

#[test]
fn a_negative_weight_is_refused_naming_row_and_value_or_skipped() -> TestResult {
    let file = parquet_file(vec![
        (
            "user_id",
            Arc::new(StringArray::from(vec!["u1", "u2", "u3"])) as ArrayRef,
        ),
        (
            "item_id",
            Arc::new(StringArray::from(vec!["i1", "i2", "i3"])),
        ),
        ("weight", Arc::new(Int32Array::from(vec![0, 2, -3]))),
        ("datetime", Arc::new(Int64Array::from(vec![1, 2, 3]))),
    ])?;
    let message = read(&file, false)
        .err()
        .ok_or("a negative weight must be refused")?
        .to_string();
    let expected = format!(
        "{}, row 3, column `weight`: found \"-3\", expected a finite number >= 0",
        file.path().display()
    );
    assert!(message.starts_with(&expected), "{message}");

    let (log, skipped) = read(&file, true)?;
    assert_eq!(skipped, 1);
    assert_eq!(log.weights, [0.0, 2.0]);
    Ok(())
}

#[test]
fn missing_columns_and_wrong_types_are_reported() -> TestResult {
    let file = parquet_file(vec![
        (
            "user_id",
            Arc::new(StringArray::from(vec!["u"])) as ArrayRef,
        ),
        ("ts", Arc::new(Int64Array::from(vec![1]))),
    ])?;
    let result = read(&file, false);
    assert!(
        matches!(&result, Err(DataError::MissingColumns { missing, header, .. })
            if missing == &["item_id", "datetime"] && header == &["user_id", "ts"]),
        "{result:?}"
    );

    let file = parquet_file(vec![
        (
            "user_id",
            Arc::new(Float64Array::from(vec![1.0])) as ArrayRef,
        ),
        ("item_id", Arc::new(StringArray::from(vec!["i"]))),
        ("datetime", Arc::new(Int64Array::from(vec![1]))),
    ])?;
    let result = read(&file, false);
    assert!(
        matches!(&result, Err(DataError::ColumnType { column, found, .. })
            if column == "user_id" && found == "Float64"),
        "{result:?}"
    );
    Ok(())
}

#[test]
fn a_file_that_is_not_parquet_is_a_parquet_error() -> TestResult {
    let file = tempfile::Builder::new().suffix(".parquet").tempfile()?;
    std::fs::write(file.path(), "user_id,item_id,datetime\n")?;
    let result = read(&file, false);
    assert!(
        matches!(result, Err(DataError::Parquet { .. })),
        "{result:?}"
    );
    Ok(())
}

#[test]
fn a_column_chunk_at_a_negative_offset_is_refused_not_a_panic() -> TestResult {
    // Found by the `parquet` fuzz target: the parquet crate asserts on this when reading pages.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions/parquet");
    let mut n = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if !path
            .to_string_lossy()
            .contains("negative-column-chunk-offset")
        {
            continue;
        }
        let result =
            read_interactions_parquet(&path, &ColumnNames::default(), &ReadOptions::default());
        let message = result
            .err()
            .ok_or("a corrupt footer must be refused")?
            .to_string();
        assert!(
            message.contains("cannot decode Parquet: the footer is corrupt: row group"),
            "{message}"
        );
        assert!(
            message.contains("expected neither to be negative"),
            "{message}"
        );
        n += 1;
    }
    assert_eq!(n, 4);
    Ok(())
}

#[test]
fn a_page_the_decoder_panics_on_is_refused_as_corrupt() -> TestResult {
    // Found by the `parquet` fuzz target: a BYTE_STREAM_SPLIT page that claims more values than
    // it holds makes the parquet crate index out of bounds.
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions/parquet/byte-stream-split-page-too-short-93d1b197.parquet");
    let result = read_interactions_parquet(&path, &ColumnNames::default(), &ReadOptions::default());
    let message = result
        .err()
        .ok_or("a corrupt page must be refused")?
        .to_string();
    assert!(
        message.contains(
            "cannot decode Parquet: the file is corrupt: the Parquet decoder failed with `index \
             out of bounds"
        ),
        "{message}"
    );
    assert!(
        message.contains("byte_stream_split_decoder.rs:"),
        "{message}"
    );
    Ok(())
}

#[test]
fn a_dictionary_page_claiming_more_values_than_bytes_is_refused_before_allocating() -> TestResult {
    // Found by the `parquet` fuzz target: 1.3 KB whose dictionary page claims ~570M values, for
    // which the parquet crate reserved 2.3 GB.
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(
        "../fuzz/regressions/parquet/dictionary-page-claims-too-many-values-b4f217b0.parquet",
    );
    let result = read_interactions_parquet(&path, &ColumnNames::default(), &ReadOptions::default());
    let message = result
        .err()
        .ok_or("a lying dictionary page must be refused")?
        .to_string();
    assert!(
        message.contains("cannot decode Parquet: the file is corrupt: row group 0, column `"),
        "{message}"
    );
    assert!(message.contains("its dictionary page claims"), "{message}");
    Ok(())
}
