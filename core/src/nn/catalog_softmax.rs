//! RecTools' `softmax` loss over the whole catalog, computed in chunks of rows from the two
//! factors of the logits, so that the `[M, N]` logits and their gradient never exist whole.
//!
//! RecTools (`TransformerLightningModule`, loss `softmax`) scores every target position against
//! every item, `logits = sessions · itemsᵀ / logits_t` (`[M, N]`), then takes
//! `cross_entropy(logits, y, ignore_index=0, reduction="none")`, weights it and averages over the
//! positions with a positive weighted loss. With a catalog of 10k items and a batch of 6,400
//! targets the logits and their gradient are 512 MB; with a million items they do not fit.
//!
//! Here the rows are taken a chunk at a time (a few MB of logits): the chunk's logits come from
//! one matrix product, one row pass turns them into each row's loss and, in place, into the
//! gradient of the loss with respect to them, `w·(softmax − onehot)`, and two more products turn
//! that into the chunk's share of the gradients of the two factors. The gradients are computed
//! during the forward pass, so the loss is a scalar whose backward pass only scales them by the
//! upstream gradient: three matrix products per chunk, as with materialised logits, and no
//! recomputation. The idea is that of Cut Cross-Entropy (Wijmans et al., arXiv 2411.09009,
//! <https://arxiv.org/abs/2411.09009>), which its authors also apply to recommenders with
//! negatives (arXiv 2509.09682).
//!
//! The loss is the one of `softmax_cross_entropy_ignore_0` then RecTools' weighting: tested
//! against materialised logits through the composed candle ops, value and both gradients. On a
//! CUDA device the same chunks run as candle matrix products around one kernel per chunk
//! (`nn::cuda`). For other dtypes, or with the fused paths switched off
//! ([`crate::nn::fused::enabled`]), the logits are materialised and the loss composed as before.

use candle_core::{CpuStorage, CustomOp2, DType, Device, Error, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{
    cpu_slice::{with_f32, F32View},
    cross_entropy::softmax_cross_entropy_ignore_0,
    fast_exp,
    fused::{self, products},
    workspace::Buf,
};

/// How many logits one chunk holds at most (4 M floats, 16 MB): the rows per chunk are this
/// divided by the catalog size (at least 8).
const CHUNK_ELEMENTS: usize = 1 << 22;

/// RecTools' `softmax` loss from the logits' factors: with `logits = sessions · itemsᵀ / temperature`
/// (`sessions` `[M, d]`, `items` `[N, d]`), `ce_m = logsumexp(logits_m) − logits[m, t_m]` (0 where
/// the target `t_m` is 0, the padding id), `l_m = ce_m · w_m`, and the loss is
/// `Σ l / count(l > 0)` (NaN when no row has a positive weighted loss, as in RecTools).
///
/// `targets` `[M]` (integer ids below N), `weights` `[M]`. Differentiable with respect to
/// `sessions` and `items`. On the CPU in f32 the `[M, N]` logits are never materialised whole.
///
/// `sessions` may also come in any shape `[..., d]` (`[B, L, d]`: M = B·L rows in order), with
/// `targets` and `weights` `[M]` or of the sessions' leading shape (`[B, L]`); the gradient then
/// has the sessions' shape. On a GPU this saves the reshape nodes that flattening them would add
/// to the graph (each a zero-filled gradient buffer and an add in candle's backward pass).
pub fn catalog_softmax_loss(
    sessions: &Tensor,
    items: &Tensor,
    targets: &Tensor,
    weights: &Tensor,
    temperature: f64,
) -> Result<Tensor> {
    let (lead, d) = match sessions.dims() {
        [lead @ .., d] if !lead.is_empty() => (lead, *d),
        other => {
            return Err(Error::Msg(format!(
                "catalog softmax loss: expected sessions [M, d] (or [..., d]); found {other:?}"
            )))
        }
    };
    let m: usize = lead.iter().product();
    let (n, d_items) = items.dims2()?;
    if d != d_items {
        return Err(Error::Msg(format!(
            "catalog softmax loss: sessions are {:?} and items [{n}, {d_items}]; expected the \
             same width",
            sessions.dims()
        )));
    }
    let fits = |t: &Tensor| t.dims() == [m] || t.dims() == lead;
    if !fits(targets) || !fits(weights) {
        let shapes = match lead.len() {
            1 => format!("[{m}]"),
            _ => format!("[{m}] or {lead:?}"),
        };
        return Err(Error::Msg(format!(
            "catalog softmax loss: sessions {:?}, so targets and weights must be {shapes}; found \
             {:?} and {:?}",
            sessions.dims(),
            targets.dims(),
            weights.dims()
        )));
    }
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(Error::Msg(format!(
            "catalog softmax loss: temperature {temperature}; expected a finite value above 0"
        )));
    }
    let targets = targets.flatten_all()?.to_dtype(DType::U32)?;
    let weights = weights.flatten_all()?;
    let fused_f32 =
        sessions.dtype() == DType::F32 && items.dtype() == DType::F32 && fused::enabled();
    if fused_f32 && sessions.device().is_cuda() {
        let rows = (DEVICE_CHUNK_ELEMENTS / n.max(1)).clamp(8, m.max(8));
        return chunked_on_device(sessions, items, &targets, &weights, temperature, rows);
    }
    if fused_f32 && matches!(sessions.device(), Device::Cpu) {
        let rows = (CHUNK_ELEMENTS / n.max(1)).clamp(8, m.max(8));
        return chunked(sessions, items, &targets, &weights, temperature, rows);
    }
    let flat = match sessions.rank() {
        2 => sessions.clone(),
        _ => sessions.reshape((m, d))?,
    };
    materialised(&flat, items, &targets, &weights, temperature)
}

