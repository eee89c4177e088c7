//! Fused softmax cross-entropy over a catalog, with its own backward pass.
//!
//! Ports `torch.nn.functional.cross_entropy(logits, y, ignore_index=0, reduction="none")` for
//! `[M, C]` logits. Composed from candle ops (`log_softmax`, `gather`, masking) the catalog loss
//! allocates about six `[M, C]` tensors forward and as many backward; here the forward is one
//! pass per row (max, then `Σ exp`) that keeps each row's log-sum-exp, and the backward is one
//! pass writing `g·(softmax − onehot)`. Rows run in parallel on rayon's pool.
//!
//! On devices other than the CPU the same function falls back to the composed candle ops.

use std::sync::{Arc, Mutex};

use candle_core::{
    CpuStorage, CustomOp2, CustomOp3, DType, Device, Error, Layout, Result, Shape, Tensor, D,
};
use rayon::prelude::*;

use super::{
    cpu_slice::{storage_f32, storage_u32},
    fast_exp,
};

/// Per-row cross-entropy `[M]` of `logits` `[M, C]` (f32) against `targets` `[M]` (u32 class
/// ids), with class 0 ignored: rows whose target is 0 give 0 and no gradient. Differentiable with
/// respect to `logits`.
pub fn softmax_cross_entropy_ignore_0(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (m, c) = logits.dims2()?;
    if targets.dims() != [m] {
        return Err(Error::Msg(format!(
            "softmax cross-entropy: logits are [{m}, {c}], so targets must be [{m}]; found {:?}",
            targets.dims()
        )));
    }
    let targets = targets.to_dtype(DType::U32)?;
    let fused_device = matches!(logits.device(), Device::Cpu) || logits.device().is_cuda();
    if !fused_device || logits.dtype() != DType::F32 {
        return composed(logits, &targets);
    }
    let op = FusedSoftmaxCe {
        log_sum_exp: Arc::new(Mutex::new(Vec::new())),
    };
    logits.contiguous()?.apply_op2(&targets.contiguous()?, op)
}

/// The same loss from candle's ops (reference and non-CPU path).
pub fn composed(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let y = targets.to_dtype(DType::U32)?;
    let log_probs = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let picked = log_probs
        .gather(&y.unsqueeze(D::Minus1)?.contiguous()?, D::Minus1)?
        .squeeze(D::Minus1)?;
    let ce = picked.neg()?;
    y.ne(0u32)?.where_cond(&ce, &ce.zeros_like()?)
}

/// The forward op; remembers each row's log-sum-exp for the backward.
struct FusedSoftmaxCe {
    log_sum_exp: Arc<Mutex<Vec<f32>>>,
}

fn check_targets(targets: &[u32], c: usize) -> Result<()> {
    match targets.iter().position(|&t| t as usize >= c) {
        Some(row) => Err(Error::Msg(format!(
            "softmax cross-entropy: row {row} has target {}, but there are only {c} classes",
            targets[row]
        ))),
        None => Ok(()),
    }
}

impl CustomOp2 for FusedSoftmaxCe {
    fn name(&self) -> &'static str {
        "fused-softmax-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (m, c) = l1.shape().dims2()?;
        let x = storage_f32(s1, l1, "softmax cross-entropy: logits")?;
        let t = storage_u32(s2, l2, "softmax cross-entropy: targets")?;
        check_targets(t, c)?;
        let mut ce = vec![0f32; m];
        let mut lse = vec![0f32; m];
        if c > 0 {
            ce.par_iter_mut()
                .zip(lse.par_iter_mut())
                .zip(x.par_chunks_exact(c))
                .zip(t.par_iter())
                .for_each(|(((ce, lse), row), &t)| {
                    if t == 0 {
                        return;
                    }
                    let mx = fast_exp::max(row);
                    let l = mx + fast_exp::sum_exp_shifted(row, mx).ln();
                    *lse = l;
                    *ce = l - row[t as usize];
                });
        }
        *self
            .log_sum_exp
            .lock()
            .map_err(|_| Error::Msg("softmax cross-entropy: poisoned state".into()))? = lse;
        Ok((CpuStorage::F32(ce), Shape::from(m)))
    }

    /// On a device the loss of a row whose target is outside the catalog is NaN (the kernel never
    /// reads out of bounds); the CPU op returns an error naming the row instead.
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::nn::cuda::softmax_cross_entropy((s1, l1), (s2, l2))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if logits.device().is_cuda() {
            // The device backward computes each row's log-sum-exp again.
            let grad_op = FusedSoftmaxCeGrad {
                log_sum_exp: Vec::new(),
            };
            let grad = logits.apply_op3_no_bwd(targets, &grad_res.contiguous()?, &grad_op)?;
            return Ok((Some(grad), None));
        }
        let lse = self
            .log_sum_exp
            .lock()
            .map_err(|_| Error::Msg("softmax cross-entropy: poisoned state".into()))?
            .clone();
        let grad_op = FusedSoftmaxCeGrad { log_sum_exp: lse };
        let grad = logits.apply_op3_no_bwd(targets, &grad_res.contiguous()?, &grad_op)?;
        Ok((Some(grad), None))
    }
}

/// The backward: `∂loss/∂logits[i, j] = g_i · (e^(x_ij − lse_i) − [j = t_i])`, 0 for ignored rows.
struct FusedSoftmaxCeGrad {
    log_sum_exp: Vec<f32>,
}

