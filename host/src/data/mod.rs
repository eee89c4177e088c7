//! Interaction data: reading logs (CSV, Parquet), item features, synthetic data, splits.
//!
//! - [`Interactions`]: the log, column by column, with dense user/item indices.
//! - [`read_interactions`]: reads a log from CSV or Parquet by the file's extension, with
//!   [`ColumnNames`] and [`ReadOptions`]; [`write_interactions_csv`] writes one.
//! - [`read_item_features`] and [`ItemFeatures::to_cat_feature_schema`]: categorical item
//!   features.
//! - [`synthetic::generate`]: a deterministic dataset with sequential structure.
//! - [`leave_last_out`] and [`time_split`]: train/test splits.
//!
//! Every failure is a [`DataError`] naming the file, the line or row, the column, the value
//! found and what was expected.

pub mod csv_reader;
pub mod csv_writer;
pub mod error;
pub mod input_file;
pub mod interactions;
pub mod item_features;
pub mod options;
pub mod parquet;
pub mod read;
pub mod split;
pub mod synthetic;
mod values;

pub use values::parse_datetime;

pub use csv_reader::{read_interactions_csv, read_interactions_csv_from};
pub use csv_writer::write_interactions_csv;
pub use error::{DataError, Location};
pub use interactions::{Interactions, InteractionsBuilder};
pub use item_features::{
    read_item_features, read_item_features_from, FeatureColumnNames, ItemFeatureRow, ItemFeatures,
};
pub use options::{ColumnNames, ReadOptions};
pub use parquet::read_interactions_parquet;
pub use read::{read_interactions, FileFormat};
pub use split::{leave_last_out, time_split, Split, SplitReport, TimeCut};
pub use synthetic::{generate as generate_synthetic, SyntheticConfig};
