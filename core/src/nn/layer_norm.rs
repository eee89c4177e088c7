//! Layer normalisation from differentiable ops (candle's fused `LayerNorm` has no backward).
//! torch `nn.LayerNorm(d, eps)`: biased variance, weight 1 and bias 0 at init.

use candle_core::{Tensor, D};
use candle_nn::VarBuilder;

use crate::{nn::init, Result};

/// `y = (x − mean) / sqrt(var + eps) · weight + bias` over the last dimension.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// A layer norm of width `d` with parameters `{vb}.weight`, `{vb}.bias`.
    pub fn new(d: usize, eps: f64, vb: &VarBuilder) -> Result<Self> {
        Ok(LayerNorm {
            weight: vb.get_with_hints(d, "weight", init::ONES)?,
            bias: vb.get_with_hints(d, "bias", init::ZEROS)?,
            eps,
        })
    }

    /// A layer norm over given tensors (tests, imports).
    pub fn from_tensors(weight: Tensor, bias: Tensor, eps: f64) -> Self {
        LayerNorm { weight, bias, eps }
    }

    /// Normalises `x` over its last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centered.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        Ok(normed
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn normalises_by_biased_variance_with_eps() -> Result<()> {
        // x = [1, 2, 3, 6]: mean 3, biased var = (4 + 1 + 0 + 9) / 4 = 3.5.
        let dev = Device::Cpu;
        let x = Tensor::new(&[[1f32, 2., 3., 6.]], &dev)?;
        let w = Tensor::new(&[1f32, 2., 1., 1.], &dev)?;
        let b = Tensor::new(&[0f32, 0., 1., 0.], &dev)?;
        let ln = LayerNorm::from_tensors(w, b, 1e-5);
        let y = ln.forward(&x)?.to_vec2::<f32>()?;
        let s = (3.5f64 + 1e-5).sqrt();
        let expected = [-2.0 / s, 2.0 * (-1.0 / s), 1.0, 3.0 / s];
        for (a, e) in y[0].iter().zip(expected) {
            assert!((*a as f64 - e).abs() < 1e-6, "{a} vs {e}");
        }
        Ok(())
    }

    #[test]
    fn has_a_backward_pass() -> Result<()> {
        let dev = Device::Cpu;
        let w = candle_core::Var::new(&[1f32, 1., 1.], &dev)?;
        let b = candle_core::Var::new(&[0f32, 0., 0.], &dev)?;
        let ln = LayerNorm::from_tensors(w.as_tensor().clone(), b.as_tensor().clone(), 1e-5);
        let x = Tensor::new(&[[1f32, 2., 4.]], &dev)?;
        let y = ln.forward(&x)?;
        let loss = (y.get(0)?.get(2)? * 1.0)?;
        let grads = loss.backward()?;
        assert!(grads.get(&w).is_some() && grads.get(&b).is_some());
        Ok(())
    }
}
