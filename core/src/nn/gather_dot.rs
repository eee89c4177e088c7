//! Fused candidate scoring: `logits[m, k] = h[m] · table[ids[m, k]]`, with its own backward.
//!
//! Ports the per-position path of RecTools' `DistanceSimilarityModule._get_pos_neg_logits`
//! (`item_embs[candidate_item_ids] @ session_embs.unsqueeze(-1)`) used by the sampled losses
//! (`BCE`, `gBCE`, `sampled_softmax`). Composed from candle ops it gathers an `[M, K, d]` copy of
//! the candidates' rows (180 MB for a 128-session batch with 128 negatives at d = 64), runs `M`
//! one-column matmuls, and its backward scatters `M·K` rows into the table one by one on one
//! thread. Here the forward is `M·K` dot products read straight from the table; the backward
//! computes `∂h[m] = Σ_k g[m, k]·table[ids[m, k]]` per row and `∂table[i] = Σ g[m, k]·h[m]`
//! over the `(m, k)` with `ids[m, k] = i`, grouped by item first (a counting sort), so that rows
//! of the table are summed in parallel without write conflicts and in a fixed order
//! (deterministic whatever the thread count).
//!
//! On a CUDA device the three ops are kernels (`nn::cuda::rows`): one thread per score forward,
//! one per row value for `∂h`, and for `∂table` the candidates sorted by item on the device, then
//! each item's terms summed by one warp or block in a fixed order (candle's composed backward is
//! an `index_add` that walks all `M·K` ids serially). On other devices, or for other dtypes, the
//! same function falls back to the composed candle ops.

use candle_core::{CpuStorage, CustomOp3, DType, Device, Error, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu_slice::{storage_f32, storage_u32};

/// Candidate scores `[M, K]` of `h` `[M, d]` (f32) against rows `ids` `[M, K]` (u32) of `table`
/// `[N, d]`. Differentiable with respect to `h` and `table`.
pub fn gather_dot(h: &Tensor, table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let (m, d) = h.dims2()?;
    let (n, dt) = table.dims2()?;
    let (mi, _) = ids.dims2()?;
    if dt != d || mi != m {
        return Err(Error::Msg(format!(
            "gather-dot: rows [{m}, {d}] and table [{n}, {dt}] must have the same width, and ids \
             {:?} one row per row of h",
            ids.dims()
        )));
    }
    let ids = ids.to_dtype(DType::U32)?;
    let fused_device =
        matches!(h.device(), Device::Cpu) || super::gather_rows::device_kernels(h.device());
    if !fused_device || h.dtype() != DType::F32 || table.dtype() != DType::F32 {
        return composed(h, table, &ids);
    }
    h.contiguous()?
        .apply_op3(&table.contiguous()?, &ids.contiguous()?, GatherDot)
}

/// The same scores from candle's ops (reference and non-CPU path): gather `[M, K, d]`, then a
/// batched matmul.
pub fn composed(h: &Tensor, table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let (m, d) = h.dims2()?;
    let (_, k) = ids.dims2()?;
    let rows = table
        .index_select(&ids.to_dtype(DType::U32)?.flatten_all()?, 0)?
        .reshape((m, k, d))?;
    rows.matmul(&h.reshape((m, d, 1))?.contiguous()?)?
        .reshape((m, k))
}

fn check_ids(ids: &[u32], n: usize) -> Result<()> {
    match ids.iter().position(|&i| i as usize >= n) {
        Some(p) => Err(Error::Msg(format!(
            "gather-dot: candidate {p} is item {}, but the table has {n} rows",
            ids[p]
        ))),
        None => Ok(()),
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The forward op.
struct GatherDot;

impl CustomOp3 for GatherDot {
    fn name(&self) -> &'static str {
        "gather-dot"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (m, d) = l1.shape().dims2()?;
        let (n, _) = l2.shape().dims2()?;
        let (_, k) = l3.shape().dims2()?;
        let h = storage_f32(s1, l1, "gather-dot: rows")?;
        let table = storage_f32(s2, l2, "gather-dot: table")?;
        let ids = storage_u32(s3, l3, "gather-dot: ids")?;
        check_ids(ids, n)?;
        let mut out = vec![0f32; m * k];
        if k > 0 && d > 0 {
            out.par_chunks_exact_mut(k)
                .zip(h.par_chunks_exact(d))
                .zip(ids.par_chunks_exact(k))
                .for_each(|((o, row), ids)| {
                    for (o, &i) in o.iter_mut().zip(ids) {
                        let i = i as usize;
                        *o = dot(row, &table[i * d..(i + 1) * d]);
                    }
                });
        }
        Ok((CpuStorage::F32(out), Shape::from((m, k))))
    }

    /// On a device an id outside the table gives a NaN score (the CPU op returns an error).
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
        crate::nn::cuda::rows::gather_dot((s1, l1), (s2, l2), (s3, l3))
    }

    fn bwd(
        &self,
        h: &Tensor,
        table: &Tensor,
        ids: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let grad_h = grad.apply_op3_no_bwd(table, ids, &GradRows)?;
        let (n, _) = table.dims2()?;
        let grad_table = grad.apply_op3_no_bwd(h, ids, &GradTable { n })?;
        Ok((Some(grad_h), Some(grad_table), None))
    }
}

/// `∂h[m] = Σ_k g[m, k]·table[ids[m, k]]`, from (grad `[M, K]`, table `[N, d]`, ids `[M, K]`).
struct GradRows;

impl CustomOp3 for GradRows {
    fn name(&self) -> &'static str {
        "gather-dot-grad-rows"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (m, k) = l1.shape().dims2()?;
        let (_, d) = l2.shape().dims2()?;
        let g = storage_f32(s1, l1, "gather-dot backward: gradient")?;
        let table = storage_f32(s2, l2, "gather-dot backward: table")?;
        let ids = storage_u32(s3, l3, "gather-dot backward: ids")?;
        let mut out = vec![0f32; m * d];
        if k > 0 && d > 0 {
            out.par_chunks_exact_mut(d)
                .zip(g.par_chunks_exact(k))
                .zip(ids.par_chunks_exact(k))
                .for_each(|((o, g), ids)| {
                    for (&g, &i) in g.iter().zip(ids) {
                        let i = i as usize;
                        for (o, &t) in o.iter_mut().zip(&table[i * d..(i + 1) * d]) {
                            *o += g * t;
                        }
                    }
                });
        }
        Ok((CpuStorage::F32(out), Shape::from((m, d))))
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
        crate::nn::cuda::rows::gather_dot_grad_rows((s1, l1), (s2, l2), (s3, l3))
    }
}

