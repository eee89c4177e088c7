//! Reading an interaction log from a Parquet file (through the Arrow reader of the `parquet`
//! crate), with the same columns and rules as the CSV reader.
//!
//! Accepted column types:
//! - ids: `Utf8`, `LargeUtf8`, `Utf8View`, any integer (kept as its decimal text), or a
//!   dictionary of those (pandas' categoricals);
//! - weight: any integer, `Float32`, `Float64`; must be finite;
//! - datetime: any integer or float (unix seconds), `Timestamp` of any unit (floored to
//!   seconds), `Date32`, `Date64`, or ISO-8601 text (`Utf8`, `LargeUtf8`, `Utf8View`, or a
//!   dictionary of those).
//!
//! Nulls are bad values. Bad values are reported with their 1-based data row (`row 1` is the
//! first data row), and skipped and counted under [`ReadOptions::skip_bad_rows`].

use std::borrow::Cow;
use std::fs::File;
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Date64Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type,
    TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, TimeUnit};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;

use super::error::{DataError, Location};
use super::interactions::{Interactions, InteractionsBuilder};
use super::options::{ColumnNames, ReadOptions};
use super::values::{
    finite_weight, float_seconds, parse_datetime, parse_id, EXPECTED_DATETIME, EXPECTED_ID,
    EXPECTED_WEIGHT,
};

/// Reads interactions from the Parquet file at `path`; returns them with the number of bad rows
/// skipped (always 0 unless `options.skip_bad_rows`).
pub fn read_interactions_parquet(
    path: &Path,
    columns: &ColumnNames,
    options: &ReadOptions,
) -> Result<(Interactions, usize), DataError> {
    let parquet_error = |e: &dyn std::fmt::Display| DataError::Parquet {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| parquet_error(&e))?;

    let schema = builder.schema().clone();
    let header: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let positions = columns
        .locate(&header)
        .map_err(|missing| DataError::MissingColumns {
            path: path.to_path_buf(),
            missing,
            header: header.clone(),
        })?;
    let mut roles = vec![
        (Role::Id, positions.user),
        (Role::Id, positions.item),
        (Role::Datetime, positions.datetime),
    ];
    roles.extend(positions.weight.map(|w| (Role::Weight, w)));
    for &(role, position) in &roles {
        let field = schema.field(position);
        if !role.accepts(field.data_type()) {
            return Err(DataError::ColumnType {
                path: path.to_path_buf(),
                column: field.name().clone(),
                found: field.data_type().to_string(),
                expected: role.expected_types().to_string(),
            });
        }
    }

    let mask = ProjectionMask::roots(builder.parquet_schema(), roles.iter().map(|&(_, p)| p));
    let reader = builder
        .with_projection(mask)
        .build()
        .map_err(|e| parquet_error(&e))?;

    let mut out = InteractionsBuilder::new();
    let mut skipped = 0;
    let mut row_number = 0u64;
    for batch in reader {
        let batch = batch.map_err(|e| parquet_error(&e))?;
        let column = |position: usize| -> Result<Column<'_>, DataError> {
            let name = &header[position];
            batch_column(&batch, name)
                .map(|cells| Column { name, cells })
                .ok_or_else(|| parquet_error(&format!("column `{name}` is missing from a batch")))
        };
        let user = column(positions.user)?;
        let item = column(positions.item)?;
        let datetime = column(positions.datetime)?;
        let weight = positions.weight.map(column).transpose()?;
        for row in 0..batch.num_rows() {
            row_number += 1;
            let at = |column: &Column<'_>, expected: &str| DataError::BadValue {
                path: path.to_path_buf(),
                location: Location::Row(row_number),
                column: column.name.to_string(),
                value: (column.cells)(row).to_string(),
                expected: expected.to_string(),
            };
            let parsed = (|| {
                let user_id = id_of((user.cells)(row)).ok_or_else(|| at(&user, EXPECTED_ID))?;
                let item_id = id_of((item.cells)(row)).ok_or_else(|| at(&item, EXPECTED_ID))?;
                let weight = match &weight {
                    Some(w) => weight_of((w.cells)(row)).ok_or_else(|| at(w, EXPECTED_WEIGHT))?,
                    None => 1.0,
                };
                let datetime = datetime_of((datetime.cells)(row))
                    .ok_or_else(|| at(&datetime, EXPECTED_DATETIME))?;
                Ok::<_, DataError>((user_id, item_id, weight, datetime))
            })();
            match parsed {
                Ok((user_id, item_id, weight, datetime)) => {
                    out.push(&user_id, &item_id, weight, datetime)?
                }
                Err(_) if options.skip_bad_rows => skipped += 1,
                Err(error) => return Err(error),
            }
        }
    }
    Ok((out.finish(), skipped))
}

/// What a column is read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Id,
    Weight,
    Datetime,
}

impl Role {
    fn accepts(self, data_type: &DataType) -> bool {
        let text = matches!(
            data_type,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        );
        let number =
            data_type.is_integer() || matches!(data_type, DataType::Float32 | DataType::Float64);
        match (self, data_type) {
            (Role::Id | Role::Datetime, DataType::Dictionary(_, values)) => self.accepts(values),
            (Role::Id, _) => text || data_type.is_integer(),
            (Role::Weight, _) => number,
            (Role::Datetime, _) => {
                text || number
                    || matches!(
                        data_type,
                        DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64
                    )
            }
        }
    }

    fn expected_types(self) -> &'static str {
        match self {
            Role::Id => "text (Utf8, LargeUtf8, Utf8View), an integer type, or a dictionary of those",
            Role::Weight => "an integer type, Float32 or Float64",
            Role::Datetime => {
                "an integer or float type (unix seconds), Timestamp, Date32, Date64, or ISO-8601 text"
            }
        }
    }
}

