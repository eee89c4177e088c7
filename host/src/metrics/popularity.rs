//! Average recommendation popularity, `AvgRecPopularity@k`.
//!
//! Ports `rectools/metrics/popularity.py` (`AvgRecPopularity`, default `normalize=False`):
//! the popularity of an item is its number of train ("previous") interactions (rows, so repeated
//! interactions count), and
//! `ARP@k(u) = mean over u's recommendations with rank ≤ k of popularity(item)`.
//! The mean divides by the user's number of recommendations within the top k (`|L_u|`), not by
//! k. As in RecTools (a `groupby` over the recommendation rows), the users are those with at least
//! one recommendation at rank ≤ k, whether or not they are in the test set; items never seen in
//! train (or beyond `train_popularity`) have popularity 0.

use super::data::Recommendations;
use super::PerUser;

/// Popularity of `item`: its train interaction count, 0 when unknown.
pub fn popularity(train_popularity: &[u32], item: u32) -> u32 {
    train_popularity.get(item as usize).copied().unwrap_or(0)
}

/// Per-user AvgRecPopularity@k over every user with a recommendation at rank ≤ k.
pub fn avg_rec_popularity(reco: &Recommendations, train_popularity: &[u32], k: usize) -> PerUser {
    let mut out = PerUser::default();
    for (user, list) in reco.iter() {
        let top: Vec<f64> = list
            .iter()
            .take_while(|r| r.rank as usize <= k)
            .map(|r| f64::from(popularity(train_popularity, r.item)))
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
    fn matches_rectools_docstring() {
        // reco: u1 [1, 2], u2 [3, 1, 2], u3 [3, 2]; previous interactions give
        // popularity 1 -> 3, 2 -> 2, 3 -> 1 (item 0 and unknown items -> 0).
        let reco = Recommendations::from_ranked_lists([
            (1, vec![1, 2]),
            (2, vec![3, 1, 2]),
            (3, vec![3, 2]),
        ])
        .unwrap();
        let pop = [0, 3, 2, 1];
        let at1 = avg_rec_popularity(&reco, &pop, 1);
        assert_eq!(at1.users, [1, 2, 3]);
        assert_eq!(at1.values, [3.0, 1.0, 1.0]);
        // k = 3: (3+2)/2, (1+3+2)/3, (1+2)/2 -- divided by the list length, not k.
        assert_eq!(avg_rec_popularity(&reco, &pop, 3).values, [2.5, 2.0, 1.5]);
        // Cold item 9 counts as 0; a user whose ranks all exceed k is not in the population.
        let reco = Recommendations::from_rows([(5, 9, 1), (5, 1, 2), (6, 1, 4)]).unwrap();
        let got = avg_rec_popularity(&reco, &pop, 2);
        assert_eq!((got.users, got.values), (vec![5], vec![1.5]));
    }
}
