//! Softmax over the last dimension with a fused backward (attention weights).
//!
//! `torch.softmax(x, -1)`. candle's `softmax_last_dim` is fused but has no backward, and its
//! composed `softmax` keeps four full-size buffers per direction. Here the forward is one pass per
//! row (max, `exp`, normalise; libm `exp`, so masked `-inf` scores give exactly 0) and the backward
//! is `dx = y·(dy − Σ dy·y)` from the saved output. [`composed`] is the reference.

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::cpu_slice::{storage_f32, with_f32};

/// Softmax over the last dimension; fused on the CPU for f32.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if (matches!(x.device(), Device::Cpu) || x.device().is_cuda()) && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1(FusedSoftmax)
    } else {
        composed(x)
    }
}

/// candle's composed softmax (reference, non-CPU path).
pub fn composed(x: &Tensor) -> Result<Tensor> {
    candle_nn::ops::softmax(x, D::Minus1)
}

/// Rows shorter than this are batched so that each parallel task has some work.
const MIN_TASK: usize = 4096;

fn last_dim(l: &Layout) -> usize {
    l.dims().last().copied().unwrap_or(1).max(1)
}

struct FusedSoftmax;

impl CustomOp1 for FusedSoftmax {
    fn name(&self) -> &'static str {
        "fused-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = storage_f32(s, l, "softmax: input")?;
        let n = last_dim(l);
        let mut y = vec![0f32; x.len()];
        let task = n * MIN_TASK.div_ceil(n);
        y.par_chunks_mut(task)
            .zip(x.par_chunks(task))
            .for_each(|(yt, xt)| {
                for (yr, xr) in yt.chunks_exact_mut(n).zip(xt.chunks_exact(n)) {
                    let mx = xr.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0f32;
                    for (o, &v) in yr.iter_mut().zip(xr) {
                        *o = (v - mx).exp();
                        sum += *o;
                    }
                    for o in yr.iter_mut() {
                        *o /= sum;
                    }
                }
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::nn::cuda::softmax(s, l)
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        if res.device().is_cuda() {
            return Ok(Some(
                res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGrad)?,
            ));
        }
        let n = res.dims().last().copied().unwrap_or(1).max(1);
        let dx = with_f32(res, |y| with_f32(grad, |g| softmax_grad(y, g, n)))??;
        Ok(Some(Tensor::from_vec(dx, res.shape(), res.device())?))
    }
}

/// The softmax's backward pass as a device op over `(y, dy)` (CUDA only; the CPU backward calls
/// [`softmax_grad`] directly).
struct SoftmaxGrad;

impl candle_core::CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "fused-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = storage_f32(s1, l1, "softmax backward: output")?;
        let g = storage_f32(s2, l2, "softmax backward: gradient")?;
        Ok((
            CpuStorage::F32(softmax_grad(y, g, last_dim(l1))),
            l1.shape().clone(),
        ))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::nn::cuda::softmax_backward((s1, l1), (s2, l2))
    }
}

/// `dx = y·(dy − Σ dy·y)` per row of `n`.
fn softmax_grad(y: &[f32], g: &[f32], n: usize) -> Vec<f32> {
    let mut dx = vec![0f32; y.len()];
    let task = n * MIN_TASK.div_ceil(n);
    dx.par_chunks_mut(task)
        .zip(y.par_chunks(task).zip(g.par_chunks(task)))
        .for_each(|(dt, (yt, gt))| {
            for ((dr, yr), gr) in dt
                .chunks_exact_mut(n)
                .zip(yt.chunks_exact(n))
                .zip(gt.chunks_exact(n))
            {
                let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
                for ((o, &yv), &gv) in dr.iter_mut().zip(yr).zip(gr) {
                    *o = yv * (gv - dot);
                }
            }
        });
    dx
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    #[test]
    fn fused_equals_composed_values_and_gradients_with_masked_scores() -> Result<()> {
        let dev = Device::Cpu;
        let inf = f32::NEG_INFINITY;
        let vals = vec![
            1.0f32, 2.0, 3.0, inf, //
            0.5, inf, -1.0, 2.0, //
            -3.0, 0.0, 3.0, 1.0, //
            7.0, 7.0, inf, inf,
        ];
        let up = Tensor::new(
            &[
                [0.3f32, -1.0, 2.0, 0.5],
                [1.0, 1.0, -2.0, 0.25],
                [0.0, 1.5, -0.5, 1.0],
                [2.0, -1.0, 0.5, 0.5],
            ],
            &dev,
        )?
        .reshape((2, 2, 4))?;
        let run = |fused: bool| -> Result<(Vec<f32>, Vec<f32>)> {
            let x = Var::from_vec(vals.clone(), (2, 2, 4), &dev)?;
            let y = if fused {
                softmax_last_dim(x.as_tensor())?
            } else {
                composed(x.as_tensor())?
            };
            let grads = y.mul(&up)?.sum_all()?.backward()?;
            let g = grads
                .get(x.as_tensor())
                .ok_or_else(|| candle_core::Error::Msg("no grad".into()))?;
            Ok((y.flatten_all()?.to_vec1()?, g.flatten_all()?.to_vec1()?))
        };
        let (yf, gf) = run(true)?;
        let (yc, gc) = run(false)?;
        for (a, b) in yf.iter().zip(&yc).chain(gf.iter().zip(&gc)) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        // Masked scores get exactly zero weight; row 3 splits evenly.
        assert_eq!(yf[3], 0.0);
        assert_eq!(&yf[12..16], &[0.5, 0.5, 0.0, 0.0]);
        Ok(())
    }
}
