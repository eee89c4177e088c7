//! Categorical item features from a CSV file in RecTools' "flatten" sparse format: one row per
//! (item, feature, value), header `item_id,feature,value` (RecTools' own `id` is accepted for
//! `item_id`); an item may have many rows, and several
//! values of one feature (a film with two genres).
//!
//! [`ItemFeatures::to_cat_feature_schema`] turns them into the one-hot CSR matrix a model's
//! categorical item net embeds: one column per distinct `feature__value` pair.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use recblocks_core::schema::CatFeatureSchema;

use super::csv_reader::{bad_value, csv_error, field, read_header};
use super::error::DataError;
use super::options::ReadOptions;
use super::values::{parse_id, EXPECTED_ID};

/// The separator between a feature's name and its value in a column name (RecTools' style).
pub const FEATURE_VALUE_SEPARATOR: &str = "__";

/// The names of the three columns of an item features file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureColumnNames {
    /// The item id column (default `item_id`).
    pub item: String,
    /// The feature name column (default `feature`).
    pub feature: String,
    /// The feature value column (default `value`).
    pub value: String,
}

impl Default for FeatureColumnNames {
    /// `item_id`, `feature`, `value` (RecTools' `id` is accepted too when the item column is
    /// left at its default: see [`read_item_features`]).
    fn default() -> Self {
        FeatureColumnNames {
            item: "item_id".to_string(),
            feature: "feature".to_string(),
            value: "value".to_string(),
        }
    }
}

/// One (item, feature, value) row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemFeatureRow {
    /// The external item id.
    pub item_id: String,
    /// The feature's name.
    pub feature: String,
    /// The feature's value, as text.
    pub value: String,
}

/// Categorical item features, row by row as read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ItemFeatures {
    /// The rows, in file order.
    pub rows: Vec<ItemFeatureRow>,
}

/// Reads item features from the CSV file at `path`; returns them with the number of bad rows
/// skipped (always 0 unless `options.skip_bad_rows`).
///
/// With the default column names, the item column may be called `item_id` or `id` (RecTools).
/// Ids must be non-empty, and so must feature names; values may be empty.
pub fn read_item_features(
    path: &Path,
    columns: &FeatureColumnNames,
    options: &ReadOptions,
) -> Result<(ItemFeatures, usize), DataError> {
    let file = super::input_file::open_text(path)?;
    read_item_features_from(file, path, columns, options)
}

/// Reads item features from CSV text in `reader`; `path` only names the source in errors.
pub fn read_item_features_from<R: Read>(
    reader: R,
    path: &Path,
    columns: &FeatureColumnNames,
    options: &ReadOptions,
) -> Result<(ItemFeatures, usize), DataError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(reader);
    let header = read_header(&mut reader, path)?;
    let find = |name: &str| header.iter().position(|h| h == name);
    let item_position = find(&columns.item).or_else(|| {
        (*columns == FeatureColumnNames::default())
            .then(|| find("id"))
            .flatten()
    });
    let (item, feature, value) = match (item_position, find(&columns.feature), find(&columns.value))
    {
        (Some(item), Some(feature), Some(value)) => (item, feature, value),
        (item, feature, value) => {
            let missing = [
                (item, &columns.item),
                (feature, &columns.feature),
                (value, &columns.value),
            ]
            .into_iter()
            .filter(|(found, _)| found.is_none())
            .map(|(_, name)| name.clone())
            .collect();
            return Err(DataError::MissingColumns {
                path: path.to_path_buf(),
                missing,
                header,
            });
        }
    };

    let mut features = ItemFeatures::default();
    let mut skipped = 0;
    let mut record = csv::StringRecord::new();
    loop {
        let row = match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => (|| {
                let non_empty = |position| {
                    parse_id(field(&record, &header, position, path)?)
                        .ok_or_else(|| bad_value(&record, &header, position, path, EXPECTED_ID))
                };
                Ok(ItemFeatureRow {
                    item_id: non_empty(item)?.to_string(),
                    feature: non_empty(feature)?.to_string(),
                    value: field(&record, &header, value, path)?.to_string(),
                })
            })(),
            Err(error) => Err(csv_error(error, path)?),
        };
        match row {
            Ok(row) => features.rows.push(row),
            Err(error) if options.skip_bad_rows && error.is_row_error() => skipped += 1,
            Err(error) => return Err(error),
        }
    }
    Ok((features, skipped))
}

