//! Per-user classification metrics: Recall@k, Precision@k, HitRate@k.
//!
//! Ports `rectools/metrics/classification.py` (`Recall`, `Precision` with the default
//! `r_precision=False`, `HitRate`), which compute from the confusion table of `calc_confusions`:
//! `LIKED` = number of the user's test items, `TP` = test items recommended at rank ≤ k.
//! - Recall@k = TP / LIKED
//! - Precision@k = TP / k (k, not the list length: short lists are penalised)
//! - HitRate@k = 1 if TP > 0 else 0
//!
//! Users come from the test set (left join); a test user without recommendations has TP = 0.

use super::data::UserHits;

/// Recall@k of one test user: hits in the top k / number of distinct test items.
pub fn recall(h: &UserHits, k: usize) -> f64 {
    h.hits_at(k).len() as f64 / h.n_relevant as f64
}

/// Precision@k of one test user: hits in the top k / k.
pub fn precision(h: &UserHits, k: usize) -> f64 {
    h.hits_at(k).len() as f64 / k as f64
}

/// HitRate@k of one test user: 1 when the top k holds at least one test item.
pub fn hit_rate(h: &UserHits, k: usize) -> f64 {
    if h.hits_at(k).is_empty() {
        0.0
    } else {
        1.0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn hits(n_relevant: usize, hit_ranks: &[u32]) -> UserHits {
        UserHits {
            user: 0,
            n_relevant,
            hit_ranks: hit_ranks.to_vec(),
        }
    }

    #[test]
    fn hand_computed() {
        // 3 test items, hits at ranks 1, 3, 4.
        let h = hits(3, &[1, 3, 4]);
        assert_eq!(recall(&h, 1), 1.0 / 3.0);
        assert_eq!(recall(&h, 3), 2.0 / 3.0);
        assert_eq!(recall(&h, 10), 1.0);
        assert_eq!(precision(&h, 3), 2.0 / 3.0);
        // Only 4 recommendations but precision@10 still divides by 10.
        assert_eq!(precision(&h, 10), 0.3);
        assert_eq!(hit_rate(&h, 1), 1.0);
        // No hit in the top 2.
        let h = hits(2, &[3]);
        assert_eq!(
            (recall(&h, 2), precision(&h, 2), hit_rate(&h, 2)),
            (0.0, 0.0, 0.0)
        );
        assert_eq!(hit_rate(&h, 3), 1.0);
        // A user without recommendations.
        let h = hits(1, &[]);
        assert_eq!(
            (recall(&h, 5), precision(&h, 5), hit_rate(&h, 5)),
            (0.0, 0.0, 0.0)
        );
    }
}
