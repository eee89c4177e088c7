//! Transformer layer stacks (RecTools `TransformerLayersBase`).

use candle_core::Tensor;
use serde_json::Value;

use crate::{context::BuildContext, CoreError, Result};

/// The masks the backbone gives the layers (RecTools `encode_sessions`).
#[derive(Debug, Clone)]
pub struct AttentionMasks {
    /// `[B, L, 1]` f32: 1 at real items, 0 at padding (RecTools `timeline_mask`).
    pub timeline_mask: Tensor,
    /// Additive attention bias broadcastable to `[B, H, L, L]` (0 = allowed, −inf = not allowed):
    /// causal `[1, 1, L, L]`, key padding `[B, 1, 1, L]`, or RecTools' merged mask `[B, 1, L, L]`
    /// with a zeroed diagonal when both are on. `None` when neither is on.
    pub attn_bias: Option<Tensor>,
}

impl AttentionMasks {
    /// The rows of [`attn_bias`](Self::attn_bias) for the last query only, broadcastable to
    /// `[B, H, 1, L]` (a key padding bias `[B, 1, 1, L]` has no query rows and is kept whole).
    pub fn last_query_bias(&self) -> Result<Option<Tensor>> {
        let Some(bias) = &self.attn_bias else {
            return Ok(None);
        };
        let rows = bias.dim(2)?;
        if rows <= 1 {
            return Ok(Some(bias.clone()));
        }
        Ok(Some(bias.narrow(2, rows - 1, 1)?))
    }
}

/// The last position of `x` `[B, L, d]` as `[B, 1, d]`; an error for an empty session axis.
pub fn last_position(x: &Tensor) -> Result<Tensor> {
    let l = x.dim(1)?;
    let Some(last) = l.checked_sub(1) else {
        return Err(CoreError::Other(
            "sessions have no positions (session length 0)".into(),
        ));
    };
    Ok(x.narrow(1, last, 1)?)
}

/// A stack of transformer layers `[B, L, d] -> [B, L, d]`.
pub trait TransformerLayers: Send + Sync {
    /// Applies the stack.
    fn forward_t(&self, seqs: &Tensor, masks: &AttentionMasks, train: bool) -> Result<Tensor>;
    /// The stack's eval-mode output at the last position only, `[B, 1, d]`: what recommending
    /// needs (RecTools takes `encode_sessions(...)[:, -1, :]`). It must equal
    /// `forward_t(seqs, masks, false)` at the last position. The default computes every position
    /// and keeps the last; stacks override it to skip, in their last block, the work that only
    /// the other positions' outputs need.
    fn forward_last(&self, seqs: &Tensor, masks: &AttentionMasks) -> Result<Tensor> {
        last_position(&self.forward_t(seqs, masks, false)?)
    }
    /// The number of parameter elements the component created, when it declares it; the
    /// conformance suite compares it with the parameter map. `None`: not declared.
    fn n_params(&self) -> Option<usize> {
        None
    }
}

/// Builds a layer stack (reads `n_blocks`, `n_heads`, `dropout_rate` from the spec and the width
/// from `ctx.n_factors`).
pub type BuildTransformerLayers =
    fn(ctx: &BuildContext<'_>, kwargs: &Value) -> Result<Box<dyn TransformerLayers>>;
