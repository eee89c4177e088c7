//! The CUDA forms of core's fused ops (the `cuda` feature): dropout drawn on the device, layer
//! norm, the attention softmax, the attention masks, the catalog cross-entropy and the Adam step
//! (up to 48 parameters a launch), each one kernel (or two) in `kernels.cu` computing the same
//! function as the CPU op it stands beside. [`graph`] records and replays a training step as a
//! CUDA graph ([`crate::nn::capture`]); the kernels that draw dropout masks and Adam's can read
//! their key or coefficients from device memory for it.
//!
//! The generic blocks on a CUDA device are composed of candle ops, each a kernel launch with an
//! allocation; a layer norm composed that way is ~10 launches forward and ~25 backward, a dropout
//! drew its mask on the host and copied it over (a synchronising copy). The ops here replace those
//! compositions where the CPU has its own fused op, behind the same functions (`LayerNorm::forward`,
//! `softmax_last_dim`, `Dropout::forward_t`, `softmax_cross_entropy_ignore_0`), so every model
//! takes them with no change to its code.
//!
//! The kernels are compiled to PTX by core's build script (`nvcc --ptx`, for compute capability
//! 8.0, which the driver compiles for the GPU it runs on) and loaded once per device through
//! candle's module cache.
//!
//! This is the one module of core with `unsafe` code: cudarc's kernel launch and its uninitialised
//! allocation are `unsafe` (the compiler cannot check a kernel's arguments), as is declaring a
//! `repr(C)` struct a valid kernel argument, and each use says why it holds.
#![allow(unsafe_code)]

use candle_core::{
    cuda_backend::{
        cudarc::driver::{CudaSlice, CudaView, LaunchConfig},
        CudaDevice, CudaStorage,
    },
    Error, Layout, Result, Shape,
};

pub mod allocator;
pub mod graph;
mod launch;
pub mod loss_reads;
pub mod memory;
pub(crate) mod rows;
#[cfg(test)]
mod tests;

/// The kernels' PTX, built by `build.rs` from `kernels.cu`.
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/recblocks_kernels.ptx"));
/// The name candle caches the loaded module under.
const MODULE: &str = "recblocks_kernels";

/// Threads per block of the row kernels (4 warps, one row each).
const ROW_THREADS: u32 = 128;
/// Threads per block of the catalog kernels (one row per block) and of element-wise kernels.
const BLOCK_THREADS: u32 = 256;

fn launch_error(kernel: &str, e: impl std::fmt::Display) -> Error {
    Error::Msg(format!("CUDA kernel `{kernel}`: {e}"))
}

/// The f32 elements of a contiguous tensor's storage.
fn f32_view<'a>(s: &'a CudaStorage, l: &Layout, what: &str) -> Result<CudaView<'a, f32>> {
    let slice = s.as_cuda_slice::<f32>()?;
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| Error::Msg(format!("{what}: expected a contiguous f32 tensor")))?;
    Ok(slice.slice(a..b))
}

/// The u32 elements of a contiguous tensor's storage.
fn u32_view<'a>(s: &'a CudaStorage, l: &Layout, what: &str) -> Result<CudaView<'a, u32>> {
    let slice = s.as_cuda_slice::<u32>()?;
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| Error::Msg(format!("{what}: expected a contiguous u32 tensor")))?;
    Ok(slice.slice(a..b))
}

/// A device buffer of `n` f32 whose elements the kernels after it on the stream write before
/// reading (in full, except `catalog_rows`' parts, of which only the written ones are read).
fn output(dev: &CudaDevice, n: usize) -> Result<CudaSlice<f32>> {
    // SAFETY: the memory is uninitialised; every caller launches a kernel that writes each
    // element before anything reads it (work on one stream runs in order).
    unsafe { dev.alloc::<f32>(n.max(1)) }
}

/// Blocks of `per_block` elements over `n` (at most 2³¹ − 1, the first grid dimension's limit).
fn grid(n: usize, per_block: usize) -> Result<u32> {
    let blocks = n.div_ceil(per_block.max(1)).max(1);
    u32::try_from(blocks)
        .ok()
        .filter(|&b| b <= i32::MAX as u32)
        .ok_or_else(|| Error::Msg(format!("CUDA launch over {n} elements: {blocks} blocks")))
}

fn config(blocks: u32, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn int(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::Msg(format!("CUDA kernel: {what} {v} exceeds i32")))
}

/// The last dimension of a layout and the number of rows before it.
fn rows_and_width(l: &Layout) -> (usize, usize) {
    let width = l.dims().last().copied().unwrap_or(1);
    (l.shape().elem_count() / width.max(1), width)
}

/// `x · mask` where the mask is the one [`crate::nn::philox::fill_mask`] draws for the draw's
/// key: the device form of a training-mode dropout. Applied to an output gradient with the same
/// draw, it is the dropout's backward pass.
pub(crate) fn dropout(
    s: &CudaStorage,
    l: &Layout,
    draw: crate::nn::dropout::MaskDraw,
) -> Result<(CudaStorage, Shape)> {
    masked(s, l, None, draw)
}

/// `x · mask + r` in one pass ([`dropout`]'s mask, then a residual sum, rounded as the two ops
/// are): a block's dropout and residual connection.
pub(crate) fn dropout_add(
    (s, l): (&CudaStorage, &Layout),
    (sr, lr): (&CudaStorage, &Layout),
    draw: crate::nn::dropout::MaskDraw,
) -> Result<(CudaStorage, Shape)> {
    masked(s, l, Some((sr, lr)), draw)
}

