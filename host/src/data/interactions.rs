//! The interaction log in columnar form: one row per (user, item, weight, datetime) event, with
//! users and items stored as dense `u32` indices into tables of their external (string) ids.
//!
//! Id tables list ids in order of first appearance. Row subsets ([`Interactions::select`],
//! [`Interactions::filter`]) keep the tables whole, so indices stay comparable between a log and
//! its subsets (a train and a test part share one id space); [`Interactions::compact`] drops the
//! ids no row uses.

use std::collections::HashMap;

use super::error::DataError;

/// A log of user–item interactions, column by column.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Interactions {
    /// Dense user index per row, into `user_ids`.
    pub users: Vec<u32>,
    /// Dense item index per row, into `item_ids`.
    pub items: Vec<u32>,
    /// Weight per row.
    pub weights: Vec<f32>,
    /// Datetime per row, in unix seconds.
    pub datetimes: Vec<i64>,
    /// External user ids, in order of first appearance.
    pub user_ids: Vec<String>,
    /// External item ids, in order of first appearance.
    pub item_ids: Vec<String>,
}

impl Interactions {
    /// Builds a log from `(user, item, weight, datetime)` rows, assigning dense indices to ids in
    /// order of first appearance.
    ///
    /// Fails only with [`DataError::TooManyIds`] (more than `u32::MAX` distinct ids).
    pub fn from_rows<U, I>(
        rows: impl IntoIterator<Item = (U, I, f32, i64)>,
    ) -> Result<Self, DataError>
    where
        U: AsRef<str>,
        I: AsRef<str>,
    {
        let mut builder = InteractionsBuilder::new();
        for (user, item, weight, datetime) in rows {
            builder.push(user.as_ref(), item.as_ref(), weight, datetime)?;
        }
        Ok(builder.finish())
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Number of entries in the user id table (users with rows here or in a parent log).
    pub fn n_users(&self) -> usize {
        self.user_ids.len()
    }

    /// Number of entries in the item id table (items with rows here or in a parent log).
    pub fn n_items(&self) -> usize {
        self.item_ids.len()
    }

    /// The external user id of row `row`, if the row exists.
    pub fn user_id(&self, row: usize) -> Option<&str> {
        let u = *self.users.get(row)?;
        self.user_ids.get(u as usize).map(String::as_str)
    }

    /// The external item id of row `row`, if the row exists.
    pub fn item_id(&self, row: usize) -> Option<&str> {
        let i = *self.items.get(row)?;
        self.item_ids.get(i as usize).map(String::as_str)
    }

    /// External user id → dense index.
    pub fn user_index(&self) -> HashMap<&str, u32> {
        index_of(&self.user_ids)
    }

    /// External item id → dense index.
    pub fn item_index(&self) -> HashMap<&str, u32> {
        index_of(&self.item_ids)
    }

    /// The rows at `rows`, in that order (repeats allowed), with the id tables kept whole.
    ///
    /// # Panics
    /// If a row index is `>= self.len()` (a caller bug, never a property of the data).
    pub fn select(&self, rows: &[usize]) -> Interactions {
        Interactions {
            users: rows.iter().map(|&r| self.users[r]).collect(),
            items: rows.iter().map(|&r| self.items[r]).collect(),
            weights: rows.iter().map(|&r| self.weights[r]).collect(),
            datetimes: rows.iter().map(|&r| self.datetimes[r]).collect(),
            user_ids: self.user_ids.clone(),
            item_ids: self.item_ids.clone(),
        }
    }

    /// The rows whose index `keep` accepts, in their order, with the id tables kept whole.
    pub fn filter(&self, mut keep: impl FnMut(usize) -> bool) -> Interactions {
        let rows: Vec<usize> = (0..self.len()).filter(|&r| keep(r)).collect();
        self.select(&rows)
    }

    /// The same rows with id tables reduced to the ids the rows use, re-indexed in order of
    /// first appearance in the rows.
    pub fn compact(&self) -> Interactions {
        let (users, user_ids) = compact_column(&self.users, &self.user_ids);
        let (items, item_ids) = compact_column(&self.items, &self.item_ids);
        Interactions {
            users,
            items,
            weights: self.weights.clone(),
            datetimes: self.datetimes.clone(),
            user_ids,
            item_ids,
        }
    }

    /// Checks that the four columns have one length and every index is inside its id table.
    pub fn check(&self) -> Result<(), DataError> {
        let n = self.len();
        if self.items.len() != n || self.weights.len() != n || self.datetimes.len() != n {
            return Err(DataError::InvalidArgument {
                name: "interactions",
                message: format!(
                    "columns differ in length: users {}, items {}, weights {}, datetimes {}",
                    n,
                    self.items.len(),
                    self.weights.len(),
                    self.datetimes.len()
                ),
            });
        }
        if let Some(u) = self.users.iter().find(|&&u| u as usize >= self.n_users()) {
            return Err(DataError::InvalidArgument {
                name: "interactions",
                message: format!(
                    "user index {u} is outside the table of {} user ids",
                    self.n_users()
                ),
            });
        }
        if let Some(i) = self.items.iter().find(|&&i| i as usize >= self.n_items()) {
            return Err(DataError::InvalidArgument {
                name: "interactions",
                message: format!(
                    "item index {i} is outside the table of {} item ids",
                    self.n_items()
                ),
            });
        }
        Ok(())
    }
}

fn index_of(ids: &[String]) -> HashMap<&str, u32> {
    ids.iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i as u32))
        .collect()
}

