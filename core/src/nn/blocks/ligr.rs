//! The LiGR block: port of RecTools' `LiGRLayer` (`rectools/models/nn/transformers/ligr.py`,
//! docs/rectools.md §3), the block of the "eSASRec" recipe (LiGR, arXiv 2502.03417).
//!
//! Pre-LN sub-layers whose outputs enter the residual stream through sigmoid gates computed from
//! the stream itself:
//! `x = x + σ(G1 x) ⊙ Drop1(MHA(LN1 x ×3)); x = x + σ(G2 x) ⊙ Drop2(FF(LN2 x))`. The stack
//! around it (no final norm, no timeline masking) lives in the plugins.

use candle_core::Tensor;
use candle_nn::{ops::sigmoid, Module, VarBuilder};

use super::LAYER_NORM_EPS;
use crate::{
    context::SharedRng,
    nn::{
        linear, Activation, Dropout, LayerNorm, Linear, MultiHeadAttention, PointWiseFeedForward,
        SwigluFeedForward,
    },
    Result,
};

/// The feed-forward activation of a LiGR block (RecTools' `ff_activation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiGRActivation {
    /// `ff_linear_2(Dropout(SiLU(ff_linear_1 x) ⊙ ff_linear_3 x))`.
    Swiglu,
    /// `ff_linear_2(Dropout(ReLU(ff_linear_1 x)))`.
    Relu,
    /// `ff_linear_2(Dropout(GELU(ff_linear_1 x)))`, exact GELU.
    Gelu,
}

impl LiGRActivation {
    /// The activation RecTools names `name` (`"swiglu"`, `"relu"`, `"gelu"`).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "swiglu" => Some(LiGRActivation::Swiglu),
            "relu" => Some(LiGRActivation::Relu),
            "gelu" => Some(LiGRActivation::Gelu),
            _ => None,
        }
    }
}

/// The feed-forward of a LiGR block (RecTools' `init_feed_forward`).
#[derive(Debug, Clone)]
pub enum LiGRFeedForward {
    /// SwiGLU, parameters `ff_linear_1`, `ff_linear_2`, `ff_linear_3`.
    Swiglu(SwigluFeedForward),
    /// Point-wise with ReLU or GELU, parameters `ff_linear_1`, `ff_linear_2`.
    PointWise(PointWiseFeedForward),
}

impl LiGRFeedForward {
    /// The feed-forward for `activation` at widths d → hidden → d.
    pub fn new(
        d: usize,
        hidden: usize,
        dropout_rate: f64,
        activation: LiGRActivation,
        bias: bool,
        vb: &VarBuilder,
        rng: SharedRng,
    ) -> Result<Self> {
        let point_wise = |act| {
            PointWiseFeedForward::new(d, hidden, dropout_rate, act, bias, vb, rng.clone())
                .map(LiGRFeedForward::PointWise)
        };
        match activation {
            LiGRActivation::Swiglu => Ok(LiGRFeedForward::Swiglu(SwigluFeedForward::new(
                d,
                hidden,
                dropout_rate,
                bias,
                vb,
                rng.clone(),
            )?)),
            LiGRActivation::Relu => point_wise(Activation::Relu),
            LiGRActivation::Gelu => point_wise(Activation::Gelu),
        }
    }

    /// Applies the feed-forward.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            LiGRFeedForward::Swiglu(f) => f.forward_t(x, train),
            LiGRFeedForward::PointWise(f) => f.forward_t(x, train),
        }
    }
}

/// One LiGR block: `multi_head_attn`, `layer_norm_1`, `layer_norm_2`, `feed_forward`,
/// `gating_linear_1`, `gating_linear_2` (both d → d with bias), and two dropouts.
#[derive(Debug, Clone)]
pub struct LiGRLayer {
    pub(crate) multi_head_attn: MultiHeadAttention,
    pub(crate) layer_norm_1: LayerNorm,
    pub(crate) dropout_1: Dropout,
    pub(crate) layer_norm_2: LayerNorm,
    pub(crate) feed_forward: LiGRFeedForward,
    pub(crate) dropout_2: Dropout,
    pub(crate) gating_linear_1: Linear,
    pub(crate) gating_linear_2: Linear,
}

impl LiGRLayer {
    /// A block of width `d` with a feed-forward of width `ff_factors_multiplier · d`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        d: usize,
        n_heads: usize,
        dropout_rate: f64,
        ff_factors_multiplier: usize,
        activation: LiGRActivation,
        bias_in_ff: bool,
        vb: &VarBuilder,
        rng: SharedRng,
    ) -> Result<Self> {
        Ok(LiGRLayer {
            multi_head_attn: MultiHeadAttention::new(
                d,
                n_heads,
                dropout_rate,
                &vb.pp("multi_head_attn"),
                rng.clone(),
            )?,
            layer_norm_1: LayerNorm::new(d, LAYER_NORM_EPS, &vb.pp("layer_norm_1"))?,
            dropout_1: Dropout::new(dropout_rate, rng.clone()),
            layer_norm_2: LayerNorm::new(d, LAYER_NORM_EPS, &vb.pp("layer_norm_2"))?,
            feed_forward: LiGRFeedForward::new(
                d,
                ff_factors_multiplier * d,
                dropout_rate,
                activation,
                bias_in_ff,
                &vb.pp("feed_forward"),
                rng.clone(),
            )?,
            dropout_2: Dropout::new(dropout_rate, rng),
            gating_linear_1: linear(d, d, true, &vb.pp("gating_linear_1"))?,
            gating_linear_2: linear(d, d, true, &vb.pp("gating_linear_2"))?,
        })
    }

    /// Applies the block to `x` `[B, L, d]` under the additive attention bias: the fused block
    /// ([`crate::nn::fused`]) on the CPU, else [`forward_generic_t`](Self::forward_generic_t).
    pub fn forward_t(&self, x: &Tensor, attn_bias: Option<&Tensor>, train: bool) -> Result<Tensor> {
        if crate::nn::fused::usable(x)
            && crate::nn::fused::supports_bias(attn_bias)
            && crate::nn::fused::ligr::supported(self)
        {
            return crate::nn::fused::ligr::forward_t(self, x, attn_bias, train);
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
        let gate = sigmoid(&self.gating_linear_1.forward(x)?)?;
        let x = (x + gate.mul(&self.dropout_1.forward_t(&a, train)?)?)?;
        let f = self
            .feed_forward
            .forward_t(&self.layer_norm_2.forward(&x)?, train)?;
        let gate = sigmoid(&self.gating_linear_2.forward(&x)?)?;
        Ok((&x + gate.mul(&self.dropout_2.forward_t(&f, train)?)?)?)
    }
}
