//! Borrowing a tensor's f32 data in a backward pass without copying it.
//!
//! candle hands custom ops' backward passes tensors, not buffers. On the CPU a contiguous f32
//! tensor's buffer can be read in place; anything else is copied once.

use candle_core::{CpuStorage, Error, Layout, Result, Storage, StorageRef, Tensor};

/// A contiguous f32 CPU tensor's elements, borrowed for as long as the view lives (the fused
/// blocks read several tensors at once).
pub struct F32View<'a> {
    guard: StorageRef<'a>,
    start: usize,
    end: usize,
}

impl<'a> F32View<'a> {
    /// A view of `t`; an error naming `what` unless `t` is a contiguous f32 CPU tensor.
    pub fn new(t: &'a Tensor, what: &str) -> Result<Self> {
        let (guard, layout) = t.storage_and_layout();
        let offsets = layout.contiguous_offsets();
        match (&*guard, offsets) {
            (Storage::Cpu(CpuStorage::F32(_)), Some((start, end))) => {
                Ok(F32View { guard, start, end })
            }
            _ => Err(Error::Msg(format!(
                "{what} must be a contiguous f32 CPU tensor"
            ))),
        }
    }

    /// The elements in row-major order.
    pub fn get(&self) -> &[f32] {
        match &*self.guard {
            Storage::Cpu(CpuStorage::F32(v)) => &v[self.start..self.end],
            // `new` checked the storage; a tensor's storage never changes kind.
            _ => &[],
        }
    }
}

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

/// The elements of an f32 CPU storage seen through a contiguous layout (custom ops' forward);
/// `what` names the input in the error.
pub fn storage_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => Err(Error::Msg(format!(
            "{what} must be a contiguous f32 tensor"
        ))),
    }
}

/// As [`storage_f32`], for u32 ids.
pub fn storage_u32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [u32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::U32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => Err(Error::Msg(format!(
            "{what} must be a contiguous u32 tensor"
        ))),
    }
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