fn compact_column(column: &[u32], ids: &[String]) -> (Vec<u32>, Vec<String>) {
    let mut new_index: HashMap<u32, u32> = HashMap::new();
    let mut new_ids = Vec::new();
    let mut new_column = Vec::with_capacity(column.len());
    for &old in column {
        let next = new_index.len() as u32;
        let new = *new_index.entry(old).or_insert_with(|| {
            new_ids.push(ids.get(old as usize).cloned().unwrap_or_default());
            next
        });
        new_column.push(new);
    }
    (new_column, new_ids)
}

/// Builds an [`Interactions`] row by row, assigning dense indices in order of first appearance.
#[derive(Debug, Default)]
pub struct InteractionsBuilder {
    data: Interactions,
    user_index: HashMap<String, u32>,
    item_index: HashMap<String, u32>,
}

impl InteractionsBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of rows pushed so far.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether no row has been pushed.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Appends one row.
    ///
    /// Fails only with [`DataError::TooManyIds`].
    pub fn push(
        &mut self,
        user: &str,
        item: &str,
        weight: f32,
        datetime: i64,
    ) -> Result<(), DataError> {
        let u = intern(&mut self.user_index, &mut self.data.user_ids, user, "user")?;
        let i = intern(&mut self.item_index, &mut self.data.item_ids, item, "item")?;
        self.data.users.push(u);
        self.data.items.push(i);
        self.data.weights.push(weight);
        self.data.datetimes.push(datetime);
        Ok(())
    }

    /// The log built so far.
    pub fn finish(self) -> Interactions {
        self.data
    }
}

fn intern(
    index: &mut HashMap<String, u32>,
    ids: &mut Vec<String>,
    id: &str,
    what: &'static str,
) -> Result<u32, DataError> {
    if let Some(&i) = index.get(id) {
        return Ok(i);
    }
    let i = u32::try_from(ids.len()).map_err(|_| DataError::TooManyIds { what })?;
    index.insert(id.to_string(), i);
    ids.push(id.to_string());
    Ok(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), DataError>;

    fn sample() -> Result<Interactions, DataError> {
        Interactions::from_rows([
            ("alice", "apple", 1.0, 10),
            ("bob", "pear", 2.0, 11),
            ("alice", "pear", 0.5, 12),
            ("carol", "fig", 1.0, 13),
        ])
    }

    #[test]
    fn from_rows_assigns_indices_in_first_appearance_order() -> TestResult {
        let log = sample()?;
        assert_eq!(log.user_ids, ["alice", "bob", "carol"]);
        assert_eq!(log.item_ids, ["apple", "pear", "fig"]);
        assert_eq!(log.users, [0, 1, 0, 2]);
        assert_eq!(log.items, [0, 1, 1, 2]);
        assert_eq!(log.weights, [1.0, 2.0, 0.5, 1.0]);
        assert_eq!(log.datetimes, [10, 11, 12, 13]);
        assert_eq!(log.len(), 4);
        assert!(!log.is_empty());
        assert!(log.check().is_ok());
        Ok(())
    }

    #[test]
    fn lookups_by_row_and_by_id() -> TestResult {
        let log = sample()?;
        assert_eq!(log.user_id(2), Some("alice"));
        assert_eq!(log.item_id(2), Some("pear"));
        assert_eq!(log.user_id(4), None);
        assert_eq!(log.user_index()["carol"], 2);
        assert_eq!(log.item_index()["pear"], 1);
        Ok(())
    }

    #[test]
    fn select_and_filter_keep_the_id_tables() -> TestResult {
        let log = sample()?;
        let picked = log.select(&[3, 1]);
        assert_eq!(picked.users, [2, 1]);
        assert_eq!(picked.items, [2, 1]);
        assert_eq!(picked.datetimes, [13, 11]);
        assert_eq!(picked.user_ids, log.user_ids);
        assert_eq!(picked.item_ids, log.item_ids);

        let late = log.filter(|r| log.datetimes[r] >= 12);
        assert_eq!(late.datetimes, [12, 13]);
        assert_eq!(late.n_users(), 3);
        Ok(())
    }

    #[test]
    fn compact_drops_unused_ids_and_reindexes() -> TestResult {
        let log = sample()?.select(&[3, 1]);
        let compact = log.compact();
        assert_eq!(compact.user_ids, ["carol", "bob"]);
        assert_eq!(compact.item_ids, ["fig", "pear"]);
        assert_eq!(compact.users, [0, 1]);
        assert_eq!(compact.items, [0, 1]);
        assert_eq!(compact.datetimes, [13, 11]);
        Ok(())
    }

    #[test]
    fn check_reports_broken_columns() -> TestResult {
        let mut log = sample()?;
        log.items.push(0);
        assert!(log.check().is_err());
        let mut log = sample()?;
        log.users[0] = 7;
        assert!(log.check().is_err());
        Ok(())
    }

    #[test]
    fn empty_log() -> TestResult {
        let log = Interactions::from_rows(Vec::<(&str, &str, f32, i64)>::new())?;
        assert!(log.is_empty());
        assert_eq!(log.len(), 0);
        assert_eq!(log.n_users(), 0);
        Ok(())
    }
}
