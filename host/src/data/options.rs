//! What an interaction reader looks for: the column names ([`ColumnNames`]) and how it treats
//! bad rows ([`ReadOptions`]).

/// The default name of the user column.
pub const DEFAULT_USER_COLUMN: &str = "user_id";
/// The default name of the item column.
pub const DEFAULT_ITEM_COLUMN: &str = "item_id";
/// The default name of the weight column.
pub const DEFAULT_WEIGHT_COLUMN: &str = "weight";
/// The default name of the datetime column.
pub const DEFAULT_DATETIME_COLUMN: &str = "datetime";

/// The names of the columns an interaction file is read from.
///
/// The weight column is optional:
/// - `weight: None`: no weight column is read; every weight is 1.0.
/// - `weight: Some("weight")` (the default name): read when the file has it, else every weight
///   is 1.0.
/// - `weight: Some(other)`: a name the user chose, so the file must have it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnNames {
    /// The user id column.
    pub user: String,
    /// The item id column.
    pub item: String,
    /// The weight column, if any (see the type's documentation).
    pub weight: Option<String>,
    /// The datetime column.
    pub datetime: String,
}

impl Default for ColumnNames {
    /// `user_id`, `item_id`, `weight` (optional), `datetime`.
    fn default() -> Self {
        ColumnNames {
            user: DEFAULT_USER_COLUMN.to_string(),
            item: DEFAULT_ITEM_COLUMN.to_string(),
            weight: Some(DEFAULT_WEIGHT_COLUMN.to_string()),
            datetime: DEFAULT_DATETIME_COLUMN.to_string(),
        }
    }
}

impl ColumnNames {
    /// Whether a file lacking the weight column is an error: only for a name other than the
    /// default one.
    pub fn weight_required(&self) -> bool {
        matches!(&self.weight, Some(name) if name != DEFAULT_WEIGHT_COLUMN)
    }
}

/// Where the needed columns sit in a file's header (0-based positions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ColumnPositions {
    /// The user id column.
    pub user: usize,
    /// The item id column.
    pub item: usize,
    /// The weight column, when read.
    pub weight: Option<usize>,
    /// The datetime column.
    pub datetime: usize,
}

impl ColumnNames {
    /// Finds the columns in `header` (first match wins); `Err` lists the names not found.
    pub(crate) fn locate<S: AsRef<str>>(
        &self,
        header: &[S],
    ) -> Result<ColumnPositions, Vec<String>> {
        let find = |name: &str| header.iter().position(|h| h.as_ref() == name);
        let mut missing = Vec::new();
        let mut need = |name: &str| {
            let found = find(name);
            if found.is_none() {
                missing.push(name.to_string());
            }
            found.unwrap_or(0)
        };
        let user = need(&self.user);
        let item = need(&self.item);
        let weight = match &self.weight {
            Some(name) if self.weight_required() => Some(need(name)),
            Some(name) => find(name),
            None => None,
        };
        let datetime = need(&self.datetime);
        if missing.is_empty() {
            Ok(ColumnPositions {
                user,
                item,
                weight,
                datetime,
            })
        } else {
            Err(missing)
        }
    }
}

/// How a reader treats malformed rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// Skip malformed rows (and count them) instead of failing on the first one.
    pub skip_bad_rows: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_and_weight_rule() {
        let names = ColumnNames::default();
        assert_eq!(names.user, "user_id");
        assert_eq!(names.item, "item_id");
        assert_eq!(names.weight.as_deref(), Some("weight"));
        assert_eq!(names.datetime, "datetime");
        assert!(!names.weight_required());

        let custom = ColumnNames {
            weight: Some("rating".into()),
            ..ColumnNames::default()
        };
        assert!(custom.weight_required());
        let none = ColumnNames {
            weight: None,
            ..ColumnNames::default()
        };
        assert!(!none.weight_required());
    }

    #[test]
    fn locate_finds_columns_in_any_order() {
        let names = ColumnNames::default();
        let found = names.locate(&["datetime", "item_id", "x", "user_id", "weight"]);
        assert_eq!(
            found,
            Ok(ColumnPositions {
                user: 3,
                item: 1,
                weight: Some(4),
                datetime: 0
            })
        );
        // The default weight column may be absent.
        let found = names.locate(&["user_id", "item_id", "datetime"]);
        assert_eq!(found.map(|p| p.weight), Ok(None));
    }

    #[test]
    fn locate_lists_every_missing_column() {
        let names = ColumnNames {
            weight: Some("rating".into()),
            ..ColumnNames::default()
        };
        assert_eq!(
            names.locate(&["user_id", "ts"]),
            Err(vec![
                "item_id".to_string(),
                "rating".to_string(),
                "datetime".to_string()
            ])
        );
    }
}
