//! Fast batched top-k scoring of subject embeddings against object embeddings.
//!
//! Ports the semantics of RecTools' `TorchRanker` (`rectools/models/rank/rank_torch.py`), which
//! the transformer models use in `_recommend_u2i` / `_recommend_i2i`:
//! - score = dot(subject, object); with [`Distance::Cosine`] both sides are first normalised as
//!   `x / max(||x||, 1e-8)` (so a zero vector scores 0, never NaN);
//! - excluded ("viewed") objects are set to −inf and never returned, and only whitelisted objects
//!   (`sorted_item_ids_to_recommend`) are candidates;
//! - results are sorted by score descending; entries scoring −inf are dropped, so a row can hold
//!   fewer than `k` results. NaN scores are dropped too (torch's `topk` would rank NaN first, and
//!   RecTools drops −inf only when a filter is given; both are deliberate deviations).
//!
//! Ties are broken deterministically by the smaller object id (torch's `topk` leaves them
//! unspecified). Subjects are processed in batches of `batch_size` rows: one matrix multiply per
//! batch (candle, on the ranker's device), then per-row masking and partial selection in parallel
//! with rayon. Peak memory is `batch_size × n_candidates` scores; the object matrix is uploaded
//! once per [`Ranker`].

use std::cmp::Ordering;

use candle_core::{Device, Tensor};
use rayon::prelude::*;
use recblocks_core::components::Distance;

/// Errors raised by the ranker.
#[derive(Debug, thiserror::Error)]
pub enum RankError {
    /// The embedding dimension or the batch size is zero.
    #[error("{0} must be positive")]
    Zero(&'static str),
    /// A flat embedding buffer's length is not a multiple of the dimension.
    #[error("{what} has {len} values, which is not a multiple of the dimension {dim}")]
    BadShape {
        /// Which buffer ("subjects" or "objects").
        what: &'static str,
        /// Its length.
        len: usize,
        /// The embedding dimension.
        dim: usize,
    },
    /// A whitelisted object id is not a valid object row.
    #[error("whitelisted object id {id} is out of range (n_objects = {n_objects})")]
    WhitelistOutOfRange {
        /// The offending id.
        id: u32,
        /// The number of objects.
        n_objects: usize,
    },
    /// The exclusion lists do not have one row per subject.
    #[error("exclusions have {rows} rows but there are {subjects} subjects")]
    ExclusionRows {
        /// Rows in the exclusions.
        rows: usize,
        /// Number of subjects.
        subjects: usize,
    },
    /// A CSR exclusion structure is malformed.
    #[error("malformed CSR exclusions: {0}")]
    BadCsr(String),
    /// The tensor backend failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

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

/// One ranked result: `(object id, score)`.
pub type Scored = (u32, f32);

/// Objects uploaded once (normalised for cosine, restricted to the whitelist), ready to rank
/// any number of subject batches.
#[derive(Debug)]
pub struct Ranker {
    /// Candidate objects transposed, `[dim, n_candidates]`, on `device`.
    objects_t: Tensor,
    /// Candidate column -> object id (ascending, so ties by column are ties by id).
    column_ids: Vec<u32>,
    /// Object id -> candidate column, or `u32::MAX` when not a candidate; `None` when every
    /// object is a candidate (column == id).
    column_of: Option<Vec<u32>>,
    n_objects: usize,
    dim: usize,
    distance: Distance,
    device: Device,
}

/// Normalises each `dim`-row as `x / max(||x||, 1e-8)` (RecTools' cosine convention).
fn normalise_rows(data: &[f32], dim: usize) -> Vec<f32> {
    let mut out = data.to_vec();
    for row in out.chunks_mut(dim) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        let denom = norm.max(1e-8);
        row.iter_mut().for_each(|x| *x /= denom);
    }
    out
}

fn check_shape(what: &'static str, len: usize, dim: usize) -> Result<usize, RankError> {
    if dim == 0 {
        return Err(RankError::Zero("embedding dimension"));
    }
    if !len.is_multiple_of(dim) {
        return Err(RankError::BadShape { what, len, dim });
    }
    Ok(len / dim)
}

/// Orders by score descending, then object column ascending (scores are never NaN here).
fn by_score_then_id(a: &Scored, b: &Scored) -> Ordering {
    b.1.partial_cmp(&a.1)
        .unwrap_or(Ordering::Equal)
        .then(a.0.cmp(&b.0))
}

impl Ranker {
    /// Prepares `objects` (`[n_objects, dim]` row-major) for ranking on `device`.
    ///
    /// `whitelist`, when given, is the set of object ids allowed in results (any order,
    /// duplicates ignored); every id must be `< n_objects`.
    pub fn new(
        objects: &[f32],
        dim: usize,
        distance: Distance,
        whitelist: Option<&[u32]>,
        device: &Device,
    ) -> Result<Self, RankError> {
        let n_objects = check_shape("objects", objects.len(), dim)?;
        let normalised;
        let objects = match distance {
            Distance::Dot => objects,
            Distance::Cosine => {
                normalised = normalise_rows(objects, dim);
                &normalised
            }
        };
        let (column_ids, column_of, candidates) = match whitelist {
            None => ((0..n_objects as u32).collect(), None, objects.to_vec()),
            Some(ids) => {
                let mut ids = ids.to_vec();
                ids.sort_unstable();
                ids.dedup();
                if let Some(&id) = ids.iter().find(|&&id| id as usize >= n_objects) {
                    return Err(RankError::WhitelistOutOfRange { id, n_objects });
                }
                let mut column_of = vec![u32::MAX; n_objects];
                let mut rows = Vec::with_capacity(ids.len() * dim);
                for (col, &id) in ids.iter().enumerate() {
                    column_of[id as usize] = col as u32;
                    let start = id as usize * dim;
                    rows.extend_from_slice(&objects[start..start + dim]);
                }
                (ids, Some(column_of), rows)
            }
        };
        let n_cand = column_ids.len();
        let objects_t = Tensor::from_vec(candidates, (n_cand, dim), device)?
            .t()?
            .contiguous()?;
        Ok(Self {
            objects_t,
            column_ids,
            column_of,
            n_objects,
            dim,
            distance,
            device: device.clone(),
        })
    }

