//! The SASRec block: port of RecTools' `SASRecTransformerLayer`
//! (`rectools/models/nn/transformers/sasrec.py`, docs/rectools.md §3), the SASRec authors' block.
//!
//! Not a standard pre-LN block: keys and values come from the un-normalised input and both
//! residuals start from normalised tensors. The stack around it (timeline masking before every
//! block and after the last, final LayerNorm of eps [`LAST_LAYER_NORM_EPS`]) belongs to whoever
//! stacks the blocks.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::LAYER_NORM_EPS;
use crate::nn::block_node::sasrec as block_node;
use crate::{
    context::SharedRng,
    nn::{Activation, Dropout, LayerNorm, MultiHeadAttention, PointWiseFeedForward},
    Result,
};

/// Epsilon of the `last_layernorm` that ends a stack of SASRec blocks.
pub const LAST_LAYER_NORM_EPS: f64 = 1e-8;

/// One SASRec block: `multi_head_attn`, `q_layer_norm`, `ff_layer_norm`, `feed_forward`
/// (point-wise d → d → d, ReLU, with bias).
///
/// `q = LN_q(x); x = q + MHA(q, x, x); f = LN_ff(x); out = Dropout(FF(f)) + f`.
#[derive(Debug, Clone)]
pub struct SASRecTransformerLayer {
    pub(crate) multi_head_attn: MultiHeadAttention,
    pub(crate) q_layer_norm: LayerNorm,
    pub(crate) ff_layer_norm: LayerNorm,
    pub(crate) feed_forward: PointWiseFeedForward,
    pub(crate) dropout: Dropout,
}

impl SASRecTransformerLayer {
    /// A block of width `d` with parameters under `vb`.
    pub fn new(
        d: usize,
        n_heads: usize,
        dropout_rate: f64,
        vb: &VarBuilder,
        rng: SharedRng,
    ) -> Result<Self> {
        Ok(SASRecTransformerLayer {
            multi_head_attn: MultiHeadAttention::new(
                d,
                n_heads,
                dropout_rate,
                &vb.pp("multi_head_attn"),
                rng.clone(),
            )?,
            q_layer_norm: LayerNorm::new(d, LAYER_NORM_EPS, &vb.pp("q_layer_norm"))?,
            ff_layer_norm: LayerNorm::new(d, LAYER_NORM_EPS, &vb.pp("ff_layer_norm"))?,
            feed_forward: PointWiseFeedForward::new(
                d,
                d,
                dropout_rate,
                Activation::Relu,
                true,
                &vb.pp("feed_forward"),
                rng.clone(),
            )?,
            dropout: Dropout::new(dropout_rate, rng),
        })
    }

    /// Applies the block to `x` `[B, L, d]` under the additive attention bias: the fused block
    /// ([`crate::nn::fused`]) on the CPU, one node (`nn::block_node`) on a GPU under a
    /// trainer's parameter-gradient scope, else [`forward_generic_t`](Self::forward_generic_t).
    pub fn forward_t(&self, x: &Tensor, attn_bias: Option<&Tensor>, train: bool) -> Result<Tensor> {
        if crate::nn::fused::usable(x) && crate::nn::fused::supports_bias(attn_bias) {
            return crate::nn::fused::sasrec::forward_t(self, x, None, attn_bias, train);
        }
        if let Some(c) = self.block_node_writer(x, attn_bias) {
            return Ok(block_node::forward_t(self, x, None, attn_bias, train, c)?);
        }
        self.forward_generic_t(x, attn_bias, train)
    }

    /// Where the block runs as one node on a GPU (`nn::block_node`), its collector.
    fn block_node_writer(
        &self,
        x: &Tensor,
        attn_bias: Option<&Tensor>,
    ) -> Option<std::sync::Arc<crate::nn::param_grads::Collector>> {
        crate::nn::block_node::writer_for(x, || block_node::params(self), attn_bias)
    }

    /// `forward_t(x ⊙ timeline_mask, ...)` (`timeline_mask` `[B, L, 1]`), as the SASRec stack
    /// applies every block; the fused block masks its input itself, with no separate node.
    pub fn forward_masked_t(
        &self,
        x: &Tensor,
        timeline_mask: &Tensor,
        attn_bias: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        if crate::nn::fused::usable(x) && crate::nn::fused::supports_bias(attn_bias) {
            return crate::nn::fused::sasrec::forward_t(
                self,
                x,
                Some(timeline_mask),
                attn_bias,
                train,
            );
        }
        if let Some(c) = self.block_node_writer(x, attn_bias) {
            return Ok(block_node::forward_t(
                self,
                x,
                Some(timeline_mask),
                attn_bias,
                train,
                c,
            )?);
        }
        self.forward_generic_t(&x.broadcast_mul(timeline_mask)?, attn_bias, train)
    }

    /// The block composed from candle ops (the reference for the fused block, and the path on
    /// other devices). Draws the same dropout masks as the fused block.
    pub fn forward_generic_t(
        &self,
        x: &Tensor,
        attn_bias: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let q = self.q_layer_norm.forward(x)?;
        let a = self.multi_head_attn.forward_t(&q, x, x, attn_bias, train)?;
        let x = (q + a)?;
        let f = self.ff_layer_norm.forward(&x)?;
        let ff = self.feed_forward.forward_t(&f, train)?;
        Ok((self.dropout.forward_t(&ff, train)? + f)?)
    }

