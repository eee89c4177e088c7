//! Attention masks as RecTools' `TransformerTorchBackbone.encode_sessions` builds them, expressed
//! as additive biases (0 = allowed, −inf = not allowed) broadcastable to `[B, H, L, L]`.
//!
//! - causal only: `[1, 1, L, L]`, −inf above the diagonal;
//! - key padding only: `[B, 1, 1, L]`, −inf at padded keys;
//! - both: RecTools' merged mask `[B, 1, L, L]` (same for every head), −inf where causal or
//!   padding, then the **diagonal set to 0** so padded queries never get an all-masked row
//!   (pytorch#41508).
//!
//! On a CUDA device each bias is built by one kernel from the ids where they lie (no copy to the
//! host and back, so a captured step can build it); the values are the same.

use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Shape, Tensor};

use crate::{nn::cpu_slice::storage_f32, Result};

/// `[B, L, 1]` f32 timeline mask: 1 at real items (id ≠ 0), 0 at padding.
pub fn timeline_mask(x: &Tensor) -> Result<Tensor> {
    Ok(x.ne(0u32)?
        .to_dtype(candle_core::DType::F32)?
        .unsqueeze(2)?)
}

/// `x · timeline_mask` for `x` `[B, L, d]` and the mask `[B, L, 1]` ([`timeline_mask`]): RecTools'
/// `seqs *= timeline_mask`, as one graph node whose backward pass masks the gradient the same way
/// and gives the mask none. (candle's backward pass of `x.broadcast_mul(mask)` also computes the
/// broadcast mask's gradient `grad · x`, into a zero-filled buffer and an add, and keeps it until
/// the step ends: three launches and two activation-sized buffers on a GPU, for a gradient nobody
/// reads.) The values and `x`'s gradient are those of `broadcast_mul`, to the bit. Other dtypes or
/// shapes take `broadcast_mul`.
pub fn apply_timeline_mask(x: &Tensor, timeline_mask: &Tensor) -> Result<Tensor> {
    // One mask value per row of x: the same leading dims, and 1 where x has d.
    let (xd, md) = (x.dims(), timeline_mask.dims());
    let rows_match = matches!((xd.split_last(), md.split_last()),
        (Some((&d, x_rows)), Some((&1, m_rows))) if d > 0 && x_rows == m_rows);
    let f32s = x.dtype() == DType::F32 && timeline_mask.dtype() == DType::F32;
    if !(rows_match && f32s) {
        return Ok(x.broadcast_mul(timeline_mask)?);
    }
    Ok(x.contiguous()?
        .apply_op2(&timeline_mask.contiguous()?, TimelineMask)?)
}

/// [`apply_timeline_mask`]'s node over `(x, mask)`.
struct TimelineMask;

impl CustomOp2 for TimelineMask {
    fn name(&self) -> &'static str {
        "timeline-mask"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = storage_f32(s1, l1, "timeline mask: input")?;
        let m = storage_f32(s2, l2, "timeline mask: mask")?;
        let d = l1.dims().last().copied().unwrap_or(1).max(1);
        if m.len() * d != x.len() {
            return Err(candle_core::Error::Msg(format!(
                "timeline mask: {} values of width {d} and a mask of {}",
                x.len(),
                m.len()
            )));
        }
        let mut out = Vec::with_capacity(x.len());
        for (row, &mr) in x.chunks(d).zip(m) {
            out.extend(row.iter().map(|&v| v * mr));
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        crate::nn::cuda::row_scale((s1, l1), (s2, l2))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        mask: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.contiguous()?.apply_op2_no_bwd(mask, self)?;
        Ok((Some(g), None))
    }
}

/// The causal bias `[1, 1, L, L]`: query i may attend to keys j ≤ i.
pub fn causal_bias(l: usize, device: &Device) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = device {
        return Ok(crate::nn::cuda::attention_bias(
            dev,
            None,
            l,
            crate::nn::cuda::BiasKind::Causal,
        )?);
    }
    let mut v = vec![0f32; l * l];
    for i in 0..l {
        for j in (i + 1)..l {
            v[i * l + j] = f32::NEG_INFINITY;
        }
    }
    Ok(Tensor::from_vec(v, (1, 1, l, l), device)?)
}

/// The bias of `kind` for ids `x` built on their CUDA device; `None` elsewhere.
#[cfg(feature = "cuda")]
fn on_device(x: &Tensor, kind: crate::nn::cuda::BiasKind) -> Option<Result<Tensor>> {
    let Device::Cuda(dev) = x.device() else {
        return None;
    };
    let l = x.dims().last().copied().unwrap_or(0);
    Some(crate::nn::cuda::attention_bias(dev, Some(x), l, kind).map_err(Into::into))
}

/// The key padding bias `[B, 1, 1, L]`: keys with id 0 (PAD) are not attended to.
pub fn key_padding_bias(x: &Tensor) -> Result<Tensor> {
    let (b, l) = x.dims2()?;
    #[cfg(feature = "cuda")]
    if let Some(bias) = on_device(x, crate::nn::cuda::BiasKind::KeyPadding) {
        return bias;
    }
    let ids = x.flatten_all()?.to_vec1::<u32>()?;
    let v: Vec<f32> = ids
        .iter()
        .map(|&id| if id == 0 { f32::NEG_INFINITY } else { 0.0 })
        .collect();
    Ok(Tensor::from_vec(v, (b, 1, 1, l), x.device())?)
}