    /// Number of candidate objects (whitelist size, or all objects).
    pub fn n_candidates(&self) -> usize {
        self.column_ids.len()
    }

    /// Top-`k` objects for every subject row of `subjects` (`[n_subjects, dim]` row-major).
    ///
    /// `exclusions`, when given, must have one row per subject. Returns one list per subject,
    /// sorted by score descending then object id ascending, with at most `k` entries and no
    /// excluded, non-whitelisted, −inf or NaN entries.
    pub fn rank(
        &self,
        subjects: &[f32],
        k: usize,
        exclusions: Option<&dyn Exclusions>,
        batch_size: usize,
    ) -> Result<Vec<Vec<Scored>>, RankError> {
        let n_subjects = check_shape("subjects", subjects.len(), self.dim)?;
        if batch_size == 0 {
            return Err(RankError::Zero("batch_size"));
        }
        if let Some(ex) = exclusions {
            if ex.n_rows() != n_subjects {
                return Err(RankError::ExclusionRows {
                    rows: ex.n_rows(),
                    subjects: n_subjects,
                });
            }
        }
        let n_cand = self.n_candidates();
        if k == 0 || n_cand == 0 {
            return Ok(vec![Vec::new(); n_subjects]);
        }
        let normalised;
        let subjects = match self.distance {
            Distance::Dot => subjects,
            Distance::Cosine => {
                normalised = normalise_rows(subjects, self.dim);
                &normalised
            }
        };
        let mut out = Vec::with_capacity(n_subjects);
        for (b, chunk) in subjects.chunks(batch_size * self.dim).enumerate() {
            let rows = chunk.len() / self.dim;
            let lhs = Tensor::from_slice(chunk, (rows, self.dim), &self.device)?;
            let mut scores = lhs
                .matmul(&self.objects_t)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let first_row = b * batch_size;
            let batch: Vec<Vec<Scored>> = scores
                .par_chunks_mut(n_cand)
                .enumerate()
                .map(|(r, row)| {
                    if let Some(ex) = exclusions {
                        self.mask(row, ex.excluded(first_row + r));
                    }
                    self.select(row, k)
                })
                .collect();
            out.extend(batch);
        }
        Ok(out)
    }

    /// Sets the scores of excluded objects to −inf.
    fn mask(&self, row: &mut [f32], excluded: &[u32]) {
        for &id in excluded {
            if id as usize >= self.n_objects {
                continue;
            }
            let col = match &self.column_of {
                None => id,
                Some(map) => map[id as usize],
            };
            if let Some(s) = row.get_mut(col as usize) {
                *s = f32::NEG_INFINITY;
            }
        }
    }

