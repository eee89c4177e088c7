//! Dropout with masks drawn from the model's seeded stream (candle's `ops::dropout` uses an
//! unseedable generator). Inverted dropout, as torch: kept values are scaled by 1 / (1 − p).

use candle_core::Tensor;
use rand::Rng;

use crate::{context::SharedRng, Result};

/// Dropout with probability `p`; acts only when `train` is true.
#[derive(Debug, Clone)]
pub struct Dropout {
    p: f64,
    rng: SharedRng,
}

impl Dropout {
    /// Dropout with probability `p` drawing from `rng`.
    pub fn new(p: f64, rng: SharedRng) -> Self {
        Dropout { p, rng }
    }

    /// The drop probability.
    pub fn p(&self) -> f64 {
        self.p
    }

    /// Zeroes each element with probability `p` and scales the rest by 1 / (1 − p) when `train`;
    /// the identity otherwise.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if !train || self.p <= 0.0 {
            return Ok(x.clone());
        }
        let keep = 1.0 - self.p;
        let scale = (1.0 / keep) as f32;
        let n = x.elem_count();
        let mask: Vec<f32> = {
            let mut rng = self.rng.lock();
            (0..n)
                .map(|_| {
                    if rng.random::<f64>() < keep {
                        scale
                    } else {
                        0.0
                    }
                })
                .collect()
        };
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        Ok(x.mul(&mask)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn eval_is_identity_and_train_scales_kept_values() -> Result<()> {
        let x = Tensor::ones((1000,), candle_core::DType::F32, &Device::Cpu)?;
        let d = Dropout::new(0.25, SharedRng::new(1));
        assert_eq!(d.forward_t(&x, false)?.to_vec1::<f32>()?, vec![1f32; 1000]);
        let y = d.forward_t(&x, true)?.to_vec1::<f32>()?;
        assert!(y
            .iter()
            .all(|v| *v == 0.0 || (*v - 1.0 / 0.75).abs() < 1e-6));
        let dropped = y.iter().filter(|v| **v == 0.0).count();
        assert!(
            (180..320).contains(&dropped),
            "dropped {dropped} of 1000 at p = 0.25"
        );
        Ok(())
    }

    #[test]
    fn same_seed_same_mask() -> Result<()> {
        let x = Tensor::ones((64,), candle_core::DType::F32, &Device::Cpu)?;
        let a = Dropout::new(0.5, SharedRng::new(7)).forward_t(&x, true)?;
        let b = Dropout::new(0.5, SharedRng::new(7)).forward_t(&x, true)?;
        assert_eq!(a.to_vec1::<f32>()?, b.to_vec1::<f32>()?);
        Ok(())
    }
}
