//! Rows of a table looked up by id, and rows summed by id: an embedding lookup
//! (`torch.nn.functional.embedding`, candle's `index_select(ids, 0)`) and its gradient
//! (`index_add`), each differentiable and each the other's backward.
//!
//! Every model looks up its input items this way (RecTools' `TransformerTorchBackbone`:
//! `item_embs[sessions]`), and the softmax objectives pick their target positions this way. On
//! the CPU both functions are candle's ops, unchanged. On a CUDA device candle's `index_add` runs
//! one thread per column, each walking every id in turn: the backward of a SASRec batch's lookup
//! (6,400 ids) takes ~3 ms on an H200, more than the rest of the step. There the functions are
//! custom ops whose sums sort the ids on the device first and add each id's rows in a fixed
//! order (`nn::cuda::rows`), in parallel and with the same bits on every run.
//! `RECBLOCKS_CUDA_LOOKUPS=candle` (or `RECBLOCKS_BLOCKS=generic`) keeps candle's ops on a GPU
//! too, and so does `nn::gather_dot`'s device form: a way to compare the two, or to go on where a
//! device kernel fails.

use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp2, DType, Device, Error, Layout, Result, Shape, Tensor};

use super::cpu_slice::{storage_f32, storage_u32};

/// Rows of `table` `[N, d]` at `ids` of any shape `[...]`: `[..., d]`, the row `table[ids[i]]` at
/// each position `i` of `ids` (`[M]` ids give `[M, d]`, `[B, L]` ids give `[B, L, d]`).
/// A `table` of higher rank `[..., d]` is read as its rows in order (`[B, L, d]` holds the `B·L`
/// rows `b·L + l`), as its `reshape((N, d))` would be. Differentiable with respect to `table`
/// (the gradient sums each id's rows, as `index_add` does, and has the table's shape).
///
/// On a GPU taking the ids and the table in their own shapes saves the two reshape nodes around
/// the lookup, each a zero-filled gradient buffer and an add in candle's backward pass.
pub fn gather_rows(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let (n, d) = table_rows("gather rows", table)?;
    let ids_u32 = ids.to_dtype(DType::U32)?.contiguous()?;
    if device_kernels(table.device()) && table.dtype() == DType::F32 {
        return gather_rows_op(table, &ids_u32);
    }
    // candle's ops, reshaped only where the shapes ask for it.
    let flat_table = match table.rank() {
        2 => table.clone(),
        _ => table.reshape((n, d))?,
    };
    match ids.rank() {
        1 => flat_table.index_select(&ids_u32, 0),
        _ => flat_table
            .index_select(&ids_u32.flatten_all()?, 0)?
            .reshape(rows_shape(ids.dims(), d)),
    }
}

/// `out[i] = Σ_{ids[m] = i} src[m]`, `[n_rows, d]`, for `src` `[M, d]` and `ids` `[M]`: the
/// gradient of a lookup, and a sum of rows into bags. Differentiable with respect to `src`.
pub fn scatter_add_rows(src: &Tensor, ids: &Tensor, n_rows: usize) -> Result<Tensor> {
    let ids = check_shapes("sum rows by id", src, ids)?;
    if device_kernels(src.device()) && src.dtype() == DType::F32 {
        return scatter_add_rows_op(src, &ids, n_rows);
    }
    let d = src.dim(1)?;
    Tensor::zeros((n_rows, d), src.dtype(), src.device())?.index_add(&ids, src, 0)
}

/// Whether lookups on `device` take recblocks' CUDA kernels: on a CUDA device, unless
/// `RECBLOCKS_CUDA_LOOKUPS=candle` (read once) or the fused blocks are off; their CPU forms under
/// `RECBLOCKS_BLOCKS=nodes`.
pub(crate) fn device_kernels(device: &Device) -> bool {
    static CANDLE: OnceLock<bool> = OnceLock::new();
    let candle = *CANDLE
        .get_or_init(|| std::env::var("RECBLOCKS_CUDA_LOOKUPS").is_ok_and(|v| v == "candle"));
    !candle && super::fused::gpu_composition(device)
}

/// Checks that `rows` is `[N, d]` and `ids` is `[M]`; returns the ids as contiguous u32.
fn check_shapes(what: &str, rows: &Tensor, ids: &Tensor) -> Result<Tensor> {
    if rows.rank() != 2 || ids.rank() != 1 {
        return Err(Error::Msg(format!(
            "{what}: expected rows [N, d] and ids [M]; found {:?} and {:?}",
            rows.dims(),
            ids.dims()
        )));
    }
    ids.to_dtype(DType::U32)?.contiguous()
}

