//! Catalog coverage, `CatalogCoverage@k`.
//!
//! Ports `rectools/metrics/catalog.py` (`CatalogCoverage`): the number of distinct items
//! recommended at rank ≤ k to any user (all recommended users, test or not). recblocks reports the
//! *share* of the catalog, i.e. RecTools' `normalize=True` (`count / len(catalog)`); RecTools'
//! default `normalize=False` is the raw count, `coverage@k × n_catalog_items`. It is a single
//! number, so it has no per-user values.

use super::data::Recommendations;

/// Distinct items recommended at rank ≤ k, over all users.
pub fn covered_items(reco: &Recommendations, k: usize) -> usize {
    let mut items: Vec<u32> = reco
        .iter()
        .flat_map(|(_, list)| list.iter().take_while(|r| r.rank as usize <= k))
        .map(|r| r.item)
        .collect();
    items.sort_unstable();
    items.dedup();
    items.len()
}

/// Coverage@k: distinct items recommended at rank ≤ k / `n_catalog_items` (must be > 0).
pub fn catalog_coverage(reco: &Recommendations, k: usize, n_catalog_items: usize) -> f64 {
    covered_items(reco, k) as f64 / n_catalog_items as f64
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn counts_distinct_items_in_top_k() {
        let reco = Recommendations::from_ranked_lists([
            (1, vec![0, 1, 2]),
            (2, vec![1, 3]),
            (3, vec![1, 0, 4]),
        ])
        .unwrap();
        assert_eq!(covered_items(&reco, 1), 2); // {0, 1}
        assert_eq!(covered_items(&reco, 2), 3); // {0, 1, 3}
        assert_eq!(catalog_coverage(&reco, 2, 10), 0.3);
        assert_eq!(catalog_coverage(&reco, 3, 10), 0.5); // {0, 1, 2, 3, 4}
    }
}
