//! Per-subject exclusions for the ranker ("viewed" items that must not be returned): nested
//! lists, or CSR arrays as the scipy `csr_matrix` RecTools' `TorchRanker` takes.

use super::RankError;

/// Per-subject lists of object ids that must not be returned (e.g. items already seen).
///
/// Ids may come in any order; ids outside the object range are ignored.
pub trait Exclusions: Sync {
    /// Number of rows (must equal the number of subjects ranked).
    fn n_rows(&self) -> usize;
    /// Excluded object ids of subject row `row` (`row < n_rows()`).
    fn excluded(&self, row: usize) -> &[u32];
}

impl Exclusions for Vec<Vec<u32>> {
    fn n_rows(&self) -> usize {
        self.len()
    }
    fn excluded(&self, row: usize) -> &[u32] {
        self.get(row).map_or(&[], Vec::as_slice)
    }
}

/// Exclusions in CSR form (like scipy's `csr_matrix` RecTools passes): row `r` excludes
/// `indices[indptr[r]..indptr[r + 1]]`.
#[derive(Debug, Clone, Copy)]
pub struct CsrExclusions<'a> {
    indptr: &'a [usize],
    indices: &'a [u32],
}

impl<'a> CsrExclusions<'a> {
    /// Validates and wraps CSR arrays: `indptr` is non-empty, starts at 0, is non-decreasing and
    /// ends at `indices.len()`.
    pub fn new(indptr: &'a [usize], indices: &'a [u32]) -> Result<Self, RankError> {
        if indptr.first() != Some(&0) {
            return Err(RankError::BadCsr("indptr must start with 0".into()));
        }
        if indptr.windows(2).any(|w| w[0] > w[1]) {
            return Err(RankError::BadCsr("indptr must be non-decreasing".into()));
        }
        if indptr.last() != Some(&indices.len()) {
            return Err(RankError::BadCsr(format!(
                "indptr ends at {:?} but there are {} indices",
                indptr.last(),
                indices.len()
            )));
        }
        Ok(Self { indptr, indices })
    }
}

impl Exclusions for CsrExclusions<'_> {
    fn n_rows(&self) -> usize {
        self.indptr.len().saturating_sub(1)
    }
    fn excluded(&self, row: usize) -> &[u32] {
        match (self.indptr.get(row), self.indptr.get(row + 1)) {
            (Some(&a), Some(&b)) => self.indices.get(a..b).unwrap_or(&[]),
            _ => &[],
        }
    }
}