/// A lookup table's rows and width: `[..., d]` read as `[N, d]` (rank 2 at least).
fn table_rows(what: &str, table: &Tensor) -> Result<(usize, usize)> {
    match table.dims() {
        [lead @ .., d] if !lead.is_empty() => Ok((lead.iter().product(), *d)),
        other => Err(Error::Msg(format!(
            "{what}: expected a table [N, d] (or [..., d]); found {other:?}"
        ))),
    }
}

/// The shape of the rows looked up at ids of shape `ids`: `[..ids, d]`.
fn rows_shape(ids: &[usize], d: usize) -> Shape {
    let mut dims = ids.to_vec();
    dims.push(d);
    Shape::from(dims)
}

/// [`gather_rows`] as the custom op on any device (the CPU form is the reference of the device
/// form; tests run it to check the op's backward wiring).
pub(crate) fn gather_rows_op(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let (n_rows, _) = table_rows("gather rows", table)?;
    table.contiguous()?.apply_op2(
        &ids.contiguous()?,
        GatherRows {
            n_rows,
            table: table.shape().clone(),
        },
    )
}

/// [`scatter_add_rows`] as the custom op on any device.
pub(crate) fn scatter_add_rows_op(src: &Tensor, ids: &Tensor, n_rows: usize) -> Result<Tensor> {
    let (m, _) = src.dims2()?;
    if ids.dims() != [m] {
        return Err(Error::Msg(format!(
            "sum rows by id: {m} rows and ids {:?}",
            ids.dims()
        )));
    }
    src.contiguous()?
        .apply_op2(&ids.contiguous()?, ScatterAddRows { n_rows })
}

fn check_ids(what: &str, ids: &[u32], n: usize) -> Result<()> {
    match ids.iter().position(|&i| i as usize >= n) {
        Some(p) => Err(Error::Msg(format!(
            "{what}: entry {p} is id {}, but the table has {n} rows",
            ids[p]
        ))),
        None => Ok(()),
    }
}

/// The lookup: (table `[N, d]` or `[..., d]`, ids `[...]`) to `[..., d]`.
struct GatherRows {
    n_rows: usize,
    /// The table's shape, which its gradient takes.
    table: Shape,
}

impl CustomOp2 for GatherRows {
    fn name(&self) -> &'static str {
        "gather-rows"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = l1.dims().last().copied().unwrap_or(0);
        let table = storage_f32(s1, l1, "gather rows: table")?;
        let ids = storage_u32(s2, l2, "gather rows: ids")?;
        check_ids("gather rows", ids, self.n_rows)?;
        let mut out = Vec::with_capacity(ids.len() * d);
        for &i in ids {
            let i = i as usize;
            out.extend_from_slice(&table[i * d..(i + 1) * d]);
        }
        Ok((CpuStorage::F32(out), rows_shape(l2.dims(), d)))
    }

    /// On a device an id outside the table gives a row of NaN (the CPU op returns an error).
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::nn::cuda::rows::gather_rows((s1, l1), (s2, l2))
    }

    fn bwd(
        &self,
        _table: &Tensor,
        ids: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (m, d) = (ids.elem_count(), grad.dims().last().copied().unwrap_or(0));
        // As rows `[M, d]` against ids `[M]`, then in the table's own shape.
        let (grad, ids) = match ids.rank() {
            1 => (grad.contiguous()?, ids.clone()),
            _ => (grad.contiguous()?.reshape((m, d))?, ids.flatten_all()?),
        };
        let grad_table = scatter_add_rows_op(&grad, &ids, self.n_rows)?;
        let grad_table = match self.table.rank() {
            2 => grad_table,
            _ => grad_table.reshape(&self.table)?,
        };
        Ok((Some(grad_table), None))
    }
}

/// The sum by id: (src `[M, d]`, ids `[M]`) to `[n_rows, d]`.
struct ScatterAddRows {
    n_rows: usize,
}