    /// Partial top-k selection of one score row, mapped back to object ids.
    ///
    /// Streams the row into a buffer of `max(2k, 64)` candidates; whenever it fills,
    /// `select_nth_unstable_by` keeps the best k and their worst score becomes a strict
    /// threshold (a later column with an equal score loses the tie-break on id). Only the final
    /// k are sorted. O(n) time, O(k) memory; −inf and NaN never pass `s > threshold`.
    fn select(&self, row: &[f32], k: usize) -> Vec<Scored> {
        let cap = (2 * k).max(64);
        let mut buf: Vec<Scored> = Vec::with_capacity(cap.min(row.len()));
        let mut threshold = f32::NEG_INFINITY;
        for (c, &s) in row.iter().enumerate() {
            if s > threshold {
                buf.push((c as u32, s));
                if buf.len() >= cap {
                    buf.select_nth_unstable_by(k - 1, by_score_then_id);
                    buf.truncate(k);
                    threshold = buf.last().map_or(threshold, |e| e.1);
                }
            }
        }
        if buf.len() > k {
            buf.select_nth_unstable_by(k - 1, by_score_then_id);
            buf.truncate(k);
        }
        buf.sort_unstable_by(by_score_then_id);
        for entry in &mut buf {
            entry.0 = self.column_ids[entry.0 as usize];
        }
        buf
    }
}

/// A one-shot ranking request (see [`topk_scores`]).
#[derive(Clone, Copy)]
pub struct RankRequest<'a> {
    /// Subject embeddings, `[n_subjects, dim]` row-major.
    pub subjects: &'a [f32],
    /// Object embeddings, `[n_objects, dim]` row-major.
    pub objects: &'a [f32],
    /// Embedding dimension.
    pub dim: usize,
    /// Number of results per subject.
    pub k: usize,
    /// Per-subject excluded object ids.
    pub exclusions: Option<&'a dyn Exclusions>,
    /// Allowed object ids (all objects when `None`).
    pub whitelist: Option<&'a [u32]>,
    /// Dot or cosine scoring.
    pub distance: Distance,
    /// Subject rows per matrix multiply (RecTools uses 128).
    pub batch_size: usize,
}

