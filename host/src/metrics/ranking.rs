//! Per-user ranking metrics: MAP@k, MRR@k and NDCG@k in two conventions.
//!
//! Ports `rectools/metrics/ranking.py` (`MAP`, `MRR`, `NDCG`, read at RecTools commit 41a5a63).
//! With `hits` = ranks ≤ k at which the user's test items were recommended (ascending) and
//! `n_rel` = number of the user's test items:
//! - MAP@k (RecTools' default `divide_by_k=False`): `Σ_{j-th hit at rank r} (j / r) / n_rel` —
//!   precision@r summed over hit ranks, divided by *all* test items (not `min(n_rel, k)`).
//! - MRR@k: `1 / min(hits)`, 0 without a hit.
//! - `ndcg_rectools` (RecTools' default `divide_by_achievable=False`, `log_base=2`):
//!   `Σ_{r ∈ hits} 1/log2(r+1)` divided by `IDCG(k) = Σ_{i=1..k} 1/log2(i+1)` — the same ideal
//!   for every user, so a user with fewer than k test items cannot reach 1.
//! - `ndcg` (standard; RecTools' `divide_by_achievable=True`): the same DCG divided by
//!   `IDCG(min(n_rel, k))`.
//!
//! Users come from the test set (left join); a test user without recommendations scores 0.

use super::data::UserHits;

/// `Σ_{i=1..n} 1 / log2(i + 1)`: the DCG of `n` relevant items at ranks 1..n.
pub fn ideal_dcg(n: usize) -> f64 {
    (1..=n).map(|i| 1.0 / ((i + 1) as f64).log2()).sum()
}

/// DCG@k with binary relevance: `Σ_{hit rank r ≤ k} 1 / log2(r + 1)`.
pub fn dcg(h: &UserHits, k: usize) -> f64 {
    h.hits_at(k)
        .iter()
        .map(|&r| 1.0 / (f64::from(r) + 1.0).log2())
        .sum()
}

/// Standard NDCG@k: DCG@k / IDCG(min(n_relevant, k)).
pub fn ndcg(h: &UserHits, k: usize) -> f64 {
    let ideal = ideal_dcg(h.n_relevant.min(k));
    if ideal > 0.0 {
        dcg(h, k) / ideal
    } else {
        0.0
    }
}

/// RecTools' default NDCG@k: DCG@k / IDCG(k).
pub fn ndcg_rectools(h: &UserHits, k: usize) -> f64 {
    dcg(h, k) / ideal_dcg(k)
}

/// RecTools' MAP@k (`divide_by_k=False`): Σ precision@r over hit ranks r ≤ k, / n_relevant.
pub fn average_precision(h: &UserHits, k: usize) -> f64 {
    let sum: f64 = h
        .hits_at(k)
        .iter()
        .enumerate()
        .map(|(j, &r)| (j + 1) as f64 / f64::from(r))
        .sum();
    sum / h.n_relevant as f64
}

/// MRR@k: reciprocal rank of the first hit at rank ≤ k, 0 without one.
pub fn reciprocal_rank(h: &UserHits, k: usize) -> f64 {
    h.hits_at(k).first().map_or(0.0, |&r| 1.0 / f64::from(r))
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

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    /// The four users of the RecTools docstring examples (MAP / NDCG), in order.
    fn docstring_users() -> [UserHits; 4] {
        [
            hits(2, &[]),        // user 1: non-relevant recommendations
            hits(1, &[1]),       // user 2: 2 items, the first relevant
            hits(3, &[1, 3, 4]), // user 3: 4 items, 1st/3rd/4th relevant
            hits(3, &[1, 2, 3]), // user 4: 3 items, all relevant
        ]
    }

    #[test]
    fn map_matches_rectools_docstring() {
        let u = docstring_users();
        let at1: Vec<f64> = u.iter().map(|h| average_precision(h, 1)).collect();
        let at3: Vec<f64> = u.iter().map(|h| average_precision(h, 3)).collect();
        assert_eq!(at1, [0.0, 1.0, 1.0 / 3.0, 1.0 / 3.0]);
        // user 3 @3: (1/1 + 2/3) / 3 = 0.5555...
        assert!(close(at3[2], (1.0 + 2.0 / 3.0) / 3.0));
        assert!(close(at3[3], 1.0) && at3[0] == 0.0 && at3[1] == 1.0);
    }

    #[test]
    fn ndcg_both_conventions_written_out() {
        let l2 = 1.0 / 3f64.log2(); // 1/log2(3) = 0.6309297535714575
        let idcg3 = 1.0 + l2 + 0.5; // 2.1309297535714578
        let u = docstring_users();
        // RecTools default (divide by IDCG(k)): docstring values 0, 0.46927873, 0.70391809, 1.
        let rt: Vec<f64> = u.iter().map(|h| ndcg_rectools(h, 3)).collect();
        assert_eq!(rt[0], 0.0);
        assert!(close(rt[1], 1.0 / idcg3) && (rt[1] - 0.46927873).abs() < 1e-8);
        assert!(close(rt[2], (1.0 + 0.5) / idcg3) && (rt[2] - 0.70391809).abs() < 1e-8);
        assert!(close(rt[3], 1.0));
        // Standard (divide by IDCG(min(n_rel, k))): user 2 has one test item -> 1/1 = 1.
        let st: Vec<f64> = u.iter().map(|h| ndcg(h, 3)).collect();
        assert_eq!(st[0], 0.0);
        assert!(close(st[1], 1.0));
        assert!(close(st[2], 1.5 / idcg3)); // 3 relevant >= k: same ideal as RecTools
        assert!(close(st[3], 1.0));
        // Two test items, one hit at rank 2, k = 5:
        // DCG = 1/log2(3); standard ideal = 1 + 1/log2(3); RecTools ideal = IDCG(5).
        let h = hits(2, &[2]);
        let idcg5 = 1.0 + l2 + 0.5 + 1.0 / 5f64.log2() + 1.0 / 6f64.log2();
        assert!(close(ndcg(&h, 5), l2 / (1.0 + l2))); // 0.38685280723454163
        assert!(close(ndcg_rectools(&h, 5), l2 / idcg5)); // 0.21398626473452756
        assert!(close(ndcg(&h, 5), 0.38685280723454163));
        assert!(close(ndcg_rectools(&h, 5), 0.21398626473452756));
    }

    #[test]
    fn mrr_matches_rectools_docstring() {
        // MRR docstring: user 3 hits at 2, 3, 4; user 4 hit at 3.
        let u = [
            hits(2, &[]),
            hits(1, &[1]),
            hits(3, &[2, 3, 4]),
            hits(3, &[3]),
        ];
        let at1: Vec<f64> = u.iter().map(|h| reciprocal_rank(h, 1)).collect();
        let at3: Vec<f64> = u.iter().map(|h| reciprocal_rank(h, 3)).collect();
        assert_eq!(at1, [0.0, 1.0, 0.0, 0.0]);
        assert_eq!(at3, [0.0, 1.0, 0.5, 1.0 / 3.0]);
    }
}
