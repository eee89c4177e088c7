//! The core of multi-head attention, from the projected queries, keys and values to the merged
//! heads before the output projection, as one autograd node with a hand-written backward pass:
//!
//! ```text
//! Qh, Kh, Vh = split_heads(q, k, v)            [B, H, L, d_h]
//! P = dropout(softmax(Qh·Khᵀ·scale + bias))     (crate::nn::attention_weights)
//! out = merge_heads(P·Vh)                       [B, Lq, d]
//! ```
//!
//! Composed from candle ops this is about sixteen graph nodes (the head split and merge are
//! reshape, transpose and copy nodes), and candle's backward pass gives each node a zeroed
//! gradient to add into. On a GPU, where a small model's step waits on kernel launches, that is
//! about forty launches per layer; this node computes its forward pass with the same ops on
//! detached tensors (no graph) and its backward pass as
//! `dV = Pᵀ·dO`, `dP = dO·Vhᵀ`, `dS = scale·y·(dP·mask − Σ dP·mask·y)`, `dQ = dS·Kh`,
//! `dK = dSᵀ·Qh`: twenty launches in all. It runs wherever its ops do (the CPU too, where the
//! tests compare it with the composed attention); the models use it on CUDA devices, the CPU
//! having its whole-block fused kernels.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, Error, Layout, Result, Shape, Tensor};

use super::{attention_weights::weights_op, dropout::Dropout, precomputed::Precomputed};

/// `[B, L, d]` → `[B, H, L, d/H]`, contiguous.
fn split(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, l, d) = x.dims3()?;
    x.reshape((b, l, heads, d / heads))?
        .transpose(1, 2)?
        .contiguous()
}

/// `[B, H, L, d_h]` → `[B, L, H·d_h]`, contiguous.
fn merge(x: &Tensor) -> Result<Tensor> {
    let (b, h, l, dh) = x.dims4()?;
    x.transpose(1, 2)?.contiguous()?.reshape((b, l, h * dh))
}

/// The attention core of `q` `[B, Lq, d]` over `k`, `v` `[B, Lk, d]` with `heads` heads, as one
/// node, with the weights' dropout in training (`dropout` given) and none in evaluation; `None`
/// where the attention weights op does not apply (the caller composes it then).
pub(crate) fn attention_core(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    bias: Option<&Tensor>,
    scale: f64,
    dropout: Option<&Dropout>,
) -> Result<Option<Tensor>> {
    // Decide before drawing: where the op does not apply, the composed path draws the mask.
    let (b, lq, d) = q.dims3()?;
    let lk = k.dim(1)?;
    let applies = heads > 0
        && d % heads == 0
        && q.dtype() == candle_core::DType::F32
        && super::attention_weights::takes_bias(b, lq, lk, bias);
    if !applies {
        return Ok(None);
    }
    let drop = dropout.and_then(Dropout::draw);
    let Some((out, saved)) = core_forward(q, k, v, heads, bias, scale, drop)? else {
        return Ok(None);
    };
    if !(q.track_op() || k.track_op() || v.track_op()) {
        return Ok(Some(out));
    }
    let node = CoreNode {
        out: Precomputed::new("attention core", out),
        saved: Mutex::new(Some(saved)),
    };
    Ok(Some(q.apply_op3(k, v, node)?))
}

/// The attention core's forward pass outside the graph (`q`, `k`, `v` are detached here), with
/// the weights' dropout mask `drop`, and what its backward pass reads; `None` where the attention
/// weights op does not apply.
pub(crate) fn core_forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    bias: Option<&Tensor>,
    scale: f64,
    drop: Option<super::dropout::MaskDraw>,
) -> Result<Option<(Tensor, SavedCore)>> {
    let (_, _, d) = q.dims3()?;
    if heads == 0 || d % heads != 0 {
        return Ok(None);
    }
    let (qh, kh, vh) = (
        split(&q.detach(), heads)?,
        split(&k.detach(), heads)?,
        split(&v.detach(), heads)?,
    );
    let scores = qh.matmul(&kh.t()?)?;
    let Some((weights, bias_t)) = weights_op(&scores, bias, scale, drop)? else {
        return Ok(None);
    };
    let p = scores.apply_op2_no_bwd(&bias_t, &weights)?;
    let out = merge(&p.matmul(&vh)?)?;
    Ok(Some((
        out,
        SavedCore {
            qh,
            kh,
            vh,
            p,
            weights,
        },
    )))
}