/// Ranks on the CPU in one call: builds a [`Ranker`] over `req.objects` and ranks
/// `req.subjects`. Use [`Ranker`] directly to reuse the uploaded objects or pick a device.
pub fn topk_scores(req: &RankRequest<'_>) -> Result<Vec<Vec<Scored>>, RankError> {
    let ranker = Ranker::new(
        req.objects,
        req.dim,
        req.distance,
        req.whitelist,
        &Device::Cpu,
    )?;
    ranker.rank(req.subjects, req.k, req.exclusions, req.batch_size)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn req<'a>(subjects: &'a [f32], objects: &'a [f32], dim: usize, k: usize) -> RankRequest<'a> {
        RankRequest {
            subjects,
            objects,
            dim,
            k,
            exclusions: None,
            whitelist: None,
            distance: Distance::Dot,
            batch_size: 2,
        }
    }

    // Objects (d = 2): o0 = (1, 0), o1 = (0, 1), o2 = (1, 1), o3 = (2, 0), o4 = (0, 0).
    const OBJ: [f32; 10] = [1., 0., 0., 1., 1., 1., 2., 0., 0., 0.];

    #[test]
    fn dot_ties_broken_by_smaller_id() {
        // s = (1, 1): scores 1, 1, 2, 2, 0 -> (2, 2), (3, 2), (0, 1), (1, 1), (4, 0).
        let s = [1., 1.];
        let got = topk_scores(&req(&s, &OBJ, 2, 4)).unwrap();
        assert_eq!(got, vec![vec![(2, 2.), (3, 2.), (0, 1.), (1, 1.)]]);
    }

    #[test]
    fn cosine_normalises_and_zero_vectors_score_zero() {
        // s = (3, 0) -> (1, 0); o2 -> (0.7071, 0.7071); o4 stays (0, 0) -> score 0, not NaN.
        let s = [3., 0., 0., 0.];
        let mut r = req(&s, &OBJ, 2, 10);
        r.distance = Distance::Cosine;
        let got = topk_scores(&r).unwrap();
        let ids: Vec<u32> = got[0].iter().map(|e| e.0).collect();
        assert_eq!(ids, vec![0, 3, 2, 1, 4]);
        let want = [1.0, 1.0, std::f32::consts::FRAC_1_SQRT_2, 0.0, 0.0];
        for (e, w) in got[0].iter().zip(want) {
            assert!((e.1 - w).abs() < 1e-6, "{got:?}");
        }
        // The zero subject scores 0 against everything: all five, ids ascending.
        assert_eq!(got[1], (0..5).map(|i| (i, 0.0)).collect::<Vec<_>>());
    }

    #[test]
    fn filter_whitelist_and_k_larger_than_catalog() {
        let s = [1., 1., 1., 0., 0., 1.];
        let ex = vec![vec![2, 99], vec![], vec![1, 3]];
        let mut r = req(&s, &OBJ, 2, 10);
        r.exclusions = Some(&ex);
        r.whitelist = Some(&[3, 1, 2, 3]);
        let got = topk_scores(&r).unwrap();
        assert_eq!(got[0], vec![(3, 2.), (1, 1.)]);
        assert_eq!(got[1], vec![(3, 2.), (2, 1.), (1, 0.)]);
        assert_eq!(got[2], vec![(2, 1.)]);

        let indptr = [0, 1, 1, 3];
        let indices = [2, 1, 3];
        let csr = CsrExclusions::new(&indptr, &indices).unwrap();
        r.exclusions = Some(&csr);
        r.whitelist = None;
        r.k = 2;
        let got = topk_scores(&r).unwrap();
        assert_eq!(got[0], vec![(3, 2.), (0, 1.)]);
        assert_eq!(got[1], vec![(3, 2.), (0, 1.)]);
        assert_eq!(got[2], vec![(2, 1.), (0, 0.)]);
    }

    #[test]
    fn non_finite_scores_are_dropped_and_errors_reported() {
        let obj = [1., f32::NAN, f32::NEG_INFINITY, 2.];
        let got = topk_scores(&req(&[1.], &obj, 1, 5)).unwrap();
        assert_eq!(got, vec![vec![(3, 2.), (0, 1.)]]);
        assert!(topk_scores(&req(&[1., 2., 3.], &OBJ, 2, 1)).is_err());
        let mut r = req(&[1., 2.], &OBJ, 2, 1);
        r.whitelist = Some(&[5]);
        assert!(matches!(
            topk_scores(&r),
            Err(RankError::WhitelistOutOfRange { .. })
        ));
        r.whitelist = None;
        let ex = vec![vec![], vec![]];
        r.exclusions = Some(&ex);
        assert!(matches!(
            topk_scores(&r),
            Err(RankError::ExclusionRows { .. })
        ));
        assert!(CsrExclusions::new(&[0, 2], &[1]).is_err());
        r.exclusions = None;
        r.k = 0;
        assert_eq!(topk_scores(&r).unwrap(), vec![Vec::<Scored>::new()]);
    }

    /// Full sort of every candidate: the reference the batched ranker must match.
    fn naive(r: &RankRequest<'_>) -> Vec<Vec<Scored>> {
        let d = r.dim;
        let prep = |x: &[f32]| match r.distance {
            Distance::Dot => x.to_vec(),
            Distance::Cosine => normalise_rows(x, d),
        };
        let (s, o) = (prep(r.subjects), prep(r.objects));
        (0..s.len() / d)
            .map(|u| {
                let ex = r
                    .exclusions
                    .map(|e| e.excluded(u).to_vec())
                    .unwrap_or_default();
                let mut all: Vec<Scored> = (0..o.len() / d)
                    .filter(|&i| !ex.contains(&(i as u32)))
                    .filter(|&i| r.whitelist.is_none_or(|w| w.contains(&(i as u32))))
                    .map(|i| {
                        let dot = (0..d).map(|j| s[u * d + j] * o[i * d + j]).sum::<f32>();
                        (i as u32, dot)
                    })
                    .collect();
                all.sort_by(by_score_then_id);
                all.truncate(r.k);
                all
            })
            .collect()
    }

    #[test]
    fn randomized_against_naive_full_sort() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let (n_s, n_o, d) = (203, 157, 8);
        // Small integers keep dot products exact in f32 and create many ties.
        let s: Vec<f32> = (0..n_s * d)
            .map(|_| rng.random_range(-2..=2) as f32)
            .collect();
        let o: Vec<f32> = (0..n_o * d)
            .map(|_| rng.random_range(-2..=2) as f32)
            .collect();
        let ex: Vec<Vec<u32>> = (0..n_s)
            .map(|_| {
                (0..rng.random_range(0..40))
                    .map(|_| rng.random_range(0..n_o as u32))
                    .collect()
            })
            .collect();
        let wl: Vec<u32> = (0..n_o as u32).filter(|_| rng.random_bool(0.7)).collect();
        for (k, with_ex, with_wl) in [(10, true, false), (1, false, true), (200, true, true)] {
            let mut r = req(&s, &o, d, k);
            r.batch_size = 16;
            r.exclusions = with_ex.then_some(&ex as &dyn Exclusions);
            r.whitelist = with_wl.then_some(wl.as_slice());
            assert_eq!(topk_scores(&r).unwrap(), naive(&r), "k={k}");
        }
        // Cosine on continuous values: same ids, scores within float tolerance.
        let s: Vec<f32> = (0..n_s * d).map(|_| rng.random_range(-1.0..1.0)).collect();
        let o: Vec<f32> = (0..n_o * d).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut r = req(&s, &o, d, 20);
        r.distance = Distance::Cosine;
        r.batch_size = 50;
        r.exclusions = Some(&ex);
        let (got, want) = (topk_scores(&r).unwrap(), naive(&r));
        for (g, w) in got.iter().zip(&want) {
            let gi: Vec<u32> = g.iter().map(|e| e.0).collect();
            let wi: Vec<u32> = w.iter().map(|e| e.0).collect();
            assert_eq!(gi, wi);
            for (a, b) in g.iter().zip(w) {
                assert!((a.1 - b.1).abs() < 1e-5);
            }
        }
    }
}
