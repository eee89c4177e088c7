//! Typed errors of the data layer. Every variant about a file names the file, and every variant
//! about a value names where it is (line or row), the column, the value found and what was
//! expected.

use std::fmt;
use std::path::PathBuf;

/// Where a bad value sits in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// A line of a text file, 1-based; the header is line 1.
    Line(u64),
    /// A data row of a Parquet file, 1-based (the first data row is row 1).
    Row(u64),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Line(n) => write!(f, "line {n}"),
            Location::Row(n) => write!(f, "row {n}"),
        }
    }
}

/// Everything that can go wrong while reading, writing, generating or splitting interaction data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be opened, read, written or renamed.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The header lacks columns the reader needs.
    #[error(
        "{}: missing column(s) {}; the header has: {}",
        .path.display(),
        quoted(.missing),
        if .header.is_empty() { "no columns".to_string() } else { quoted(.header) }
    )]
    MissingColumns {
        /// The file concerned.
        path: PathBuf,
        /// The column names looked for and not found.
        missing: Vec<String>,
        /// The columns the header does have.
        header: Vec<String>,
    },
    /// A value that cannot be read as what its column holds.
    #[error("{}, {location}, column `{column}`: found {}, expected {expected}", .path.display(), shown(.value))]
    BadValue {
        /// The file concerned.
        path: PathBuf,
        /// The line (CSV) or row (Parquet) of the value.
        location: Location,
        /// The column's name.
        column: String,
        /// The value as found (empty when the field is missing).
        value: String,
        /// What the column should hold.
        expected: String,
    },
    /// A row that is not well-formed text (for example, invalid UTF-8).
    #[error("{}, {location}: {message}", .path.display())]
    BadRow {
        /// The file concerned.
        path: PathBuf,
        /// The line of the row.
        location: Location,
        /// What is wrong with it.
        message: String,
    },
    /// A Parquet column whose type the reader does not accept for its role.
    #[error("{}: column `{column}` has type {found}, expected {expected}", .path.display())]
    ColumnType {
        /// The file concerned.
        path: PathBuf,
        /// The column's name.
        column: String,
        /// The column's Arrow type.
        found: String,
        /// The types accepted.
        expected: String,
    },
    /// The Parquet file could not be decoded.
    #[error("{}: cannot decode Parquet: {message}", .path.display())]
    Parquet {
        /// The file concerned.
        path: PathBuf,
        /// What the Parquet decoder said.
        message: String,
    },
    /// More distinct ids than a `u32` index can address.
    #[error("more than {} distinct {what} ids", u32::MAX)]
    TooManyIds {
        /// `user` or `item`.
        what: &'static str,
    },
    /// An argument out of its allowed range (split fractions, synthetic dataset sizes, ...).
    #[error("invalid {name}: {message}")]
    InvalidArgument {
        /// The argument's name.
        name: &'static str,
        /// What was given and what is allowed.
        message: String,
    },
}

fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl DataError {
    /// Wraps an I/O error with the path it concerns.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }

    /// Whether the error concerns one row only, so that the row may be skipped.
    pub fn is_row_error(&self) -> bool {
        matches!(self, DataError::BadValue { .. } | DataError::BadRow { .. })
    }
}

/// A value as quoted in a message: its first 80 characters, and its length when it is longer (a
/// 200 MB field is not echoed whole).
pub fn shown(value: &str) -> String {
    match value.char_indices().nth(80) {
        Some((cut, _)) => format!(
            "{:?}… ({} characters)",
            &value[..cut],
            value.chars().count()
        ),
        None => format!("{value:?}"),
    }
}