/// [`dropout`] (`rb_dropout`), or with a residual [`dropout_add`] (`rb_dropout_add`).
fn masked(
    s: &CudaStorage,
    l: &Layout,
    residual: Option<(&CudaStorage, &Layout)>,
    draw: crate::nn::dropout::MaskDraw,
) -> Result<(CudaStorage, Shape)> {
    let dev = &s.device;
    let x = f32_view(s, l, "dropout input")?;
    let n = l.shape().elem_count();
    let r = residual
        .map(|(sr, lr)| f32_view(sr, lr, "dropout residual"))
        .transpose()?;
    if let Some(r) = &r {
        if r.len() != n {
            return Err(Error::Msg(format!(
                "dropout with a residual: {n} values and a residual of {}",
                r.len()
            )));
        }
    }
    let mut out = output(dev, n)?;
    let m = MaskArgs::new(Some(draw));
    // One thread per Philox block: 16 blocks per group of 128 elements.
    let cfg = config(
        grid(n.div_ceil(128) * 16, BLOCK_THREADS as usize)?,
        BLOCK_THREADS,
    );
    let n = n as u64;
    // SAFETY: the kernel touches indices below n, and x, r and out hold n elements; the key
    // slot, where set, is a live key of the capture's key buffer.
    unsafe {
        match &r {
            Some(r) => launch::rb_dropout_add {
                x: &x,
                r,
                out: &mut out,
                n,
                key_lo: m.key_lo,
                key_hi: m.key_hi,
                key_slot: &m.key_slot,
                threshold: m.threshold,
                scale: m.scale,
            }
            .launch(dev, cfg),
            None => launch::rb_dropout {
                x: &x,
                out: &mut out,
                n,
                key_lo: m.key_lo,
                key_hi: m.key_hi,
                key_slot: &m.key_slot,
                threshold: m.threshold,
                scale: m.scale,
            }
            .launch(dev, cfg),
        }
    }?;
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        l.shape().clone(),
    ))
}

/// A copy of the contiguous f32 tensor `x` (rows along its first dimension), with its first row
/// zeroed where `zero_first_row` (`nn::padding_row`): one device-to-device copy, and a memset.
pub(crate) fn copy_rows(
    s: &CudaStorage,
    l: &Layout,
    zero_first_row: bool,
) -> Result<(CudaStorage, Shape)> {
    let dev = &s.device;
    let x = f32_view(s, l, "table rows")?;
    let n = x.len();
    let rows = l.dims().first().copied().unwrap_or(1).max(1);
    // Written in full by the copy that follows (output's contract; nothing is read when n = 0).
    let mut out = output(dev, n)?;
    dev.memcpy_dtod(&x, &mut out)?;
    if zero_first_row && n > 0 {
        let mut head = out.slice_mut(0..n / rows);
        dev.cuda_stream()
            .memset_zeros(&mut head)
            .map_err(|e| Error::Msg(format!("CUDA memset of a table's first row: {e}")))?;
    }
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        l.shape().clone(),
    ))
}

/// Layer norm over the last dimension of `x` with `weight` and `bias` `[d]`.
pub(crate) fn layer_norm(
    (sx, lx): (&CudaStorage, &Layout),
    (sw, lw): (&CudaStorage, &Layout),
    (sb, lb): (&CudaStorage, &Layout),
    eps: f32,
) -> Result<(CudaStorage, Shape)> {
    let dev = &sx.device;
    let (rows, d) = rows_and_width(lx);
    let x = f32_view(sx, lx, "layer norm input")?;
    let w = f32_view(sw, lw, "layer norm weight")?;
    let b = f32_view(sb, lb, "layer norm bias")?;
    if w.len() != d || b.len() != d {
        return Err(Error::Msg(format!(
            "layer norm over width {d}: weight of {} and bias of {} values",
            w.len(),
            b.len()
        )));
    }
    let mut y = output(dev, rows * d)?;
    // SAFETY: x and y hold rows·d values, w and b d values (checked above); one warp per row.
    unsafe {
        launch::rb_layer_norm_fwd {
            x: &x,
            w: &w,
            b: &b,
            y: &mut y,
            rows: int(rows, "rows")?,
            d: int(d, "width")?,
            eps,
        }
        .launch(dev, config(grid(rows, 4)?, ROW_THREADS))
    }?;
    Ok((
        CudaStorage::wrap_cuda_slice(y, dev.clone()),
        lx.shape().clone(),
    ))
}

/// Rows per chunk of the layer norm's parameter-gradient column sums (more past
/// `LN_CHUNK · MAX_GRID_Y` rows, where the chunks would not fit the grid's second dimension).
const LN_CHUNK: usize = 256;
/// The largest second grid dimension of a launch.
const MAX_GRID_Y: usize = 65_535;

/// The layer norm's gradients for output gradient `dy`: `[rows·d + 2d]`, the input gradient
/// (row-major) followed by the weight's and the bias's gradients.
pub(crate) fn layer_norm_backward(
    (sx, lx): (&CudaStorage, &Layout),
    (sw, lw): (&CudaStorage, &Layout),
    (sg, lg): (&CudaStorage, &Layout),
    eps: f32,
) -> Result<(CudaStorage, Shape)> {
    let dev = &sx.device;
    let (rows, d) = rows_and_width(lx);
    let x = f32_view(sx, lx, "layer norm input")?;
    let w = f32_view(sw, lw, "layer norm weight")?;
    let g = f32_view(sg, lg, "layer norm output gradient")?;
    if w.len() != d || g.len() != rows * d {
        return Err(Error::Msg(format!(
            "layer norm backward over [{rows}, {d}]: weight of {} and gradient of {} values",
            w.len(),
            g.len()
        )));
    }
    let mut out = output(dev, rows * d + 2 * d)?;
    let mut stats = output(dev, 2 * rows)?;
    let chunk = LN_CHUNK.max(rows.div_ceil(MAX_GRID_Y));
    let chunks = rows.div_ceil(chunk).max(1);
    let mut partials = output(dev, chunks * 2 * d)?;
    let (r, di) = (int(rows, "rows")?, int(d, "width")?);
    {
        let mut dx = out.slice_mut(0..rows * d);
        // SAFETY: x, dy and dx hold rows·d values, w d, stats 2·rows; a warp per row.
        unsafe {
            launch::rb_layer_norm_bwd_dx {
                x: &x,
                w: &w,
                dy: &g,
                dx: &mut dx,
                stats: &mut stats,
                rows: r,
                d: di,
                eps,
            }
            .launch(dev, config(grid(rows, 4)?, ROW_THREADS))
        }?;
    }
    let cfg = LaunchConfig {
        grid_dim: (grid(d, 32)?, grid(rows, chunk)?, 1),
        block_dim: (32, 8, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the grid covers ⌈d/32⌉ column tiles × `chunks` row chunks, and partials holds
    // chunks·2·d values; reads stay below rows·d (x, dy) and 2·rows (stats).
    unsafe {
        launch::rb_layer_norm_bwd_params {
            x: &x,
            dy: &g,
            stats: &stats,
            partials: &mut partials,
            rows: r,
            d: di,
            chunk: int(chunk, "chunk")?,
        }
        .launch(dev, cfg)
    }?;
    {
        let mut dwb = out.slice_mut(rows * d..rows * d + 2 * d);
        // SAFETY: partials is [chunks, 2d], out the last 2d values of `out`.
        unsafe {
            launch::rb_sum_partials {
                partials: &partials,
                out: &mut dwb,
                chunks: int(chunks, "chunks")?,
                width: int(2 * d, "width")?,
            }
            .launch(
                dev,
                config(grid(2 * d, BLOCK_THREADS as usize)?, BLOCK_THREADS),
            )
        }?;
    }
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        Shape::from(rows * d + 2 * d),
    ))
}

