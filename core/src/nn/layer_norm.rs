//! Layer normalisation, torch `nn.LayerNorm(d, eps)`: biased variance, weight 1 and bias 0 at init.
//!
//! candle's fused `LayerNorm` has no backward, and composing it from ~10 candle ops costs as many
//! `[rows, d]` buffers forward and backward. On the CPU this is one fused op per direction: the
//! forward keeps each row's mean and `1/σ`, the backward computes
//! `dx = (dŷ − mean(dŷ) − x̂·mean(dŷ·x̂)) / σ` with `dŷ = dy·weight`, and the weight and bias
//! gradients as deterministic column sums. [`LayerNorm::forward_composed`] is the reference.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, DType, Device, Error, Layout, Shape, Tensor, D};
use candle_nn::VarBuilder;

use crate::{
    nn::{
        column_sum::column_sums,
        cpu_slice::{storage_f32, with_f32},
        init,
    },
    Result,
};

/// `y = (x − mean) / sqrt(var + eps) · weight + bias` over the last dimension.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub(crate) weight: Tensor,
    pub(crate) bias: Tensor,
    pub(crate) eps: f64,
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
        let fusable = (matches!(x.device(), Device::Cpu) || x.device().is_cuda())
            && x.dtype() == DType::F32
            && self.weight.dtype() == DType::F32
            && self.bias.dtype() == DType::F32;
        if !fusable {
            return self.forward_composed(x);
        }
        let dims = x.dims().to_vec();
        let d = dims.last().copied().unwrap_or(0);
        if self.weight.dims() != [d] || self.bias.dims() != [d] {
            return Err(crate::CoreError::Other(format!(
                "layer norm over width {d}: weight {:?} and bias {:?} must be [{d}]",
                self.weight.dims(),
                self.bias.dims()
            )));
        }
        let rows = x.elem_count() / d.max(1);
        let op = FusedLayerNorm {
            eps: self.eps as f32,
            stats: Arc::new(Mutex::new(Vec::new())),
        };
        let (w, b) = (self.weight.contiguous()?, self.bias.contiguous()?);
        if crate::nn::fused::gpu_composition(x.device()) {
            if let Some(collector) = crate::nn::param_grads::writer(x, &[&self.weight, &self.bias])
            {
                return self.forward_writing(x, collector);
            }
        }
        if x.device().is_cuda() {
            // The device op takes any rank (rows are everything before the last dimension), so no
            // reshape nodes, whose backward passes are launches of their own on a GPU.
            return Ok(x.contiguous()?.apply_op3(&w, &b, op)?);
        }
        let y = x.reshape((rows, d))?.contiguous()?.apply_op3(&w, &b, op)?;
        Ok(y.reshape(dims)?)
    }

    /// [`forward`](Self::forward) as a node over `x` alone that writes the weight's and bias's
    /// gradients to `collector` (`nn::param_grads`): what a CUDA device runs under a trainer's
    /// scope, where it saves zeroing and adding two gradient buffers per norm for one copy of the
    /// output. On the CPU the tests run it against the plain op.
    pub(crate) fn forward_writing(
        &self,
        x: &Tensor,
        collector: Arc<crate::nn::param_grads::Collector>,
    ) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let d = dims.last().copied().unwrap_or(0);
        let rows = x.elem_count() / d.max(1);
        let x_in = if x.device().is_cuda() {
            x.detach().contiguous()?
        } else {
            x.detach().reshape((rows, d))?.contiguous()?
        };
        let (y, grad) = self.forward_parts(&x_in)?;
        let y = y.reshape(dims)?;
        let x_shape = x.shape().clone();
        let backward: crate::nn::param_node::ParamBackward = Box::new(move |g: &Tensor| {
            let (dx, dw, db) = grad.backward(g)?;
            Ok((Some(dx.reshape(x_shape)?), vec![dw, db]))
        });
        let params = vec![self.weight.clone(), self.bias.clone()];
        let out = crate::nn::precomputed::Precomputed::new("layer norm", y);
        Ok(crate::nn::param_node::attach(
            "layer-norm",
            x,
            out,
            params,
            collector,
            backward,
        )?)
    }

    /// The norm of `x_in` (detached, contiguous; rows `[R, d]` on the CPU, any rank on a CUDA
    /// device) outside the graph, and what its backward pass needs (nodes that run several ops
    /// inside them: this one, a GPU block node).
    pub(crate) fn forward_parts(&self, x_in: &Tensor) -> candle_core::Result<(Tensor, NormGrad)> {
        let w = self.weight.detach().contiguous()?;
        let b = self.bias.detach().contiguous()?;
        let op = FusedLayerNorm {
            eps: self.eps as f32,
            stats: Arc::new(Mutex::new(Vec::new())),
        };
        let y = x_in.apply_op3_no_bwd(&w, &b, &op)?;
        Ok((
            y,
            NormGrad {
                op,
                x: x_in.clone(),
                w,
                b,
            },
        ))
    }

    /// The same normalisation composed from candle ops (the reference, and the non-CPU path).
    pub fn forward_composed(&self, x: &Tensor) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centered.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        Ok(normed
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)?)
    }
}

