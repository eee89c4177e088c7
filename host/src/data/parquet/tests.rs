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

/// A page writer that passes pages on to `inner` but has each data page header claim `claim`
/// bytes once decompressed.
struct ClaimingPageWriter<'a> {
    inner: parquet::file::writer::SerializedPageWriter<'a, Vec<u8>>,
    claim: usize,
}

impl parquet::column::page::PageWriter for ClaimingPageWriter<'_> {
    fn write_page(
        &mut self,
        page: parquet::column::page::CompressedPage,
    ) -> parquet::errors::Result<parquet::column::page::PageWriteSpec> {
        let claim = if page.compressed_page().is_data_page() {
            self.claim
        } else {
            page.uncompressed_size()
        };
        let page =
            parquet::column::page::CompressedPage::new(page.compressed_page().clone(), claim);
        self.inner.write_page(page)
    }

    fn close(&mut self) -> parquet::errors::Result<()> {
        self.inner.close()
    }
}

/// A Snappy-compressed log of two rows (text `user_id` and `item_id`, INT64 `datetime`) whose
/// `datetime` data page header claims `claim` bytes once decompressed (its 16 values take 16
/// bytes), written with the parquet crate's own writer and page header encoder.
fn file_whose_page_claims(
    claim: usize,
) -> Result<tempfile::NamedTempFile, Box<dyn std::error::Error>> {
    use parquet::column::writer::{get_column_writer, ColumnWriter};
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::writer::{SerializedFileWriter, SerializedPageWriter, TrackedWrite};

    let schema = Arc::new(parquet::schema::parser::parse_message_type(
        "message log { required binary user_id (STRING); required binary item_id (STRING); \
         required int64 datetime; }",
    )?);
    let properties = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_dictionary_enabled(false)
            .build(),
    );
    let file = tempfile::Builder::new().suffix(".parquet").tempfile()?;
    let mut writer = SerializedFileWriter::new(file.reopen()?, schema, properties.clone())?;
    let datetime = writer.schema_descr().column(2);
    let mut group = writer.next_row_group()?;
    for _ in 0..2 {
        let mut column = group.next_column()?.ok_or("a text column")?;
        column.typed::<ByteArrayType>().write_batch(
            &[ByteArray::from("u1"), ByteArray::from("u2")],
            None,
            None,
        )?;
        column.close()?;
    }
    let mut chunk = TrackedWrite::new(Vec::new());
    let pages = Box::new(ClaimingPageWriter {
        inner: SerializedPageWriter::new(&mut chunk),
        claim,
    });
    let mut column = get_column_writer(datetime, properties, pages);
    let ColumnWriter::Int64ColumnWriter(values) = &mut column else {
        return Err("datetime is an INT64 column".into());
    };
    values.write_batch(&[5, 6], None, None)?;
    let close = column.close()?;
    let chunk_file = tempfile::tempfile()?;
    std::io::Write::write_all(&mut &chunk_file, &chunk.into_inner()?)?;
    group.append_column(&chunk_file, close)?;
    group.close()?;
    writer.close()?;
    Ok(file)
}

#[test]
fn a_page_claiming_more_than_its_codec_can_expand_to_is_refused_before_decompressing() -> TestResult
{
    // Found by the `parquet` fuzz target: the parquet crate zero-fills the claimed size (here
    // 1.5 GB) before Snappy finds the page too short.
    let file = file_whose_page_claims(1_500_000_000)?;
    let message = read(&file, false)
        .err()
        .ok_or("a page claiming 1.5 GB must be refused")?
        .to_string();
    assert!(
        message.contains(
            "cannot decode Parquet: the file is corrupt: row group 0, column `datetime`: the \
             page at byte "
        ),
        "{message}"
    );
    assert!(
        message.contains(" claims 1500000000 bytes once decompressed from "),
        "{message}"
    );
    assert!(
        message.contains("(Snappy expands data at most 64/3 times)"),
        "{message}"
    );

    // The same, claiming i32::MAX bytes, is the fuzz regression input (made this way: the
    // fuzzer's own input was not kept).
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions/parquet/data-page-claims-2gib-uncompressed-27827b0c.parquet");
    let result = read_interactions_parquet(&path, &ColumnNames::default(), &ReadOptions::default());
    let message = result
        .err()
        .ok_or("a page claiming 2 GiB must be refused")?
        .to_string();
    assert!(
        message.contains(" claims 2147483647 bytes once decompressed from "),
        "{message}"
    );

    // The same file with an honest header is read.
    let (log, _) = read(&file_whose_page_claims(16)?, false)?;
    assert_eq!(log.datetimes, [5, 6]);
    Ok(())
}