    /// The eval-mode output at the last position only, `[B, 1, d]`, equal to
    /// `forward_t(x, attn_bias, false)` there: keys and values still come from every position of
    /// `x`, the query, residuals and feed-forward from the last. `last_query_bias` is the
    /// attention bias's last query row ([`crate::components::AttentionMasks::last_query_bias`]).
    ///
    /// On the CPU the fused form computes it ([`crate::nn::fused`]) unless `x` is tracked by
    /// autograd; it builds no graph.
    pub fn forward_last(&self, x: &Tensor, last_query_bias: Option<&Tensor>) -> Result<Tensor> {
        if crate::nn::fused::usable(x)
            && crate::nn::fused::supports_bias(last_query_bias)
            && !x.track_op()
        {
            return crate::nn::fused::sasrec::forward_last(self, x, last_query_bias);
        }
        self.forward_last_generic(x, last_query_bias)
    }

    /// [`forward_last`](Self::forward_last) composed from candle ops (the reference for the fused
    /// form, and the path on other devices).
    pub fn forward_last_generic(
        &self,
        x: &Tensor,
        last_query_bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        let x_last = crate::components::last_position(x)?;
        let q = self.q_layer_norm.forward(&x_last)?;
        let a = self
            .multi_head_attn
            .forward_t(&q, x, x, last_query_bias, false)?;
        let x = (q + a)?;
        let f = self.ff_layer_norm.forward(&x)?;
        Ok((self.feed_forward.forward_t(&f, false)? + f)?)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{assert_close, ln, names, set, store, zero_projection_weights};
    use super::*;
    use candle_core::Device;

    #[test]
    fn block_residuals_start_from_the_normalised_tensors() -> Result<()> {
        // With attention and feed-forward zeroed except their output biases bo and b2, one block
        // gives out = LN_ff(LN_q(x) + bo) + b2: neither residual carries x itself.
        let (varmap, vb) = store(0);
        let block = SASRecTransformerLayer::new(4, 2, 0.0, &vb, SharedRng::new(7))?;
        zero_projection_weights(&varmap)?;
        let bo = [1.0f64, -1.0, 2.0, 0.0];
        let b2 = [0.5f64, 0.25, -0.5, 3.0];
        set(
            &varmap,
            "multi_head_attn.out_proj.bias",
            &Tensor::new(&[1f32, -1., 2., 0.], &Device::Cpu)?,
        )?;
        set(
            &varmap,
            "feed_forward.ff_linear_2.bias",
            &Tensor::new(&[0.5f32, 0.25, -0.5, 3.], &Device::Cpu)?,
        )?;
        let x = Tensor::new(&[[[1f32, 2., 4., 7.]]], &Device::Cpu)?;
        let got = block
            .forward_t(&x, None, false)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let q = ln(&[1.0, 2.0, 4.0, 7.0]);
        let x1: Vec<f64> = q.iter().zip(bo).map(|(a, b)| a + b).collect();
        let expected: Vec<f64> = ln(&x1).iter().zip(b2).map(|(a, b)| a + b).collect();
        assert_close(&got, &expected, 1e-5);
        Ok(())
    }

    #[test]
    fn block_parameters_follow_rectools_names_and_count() -> Result<()> {
        // 6d² + 10d: four d×d attention projections with biases, a d→d→d feed-forward with
        // biases, two norms (docs/rectools.md §6).
        let (varmap, vb) = store(1);
        SASRecTransformerLayer::new(8, 2, 0.1, &vb, SharedRng::new(7))?;
        let n: usize = varmap.all_vars().iter().map(|v| v.elem_count()).sum();
        assert_eq!(n, 6 * 64 + 10 * 8);
        assert_eq!(
            names(&varmap),
            [
                "feed_forward.ff_linear_1.bias",
                "feed_forward.ff_linear_1.weight",
                "feed_forward.ff_linear_2.bias",
                "feed_forward.ff_linear_2.weight",
                "ff_layer_norm.bias",
                "ff_layer_norm.weight",
                "multi_head_attn.k_proj.bias",
                "multi_head_attn.k_proj.weight",
                "multi_head_attn.out_proj.bias",
                "multi_head_attn.out_proj.weight",
                "multi_head_attn.q_proj.bias",
                "multi_head_attn.q_proj.weight",
                "multi_head_attn.v_proj.bias",
                "multi_head_attn.v_proj.weight",
                "q_layer_norm.bias",
                "q_layer_norm.weight",
            ]
        );
        Ok(())
    }

    #[test]
    fn forward_last_is_the_last_position_of_the_full_pass() -> Result<()> {
        // Random weights (seeded init) and dropout 0.2, which eval mode must switch off in both.
        let (_varmap, vb) = store(3);
        let block = SASRecTransformerLayer::new(8, 2, 0.2, &vb, SharedRng::new(7))?;
        super::super::test_util::check_last_position(
            &|x, bias| block.forward_t(x, bias, false),
            &|x, bias| block.forward_last(x, bias),
            8,
        )
    }

    #[test]
    fn fused_and_generic_forward_last_agree_with_the_generic_full_pass() -> Result<()> {
        // Each form of `forward_last` against the full pass composed from candle ops.
        let (_varmap, vb) = store(5);
        let block = SASRecTransformerLayer::new(8, 2, 0.2, &vb, SharedRng::new(7))?;
        let fused = |x: &Tensor, bias: Option<&Tensor>| block.forward_last(x, bias);
        let generic = |x: &Tensor, bias: Option<&Tensor>| block.forward_last_generic(x, bias);
        let forms: [super::super::test_util::BlockFn; 2] = [&fused, &generic];
        for last in forms {
            super::super::test_util::check_last_position(
                &|x, bias| block.forward_generic_t(x, bias, false),
                last,
                8,
            )?;
        }
        Ok(())
    }
}