/// Softmax over the last dimension.
pub(crate) fn softmax(s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
    let dev = &s.device;
    let (rows, n) = rows_and_width(l);
    let x = f32_view(s, l, "softmax input")?;
    let mut y = output(dev, rows * n)?;
    // SAFETY: x and y hold rows·n values; a warp per row.
    unsafe {
        launch::rb_softmax_fwd {
            x: &x,
            y: &mut y,
            rows: int(rows, "rows")?,
            n: int(n, "width")?,
        }
        .launch(dev, config(grid(rows, 4)?, ROW_THREADS))
    }?;
    Ok((
        CudaStorage::wrap_cuda_slice(y, dev.clone()),
        l.shape().clone(),
    ))
}

/// The softmax's input gradient `y·(dy − Σ dy·y)` from its output `y` and output gradient `dy`.
pub(crate) fn softmax_backward(
    (sy, ly): (&CudaStorage, &Layout),
    (sg, lg): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let dev = &sy.device;
    let (rows, n) = rows_and_width(ly);
    let y = f32_view(sy, ly, "softmax output")?;
    let g = f32_view(sg, lg, "softmax output gradient")?;
    if g.len() != y.len() {
        return Err(Error::Msg(format!(
            "softmax backward: output of {} and gradient of {} values",
            y.len(),
            g.len()
        )));
    }
    let mut dx = output(dev, rows * n)?;
    // SAFETY: y, dy (checked) and dx hold rows·n values; a warp per row.
    unsafe {
        launch::rb_softmax_bwd {
            y: &y,
            dy: &g,
            dx: &mut dx,
            rows: int(rows, "rows")?,
            n: int(n, "width")?,
        }
        .launch(dev, config(grid(rows, 4)?, ROW_THREADS))
    }?;
    Ok((
        CudaStorage::wrap_cuda_slice(dx, dev.clone()),
        ly.shape().clone(),
    ))
}

/// Per-row softmax cross-entropy `[M]` of logits `[M, C]` against u32 targets `[M]`, class 0
/// ignored. Targets must be below C (the caller checks them).
pub(crate) fn softmax_cross_entropy(
    (sx, lx): (&CudaStorage, &Layout),
    (st, lt): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let dev = &sx.device;
    let (m, c) = lx.shape().dims2()?;
    let x = f32_view(sx, lx, "cross-entropy logits")?;
    let t = u32_view(st, lt, "cross-entropy targets")?;
    if t.len() != m {
        return Err(Error::Msg(format!(
            "cross-entropy: {m} rows of logits and {} targets",
            t.len()
        )));
    }
    let mut ce = output(dev, m)?;
    // SAFETY: x is [m, c], t and ce [m]; one block per row; a target at or above c gives NaN
    // without a read.
    unsafe {
        launch::rb_softmax_ce_fwd {
            x: &x,
            t: &t,
            ce: &mut ce,
            rows: int(m, "rows")?,
            c: int(c, "classes")?,
        }
        .launch(dev, config(grid(m, 1)?, BLOCK_THREADS))
    }?;
    Ok((
        CudaStorage::wrap_cuda_slice(ce, dev.clone()),
        Shape::from(m),
    ))
}

/// The cross-entropy's logits gradient `g_m·(softmax − onehot)` for upstream gradient `g` `[M]`.
pub(crate) fn softmax_cross_entropy_backward(
    (sx, lx): (&CudaStorage, &Layout),
    (st, lt): (&CudaStorage, &Layout),
    (sg, lg): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let dev = &sx.device;
    let (m, c) = lx.shape().dims2()?;
    let x = f32_view(sx, lx, "cross-entropy logits")?;
    let t = u32_view(st, lt, "cross-entropy targets")?;
    let g = f32_view(sg, lg, "cross-entropy upstream gradient")?;
    if t.len() != m || g.len() != m {
        return Err(Error::Msg(format!(
            "cross-entropy backward: {m} rows, {} targets, {} upstream values",
            t.len(),
            g.len()
        )));
    }
    let mut dx = output(dev, m * c)?;
    // SAFETY: x and dx are [m, c], t and g [m] (checked); one block per row.
    unsafe {
        launch::rb_softmax_ce_bwd {
            x: &x,
            t: &t,
            g: &g,
            dx: &mut dx,
            rows: int(m, "rows")?,
            c: int(c, "classes")?,
        }
        .launch(dev, config(grid(m, 1)?, BLOCK_THREADS))
    }?;
    Ok((
        CudaStorage::wrap_cuda_slice(dx, dev.clone()),
        Shape::from((m, c)),
    ))
}

