//! Attention weights as one op: `dropout(softmax(scores·scale + bias))`, torch
//! `nn.MultiheadAttention`'s weights in training, with its own backward pass.
//!
//! The generic attention composes this from four candle ops (scale, bias, softmax, dropout), and
//! candle's backward pass gives each of them a zeroed gradient to add into: on a GPU, where every
//! op is a kernel launch and launches are what a small model's step waits on, that is about 15
//! launches per attention layer where this op takes two (`rb_attention_probs_fwd`/`_bwd` in
//! `nn/cuda/kernels.cu`). It keeps the softmax output `y` for the backward pass,
//! `ds = scale · y·(dy − Σ dy·y)` with `dy = dp·mask`, and draws the dropout mask from its key in
//! both passes (the same mask [`crate::nn::Dropout::forward_t`] would multiply by, so both forms train
//! identically).
//!
//! The CPU form (the fused transformer blocks do this work on the CPU) exists as the reference the
//! device kernels are tested against, and is tested here against the composed ops.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, Error, Layout, Result, Shape, Tensor};

use super::{cpu_slice::storage_f32, dropout::MaskDraw};

/// `dropout(softmax(scores·scale + bias))` over the last dimension of `scores` `[B, H, Q, K]`,
/// with `bias` broadcastable to it as `[B or 1, 1, Q or 1, K]`, or `None` when the op does not
/// apply (other shapes, dtypes): the caller composes it then.
#[cfg(test)]
pub(crate) fn attention_weights(
    scores: &Tensor,
    bias: Option<&Tensor>,
    scale: f64,
    dropout: &crate::nn::Dropout,
    train: bool,
) -> Result<Option<Tensor>> {
    let drop = if train { dropout.draw() } else { None };
    let Some((op, bias_t)) = weights_op(scores, bias, scale, drop)? else {
        return Ok(None);
    };
    Ok(Some(scores.contiguous()?.apply_op2(&bias_t, op)?))
}

/// The op for `scores` and `bias` with dropout mask `drop` (none in evaluation) and the bias
/// tensor to apply it with; `None` where it does not apply.
pub(crate) fn weights_op(
    scores: &Tensor,
    bias: Option<&Tensor>,
    scale: f64,
    drop: Option<MaskDraw>,
) -> Result<Option<(AttentionWeights, Tensor)>> {
    let Ok((b, h, q, k)) = scores.dims4() else {
        return Ok(None);
    };
    if scores.dtype() != candle_core::DType::F32 || !takes_bias(b, q, k, bias) {
        return Ok(None);
    }
    let (bias_t, bias_b, bias_q) = match bias {
        None => (Tensor::zeros(1, scores.dtype(), scores.device())?, 0, 0),
        Some(t) => {
            let (bb, bq) = (t.dims()[0], t.dims()[2]);
            (t.to_dtype(scores.dtype())?.contiguous()?, bb, bq)
        }
    };
    let op = AttentionWeights {
        scale: scale as f32,
        heads: h,
        queries: q,
        bias_b,
        bias_q,
        drop,
        saved: Mutex::new(None),
    };
    Ok(Some((op, bias_t.detach())))
}

/// Whether the op takes `bias` for scores `[b, H, q, k]`: none, or `[1 or b, 1, 1 or q, k]` (one
/// bias for every head). Callers that draw a dropout mask for the op ask first, so that a bias
/// it refuses leaves the stream to the composed path's own draw.
pub(crate) fn takes_bias(b: usize, q: usize, k: usize, bias: Option<&Tensor>) -> bool {
    bias.is_none_or(|t| {
        matches!(t.dims(), &[bb, 1, bq, bk] if (bb == 1 || bb == b) && (bq == 1 || bq == q) && bk == k)
    })
}

/// The softmax output kept for the backward pass.
enum Saved {
    Cpu(Vec<f32>),
    #[cfg(feature = "cuda")]
    Cuda(candle_core::cuda_backend::cudarc::driver::CudaSlice<f32>),
}

pub(crate) struct AttentionWeights {
    scale: f32,
    heads: usize,
    queries: usize,
    /// The bias's leading dimensions (1 or B, 1 or Q); `bias_b` 0 = no bias.
    bias_b: usize,
    bias_q: usize,
    drop: Option<MaskDraw>,
    saved: Mutex<Option<Saved>>,
}

fn poisoned<T>(_: T) -> Error {
    Error::Msg("attention weights: poisoned state".into())
}