#[test]
fn page_headers_are_walked_as_the_parquet_crate_walks_them() -> TestResult {
    // Many small pages, dictionary pages, statistics in the page headers, data pages v1 and v2:
    // the walk finds the pages the crate reads, with the sizes the crate decompresses them to.
    use parquet::file::properties::{EnabledStatistics, WriterVersion};
    use parquet::file::reader::{FileReader, SerializedFileReader};

    for version in [WriterVersion::PARQUET_1_0, WriterVersion::PARQUET_2_0] {
        let n = 300;
        let users: Vec<String> = (0..n).map(|i| format!("user-{}", i % 7)).collect();
        let items: Vec<String> = (0..n)
            .map(|i| format!("item-{i}-{}", "x".repeat(i % 40)))
            .collect();
        let batch = RecordBatch::try_from_iter(vec![
            ("user_id", Arc::new(StringArray::from(users)) as ArrayRef),
            ("item_id", Arc::new(StringArray::from(items))),
            (
                "weight",
                Arc::new(Float64Array::from_iter(
                    (0..n).map(|i| (i % 3 != 0).then_some(i as f64)),
                )),
            ),
            (
                "datetime",
                Arc::new(Int64Array::from_iter_values(0..n as i64)),
            ),
        ])?;
        let file = tempfile::Builder::new().suffix(".parquet").tempfile()?;
        let properties = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_writer_version(version)
            .set_data_page_row_count_limit(16)
            .set_write_batch_size(16)
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_write_page_header_statistics(true)
            .build();
        let mut writer = ArrowWriter::try_new(file.reopen()?, batch.schema(), Some(properties))?;
        writer.write(&batch)?;
        writer.close()?;

        let reader = SerializedFileReader::new(file.reopen()?)?;
        let group = reader.get_row_group(0)?;
        let mut input = std::io::BufReader::new(file.reopen()?);
        for leaf in 0..4 {
            let mut decoded = Vec::new();
            for page in group.get_column_page_reader(leaf)? {
                decoded.push(page?.buffer().len());
            }
            let (start, length) = group.metadata().column(leaf).byte_range();
            let mut walked = Vec::new();
            let pages = super::pages::for_each_page(&mut input, start, length, |_, sizes| {
                walked.push(sizes);
                Ok(())
            })?;
            assert!(pages > 10, "{version:?}, column {leaf}: {pages} pages");
            assert_eq!(pages, decoded.len(), "{version:?}, column {leaf}");
            let claimed: Vec<usize> = walked
                .iter()
                .map(|s| usize::try_from(s.uncompressed))
                .collect::<Result<_, _>>()?;
            assert_eq!(claimed, decoded, "{version:?}, column {leaf}");
        }
        let (log, skipped) = read(&file, true)?;
        assert_eq!((log.datetimes.len(), skipped), (n - n / 3, n / 3));
    }
    Ok(())
}

#[test]
fn a_codec_this_build_cannot_decode_is_refused_before_any_page_is_read() -> TestResult {
    // The page size check bounds Snappy only: the crate is built without the other codecs and
    // refuses their column chunks itself. Relabel `item_id`'s codec SNAPPY (1, zigzag 2) as GZIP
    // (2, zigzag 4) in the footer: its path list (one string, `item_id`), then field 4, an i32.
    let file = parquet_file(vec![
        (
            "user_id",
            Arc::new(StringArray::from(vec!["u"])) as ArrayRef,
        ),
        ("item_id", Arc::new(StringArray::from(vec!["i"]))),
        ("datetime", Arc::new(Int64Array::from(vec![1]))),
    ])?;
    let mut bytes = std::fs::read(file.path())?;
    let snappy = b"\x18\x07item_id\x15\x02";
    let at = bytes
        .windows(snappy.len())
        .position(|w| w == snappy)
        .ok_or("item_id's codec in the footer")?;
    bytes[at + snappy.len() - 1] = 0x04;
    std::fs::write(file.path(), bytes)?;
    let message = read(&file, false)
        .err()
        .ok_or("a GZIP column chunk must be refused")?
        .to_string();
    assert!(message.contains("cannot decode Parquet: "), "{message}");
    assert!(
        message.to_lowercase().contains("gzip") || message.contains("flate2"),
        "{message}"
    );
    Ok(())
}