impl CustomOp2 for ScatterAddRows {
    fn name(&self) -> &'static str {
        "scatter-add-rows"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, d) = l1.shape().dims2()?;
        let src = storage_f32(s1, l1, "sum rows by id: rows")?;
        let ids = storage_u32(s2, l2, "sum rows by id: ids")?;
        check_ids("sum rows by id", ids, self.n_rows)?;
        let mut out = vec![0f32; self.n_rows * d];
        // In entry order, as `index_add`.
        for (m, &i) in ids.iter().enumerate() {
            let i = i as usize;
            for (o, &x) in out[i * d..(i + 1) * d]
                .iter_mut()
                .zip(&src[m * d..(m + 1) * d])
            {
                *o += x;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((self.n_rows, d))))
    }

    /// On a device ids at or above `n_rows` add nothing (the CPU op returns an error).
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::nn::cuda::rows::sum_rows_by_id((s1, l1), (s2, l2), None, 1, self.n_rows)
    }

    fn bwd(
        &self,
        _src: &Tensor,
        ids: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(gather_rows_op(&grad.contiguous()?, ids)?), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn table(n: usize, d: usize) -> Result<Var> {
        let v: Vec<f32> = (0..n * d)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        Var::from_tensor(&Tensor::from_vec(v, (n, d), &Device::Cpu)?)
    }

    /// `out`'s values, and the gradient of `Σ out·w` with respect to `wrt` (empty if none).
    fn value_and_gradient(out: &Tensor, w: &Tensor, wrt: &Var) -> Result<(Vec<f32>, Vec<f32>)> {
        let grads = out.mul(w)?.sum_all()?.backward()?;
        let g = grads
            .get(wrt.as_tensor())
            .map(|g| g.flatten_all()?.to_vec1::<f32>())
            .transpose()?
            .unwrap_or_default();
        Ok((out.flatten_all()?.to_vec1()?, g))
    }

    #[test]
    fn the_lookup_and_its_gradient_match_hand_computed_values() -> Result<()> {
        let t = Var::from_tensor(&Tensor::new(
            &[[1f32, 2.], [3., 4.], [5., 6.]],
            &Device::Cpu,
        )?)?;
        let ids = Tensor::new(&[2u32, 0, 2, 2], &Device::Cpu)?;
        let rows = gather_rows_op(t.as_tensor(), &ids)?;
        assert_eq!(
            rows.to_vec2::<f32>()?,
            vec![vec![5., 6.], vec![1., 2.], vec![5., 6.], vec![5., 6.]]
        );
        // Weights 1, 10, 100, 1000 per row: row 2 gets 1 + 100 + 1000, row 0 10, row 1 nothing.
        let w = Tensor::new(&[[1f32], [10.], [100.], [1000.]], &Device::Cpu)?;
        let grads = rows.broadcast_mul(&w)?.sum_all()?.backward()?;
        let g = grads
            .get(t.as_tensor())
            .map(|g| g.to_vec2::<f32>())
            .transpose()?;
        assert_eq!(
            g,
            Some(vec![vec![10., 10.], vec![0., 0.], vec![1101., 1101.]])
        );
        Ok(())
    }

    #[test]
    fn the_ops_and_their_gradients_equal_candles_index_select_and_index_add() -> Result<()> {
        let (n, d, m) = (9, 5, 40);
        let ids: Vec<u32> = (0..m).map(|p| (p * p % 7) as u32).collect(); // rows 7, 8 never
        let ids = Tensor::from_vec(ids, m, &Device::Cpu)?;
        let w = Tensor::from_vec(
            (0..m * d)
                .map(|i| (i % 13) as f32 - 6.0)
                .collect::<Vec<_>>(),
            (m, d),
            &Device::Cpu,
        )?;
        let run = |custom: bool| -> Result<(Vec<f32>, Vec<f32>)> {
            let t = table(n, d)?;
            let rows = if custom {
                gather_rows_op(t.as_tensor(), &ids)?
            } else {
                t.as_tensor().index_select(&ids, 0)?
            };
            value_and_gradient(&rows, &w, &t)
        };
        let (rows, grad) = run(true)?;
        let (want_rows, want_grad) = run(false)?;
        assert_eq!(rows, want_rows);
        assert_eq!(grad, want_grad);
        assert_eq!(&grad[7 * d..], &[0.0; 10]);

        // The sum by id, forward and backward, against `index_add`.
        let run = |custom: bool| -> Result<(Vec<f32>, Vec<f32>)> {
            let src = table(m, d)?;
            let out = if custom {
                scatter_add_rows_op(src.as_tensor(), &ids, n)?
            } else {
                Tensor::zeros((n, d), DType::F32, &Device::Cpu)?.index_add(
                    &ids,
                    src.as_tensor(),
                    0,
                )?
            };
            value_and_gradient(&out, table(n, d)?.as_tensor(), &src)
        };
        let (sums, grad) = run(true)?;
        let (want_sums, want_grad) = run(false)?;
        assert_eq!(sums, want_sums);
        assert_eq!(grad, want_grad);
        Ok(())
    }

    #[test]
    fn the_public_functions_keep_candles_ops_on_the_cpu() -> Result<()> {
        let t = table(6, 3)?;
        let ids = Tensor::new(&[5u32, 1, 1, 0], &Device::Cpu)?;
        let got = gather_rows(t.as_tensor(), &ids)?;
        assert_eq!(
            got.to_vec2::<f32>()?,
            t.as_tensor().index_select(&ids, 0)?.to_vec2::<f32>()?
        );
        let sums = scatter_add_rows(&got, &ids, 6)?;
        let want = Tensor::zeros((6, 3), DType::F32, &Device::Cpu)?.index_add(&ids, &got, 0)?;
        assert_eq!(sums.to_vec2::<f32>()?, want.to_vec2::<f32>()?);
        Ok(())
    }

    /// Ids `[B, L]` give rows `[B, L, d]`, and a table `[B, L, d]` is its `B·L` rows: the
    /// values and the table's gradient of `reshape`, `index_select`, `reshape`, with no reshape
    /// node in the graph of the device op (nor in candle's where the shapes are already flat).
    #[test]
    fn ids_and_tables_of_any_rank_equal_the_reshaped_lookup() -> Result<()> {
        let (b, l, d) = (2, 3, 4);
        let ids = Tensor::new(&[[5u32, 0, 5], [2, 1, 4]], &Device::Cpu)?;
        let w = Tensor::from_vec(
            (0..b * l * d)
                .map(|i| (i % 7) as f32 - 3.0)
                .collect::<Vec<_>>(),
            (b, l, d),
            &Device::Cpu,
        )?;
        let nodes = |out: &Tensor| out.sorted_nodes().len();
        // A [6, 4] table, and the same rows as a [2, 3, 4] table.
        for table_dims in [vec![b * l, d], vec![b, l, d]] {
            let t = Var::from_tensor(
                &table(b * l, d)?
                    .as_tensor()
                    .reshape(table_dims.as_slice())?,
            )?;
            let flat = t.as_tensor().reshape((b * l, d))?;
            let want = flat
                .index_select(&ids.flatten_all()?, 0)?
                .reshape((b, l, d))?;
            let (want_rows, want_grad) = value_and_gradient(&want, &w, &t)?;
            for custom in [false, true] {
                let got = if custom {
                    gather_rows_op(t.as_tensor(), &ids)?
                } else {
                    gather_rows(t.as_tensor(), &ids)?
                };
                assert_eq!(got.dims(), [b, l, d]);
                let (rows, grad) = value_and_gradient(&got, &w, &t)?;
                assert_eq!(rows, want_rows, "{table_dims:?}, custom {custom}");
                assert_eq!(grad, want_grad, "{table_dims:?}, custom {custom}");
                if custom {
                    // The op and the table: no reshape in between or after.
                    assert_eq!(nodes(&got), 2, "{table_dims:?}");
                }
            }
        }
        // Flat ids into a flat table: candle's lookup alone, as before.
        let t = table(b * l, d)?;
        let got = gather_rows(t.as_tensor(), &ids.flatten_all()?)?;
        assert_eq!(got.dims(), [b * l, d]);
        assert_eq!(nodes(&got), 2);
        Ok(())
    }

    #[test]
    fn bad_shapes_and_ids_are_errors_that_say_what_was_found() -> Result<()> {
        let t = table(4, 2)?;
        let flat = Tensor::new(&[1u32, 2], &Device::Cpu)?;
        let square = Tensor::new(&[[1u32, 2]], &Device::Cpu)?;
        let rank_1 = Tensor::new(&[1f32, 2.], &Device::Cpu)?;
        for op in [gather_rows, gather_rows_op] {
            let err = op(&rank_1, &flat)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("expected a table [N, d]"), "{err}");
            // Rows of width 0 are rows still, as with candle's `index_select`.
            let empty = op(&t.zeros_like()?.narrow(1, 0, 0)?.contiguous()?, &flat)?;
            assert_eq!(empty.dims(), [2, 0]);
        }
        assert!(scatter_add_rows(t.as_tensor(), &square, 4).is_err());
        let err = gather_rows_op(t.as_tensor(), &Tensor::new(&[1u32, 4], &Device::Cpu)?)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("entry 1 is id 4") && err.contains("4 rows"),
            "{err}"
        );
        assert!(scatter_add_rows(t.as_tensor(), &Tensor::new(&[1u32], &Device::Cpu)?, 4).is_err());
        assert!(scatter_add_rows_op(t.as_tensor(), &flat, 2).is_err());
        Ok(())
    }
}