/// One cell of a column, decoded to the few shapes the roles care about.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cell<'a> {
    Null,
    Str(&'a str),
    Int(i64),
    UInt(u64),
    Float(f64),
    /// A timestamp or date, already in unix seconds.
    Seconds(i64),
}

impl std::fmt::Display for Cell<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cell::Null => write!(f, "null"),
            Cell::Str(s) => write!(f, "{s}"),
            Cell::Int(v) | Cell::Seconds(v) => write!(f, "{v}"),
            Cell::UInt(v) => write!(f, "{v}"),
            Cell::Float(v) => write!(f, "{v}"),
        }
    }
}

type Cells<'a> = Box<dyn Fn(usize) -> Cell<'a> + 'a>;

struct Column<'a> {
    name: &'a str,
    cells: Cells<'a>,
}

fn batch_column<'a>(batch: &'a RecordBatch, name: &str) -> Option<Cells<'a>> {
    cells(batch.column_by_name(name)?.as_ref())
}

/// Row-by-row access to an array of any accepted type (`None` for other types).
fn cells(array: &dyn Array) -> Option<Cells<'_>> {
    macro_rules! primitive {
        ($t:ty, $variant:ident, $convert:expr) => {{
            let values = array.as_primitive_opt::<$t>()?;
            let convert = $convert;
            Box::new(move |row: usize| {
                if values.is_null(row) {
                    Cell::Null
                } else {
                    Cell::$variant(convert(values.value(row)))
                }
            }) as Cells<'_>
        }};
    }
    macro_rules! text {
        ($values:expr) => {{
            let values = $values;
            Box::new(move |row: usize| {
                if values.is_null(row) {
                    Cell::Null
                } else {
                    Cell::Str(values.value(row))
                }
            }) as Cells<'_>
        }};
    }
    Some(match array.data_type() {
        DataType::Utf8 => text!(array.as_string_opt::<i32>()?),
        DataType::LargeUtf8 => text!(array.as_string_opt::<i64>()?),
        DataType::Utf8View => text!(array.as_string_view_opt()?),
        DataType::Int8 => primitive!(Int8Type, Int, i64::from),
        DataType::Int16 => primitive!(Int16Type, Int, i64::from),
        DataType::Int32 => primitive!(Int32Type, Int, i64::from),
        DataType::Int64 => primitive!(Int64Type, Int, |v: i64| v),
        DataType::UInt8 => primitive!(UInt8Type, UInt, u64::from),
        DataType::UInt16 => primitive!(UInt16Type, UInt, u64::from),
        DataType::UInt32 => primitive!(UInt32Type, UInt, u64::from),
        DataType::UInt64 => primitive!(UInt64Type, UInt, |v: u64| v),
        DataType::Float32 => primitive!(Float32Type, Float, f64::from),
        DataType::Float64 => primitive!(Float64Type, Float, |v: f64| v),
        DataType::Timestamp(TimeUnit::Second, _) => {
            primitive!(TimestampSecondType, Seconds, |v: i64| v)
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            primitive!(TimestampMillisecondType, Seconds, |v: i64| v
                .div_euclid(1_000))
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            primitive!(TimestampMicrosecondType, Seconds, |v: i64| v
                .div_euclid(1_000_000))
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            primitive!(TimestampNanosecondType, Seconds, |v: i64| v
                .div_euclid(1_000_000_000))
        }
        DataType::Date32 => primitive!(Date32Type, Seconds, |days: i32| i64::from(days) * 86_400),
        DataType::Date64 => primitive!(Date64Type, Seconds, |ms: i64| ms.div_euclid(1_000)),
        DataType::Dictionary(_, _) => {
            let dictionary = array.as_any_dictionary_opt()?;
            let keys = cells(dictionary.keys())?;
            let n_values = dictionary.values().len();
            let values = cells(dictionary.values().as_ref())?;
            Box::new(move |row: usize| {
                let key = match keys(row) {
                    Cell::Int(k) => usize::try_from(k).ok(),
                    Cell::UInt(k) => usize::try_from(k).ok(),
                    _ => None,
                };
                match key {
                    Some(k) if k < n_values => values(k),
                    _ => Cell::Null,
                }
            })
        }
        _ => return None,
    })
}

fn id_of(cell: Cell<'_>) -> Option<Cow<'_, str>> {
    match cell {
        Cell::Str(s) => parse_id(s).map(Cow::Borrowed),
        Cell::Int(v) => Some(Cow::Owned(v.to_string())),
        Cell::UInt(v) => Some(Cow::Owned(v.to_string())),
        Cell::Null | Cell::Float(_) | Cell::Seconds(_) => None,
    }
}

fn weight_of(cell: Cell<'_>) -> Option<f32> {
    match cell {
        Cell::Int(v) => finite_weight(v as f64),
        Cell::UInt(v) => finite_weight(v as f64),
        Cell::Float(v) => finite_weight(v),
        Cell::Null | Cell::Str(_) | Cell::Seconds(_) => None,
    }
}

fn datetime_of(cell: Cell<'_>) -> Option<i64> {
    match cell {
        Cell::Int(v) | Cell::Seconds(v) => Some(v),
        Cell::UInt(v) => i64::try_from(v).ok(),
        Cell::Float(v) => float_seconds(v),
        Cell::Str(s) => parse_datetime(s),
        Cell::Null => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use arrow_array::builder::StringDictionaryBuilder;
    use arrow_array::{
        ArrayRef, Float32Array, Float64Array, Int32Array, Int64Array, LargeStringArray,
        StringArray, TimestampMillisecondArray,
    };
    use parquet::arrow::ArrowWriter;
    use parquet::basic::Compression;
    use parquet::file::properties::WriterProperties;

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
}
