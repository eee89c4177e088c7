//! Whole transformer blocks as single autograd nodes on a GPU, under a trainer's
//! [`ParamGradScope`](crate::nn::ParamGradScope).
//!
//! On a CUDA device a block composed from the device ops ([`crate::nn::linear_node`], the
//! attention core, the layer norm, the activation-dropout op) is about fourteen graph nodes, and
//! candle's backward pass zeroes a buffer and adds into it for every input of each: some
//! eighteen activation-sized memsets and adds per block, plus a copy of each node's output into
//! candle's storage. A block node runs the same ops on detached tensors, keeps what their
//! backward passes need, and enters the graph over the block's input alone; its backward pass
//! chains the ops' own backward passes by hand and writes the sixteen parameter gradients to the
//! scope (`nn::param_node`). The ops, their kernels and their dropout masks are the ones the
//! composed block runs, drawn in the same order, so the block node computes what it does.
//!
//! The models use block nodes on CUDA devices only, and only under a scope: anywhere else the
//! blocks are the fused CPU blocks ([`crate::nn::fused`]) or composed. The tests run the block
//! nodes on the CPU, where every op they use has its CPU form, against the composed blocks; and
//! `RECBLOCKS_BLOCKS=nodes` has the models run them on the CPU in place of the fused blocks, so a
//! whole training run can check them without a GPU (`host/tests/it/fused_paths.rs`).

pub(crate) mod preln;
pub(crate) mod sasrec;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use candle_core::{DType, Result, Tensor};

use super::{linear::add_bias, linear_node::gradients, param_grads::Collector, Linear};

/// The collector a block node over `x` with `params` writes to: on a CUDA device, for an f32
/// input `[B, L, d]` and an attention bias the attention op takes, with the fused blocks on and
/// a trainer's scope open; `None`: compose the block.
pub(crate) fn writer(
    x: &Tensor,
    params: &[&Tensor],
    bias: Option<&Tensor>,
) -> Option<Arc<Collector>> {
    if !on_this_device(x) || !super::fused::enabled() || !usable(x, bias) {
        return None;
    }
    super::param_grads::writer(x, params)
}

/// [`writer`] for a block with parameters `params` (asked for only on a CUDA device).
pub(crate) fn writer_for(
    x: &Tensor,
    params: impl FnOnce() -> Vec<Tensor>,
    bias: Option<&Tensor>,
) -> Option<Arc<Collector>> {
    if !on_this_device(x) {
        return None;
    }
    let params = params();
    let refs: Vec<&Tensor> = params.iter().collect();
    writer(x, &refs, bias)
}

/// Whether `x`'s device runs block nodes: a CUDA device, or the CPU under
/// `RECBLOCKS_BLOCKS=nodes` (the GPU's path tested through a whole training run).
fn on_this_device(x: &Tensor) -> bool {
    x.device().is_cuda() || super::fused::nodes_on_cpu()
}

/// Whether a block node takes `x` and `bias`: `x` f32 `[B, L, d]`, `bias` absent or
/// `[1 or B, 1, 1 or L, L]` (one bias for every head, as the attention op takes it).
pub(crate) fn usable(x: &Tensor, bias: Option<&Tensor>) -> bool {
    let Ok((b, l, _)) = x.dims3() else {
        return false;
    };
    let bias_ok = bias.is_none_or(|t| {
        matches!(t.dims(), &[bb, 1, bq, bk] if (bb == 1 || bb == b) && (bq == 1 || bq == l) && bk == l)
    });
    x.dtype() == DType::F32 && bias_ok
}

/// `x2d·Wᵀ + b` outside the graph.
fn linear(lin: &Linear, x2d: &Tensor) -> Result<Tensor> {
    let y = x2d.matmul(&lin.weight().detach().t()?)?;
    match lin.bias() {
        Some(b) => add_bias(&y, &b.detach()),
        None => Ok(y),
    }
}

/// The input's gradient of [`linear`] from the output's `g`; pushes the weight's gradient and
/// the bias's (if any) onto `grads`, in [`push_linear`]'s order.
fn linear_backward(
    lin: &Linear,
    g: &Tensor,
    x2d: &Tensor,
    grads: &mut Vec<Tensor>,
) -> Result<Tensor> {
    let (dx, dw, db) = gradients(g, x2d, &lin.weight().detach())?;
    grads.push(dw);
    if lin.bias().is_some() {
        grads.push(db);
    }
    Ok(dx)
}

/// Pushes a linear layer's parameters: the weight, then the bias if any.
fn push_linear(params: &mut Vec<Tensor>, lin: &Linear) {
    params.push(lin.weight().clone());
    if let Some(b) = lin.bias() {
        params.push(b.clone());
    }
}

/// Pushes a layer norm's parameters: the weight, then the bias.
fn push_norm(params: &mut Vec<Tensor>, ln: &super::LayerNorm) {
    params.push(ln.weight.clone());
    params.push(ln.bias.clone());
}

/// `x · mask` where a dropout mask was drawn, `x` otherwise (its own backward pass).
fn masked(x: &Tensor, draw: Option<super::dropout::MaskDraw>) -> Result<Tensor> {
    match draw {
        Some(d) => super::dropout::apply_mask(x, d),
        None => Ok(x.clone()),
    }
}

/// An error for a block the node cannot run after its checks passed (an op refused the shapes).
fn refused(block: &str, what: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!("{block} node: the {what} op does not apply"))
}