impl ItemFeatures {
    /// The one-hot CSR matrix over a model's internal item ids.
    ///
    /// `item_id_map[i]` is the external id of internal item `i`; its first `n_extra_tokens`
    /// entries are extra tokens (PAD, MASK), which get empty rows, as do items without features.
    /// Columns are named `feature__value` and numbered in order of first appearance among the
    /// rows of known items; rows of items unknown to the model are ignored, and a repeated
    /// (item, feature, value) counts once. Each item's columns are sorted. `n_extra_tokens`
    /// larger than the map is treated as the map's length.
    pub fn to_cat_feature_schema(
        &self,
        item_id_map: &[String],
        n_extra_tokens: usize,
    ) -> CatFeatureSchema {
        let n_extra_tokens = n_extra_tokens.min(item_id_map.len());
        let internal: HashMap<&str, usize> = item_id_map
            .iter()
            .enumerate()
            .skip(n_extra_tokens)
            .map(|(i, id)| (id.as_str(), i))
            .collect();

        let mut column_of: HashMap<String, u32> = HashMap::new();
        let mut value_names: Vec<String> = Vec::new();
        let mut per_item: Vec<Vec<u32>> = vec![Vec::new(); item_id_map.len()];
        for row in &self.rows {
            let Some(&item) = internal.get(row.item_id.as_str()) else {
                continue;
            };
            let name = format!("{}{FEATURE_VALUE_SEPARATOR}{}", row.feature, row.value);
            let column = *column_of.entry(name).or_insert_with_key(|name| {
                value_names.push(name.clone());
                (value_names.len() - 1) as u32
            });
            per_item[item].push(column);
        }

        let mut offsets = Vec::with_capacity(item_id_map.len() + 1);
        let mut values = Vec::new();
        offsets.push(0u32);
        for mut columns in per_item {
            columns.sort_unstable();
            columns.dedup();
            values.extend(columns);
            offsets.push(values.len() as u32);
        }
        CatFeatureSchema {
            value_names,
            offsets,
            values,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::error::Location;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn read(text: &str, skip_bad_rows: bool) -> Result<(ItemFeatures, usize), DataError> {
        read_item_features_from(
            text.as_bytes(),
            Path::new("features.csv"),
            &FeatureColumnNames::default(),
            &ReadOptions { skip_bad_rows },
        )
    }

    fn row(item_id: &str, feature: &str, value: &str) -> ItemFeatureRow {
        ItemFeatureRow {
            item_id: item_id.into(),
            feature: feature.into(),
            value: value.into(),
        }
    }

    fn ids(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn reads_the_flatten_format() -> TestResult {
        let (features, skipped) = read(
            "item_id,feature,value\n\
             10,genre,drama\n\
             10,genre,\"comedy, dark\"\n\
             11,country,\n",
            false,
        )?;
        assert_eq!(skipped, 0);
        assert_eq!(
            features.rows,
            [
                row("10", "genre", "drama"),
                row("10", "genre", "comedy, dark"),
                row("11", "country", "")
            ]
        );
        Ok(())
    }

    #[test]
    fn the_item_column_may_be_called_id_by_default() -> TestResult {
        let (features, _) = read("id,feature,value\n1,f,v\n", false)?;
        assert_eq!(features.rows, [row("1", "f", "v")]);
        Ok(())
    }

    #[test]
    fn file_errors_name_file_line_and_column() -> TestResult {
        let missing = read("item,feature\n", false)
            .err()
            .ok_or("expected an error")?;
        assert_eq!(
            missing.to_string(),
            "features.csv: missing column(s) `item_id`, `value`; the header has: `item`, `feature`"
        );
        let text = "item_id,feature,value\n1,f,v\n2,,v\n";
        let bad = read(text, false).err().ok_or("expected an error")?;
        assert!(
            matches!(&bad, DataError::BadValue { location: Location::Line(3), column, .. } if column == "feature"),
            "{bad:?}"
        );
        let (features, skipped) = read(text, true)?;
        assert_eq!((features.rows.len(), skipped), (1, 1));
        Ok(())
    }

    #[test]
    fn cat_feature_schema_over_internal_ids() {
        let features = ItemFeatures {
            rows: vec![
                row("b", "genre", "drama"),
                row("a", "genre", "comedy"),
                row("unknown", "genre", "horror"),
                row("a", "country", "fr"),
                row("b", "genre", "comedy"),
                row("a", "genre", "comedy"),
            ],
        };
        // Internal order: PAD, MASK, then items a, b, c (c has no features).
        let map = ids(&["PAD", "MASK", "a", "b", "c"]);
        let schema = features.to_cat_feature_schema(&map, 2);
        assert_eq!(
            schema.value_names,
            ["genre__drama", "genre__comedy", "country__fr"]
        );
        assert_eq!(schema.offsets, [0, 0, 0, 2, 4, 4]);
        assert_eq!(schema.values, [1, 2, 0, 1]);
        assert_eq!(schema.check(map.len()), Ok(()));
    }

    #[test]
    fn extra_tokens_never_match_feature_rows() {
        let features = ItemFeatures {
            rows: vec![row("PAD", "f", "v")],
        };
        let schema = features.to_cat_feature_schema(&ids(&["PAD", "x"]), 1);
        assert!(schema.value_names.is_empty());
        assert_eq!(schema.offsets, [0, 0, 0]);
        // Too many extra tokens: the whole map is tokens.
        let schema = features.to_cat_feature_schema(&ids(&["PAD"]), 5);
        assert_eq!(schema.offsets, [0, 0]);
    }
}
