//! Learnable position embeddings added to sessions: `out[b, l] = x[b, l] + table[rows[l]]`, one
//! table row per position, the same for every session. RecTools' positional encodings are this
//! (`LearnableInversePositionalEncoding` counts the rows from the end, `rows[l] = L − 1 − l`, so
//! that a left-padded session's last item always reads row 0).
//!
//! The composed form is a lookup of the rows ([`gather_rows()`]) broadcast over the batch and
//! added. On a GPU that is four graph nodes where one does: the lookup, the broadcast, the add,
//! and the lookup's gradient, a sort of the row ids and a sum by id. Here, where the ops take the
//! forms a GPU runs ([`crate::nn::fused`]), it is one node: its forward pass one kernel, its
//! table gradient (each position's gradient summed over the batch, into its row) one more. The
//! rows are distinct, checked when [`PositionRows`] is made, so every table row takes at most one
//! position's sum: no order of additions to fix, and the same values as the composed form's.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Device, Layout, Shape, Tensor};

use super::{
    cpu_slice::{storage_f32, storage_u32},
    gather_rows,
};
use crate::{CoreError, Result};

/// The table row each position of a session reads, distinct, on a device. Made once by a
/// component (the rows do not change between steps, and a step that may be captured cannot
/// upload them, [`crate::nn::capture`]).
#[derive(Debug, Clone)]
pub struct PositionRows {
    /// The rows, u32 `[L]`.
    ids: Tensor,
    /// One past the highest row.
    needs_rows: usize,
}

impl PositionRows {
    /// The rows `rows` (one per position, distinct) on `device`.
    pub fn new(rows: &[u32], device: &Device) -> Result<Self> {
        let mut seen = std::collections::HashSet::with_capacity(rows.len());
        if let Some(p) = rows.iter().position(|r| !seen.insert(*r)) {
            return Err(CoreError::Other(format!(
                "position rows: position {p} reads row {}, which an earlier position reads too; \
                 each position needs a row of its own",
                rows[p]
            )));
        }
        Ok(PositionRows {
            ids: Tensor::new(rows, device)?,
            needs_rows: rows.iter().max().map_or(0, |&r| r as usize + 1),
        })
    }

    /// Rows counted from the end: position `l` of `len` reads row `len − 1 − l` (RecTools'
    /// `LearnableInversePositionalEncoding`).
    pub fn from_end(len: usize, device: &Device) -> Result<Self> {
        let rows: Vec<u32> = (0..len as u32).rev().collect();
        Self::new(&rows, device)
    }

    /// The rows, u32 `[L]`.
    pub fn ids(&self) -> &Tensor {
        &self.ids
    }

    /// The number of positions.
    pub fn len(&self) -> usize {
        self.ids.elem_count()
    }

    /// Whether there are no positions.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `x + table[rows]` broadcast over the batch: `x` `[B, L, d]`, `table` `[N, d]`, `rows` of
/// length L, each below N. Differentiable with respect to `x` and `table`. On a GPU (and on the
/// CPU under `RECBLOCKS_BLOCKS=nodes`) one graph node; elsewhere candle's lookup and
/// `broadcast_add`, with the same values.
pub fn add_position_rows(x: &Tensor, table: &Tensor, rows: &PositionRows) -> Result<Tensor> {
    let (_, l, d) = x.dims3()?;
    let (n, d_table) = table.dims2()?;
    if d_table != d || rows.len() != l || rows.needs_rows > n {
        return Err(CoreError::Other(format!(
            "position rows: sessions {:?}, a table {:?} and {} position rows up to row {}; \
             expected one row per position, each below the table's {n} rows, as wide as the \
             sessions",
            x.dims(),
            table.dims(),
            rows.len(),
            rows.needs_rows.saturating_sub(1)
        )));
    }
    let f32s = x.dtype() == DType::F32 && table.dtype() == DType::F32;
    if f32s && super::fused::gpu_composition(x.device()) {
        return Ok(add_position_rows_op(x, table, rows)?);
    }
    Ok(x.broadcast_add(&gather_rows(table, &rows.ids)?)?)
}

/// [`add_position_rows`] as the node on any device (checked inputs; tests run its CPU form).
pub(crate) fn add_position_rows_op(
    x: &Tensor,
    table: &Tensor,
    rows: &PositionRows,
) -> candle_core::Result<Tensor> {
    x.contiguous()?
        .apply_op3(&table.contiguous()?, &rows.ids, AddPositionRows)
}

/// [`add_position_rows`]'s node over `(x, table, rows)`.
struct AddPositionRows;

impl CustomOp3 for AddPositionRows {
    fn name(&self) -> &'static str {
        "add-position-rows"
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
        let x = storage_f32(s1, l1, "position rows: sessions")?;
        let table = storage_f32(s2, l2, "position rows: table")?;
        let rows = storage_u32(s3, l3, "position rows: rows")?;
        let d = l1.dims().last().copied().unwrap_or(0);
        let mut out = Vec::with_capacity(x.len());
        if d > 0 {
            for (p, xr) in x.chunks(d).enumerate() {
                let r = rows[p % rows.len()] as usize;
                out.extend(
                    xr.iter()
                        .zip(&table[r * d..(r + 1) * d])
                        .map(|(a, b)| a + b),
                );
            }
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
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        crate::nn::cuda::add_position_rows((s1, l1), (s2, l2), (s3, l3))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        table: &Tensor,
        rows: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let n_rows = table.dim(0)?;
        let g = grad.contiguous()?;
        let g_table = g.apply_op2_no_bwd(rows, &PositionRowsGrad { n_rows })?;
        Ok((Some(g), Some(g_table), None))
    }
}

/// The table's gradient: (output gradient `[B, L, d]`, rows `[L]`) to `[n_rows, d]`, row
/// `rows[l]` the sum over the batch of position `l`'s gradient (in batch order), other rows 0.
struct PositionRowsGrad {
    n_rows: usize,
}

impl CustomOp2 for PositionRowsGrad {
    fn name(&self) -> &'static str {
        "position-rows-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = storage_f32(s1, l1, "position rows gradient")?;
        let rows = storage_u32(s2, l2, "position rows: rows")?;
        let (_, l, d) = l1.shape().dims3()?;
        let mut out = vec![0f32; self.n_rows * d];
        for (p, &r) in rows.iter().enumerate().take(l) {
            let dst = &mut out[r as usize * d..(r as usize + 1) * d];
            for session in g.chunks(l * d) {
                for (o, v) in dst.iter_mut().zip(&session[p * d..(p + 1) * d]) {
                    *o += v;
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((self.n_rows, d))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        crate::nn::cuda::position_rows_grad((s1, l1), (s2, l2), self.n_rows)
    }
}

#[cfg(test)]
mod tests;
