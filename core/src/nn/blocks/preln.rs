//! The pre-LN block: port of RecTools' `PreLNTransformerLayer`
//! (`rectools/models/nn/transformers/net_blocks.py`, docs/rectools.md §3), BERT4Rec's default block.
//!
//! `h = LN1(x); x = x + Drop1(MHA(h, h, h)); x = x + Drop2(FF(LN2(x))); x = Drop3(x)`, with a
//! GELU (exact erf) feed-forward of width `m·d`. It does no timeline masking: BERT4Rec relies on
//! the key padding mask.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::LAYER_NORM_EPS;
use crate::{
    context::SharedRng,
    nn::{Activation, Dropout, LayerNorm, MultiHeadAttention, PointWiseFeedForward},
    Result,
};

/// One pre-LN block: `multi_head_attn`, `layer_norm_1`, `layer_norm_2`, `feed_forward`
/// (point-wise d → m·d → d, GELU, with bias), and three dropouts.
#[derive(Debug, Clone)]
pub struct PreLNTransformerLayer {
    pub(crate) multi_head_attn: MultiHeadAttention,
    pub(crate) layer_norm_1: LayerNorm,
    pub(crate) dropout_1: Dropout,
    pub(crate) layer_norm_2: LayerNorm,
    pub(crate) feed_forward: PointWiseFeedForward,
    pub(crate) dropout_2: Dropout,
    pub(crate) dropout_3: Dropout,
}

impl PreLNTransformerLayer {
    /// A block of width `d` with feed-forward width `ff_factors_multiplier · d`.
    pub fn new(
        d: usize,
        n_heads: usize,
        dropout_rate: f64,
        ff_factors_multiplier: usize,
        vb: &VarBuilder,
        rng: SharedRng,
    ) -> Result<Self> {
        let drop = || Dropout::new(dropout_rate, rng.clone());
        Ok(PreLNTransformerLayer {
            multi_head_attn: MultiHeadAttention::new(
                d,
                n_heads,
                dropout_rate,
                &vb.pp("multi_head_attn"),
                rng.clone(),
            )?,
            layer_norm_1: LayerNorm::new(d, LAYER_NORM_EPS, &vb.pp("layer_norm_1"))?,
            dropout_1: drop(),
            layer_norm_2: LayerNorm::new(d, LAYER_NORM_EPS, &vb.pp("layer_norm_2"))?,
            feed_forward: PointWiseFeedForward::new(
                d,
                ff_factors_multiplier * d,
                dropout_rate,
                Activation::Gelu,
                true,
                &vb.pp("feed_forward"),
                rng.clone(),
            )?,
            dropout_2: drop(),
            dropout_3: drop(),
        })
    }

    /// Applies the block to `x` `[B, L, d]` under the additive attention bias: the fused block
    /// ([`crate::nn::fused`]) on the CPU, one node (`nn::block_node`) on a GPU under a
    /// trainer's parameter-gradient scope, else [`forward_generic_t`](Self::forward_generic_t).
    pub fn forward_t(&self, x: &Tensor, attn_bias: Option<&Tensor>, train: bool) -> Result<Tensor> {
        if crate::nn::fused::usable(x)
            && crate::nn::fused::supports_bias(attn_bias)
            && crate::nn::fused::preln::fused_act(self.feed_forward.activation).is_some()
        {
            return crate::nn::fused::preln::forward_t(self, x, attn_bias, train);
        }
        if crate::nn::fused::preln::fused_act(self.feed_forward.activation).is_some() {
            let params = || crate::nn::block_node::preln::params(self);
            if let Some(c) = crate::nn::block_node::writer_for(x, params, attn_bias) {
                return Ok(crate::nn::block_node::preln::forward_t(
                    self, x, attn_bias, train, c,
                )?);
            }
        }
        self.forward_generic_t(x, attn_bias, train)
    }

