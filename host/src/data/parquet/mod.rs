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

mod cells;
mod pages;
mod roles;

use std::fs::File;
use std::path::Path;

use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use parquet::column::page::Page;
use parquet::file::metadata::ParquetMetaData;
use parquet::file::reader::{FileReader, SerializedFileReader};

use super::error::{DataError, Location};
use super::interactions::{Interactions, InteractionsBuilder};
use super::options::{ColumnNames, ReadOptions};
use super::values::{EXPECTED_DATETIME, EXPECTED_ID, EXPECTED_WEIGHT};
use cells::{batch_column, datetime_of, id_of, weight_of, Column};
use roles::Role;

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
    crate::data::input_file::check_kind(path)?;
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    crate::panic_guard::guarded(|| read_file(file, path, columns, options)).unwrap_or_else(
        |panic| {
            Err(parquet_error(&format!(
                "the file is corrupt: the Parquet decoder failed with `{panic}`"
            )))
        },
    )
}

/// [`read_interactions_parquet`] once the file is open.
fn read_file(
    file: File,
    path: &Path,
    columns: &ColumnNames,
    options: &ReadOptions,
) -> Result<(Interactions, usize), DataError> {
    let parquet_error = |e: &dyn std::fmt::Display| DataError::Parquet {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| parquet_error(&e))?;
    check_column_chunks(builder.metadata()).map_err(|m| parquet_error(&m))?;

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

    let roots: Vec<usize> = roles.iter().map(|&(_, p)| p).collect();
    pages::check_page_sizes(path, builder.metadata(), &roots).map_err(|m| parquet_error(&m))?;
    check_dictionary_pages(path, &roots).map_err(|m| parquet_error(&m))?;
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots.iter().copied());
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

/// Refuses column chunks that the `parquet` crate would panic on when it reads them (a corrupt
/// footer): a negative start offset or compressed size.
fn check_column_chunks(metadata: &ParquetMetaData) -> Result<(), String> {
    for (group_index, group) in metadata.row_groups().iter().enumerate() {
        for column in group.columns() {
            let start = column
                .dictionary_page_offset()
                .unwrap_or_else(|| column.data_page_offset());
            let size = column.compressed_size();
            if start < 0 || size < 0 {
                return Err(format!(
                    "the footer is corrupt: row group {group_index}, column `{}` starts at byte \
                     {start} and is {size} bytes long; expected neither to be negative",
                    column.column_path().string()
                ));
            }
        }
    }
    Ok(())
}

/// Refuses a dictionary page that claims more values than it has bytes (each value takes at
/// least one byte in its PLAIN encoding): the `parquet` crate reserves memory for the claimed
/// count before reading, so a 1 KB file could make it allocate gigabytes (found by fuzzing).
/// Reads only the first page of each column chunk of the columns read (the dictionary comes
/// first).
fn check_dictionary_pages(path: &Path, roots: &[usize]) -> Result<(), String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let reader = SerializedFileReader::new(file).map_err(|e| e.to_string())?;
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    for group_index in 0..reader.num_row_groups() {
        let group = reader
            .get_row_group(group_index)
            .map_err(|e| e.to_string())?;
        for leaf in 0..schema.num_columns() {
            if !roots.contains(&schema.get_column_root_idx(leaf)) {
                continue;
            }
            let mut pages = group
                .get_column_page_reader(leaf)
                .map_err(|e| e.to_string())?;
            if let Some(Page::DictionaryPage {
                buf, num_values, ..
            }) = pages.get_next_page().map_err(|e| e.to_string())?
            {
                if num_values as usize > buf.len() {
                    return Err(format!(
                        "the file is corrupt: row group {group_index}, column `{}`: its \
                         dictionary page claims {num_values} values in {} bytes",
                        schema.column(leaf).path().string(),
                        buf.len()
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
