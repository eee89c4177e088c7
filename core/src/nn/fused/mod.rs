//! Whole-block fused kernels: each standard transformer block as one autograd node with a
//! hand-written backward pass.
//!
//! The generic path composes a block from ~40 candle ops. Each allocates its output, and in the
//! backward pass candle gives every node a zero gradient and adds into it, so a block costs dozens
//! of full-size buffers, memsets and element-wise passes around a handful of matrix products. A
//! fused block computes its forward pass in a few passes over its own buffers (the matrix products
//! still go through candle's gemm), keeps what its backward pass needs, and writes every gradient
//! once. To candle it is one node (`node::attach`) whose inputs are the block input and the block's
//! parameters concatenated; candle's `cat` splits the parameter gradient back into each named
//! parameter, so names, checkpoints, optimizers and ALBERT's parameter sharing are unchanged.
//!
//! Dropout masks come from [`crate::nn::Dropout::draw_mask`] in the order the generic block draws
//! them, so both paths see the same masks. The generic path stays the reference: tests compare
//! the two, and `RECBLOCKS_BLOCKS=generic` (or [`set_enabled`]) switches the fused blocks off.
//! Fused blocks run on the CPU for f32; anything else takes the generic path.
//! `RECBLOCKS_BLOCKS=nodes` composes the model on the CPU as on a GPU (the device nodes and the
//! block nodes of `nn::block_node`, each in its CPU form) instead of the fused blocks: a way to
//! test that path through a whole training run without a GPU.

pub(crate) mod attention;
pub(crate) mod kernels;
pub(crate) mod ligr;
pub(crate) mod node;
pub(crate) mod parts;
pub(crate) mod preln;
pub(crate) mod products;
pub(crate) mod sasrec;
pub(crate) mod self_attention;

use std::{
    cell::RefCell,
    sync::atomic::{AtomicU8, Ordering},
};

use candle_core::{DType, Device, Tensor};

/// 0: not read yet; 1: fused; 2: generic; 3: fused, with block nodes on the CPU too.
static MODE: AtomicU8 = AtomicU8::new(0);

/// The mode, read once from `RECBLOCKS_BLOCKS` unless [`set_enabled`] was called.
fn mode() -> u8 {
    match MODE.load(Ordering::Relaxed) {
        0 => {
            let mode = match std::env::var("RECBLOCKS_BLOCKS").as_deref() {
                Ok("generic") => 2,
                Ok("nodes") => 3,
                _ => 1,
            };
            // Another thread may have decided first; keep its decision.
            let _ = MODE.compare_exchange(0, mode, Ordering::Relaxed, Ordering::Relaxed);
            MODE.load(Ordering::Relaxed)
        }
        m => m,
    }
}

/// Whether blocks take the fused path (the default): the fused CPU blocks, and on a GPU the
/// device ops and block nodes. Read once from `RECBLOCKS_BLOCKS` (`generic` switches the fused
/// blocks off) unless [`set_enabled`] was called.
pub fn enabled() -> bool {
    mode() != 2
}

/// Whether the GPU's block nodes stand in for the fused CPU blocks on the CPU
/// (`RECBLOCKS_BLOCKS=nodes`).
pub(crate) fn nodes_on_cpu() -> bool {
    mode() == 3
}

/// Whether ops on `device` take the forms a GPU runs (the device nodes: linear, attention core,
/// activation-dropout, dropout mask, lookups): on a CUDA device with the fused paths on, and on
/// the CPU under `RECBLOCKS_BLOCKS=nodes`, where each has its CPU form.
pub(crate) fn gpu_composition(device: &Device) -> bool {
    (device.is_cuda() && enabled()) || (device.is_cpu() && nodes_on_cpu())
}

/// Turns the fused blocks on or off for the whole process (tests, benchmarks, debugging).
pub fn set_enabled(on: bool) {
    MODE.store(if on { 1 } else { 2 }, Ordering::Relaxed);
}

/// Whether `x` can take a fused block: the switch is on (and not set to `nodes`) and `x` is an
/// f32 CPU tensor.
pub(crate) fn usable(x: &Tensor) -> bool {
    matches!(x.device(), Device::Cpu) && x.dtype() == DType::F32 && mode() == 1
}

