//! The dataset schema a model is built from: enough catalog facts to rebuild a model without data
//! (RecTools' `from_dataset_schema`).

use serde::{Deserialize, Serialize};

/// Catalog facts needed to build a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetSchema {
    /// Number of item rows in embedding tables: extra tokens (PAD, MASK) plus real items.
    pub n_items: usize,
    /// The extra tokens at the start of the item id map (`["PAD"]` or `["PAD", "MASK"]`).
    pub item_extra_tokens: Vec<String>,
    /// Categorical item features, when the dataset has them.
    #[serde(default)]
    pub cat_features: Option<CatFeatureSchema>,
}

impl DatasetSchema {
    /// A schema for `n_real_items` items with the given extra tokens and no features.
    pub fn new(n_real_items: usize, item_extra_tokens: &[&str]) -> Self {
        DatasetSchema {
            n_items: n_real_items + item_extra_tokens.len(),
            item_extra_tokens: item_extra_tokens.iter().map(|s| s.to_string()).collect(),
            cat_features: None,
        }
    }

    /// Number of extra tokens (internal ids below this are never real items).
    pub fn n_extra_tokens(&self) -> usize {
        self.item_extra_tokens.len()
    }
}

/// Categorical item features as a CSR matrix over internal item ids: item `i` has the
/// feature-value columns `values[offsets[i]..offsets[i + 1]]` (RecTools' one-hot (feature, value)
/// columns). Extra tokens have empty rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatFeatureSchema {
    /// Column names, `feature__value`; their count is the number of embedding-bag rows.
    pub value_names: Vec<String>,
    /// CSR row pointer, `n_items + 1` entries.
    pub offsets: Vec<u32>,
    /// CSR column indices into `value_names`.
    pub values: Vec<u32>,
}

impl CatFeatureSchema {
    /// Number of distinct (feature, value) columns.
    pub fn n_values(&self) -> usize {
        self.value_names.len()
    }

    /// Checks the CSR structure against `n_items`.
    pub fn check(&self, n_items: usize) -> Result<(), String> {
        if self.offsets.len() != n_items + 1 {
            return Err(format!(
                "item feature offsets have {} entries, expected n_items + 1 = {}",
                self.offsets.len(),
                n_items + 1
            ));
        }
        if self.offsets.windows(2).any(|w| w[0] > w[1])
            || self.offsets.last().copied().unwrap_or(0) as usize != self.values.len()
        {
            return Err("item feature offsets are not a valid CSR row pointer".into());
        }
        if let Some(v) = self.values.iter().find(|&&v| v as usize >= self.n_values()) {
            return Err(format!(
                "item feature column {v} is out of range (there are {} columns)",
                self.n_values()
            ));
        }
        Ok(())
    }
}