/// What a layer norm run by [`LayerNorm::forward_parts`] keeps for its backward pass.
pub(crate) struct NormGrad {
    op: FusedLayerNorm,
    x: Tensor,
    w: Tensor,
    b: Tensor,
}

impl NormGrad {
    /// `(dx, dweight, dbias)` from the output's gradient `g` (the input's shape or its rows).
    pub(crate) fn backward(&self, g: &Tensor) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let g = g.reshape(self.x.shape())?.contiguous()?;
        let missing = || Error::Msg("layer norm: a gradient is missing".into());
        let (dx, dw, db) = self.op.bwd(&self.x, &self.w, &self.b, &g, &g)?;
        Ok((
            dx.ok_or_else(missing)?,
            dw.ok_or_else(missing)?,
            db.ok_or_else(missing)?,
        ))
    }
}

/// Per-row (mean, 1/σ) of the last forward, for the backward.
type RowStats = Arc<Mutex<Vec<(f32, f32)>>>;

struct FusedLayerNorm {
    eps: f32,
    stats: RowStats,
}

fn poisoned<T>(_: T) -> Error {
    Error::Msg("layer norm: poisoned state".into())
}

impl CustomOp3 for FusedLayerNorm {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (r, d) = l1.shape().dims2()?;
        let x = storage_f32(s1, l1, "layer norm: input")?;
        let w = storage_f32(s2, l2, "layer norm: weight")?;
        let b = storage_f32(s3, l3, "layer norm: bias")?;
        let mut y = vec![0f32; r * d];
        let mut stats = vec![(0f32, 0f32); r];
        if d > 0 {
            for ((yr, xr), st) in y.chunks_exact_mut(d).zip(x.chunks_exact(d)).zip(&mut stats) {
                let mean = xr.iter().sum::<f32>() / d as f32;
                let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
                let rstd = 1.0 / (var + self.eps).sqrt();
                for (((o, &v), &wj), &bj) in yr.iter_mut().zip(xr).zip(w).zip(b) {
                    *o = (v - mean) * rstd * wj + bj;
                }
                *st = (mean, rstd);
            }
        }
        *self.stats.lock().map_err(poisoned)? = stats;
        Ok((CpuStorage::F32(y), Shape::from((r, d))))
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
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        crate::nn::cuda::layer_norm((s1, l1), (s2, l2), (s3, l3), self.eps)
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        if x.device().is_cuda() {
            // One packed gradient [r·d + 2d]: the input's, then the weight's and the bias's.
            let d = x.dims().last().copied().unwrap_or(1);
            let r = x.elem_count() / d.max(1);
            let packed = x.apply_op3_no_bwd(
                weight,
                &grad.contiguous()?,
                &LayerNormGrad { eps: self.eps },
            )?;
            let dx = packed.narrow(0, 0, r * d)?.reshape(x.shape())?;
            // The parameters' gradients may be kept until the optimizer step (a step's gradient
            // scope): copied out, so that they do not hold the input gradient's rows with them.
            let dwb = packed.narrow(0, r * d, 2 * d)?.force_contiguous()?;
            let dw = dwb.narrow(0, 0, d)?;
            let db = dwb.narrow(0, d, d)?;
            return Ok((Some(dx), Some(dw), Some(db)));
        }
        let (r, d) = x.dims2()?;
        let stats = self.stats.lock().map_err(poisoned)?.clone();
        if stats.len() != r {
            return Err(Error::Msg(format!(
                "layer norm backward: {} saved rows for {r} inputs",
                stats.len()
            )));
        }
        let w: Vec<f32> = weight.to_vec1()?;
        let (dx, g_xhat, db) = with_f32(x, |xs| {
            with_f32(grad, |g| {
                let (dx, g_xhat) = layer_norm_grad(xs, g, &w, &stats, d);
                (dx, g_xhat, column_sums(g, d))
            })
        })??;
        let dev = x.device();
        let dw = Tensor::from_vec(column_sums(&g_xhat, d), d, dev)?;
        let db = Tensor::from_vec(db, d, dev)?;
        Ok((Some(Tensor::from_vec(dx, (r, d), dev)?), Some(dw), Some(db)))
    }
}

