//! Writing recommendation tables: CSV (or Parquet by the extension `.parquet`/`.pq`) with
//! external ids, to a file (written under a temp name, then renamed) or to stdout.

use std::{
    io::{Read, Write},
    path::Path,
    sync::Arc,
};

use arrow_array::{ArrayRef, Float32Array, RecordBatch, StringArray, UInt32Array};
use parquet::arrow::ArrowWriter;

use crate::{
    data::FileFormat,
    error::HostError,
    recommend::{Recommendation, SimilarItem},
    Result,
};

/// A table of ranked recommendations: `subject` column name (`user_id` or `target_item_id`),
/// then `item_id`, `score`, `rank`.
pub struct RecoTable {
    /// Name of the first column.
    pub subject_column: &'static str,
    /// Subject ids.
    pub subjects: Vec<String>,
    /// Recommended item ids.
    pub items: Vec<String>,
    /// Scores.
    pub scores: Vec<f32>,
    /// 1-based ranks.
    pub ranks: Vec<u32>,
}

impl RecoTable {
    /// The u2i table.
    pub fn from_u2i(rows: &[Recommendation]) -> Self {
        RecoTable {
            subject_column: "user_id",
            subjects: rows.iter().map(|r| r.user_id.clone()).collect(),
            items: rows.iter().map(|r| r.item_id.clone()).collect(),
            scores: rows.iter().map(|r| r.score).collect(),
            ranks: rows.iter().map(|r| r.rank as u32).collect(),
        }
    }

    /// The i2i table.
    pub fn from_i2i(rows: &[SimilarItem]) -> Self {
        RecoTable {
            subject_column: "target_item_id",
            subjects: rows.iter().map(|r| r.target_item_id.clone()).collect(),
            items: rows.iter().map(|r| r.item_id.clone()).collect(),
            scores: rows.iter().map(|r| r.score).collect(),
            ranks: rows.iter().map(|r| r.rank as u32).collect(),
        }
    }

    /// Writes CSV to any writer.
    pub fn write_csv<W: Write>(&self, w: W) -> std::result::Result<(), csv::Error> {
        let mut w = csv::Writer::from_writer(w);
        w.write_record([self.subject_column, "item_id", "score", "rank"])?;
        for i in 0..self.subjects.len() {
            w.write_record([
                self.subjects[i].as_str(),
                self.items[i].as_str(),
                &self.scores[i].to_string(),
                &self.ranks[i].to_string(),
            ])?;
        }
        w.flush()?;
        Ok(())
    }

    /// Writes the table to `path` (Parquet by extension `.parquet`/`.pq`, else CSV) as
    /// [`crate::output_file`] says: `-` is standard output, a FIFO or device is written in place,
    /// a regular file is replaced atomically, a directory is refused.
    pub fn write_file(&self, path: &Path) -> Result<()> {
        let format = FileFormat::of(path);
        crate::output_file::write_output(path, |w| match format {
            FileFormat::Csv => self.write_csv(w).map_err(std::io::Error::from),
            FileFormat::Parquet => self.write_parquet(w).map_err(std::io::Error::other),
        })
        .map_err(|e| HostError::io(e.path, e.source))
    }

    fn write_parquet(&self, out: &mut (dyn Write + Send)) -> std::result::Result<(), String> {
        let err = |e: &dyn std::fmt::Display| e.to_string();
        let columns: Vec<(&str, ArrayRef)> = vec![
            (
                self.subject_column,
                Arc::new(StringArray::from(self.subjects.clone())),
            ),
            ("item_id", Arc::new(StringArray::from(self.items.clone()))),
            ("score", Arc::new(Float32Array::from(self.scores.clone()))),
            ("rank", Arc::new(UInt32Array::from(self.ranks.clone()))),
        ];
        let batch = RecordBatch::try_from_iter(columns).map_err(|e| err(&e))?;
        let mut writer = ArrowWriter::try_new(out, batch.schema(), None).map_err(|e| err(&e))?;
        writer.write(&batch).map_err(|e| err(&e))?;
        writer.close().map_err(|e| err(&e))?;
        Ok(())
    }
}

/// Reads a list of ids: one per line; a first line equal to `header` is skipped; blank lines are
/// ignored.
pub fn read_id_list(path: &Path, header: &str) -> Result<Vec<String>> {
    let mut text = String::new();
    crate::data::input_file::open_text(path)?
        .read_to_string(&mut text)
        .map_err(|e| HostError::io(path, e))?;
    let mut ids: Vec<String> = text
        .lines()
        .map(|l| l.trim().trim_matches('"').to_string())
        .filter(|l| !l.is_empty())
        .collect();
    if ids.first().map(String::as_str) == Some(header) {
        ids.remove(0);
    }
    Ok(ids)
}