/// One Adam step's coefficients, as f32 (the host optimizer's `StepCoefficients`); the layout of
/// the kernels' `AdamCoefficients`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamCoefficients {
    /// β₁.
    pub beta1: f32,
    /// 1 − β₁.
    pub one_minus_beta1: f32,
    /// β₂.
    pub beta2: f32,
    /// 1 − β₂.
    pub one_minus_beta2: f32,
    /// 1 / (1 − β₁ᵗ).
    pub inv_bias1: f32,
    /// 1 / (1 − β₂ᵗ).
    pub inv_bias2: f32,
    /// ε.
    pub eps: f32,
    /// The learning rate.
    pub lr: f32,
}

/// A parameter's Adam moments held on its CUDA device, updated in place with the parameter by
/// [`adam_step`].
pub struct AdamMoments {
    m: CudaSlice<f32>,
    v: CudaSlice<f32>,
}

impl AdamMoments {
    /// Zero moments for a parameter of `n` values on `dev`.
    pub fn zeros(dev: &CudaDevice, n: usize) -> Result<Self> {
        Ok(AdamMoments {
            m: dev.alloc_zeros::<f32>(n.max(1))?,
            v: dev.alloc_zeros::<f32>(n.max(1))?,
        })
    }

    /// Moments from tensors (a resumed run's state), copied to `dev`.
    pub fn from_tensors(m: &candle_core::Tensor, v: &candle_core::Tensor) -> Result<Self> {
        let copy = |t: &candle_core::Tensor| -> Result<CudaSlice<f32>> {
            let t = t
                .to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .contiguous()?;
            let (storage, layout) = t.storage_and_layout();
            match &*storage {
                candle_core::Storage::Cuda(s) => {
                    let view = f32_view(s, layout, "adam moment")?;
                    let mut out = output(&s.device, view.len())?;
                    s.device.memcpy_dtod(&view, &mut out)?;
                    Ok(out)
                }
                _ => Err(Error::Msg(
                    "adam moments: expected tensors on a CUDA device".into(),
                )),
            }
        };
        Ok(AdamMoments {
            m: copy(m)?,
            v: copy(v)?,
        })
    }

    /// The moments as tensors of `shape` on `dev` (copies).
    pub fn to_tensors(
        &self,
        shape: &Shape,
        dev: &CudaDevice,
    ) -> Result<(candle_core::Tensor, candle_core::Tensor)> {
        let n = shape.elem_count();
        let copy = |s: &CudaSlice<f32>| -> Result<candle_core::Tensor> {
            let mut out = output(dev, n)?;
            dev.memcpy_dtod(&s.slice(0..n), &mut out)?;
            let storage =
                candle_core::Storage::Cuda(CudaStorage::wrap_cuda_slice(out, dev.clone()));
            Ok(candle_core::Tensor::from_storage(
                storage,
                shape.clone(),
                candle_core::op::BackpropOp::none(),
                false,
            ))
        };
        Ok((copy(&self.m)?, copy(&self.v)?))
    }
}

/// Parameters per launch of `rb_adam_step` (its `ADAM_TENSORS`).
const ADAM_TENSORS: usize = 48;

/// The kernel's parameter table, field for field the `AdamTable` of `kernels.cu` (device
/// addresses as u64).
#[repr(C)]
struct AdamTable {
    p: [u64; ADAM_TENSORS],
    g: [u64; ADAM_TENSORS],
    m: [u64; ADAM_TENSORS],
    v: [u64; ADAM_TENSORS],
    n: [u32; ADAM_TENSORS],
    first_block: [u32; ADAM_TENSORS + 1],
    count: i32,
}

// SAFETY: a plain `repr(C)` struct of integers whose layout is the kernel's `AdamTable` (the same
// fields in the same order: 4 × 48 u64, 48 u32, 49 u32, one int; 1,928 bytes).
unsafe impl candle_core::cuda_backend::cudarc::driver::DeviceRepr for AdamTable {}
// SAFETY: a `repr(C)` struct of 8 f32, the kernel's `AdamCoefficients`.
unsafe impl candle_core::cuda_backend::cudarc::driver::DeviceRepr for AdamCoefficients {}

/// One parameter of an [`adam_step`]: the parameter (updated in place), its gradient and its
/// moments.
pub struct AdamParam<'a> {
    /// The parameter, a contiguous f32 tensor on the device.
    pub param: &'a candle_core::Tensor,
    /// Its gradient, same shape.
    pub grad: &'a candle_core::Tensor,
    /// Its moments.
    pub moments: &'a mut AdamMoments,
}

/// A tensor's device address (of its first element) and element count; it must be a contiguous
/// f32 tensor on a CUDA device.
fn f32_address(t: &candle_core::Tensor, what: &str) -> Result<(u64, usize)> {
    use candle_core::cuda_backend::cudarc::driver::DevicePtr;
    let (storage, layout) = t.storage_and_layout();
    let (a, b) = layout
        .contiguous_offsets()
        .ok_or_else(|| Error::Msg(format!("adam: the {what} is not contiguous")))?;
    match &*storage {
        candle_core::Storage::Cuda(c) => {
            let slice = c.as_cuda_slice::<f32>()?;
            let stream = c.device.cuda_stream();
            let (ptr, _sync) = slice.device_ptr(&stream);
            Ok((ptr + (a * std::mem::size_of::<f32>()) as u64, b - a))
        }
        _ => Err(Error::Msg(format!(
            "adam: the {what} is not on the CUDA device"
        ))),
    }
}

