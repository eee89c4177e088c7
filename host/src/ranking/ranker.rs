//! [`Ranker`]: candidate objects uploaded once, then batched scoring of subjects (one matrix
//! multiply per batch), masking of exclusions, and top-k selection per row in parallel.

use candle_core::{Device, Tensor};
use rayon::prelude::*;
use recblocks_core::components::Distance;

use super::{topk::top_k_columns, Exclusions, RankError, Scored};

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
pub(super) fn normalise_rows(data: &[f32], dim: usize) -> Vec<f32> {
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

    /// Partial top-k selection of one score row ([`top_k_columns`]), mapped back to object ids.
    fn select(&self, row: &[f32], k: usize) -> Vec<Scored> {
        let mut buf = top_k_columns(row, k);
        for entry in &mut buf {
            entry.0 = self.column_ids[entry.0 as usize];
        }
        buf
    }
}
