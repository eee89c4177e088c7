//! The pre-LN block ([`PreLNTransformerLayer`], BERT4Rec's) as one node on a GPU:
//! `h = LN1(x); x = x + Drop1(MHA(h, h, h)); x = x + Drop2(FF(LN2(x))); out = Drop3(x)`, with its
//! backward pass chained by hand.

use candle_core::{Result, Tensor};

use super::{linear, linear_backward, masked, push_linear, push_norm, refused};
use crate::nn::{
    activation_dropout::act_dropout_forward, attention_core::core_forward, param_grads::Collector,
    param_node, precomputed::Precomputed, PreLNTransformerLayer,
};

/// The block's parameters in the node's order.
pub(crate) fn params(block: &PreLNTransformerLayer) -> Vec<Tensor> {
    let mha = &block.multi_head_attn;
    let ff = &block.feed_forward;
    let mut p = Vec::with_capacity(16);
    push_norm(&mut p, &block.layer_norm_1);
    for lin in [&mha.q_proj, &mha.k_proj, &mha.v_proj, &mha.out_proj] {
        push_linear(&mut p, lin);
    }
    push_norm(&mut p, &block.layer_norm_2);
    push_linear(&mut p, &ff.ff_linear_1);
    push_linear(&mut p, &ff.ff_linear_2);
    p
}

/// `block(x)` under `bias` as one node whose parameter gradients go to `collector`. The caller
/// checked [`super::usable`].
pub(crate) fn forward_t(
    block: &PreLNTransformerLayer,
    x: &Tensor,
    bias: Option<&Tensor>,
    train: bool,
    collector: std::sync::Arc<Collector>,
) -> Result<Tensor> {
    const NAME: &str = "pre-LN block";
    let (b, l, d) = x.dims3()?;
    let rows = b * l;
    let x2 = x.detach().reshape((rows, d))?.contiguous()?;
    let (h, ln_1) = block.layer_norm_1.forward_parts(&x2)?;
    let mha = &block.multi_head_attn;
    let as3 = |t: &Tensor| t.reshape((b, l, d));
    let qp = linear(&mha.q_proj, &h)?;
    let kp = linear(&mha.k_proj, &h)?;
    let vp = linear(&mha.v_proj, &h)?;
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
    let a = linear(&mha.out_proj, &o2)?;
    let drop_1 = if train { block.dropout_1.draw() } else { None };
    let x1 = (&x2 + masked(&a, drop_1)?)?;
    let (h2, ln_2) = block.layer_norm_2.forward_parts(&x1)?;
    let ff = &block.feed_forward;
    let pre = linear(&ff.ff_linear_1, &h2)?;
    let (hh, act) = act_dropout_forward(&pre, ff.activation, &ff.dropout, train)?
        .ok_or_else(|| refused(NAME, "activation"))?;
    let f = linear(&ff.ff_linear_2, &hh)?;
    let drop_2 = if train { block.dropout_2.draw() } else { None };
    let x3 = (&x1 + masked(&f, drop_2)?)?;
    let drop_3 = if train { block.dropout_3.draw() } else { None };
    let out = masked(&x3, drop_3)?.reshape((b, l, d))?;

    let params = params(block);
    let block = block.clone();
    let backward: param_node::ParamBackward = Box::new(move |grad: &Tensor| {
        let mha = &block.multi_head_attn;
        let ff = &block.feed_forward;
        let g = grad.reshape((rows, d))?.contiguous()?;
        let d_x3 = masked(&g, drop_3)?;
        let (mut g_ff1, mut g_ff2) = (Vec::new(), Vec::new());
        let d_hh = linear_backward(&ff.ff_linear_2, &masked(&d_x3, drop_2)?, &hh, &mut g_ff2)?;
        let d_h2 = linear_backward(&ff.ff_linear_1, &act.backward(&d_hh)?, &h2, &mut g_ff1)?;
        let (d_x1n, dw_2, db_2) = ln_2.backward(&d_h2)?;
        let d_x1 = (&d_x3 + d_x1n)?;
        let mut g_out = Vec::new();
        let d_o = linear_backward(&mha.out_proj, &masked(&d_x1, drop_1)?, &o2, &mut g_out)?;
        let (d_qp, d_kp, d_vp) = core.backward(&d_o.reshape((b, l, d))?)?;
        let flat = |t: Tensor| t.reshape((rows, d));
        let (mut g_q, mut g_k, mut g_v) = (Vec::new(), Vec::new(), Vec::new());
        let d_hq = linear_backward(&mha.q_proj, &flat(d_qp)?, &h, &mut g_q)?;
        let d_hk = linear_backward(&mha.k_proj, &flat(d_kp)?, &h, &mut g_k)?;
        let d_hv = linear_backward(&mha.v_proj, &flat(d_vp)?, &h, &mut g_v)?;
        let (d_xn, dw_1, db_1) = ln_1.backward(&((d_hq + d_hk)? + d_hv)?)?;
        let dx = (d_x1 + d_xn)?.reshape((b, l, d))?;
        let mut grads = vec![dw_1, db_1];
        for part in [g_q, g_k, g_v, g_out] {
            grads.extend(part);
        }
        grads.extend([dw_2, db_2]);
        grads.extend(g_ff1);
        grads.extend(g_ff2);
        Ok((Some(dx), grads))
    });
    param_node::attach(
        "pre-ln-block",
        x,
        Precomputed::new(NAME, out),
        params,
        collector,
        backward,
    )
}
