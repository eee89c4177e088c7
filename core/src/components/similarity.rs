//! Similarity modules (RecTools `SimilarityModuleBase`): score sessions against items.

use candle_core::Tensor;
use serde_json::Value;

use crate::{context::BuildContext, Result};

/// The distance a similarity module ranks by at inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Distance {
    /// Dot product.
    Dot,
    /// Cosine (both sides L2-normalised with `max(||x||, 1e-8)`).
    Cosine,
}

/// Scores session embeddings against item embeddings.
pub trait Similarity: Send + Sync {
    /// Session-side transform used at inference (identity by default).
    fn session_tower(&self, sessions: &Tensor) -> Result<Tensor> {
        Ok(sessions.clone())
    }
    /// Item-side transform used at inference (identity by default).
    fn item_tower(&self, items: &Tensor) -> Result<Tensor> {
        Ok(items.clone())
    }
    /// Logits against the whole catalog: `[B, L, d] x [N, d] -> [B, L, N]`.
    fn full_catalog_logits(&self, sessions: &Tensor, item_embs: &Tensor) -> Result<Tensor>;
    /// The two factors whose dot products are the full-catalog logits, when they are such a
    /// product: `(s, e)` with `s` `[.., d']` shaped as `sessions` and `e` `[N, d']`, such that
    /// `full_catalog_logits(sessions, item_embs)` equals `s · eᵀ` (to f32 rounding). The softmax
    /// objective then computes its loss in chunks of rows without materialising the `[.., N]`
    /// logits ([`crate::nn::catalog_softmax_loss`]). `None`, the default: the objective
    /// materialises the logits through [`Self::full_catalog_logits`]. The conformance suite checks
    /// that the two agree.
    fn catalog_factors(
        &self,
        sessions: &Tensor,
        item_embs: &Tensor,
    ) -> Result<Option<(Tensor, Tensor)>> {
        let _ = (sessions, item_embs);
        Ok(None)
    }
    /// Logits against candidates `[B, L, K]` (u32 ids; `[B, 1, K]` broadcasts over L):
    /// `[B, L, d] -> [B, L, K]`.
    fn candidate_logits(
        &self,
        sessions: &Tensor,
        item_embs: &Tensor,
        candidates: &Tensor,
    ) -> Result<Tensor>;
    /// The distance used to rank at inference.
    fn distance(&self) -> Distance;
    /// The number of parameter elements the component created, when it declares it; the
    /// conformance suite compares it with the parameter map. `None`: not declared.
    fn n_params(&self) -> Option<usize> {
        None
    }
}

/// Builds a similarity module.
pub type BuildSimilarity =
    fn(ctx: &BuildContext<'_>, kwargs: &Value) -> Result<Box<dyn Similarity>>;
