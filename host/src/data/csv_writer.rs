//! Writing an interaction log as CSV (`user_id,item_id,weight,datetime`, datetimes in unix
//! seconds), readable back by the CSV reader with the default column names.
//!
//! A regular file is written next to its destination under a temporary name and renamed into
//! place, so a reader never sees a half-written file (`crate::output_file`).

use std::io::{BufWriter, Write};
use std::path::Path;

use super::error::DataError;
use super::interactions::Interactions;
use super::options::{
    DEFAULT_DATETIME_COLUMN, DEFAULT_ITEM_COLUMN, DEFAULT_USER_COLUMN, DEFAULT_WEIGHT_COLUMN,
};

/// Writes `interactions` to `path` as CSV with the default column names, as
/// [`crate::output_file`] says: `-` is standard output, a FIFO or device is written in place, a
/// regular file is replaced atomically (a reader never sees half a file), a directory is refused.
pub fn write_interactions_csv(path: &Path, interactions: &Interactions) -> Result<(), DataError> {
    interactions.check()?;
    crate::output_file::write_output(path, |out| {
        let mut writer = csv::Writer::from_writer(BufWriter::new(out));
        writer.write_record([
            DEFAULT_USER_COLUMN,
            DEFAULT_ITEM_COLUMN,
            DEFAULT_WEIGHT_COLUMN,
            DEFAULT_DATETIME_COLUMN,
        ])?;
        for row in 0..interactions.len() {
            writer.write_record([
                interactions.user_id(row).unwrap_or_default(),
                interactions.item_id(row).unwrap_or_default(),
                &interactions.weights[row].to_string(),
                &interactions.datetimes[row].to_string(),
            ])?;
        }
        writer.into_inner().map_err(|e| e.into_error())?.flush()
    })
    .map_err(|e| DataError::io(e.path, e.source))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::csv_reader::read_interactions_csv;
    use crate::data::options::{ColumnNames, ReadOptions};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn writes_a_csv_the_reader_reads_back() -> TestResult {
        let log = Interactions::from_rows([("u,1", "say \"hi\"", 1.5, 10), ("u2", "i", 1.0, -3)])?;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("log.csv");
        write_interactions_csv(&path, &log)?;
        assert_eq!(
            std::fs::read_to_string(&path)?,
            "user_id,item_id,weight,datetime\n\
             \"u,1\",\"say \"\"hi\"\"\",1.5,10\n\
             u2,i,1,-3\n"
        );
        assert!(!dir.path().join("log.csv.tmp").exists());
        let (back, _) =
            read_interactions_csv(&path, &ColumnNames::default(), &ReadOptions::default())?;
        assert_eq!(back, log);
        Ok(())
    }

    #[test]
    fn writes_only_the_rows_of_a_subset() -> TestResult {
        let log = Interactions::from_rows([("a", "x", 1.0, 1), ("b", "y", 1.0, 2)])?.select(&[1]);
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("subset.csv");
        write_interactions_csv(&path, &log)?;
        assert_eq!(
            std::fs::read_to_string(&path)?,
            "user_id,item_id,weight,datetime\nb,y,1,2\n"
        );
        Ok(())
    }

    #[test]
    fn an_unwritable_path_is_an_io_error() {
        let log = Interactions::default();
        let result = write_interactions_csv(Path::new("/nonexistent/dir/log.csv"), &log);
        assert!(matches!(result, Err(DataError::Io { .. })), "{result:?}");
    }
}
