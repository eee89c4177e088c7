//! Reading an interaction log from a CSV file with a header row.
//!
//! The columns are found by name ([`ColumnNames`], default `user_id,item_id,weight,datetime`, in
//! any order; other columns are ignored). Ids are kept as their text (`007` stays `007`), quoted
//! fields may hold commas, quotes and newlines. Weights must be finite numbers (1.0 when there is
//! no weight column); datetimes are parsed as described in the `values` module (unix seconds or
//! ISO-8601).
//!
//! A malformed row fails the read with an error naming the file, the line (1-based; the header is
//! line 1), the column, the value found and what was expected, unless
//! [`ReadOptions::skip_bad_rows`] is set: then bad rows are skipped and counted.

use std::io::Read;
use std::path::Path;

use super::error::{DataError, Location};
use super::interactions::{Interactions, InteractionsBuilder};
use super::options::{ColumnNames, ColumnPositions, ReadOptions};
use super::values::{
    parse_datetime, parse_id, parse_weight, EXPECTED_DATETIME, EXPECTED_ID, EXPECTED_WEIGHT,
};

/// Reads interactions from the CSV file at `path`; returns them with the number of bad rows
/// skipped (always 0 unless `options.skip_bad_rows`).
pub fn read_interactions_csv(
    path: &Path,
    columns: &ColumnNames,
    options: &ReadOptions,
) -> Result<(Interactions, usize), DataError> {
    let file = super::input_file::open_text(path)?;
    read_interactions_csv_from(file, path, columns, options)
}

/// Reads interactions from CSV text in `reader`; `path` only names the source in errors.
pub fn read_interactions_csv_from<R: Read>(
    reader: R,
    path: &Path,
    columns: &ColumnNames,
    options: &ReadOptions,
) -> Result<(Interactions, usize), DataError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(reader);
    let header = read_header(&mut reader, path)?;
    let positions = columns
        .locate(&header)
        .map_err(|missing| DataError::MissingColumns {
            path: path.to_path_buf(),
            missing,
            header: header.clone(),
        })?;

    let mut builder = InteractionsBuilder::new();
    let mut skipped = 0;
    let mut record = csv::StringRecord::new();
    loop {
        let row = match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => parse_record(&record, &header, positions, path),
            Err(error) => Err(csv_error(error, path)?),
        };
        match row {
            Ok((user, item, weight, datetime)) => builder.push(user, item, weight, datetime)?,
            Err(error) if options.skip_bad_rows && error.is_row_error() => skipped += 1,
            Err(error) => return Err(error),
        }
    }
    Ok((builder.finish(), skipped))
}

/// The header's column names.
pub(crate) fn read_header<R: Read>(
    reader: &mut csv::Reader<R>,
    path: &Path,
) -> Result<Vec<String>, DataError> {
    match reader.headers() {
        Ok(header) => Ok(header.iter().map(str::to_string).collect()),
        Err(error) => Err(csv_error(error, path)?),
    }
}

/// Sorts a CSV error into a row error (`Ok`, to be skipped or reported) or a fatal one (`Err`).
pub(crate) fn csv_error(error: csv::Error, path: &Path) -> Result<DataError, DataError> {
    let line = error.position().map_or(0, csv::Position::line);
    match error.into_kind() {
        csv::ErrorKind::Io(source) => Err(DataError::io(path, source)),
        csv::ErrorKind::Utf8 { err, .. } => Ok(DataError::BadRow {
            path: path.to_path_buf(),
            location: Location::Line(line),
            message: format!("field {} is not valid UTF-8", err.field() + 1),
        }),
        other => Ok(DataError::BadRow {
            path: path.to_path_buf(),
            location: Location::Line(line),
            message: format!("{other:?}"),
        }),
    }
}

/// The field of `record` at `position`, or a bad-value error naming the missing column.
pub(crate) fn field<'r>(
    record: &'r csv::StringRecord,
    header: &[String],
    position: usize,
    path: &Path,
) -> Result<&'r str, DataError> {
    record.get(position).ok_or_else(|| DataError::BadValue {
        path: path.to_path_buf(),
        location: Location::Line(line_of(record)),
        column: header.get(position).cloned().unwrap_or_default(),
        value: String::new(),
        expected: format!(
            "a value (the row has {} fields, the header {})",
            record.len(),
            header.len()
        ),
    })
}

/// The 1-based line where `record` starts.
pub(crate) fn line_of(record: &csv::StringRecord) -> u64 {
    record.position().map_or(0, csv::Position::line)
}

/// A bad-value error for the field of `record` at `position`.
pub(crate) fn bad_value(
    record: &csv::StringRecord,
    header: &[String],
    position: usize,
    path: &Path,
    expected: &str,
) -> DataError {
    DataError::BadValue {
        path: path.to_path_buf(),
        location: Location::Line(line_of(record)),
        column: header.get(position).cloned().unwrap_or_default(),
        value: record.get(position).unwrap_or_default().to_string(),
        expected: expected.to_string(),
    }
}

