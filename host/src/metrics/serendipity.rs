//! Serendipity@k: relevance combined with unexpectedness.
//!
//! Ports `rectools/metrics/serendipity.py` (`Serendipity`). With `n` = catalog size, for a
//! recommendation at rank `i` of an item with popularity rank `pop_rank`:
//! - `p(i) = (n + 1 − i) / n`, the chance of recommending rank `i` to this user;
//! - `pu(i) = (n + 1 − pop_rank) / n`, the chance of recommending the item to any user, where
//!   `pop_rank` is the *dense* rank of the item's train interaction count among the distinct
//!   counts, most popular = 1 (RecTools' `_get_item_popularity_ranks`); items without train
//!   interactions are "cold" and get `pu = 0`;
//! - value `max(p(i) − pu(i), 0) × rel(i)`, `rel` = 1 when `(user, item)` is a test interaction.
//!
//! A user's Serendipity@k is the **mean** of that value over their recommendations at rank ≤ k
//! (RecTools' code takes `groupby(...).agg("mean")`, so a short list divides by its length, not by
//! the `k` of the docstring formula). The users are those with a recommendation at rank ≤ k,
//! whether or not they are in the test set (not test users without recommendations).

use super::data::{Recommendations, TestSet};
use super::popularity::popularity;
use super::PerUser;

/// Dense popularity ranks: distinct positive train counts, most popular first.
#[derive(Debug, Clone)]
pub struct PopularityRanks {
    distinct_desc: Vec<u32>,
}

impl PopularityRanks {
    /// Builds the ranks from per-item train interaction counts.
    pub fn new(train_popularity: &[u32]) -> Self {
        let mut distinct_desc: Vec<u32> = train_popularity
            .iter()
            .copied()
            .filter(|&c| c > 0)
            .collect();
        distinct_desc.sort_unstable_by(|a, b| b.cmp(a));
        distinct_desc.dedup();
        Self { distinct_desc }
    }

    /// Dense rank (1 = most popular) of an item seen `count` times; `None` for cold items.
    pub fn rank_of_count(&self, count: u32) -> Option<usize> {
        if count == 0 {
            return None;
        }
        Some(self.distinct_desc.partition_point(|&c| c > count) + 1)
    }
}

/// Per-user Serendipity@k over every user with a recommendation at rank ≤ k.
///
/// `n_catalog_items` must be positive.
pub fn serendipity(
    reco: &Recommendations,
    test: &TestSet,
    train_popularity: &[u32],
    n_catalog_items: usize,
    k: usize,
) -> PerUser {
    let ranks = PopularityRanks::new(train_popularity);
    let n = n_catalog_items as f64;
    let mut out = PerUser::default();
    for (user, list) in reco.iter() {
        let top: Vec<f64> = list
            .iter()
            .take_while(|r| r.rank as usize <= k)
            .map(|r| {
                if !test.contains(user, r.item) {
                    return 0.0;
                }
                let p_user = (n + 1.0 - f64::from(r.rank)) / n;
                let p_any = ranks
                    .rank_of_count(popularity(train_popularity, r.item))
                    .map_or(0.0, |pr| (n + 1.0 - pr as f64) / n);
                (p_user - p_any).max(0.0)
            })
            .collect();
        if !top.is_empty() {
            out.users.push(user);
            out.values.push(top.iter().sum::<f64>() / top.len() as f64);
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn dense_popularity_ranks() {
        let r = PopularityRanks::new(&[5, 0, 2, 5, 3, 2]);
        let got: Vec<Option<usize>> = [5, 3, 2, 0].map(|c| r.rank_of_count(c)).to_vec();
        assert_eq!(got, [Some(1), Some(2), Some(3), None]);
    }

    #[test]
    fn matches_rectools_docstring() {
        // Items i1..i4 -> 0..3, users u1..u4 -> 1..4, catalog of 4 items.
        // Train: i1 seen 3 times (pop rank 1), i2 twice (pop rank 2), i3/i4 cold.
        let reco = Recommendations::from_ranked_lists([
            (1, vec![0, 1]),
            (2, vec![1, 2]),
            (3, vec![2]),
            (4, vec![1, 2]),
        ])
        .unwrap();
        let test = TestSet::from_pairs([(1, 0), (1, 1), (2, 1), (2, 2), (3, 1), (4, 1)]);
        let pop = [3, 2, 0, 0];
        // k = 1: u2 rank 1 of i2: p = (5-1)/4 = 1, pu = (5-2)/4 = 0.75 -> 0.25;
        // u1 rank 1 of i1: p = 1, pu = (5-1)/4 = 1 -> 0; u3's i3 is not relevant.
        let at1 = serendipity(&reco, &test, &pop, 4, 1);
        assert_eq!(at1.users, [1, 2, 3, 4]);
        assert_eq!(at1.values, [0.0, 0.25, 0.0, 0.25]);
        // k = 2: u2 rank 2 of cold i3: p = 3/4, pu = 0 -> 0.75, mean (0.25 + 0.75) / 2 = 0.5;
        // u3 has one item so its mean is over 1; u4: (0.25 + 0) / 2 = 0.125.
        let at2 = serendipity(&reco, &test, &pop, 4, 2);
        assert_eq!(at2.values, [0.0, 0.5, 0.0, 0.125]);
    }
}
