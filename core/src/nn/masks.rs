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

use candle_core::{Device, Tensor};

use crate::Result;

/// `[B, L, 1]` f32 timeline mask: 1 at real items (id ≠ 0), 0 at padding.
pub fn timeline_mask(x: &Tensor) -> Result<Tensor> {
    Ok(x.ne(0u32)?
        .to_dtype(candle_core::DType::F32)?
        .unsqueeze(2)?)
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
