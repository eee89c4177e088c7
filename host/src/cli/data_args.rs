//! Command-line options shared by the commands that read interaction logs.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use recblocks::data::{
    self, generate_synthetic, ColumnNames, FeatureColumnNames, Interactions, ItemFeatures,
    ReadOptions, SyntheticConfig,
};

/// Where interactions come from and how their columns are named.
#[derive(Debug, Clone, clap::Args)]
pub struct DataArgs {
    /// Interaction log (CSV with a header, or Parquet by extension `.parquet`/`.pq`). Without it,
    /// the built-in synthetic dataset is used (see the README).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Categorical item features (`item_id,feature,value` CSV) for `CatFeaturesItemNet`.
    #[arg(long)]
    pub item_features: Option<PathBuf>,
    /// Name of the user id column.
    #[arg(long, default_value = "user_id")]
    pub user_col: String,
    /// Name of the item id column.
    #[arg(long, default_value = "item_id")]
    pub item_col: String,
    /// Name of the weight column (used when present; weights default to 1).
    #[arg(long, default_value = "weight")]
    pub weight_col: String,
    /// Name of the datetime column (unix seconds or ISO-8601).
    #[arg(long, default_value = "datetime")]
    pub datetime_col: String,
    /// Skip malformed rows (and report how many) instead of failing on the first one.
    #[arg(long)]
    pub skip_bad_rows: bool,
}

impl DataArgs {
    /// The column names given by the flags.
    pub fn columns(&self) -> ColumnNames {
        ColumnNames {
            user: self.user_col.clone(),
            item: self.item_col.clone(),
            weight: Some(self.weight_col.clone()),
            datetime: self.datetime_col.clone(),
        }
    }

    /// Reads the interactions (or generates the built-in dataset).
    pub fn interactions(&self, quiet: bool) -> Result<Interactions> {
        match &self.data {
            Some(path) => read_log(path, &self.columns(), self.skip_bad_rows, quiet),
            None => {
                let config = SyntheticConfig::default();
                if !quiet {
                    eprintln!(
                        "no --data: using the built-in synthetic dataset ({} users, {} items, \
                         seed {})",
                        config.n_users, config.n_items, config.seed
                    );
                }
                Ok(generate_synthetic(&config)?)
            }
        }
    }

    /// Reads the item features, when given.
    pub fn item_features(&self, quiet: bool) -> Result<Option<ItemFeatures>> {
        let Some(path) = &self.item_features else {
            return Ok(None);
        };
        let opts = ReadOptions {
            skip_bad_rows: self.skip_bad_rows,
        };
        let (features, skipped) =
            data::read_item_features(path, &FeatureColumnNames::default(), &opts)
                .with_context(|| format!("reading item features {}", path.display()))?;
        if skipped > 0 && !quiet {
            eprintln!("skipped {skipped} malformed row(s) of {}", path.display());
        }
        Ok(Some(features))
    }
}

/// Reads an interaction log with the default column names unless given.
pub fn read_log(
    path: &Path,
    columns: &ColumnNames,
    skip_bad_rows: bool,
    quiet: bool,
) -> Result<Interactions> {
    let (log, skipped) = data::read_interactions(path, columns, &ReadOptions { skip_bad_rows })
        .with_context(|| format!("reading interactions {}", path.display()))?;
    if skipped > 0 && !quiet {
        eprintln!("skipped {skipped} malformed row(s) of {}", path.display());
    }
    Ok(log)
}
