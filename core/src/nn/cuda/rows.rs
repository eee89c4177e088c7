//! Launchers of the kernels in `rows.cu`: rows looked up by id (`nn::gather_rows`), rows summed
//! by id (`nn::scatter_add_rows`, the lookup's gradient) and the sampled losses' candidate scores
//! with their gradients (`nn::gather_dot`).
//!
//! A sum by id sorts the entries by id on the device first (`sorted_keys`: a bitonic sort of
//! tiles of 1,024 entries, then merge passes), so that each id's entries are summed by one warp
//! (runs of up to 32 entries) or one block (longer runs) in a fixed order: no atomics, and the
//! same bits on every run. The number of launches depends only on the number of entries, so a
//! step with fixed shapes can be captured as a CUDA graph.

use candle_core::{
    cuda_backend::{
        cudarc::driver::{CudaSlice, CudaView, LaunchConfig},
        CudaDevice, CudaStorage,
    },
    Error, Layout, Result, Shape,
};

use super::{config, f32_view, launch, output, u32_view, BLOCK_THREADS};

/// Entries per sorted tile: `RB_SORT_TILE` in `rows.cu` (the tile kernel's block size).
const SORT_TILE: usize = 1024;
/// Warps per block of the sums by id: `RB_SUM_LANES` in `rows.cu`.
const SUM_LANES: u32 = 8;
/// The longest run of one id that one warp sums: `RB_SHORT_RUN` in `rows.cu`.
const SHORT_RUN: usize = 32;
/// At most this many blocks for the grid-stride kernels.
const MAX_STRIDE_BLOCKS: usize = 1 << 16;

/// A `u32` kernel argument, or an error naming what does not fit.
fn u32_arg(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Msg(format!("CUDA rows kernel: {what} {v} exceeds u32")))
}

/// Blocks of `BLOCK_THREADS` for a grid-stride loop over `n` elements.
fn stride_blocks(n: usize) -> u32 {
    n.div_ceil(BLOCK_THREADS as usize)
        .clamp(1, MAX_STRIDE_BLOCKS) as u32
}

/// The keys `(id << 32) | entry` of the `n` entries of `ids`, sorted: the entries grouped by id,
/// each id's in entry order.
fn sorted_keys(dev: &CudaDevice, ids: &CudaView<'_, u32>, n: usize) -> Result<CudaSlice<u64>> {
    // Keys hold the entry index in 32 bits, and the tile padding is u64::MAX.
    if n >= u32::MAX as usize {
        return Err(Error::Msg(format!(
            "sum of rows by id: {n} entries; at most {} fit the sort keys",
            u32::MAX - 1
        )));
    }
    let n32 = n as u32;
    // SAFETY: uninitialised; rb_sort_tiles writes every key below n, and each merge pass writes
    // every key of its output (a permutation of its input) before the next reads it.
    let mut a = unsafe { dev.alloc::<u64>(n.max(1)) }?;
    let tiles = u32_arg(n.div_ceil(SORT_TILE).max(1), "tiles")?;
    // SAFETY: blocks of RB_SORT_TILE threads: block b reads and writes entries
    // [1024·b, 1024·(b + 1)) below n; both buffers hold n values.
    unsafe {
        launch::rb_sort_tiles {
            ids,
            keys: &mut a,
            n: n32,
        }
        .launch(dev, config(tiles, SORT_TILE as u32))
    }?;
    if n <= SORT_TILE {
        return Ok(a);
    }
    // SAFETY: as above; written in full by the first merge pass.
    let mut b_buf = unsafe { dev.alloc::<u64>(n) }?;
    let blocks = u32_arg(n.div_ceil(BLOCK_THREADS as usize), "merge blocks")?;
    let mut run = SORT_TILE;
    while run < n {
        // SAFETY: thread g < n reads in[g] and a run of in below n, and writes one slot of out
        // below n (the merged runs are a permutation of [0, n)); both buffers hold n keys.
        unsafe {
            launch::rb_merge_runs {
                r#in: &a,
                out: &mut b_buf,
                n: n32,
                run: run as u32,
            }
            .launch(dev, config(blocks, BLOCK_THREADS))
        }?;
        std::mem::swap(&mut a, &mut b_buf);
        run *= 2;
    }
    Ok(a)
}

