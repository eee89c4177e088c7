//! Positional encodings (RecTools `PositionalEncodingBase`).

use candle_core::Tensor;
use serde_json::Value;

use crate::{context::BuildContext, Result};

/// Adds position information to session embeddings `[B, L, d] -> [B, L, d]`.
pub trait PositionalEncoding: Send + Sync {
    /// Applies the encoding.
    fn forward_t(&self, sessions: &Tensor, train: bool) -> Result<Tensor>;
    /// The number of parameter elements the component created, when it declares it; the
    /// conformance suite compares it with the parameter map. `None`: not declared.
    fn n_params(&self) -> Option<usize> {
        None
    }
}

/// Builds a positional encoding (reads `use_pos_emb`, `session_max_len`, `n_factors` from the
/// context).
pub type BuildPositionalEncoding =
    fn(ctx: &BuildContext<'_>, kwargs: &Value) -> Result<Box<dyn PositionalEncoding>>;
