//! The SASRec block ([`SASRecTransformerLayer`]) as one node on a GPU:
//! `q = LN_q(x); x = q + MHA(q, x, x); f = LN_ff(x); out = Dropout(FF(f)) + f`, with the
//! stack's timeline mask applied to the input first, and its backward pass chained by hand.

use candle_core::{DType, Result, Tensor};

use super::{linear, linear_backward, masked, push_linear, push_norm, refused};
use crate::nn::{
    activation_dropout::act_dropout_forward, attention_core::core_forward, param_grads::Collector,
    param_node, precomputed::Precomputed, SASRecTransformerLayer,
};

/// The block's parameters in the node's order.
pub(crate) fn params(block: &SASRecTransformerLayer) -> Vec<Tensor> {
    let mha = &block.multi_head_attn;
    let ff = &block.feed_forward;
    let mut p = Vec::with_capacity(16);
    push_norm(&mut p, &block.q_layer_norm);
    for lin in [&mha.q_proj, &mha.k_proj, &mha.v_proj, &mha.out_proj] {
        push_linear(&mut p, lin);
    }
    push_norm(&mut p, &block.ff_layer_norm);
    push_linear(&mut p, &ff.ff_linear_1);
    push_linear(&mut p, &ff.ff_linear_2);
    p
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
    let as3 = |t: &Tensor| t.reshape((b, l, d));
    let qp = linear(&mha.q_proj, &q)?;
    let kp = linear(&mha.k_proj, &x2)?;
    let vp = linear(&mha.v_proj, &x2)?;
    let scale = 1.0 / (mha.head_dim as f64).sqrt();
    let drop_attn = if train { mha.dropout.draw() } else { None };
    let (o, core) = core_forward(
        &as3(&qp)?,
        &as3(&kp)?,
        &as3(&vp)?,
        mha.n_heads,
        bias,
        scale,
        drop_attn,
    )?
    .ok_or_else(|| refused(NAME, "attention"))?;
    let o2 = o.reshape((rows, d))?;
    let x1 = (&q + linear(&mha.out_proj, &o2)?)?;
    let (f, ln_ff) = block.ff_layer_norm.forward_parts(&x1)?;
    let ff = &block.feed_forward;
    let pre = linear(&ff.ff_linear_1, &f)?;
    let (h, act) = act_dropout_forward(&pre, ff.activation, &ff.dropout, train)?
        .ok_or_else(|| refused(NAME, "activation"))?;
    let y = linear(&ff.ff_linear_2, &h)?;
    let drop_out = if train { block.dropout.draw() } else { None };
    let out = (masked(&y, drop_out)? + &f)?.reshape((b, l, d))?;

    let params = params(block);
    let block = block.clone();
    let backward: param_node::ParamBackward = Box::new(move |grad: &Tensor| {
        let mha = &block.multi_head_attn;
        let ff = &block.feed_forward;
        let g = grad.reshape((rows, d))?.contiguous()?;
        // Gradients in `params` order, filled as the passes below produce them.
        let (mut g_ff1, mut g_ff2) = (Vec::new(), Vec::new());
        let d_h = linear_backward(&ff.ff_linear_2, &masked(&g, drop_out)?, &h, &mut g_ff2)?;
        let d_f = (&g + linear_backward(&ff.ff_linear_1, &act.backward(&d_h)?, &f, &mut g_ff1)?)?;
        let (d_x1, dw_ff, db_ff) = ln_ff.backward(&d_f)?;
        let mut g_out = Vec::new();
        let d_o = linear_backward(&mha.out_proj, &d_x1, &o2, &mut g_out)?;
        let (d_qp, d_kp, d_vp) = core.backward(&d_o.reshape((b, l, d))?)?;
        let flat = |t: Tensor| t.reshape((rows, d));
        let (mut g_q, mut g_k, mut g_v) = (Vec::new(), Vec::new(), Vec::new());
        let d_q = (&d_x1 + linear_backward(&mha.q_proj, &flat(d_qp)?, &q, &mut g_q)?)?;
        let d_xk = linear_backward(&mha.k_proj, &flat(d_kp)?, &x2, &mut g_k)?;
        let d_xv = linear_backward(&mha.v_proj, &flat(d_vp)?, &x2, &mut g_v)?;
        let (d_xq, dw_q, db_q) = ln_q.backward(&d_q)?;
        let d_xm = ((d_xq + d_xk)? + d_xv)?.reshape((b, l, d))?;
        let dx = match &mask {
            Some(m) => d_xm.broadcast_mul(m)?,
            None => d_xm,
        };
        let mut grads = vec![dw_q, db_q];
        for part in [g_q, g_k, g_v, g_out] {
            grads.extend(part);
        }
        grads.extend([dw_ff, db_ff]);
        grads.extend(g_ff1);
        grads.extend(g_ff2);
        Ok((Some(dx), grads))
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
