//! Reading an interaction log from a file of either format, chosen by the file's extension.

use std::path::Path;

use super::csv_reader::read_interactions_csv;
use super::error::DataError;
use super::interactions::Interactions;
use super::options::{ColumnNames, ReadOptions};
use super::parquet::read_interactions_parquet;

/// The formats an interaction log can be read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// Comma-separated text with a header row.
    Csv,
    /// Apache Parquet.
    Parquet,
}

impl FileFormat {
    /// The format of `path` by its extension (case-insensitive): `.parquet` and `.pq` are
    /// Parquet, anything else is CSV.
    pub fn of(path: &Path) -> FileFormat {
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match extension.as_deref() {
            Some("parquet" | "pq") => FileFormat::Parquet,
            _ => FileFormat::Csv,
        }
    }
}

/// Reads interactions from `path` as CSV or Parquet (see [`FileFormat::of`]); returns them with
/// the number of bad rows skipped (always 0 unless `options.skip_bad_rows`).
pub fn read_interactions(
    path: &Path,
    columns: &ColumnNames,
    options: &ReadOptions,
) -> Result<(Interactions, usize), DataError> {
    match FileFormat::of(path) {
        FileFormat::Csv => read_interactions_csv(path, columns, options),
        FileFormat::Parquet => read_interactions_parquet(path, columns, options),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_by_extension() {
        assert_eq!(
            FileFormat::of(Path::new("log.parquet")),
            FileFormat::Parquet
        );
        assert_eq!(FileFormat::of(Path::new("dir/log.PQ")), FileFormat::Parquet);
        assert_eq!(FileFormat::of(Path::new("log.csv")), FileFormat::Csv);
        assert_eq!(FileFormat::of(Path::new("log.tsv.gz")), FileFormat::Csv);
        assert_eq!(FileFormat::of(Path::new("log")), FileFormat::Csv);
    }

    #[test]
    fn dispatches_on_the_extension() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let csv = dir.path().join("log.csv");
        std::fs::write(&csv, "user_id,item_id,datetime\nu,i,1\n")?;
        let (log, _) = read_interactions(&csv, &ColumnNames::default(), &ReadOptions::default())?;
        assert_eq!(log.len(), 1);

        // The same CSV text under a Parquet name is read as Parquet, and fails as such.
        let pq = dir.path().join("log.pq");
        std::fs::write(&pq, "user_id,item_id,datetime\nu,i,1\n")?;
        let result = read_interactions(&pq, &ColumnNames::default(), &ReadOptions::default());
        assert!(
            matches!(result, Err(DataError::Parquet { .. })),
            "{result:?}"
        );
        Ok(())
    }
}
