//! Transformer layer stacks (RecTools `TransformerLayersBase`).

use candle_core::Tensor;
use serde_json::Value;

use crate::{context::BuildContext, Result};

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

/// A stack of transformer layers `[B, L, d] -> [B, L, d]`.
pub trait TransformerLayers: Send + Sync {
    /// Applies the stack.
    fn forward_t(&self, seqs: &Tensor, masks: &AttentionMasks, train: bool) -> Result<Tensor>;
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