/// RecTools' merged mask `[B, 1, L, L]`: −inf where `j > i` or key j is padding, diagonal 0.
pub fn merged_bias(x: &Tensor) -> Result<Tensor> {
    let (b, l) = x.dims2()?;
    #[cfg(feature = "cuda")]
    if let Some(bias) = on_device(x, crate::nn::cuda::BiasKind::Merged) {
        return bias;
    }
    let ids = x.flatten_all()?.to_vec1::<u32>()?;
    let mut v = vec![0f32; b * l * l];
    for bi in 0..b {
        for i in 0..l {
            for j in 0..l {
                let masked = j > i || ids[bi * l + j] == 0;
                if masked && i != j {
                    v[(bi * l + i) * l + j] = f32::NEG_INFINITY;
                }
            }
        }
    }
    Ok(Tensor::from_vec(v, (b, 1, l, l), x.device())?)
}

/// The attention bias for input ids `x` `[B, L]` under RecTools' rules, or `None` when neither
/// mask is on.
pub fn attention_bias(x: &Tensor, causal: bool, key_padding: bool) -> Result<Option<Tensor>> {
    let l = x.dim(1)?;
    Ok(match (causal, key_padding) {
        (false, false) => None,
        (true, false) => Some(causal_bias(l, x.device())?),
        (false, true) => Some(key_padding_bias(x)?),
        (true, true) => Some(merged_bias(x)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NI: f32 = f32::NEG_INFINITY;

    #[test]
    fn the_timeline_mask_node_equals_broadcast_mul_and_gives_the_mask_no_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let ids = Tensor::new(&[[0u32, 5, 6, 2], [0, 0, 7, 1]], &dev)?;
        let tm = timeline_mask(&ids)?;
        let vals: Vec<f32> = (0..2 * 4 * 3).map(|i| (i as f32 * 0.9).sin()).collect();
        let up = Tensor::from_vec(
            (0..24).map(|i| i as f32 - 11.5).collect::<Vec<_>>(),
            (2, 4, 3),
            &dev,
        )?;
        let run = |fused: bool| -> Result<(Vec<f32>, Vec<f32>, bool)> {
            let x = candle_core::Var::from_vec(vals.clone(), (2, 4, 3), &dev)?;
            let m = candle_core::Var::from_tensor(&tm)?;
            let y = if fused {
                apply_timeline_mask(x.as_tensor(), m.as_tensor())?
            } else {
                x.as_tensor().broadcast_mul(m.as_tensor())?
            };
            let grads = (&y * &up)?.sum_all()?.backward()?;
            let gx = grads
                .get(x.as_tensor())
                .map(|g| g.flatten_all()?.to_vec1::<f32>())
                .transpose()?
                .unwrap_or_default();
            Ok((
                y.flatten_all()?.to_vec1::<f32>()?,
                gx,
                grads.get(m.as_tensor()).is_some(),
            ))
        };
        let (y, gx, mask_grad) = run(true)?;
        let (want_y, want_gx, _) = run(false)?;
        assert_eq!(y, want_y);
        assert_eq!(gx, want_gx);
        assert!(!mask_grad, "the mask is data: no gradient");
        // Padded rows (the first of each session, the second of the second) are zeroed.
        assert_eq!(&y[..3], &[0.0; 3]);
        assert_eq!(&y[12..18], &[0.0; 6]);
        assert_eq!(&gx[12..18], &[0.0; 6]);
        // A mask whose rows are laid out otherwise is not paired row by row: broadcast_mul
        // refuses it, and so does the op.
        let x = Tensor::zeros((2, 3, 4), candle_core::DType::F32, &dev)?;
        let transposed = Tensor::ones((3, 2, 1), candle_core::DType::F32, &dev)?;
        assert!(apply_timeline_mask(&x, &transposed).is_err());
        Ok(())
    }

    #[test]
    fn causal_masks_future_keys() -> Result<()> {
        let m = causal_bias(3, &Device::Cpu)?.squeeze(0)?.squeeze(0)?;
        assert_eq!(
            m.to_vec2::<f32>()?,
            vec![vec![0., NI, NI], vec![0., 0., NI], vec![0., 0., 0.]]
        );
        Ok(())
    }

    #[test]
    fn key_padding_masks_pad_keys_per_session() -> Result<()> {
        let x = Tensor::new(&[[0u32, 5, 6], [0, 0, 7]], &Device::Cpu)?;
        let m = key_padding_bias(&x)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(m, vec![NI, 0., 0., NI, NI, 0.]);
        Ok(())
    }

    #[test]
    fn merged_mask_zeroes_the_diagonal_of_padded_queries() -> Result<()> {
        // Session [PAD, PAD, 7]: without the zeroed diagonal, queries 0 and 1 would see no key.
        let x = Tensor::new(&[[0u32, 0, 7]], &Device::Cpu)?;
        let m = merged_bias(&x)?.squeeze(0)?.squeeze(0)?.to_vec2::<f32>()?;
        assert_eq!(
            m,
            vec![vec![0., NI, NI], vec![NI, 0., NI], vec![NI, NI, 0.]]
        );
        let x = Tensor::new(&[[0u32, 4, 7]], &Device::Cpu)?;
        let m = merged_bias(&x)?.squeeze(0)?.squeeze(0)?.to_vec2::<f32>()?;
        assert_eq!(
            m,
            vec![vec![0., NI, NI], vec![NI, 0., NI], vec![NI, 0., 0.]]
        );
        Ok(())
    }

    #[test]
    fn timeline_mask_is_one_at_items() -> Result<()> {
        let x = Tensor::new(&[[0u32, 3, 1]], &Device::Cpu)?;
        let m = timeline_mask(&x)?;
        assert_eq!(m.dims(), &[1, 3, 1]);
        assert_eq!(m.flatten_all()?.to_vec1::<f32>()?, vec![0., 1., 1.]);
        Ok(())
    }
}