/// `sessions` `[..., d]` detached and read as rows `[M, d]` (no graph node).
fn detached_rows(sessions: &Tensor) -> Result<Tensor> {
    let d = sessions.dims().last().copied().unwrap_or(0);
    let m = sessions.elem_count() / d.max(1);
    sessions.detach().contiguous()?.reshape((m, d))
}

/// How many logits one chunk holds at most on a GPU (64 M floats, 256 MB).
const DEVICE_CHUNK_ELEMENTS: usize = 1 << 26;

/// The chunked loss on a CUDA device, `rows` rows per chunk: per chunk, the logits from one
/// matrix product, one kernel (`rb_catalog_rows`; two over segments of rows longer than 4,096
/// logits) for the rows' weighted losses and the logits' gradient, and two products for the
/// chunk's share of the factors' gradients. The loss's denominator (the count of positive
/// losses) stays on the device: nothing is read back.
pub(crate) fn chunked_on_device(
    sessions: &Tensor,
    items: &Tensor,
    targets: &Tensor,
    weights: &Tensor,
    temperature: f64,
    rows: usize,
) -> Result<Tensor> {
    let s = detached_rows(sessions)?;
    let (m, _) = s.dims2()?;
    let (n, _) = items.dims2()?;
    let want_grad = sessions.track_op() || items.track_op();
    let e = items.detach().contiguous()?;
    let e_t = e.t()?;
    let w = weights.detach().to_dtype(DType::F32)?.contiguous()?;
    let targets = targets.contiguous()?;
    let rows = rows.clamp(1, m.max(1));
    let (mut losses, mut grad_s) = (Vec::new(), Vec::new());
    let mut grad_e: Option<Tensor> = None;
    let mut start = 0;
    while start < m {
        let r = rows.min(m - start);
        let s_c = s.narrow(0, start, r)?;
        let z = s_c.matmul(&e_t)?;
        let z = if temperature == 1.0 {
            z
        } else {
            (z / temperature)?
        };
        let packed = z.apply_op3_no_bwd(
            &targets.narrow(0, start, r)?,
            &w.narrow(0, start, r)?,
            &DeviceRows,
        )?;
        // The logits are read: free them before the products below allocate.
        drop(z);
        // The rows' losses, copied out of the chunk's buffer where more chunks follow, so that
        // the buffer (the chunk's `[r, N]` logits' gradient) is freed with the chunk. Kept as a
        // view, it lived until the losses were summed, so a step held every chunk's buffer at
        // once: `[M, N]` floats, the logits the chunks are there to avoid.
        let l = packed.narrow(0, r * n, r)?;
        losses.push(if r < m { l.force_contiguous()? } else { l });
        if want_grad {
            let dz = packed.narrow(0, 0, r * n)?.reshape((r, n))?;
            grad_s.push(dz.matmul(&e)?);
            let ge = dz.t()?.matmul(&s_c)?;
            // The chunk's buffer is read (unless a view of its losses holds it, one chunk only):
            // free it before the sum below allocates.
            drop((dz, packed));
            grad_e = Some(match grad_e {
                Some(acc) => (acc + ge)?,
                None => ge,
            });
        }
        start += r;
    }
    // The loss and its scale stay on the device (no read-back, so the host keeps queueing work):
    // one kernel gives Σ l / count(l > 0) and the gradients' factor.
    let l = Tensor::cat(&losses, 0)?;
    let total = l.apply_op1_no_bwd(&LossTotal { temperature })?;
    let loss = total.narrow(0, 0, 1)?.squeeze(0)?;
    let (Some(ge), true) = (grad_e, want_grad) else {
        return Ok(loss);
    };
    // ∂loss/∂logits = w·(softmax − onehot)/count; the logits are s·eᵀ/temperature. The sums are
    // scaled by that factor, 1 / (count · temperature), in the backward pass, together with the
    // upstream gradient: one product per gradient, not two.
    let k = total.narrow(0, 1, 1)?.squeeze(0)?;
    let node = LossNode {
        loss: f32::NAN,
        device_loss: Some(loss),
        grads: (Tensor::cat(&grad_s, 0)?.reshape(sessions.shape())?, ge),
        device_scale: Some(k),
    };
    sessions.apply_op2(items, node)
}

