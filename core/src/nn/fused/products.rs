//! The matrix products of the fused blocks and of the chunked catalog loss, on row-major slices,
//! written into buffers from the workspace ([`crate::nn::workspace`]).
//!
//! candle's CPU `matmul` allocates and zero-fills a fresh output for every product; these write
//! into a buffer the caller owns (a pooled one, or an accumulator), through faer's matrix product
//! (<https://docs.rs/faer>), whose x86 kernels use AVX-512 where the CPU has it. Transposes are
//! strides, not copies. faer splits a product between threads by output tiles only, so every
//! element is summed in the same order on any number of threads (tested in
//! `nn::fused::tests`).

use candle_core::{Error, Result, Tensor};
use faer::{linalg::matmul::matmul, Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use crate::nn::workspace::Buf;

/// The threads a product may use: rayon's pool (the host sizes it), or none.
fn par() -> Par {
    match rayon::current_num_threads() {
        0 | 1 => Par::Seq,
        n => Par::rayon(n),
    }
}

/// `data` as a row-major `[rows, cols]` matrix, or an error naming `what`.
fn view<'a>(data: &'a [f32], rows: usize, cols: usize, what: &str) -> Result<MatRef<'a, f32>> {
    if data.len() != rows * cols {
        return Err(Error::Msg(format!(
            "{what}: {} values for a [{rows}, {cols}] matrix",
            data.len()
        )));
    }
    Ok(MatRef::from_row_major_slice(data, rows, cols))
}

/// `dst = a·b` (or `dst += a·b` with `accumulate`): `dst` holds `[a.nrows(), b.ncols()]`,
/// row-major or (`column_major`) column-major, computed on `threads`.
fn product_on(
    dst: &mut [f32],
    column_major: bool,
    a: MatRef<'_, f32>,
    b: MatRef<'_, f32>,
    accumulate: bool,
    threads: Par,
) -> Result<()> {
    let (m, n) = (a.nrows(), b.ncols());
    if a.ncols() != b.nrows() || dst.len() != m * n {
        return Err(Error::Msg(format!(
            "matrix product: [{m}, {}] × [{}, {n}] into {} values",
            a.ncols(),
            b.nrows(),
            dst.len()
        )));
    }
    let accum = if accumulate {
        Accum::Add
    } else {
        Accum::Replace
    };
    let dst = if column_major {
        MatMut::from_column_major_slice_mut(dst, m, n)
    } else {
        MatMut::from_row_major_slice_mut(dst, m, n)
    };
    matmul(dst, accum, a, b, 1.0f32, threads);
    Ok(())
}

/// `dst = a·b` into a row-major `dst`, on every thread of the pool.
fn product(dst: &mut [f32], a: MatRef<'_, f32>, b: MatRef<'_, f32>) -> Result<()> {
    product_on(dst, false, a, b, false, par())
}

/// Rows of the reduction per task in [`gt_x`]. Fixed, so that the partial sums and the order
/// they are added in do not depend on the number of threads.
const GT_ROWS: usize = 1024;

/// `x · wᵀ`: `x` `[m, k]`, `w` `[n, k]` → `[m, n]` (a linear layer without its bias).
pub(crate) fn x_wt(x: &[f32], w: &[f32], n: usize, k: usize) -> Result<Buf> {
    let mut out = Buf::scratch(x.len() / k.max(1) * n);
    a_bt_into(&mut out, x, w, n, k)?;
    Ok(out)
}

/// `gᵀ · x`: `g` `[m, n]`, `x` `[m, k]` → `[n, k]` (a weight gradient).
///
/// The output is small and the reduction long (`m` is every position of the batch), which a
/// product split by output tiles runs on one thread: the rows are instead cut into fixed slices
/// of [`GT_ROWS`], each slice's product runs as its own task, and the partial products are added
/// in order.
pub(crate) fn gt_x(g: &[f32], x: &[f32], n: usize, k: usize) -> Result<Vec<f32>> {
    let m = g.len() / n.max(1);
    view(g, m, n, "output gradient")?;
    view(x, m, k, "layer input")?;
    let slices = m.div_ceil(GT_ROWS).max(1);
    let partial = |c: usize| -> Result<Vec<f32>> {
        let (from, to) = ((c * GT_ROWS).min(m), ((c + 1) * GT_ROWS).min(m));
        // `[n, k]` row-major is `(xᵀ g)` `[k, n]` column-major: the layout faer's kernels
        // take best for a long reduction (measured: 2-3x the row-major form here).
        let mut p = vec![0f32; n * k];
        product_on(
            &mut p,
            true,
            view(&x[from * k..to * k], to - from, k, "layer input")?.transpose(),
            view(&g[from * n..to * n], to - from, n, "output gradient")?,
            false,
            Par::Seq,
        )?;
        Ok(p)
    };
    if slices == 1 {
        return partial(0);
    }
    let parts = (0..slices)
        .into_par_iter()
        .map(partial)
        .collect::<Result<Vec<_>>>()?;
    let mut out = parts[0].clone();
    for p in &parts[1..] {
        for (o, v) in out.iter_mut().zip(p) {
            *o += v;
        }
    }
    Ok(out)
}

/// `g · w`: `g` `[m, n]`, `w` `[n, k]` → `[m, k]` (an input gradient).
pub(crate) fn g_w(g: &[f32], w: &[f32], n: usize, k: usize) -> Result<Buf> {
    let mut out = Buf::scratch(g.len() / n.max(1) * k);
    a_b_into(&mut out, g, w, n, k)?;
    Ok(out)
}

/// `dst = a · bᵀ`: `a` `[m, k]`, `b` `[n, k]`, `dst` `[m, n]`.
pub(crate) fn a_bt_into(dst: &mut [f32], a: &[f32], b: &[f32], n: usize, k: usize) -> Result<()> {
    let m = a.len() / k.max(1);
    product(
        dst,
        view(a, m, k, "left factor")?,
        view(b, n, k, "right factor")?.transpose(),
    )
}

/// `dst = a · b`: `a` `[m, n]`, `b` `[n, k]`, `dst` `[m, k]`.
pub(crate) fn a_b_into(dst: &mut [f32], a: &[f32], b: &[f32], n: usize, k: usize) -> Result<()> {
    let m = a.len() / n.max(1);
    product(
        dst,
        view(a, m, n, "left factor")?,
        view(b, n, k, "right factor")?,
    )
}

/// `dst += (aᵀ · b)ᵀ`: `a` `[m, n]`, `b` `[m, k]`, `dst` `[k, n]` row-major (that is, `aᵀ b`
/// column-major; an accumulator over chunks of rows). For a long reduction into a wide output (the catalog's item gradient) faer's
/// kernels run this layout 1.3-2.8x faster than the row-major one (measured).
pub(crate) fn add_at_b_transposed(
    dst: &mut [f32],
    a: &[f32],
    b: &[f32],
    n: usize,
    k: usize,
) -> Result<()> {
    let m = a.len() / n.max(1);
    product_on(
        dst,
        true,
        view(a, m, n, "left factor")?.transpose(),
        view(b, m, k, "right factor")?,
        true,
        par(),
    )
}

/// A tensor's elements as a `Vec` (small tensors: weights and their gradients).
pub(crate) fn to_vec(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}
