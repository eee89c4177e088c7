//! The pre-LN block ([`PreLNTransformerLayer`], BERT4Rec's) as one node on a GPU:
//! `h = LN1(x); x = x + Drop1(MHA(h, h, h)); x = x + Drop2(FF(LN2(x))); out = Drop3(x)`, with its
//! backward pass chained by hand.

use candle_core::{Result, Tensor};

use super::{
    block_params, linear, linear_backward, masked, masked_add, refused, Attention, BlockGrads,
};
use crate::nn::{
    activation_dropout::act_dropout_forward, param_grads::Collector, param_node,
    precomputed::Precomputed, PreLNTransformerLayer,
};

/// The block's parameters in the node's order.
pub(crate) fn params(block: &PreLNTransformerLayer) -> Vec<Tensor> {
    block_params(
        &block.layer_norm_1,
        &block.multi_head_attn,
        &block.layer_norm_2,
        &block.feed_forward,
    )
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
    let (a, attn) = Attention::forward(mha, &h, &h, (b, l, d), bias, train, NAME)?;
    let drop_1 = if train { block.dropout_1.draw() } else { None };
    let x1 = masked_add(&a, drop_1, &x2)?;
    let (h2, ln_2) = block.layer_norm_2.forward_parts(&x1)?;
    let ff = &block.feed_forward;
    let pre = linear(&ff.ff_linear_1, &h2)?;
    let (hh, act) = act_dropout_forward(&pre, ff.activation, &ff.dropout, train)?
        .ok_or_else(|| refused(NAME, "activation"))?;
    let f = linear(&ff.ff_linear_2, &hh)?;
    let drop_2 = if train { block.dropout_2.draw() } else { None };
    let x3 = masked_add(&f, drop_2, &x1)?;
    let drop_3 = if train { block.dropout_3.draw() } else { None };
    let out = masked(&x3, drop_3)?.reshape((b, l, d))?;

    let params = params(block);
    let block = block.clone();
    let backward: param_node::ParamBackward = Box::new(move |grad: &Tensor| {
        let ff = &block.feed_forward;
        let g = grad.reshape((rows, d))?.contiguous()?;
        let d_x3 = masked(&g, drop_3)?;
        let (mut g_ff1, mut g_ff2) = (Vec::new(), Vec::new());
        let d_hh = linear_backward(&ff.ff_linear_2, &masked(&d_x3, drop_2)?, &hh, &mut g_ff2)?;
        let d_h2 = linear_backward(&ff.ff_linear_1, &act.backward(&d_hh)?, &h2, &mut g_ff1)?;
        let (d_x1n, dw_2, db_2) = ln_2.backward(&d_h2)?;
        let d_x1 = (&d_x3 + d_x1n)?;
        let mut g_attn = Vec::with_capacity(8);
        let d_a = masked(&d_x1, drop_1)?;
        let (d_hq, d_hkv) = attn.backward(&block.multi_head_attn, &d_a, &h, &h, &mut g_attn)?;
        let (d_xn, dw_1, db_1) = ln_1.backward(&(d_hq + d_hkv)?)?;
        let dx = (d_x1 + d_xn)?.reshape((b, l, d))?;
        let grads = BlockGrads {
            norm_1: (dw_1, db_1),
            attention: g_attn,
            norm_2: (dw_2, db_2),
            ff_linear_1: g_ff1,
            ff_linear_2: g_ff2,
        };
        Ok((Some(dx), grads.in_order()))
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