/// One Adam step over `params`, updating each parameter and its moments in place: one launch per
/// 48 parameters. The coefficients are `k`, or, where `k_slot` is set, the [`AdamCoefficients`]
/// stored at that device address when the launch runs (a captured step's, written before each
/// replay). Where `guard` is set (the device address of an f32, a captured step's loss), the step
/// changes nothing unless that value is finite when the launch runs.
pub fn adam_step(
    dev: &CudaDevice,
    params: &mut [AdamParam<'_>],
    k: AdamCoefficients,
    k_slot: u64,
    guard: u64,
) -> Result<()> {
    use candle_core::cuda_backend::cudarc::driver::DevicePtrMut;
    let stream = dev.cuda_stream();
    for chunk in params.chunks_mut(ADAM_TENSORS) {
        let mut table = AdamTable {
            p: [0; ADAM_TENSORS],
            g: [0; ADAM_TENSORS],
            m: [0; ADAM_TENSORS],
            v: [0; ADAM_TENSORS],
            n: [0; ADAM_TENSORS],
            first_block: [0; ADAM_TENSORS + 1],
            count: 0,
        };
        // Gradients that are views are copied contiguous; the copies live until the launch is
        // queued (their memory is freed in stream order, after the kernel).
        let mut held = Vec::new();
        let mut blocks = 0usize;
        for (i, item) in chunk.iter_mut().enumerate() {
            let (p, n) = f32_address(item.param, "parameter")?;
            let grad = item.grad.contiguous()?;
            let (g, ng) = f32_address(&grad, "gradient")?;
            held.push(grad);
            if ng != n || item.moments.m.len() < n || item.moments.v.len() < n {
                return Err(Error::Msg(format!(
                    "adam: a parameter of {n} values, a gradient of {ng}, moments of {}",
                    item.moments.m.len()
                )));
            }
            let (m, _sm) = item.moments.m.device_ptr_mut(&stream);
            table.m[i] = m;
            let (v, _sv) = item.moments.v.device_ptr_mut(&stream);
            table.v[i] = v;
            table.p[i] = p;
            table.g[i] = g;
            table.n[i] = u32::try_from(n)
                .map_err(|_| Error::Msg(format!("adam: a parameter of {n} values")))?;
            table.first_block[i] =
                u32::try_from(blocks).map_err(|_| Error::Msg("adam: too many blocks".into()))?;
            blocks += n.div_ceil(BLOCK_THREADS as usize);
            table.count = i as i32 + 1;
        }
        table.first_block[chunk.len()] =
            u32::try_from(blocks).map_err(|_| Error::Msg("adam: too many blocks".into()))?;
        if blocks == 0 {
            continue;
        }
        // SAFETY: the table (by value) names, for each of its `count` parameters, the parameter
        // and gradient of n values (checked above) and moments of at least n; block b updates
        // elements of the parameter whose block range holds b, each below its n. The parameters
        // are written through addresses taken under a read lock: their storage stays where it is
        // (variables are updated in place), and all device work runs in order on this one
        // stream. k_slot, where set, is the address of live coefficients (the capture's buffer),
        // guard of a live f32 (its loss buffer).
        unsafe {
            launch::rb_adam_step {
                table,
                k,
                k_slot: &launch::Address::new(k_slot),
                guard: &launch::Address::new(guard),
            }
            .launch(dev, config(grid(blocks, 1)?, BLOCK_THREADS))
        }?;
        drop(held);
    }
    Ok(())
}

/// Logits per block of the catalog row pass over long rows (`rb_catalog_row_parts` and
/// `rb_catalog_row_grads`, 16 a thread). A row of at most this many takes one block
/// (`rb_catalog_rows`).
const CATALOG_SEGMENT: usize = 4096;

/// The catalog softmax loss's row pass over one chunk of logits `z` `[r, N]` with targets `[r]`
/// (u32) and weights `[r]`: `[r·N + r]`, the logits' gradient `w·(softmax − onehot)` (row-major)
/// followed by each row's weighted loss `(lse − z_t)·w`.
///
/// Rows up to [`CATALOG_SEGMENT`] logits take a block each (one launch). Longer rows are cut into
/// segments of that many, a block each, in two launches: the segments' maxima and sums of
/// exponentials, then the gradient (a large catalog's chunk has few rows: a block per row would
/// leave most of the GPU idle).
pub(crate) fn catalog_rows(
    (sz, lz): (&CudaStorage, &Layout),
    (st, lt): (&CudaStorage, &Layout),
    (sw, lw): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let dev = &sz.device;
    let (r, c) = lz.shape().dims2()?;
    let z = f32_view(sz, lz, "catalog logits")?;
    let t = u32_view(st, lt, "catalog targets")?;
    let w = f32_view(sw, lw, "catalog weights")?;
    if t.len() != r || w.len() != r {
        return Err(Error::Msg(format!(
            "catalog loss: {r} rows of logits, {} targets and {} weights",
            t.len(),
            w.len()
        )));
    }
    let (rows, classes) = (int(r, "rows")?, int(c, "classes")?);
    let segments = c.div_ceil(CATALOG_SEGMENT);
    // The grid's second dimension holds at most 65,535 blocks.
    let segment_blocks = u32::try_from(segments)
        .ok()
        .filter(|&b| b <= 65_535)
        .ok_or_else(|| {
            Error::Msg(format!(
                "catalog loss: {c} classes make {segments} segments of {CATALOG_SEGMENT}; a \
                 launch takes at most 65,535"
            ))
        })?;
    let mut out = output(dev, r * c + r)?;
    let (mut dz, mut losses) = out.split_at_mut(r * c);
    if segments == 1 {
        // SAFETY: z and dz are [r, c], t, w and losses [r] (checked); a block per row; a target
        // at or above c gives NaN without a read.
        unsafe {
            launch::rb_catalog_rows {
                z: &z,
                t: &t,
                w: &w,
                dz: &mut dz,
                losses: &mut losses,
                rows,
                c: classes,
            }
            .launch(dev, config(grid(r, 1)?, BLOCK_THREADS))
        }?;
    } else {
        // Rows without a target leave their parts unwritten, and nothing reads them.
        let mut parts = output(dev, r * segments * 2)?;
        let cfg = LaunchConfig {
            grid_dim: (grid(r, 1)?, segment_blocks, 1),
            block_dim: (BLOCK_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let seg = int(CATALOG_SEGMENT, "segment")?;
        // SAFETY: z is [r, c], t [r] (checked); the grid is r rows × ⌈c / seg⌉ segments, and
        // parts holds 2 values per (row, segment): the kernel writes those of rows with a target.
        unsafe {
            launch::rb_catalog_row_parts {
                z: &z,
                t: &t,
                parts: &mut parts,
                rows,
                c: classes,
                seg,
            }
            .launch(dev, cfg)
        }?;
        // SAFETY: as above, with w and losses [r] and dz [r, c]; a row with a target reads the
        // parts its row's blocks wrote in the launch before (same stream), and every (row,
        // segment) block writes its segment of dz; segment 0 writes the row's loss.
        unsafe {
            launch::rb_catalog_row_grads {
                z: &z,
                t: &t,
                w: &w,
                parts: &parts,
                dz: &mut dz,
                losses: &mut losses,
                rows,
                c: classes,
                seg,
            }
            .launch(dev, cfg)
        }?;
    }
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        Shape::from(r * c + r),
    ))
}

/// RecTools' catalog loss from its rows' weighted losses `l` `[m]`, with the gradients' factor:
/// `[Σ l / count(l > 0), 1 / (count · temperature)]` (`rb_catalog_loss_total`, one block).
pub(crate) fn catalog_loss_total(
    (sl, ll): (&CudaStorage, &Layout),
    temperature: f32,
) -> Result<(CudaStorage, Shape)> {
    let dev = &sl.device;
    let l = f32_view(sl, ll, "catalog row losses")?;
    // The count is summed in f32: exact below 2²⁴ rows.
    if l.len() >= 1 << 24 {
        return Err(Error::Msg(format!(
            "catalog loss: {} rows; the device total counts up to 2^24",
            l.len()
        )));
    }
    let mut out = output(dev, 2)?;
    // SAFETY: l holds m values, out 2; one block of BLOCK_THREADS (256, the kernel's block sum).
    unsafe {
        launch::rb_catalog_loss_total {
            l: &l,
            m: l.len() as u64,
            temperature,
            out: &mut out,
        }
        .launch(dev, config(1, BLOCK_THREADS))
    }?;
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        Shape::from(2),
    ))
}

