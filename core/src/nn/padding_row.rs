//! An embedding table whose first row (the padding id, 0) gets no gradient, as one graph node:
//! torch's `nn.Embedding(padding_idx=0)`, which RecTools' `IdEmbeddingsItemNet` uses. The row
//! keeps whatever value it has (RecTools initialises every parameter, the padding row included,
//! after building the table) and the optimiser never moves it.
//!
//! Composed from candle's ops this is `cat([table[0].detach(), table[1..]])`: a copy of the
//! table forward, and backward the cat's and the narrow's gradients, each a zero-filled buffer of
//! the table's size and an add (about a dozen launches on a GPU, and on a 500k-item catalog some
//! 0.8 GB allocated a step). Here the forward pass is one copy and the backward pass one copy
//! with the first row zeroed.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

use super::cpu_slice::storage_f32;

/// `table` as it is (`[N, ...]`, rows along the first dimension), whose first row gets no
/// gradient: the gradient flowing back to `table` has that row zeroed. Rows 1.. get exactly the
/// gradient they are handed.
pub fn frozen_first_row(table: &Tensor) -> Result<Tensor> {
    let rows = table.dims().first().copied().unwrap_or(0);
    if table.dtype() != DType::F32 || rows == 0 {
        return composed(table);
    }
    table
        .contiguous()?
        .apply_op1(CopyRows { zero_first: false })
}

/// The same from candle's ops (other dtypes; the reference of the tests).
pub fn composed(table: &Tensor) -> Result<Tensor> {
    let rows = table.dims().first().copied().unwrap_or(0);
    let pad = table.narrow(0, 0, rows.min(1))?.detach();
    if rows <= 1 {
        return Ok(pad);
    }
    Tensor::cat(&[&pad, &table.narrow(0, 1, rows - 1)?], 0)
}

/// A copy of a table, with its first row zeroed where `zero_first`. Without zeroing it is the node
/// of [`frozen_first_row`], and its backward pass is the zeroing copy of the gradient.
struct CopyRows {
    zero_first: bool,
}

/// A copy of `s`'s values, with the first of its rows (rows along the first dimension of `l`)
/// zeroed where `zero_first`.
fn copy_cpu(s: &CpuStorage, l: &Layout, zero_first: bool) -> Result<(CpuStorage, Shape)> {
    let x = storage_f32(s, l, "frozen first row: table")?;
    let mut out = x.to_vec();
    if zero_first {
        let rows = l.dims().first().copied().unwrap_or(1).max(1);
        let width = out.len() / rows;
        out[..width].fill(0.0);
    }
    Ok((CpuStorage::F32(out), l.shape().clone()))
}

impl CustomOp1 for CopyRows {
    fn name(&self) -> &'static str {
        if self.zero_first {
            "zero-first-row"
        } else {
            "frozen-first-row"
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        copy_cpu(s, l, self.zero_first)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::copy_rows(s, l, self.zero_first)
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let zeroed = CopyRows { zero_first: true };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&zeroed)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Values and the table's gradient under `Σ y·r` (r fixed, different per element).
    fn run(f: fn(&Tensor) -> Result<Tensor>, rows: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let dev = Device::Cpu;
        let d = 3;
        let t = Var::from_vec(
            (0..rows * d).map(|i| (i as f32 * 0.7).sin()).collect(),
            (rows, d),
            &dev,
        )?;
        let y = f(t.as_tensor())?;
        let r = Tensor::from_vec(
            (0..rows * d).map(|i| i as f32 - 2.5).collect(),
            (rows, d),
            &dev,
        )?;
        let grads = (&y * &r)?.sum_all()?.backward()?;
        let g = match grads.get(t.as_tensor()) {
            Some(g) => g.flatten_all()?.to_vec1::<f32>()?,
            None => vec![0.0; rows * d],
        };
        Ok((y.flatten_all()?.to_vec1::<f32>()?, g))
    }

    #[test]
    fn the_values_pass_and_the_first_row_gets_no_gradient() -> Result<()> {
        let (y, g) = run(frozen_first_row, 4)?;
        let (want_y, want_g) = run(composed, 4)?;
        assert_eq!(y, want_y);
        assert_eq!(g, want_g);
        // Row 0 gets nothing; every other element its own upstream value (i − 2.5).
        assert_eq!(&g[..3], &[0.0; 3]);
        let rest: Vec<f32> = (3..12).map(|i| i as f32 - 2.5).collect();
        assert_eq!(&g[3..], &rest[..]);
        // A table of one row: no gradient at all.
        let (y1, g1) = run(frozen_first_row, 1)?;
        assert_eq!(y1, run(composed, 1)?.0);
        assert_eq!(g1, vec![0.0; 3]);
        Ok(())
    }
}
