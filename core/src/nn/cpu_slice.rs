//! Borrowing a tensor's f32 data in a backward pass without copying it.
//!
//! candle hands custom ops' backward passes tensors, not buffers. On the CPU a contiguous f32
//! tensor's buffer can be read in place; anything else is copied once.

use candle_core::{CpuStorage, Result, Storage, Tensor};

/// Calls `f` with the elements of `t` in row-major order: borrowed when `t` is a contiguous f32
/// CPU tensor, copied otherwise.
pub fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    {
        let (storage, layout) = t.storage_and_layout();
        if let (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) =
            (&*storage, layout.contiguous_offsets())
        {
            return Ok(f(&v[a..b]));
        }
    }
    let v: Vec<f32> = t
        .flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1()?;
    Ok(f(&v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn borrows_contiguous_and_copies_strided() -> Result<()> {
        let t = Tensor::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu)?;
        assert_eq!(with_f32(&t, |s| s.to_vec())?, vec![1., 2., 3., 4.]);
        assert_eq!(with_f32(&t.t()?, |s| s.to_vec())?, vec![1., 3., 2., 4.]);
        assert_eq!(with_f32(&t.narrow(0, 1, 1)?, |s| s.to_vec())?, vec![3., 4.]);
        Ok(())
    }
}
