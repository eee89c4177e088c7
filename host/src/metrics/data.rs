//! Metric inputs: ranked recommendations and test interactions, keyed by dense `u32` ids.
//!
//! These replace the `reco` (`Columns.User`, `Columns.Item`, `Columns.Rank`) and `interactions`
//! (`Columns.User`, `Columns.Item`) data frames of RecTools' metrics, and [`UserHits`] replaces
//! the left join `merge_reco(reco, interactions)` of `rectools/metrics/base.py`: one row per test
//! user with the ranks at which their test items were recommended.

use super::MetricsError;

/// One recommended item and its 1-based rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ranked {
    /// Dense item id.
    pub item: u32,
    /// 1-based rank (gaps are allowed; metrics use the rank value, as RecTools does).
    pub rank: u32,
}

/// Recommendations for a set of users, each list sorted by rank.
///
/// Invariants (checked on construction): ranks are ≥ 1, and within one user no item and no
/// rank appears twice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recommendations {
    users: Vec<u32>,
    lists: Vec<Vec<Ranked>>,
}

impl Recommendations {
    /// Builds from `(user, item, rank)` rows in any order.
    pub fn from_rows(
        rows: impl IntoIterator<Item = (u32, u32, u32)>,
    ) -> Result<Self, MetricsError> {
        let mut rows: Vec<(u32, u32, u32)> = rows.into_iter().collect();
        rows.sort_unstable_by_key(|&(u, _, r)| (u, r));
        let mut out = Self::default();
        for chunk in rows.chunk_by(|a, b| a.0 == b.0) {
            let user = chunk[0].0;
            let list = chunk
                .iter()
                .map(|&(_, item, rank)| Ranked { item, rank })
                .collect();
            out.push(user, list)?;
        }
        Ok(out)
    }

    /// Builds from per-user item lists already in rank order (rank = position + 1), such as
    /// the output of [`crate::ranking::Ranker::rank`]. A user may appear only once.
    pub fn from_ranked_lists(
        lists: impl IntoIterator<Item = (u32, Vec<u32>)>,
    ) -> Result<Self, MetricsError> {
        let mut lists: Vec<(u32, Vec<u32>)> = lists.into_iter().collect();
        lists.sort_unstable_by_key(|l| l.0);
        if let Some(w) = lists.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(MetricsError::DuplicateUser(w[0].0));
        }
        let mut out = Self::default();
        for (user, items) in lists {
            let list = items
                .into_iter()
                .enumerate()
                .map(|(i, item)| Ranked {
                    item,
                    rank: i as u32 + 1,
                })
                .collect();
            out.push(user, list)?;
        }
        Ok(out)
    }

    /// Appends one user's list (already sorted by rank; users pushed in ascending order).
    fn push(&mut self, user: u32, list: Vec<Ranked>) -> Result<(), MetricsError> {
        if let Some(r) = list.iter().find(|r| r.rank == 0) {
            return Err(MetricsError::ZeroRank { user, item: r.item });
        }
        if let Some(w) = list.windows(2).find(|w| w[0].rank == w[1].rank) {
            return Err(MetricsError::DuplicateRank {
                user,
                rank: w[0].rank,
            });
        }
        let mut items: Vec<u32> = list.iter().map(|r| r.item).collect();
        items.sort_unstable();
        if let Some(w) = items.windows(2).find(|w| w[0] == w[1]) {
            return Err(MetricsError::DuplicateItem { user, item: w[0] });
        }
        if !list.is_empty() {
            self.users.push(user);
            self.lists.push(list);
        }
        Ok(())
    }

    /// Users with at least one recommendation, ascending.
    pub fn users(&self) -> &[u32] {
        &self.users
    }

    /// The rank-sorted list of `user` (empty when the user has none).
    pub fn get(&self, user: u32) -> &[Ranked] {
        match self.users.binary_search(&user) {
            Ok(i) => &self.lists[i],
            Err(_) => &[],
        }
    }

    /// `(user, rank-sorted list)` pairs, users ascending.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &[Ranked])> {
        self.users
            .iter()
            .copied()
            .zip(self.lists.iter().map(Vec::as_slice))
    }

    /// Total number of `(user, item, rank)` rows.
    pub fn n_rows(&self) -> usize {
        self.lists.iter().map(Vec::len).sum()
    }
}

/// Test interactions: the distinct relevant items of each test user.
///
/// Duplicate `(user, item)` pairs are collapsed, so a user's number of relevant items is the
/// number of *distinct* test items. (RecTools counts duplicate interaction rows separately;
/// deduplicate the test frame there to get identical numbers.)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestSet {
    users: Vec<u32>,
    items: Vec<Vec<u32>>,
}