/// The layer norm's backward pass as one device op over `(x, weight, dy)`: the row statistics
/// are computed again from `x` (cheaper on a GPU than keeping them), and the result packs the
/// input, weight and bias gradients. CUDA only; the CPU backward uses the saved statistics.
struct LayerNormGrad {
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    eps: f32,
}

impl CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "fused-layer-norm-grad"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        Err(Error::Msg(
            "layer norm: the packed backward op runs on CUDA devices only".into(),
        ))
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
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        crate::nn::cuda::layer_norm_backward((s1, l1), (s2, l2), (s3, l3), self.eps)
    }
}

/// `(dx, dy·x̂)` of a layer norm over rows of `d`, from the saved `(mean, 1/σ)` per row.
fn layer_norm_grad(
    xs: &[f32],
    g: &[f32],
    w: &[f32],
    stats: &[(f32, f32)],
    d: usize,
) -> (Vec<f32>, Vec<f32>) {
    let mut dx = vec![0f32; xs.len()];
    let mut g_xhat = vec![0f32; xs.len()];
    if d == 0 {
        return (dx, g_xhat);
    }
    let rows = dx
        .chunks_exact_mut(d)
        .zip(g_xhat.chunks_exact_mut(d))
        .zip(xs.chunks_exact(d).zip(g.chunks_exact(d)))
        .zip(stats);
    for (((dxr, gxr), (xr, gr)), &(mean, rstd)) in rows {
        let (mut sum_dyh, mut sum_dyh_xhat) = (0f32, 0f32);
        for (((&v, &gv), &wj), gx) in xr.iter().zip(gr).zip(w).zip(gxr.iter_mut()) {
            let xhat = (v - mean) * rstd;
            let dyh = gv * wj;
            sum_dyh += dyh;
            sum_dyh_xhat += dyh * xhat;
            *gx = gv * xhat;
        }
        let (m1, m2) = (sum_dyh / d as f32, sum_dyh_xhat / d as f32);
        for (((o, &v), &gv), &wj) in dxr.iter_mut().zip(xr).zip(gr).zip(w) {
            let xhat = (v - mean) * rstd;
            *o = (gv * wj - m1 - xhat * m2) * rstd;
        }
    }
    (dx, g_xhat)
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
    #[test]
    fn fused_equals_composed_values_and_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let (r, d) = (5, 7);
        let vals: Vec<f32> = (0..r * d)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.3)
            .collect();
        let w = candle_core::Var::new(&[1f32, 0.5, -1., 2., 0.1, 1.5, -0.3], &dev)?;
        let b = candle_core::Var::new(&[0f32, 0.1, 0.2, -0.3, 0.4, 0.0, 1.0], &dev)?;
        let up = Tensor::new(
            (0..r * d)
                .map(|i| (i as f32 * 0.61).sin())
                .collect::<Vec<_>>(),
            &dev,
        )?
        .reshape((1, r, d))?;
        let run = |fused: bool| -> Result<Vec<Vec<f32>>> {
            let x = candle_core::Var::from_vec(vals.clone(), (1, r, d), &dev)?;
            let ln = LayerNorm::from_tensors(w.as_tensor().clone(), b.as_tensor().clone(), 1e-5);
            let y = if fused {
                ln.forward(x.as_tensor())?
            } else {
                ln.forward_composed(x.as_tensor())?
            };
            let grads = y.mul(&up)?.sum_all()?.backward()?;
            let mut out = vec![y.flatten_all()?.to_vec1::<f32>()?];
            for v in [x.as_tensor(), w.as_tensor(), b.as_tensor()] {
                let g = grads
                    .get(v)
                    .ok_or_else(|| crate::CoreError::Other("no grad".into()))?;
                out.push(g.flatten_all()?.to_vec1::<f32>()?);
            }
            Ok(out)
        };
        let (f, c) = (run(true)?, run(false)?);
        for (which, (a, e)) in ["y", "dx", "dweight", "dbias"].iter().zip(f.iter().zip(&c)) {
            for (x, y) in a.iter().zip(e) {
                assert!((x - y).abs() < 2e-5, "{which}: {x} vs {y}");
            }
        }
        Ok(())
    }

    #[test]
    fn the_norm_writing_to_a_scope_equals_the_plain_op_bit_for_bit() -> Result<()> {
        // The CUDA path under a trainer's scope, run on the CPU: the same output and gradients as
        // the op taking its parameters as inputs, and the parameters are not graph nodes.
        let dev = Device::Cpu;
        let (r, d) = (6, 5);
        let vals: Vec<f32> = (0..r * d).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let w = candle_core::Var::new(&[1f32, 0.5, -1., 2., 0.1], &dev)?;
        let b = candle_core::Var::new(&[0f32, 0.1, 0.2, -0.3, 0.4], &dev)?;
        let up = Tensor::new(
            (0..r * d).map(|i| (i as f32).cos()).collect::<Vec<_>>(),
            &dev,
        )?
        .reshape((2, 3, d))?;
        let ln = LayerNorm::from_tensors(w.as_tensor().clone(), b.as_tensor().clone(), 1e-5);
        let mut runs = Vec::new();
        for scoped in [false, true] {
            let x = candle_core::Var::from_vec(vals.clone(), (2, 3, d), &dev)?;
            let scope = scoped.then(crate::nn::ParamGradScope::enter);
            let y = match crate::nn::param_grads::writer(x.as_tensor(), &[&ln.weight, &ln.bias]) {
                Some(c) => ln.forward_writing(x.as_tensor(), c)?,
                None => ln.forward(x.as_tensor())?,
            };
            let loss = y.mul(&up)?.sum_all()?;
            let nodes: Vec<_> = loss.sorted_nodes().iter().map(|t| t.id()).collect();
            assert_eq!(nodes.contains(&w.id()), !scoped, "scoped {scoped}");
            let grads = match scope {
                Some(scope) => scope.backward(&loss)?,
                None => loss.backward()?,
            };
            let mut out = vec![y.flatten_all()?.to_vec1::<f32>()?];
            for v in [x.as_tensor(), w.as_tensor(), b.as_tensor()] {
                let g = grads
                    .get(v)
                    .ok_or_else(|| crate::CoreError::Other("no grad".into()))?;
                out.push(g.flatten_all()?.to_vec1::<f32>()?);
            }
            runs.push(out);
        }
        assert_eq!(runs[0], runs[1]);
        Ok(())
    }
}