/// RecTools' loss from the rows' weighted losses `l` `[M]`, with the gradients' factor:
/// `[Σ l / count(l > 0), 1 / (count · temperature)]` (the loss NaN when no row has a positive
/// loss). One kernel on a CUDA device, where [`chunked_on_device`] takes it; the CPU form (the
/// same sums in row order) is its reference.
struct LossTotal {
    temperature: f64,
}

impl candle_core::CustomOp1 for LossTotal {
    fn name(&self) -> &'static str {
        "catalog-softmax-total"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let v = super::cpu_slice::storage_f32(s, l, "catalog row losses")?;
        let sum: f32 = v.iter().sum();
        let count = v.iter().filter(|&&x| x > 0.0).count() as f32;
        let t = self.temperature as f32;
        Ok((
            CpuStorage::F32(vec![sum / count, 1.0 / (count * t)]),
            Shape::from(2),
        ))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::catalog_loss_total((s, l), self.temperature as f32)
    }
}

/// [`chunked_on_device`]'s row pass as a device op over `(z, targets, weights)`, returning the
/// logits' gradient and the rows' weighted losses packed (CUDA only).
struct DeviceRows;

impl candle_core::CustomOp3 for DeviceRows {
    fn name(&self) -> &'static str {
        "catalog-softmax-rows"
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
        Err(Error::Msg(
            "catalog softmax loss: the device row pass runs on CUDA devices only".into(),
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
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::catalog_rows((s1, l1), (s2, l2), (s3, l3))
    }
}

/// The chunked loss, `rows` rows per chunk (checked inputs, CPU, f32).
fn chunked(
    sessions: &Tensor,
    items: &Tensor,
    targets: &Tensor,
    weights: &Tensor,
    temperature: f64,
    rows: usize,
) -> Result<Tensor> {
    let s_t = detached_rows(sessions)?;
    let (m, d) = s_t.dims2()?;
    let (n, _) = items.dims2()?;
    let t = targets.to_vec1::<u32>()?;
    if let Some(row) = t.iter().position(|&id| id as usize >= n) {
        return Err(Error::Msg(format!(
            "catalog softmax loss: row {row} has target {}, but the catalog has {n} items",
            t[row]
        )));
    }
    let w = weights.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let want_grad = sessions.track_op() || items.track_op();
    let e_t = items.detach().contiguous()?;
    let s_view = F32View::new(&s_t, "catalog softmax sessions")?;
    let e_view = F32View::new(&e_t, "catalog softmax items")?;
    let (s, e) = (s_view.get(), e_view.get());
    let rows = rows.clamp(1, m.max(1));
    let mut losses = vec![0f32; m];
    // One chunk's logits, reused by every chunk; the session gradient is written chunk by chunk
    // and the item gradient accumulated over the chunks in order.
    let mut z = Buf::scratch(rows * n);
    let mut grad_s = Buf::scratch(if want_grad { m * d } else { 0 });
    // The item gradient transposed, `[d, N]` (the layout its product runs fastest in).
    let mut grad_e_t = Buf::zeros(if want_grad { n * d } else { 0 });
    let mut start = 0;
    while start < m {
        let r = rows.min(m - start);
        let s_c = &s[start * d..(start + r) * d];
        let z_c = &mut z[..r * n];
        products::a_bt_into(z_c, s_c, e, n, d)?;
        row_pass(
            z_c,
            n,
            &t[start..start + r],
            &w[start..start + r],
            temperature as f32,
            want_grad,
            &mut losses[start..start + r],
        );
        if want_grad {
            products::a_b_into(&mut grad_s[start * d..(start + r) * d], z_c, e, n, d)?;
            products::add_at_b_transposed(&mut grad_e_t, z_c, s_c, n, d)?;
        }
        start += r;
    }
    drop(z);
    let count = losses.iter().filter(|&&l| l > 0.0).count();
    let total: f32 = losses.iter().sum();
    let loss = total / count as f32;
    if !want_grad {
        return Tensor::new(loss, sessions.device());
    }
    // ∂loss/∂logits = w·(softmax − onehot)/count; the logits are s·eᵀ/temperature.
    let k = (1.0 / (count as f64 * temperature)) as f32;
    scale_in_place(&mut grad_s, k);
    let grad_e = transpose_scaled(&grad_e_t, d, n, k);
    drop(grad_e_t);
    let grad_s = Tensor::from_vec(grad_s.into_vec(), sessions.shape(), sessions.device())?;
    let grad_e = Tensor::from_vec(grad_e, (n, d), items.device())?;
    drop((s_view, e_view));
    let node = LossNode {
        loss,
        device_loss: None,
        grads: (grad_s, grad_e),
        device_scale: None,
    };
    sessions.apply_op2(items, node)
}

/// `k · xᵀ` for row-major `x` `[rows, cols]`.
fn transpose_scaled(x: &[f32], rows: usize, cols: usize, k: f32) -> Vec<f32> {
    let mut t = vec![0f32; x.len()];
    if rows == 0 {
        return t;
    }
    t.par_chunks_mut(rows).enumerate().for_each(|(c, out)| {
        for (r, o) in out.iter_mut().enumerate() {
            *o = x[r * cols + c] * k;
        }
    });
    t
}

/// `x *= k`, element-wise.
fn scale_in_place(x: &mut [f32], k: f32) {
    x.par_chunks_mut(1 << 14).for_each(|c| {
        pulp::Arch::new().dispatch(
            #[inline(always)]
            || {
                for v in c.iter_mut() {
                    *v *= k;
                }
            },
        )
    });
}

/// The loss with the `[M, N]` logits materialised: the reference, and the path off the CPU.
fn materialised(
    sessions: &Tensor,
    items: &Tensor,
    targets: &Tensor,
    weights: &Tensor,
    temperature: f64,
) -> Result<Tensor> {
    let logits = sessions.matmul(&items.t()?)?;
    let logits = if temperature == 1.0 {
        logits
    } else {
        (logits / temperature)?
    };
    let ce = softmax_cross_entropy_ignore_0(&logits, targets)?;
    let l = ce.mul(&weights.to_dtype(ce.dtype())?)?;
    let count = l.gt(0.0)?.to_dtype(ce.dtype())?.sum_all()?;
    l.sum_all()?.div(&count)
}

/// One chunk's row pass over its logits `z` `[r, N]`, in place: each row's weighted loss into
/// `losses`, and (when gradients are wanted) the row replaced by `w·(softmax − onehot)`, or zeros
/// for an ignored row.
fn row_pass(
    z: &mut [f32],
    n: usize,
    targets: &[u32],
    weights: &[f32],
    temperature: f32,
    want_grad: bool,
    losses: &mut [f32],
) {
    if n == 0 {
        return;
    }
    z.par_chunks_exact_mut(n)
        .zip(losses.par_iter_mut())
        .zip(targets.par_iter().zip(weights.par_iter()))
        .for_each(|((row, loss), (&t, &w))| {
            *loss = 0.0;
            if t == 0 {
                if want_grad {
                    row.fill(0.0);
                }
                return;
            }
            if temperature != 1.0 {
                fast_exp::div_in_place(row, temperature);
            }
            let mx = fast_exp::max(row);
            let target = row[t as usize];
            if want_grad {
                // One exp per logit: e^(z − max) in place, then w·softmax = e · w / Σe.
                let sum = fast_exp::exp_shifted_in_place_sum(row, mx);
                *loss = (mx + sum.ln() - target) * w;
                fast_exp::mul_in_place(row, w / sum);
                row[t as usize] -= w;
            } else {
                *loss = (mx + fast_exp::sum_exp_shifted(row, mx).ln() - target) * w;
            }
        });
}

/// The scalar loss as a node over `(sessions, items)`; its backward scales the gradients the
/// forward pass computed.
struct LossNode {
    loss: f32,
    /// The loss computed on a device, returned in place of `loss`.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    device_loss: Option<Tensor>,
    /// The gradients of the sessions and the items (times `device_scale` where one is given).
    grads: (Tensor, Tensor),
    /// On a device, the factor the gradients are still to be scaled by (a scalar tensor: the
    /// loss's denominator is not read back).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    device_scale: Option<Tensor>,
}

impl CustomOp2 for LossNode {
    fn name(&self) -> &'static str {
        "catalog-softmax-loss"
    }

