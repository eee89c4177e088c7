//! The SASRec block ([`SASRecTransformerLayer`]) as one node on a GPU:
//! `q = LN_q(x); x = q + MHA(q, x, x); f = LN_ff(x); out = Dropout(FF(f)) + f`, with the
//! stack's timeline mask applied to the input first, and its backward pass chained by hand.

use candle_core::{DType, Result, Tensor};

use super::{
    block_params, linear, linear_backward, masked, masked_add, refused, Attention, BlockGrads,
};
use crate::nn::{
    activation_dropout::act_dropout_forward, param_grads::Collector, param_node,
    precomputed::Precomputed, SASRecTransformerLayer,
};

/// The block's parameters in the node's order.
pub(crate) fn params(block: &SASRecTransformerLayer) -> Vec<Tensor> {
    block_params(
        &block.q_layer_norm,
        &block.multi_head_attn,
        &block.ff_layer_norm,
        &block.feed_forward,
    )
}

/// `block(x ⊙ timeline_mask)` (`timeline_mask` `[B, L, 1]`, or none) under `bias` as one node
/// whose parameter gradients go to `collector`. The caller checked [`super::usable`].
pub(crate) fn forward_t(
    block: &SASRecTransformerLayer,
    x: &Tensor,
    timeline_mask: Option<&Tensor>,
    bias: Option<&Tensor>,
    train: bool,
    collector: std::sync::Arc<Collector>,
) -> Result<Tensor> {
    const NAME: &str = "SASRec block";
    let (b, l, d) = x.dims3()?;
    let rows = b * l;
    let mask = timeline_mask
        .map(|m| m.detach().to_dtype(DType::F32))
        .transpose()?;
    let xd = x.detach();
    let xm = match &mask {
        Some(m) => xd.broadcast_mul(m)?,
        None => xd,
    };
    let x2 = xm.reshape((rows, d))?.contiguous()?;
    let (q, ln_q) = block.q_layer_norm.forward_parts(&x2)?;
    let mha = &block.multi_head_attn;
    let (a, attn) = Attention::forward(mha, &q, &x2, (b, l, d), bias, train, NAME)?;
    let x1 = (&q + a)?;
    let (f, ln_ff) = block.ff_layer_norm.forward_parts(&x1)?;
    let ff = &block.feed_forward;
    let pre = linear(&ff.ff_linear_1, &f)?;
    let (h, act) = act_dropout_forward(&pre, ff.activation, &ff.dropout, train)?
        .ok_or_else(|| refused(NAME, "activation"))?;
    let y = linear(&ff.ff_linear_2, &h)?;
    let drop_out = if train { block.dropout.draw() } else { None };
    let out = masked_add(&y, drop_out, &f)?.reshape((b, l, d))?;

    let params = params(block);
    let block = block.clone();
    let backward: param_node::ParamBackward = Box::new(move |grad: &Tensor| {
        let ff = &block.feed_forward;
        let g = grad.reshape((rows, d))?.contiguous()?;
        let (mut g_ff1, mut g_ff2) = (Vec::new(), Vec::new());
        let d_h = linear_backward(&ff.ff_linear_2, &masked(&g, drop_out)?, &h, &mut g_ff2)?;
        let d_pre = act.backward(&d_h)?;
        let d_f = (&g + linear_backward(&ff.ff_linear_1, &d_pre, &f, &mut g_ff1)?)?;
        let (d_x1, dw_ff, db_ff) = ln_ff.backward(&d_f)?;
        let mut g_attn = Vec::with_capacity(8);
        let (d_q, d_kv) = attn.backward(&block.multi_head_attn, &d_x1, &q, &x2, &mut g_attn)?;
        let (d_xq, dw_q, db_q) = ln_q.backward(&(&d_x1 + d_q)?)?;
        let d_xm = (d_xq + d_kv)?.reshape((b, l, d))?;
        let dx = match &mask {
            Some(m) => d_xm.broadcast_mul(m)?,
            None => d_xm,
        };
        let grads = BlockGrads {
            norm_1: (dw_q, db_q),
            attention: g_attn,
            norm_2: (dw_ff, db_ff),
            ff_linear_1: g_ff1,
            ff_linear_2: g_ff2,
        };
        Ok((Some(dx), grads.in_order()))
    });
    param_node::attach(
        "sasrec-block",
        x,
        Precomputed::new(NAME, out),
        params,
        collector,
        backward,
    )
}