/// What the backward pass reads.
pub(crate) struct SavedCore {
    qh: Tensor,
    kh: Tensor,
    vh: Tensor,
    /// The attention weights after dropout.
    p: Tensor,
    /// The weights op, holding the softmax output for its backward.
    weights: super::attention_weights::AttentionWeights,
}

/// The node: its forward hands candle the output computed beforehand.
struct CoreNode {
    out: Precomputed,
    saved: Mutex<Option<SavedCore>>,
}

fn poisoned<T>(_: T) -> Error {
    Error::Msg("attention core: poisoned state".into())
}

impl CustomOp3 for CoreNode {
    fn name(&self) -> &'static str {
        "attention-core"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.out.cpu()
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        self.out.cuda()
    }

    fn bwd(
        &self,
        _q: &Tensor,
        _k: &Tensor,
        _v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let s = self
            .saved
            .lock()
            .map_err(poisoned)?
            .take()
            .ok_or_else(|| Error::Msg("attention core: backward ran twice".into()))?;
        let (d_q, d_k, d_v) = s.backward(grad)?;
        Ok((Some(d_q), Some(d_k), Some(d_v)))
    }
}

impl SavedCore {
    /// `(dq, dk, dv)` `[B, L, d]` from the gradient of the merged output `[B, Lq, d]`.
    pub(crate) fn backward(&self, grad: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let heads = self.qh.dims4()?.1;
        let d_out = split(&grad.detach(), heads)?;
        let d_v = self.p.t()?.matmul(&d_out)?;
        let d_p = d_out.matmul(&self.vh.t()?)?;
        let d_scores = d_p.apply_op1_no_bwd(&self.weights.grad_op()?)?;
        let d_q = d_scores.matmul(&self.kh)?;
        let d_k = d_scores.t()?.matmul(&self.qh)?;
        Ok((merge(&d_q)?, merge(&d_k)?, merge(&d_v)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{context::SharedRng, nn::softmax::softmax_last_dim};
    use candle_core::{Device, Var};

    /// The composed attention core (the generic path's ops).
    fn composed(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        heads: usize,
        bias: Option<&Tensor>,
        scale: f64,
        d: Option<&Dropout>,
    ) -> Result<Tensor> {
        let (qh, kh, vh) = (split(q, heads)?, split(k, heads)?, split(v, heads)?);
        let mut s = (qh.matmul(&kh.t()?)? * scale)?;
        if let Some(b) = bias {
            s = s.broadcast_add(b)?;
        }
        let y = softmax_last_dim(&s)?;
        let p = match d {
            Some(d) => d.forward_t(&y, true).map_err(Error::wrap)?,
            None => y,
        };
        merge(&p.matmul(&vh)?)
    }

    fn close(a: &Tensor, b: &Tensor, tol: f32, what: &str) -> Result<()> {
        let (a, b) = (
            a.flatten_all()?.to_vec1::<f32>()?,
            b.flatten_all()?.to_vec1::<f32>()?,
        );
        assert_eq!(a.len(), b.len(), "{what}");
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(
                (x - y).abs() <= tol * y.abs().max(1.0),
                "{what} {i}: {x} vs {y}"
            );
        }
        Ok(())
    }

    #[test]
    fn a_bias_the_node_refuses_leaves_the_dropout_stream_untouched() -> Result<()> {
        // A bias that differs between heads is the composed path's: the node must return None
        // before drawing a mask, or the composed path's own draw would take the next key.
        let dev = Device::Cpu;
        let (b, l, d, heads) = (2, 3, 4, 2);
        let x = Var::from_vec(
            (0..b * l * d).map(|i| i as f32 * 0.1).collect(),
            (b, l, d),
            &dev,
        )?;
        let per_head = Tensor::zeros((b, heads, l, l), candle_core::DType::F32, &dev)?;
        let drop = Dropout::new(0.25, SharedRng::new(3));
        let t = x.as_tensor();
        let got = attention_core(t, t, t, heads, Some(&per_head), 0.5, Some(&drop))?;
        assert!(got.is_none());
        let fresh = Dropout::new(0.25, SharedRng::new(3));
        assert_eq!(drop.draw_mask(16), fresh.draw_mask(16), "a key was drawn");
        Ok(())
    }

    #[test]
    fn the_node_equals_the_composed_attention_values_and_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let (b, l, d, heads) = (3, 7, 8, 2);
        let n = b * l * d;
        let vals = |salt: usize| -> Vec<f32> {
            (0..n)
                .map(|i| (((i * 31 + salt * 17) % 97) as f32 / 24.0) - 2.0)
                .collect()
        };
        let ids: Vec<u32> = (0..b * l)
            .map(|i| if i % l <= i / l { 0 } else { i as u32 })
            .collect();
        let ids = Tensor::from_vec(ids, (b, l), &dev)?;
        let causal = crate::nn::masks::causal_bias(l, &dev).map_err(Error::wrap)?;
        let merged = crate::nn::masks::merged_bias(&ids).map_err(Error::wrap)?;
        for (name, bias) in [
            ("none", None),
            ("causal", Some(&causal)),
            ("merged", Some(&merged)),
        ] {
            for train in [false, true] {
                let vars = |_: ()| -> Result<(Var, Var, Var)> {
                    Ok((
                        Var::from_vec(vals(1), (b, l, d), &dev)?,
                        Var::from_vec(vals(2), (b, l, d), &dev)?,
                        Var::from_vec(vals(3), (b, l, d), &dev)?,
                    ))
                };
                let (q1, k1, v1) = vars(())?;
                let (q2, k2, v2) = vars(())?;
                let d1 = Dropout::new(0.25, SharedRng::new(3));
                let d2 = Dropout::new(0.25, SharedRng::new(3));
                let want = composed(
                    q1.as_tensor(),
                    k1.as_tensor(),
                    v1.as_tensor(),
                    heads,
                    bias,
                    0.5,
                    train.then_some(&d1),
                )?;
                let got = attention_core(
                    q2.as_tensor(),
                    k2.as_tensor(),
                    v2.as_tensor(),
                    heads,
                    bias,
                    0.5,
                    train.then_some(&d2),
                )?
                .ok_or_else(|| Error::Msg("the node did not apply".into()))?;
                close(&got, &want, 1e-6, &format!("{name} output"))?;
                let r = Tensor::from_vec(
                    (0..n).map(|i| (i as f32 * 0.3).sin()).collect::<Vec<_>>(),
                    (b, l, d),
                    &dev,
                )?;
                let g1 = (want * &r)?.sum_all()?.backward()?;
                let g2 = (got * &r)?.sum_all()?.backward()?;
                for (what, a, c) in [("q", &q1, &q2), ("k", &k1, &k2), ("v", &v1, &v2)] {
                    let (Some(x), Some(y)) = (g1.get(a.as_tensor()), g2.get(c.as_tensor())) else {
                        return Err(candle_core::Error::Msg(format!(
                            "{name}: no {what} gradient"
                        )));
                    };
                    close(
                        y,
                        x,
                        1e-5,
                        &format!("{name} (train {train}) {what} gradient"),
                    )?;
                }
            }
        }
        Ok(())
    }
}