    /// The block composed from candle ops (the reference for the fused block, and the path on
    /// other devices). Draws the same dropout masks as the fused block.
    pub fn forward_generic_t(
        &self,
        x: &Tensor,
        attn_bias: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let h = self.layer_norm_1.forward(x)?;
        let a = self
            .multi_head_attn
            .forward_t(&h, &h, &h, attn_bias, train)?;
        let x = (x + self.dropout_1.forward_t(&a, train)?)?;
        let f = self
            .feed_forward
            .forward_t(&self.layer_norm_2.forward(&x)?, train)?;
        let x = (x + self.dropout_2.forward_t(&f, train)?)?;
        self.dropout_3.forward_t(&x, train)
    }

    /// The eval-mode output at the last position only, `[B, 1, d]`, equal to
    /// `forward_t(x, attn_bias, false)` there: keys and values still come from every position,
    /// the query, residuals and feed-forward from the last. `last_query_bias` is the attention
    /// bias's last query row ([`crate::components::AttentionMasks::last_query_bias`]).
    ///
    /// On the CPU the fused form computes it ([`crate::nn::fused`]) unless `x` is tracked by
    /// autograd or the activation has no fused form; it builds no graph.
    pub fn forward_last(&self, x: &Tensor, last_query_bias: Option<&Tensor>) -> Result<Tensor> {
        if crate::nn::fused::usable(x)
            && crate::nn::fused::supports_bias(last_query_bias)
            && crate::nn::fused::preln::fused_act(self.feed_forward.activation).is_some()
            && !x.track_op()
        {
            return crate::nn::fused::preln::forward_last(self, x, last_query_bias);
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
        let h = self.layer_norm_1.forward(x)?;
        let h_last = crate::components::last_position(&h)?;
        let a = self
            .multi_head_attn
            .forward_t(&h_last, &h, &h, last_query_bias, false)?;
        let x = (crate::components::last_position(x)? + a)?;
        let f = self
            .feed_forward
            .forward_t(&self.layer_norm_2.forward(&x)?, false)?;
        Ok((x + f)?)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{assert_close, set, store, zero_projection_weights};
    use super::*;
    use candle_core::Device;

    #[test]
    fn zeroed_projections_leave_the_input_plus_output_biases() -> Result<()> {
        // Every projection zero: attention gives its output bias bo, the feed-forward its output
        // bias b2, and both residuals carry x itself: out = x + bo + b2 (no final norm).
        let (varmap, vb) = store(0);
        let block = PreLNTransformerLayer::new(4, 2, 0.0, 2, &vb, SharedRng::new(7))?;
        zero_projection_weights(&varmap)?;
        set(
            &varmap,
            "multi_head_attn.out_proj.bias",
            &Tensor::new(&[1f32, 0., -1., 0.5], &Device::Cpu)?,
        )?;
        set(
            &varmap,
            "feed_forward.ff_linear_2.bias",
            &Tensor::new(&[0.25f32, 0.25, 0., -2.], &Device::Cpu)?,
        )?;
        let x = Tensor::new(&[[[1f32, 2., 4., 7.], [-1., 0., 0.5, 3.]]], &Device::Cpu)?;
        let got = block
            .forward_t(&x, None, false)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let expected = [2.25, 2.25, 3.0, 5.5, 0.25, 0.25, -0.5, 1.5];
        assert_close(&got, &expected, 1e-6);
        Ok(())
    }

    #[test]
    fn block_parameter_count_grows_with_the_multiplier() -> Result<()> {
        // (4 + 2m)d² + (9 + m)d (docs/rectools.md §6).
        for m in [1usize, 4] {
            let (varmap, vb) = store(1);
            PreLNTransformerLayer::new(8, 2, 0.1, m, &vb, SharedRng::new(7))?;
            let n: usize = varmap.all_vars().iter().map(|v| v.elem_count()).sum();
            assert_eq!(n, (4 + 2 * m) * 64 + (9 + m) * 8);
        }
        Ok(())
    }

    #[test]
    fn forward_last_is_the_last_position_of_the_full_pass() -> Result<()> {
        // Random weights (seeded init) and dropout 0.2, which eval mode must switch off in both.
        let (_varmap, vb) = store(3);
        let block = PreLNTransformerLayer::new(8, 2, 0.2, 4, &vb, SharedRng::new(7))?;
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
        let block = PreLNTransformerLayer::new(8, 2, 0.2, 4, &vb, SharedRng::new(7))?;
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