impl TestSet {
    /// Builds from `(user, item)` pairs in any order.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (u32, u32)>) -> Self {
        let mut pairs: Vec<(u32, u32)> = pairs.into_iter().collect();
        pairs.sort_unstable();
        pairs.dedup();
        let mut out = Self::default();
        for chunk in pairs.chunk_by(|a, b| a.0 == b.0) {
            out.users.push(chunk[0].0);
            out.items.push(chunk.iter().map(|p| p.1).collect());
        }
        out
    }

    /// Test users, ascending.
    pub fn users(&self) -> &[u32] {
        &self.users
    }

    /// The sorted distinct test items of `user` (empty when not a test user).
    pub fn items(&self, user: u32) -> &[u32] {
        match self.users.binary_search(&user) {
            Ok(i) => &self.items[i],
            Err(_) => &[],
        }
    }

    /// Whether `(user, item)` is a test interaction.
    pub fn contains(&self, user: u32, item: u32) -> bool {
        self.items(user).binary_search(&item).is_ok()
    }

    /// Number of distinct `(user, item)` pairs.
    pub fn n_pairs(&self) -> usize {
        self.items.iter().map(Vec::len).sum()
    }
}

/// One test user joined with their recommendations (RecTools' `merge_reco` rows of one user).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserHits {
    /// The test user.
    pub user: u32,
    /// Number of distinct test items of the user (≥ 1).
    pub n_relevant: usize,
    /// Ranks at which test items were recommended, ascending (all ranks, not cut at k).
    pub hit_ranks: Vec<u32>,
}

impl UserHits {
    /// The hit ranks that are `≤ k`.
    pub fn hits_at(&self, k: usize) -> &[u32] {
        let n = self.hit_ranks.partition_point(|&r| (r as usize) <= k);
        &self.hit_ranks[..n]
    }
}

/// Joins every test user with their recommendations; users without recommendations get no
/// hits (so they score 0 and stay in the denominator, as in RecTools' left join), and
/// recommended users absent from the test set are ignored.
pub fn user_hits(reco: &Recommendations, test: &TestSet) -> Vec<UserHits> {
    test.users
        .iter()
        .zip(&test.items)
        .map(|(&user, items)| UserHits {
            user,
            n_relevant: items.len(),
            hit_ranks: reco
                .get(user)
                .iter()
                .filter(|r| items.binary_search(&r.item).is_ok())
                .map(|r| r.rank)
                .collect(),
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn builds_sorted_lists_and_rejects_duplicates() {
        let reco =
            Recommendations::from_rows([(2, 7, 2), (1, 5, 1), (2, 8, 1), (1, 6, 3)]).unwrap();
        assert_eq!(reco.users(), [1, 2]);
        assert_eq!(
            reco.get(2),
            [Ranked { item: 8, rank: 1 }, Ranked { item: 7, rank: 2 }]
        );
        assert_eq!(reco.get(3), []);
        assert_eq!(reco.n_rows(), 4);
        assert!(matches!(
            Recommendations::from_rows([(1, 5, 1), (1, 5, 2)]),
            Err(MetricsError::DuplicateItem { user: 1, item: 5 })
        ));
        assert!(matches!(
            Recommendations::from_rows([(1, 5, 1), (1, 6, 1)]),
            Err(MetricsError::DuplicateRank { user: 1, rank: 1 })
        ));
        assert!(matches!(
            Recommendations::from_rows([(1, 5, 0)]),
            Err(MetricsError::ZeroRank { user: 1, item: 5 })
        ));
        assert!(matches!(
            Recommendations::from_ranked_lists([(1, vec![1]), (1, vec![2])]),
            Err(MetricsError::DuplicateUser(1))
        ));
        let lists =
            Recommendations::from_ranked_lists([(2, vec![8, 7]), (1, vec![5, 9, 6])]).unwrap();
        assert_eq!(lists.get(2), reco.get(2));
    }

    #[test]
    fn test_set_dedups_and_hits_join_left() {
        let test = TestSet::from_pairs([(1, 6), (1, 4), (1, 6), (3, 9)]);
        assert_eq!(test.users(), [1, 3]);
        assert_eq!(test.items(1), [4, 6]);
        assert!(test.contains(3, 9) && !test.contains(2, 9));
        assert_eq!(test.n_pairs(), 3);
        let reco =
            Recommendations::from_rows([(1, 5, 1), (1, 6, 3), (1, 4, 4), (2, 9, 1)]).unwrap();
        let hits = user_hits(&reco, &test);
        assert_eq!(hits.len(), 2);
        assert_eq!(hits[0].hit_ranks, [3, 4]);
        assert_eq!(hits[0].hits_at(3), [3]);
        assert_eq!(
            (hits[1].user, hits[1].n_relevant, hits[1].hit_ranks.len()),
            (3, 1, 0)
        );
    }
}