/// A one-element f32 storage holding `v` on `dev`.
pub(crate) fn scalar(dev: &CudaDevice, v: f32) -> Result<(CudaStorage, Shape)> {
    let host = [v];
    let s = dev.clone_htod(&host[..])?;
    Ok((
        CudaStorage::wrap_cuda_slice(s, dev.clone()),
        Shape::from(()),
    ))
}

/// The dropout arguments of a kernel that applies a mask: whether it does, the key as two
/// halves, the address of a key in device memory that replaces them (0: none; see
/// [`crate::nn::capture`]), the keep threshold and the kept values' scale.
struct MaskArgs {
    use_mask: i32,
    key_lo: u32,
    key_hi: u32,
    key_slot: launch::Address<u64>,
    threshold: u32,
    scale: f32,
}

impl MaskArgs {
    fn new(drop: Option<crate::nn::dropout::MaskDraw>) -> Self {
        match drop {
            Some(d) => MaskArgs {
                use_mask: 1,
                key_lo: d.key as u32,
                key_hi: (d.key >> 32) as u32,
                key_slot: launch::Address::new(d.key_slot),
                threshold: d.threshold,
                scale: d.scale,
            },
            None => MaskArgs {
                use_mask: 0,
                key_lo: 0,
                key_hi: 0,
                key_slot: launch::Address::NULL,
                threshold: 0,
                scale: 1.0,
            },
        }
    }
}

/// The shape facts of an attention-weights op: scores `[B, heads, queries, K]`, bias
/// `[bias_b, 1, bias_q, K]` (`bias_b` 0: none).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttentionShape {
    pub heads: usize,
    pub queries: usize,
    pub bias_b: usize,
    pub bias_q: usize,
    pub scale: f32,
}

/// `dropout(softmax(scores·scale + bias))`, and the softmax output `y` for the backward pass.
pub(crate) fn attention_weights(
    (ss, ls): (&CudaStorage, &Layout),
    (sb, lb): (&CudaStorage, &Layout),
    shape: AttentionShape,
    drop: Option<crate::nn::dropout::MaskDraw>,
) -> Result<(CudaStorage, CudaSlice<f32>)> {
    let dev = &ss.device;
    let (rows, k) = rows_and_width(ls);
    let s = f32_view(ss, ls, "attention scores")?;
    let bias = f32_view(sb, lb, "attention bias")?;
    let want_bias = shape.bias_b * shape.bias_q * k;
    if shape.bias_b > 0 && bias.len() != want_bias {
        return Err(Error::Msg(format!(
            "attention weights: a bias of {} values, expected {want_bias}",
            bias.len()
        )));
    }
    let mut p = output(dev, rows * k)?;
    let mut y = output(dev, rows * k)?;
    let m = MaskArgs::new(drop);
    // SAFETY: s, p and y hold rows·n values; the bias rows read are below bias_b·bias_q (checked
    // above, unread when bias_b is 0); a warp per row.
    unsafe {
        launch::rb_attention_probs_fwd {
            s: &s,
            bias: &bias,
            p: &mut p,
            y: &mut y,
            rows: int(rows, "rows")?,
            n: int(k, "keys")?,
            heads: int(shape.heads, "heads")?,
            queries: int(shape.queries, "queries")?,
            bias_b: int(shape.bias_b, "bias rows")?,
            bias_q: int(shape.bias_q, "bias queries")?,
            scale: shape.scale,
            use_mask: m.use_mask,
            key_lo: m.key_lo,
            key_hi: m.key_hi,
            key_slot: &m.key_slot,
            threshold: m.threshold,
            dscale: m.scale,
        }
        .launch(dev, config(grid(rows, 4)?, ROW_THREADS))
    }?;
    Ok((CudaStorage::wrap_cuda_slice(p, dev.clone()), y))
}