impl AttentionWeights {
    /// The backward op of the last forward (its saved output taken): from the weights' output
    /// gradient to the scores' gradient.
    pub(crate) fn grad_op(&self) -> Result<AttentionWeightsGrad> {
        let saved = self
            .saved
            .lock()
            .map_err(poisoned)?
            .take()
            .ok_or_else(|| Error::Msg("attention weights: backward ran twice".into()))?;
        Ok(AttentionWeightsGrad {
            scale: self.scale,
            drop: self.drop,
            y: Mutex::new(Some(saved)),
        })
    }

    /// The bias row of score row `row` (of `rows` rows of `k`), as an offset into the bias.
    fn bias_row(&self, row: usize, k: usize) -> usize {
        let q = row % self.queries;
        let b = row / (self.queries * self.heads);
        let bb = if self.bias_b == 1 { 0 } else { b };
        let bq = if self.bias_q == 1 { 0 } else { q };
        (bb * self.bias_q + bq) * k
    }
}

impl CustomOp2 for AttentionWeights {
    fn name(&self) -> &'static str {
        "attention-weights"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let s = storage_f32(s1, l1, "attention weights: scores")?;
        let bias = storage_f32(s2, l2, "attention weights: bias")?;
        let k = l1.dims().last().copied().unwrap_or(1).max(1);
        let mut y = vec![0f32; s.len()];
        for (row, (yr, sr)) in y.chunks_exact_mut(k).zip(s.chunks_exact(k)).enumerate() {
            let br = (self.bias_b > 0).then(|| {
                let at = self.bias_row(row, k);
                &bias[at..at + k]
            });
            for (j, (o, &v)) in yr.iter_mut().zip(sr).enumerate() {
                *o = v * self.scale + br.map_or(0.0, |b| b[j]);
            }
            let mx = yr.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for o in yr.iter_mut() {
                *o = (*o - mx).exp();
                sum += *o;
            }
            for o in yr.iter_mut() {
                *o /= sum;
            }
        }
        let p = match &self.drop {
            Some(d) => {
                let mask = d.mask(y.len());
                y.iter().zip(&mask).map(|(a, m)| a * m).collect()
            }
            None => y.clone(),
        };
        *self.saved.lock().map_err(poisoned)? = Some(Saved::Cpu(y));
        Ok((CpuStorage::F32(p), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (p, y) = super::cuda::attention_weights(
            (s1, l1),
            (s2, l2),
            super::cuda::AttentionShape {
                heads: self.heads,
                queries: self.queries,
                bias_b: self.bias_b,
                bias_q: self.bias_q,
                scale: self.scale,
            },
            self.drop,
        )?;
        *self.saved.lock().map_err(poisoned)? = Some(Saved::Cuda(y));
        Ok((p, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _scores: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let op = self.grad_op()?;
        Ok((Some(grad.contiguous()?.apply_op1_no_bwd(&op)?), None))
    }
}

/// The backward pass: from the output gradient `dp` to the scores' gradient.
pub(crate) struct AttentionWeightsGrad {
    scale: f32,
    drop: Option<MaskDraw>,
    y: Mutex<Option<Saved>>,
}

impl candle_core::CustomOp1 for AttentionWeightsGrad {
    fn name(&self) -> &'static str {
        "attention-weights-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = storage_f32(s, l, "attention weights: output gradient")?;
        let Some(Saved::Cpu(y)) = self.y.lock().map_err(poisoned)?.take() else {
            return Err(Error::Msg(
                "attention weights: no CPU output saved for the backward pass".into(),
            ));
        };
        if y.len() != g.len() {
            return Err(Error::Msg(format!(
                "attention weights backward: {} saved and {} gradient values",
                y.len(),
                g.len()
            )));
        }
        let k = l.dims().last().copied().unwrap_or(1).max(1);
        let mask = self.drop.map(|d| d.mask(g.len()));
        let dy: Vec<f32> = match &mask {
            Some(m) => g.iter().zip(m).map(|(a, b)| a * b).collect(),
            None => g.to_vec(),
        };
        let mut ds = vec![0f32; g.len()];
        for ((dr, yr), gr) in ds
            .chunks_exact_mut(k)
            .zip(y.chunks_exact(k))
            .zip(dy.chunks_exact(k))
        {
            let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
            for ((o, &yv), &gv) in dr.iter_mut().zip(yr).zip(gr) {
                *o = self.scale * yv * (gv - dot);
            }
        }
        Ok((CpuStorage::F32(ds), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let Some(Saved::Cuda(y)) = self.y.lock().map_err(poisoned)?.take() else {
            return Err(Error::Msg(
                "attention weights: no device output saved for the backward pass".into(),
            ));
        };
        let ds = super::cuda::attention_weights_backward(&y, (s, l), self.scale, self.drop)?;
        Ok((ds, l.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        context::SharedRng,
        nn::{softmax::softmax_last_dim, Dropout},
    };
    use candle_core::{Device, Var};

    /// The composed form the op replaces (the generic attention's four ops).
    fn composed(
        s: &Tensor,
        bias: Option<&Tensor>,
        scale: f64,
        d: &Dropout,
        train: bool,
    ) -> candle_core::Result<Tensor> {
        let mut x = (s * scale)?;
        if let Some(b) = bias {
            x = x.broadcast_add(b)?;
        }
        let y = softmax_last_dim(&x)?;
        d.forward_t(&y, train).map_err(Error::wrap)
    }

    fn close(a: &Tensor, b: &Tensor, tol: f32) -> candle_core::Result<()> {
        let (a, b) = (
            a.flatten_all()?.to_vec1::<f32>()?,
            b.flatten_all()?.to_vec1::<f32>()?,
        );
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(
                (x - y).abs() <= tol * y.abs().max(1.0),
                "element {i}: {x} vs {y}"
            );
        }
        Ok(())
    }

    #[test]
    fn the_op_equals_scale_bias_softmax_dropout_with_every_bias_shape() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let (b, h, q, k) = (3, 2, 5, 5);
        let n = b * h * q * k;
        let vals: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 / 25.0) - 2.0)
            .collect();
        let inf = f32::NEG_INFINITY;
        let causal = crate::nn::masks::causal_bias(q, &dev).map_err(Error::wrap)?;
        let padding = Tensor::from_vec(
            (0..b * k)
                .map(|i| if i % k == 0 { inf } else { 0.0 })
                .collect::<Vec<_>>(),
            (b, 1, 1, k),
            &dev,
        )?;
        // RecTools' merged mask (causal and padding, diagonal open), from ids padded on the left.
        let ids: Vec<u32> = (0..b * k)
            .map(|i| if i % k == 0 { 0 } else { i as u32 })
            .collect();
        let merged = crate::nn::masks::merged_bias(&Tensor::from_vec(ids, (b, k), &dev)?)
            .map_err(Error::wrap)?;
        for (name, bias) in [
            ("none", None),
            ("causal", Some(&causal)),
            ("padding", Some(&padding)),
            ("merged", Some(&merged)),
        ] {
            for train in [false, true] {
                let s1 = Var::from_vec(vals.clone(), (b, h, q, k), &dev)?;
                let s2 = Var::from_vec(vals.clone(), (b, h, q, k), &dev)?;
                let (d1, d2) = (
                    Dropout::new(0.3, SharedRng::new(5)),
                    Dropout::new(0.3, SharedRng::new(5)),
                );
                let want = composed(s1.as_tensor(), bias, 0.7, &d1, train)?;
                let got = attention_weights(s2.as_tensor(), bias, 0.7, &d2, train)?
                    .ok_or_else(|| Error::Msg(format!("{name}: the op did not apply")))?;
                close(&got, &want, 1e-6)?;
                let r = Tensor::from_vec(
                    (0..n).map(|i| (i as f32 * 0.13).sin()).collect::<Vec<_>>(),
                    (b, h, q, k),
                    &dev,
                )?;
                let g1 = (want * &r)?.sum_all()?.backward()?;
                let g2 = (got * &r)?.sum_all()?.backward()?;
                let (Some(a), Some(c)) = (g1.get(s1.as_tensor()), g2.get(s2.as_tensor())) else {
                    return Err(candle_core::Error::Msg(format!("{name}: no gradient")));
                };
                close(c, a, 1e-5)?;
            }
        }
        Ok(())
    }

    #[test]
    fn other_bias_shapes_are_left_to_the_composed_ops() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let s = Tensor::zeros((2, 2, 3, 3), candle_core::DType::F32, &dev)?;
        let per_head = Tensor::zeros((2, 2, 3, 3), candle_core::DType::F32, &dev)?;
        let d = Dropout::new(0.0, SharedRng::new(1));
        assert!(attention_weights(&s, Some(&per_head), 1.0, &d, false)?.is_none());
        Ok(())
    }
}