/// Rows `[..ids, d]` of `table` `[N, d]` (or `[..., d]`, read as its rows in order) at `ids` of
/// any shape (u32): `table.index_select(ids, 0)`; an id at or above N gives a row of NaN.
pub(crate) fn gather_rows(
    (st, lt): (&CudaStorage, &Layout),
    (si, li): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let dev = &st.device;
    let (lead, d) = match lt.dims() {
        [lead @ .., d] => (lead, *d),
        [] => (&[][..], 0),
    };
    let n_rows: usize = lead.iter().product();
    let table = f32_view(st, lt, "gathered table")?;
    let ids = u32_view(si, li, "gathered ids")?;
    let m = ids.len();
    let n = m * d;
    let mut out = output(dev, n)?;
    // SAFETY: out holds n = m·d values, ids m, table n_rows·d; rows are read only for ids below
    // n_rows; a grid-stride loop over n.
    unsafe {
        launch::rb_gather_rows {
            table: &table,
            ids: &ids,
            out: &mut out,
            n: n as u64,
            d: u32_arg(d, "width")?,
            n_rows: u32_arg(n_rows, "rows")?,
        }
        .launch(dev, config(stride_blocks(n), BLOCK_THREADS))
    }?;
    let mut dims = li.dims().to_vec();
    dims.push(d);
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        Shape::from(dims),
    ))
}

/// `out[i] = Σ_{ids[p] = i} scale[p]·src[p / per_row]` for `n_rows` rows of `src`'s width, from
/// `src` `[P / per_row, d]`, `ids` `[P]` and, where given, `scale` `[P]`. Ids at or above
/// `n_rows` add nothing. Without a scale and with `per_row` 1 this is
/// `zeros.index_add(ids, src, 0)`.
pub(crate) fn sum_rows_by_id(
    (ss, ls): (&CudaStorage, &Layout),
    (si, li): (&CudaStorage, &Layout),
    scale: Option<(&CudaStorage, &Layout)>,
    per_row: usize,
    n_rows: usize,
) -> Result<(CudaStorage, Shape)> {
    let dev = &ss.device;
    let (src_rows, d) = ls.shape().dims2()?;
    let src = f32_view(ss, ls, "summed rows")?;
    let ids = u32_view(si, li, "ids of the summed rows")?;
    let p = ids.len();
    // No entries (K = 0 candidates a row, say) sum to zeros, as on the CPU.
    let fits = if per_row == 0 {
        p == 0
    } else {
        src_rows * per_row == p
    };
    if !fits {
        return Err(Error::Msg(format!(
            "sum of rows by id: {p} ids for {src_rows} rows of {per_row} entries each"
        )));
    }
    let scale = match scale {
        Some((s, l)) => {
            let v = f32_view(s, l, "scale of the summed rows")?;
            if v.len() != p {
                return Err(Error::Msg(format!(
                    "sum of rows by id: {} scale values for {p} ids",
                    v.len()
                )));
            }
            Some(v)
        }
        None => None,
    };
    let mut out = dev.alloc_zeros::<f32>((n_rows * d).max(1))?;
    if p > 0 && d > 0 {
        let keys = sorted_keys(dev, &ids, p)?;
        let (p32, per32, d32, rows32) = (
            p as u32,
            u32_arg(per_row, "entries per row")?,
            u32_arg(d, "width")?,
            u32_arg(n_rows, "rows")?,
        );
        let scale: &dyn launch::Input<f32> = match &scale {
            Some(v) => v,
            None => &launch::Address::<f32>::NULL,
        };
        // Blocks of 32 × SUM_LANES threads over slots of p entries.
        let cfg = |slots_per_block: usize| -> Result<LaunchConfig> {
            Ok(LaunchConfig {
                grid_dim: (u32_arg(p.div_ceil(slots_per_block), "sum blocks")?, 1, 1),
                block_dim: (32, SUM_LANES, 1),
                shared_mem_bytes: 0,
            })
        };
        // Short runs, a warp per slot (SUM_LANES slots a block).
        // SAFETY: keys holds p sorted keys of entries below p; src holds p / per_row rows of d;
        // scale, where given, p values (null: none); out n_rows rows of d, written only for ids
        // below n_rows; slots at or above p are not read.
        unsafe {
            launch::rb_sum_short_runs {
                keys: &keys,
                n: p32,
                src: &src,
                scale,
                per_row: per32,
                d: d32,
                out: &mut out,
                n_rows: rows32,
            }
            .launch(dev, cfg(SUM_LANES as usize)?)
        }?;
        // Long runs, a block per SHORT_RUN slots.
        // SAFETY: as for the short runs, the same arguments.
        unsafe {
            launch::rb_sum_long_runs {
                keys: &keys,
                n: p32,
                src: &src,
                scale,
                per_row: per32,
                d: d32,
                out: &mut out,
                n_rows: rows32,
            }
            .launch(dev, cfg(SHORT_RUN)?)
        }?;
    }
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        Shape::from((n_rows, d)),
    ))
}