fn parse_record<'r>(
    record: &'r csv::StringRecord,
    header: &[String],
    positions: ColumnPositions,
    path: &Path,
) -> Result<(&'r str, &'r str, f32, i64), DataError> {
    let id = |position: usize| {
        parse_id(field(record, header, position, path)?)
            .ok_or_else(|| bad_value(record, header, position, path, EXPECTED_ID))
    };
    let user = id(positions.user)?;
    let item = id(positions.item)?;
    let weight = match positions.weight {
        Some(position) => parse_weight(field(record, header, position, path)?)
            .ok_or_else(|| bad_value(record, header, position, path, EXPECTED_WEIGHT))?,
        None => 1.0,
    };
    let datetime = parse_datetime(field(record, header, positions.datetime, path)?)
        .ok_or_else(|| bad_value(record, header, positions.datetime, path, EXPECTED_DATETIME))?;
    Ok((user, item, weight, datetime))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn csv_file(text: &str) -> Result<tempfile::NamedTempFile, std::io::Error> {
        let mut file = tempfile::Builder::new().suffix(".csv").tempfile()?;
        file.write_all(text.as_bytes())?;
        file.flush()?;
        Ok(file)
    }

    fn read(text: &str, options: ReadOptions) -> Result<(Interactions, usize), DataError> {
        read_interactions_csv_from(
            text.as_bytes(),
            Path::new("log.csv"),
            &ColumnNames::default(),
            &options,
        )
    }

    #[test]
    fn reads_the_default_columns_from_a_file() -> TestResult {
        let file = csv_file(
            "user_id,item_id,weight,datetime\n\
             10,007,2.5,1638230400\n\
             11,008,1,2021-11-30T12:00:00Z\n\
             10,008,0.5,2021-11-30\n",
        )?;
        let (log, skipped) = read_interactions_csv(
            file.path(),
            &ColumnNames::default(),
            &ReadOptions::default(),
        )?;
        assert_eq!(skipped, 0);
        assert_eq!(log.user_ids, ["10", "11"]);
        assert_eq!(log.item_ids, ["007", "008"]);
        assert_eq!(log.users, [0, 1, 0]);
        assert_eq!(log.items, [0, 1, 1]);
        assert_eq!(log.weights, [2.5, 1.0, 0.5]);
        assert_eq!(log.datetimes, [1_638_230_400, 1_638_273_600, 1_638_230_400]);
        Ok(())
    }

    #[test]
    fn columns_in_any_order_extra_columns_ignored_weight_optional() -> TestResult {
        let (log, _) = read(
            "extra,datetime,item_id,user_id\n\
             x,5,i1,u1\n",
            ReadOptions::default(),
        )?;
        assert_eq!(log.user_ids, ["u1"]);
        assert_eq!(log.item_ids, ["i1"]);
        assert_eq!(log.weights, [1.0]);
        assert_eq!(log.datetimes, [5]);
        Ok(())
    }

    #[test]
    fn custom_column_names() -> TestResult {
        let columns = ColumnNames {
            user: "uid".into(),
            item: "iid".into(),
            weight: Some("rating".into()),
            datetime: "ts".into(),
        };
        let (log, _) = read_interactions_csv_from(
            "uid,iid,rating,ts\nu,i,4,7\n".as_bytes(),
            Path::new("log.csv"),
            &columns,
            &ReadOptions::default(),
        )?;
        assert_eq!(log.weights, [4.0]);
        assert_eq!(log.datetimes, [7]);
        Ok(())
    }

    #[test]
    fn quoted_ids_with_commas_quotes_and_newlines() -> TestResult {
        let (log, _) = read(
            "user_id,item_id,datetime\n\
             \"Smith, John\",\"The \"\"Best\"\" Item\",1\n\
             \"multi\nline\",plain,2\n",
            ReadOptions::default(),
        )?;
        assert_eq!(log.user_ids, ["Smith, John", "multi\nline"]);
        assert_eq!(log.item_ids, ["The \"Best\" Item", "plain"]);
        Ok(())
    }

    #[test]
    fn missing_columns_list_the_header() -> TestResult {
        let result = read("user,item_id,when\n1,2,3\n", ReadOptions::default());
        let Err(DataError::MissingColumns {
            path,
            missing,
            header,
        }) = result
        else {
            return Err(format!("expected MissingColumns, got {result:?}").into());
        };
        assert_eq!(path, Path::new("log.csv"));
        assert_eq!(missing, ["user_id", "datetime"]);
        assert_eq!(header, ["user", "item_id", "when"]);

        let message = read("", ReadOptions::default())
            .err()
            .ok_or("expected an error")?;
        assert_eq!(
            message.to_string(),
            "log.csv: missing column(s) `user_id`, `item_id`, `datetime`; the header has: no columns"
        );
        Ok(())
    }

    #[test]
    fn a_bad_row_names_file_line_column_value_and_expectation() -> TestResult {
        let text = "user_id,item_id,weight,datetime\n\
                    u1,i1,1,5\n\
                    u2,i2,NaN,6\n";
        let result = read(text, ReadOptions::default());
        let Err(DataError::BadValue {
            path,
            location,
            column,
            value,
            expected,
        }) = &result
        else {
            return Err(format!("expected BadValue, got {result:?}").into());
        };
        assert_eq!(path, Path::new("log.csv"));
        assert_eq!(*location, Location::Line(3));
        assert_eq!(column, "weight");
        assert_eq!(value, "NaN");
        assert_eq!(expected, EXPECTED_WEIGHT);
        let message = result.err().ok_or("expected an error")?.to_string();
        assert_eq!(
            message,
            "log.csv, line 3, column `weight`: found \"NaN\", expected a finite number >= 0 (an \
             interaction's weight scales its loss; a negative one has no meaning)"
        );
        Ok(())
    }

    #[test]
    fn a_negative_weight_is_refused_naming_line_and_value_or_skipped() -> TestResult {
        let text = "user_id,item_id,weight,datetime\n\
                    u1,i1,0,5\n\
                    u2,i2,-0.5,6\n\
                    u3,i3,2,7\n";
        let message = read(text, ReadOptions::default())
            .err()
            .ok_or("a negative weight must be refused")?
            .to_string();
        assert!(
            message.starts_with(
                "log.csv, line 3, column `weight`: found \"-0.5\", expected a finite number >= 0"
            ),
            "{message}"
        );
        let (log, skipped) = read(
            text,
            ReadOptions {
                skip_bad_rows: true,
            },
        )?;
        assert_eq!(skipped, 1);
        assert_eq!(log.weights, [0.0, 2.0]);
        Ok(())
    }

    #[test]
    fn every_kind_of_bad_row() -> TestResult {
        let cases = [
            ("u,i,inf,1", "weight", "inf"),
            ("u,i,x,1", "weight", "x"),
            ("u,i,1,yesterday", "datetime", "yesterday"),
            (",i,1,1", "user_id", ""),
            ("u,,1,1", "item_id", ""),
            ("u,i,1", "datetime", ""),
        ];
        for (row, column, value) in cases {
            let text = format!("user_id,item_id,weight,datetime\n{row}\n");
            let result = read(&text, ReadOptions::default());
            let Err(DataError::BadValue {
                location,
                column: found_column,
                value: found_value,
                ..
            }) = result
            else {
                return Err(format!("{row}: expected BadValue, got {result:?}").into());
            };
            assert_eq!(location, Location::Line(2), "{row}");
            assert_eq!(found_column, column, "{row}");
            assert_eq!(found_value, value, "{row}");
        }
        Ok(())
    }

    #[test]
    fn invalid_utf8_is_a_bad_row() -> TestResult {
        let mut bytes = b"user_id,item_id,datetime\nu,i,1\n".to_vec();
        bytes.extend_from_slice(b"u,\xff,2\nu,j,3\n");
        let read_bytes = |skip_bad_rows| {
            read_interactions_csv_from(
                bytes.as_slice(),
                Path::new("log.csv"),
                &ColumnNames::default(),
                &ReadOptions { skip_bad_rows },
            )
        };
        let strict = read_bytes(false);
        assert!(
            matches!(
                strict,
                Err(DataError::BadRow {
                    location: Location::Line(3),
                    ..
                })
            ),
            "{strict:?}"
        );
        let (log, skipped) = read_bytes(true)?;
        assert_eq!(skipped, 1);
        assert_eq!(log.item_ids, ["i", "j"]);
        Ok(())
    }

    #[test]
    fn skip_bad_rows_counts_them() -> TestResult {
        let (log, skipped) = read(
            "user_id,item_id,weight,datetime\n\
             u1,i1,1,5\n\
             u2,i2,NaN,6\n\
             u3,i3,1,never\n\
             u4,i4,2,8\n",
            ReadOptions {
                skip_bad_rows: true,
            },
        )?;
        assert_eq!(skipped, 2);
        assert_eq!(log.user_ids, ["u1", "u4"]);
        assert_eq!(log.datetimes, [5, 8]);
        Ok(())
    }

    #[test]
    fn a_missing_file_names_the_path() {
        let error = read_interactions_csv(
            Path::new("/nonexistent/log.csv"),
            &ColumnNames::default(),
            &ReadOptions::default(),
        );
        assert!(
            matches!(&error, Err(DataError::Io { path, .. }) if path == Path::new("/nonexistent/log.csv")),
            "{error:?}"
        );
    }
}
