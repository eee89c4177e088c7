//! Writing an interaction log as CSV (`user_id,item_id,weight,datetime`, datetimes in unix
//! seconds), readable back by the CSV reader with the default column names.
//!
//! The file is written next to its destination as `<name>.tmp` and renamed into place, so a
//! reader never sees a half-written file.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::error::DataError;
use super::interactions::Interactions;
use super::options::{
    DEFAULT_DATETIME_COLUMN, DEFAULT_ITEM_COLUMN, DEFAULT_USER_COLUMN, DEFAULT_WEIGHT_COLUMN,
};

/// Writes `interactions` to `path` as CSV with the default column names.
pub fn write_interactions_csv(path: &Path, interactions: &Interactions) -> Result<(), DataError> {
    interactions.check()?;
    let tmp = tmp_path(path)?;
    let io = |e: std::io::Error| DataError::io(&tmp, e);
    let file = File::create(&tmp).map_err(io)?;
    let mut writer = csv::Writer::from_writer(BufWriter::new(file));
    let written = (|| -> Result<(), csv::Error> {
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
        Ok(())
    })();
    let finished = written
        .map_err(std::io::Error::from)
        .and_then(|()| writer.into_inner().map_err(|e| e.into_error()))
        .and_then(|mut buffered| {
            buffered
                .flush()
                .and_then(|()| buffered.get_ref().sync_all())
        });
    if let Err(error) = finished {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(error));
    }
    std::fs::rename(&tmp, path).map_err(|e| DataError::io(path, e))
}

/// `path` with `.tmp` appended to its file name.
fn tmp_path(path: &Path) -> Result<PathBuf, DataError> {
    let name = path.file_name().ok_or_else(|| DataError::InvalidArgument {
        name: "output path",
        message: format!("{} does not name a file", path.display()),
    })?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(".tmp");
    Ok(path.with_file_name(tmp_name))
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