/// The scores' gradient from the saved softmax output `y` and the output gradient `dp`.
pub(crate) fn attention_weights_backward(
    y: &CudaSlice<f32>,
    (sg, lg): (&CudaStorage, &Layout),
    scale: f32,
    drop: Option<crate::nn::dropout::MaskDraw>,
) -> Result<CudaStorage> {
    let dev = &sg.device;
    let (rows, k) = rows_and_width(lg);
    let g = f32_view(sg, lg, "attention weights gradient")?;
    if y.len() < rows * k {
        return Err(Error::Msg(format!(
            "attention weights backward: {} saved values for a gradient of {}",
            y.len(),
            rows * k
        )));
    }
    let mut ds = output(dev, rows * k)?;
    let m = MaskArgs::new(drop);
    // SAFETY: y (checked), dp and ds hold rows·n values; a warp per row.
    unsafe {
        launch::rb_attention_probs_bwd {
            y,
            dp: &g,
            ds: &mut ds,
            rows: int(rows, "rows")?,
            n: int(k, "keys")?,
            scale,
            use_mask: m.use_mask,
            key_lo: m.key_lo,
            key_hi: m.key_hi,
            key_slot: &m.key_slot,
            threshold: m.threshold,
            dscale: m.scale,
        }
        .launch(dev, config(grid(rows, 4)?, ROW_THREADS))
    }?;
    Ok(CudaStorage::wrap_cuda_slice(ds, dev.clone()))
}

/// `act(h)·mask` (no `grad`), or its backward `g·mask·act'(h)` (with `grad` = `g`).
pub(crate) fn act_dropout(
    (sh, lh): (&CudaStorage, &Layout),
    grad: Option<(&CudaStorage, &Layout)>,
    act: i32,
    drop: Option<crate::nn::dropout::MaskDraw>,
) -> Result<CudaStorage> {
    let dev = &sh.device;
    let n = lh.shape().elem_count();
    let h = f32_view(sh, lh, "activation input")?;
    let mut out = output(dev, n)?;
    let m = MaskArgs::new(drop);
    let cfg = config(grid(n, BLOCK_THREADS as usize)?, BLOCK_THREADS);
    match grad {
        None => {
            // SAFETY: h and out hold n values; a thread per element.
            unsafe {
                launch::rb_act_dropout_fwd {
                    h: &h,
                    out: &mut out,
                    n: n as u64,
                    act,
                    use_mask: m.use_mask,
                    key_lo: m.key_lo,
                    key_hi: m.key_hi,
                    key_slot: &m.key_slot,
                    threshold: m.threshold,
                    dscale: m.scale,
                }
                .launch(dev, cfg)
            }?;
        }
        Some((sg, lg)) => {
            let g = f32_view(sg, lg, "activation gradient")?;
            if g.len() != n {
                return Err(Error::Msg(format!(
                    "activation backward: {n} inputs and {} gradient values",
                    g.len()
                )));
            }
            // SAFETY: h, g (checked) and dh hold n values; a thread per element.
            unsafe {
                launch::rb_act_dropout_bwd {
                    h: &h,
                    g: &g,
                    dh: &mut out,
                    n: n as u64,
                    act,
                    use_mask: m.use_mask,
                    key_lo: m.key_lo,
                    key_hi: m.key_hi,
                    key_slot: &m.key_slot,
                    threshold: m.threshold,
                    dscale: m.scale,
                }
                .launch(dev, cfg)
            }?;
        }
    }
    Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
}

/// `x [R, C] + b [C]`.
pub(crate) fn bias_add(
    (sx, lx): (&CudaStorage, &Layout),
    (sb, lb): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let dev = &sx.device;
    let (rows, cols) = rows_and_width(lx);
    let x = f32_view(sx, lx, "bias-add input")?;
    let b = f32_view(sb, lb, "bias-add bias")?;
    if b.len() != cols || cols == 0 {
        return Err(Error::Msg(format!(
            "bias-add: input rows are {cols} wide but the bias has {} values",
            b.len()
        )));
    }
    let n = rows * cols;
    let mut out = output(dev, n)?;
    // SAFETY: x and out hold n values, b cols (checked, cols > 0); a thread per element.
    unsafe {
        launch::rb_bias_add {
            x: &x,
            b: &b,
            out: &mut out,
            n: n as u64,
            cols: int(cols, "columns")?,
        }
        .launch(dev, config(grid(n, BLOCK_THREADS as usize)?, BLOCK_THREADS))
    }?;
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        lx.shape().clone(),
    ))
}

/// `x` `[rows, cols]` with row r scaled by `m[r]`: a timeline mask applied (`nn::masks`).
pub(crate) fn row_scale(
    (sx, lx): (&CudaStorage, &Layout),
    (sm, lm): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let dev = &sx.device;
    let (rows, cols) = rows_and_width(lx);
    let x = f32_view(sx, lx, "masked rows")?;
    let m = f32_view(sm, lm, "row mask")?;
    if m.len() != rows || cols == 0 {
        return Err(Error::Msg(format!(
            "row mask: {rows} rows of {cols} and a mask of {} values",
            m.len()
        )));
    }
    let n = rows * cols;
    let mut out = output(dev, n)?;
    // SAFETY: x and out hold n = rows·cols values, m rows (checked, cols > 0); a thread per
    // element.
    unsafe {
        launch::rb_row_scale {
            x: &x,
            m: &m,
            out: &mut out,
            n: n as u64,
            cols: int(cols, "columns")?,
        }
        .launch(dev, config(grid(n, BLOCK_THREADS as usize)?, BLOCK_THREADS))
    }?;
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        lx.shape().clone(),
    ))
}

