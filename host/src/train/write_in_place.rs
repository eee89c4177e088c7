//! Host values written into a fixed buffer in place: what a replayed training step does between
//! replays with the batch, the dropout keys and Adam's coefficients (`captured_step`).
//!
//! `dst.slice_set(&src.to_device(dev)?, 0, 0)` (candle's way) allocates a device tensor, copies
//! the values up into it and launches a device-to-device copy into `dst`; writing the host values
//! straight into `dst`'s storage is one host-to-device copy. The buffers a CUDA graph reads must
//! keep their addresses, so they are written in place either way.

use candle_core::{CpuStorage, InplaceOp1, Layout, Tensor};

/// Contiguous host values of one dtype.
#[derive(Clone, Copy)]
pub(crate) enum HostValues<'a> {
    U32(&'a [u32]),
    I64(&'a [i64]),
    F32(&'a [f32]),
}

impl HostValues<'_> {
    fn len(&self) -> usize {
        match self {
            HostValues::U32(v) => v.len(),
            HostValues::I64(v) => v.len(),
            HostValues::F32(v) => v.len(),
        }
    }
}

/// Writes `values` over the elements of the contiguous tensor `dst` (its own storage, in place:
/// every handle on it sees them), which must have the same dtype and element count.
pub(crate) fn write(dst: &Tensor, values: HostValues<'_>) -> candle_core::Result<()> {
    if values.len() != dst.elem_count() {
        return Err(candle_core::Error::Msg(format!(
            "writing {} values into a buffer of {:?}",
            values.len(),
            dst.dims()
        )));
    }
    dst.inplace_op1(&Write(values))
}

/// Writes `src` (a tensor on any device, contiguous or not) over `dst`: straight from the host
/// where `src` is a contiguous CPU tensor of a dtype [`HostValues`] holds, else through candle's
/// `slice_set`.
pub(crate) fn write_tensor(dst: &Tensor, src: &Tensor) -> candle_core::Result<()> {
    if src.dims() != dst.dims() || src.dtype() != dst.dtype() {
        return Err(candle_core::Error::Msg(format!(
            "writing a {:?} {:?} tensor into a {:?} {:?} buffer",
            src.dtype(),
            src.dims(),
            dst.dtype(),
            dst.dims()
        )));
    }
    if src.device().is_cpu() {
        let (storage, layout) = src.storage_and_layout();
        if let (candle_core::Storage::Cpu(s), Some((a, b))) =
            (&*storage, layout.contiguous_offsets())
        {
            let values = match s {
                CpuStorage::U32(v) => Some(HostValues::U32(&v[a..b])),
                CpuStorage::I64(v) => Some(HostValues::I64(&v[a..b])),
                CpuStorage::F32(v) => Some(HostValues::F32(&v[a..b])),
                _ => None,
            };
            if let Some(values) = values {
                return write(dst, values);
            }
        }
    }
    dst.slice_set(&src.contiguous()?.to_device(dst.device())?, 0, 0)
}

/// The in-place op.
struct Write<'a>(HostValues<'a>);

fn mismatch(what: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!("writing host values into a buffer: {what}"))
}

impl InplaceOp1 for Write<'_> {
    fn name(&self) -> &'static str {
        "write-host-values"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let (a, b) = layout
            .contiguous_offsets()
            .ok_or_else(|| mismatch("the buffer is not contiguous"))?;
        match (storage, self.0) {
            (CpuStorage::U32(d), HostValues::U32(s)) => d[a..b].copy_from_slice(s),
            (CpuStorage::I64(d), HostValues::I64(s)) => d[a..b].copy_from_slice(s),
            (CpuStorage::F32(d), HostValues::F32(s)) => d[a..b].copy_from_slice(s),
            _ => return Err(mismatch("the buffer's dtype differs from the values'")),
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &mut candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<()> {
        let (a, b) = layout
            .contiguous_offsets()
            .ok_or_else(|| mismatch("the buffer is not contiguous"))?;
        let dev = storage.device.clone();
        match self.0 {
            HostValues::U32(s) => {
                let mut d = storage.as_cuda_slice_mut::<u32>()?.slice_mut(a..b);
                dev.memcpy_htod(s, &mut d)
            }
            HostValues::I64(s) => {
                let mut d = storage.as_cuda_slice_mut::<i64>()?.slice_mut(a..b);
                dev.memcpy_htod(s, &mut d)
            }
            HostValues::F32(s) => {
                let mut d = storage.as_cuda_slice_mut::<f32>()?.slice_mut(a..b);
                dev.memcpy_htod(s, &mut d)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn values_land_in_place_at_the_buffers_offset() -> candle_core::Result<()> {
        let whole = Tensor::zeros(6, DType::F32, &Device::Cpu)?;
        let handle = whole.clone();
        // A view past the start: only its elements change.
        write(&whole.narrow(0, 2, 3)?, HostValues::F32(&[1.0, 2.0, 3.0]))?;
        assert_eq!(handle.to_vec1::<f32>()?, [0.0, 0.0, 1.0, 2.0, 3.0, 0.0]);
        let ids = Tensor::zeros((2, 2), DType::U32, &Device::Cpu)?;
        write_tensor(&ids, &Tensor::new(&[[4u32, 5], [6, 7]], &Device::Cpu)?)?;
        assert_eq!(ids.to_vec2::<u32>()?, [[4, 5], [6, 7]]);
        // A non-contiguous source goes through slice_set, with the same result.
        let t = Tensor::new(&[[1u32, 2], [3, 4]], &Device::Cpu)?.t()?;
        write_tensor(&ids, &t)?;
        assert_eq!(ids.to_vec2::<u32>()?, [[1, 3], [2, 4]]);
        Ok(())
    }

    #[test]
    fn wrong_sizes_and_dtypes_are_errors() -> candle_core::Result<()> {
        let buf = Tensor::zeros(3, DType::F32, &Device::Cpu)?;
        assert!(write(&buf, HostValues::F32(&[1.0, 2.0])).is_err());
        assert!(write(&buf, HostValues::U32(&[1, 2, 3])).is_err());
        assert!(write_tensor(&buf, &Tensor::zeros(3, DType::U32, &Device::Cpu)?).is_err());
        assert_eq!(buf.to_vec1::<f32>()?, [0.0; 3], "nothing written");
        Ok(())
    }
}