/// `∂table[i] = Σ_{ids[m, k] = i} g[m, k]·h[m]`, from (grad `[M, K]`, h `[M, d]`, ids `[M, K]`);
/// `n` table rows.
struct GradTable {
    n: usize,
}

impl CustomOp3 for GradTable {
    fn name(&self) -> &'static str {
        "gather-dot-grad-table"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let n = self.n;
        let (_, d) = l2.shape().dims2()?;
        let g = storage_f32(s1, l1, "gather-dot backward: gradient")?;
        let h = storage_f32(s2, l2, "gather-dot backward: rows")?;
        let ids = storage_u32(s3, l3, "gather-dot backward: ids")?;
        check_ids(ids, n)?;
        let k = l3.shape().dims2()?.1;
        // Counting sort of the flat positions p = m·K + k by item: `by_item[start[i]..start[i+1]]`
        // lists, in increasing p, the candidates that are item i.
        let mut start = vec![0usize; n + 1];
        for &i in ids {
            start[i as usize + 1] += 1;
        }
        for i in 0..n {
            start[i + 1] += start[i];
        }
        let mut fill = start.clone();
        let mut by_item = vec![0u32; ids.len()];
        for (p, &i) in ids.iter().enumerate() {
            let slot = &mut fill[i as usize];
            by_item[*slot] = p as u32;
            *slot += 1;
        }
        let mut out = vec![0f32; n * d];
        if d > 0 && k > 0 {
            out.par_chunks_exact_mut(d).enumerate().for_each(|(i, o)| {
                for &p in &by_item[start[i]..start[i + 1]] {
                    let p = p as usize;
                    let (row, gv) = (p / k, g[p]);
                    for (o, &x) in o.iter_mut().zip(&h[row * d..(row + 1) * d]) {
                        *o += gv * x;
                    }
                }
            });
        }
        Ok((CpuStorage::F32(out), Shape::from((n, d))))
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
        let k = l3.shape().dims2()?.1;
        // ∂table[i] = Σ g[p]·h[p / K] over the flat candidates p naming item i.
        crate::nn::cuda::rows::sum_rows_by_id((s2, l2), (s3, l3), Some((s1, l1)), k, self.n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::cpu_slice::with_f32;
    use candle_core::Var;

    fn values(t: &Tensor) -> Result<Vec<f32>> {
        with_f32(t, |v| v.to_vec())
    }

    fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol, "element {i}: {x} vs {y}");
        }
    }

    #[test]
    fn matches_hand_computed_values() -> Result<()> {
        let dev = Device::Cpu;
        let h = Tensor::new(&[[1f32, 2.], [3., -1.]], &dev)?;
        let table = Tensor::new(&[[0f32, 0.], [1., 1.], [2., -1.]], &dev)?;
        let ids = Tensor::new(&[[1u32, 2, 2], [0, 1, 2]], &dev)?;
        let got = gather_dot(&h, &table, &ids)?.to_vec2::<f32>()?;
        // Row 0: [1+2, 2-2, 2-2]; row 1: [0, 3-1, 6+1].
        assert_eq!(got, vec![vec![3., 0., 0.], vec![0., 2., 7.]]);
        Ok(())
    }

    #[test]
    fn gradients_match_the_composed_ops_with_repeated_ids() -> Result<()> {
        let dev = Device::Cpu;
        let (m, k, n, d) = (7, 5, 6, 3);
        let hv: Vec<f32> = (0..m * d)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) / 4.0)
            .collect();
        let tv: Vec<f32> = (0..n * d)
            .map(|i| ((i * 13 % 7) as f32 - 3.0) / 3.0)
            .collect();
        // Repeats within a row and across rows; row 3 draws item 4 everywhere; item 5 never.
        let iv: Vec<u32> = (0..m * k)
            .map(|p| if p / k == 3 { 4 } else { (p * 7 % 5) as u32 })
            .collect();
        let wv: Vec<f32> = (0..m * k)
            .map(|p| ((p * 5 % 9) as f32 - 4.0) / 2.0)
            .collect();
        let ids = Tensor::from_vec(iv, (m, k), &dev)?;
        let w = Tensor::from_vec(wv, (m, k), &dev)?;
        let run = |fused: bool| -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
            let h = Var::from_tensor(&Tensor::from_vec(hv.clone(), (m, d), &dev)?)?;
            let t = Var::from_tensor(&Tensor::from_vec(tv.clone(), (n, d), &dev)?)?;
            let out = if fused {
                gather_dot(h.as_tensor(), t.as_tensor(), &ids)?
            } else {
                composed(h.as_tensor(), t.as_tensor(), &ids)?
            };
            let grads = out.mul(&w)?.sum_all()?.backward()?;
            let gh = grads.get(h.as_tensor()).map(values).transpose()?;
            let gt = grads.get(t.as_tensor()).map(values).transpose()?;
            Ok((
                values(&out.flatten_all()?)?,
                gh.unwrap_or_default(),
                gt.unwrap_or_default(),
            ))
        };
        let (fo, fh, ft) = run(true)?;
        let (co, ch, ct) = run(false)?;
        close(&fo, &co, 1e-5);
        close(&fh, &ch, 1e-5);
        close(&ft, &ct, 1e-5);
        // The never-drawn item gets a zero gradient row.
        assert_eq!(&ft[5 * d..6 * d], &[0.0; 3]);
        Ok(())
    }

    #[test]
    fn no_candidates_give_no_scores_and_a_zero_table_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let h = Var::from_tensor(&Tensor::ones((2, 3), DType::F32, &dev)?)?;
        let table = Var::from_tensor(&Tensor::ones((4, 3), DType::F32, &dev)?)?;
        let none = Tensor::zeros((2, 0), DType::U32, &dev)?;
        let y = gather_dot(h.as_tensor(), table.as_tensor(), &none)?;
        assert_eq!(y.dims(), [2, 0]);
        let grads = (y.sum_all()? + table.as_tensor().sum_all()?)?.backward()?;
        let gt = grads.get(table.as_tensor()).map(values).transpose()?;
        assert_eq!(gt, Some(vec![1.0; 12]));
        Ok(())
    }

    #[test]
    fn bad_shapes_and_ids_are_errors() -> Result<()> {
        let dev = Device::Cpu;
        let h = Tensor::zeros((2, 3), DType::F32, &dev)?;
        let table = Tensor::zeros((4, 3), DType::F32, &dev)?;
        let narrow = Tensor::zeros((4, 2), DType::F32, &dev)?;
        let ids = Tensor::new(&[[0u32, 1], [2, 3]], &dev)?;
        assert!(gather_dot(&h, &narrow, &ids).is_err());
        assert!(gather_dot(&h, &table, &Tensor::new(&[[0u32, 1]], &dev)?).is_err());
        let err = gather_dot(&h, &table, &Tensor::new(&[[0u32, 1], [2, 4]], &dev)?)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("item 4") && err.contains("4 rows"), "{err}");
        Ok(())
    }
}