/// Candidate scores `[M, K]`: `h[m] · table[ids[m, k]]` for `h` `[M, d]`, `table` `[N, d]` and
/// `ids` `[M, K]`; NaN for an id at or above N.
pub(crate) fn gather_dot(
    (sh, lh): (&CudaStorage, &Layout),
    (st, lt): (&CudaStorage, &Layout),
    (si, li): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let (m, d) = lh.shape().dims2()?;
    let (_, k) = li.shape().dims2()?;
    let h = f32_view(sh, lh, "gather-dot rows")?;
    let out = candidate_kernel(Candidates::Scores, &h, (st, lt), (si, li), (m, k, d))?;
    Ok((
        CudaStorage::wrap_cuda_slice(out, sh.device.clone()),
        Shape::from((m, k)),
    ))
}

/// The rows' gradient of [`gather_dot`]: `∂h[m] = Σ_k g[m, k]·table[ids[m, k]]`, `[M, d]`.
pub(crate) fn gather_dot_grad_rows(
    (sg, lg): (&CudaStorage, &Layout),
    (st, lt): (&CudaStorage, &Layout),
    (si, li): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let (m, k) = lg.shape().dims2()?;
    let (_, d) = lt.shape().dims2()?;
    let g = f32_view(sg, lg, "gather-dot gradient")?;
    let out = candidate_kernel(Candidates::RowGradient, &g, (st, lt), (si, li), (m, k, d))?;
    Ok((
        CudaStorage::wrap_cuda_slice(out, sg.device.clone()),
        Shape::from((m, d)),
    ))
}

/// Which of the candidate kernels [`candidate_kernel`] launches.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Candidates {
    /// `rb_gather_dot`: the scores `[M, K]` from the rows h `[M, d]`.
    Scores,
    /// `rb_gather_dot_grad_rows`: the rows' gradient `[M, d]` from the scores' g `[M, K]`.
    RowGradient,
}

/// Launches `rb_gather_dot` (`first` = h `[M, d]`, M·K outputs) or `rb_gather_dot_grad_rows`
/// (`first` = g `[M, K]`, M·d outputs), with `ids` `[M, K]` and `table` `[N, d]`.
fn candidate_kernel(
    which: Candidates,
    first: &CudaView<'_, f32>,
    (st, lt): (&CudaStorage, &Layout),
    (si, li): (&CudaStorage, &Layout),
    (m, k, d): (usize, usize, usize),
) -> Result<CudaSlice<f32>> {
    let dev = &st.device;
    let (n_rows, width) = lt.shape().dims2()?;
    let table = f32_view(st, lt, "gather-dot table")?;
    let ids = u32_view(si, li, "gather-dot ids")?;
    let (kernel, first_len, n) = match which {
        Candidates::Scores => ("rb_gather_dot", m * d, m * k),
        Candidates::RowGradient => ("rb_gather_dot_grad_rows", m * k, m * d),
    };
    if width != d || ids.len() != m * k || first.len() != first_len {
        return Err(Error::Msg(format!(
            "{kernel}: {} ids, {} values and a table {width} wide for M {m}, K {k}, d {d}",
            ids.len(),
            first.len()
        )));
    }
    let mut out = output(dev, n)?;
    let (n64, k32, d32, rows32) = (
        n as u64,
        u32_arg(k, "candidates")?,
        u32_arg(d, "width")?,
        u32_arg(n_rows, "rows")?,
    );
    let cfg = config(stride_blocks(n), BLOCK_THREADS);
    // SAFETY: checked above: ids hold m·k values, the table n_rows rows of d, `first` what the
    // kernel reads (h m·d, or g m·k); out holds the n values the kernel writes (m·k scores, or
    // m·d row gradients); table rows are read only for ids below n_rows; a grid-stride loop.
    unsafe {
        match which {
            Candidates::Scores => launch::rb_gather_dot {
                h: first,
                table: &table,
                ids: &ids,
                out: &mut out,
                n: n64,
                k: k32,
                d: d32,
                n_rows: rows32,
            }
            .launch(dev, cfg),
            Candidates::RowGradient => launch::rb_gather_dot_grad_rows {
                g: first,
                table: &table,
                ids: &ids,
                out: &mut out,
                n: n64,
                k: k32,
                d: d32,
                n_rows: rows32,
            }
            .launch(dev, cfg),
        }
    }?;
    Ok(out)
}
