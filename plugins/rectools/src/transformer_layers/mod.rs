//! Transformer layer stacks: ports of RecTools' `SASRecTransformerLayers` (`sasrec.py`),
//! `PreLNTransformerLayers` (`net_blocks.py`) and `LiGRLayers` (`ligr.py`); docs/rectools.md §2.3 and
//! §3 give the exact math. The SASRec and pre-LN blocks themselves live in core
//! (`recblocks_core::nn::layers`) and are re-exported here.
//!
//! Every stack reads `n_blocks`, `n_heads` and `dropout_rate` from the spec and its width from
//! the build context, and names its blocks `transformer_blocks.{i}` as RecTools' `ModuleList`.

pub mod ligr;
pub mod preln;
pub mod sasrec;

#[cfg(test)]
pub(crate) mod reference;

pub use ligr::{FeedForward, LiGRLayer, LiGRLayers, LiGRLayersKwargs};
pub use preln::{PreLNTransformerLayer, PreLNTransformerLayers, PreLNTransformerLayersKwargs};
pub use sasrec::{SASRecTransformerLayer, SASRecTransformerLayers};

use recblocks_core::{BuildContext, ComponentKind, CoreError, Result};

/// LayerNorm epsilon of torch's default `nn.LayerNorm` (every block norm); defined in core with
/// the blocks.
pub use recblocks_core::nn::blocks::LAYER_NORM_EPS;

/// The sizes every stack is built from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StackDims {
    pub n_blocks: usize,
    pub d: usize,
    pub n_heads: usize,
    pub dropout_rate: f64,
}

impl StackDims {
    /// Reads the sizes from the context, rejecting an empty stack and a width that the heads do
    /// not divide.
    pub(crate) fn from_ctx(ctx: &BuildContext<'_>, component: &str) -> Result<Self> {
        let dims = StackDims {
            n_blocks: ctx.spec.n_blocks,
            d: ctx.n_factors,
            n_heads: ctx.spec.n_heads,
            dropout_rate: ctx.spec.dropout_rate,
        };
        let bad = |m: String| {
            Err(CoreError::invalid(
                ComponentKind::TransformerLayers,
                component,
                m,
            ))
        };
        if dims.n_blocks == 0 {
            return bad("n_blocks must be at least 1".into());
        }
        if dims.d == 0 || dims.n_heads == 0 || !dims.d.is_multiple_of(dims.n_heads) {
            return bad(format!(
                "the width {} must be a positive multiple of n_heads = {}",
                dims.d, dims.n_heads
            ));
        }
        Ok(dims)
    }
}

/// Rejects a feed-forward multiplier of zero.
pub(crate) fn check_multiplier(component: &str, m: usize) -> Result<()> {
    if m == 0 {
        return Err(CoreError::invalid(
            ComponentKind::TransformerLayers,
            component,
            "ff_factors_multiplier must be at least 1",
        ));
    }
    Ok(())
}