/// `x` `[B, L, d]` plus `t[rows[l]]` at each position l (`nn::position_rows`).
pub(crate) fn add_position_rows(
    (sx, lx): (&CudaStorage, &Layout),
    (st, lt): (&CudaStorage, &Layout),
    (sr, lr): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let dev = &sx.device;
    let (_, l, d) = lx.shape().dims3()?;
    let (n_rows, d_table) = lt.shape().dims2()?;
    let x = f32_view(sx, lx, "sessions")?;
    let t = f32_view(st, lt, "position table")?;
    let rows = u32_view(sr, lr, "position rows")?;
    if rows.len() != l || d_table != d || d == 0 || t.len() != n_rows * d {
        return Err(Error::Msg(format!(
            "position rows: sessions {:?}, a table {:?} and {} rows",
            lx.dims(),
            lt.dims(),
            rows.len()
        )));
    }
    let n = lx.shape().elem_count();
    let mut out = output(dev, n)?;
    // SAFETY: x and out hold n = B·L·d values, rows l, t n_rows·d; every row is below n_rows
    // (checked on the host when the rows were made, `PositionRows`); a thread per element.
    unsafe {
        launch::rb_add_position_rows {
            x: &x,
            t: &t,
            rows: &rows,
            out: &mut out,
            n: n as u64,
            l: int(l, "positions")?,
            d: int(d, "width")?,
        }
        .launch(dev, config(grid(n, BLOCK_THREADS as usize)?, BLOCK_THREADS))
    }?;
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        lx.shape().clone(),
    ))
}

/// The position table's gradient `[n_rows, d]` from the output's `g` `[B, L, d]`: row `rows[l]`
/// the sum over the batch of position l's gradient, the other rows 0 (`nn::position_rows`).
pub(crate) fn position_rows_grad(
    (sg, lg): (&CudaStorage, &Layout),
    (sr, lr): (&CudaStorage, &Layout),
    n_rows: usize,
) -> Result<(CudaStorage, Shape)> {
    let dev = &sg.device;
    let (b, l, d) = lg.shape().dims3()?;
    let g = f32_view(sg, lg, "position rows gradient")?;
    let rows = u32_view(sr, lr, "position rows")?;
    if rows.len() != l {
        return Err(Error::Msg(format!(
            "position rows gradient: {l} positions and {} rows",
            rows.len()
        )));
    }
    let mut out = dev.alloc_zeros::<f32>((n_rows * d).max(1))?;
    if l * d > 0 {
        int(l * d, "positions times width")?;
        // SAFETY: g holds b·l·d values, rows l (distinct, each below n_rows: `PositionRows`), dt
        // n_rows·d zeros; a thread per (position, column), l·d of them (fits an int, checked).
        unsafe {
            launch::rb_position_rows_grad {
                g: &g,
                rows: &rows,
                dt: &mut out,
                b: int(b, "sessions")?,
                l: int(l, "positions")?,
                d: int(d, "width")?,
            }
            .launch(
                dev,
                config(grid(l * d, BLOCK_THREADS as usize)?, BLOCK_THREADS),
            )
        }?;
    }
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        Shape::from((n_rows, d)),
    ))
}

/// Which attention bias [`attention_bias`] builds (the `mode` of `rb_attention_bias`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BiasKind {
    /// `[1, 1, L, L]`, −inf above the diagonal.
    Causal = 0,
    /// `[B, 1, 1, L]`, −inf at padded keys.
    KeyPadding = 1,
    /// RecTools' merged mask `[B, 1, L, L]`.
    Merged = 2,
}

/// An attention bias of `kind` for input ids `ids` `[B, L]` (u32; unused for the causal bias,
/// which takes `l`), built on `dev` by one kernel: no copy between host and device, so a
/// captured step can build it.
pub(crate) fn attention_bias(
    dev: &CudaDevice,
    ids: Option<&candle_core::Tensor>,
    l: usize,
    kind: BiasKind,
) -> Result<candle_core::Tensor> {
    let (b, shape) = match (kind, ids) {
        (BiasKind::Causal, _) => (1, Shape::from((1, 1, l, l))),
        (BiasKind::KeyPadding, Some(x)) => {
            let (b, _) = x.dims2()?;
            (b, Shape::from((b, 1, 1, l)))
        }
        (BiasKind::Merged, Some(x)) => {
            let (b, _) = x.dims2()?;
            (b, Shape::from((b, 1, l, l)))
        }
        _ => {
            return Err(Error::Msg(
                "attention bias: a padding mask needs the input ids".into(),
            ))
        }
    };
    let n = shape.elem_count();
    let mut out = output(dev, n)?;
    let ids = match ids {
        Some(x) if kind != BiasKind::Causal => {
            if x.dims2()? != (b, l) || x.dtype() != candle_core::DType::U32 {
                return Err(Error::Msg(format!(
                    "attention bias: input ids must be [{b}, {l}] u32, found {:?} {:?}",
                    x.dtype(),
                    x.dims()
                )));
            }
            Some(x.contiguous()?)
        }
        _ => None,
    };
    let storage = ids.as_ref().map(|x| x.storage_and_layout());
    let view = match &storage {
        Some((s, layout)) => match &**s {
            candle_core::Storage::Cuda(c) => Some(u32_view(c, layout, "attention bias ids")?),
            _ => {
                return Err(Error::Msg(
                    "attention bias: the input ids are not on the CUDA device".into(),
                ))
            }
        },
        None => None,
    };
    let ids: &dyn launch::Input<u32> = match &view {
        Some(v) => v,
        None => &launch::Address::<u32>::NULL,
    };
    // SAFETY: out holds n values; ids (read in modes 1 and 2 only, where it is set) holds b·l,
    // checked above, and every index read is below b·l; a thread per element.
    unsafe {
        launch::rb_attention_bias {
            ids,
            out: &mut out,
            n: n as u64,
            l: int(l, "session length")?,
            mode: kind as i32,
        }
        .launch(dev, config(grid(n, BLOCK_THREADS as usize)?, BLOCK_THREADS))
    }?;
    let storage = candle_core::Storage::Cuda(CudaStorage::wrap_cuda_slice(out, dev.clone()));
    Ok(candle_core::Tensor::from_storage(
        storage,
        shape,
        candle_core::op::BackpropOp::none(),
        false,
    ))
}