/// An attention bias `[B or 1, 1, queries, L]` as rows `[B, queries, L]` (per session) or
/// `[1, queries, L]` (shared), and which; `None` without a bias. `queries` is `L` for a whole
/// block, 1 for the last query row ([`crate::components::AttentionMasks::last_query_bias`]). A
/// bias that differs between heads is not supported (see [`supports_bias`]).
pub(crate) fn bias_rows(
    bias: Option<&Tensor>,
    b: usize,
    queries: usize,
    l: usize,
) -> candle_core::Result<Option<(Tensor, bool)>> {
    let Some(bias) = bias else {
        return Ok(None);
    };
    let per_session = bias.dims().first().copied().unwrap_or(1) != 1;
    let rows = if per_session { b } else { 1 };
    let t = bias
        .broadcast_as((rows, 1, queries, l))?
        .contiguous()?
        .to_dtype(DType::F32)?
        .reshape((rows, queries, l))?;
    Ok(Some((t, per_session)))
}

/// The dimensions of a block's input `x` `[B, L, d]` for a last-position pass with `heads`, and
/// `x` detached and contiguous; an error for sessions without positions.
pub(crate) fn last_position_input(
    x: &Tensor,
    heads: usize,
) -> crate::Result<(attention::Dims, Tensor)> {
    let (b, l, d) = x.dims3()?;
    if l == 0 {
        return Err(crate::CoreError::Other(
            "sessions have no positions (session length 0)".into(),
        ));
    }
    Ok((attention::Dims { b, l, d, heads }, x.detach().contiguous()?))
}

/// The last row of each session, `[B, d]`, from rows `[B·L, d]`.
pub(crate) fn last_rows(x: &[f32], b: usize, l: usize, d: usize) -> crate::nn::workspace::Buf {
    let mut out = crate::nn::workspace::Buf::scratch(b * d);
    if l > 0 {
        for (bi, row) in out.chunks_exact_mut(d.max(1)).enumerate() {
            let at = (bi * l + l - 1) * d;
            row.copy_from_slice(&x[at..at + d]);
        }
    }
    out
}

/// A timeline mask `[B, L, 1]` (or anything with `n` elements) as one f32 per row.
pub(crate) fn row_mask(mask: &Tensor, n: usize) -> candle_core::Result<Vec<f32>> {
    if mask.elem_count() != n {
        return Err(candle_core::Error::Msg(format!(
            "timeline mask of shape {:?} for {n} positions",
            mask.dims()
        )));
    }
    mask.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()
}

/// Whether a fused block takes this attention bias: rank 4, the same for every head.
pub(crate) fn supports_bias(bias: Option<&Tensor>) -> bool {
    bias.is_none_or(|t| t.rank() == 4 && t.dims()[1] == 1)
}

#[cfg(test)]
pub(crate) mod tests;

thread_local! {
    /// Where non-finite values first appeared in a fused block run on this thread since the last
    /// [`take_non_finite_origin`] on it: the block's name and what it produced. Per thread, so
    /// that trainings running side by side in one process (or tests) see only their own.
    static NON_FINITE_ORIGIN: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Notes `block` as the origin of non-finite values when its input `x` was finite and its output
/// is not (a block fed NaN is not where the NaN came from). Training carries on: the loss turns
/// non-finite and the trainer stops with its own error, which reports this origin.
pub(crate) fn check_finite(block: &str, x: &[f32], out: &[f32]) -> candle_core::Result<()> {
    if out.iter().all(|v| v.is_finite()) {
        return Ok(());
    }
    let input_finite = x.iter().all(|v| v.is_finite());
    if input_finite {
        NON_FINITE_ORIGIN.with(|origin| {
            let mut origin = origin.borrow_mut();
            if origin.is_none() {
                let bad = out.iter().filter(|v| !v.is_finite()).count();
                *origin = Some(format!(
                    "the {block} turned finite inputs into {bad} non-finite outputs (of {})",
                    out.len()
                ));
            }
        });
    }
    Ok(())
}

/// Takes (and clears) what the fused blocks run on this thread noted: which one first produced
/// NaN or infinity from finite inputs. A trainer adds it to its non-finite-loss error.
pub fn take_non_finite_origin() -> Option<String> {
    NON_FINITE_ORIGIN.with(|origin| origin.borrow_mut().take())
}

/// Whether a block's output needs a backward pass: its input or a parameter is tracked by
/// autograd. Eval mode (no dropout) can still be differentiated, as with the generic blocks.
pub(crate) fn needs_grad(x: &Tensor, params: &[Tensor]) -> bool {
    x.track_op() || params.iter().any(|p| p.track_op())
}
