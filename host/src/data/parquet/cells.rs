//! Row-by-row access to Arrow arrays of every accepted type, decoded to a few cell shapes, and
//! the conversion of a cell to an id, a weight or unix seconds (the CSV reader's rules).

use std::borrow::Cow;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Date64Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type,
    TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, TimeUnit};

use crate::data::values::{finite_weight, float_seconds, parse_datetime, parse_id};

/// One cell of a column, decoded to the few shapes the roles care about.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Cell<'a> {
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

pub(super) type Cells<'a> = Box<dyn Fn(usize) -> Cell<'a> + 'a>;

pub(super) struct Column<'a> {
    /// The column's name.
    pub(super) name: &'a str,
    /// Its cells by row.
    pub(super) cells: Cells<'a>,
}

pub(super) fn batch_column<'a>(batch: &'a RecordBatch, name: &str) -> Option<Cells<'a>> {
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

pub(super) fn id_of(cell: Cell<'_>) -> Option<Cow<'_, str>> {
    match cell {
        Cell::Str(s) => parse_id(s).map(Cow::Borrowed),
        Cell::Int(v) => Some(Cow::Owned(v.to_string())),
        Cell::UInt(v) => Some(Cow::Owned(v.to_string())),
        Cell::Null | Cell::Float(_) | Cell::Seconds(_) => None,
    }
}

pub(super) fn weight_of(cell: Cell<'_>) -> Option<f32> {
    match cell {
        Cell::Int(v) => finite_weight(v as f64),
        Cell::UInt(v) => finite_weight(v as f64),
        Cell::Float(v) => finite_weight(v),
        Cell::Null | Cell::Str(_) | Cell::Seconds(_) => None,
    }
}

pub(super) fn datetime_of(cell: Cell<'_>) -> Option<i64> {
    match cell {
        Cell::Int(v) | Cell::Seconds(v) => Some(v),
        Cell::UInt(v) => i64::try_from(v).ok(),
        Cell::Float(v) => float_seconds(v),
        Cell::Str(s) => parse_datetime(s),
        Cell::Null => None,
    }
}
