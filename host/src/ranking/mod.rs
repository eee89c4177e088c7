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

mod exclusions;
mod ranker;
mod topk;

use candle_core::Device;
use recblocks_core::components::Distance;

pub use exclusions::{CsrExclusions, Exclusions};
pub use ranker::Ranker;

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

/// One ranked result: `(object id, score)`.
pub type Scored = (u32, f32);

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
mod tests;