impl CustomOp3 for FusedSoftmaxCeGrad {
    fn name(&self) -> &'static str {
        "fused-softmax-cross-entropy-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (m, c) = l1.shape().dims2()?;
        let x = storage_f32(s1, l1, "softmax cross-entropy: logits")?;
        let t = storage_u32(s2, l2, "softmax cross-entropy: targets")?;
        let g = storage_f32(s3, l3, "softmax cross-entropy: upstream gradient")?;
        if self.log_sum_exp.len() != m || g.len() != m {
            return Err(Error::Msg(format!(
                "softmax cross-entropy backward: expected {m} rows, found {} saved and {} upstream",
                self.log_sum_exp.len(),
                g.len()
            )));
        }
        let mut out = vec![0f32; m * c];
        if c > 0 {
            out.par_chunks_exact_mut(c)
                .zip(x.par_chunks_exact(c))
                .zip(
                    t.par_iter()
                        .zip(g.par_iter())
                        .zip(self.log_sum_exp.par_iter()),
                )
                .for_each(|((o, row), ((&t, &g), &lse))| {
                    if t == 0 {
                        return;
                    }
                    fast_exp::scaled_exp_shifted(o, row, lse, g);
                    o[t as usize] -= g;
                });
        }
        Ok((CpuStorage::F32(out), Shape::from((m, c))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::nn::cuda::softmax_cross_entropy_backward((s1, l1), (s2, l2), (s3, l3))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol, "element {i}: {x} vs {y}");
        }
    }

    #[test]
    fn matches_hand_computed_values() -> Result<()> {
        // Row 0: logits [0, ln 2, ln 3], target 2: ce = ln(1 + 2 + 3) − ln 3 = ln 2.
        // Row 1: target 0 is ignored.
        let l2 = 2f32.ln();
        let l3 = 3f32.ln();
        let x = Tensor::new(&[[0f32, l2, l3], [5., -1., 2.]], &Device::Cpu)?;
        let t = Tensor::new(&[2u32, 0], &Device::Cpu)?;
        let ce = softmax_cross_entropy_ignore_0(&x, &t)?.to_vec1::<f32>()?;
        close(&ce, &[l2, 0.0], 1e-6);
        Ok(())
    }

    #[test]
    fn forward_and_gradient_equal_the_composed_ops() -> Result<()> {
        let dev = Device::Cpu;
        let (m, c) = (7, 53);
        let vals: Vec<f32> = (0..m * c)
            .map(|i| (((i * 7919) % 997) as f32 / 997.0 - 0.5) * 12.0)
            .collect();
        let targets = Tensor::new(&[3u32, 0, 52, 1, 17, 0, 40], &dev)?;
        let upstream = Tensor::new(&[0.5f32, 2.0, -1.0, 1.0, 0.25, 3.0, 1.5], &dev)?;
        let run = |fused: bool| -> Result<(Vec<f32>, Vec<f32>)> {
            let x = Var::from_vec(vals.clone(), (m, c), &dev)?;
            let ce = if fused {
                softmax_cross_entropy_ignore_0(x.as_tensor(), &targets)?
            } else {
                composed(x.as_tensor(), &targets)?
            };
            let loss = ce.mul(&upstream)?.sum_all()?;
            let grads = loss.backward()?;
            let g = grads
                .get(x.as_tensor())
                .ok_or_else(|| Error::Msg("no gradient".into()))?;
            Ok((ce.to_vec1()?, g.flatten_all()?.to_vec1()?))
        };
        let (ce_f, g_f) = run(true)?;
        let (ce_c, g_c) = run(false)?;
        close(&ce_f, &ce_c, 2e-6);
        close(&g_f, &g_c, 1e-6);
        // Ignored rows get exactly zero gradient.
        assert!(g_f[c..2 * c].iter().all(|&v| v == 0.0));
        Ok(())
    }

    #[test]
    fn extreme_logits_stay_finite() -> Result<()> {
        let x = Tensor::new(&[[1e4f32, -1e4, 0.0], [-3e4, -3e4, -3e4]], &Device::Cpu)?;
        let t = Tensor::new(&[1u32, 2], &Device::Cpu)?;
        let ce = softmax_cross_entropy_ignore_0(&x, &t)?.to_vec1::<f32>()?;
        close(&ce, &[2e4, 3f32.ln()], 1e-3);
        Ok(())
    }

    #[test]
    fn nan_logits_give_a_nan_loss() -> Result<()> {
        // Divergence must stay visible: the trainer stops on a non-finite loss.
        let x = Tensor::new(&[[0f32, f32::NAN, 1.0]], &Device::Cpu)?;
        let t = Tensor::new(&[2u32], &Device::Cpu)?;
        let ce = softmax_cross_entropy_ignore_0(&x, &t)?.to_vec1::<f32>()?;
        assert!(ce[0].is_nan());
        Ok(())
    }

    #[test]
    fn out_of_range_target_is_an_error() -> Result<()> {
        let x = Tensor::zeros((2, 3), DType::F32, &Device::Cpu)?;
        let t = Tensor::new(&[1u32, 3], &Device::Cpu)?;
        let err = softmax_cross_entropy_ignore_0(&x, &t).err();
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("row 1 has target 3"), "{msg}");
        Ok(())
    }
}
