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

use super::{
    attention_core::{core_forward, SavedCore},
    linear::add_bias,
    linear_node::gradients,
    param_grads::Collector,
    Linear, MultiHeadAttention, PointWiseFeedForward,
};

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
    x.dtype() == DType::F32 && super::attention_weights::takes_bias(b, l, l, bias)
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

/// `x · mask + r` where a dropout mask was drawn (one op: on a GPU the residual-dropout kernel),
/// `x + r` otherwise: a block's dropout and residual connection. The backward pass needs no op of
/// its own: the residual's gradient is the output's, `x`'s is [`masked`] of it.
fn masked_add(x: &Tensor, draw: Option<super::dropout::MaskDraw>, r: &Tensor) -> Result<Tensor> {
    match draw {
        Some(d) => super::dropout::apply_mask_add(x, d, r),
        None => x + r,
    }
}

/// The parameters of a block of two norms around an attention sub-layer and a point-wise
/// feed-forward, in the node's order: `norm_1`, the q, k, v and output projections, `norm_2`,
/// `ff_linear_1`, `ff_linear_2` (SASRec's and the pre-LN block's 16).
fn block_params(
    norm_1: &super::LayerNorm,
    mha: &MultiHeadAttention,
    norm_2: &super::LayerNorm,
    ff: &PointWiseFeedForward,
) -> Vec<Tensor> {
    let mut p = Vec::with_capacity(16);
    push_norm(&mut p, norm_1);
    for lin in [&mha.q_proj, &mha.k_proj, &mha.v_proj, &mha.out_proj] {
        push_linear(&mut p, lin);
    }
    push_norm(&mut p, norm_2);
    push_linear(&mut p, &ff.ff_linear_1);
    push_linear(&mut p, &ff.ff_linear_2);
    p
}

/// A block node's parameter gradients, put in [`block_params`]' order by [`in_order`](Self::in_order).
struct BlockGrads {
    /// The first norm's weight and bias gradients.
    norm_1: (Tensor, Tensor),
    /// The q, k, v and output projections' ([`Attention::backward`]'s order).
    attention: Vec<Tensor>,
    norm_2: (Tensor, Tensor),
    ff_linear_1: Vec<Tensor>,
    ff_linear_2: Vec<Tensor>,
}

impl BlockGrads {
    fn in_order(self) -> Vec<Tensor> {
        let mut g = Vec::with_capacity(16);
        g.extend([self.norm_1.0, self.norm_1.1]);
        g.extend(self.attention);
        g.extend([self.norm_2.0, self.norm_2.1]);
        g.extend(self.ff_linear_1);
        g.extend(self.ff_linear_2);
        g
    }
}

/// The attention sub-layer of a block node as its backward pass needs it: `MHA(q_in, kv_in,
/// kv_in)` for rows `[B·L, d]`.
struct Attention {
    /// The merged heads, the output projection's input `[B·L, d]`.
    o2: Tensor,
    core: SavedCore,
    dims: (usize, usize, usize),
}

impl Attention {
    /// `MHA(q_in, kv_in, kv_in)` (rows of `dims` `(B, L, d)`) outside the graph, drawing the
    /// weights' dropout mask in training as the composed attention does; returns the output
    /// projection's output.
    fn forward(
        mha: &MultiHeadAttention,
        q_in: &Tensor,
        kv_in: &Tensor,
        dims: (usize, usize, usize),
        bias: Option<&Tensor>,
        train: bool,
        block: &str,
    ) -> Result<(Tensor, Self)> {
        let (b, l, d) = dims;
        let as3 = |t: &Tensor| t.reshape((b, l, d));
        let qp = linear(&mha.q_proj, q_in)?;
        let kp = linear(&mha.k_proj, kv_in)?;
        let vp = linear(&mha.v_proj, kv_in)?;
        let scale = 1.0 / (mha.head_dim as f64).sqrt();
        let drop = if train { mha.dropout.draw() } else { None };
        let (o, core) = core_forward(
            &as3(&qp)?,
            &as3(&kp)?,
            &as3(&vp)?,
            mha.n_heads,
            bias,
            scale,
            drop,
        )?
        .ok_or_else(|| refused(block, "attention"))?;
        let o2 = o.reshape((b * l, d))?;
        Ok((linear(&mha.out_proj, &o2)?, Attention { o2, core, dims }))
    }

    /// The gradients of `q_in` and of `kv_in` from the output's gradient `d_a`; pushes the q, k,
    /// v and output projections' gradients onto `grads`, in [`block_params`]' order.
    fn backward(
        &self,
        mha: &MultiHeadAttention,
        d_a: &Tensor,
        q_in: &Tensor,
        kv_in: &Tensor,
        grads: &mut Vec<Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let (b, l, d) = self.dims;
        let mut g_out = Vec::with_capacity(2);
        let d_o = linear_backward(&mha.out_proj, d_a, &self.o2, &mut g_out)?;
        let (d_qp, d_kp, d_vp) = self.core.backward(&d_o.reshape((b, l, d))?)?;
        let flat = |t: Tensor| t.reshape((b * l, d));
        let d_q = linear_backward(&mha.q_proj, &flat(d_qp)?, q_in, grads)?;
        let d_k = linear_backward(&mha.k_proj, &flat(d_kp)?, kv_in, grads)?;
        let d_v = linear_backward(&mha.v_proj, &flat(d_vp)?, kv_in, grads)?;
        grads.extend(g_out);
        Ok((d_q, (d_k + d_v)?))
    }
}

/// An error for a block the node cannot run after its checks passed (an op refused the shapes).
fn refused(block: &str, what: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!("{block} node: the {what} op does not apply"))
}
