//! Feed-forward blocks of RecTools' `net_blocks.py`:
//! `PointWiseFeedForward`: `ff_linear_2(Dropout(act(ff_linear_1(x))))`, and
//! `SwigluFeedForward`: `ff_linear_2(Dropout(SiLU(ff_linear_1(x)) ⊙ ff_linear_3(x)))`.

use candle_core::Tensor;
use candle_nn::{Module, VarBuilder};

use crate::{
    context::SharedRng,
    nn::{linear, Dropout, Linear},
    Result,
};

/// Activation of a point-wise feed-forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// max(0, x).
    Relu,
    /// Exact GELU, x·Φ(x) with the erf form (torch `nn.GELU()`).
    Gelu,
    /// x·σ(x).
    Silu,
}

impl Activation {
    /// Applies the activation.
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Activation::Relu => x.relu()?,
            Activation::Gelu => x.gelu_erf()?,
            Activation::Silu => candle_nn::ops::silu(x)?,
        })
    }
}

/// `ff_linear_2(Dropout(act(ff_linear_1(x))))`, widths d → hidden → d.
#[derive(Debug, Clone)]
pub struct PointWiseFeedForward {
    pub(crate) ff_linear_1: Linear,
    pub(crate) ff_linear_2: Linear,
    pub(crate) activation: Activation,
    pub(crate) dropout: Dropout,
}

impl PointWiseFeedForward {
    /// A feed-forward d → hidden → d with parameters `ff_linear_1`, `ff_linear_2`.
    pub fn new(
        d: usize,
        hidden: usize,
        dropout_rate: f64,
        activation: Activation,
        bias: bool,
        vb: &VarBuilder,
        rng: SharedRng,
    ) -> Result<Self> {
        Ok(PointWiseFeedForward {
            ff_linear_1: linear(d, hidden, bias, &vb.pp("ff_linear_1"))?,
            ff_linear_2: linear(hidden, d, bias, &vb.pp("ff_linear_2"))?,
            activation,
            dropout: Dropout::new(dropout_rate, rng),
        })
    }

    /// Applies the block.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let pre = self.ff_linear_1.forward(x)?;
        if crate::nn::fused::gpu_composition(pre.device()) {
            // On a GPU the activation and dropout are one op (two launches instead of a dozen).
            if let Some(h) = crate::nn::activation_dropout::activation_dropout(
                &pre,
                self.activation,
                &self.dropout,
                train,
            )? {
                return Ok(self.ff_linear_2.forward(&h)?);
            }
        }
        let h = self.activation.apply(&pre)?;
        let h = self.dropout.forward_t(&h, train)?;
        Ok(self.ff_linear_2.forward(&h)?)
    }
}

/// `ff_linear_2(Dropout(SiLU(ff_linear_1(x)) ⊙ ff_linear_3(x)))`, widths d → hidden → d.
#[derive(Debug, Clone)]
pub struct SwigluFeedForward {
    pub(crate) ff_linear_1: Linear,
    pub(crate) ff_linear_2: Linear,
    pub(crate) ff_linear_3: Linear,
    pub(crate) dropout: Dropout,
}

impl SwigluFeedForward {
    /// A SwiGLU feed-forward with parameters `ff_linear_1`, `ff_linear_2`, `ff_linear_3`.
    pub fn new(
        d: usize,
        hidden: usize,
        dropout_rate: f64,
        bias: bool,
        vb: &VarBuilder,
        rng: SharedRng,
    ) -> Result<Self> {
        Ok(SwigluFeedForward {
            ff_linear_1: linear(d, hidden, bias, &vb.pp("ff_linear_1"))?,
            ff_linear_2: linear(hidden, d, bias, &vb.pp("ff_linear_2"))?,
            ff_linear_3: linear(d, hidden, bias, &vb.pp("ff_linear_3"))?,
            dropout: Dropout::new(dropout_rate, rng),
        })
    }

    /// Applies the block.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let gate = candle_nn::ops::silu(&self.ff_linear_1.forward(x)?)?;
        let h = (gate * self.ff_linear_3.forward(x)?)?;
        let h = self.dropout.forward_t(&h, train)?;
        Ok(self.ff_linear_2.forward(&h)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn gelu_is_the_exact_erf_form() -> Result<()> {
        // torch.nn.GELU()(tensor([-1., 0.5, 2.])) = [-0.158655, 0.345731, 1.954500]
        let x = Tensor::new(&[-1f32, 0.5, 2.0], &Device::Cpu)?;
        let y = Activation::Gelu.apply(&x)?.to_vec1::<f32>()?;
        for (a, e) in y.iter().zip([-0.158_655_3f32, 0.345_731_1, 1.954_499_7]) {
            assert!((a - e).abs() < 1e-6, "{a} vs {e}");
        }
        Ok(())
    }
}