    fn cpu_fwd(
        &self,
        _s1: &CpuStorage,
        _l1: &Layout,
        _s2: &CpuStorage,
        _l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Ok((CpuStorage::F32(vec![self.loss]), Shape::from(())))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        _l1: &Layout,
        _s2: &candle_core::CudaStorage,
        _l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        if let Some(t) = &self.device_loss {
            return super::precomputed::cuda_copy(t, "catalog softmax loss");
        }
        super::cuda::scalar(&s1.device, self.loss)
    }

    fn bwd(
        &self,
        _sessions: &Tensor,
        _items: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if !matches!(grad.device(), Device::Cpu) {
            let (gs, ge) = &self.grads;
            let g = match &self.device_scale {
                Some(k) => k.broadcast_mul(grad)?,
                None => grad.clone(),
            };
            return Ok((Some(gs.broadcast_mul(&g)?), Some(ge.broadcast_mul(&g)?)));
        }
        let g = with_f32(grad, |g| g.first().copied())?
            .ok_or_else(|| Error::Msg("catalog softmax loss: empty upstream gradient".into()))?;
        let (gs, ge) = &self.grads;
        if g == 1.0 {
            return Ok((Some(gs.clone()), Some(ge.clone())));
        }
        Ok((Some((gs * f64::from(g))?), Some((ge * f64::from(g))?)))
    }
}

#[cfg(test)]
mod tests;
