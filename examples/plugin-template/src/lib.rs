//! An example recblocks plugin: `SwiGLUPreLNTransformerLayers`, a transformer-layers type.
//!
//! Each of the `n_blocks` blocks is pre-LN, with a SwiGLU feed-forward as in LLaMA-style models:
//!
//! `x = x + Drop(MHA(LN1(x))); x = x + Drop(SwiGLU(LN2(x)))`, then one final `LN` over the
//! stack, and padded positions zeroed (`timeline_mask`), with
//! `SwiGLU(h) = W2 (SiLU(W1 h) ⊙ W3 h)` of hidden width `ff_hidden_factors` (default
//! `⌈8·d/3⌉`, rounded up to a multiple of 8: the parameter count of a GELU feed-forward of
//! width 4·d).
//!
//! Use it from a spec: `"transformer_layers_type": "SwiGLUPreLNTransformerLayers"` and, optionally,
//! `"transformer_layers_kwargs": {"ff_hidden_factors": 32, "bias": false}`.

use recblocks_core::{
    candle::Tensor,
    components::transformer_layers::{AttentionMasks, TransformerLayers},
    kwargs::decode_kwargs,
    nn::{Dropout, LayerNorm, MultiHeadAttention, SwigluFeedForward},
    serde_json::Value,
    BuildContext, ComponentKind, CoreError, Result,
};

/// The component's canonical name.
pub const NAME: &str = "SwiGLUPreLNTransformerLayers";

const LAYER_NORM_EPS: f64 = 1e-5;

/// Kwargs of [`SwiGLUPreLNTransformerLayers`].
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SwiGLUKwargs {
    /// Hidden width of the SwiGLU feed-forward; `null`: `⌈8·d/3⌉` rounded up to a multiple of 8.
    pub ff_hidden_factors: Option<usize>,
    /// Whether the feed-forward's linear maps have biases.
    pub bias: bool,
}

impl SwiGLUKwargs {
    /// The hidden width for model width `d`.
    pub fn hidden(&self, d: usize) -> usize {
        self.ff_hidden_factors
            .unwrap_or_else(|| (8 * d).div_ceil(3).div_ceil(8) * 8)
    }
}

/// One block: attention and SwiGLU, each after its own layer norm, each with a residual.
struct Block {
    layer_norm_1: LayerNorm,
    multi_head_attn: MultiHeadAttention,
    dropout_1: Dropout,
    layer_norm_2: LayerNorm,
    feed_forward: SwigluFeedForward,
    dropout_2: Dropout,
}

impl Block {
    fn forward_t(&self, x: &Tensor, attn_bias: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let h = self.layer_norm_1.forward(x)?;
        let a = self
            .multi_head_attn
            .forward_t(&h, &h, &h, attn_bias, train)?;
        let x = (x + self.dropout_1.forward_t(&a, train)?)?;
        let f = self
            .feed_forward
            .forward_t(&self.layer_norm_2.forward(&x)?, train)?;
        Ok((x + self.dropout_2.forward_t(&f, train)?)?)
    }
}

/// `n_blocks` pre-LN SwiGLU blocks and a final layer norm.
pub struct SwiGLUPreLNTransformerLayers {
    blocks: Vec<Block>,
    final_norm: LayerNorm,
    n_params: usize,
}

impl SwiGLUPreLNTransformerLayers {
    /// Builds the stack from the spec's `n_blocks`, `n_heads`, `dropout_rate` and width.
    pub fn new(ctx: &BuildContext<'_>, kw: &SwiGLUKwargs) -> Result<Self> {
        let d = ctx.n_factors;
        let hidden = kw.hidden(d);
        if hidden == 0 {
            return Err(CoreError::invalid(
                ComponentKind::TransformerLayers,
                NAME,
                "ff_hidden_factors must be at least 1",
            ));
        }
        let spec = ctx.spec;
        let mut blocks = Vec::with_capacity(spec.n_blocks);
        for i in 0..spec.n_blocks {
            let vb = ctx.vb.pp("blocks").pp(i);
            let drop = || Dropout::new(spec.dropout_rate, ctx.rng.clone());
            blocks.push(Block {
                layer_norm_1: LayerNorm::new(d, LAYER_NORM_EPS, &vb.pp("layer_norm_1"))?,
                multi_head_attn: MultiHeadAttention::new(
                    d,
                    spec.n_heads,
                    spec.dropout_rate,
                    &vb.pp("multi_head_attn"),
                    ctx.rng.clone(),
                )?,
                dropout_1: drop(),
                layer_norm_2: LayerNorm::new(d, LAYER_NORM_EPS, &vb.pp("layer_norm_2"))?,
                feed_forward: SwigluFeedForward::new(
                    d,
                    hidden,
                    spec.dropout_rate,
                    kw.bias,
                    &vb.pp("feed_forward"),
                    ctx.rng.clone(),
                )?,
                dropout_2: drop(),
            });
        }
        let final_norm = LayerNorm::new(d, LAYER_NORM_EPS, &ctx.vb.pp("final_norm"))?;
        // Per block: attention 4(d² + d), two norms 4d, SwiGLU 3·d·hidden (+ 2·hidden + d biases).
        let ff_bias = if kw.bias { 2 * hidden + d } else { 0 };
        let per_block = 4 * (d * d + d) + 4 * d + 3 * d * hidden + ff_bias;
        Ok(SwiGLUPreLNTransformerLayers {
            blocks,
            final_norm,
            n_params: spec.n_blocks * per_block + 2 * d,
        })
    }
}

impl TransformerLayers for SwiGLUPreLNTransformerLayers {
    fn forward_t(&self, seqs: &Tensor, masks: &AttentionMasks, train: bool) -> Result<Tensor> {
        let mut x = seqs.clone();
        for block in &self.blocks {
            x = block.forward_t(&x, masks.attn_bias.as_ref(), train)?;
        }
        let x = self.final_norm.forward(&x)?;
        Ok(x.broadcast_mul(&masks.timeline_mask)?)
    }

    fn n_params(&self) -> Option<usize> {
        Some(self.n_params)
    }
}

fn build(ctx: &BuildContext<'_>, kwargs: &Value) -> Result<Box<dyn TransformerLayers>> {
    let kw: SwiGLUKwargs = decode_kwargs(ComponentKind::TransformerLayers, NAME, kwargs)?;
    Ok(Box::new(SwiGLUPreLNTransformerLayers::new(ctx, &kw)?))
}

recblocks_core::register! {
    TransformerLayersRegistration {
        name: NAME,
        summary: "pre-LN transformer blocks with a SwiGLU feed-forward and a final layer norm",
        kwargs: SwiGLUKwargs,
        build: build,
    }
}

// The symbol `recblocks --plugin` looks for.
recblocks_core::export_plugin!();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_hidden_width_matches_a_4d_gelu_feed_forward() {
        let kw = SwiGLUKwargs::default();
        assert_eq!(kw.hidden(64), 176);
        assert_eq!(kw.hidden(6), 16);
        let kw = SwiGLUKwargs {
            ff_hidden_factors: Some(10),
            bias: true,
        };
        assert_eq!(kw.hidden(64), 10);
    }
}
