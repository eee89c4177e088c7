//! RecTools' `PreLNTransformerLayer` as one fused node (the generic block is
//! [`crate::nn::blocks::preln`]), BERT4Rec's and ALBERT's block:
//!
//! ```text
//! h = LN1(x); Q, K, V = h·[Wq; Wk; Wv]ᵀ + b
//! x1 = x + Drop1(Attention(Q, K, V) · Woᵀ + bo)
//! a = Dropout(act(LN2(x1)·W1ᵀ + b1)); x2 = x1 + Drop2(a·W2ᵀ + b2); out = Drop3(x2)
//! ```
//!
//! `act` is the block's feed-forward activation (exact GELU in RecTools; ReLU is fused too).

use std::sync::Arc;

use candle_core::Tensor;

use super::{
    attention::Dims,
    kernels::{self, Act},
    node::{attach, Backward},
    parts::{LinearParts, NormParts},
    products::{g_w, x_wt},
    self_attention::SelfAttention,
};
use crate::{
    nn::{blocks::PreLNTransformerLayer, cpu_slice::F32View, Activation},
    Result,
};

/// The fused activation for a feed-forward activation, if there is one.
pub(crate) fn fused_act(a: Activation) -> Option<Act> {
    match a {
        Activation::Relu => Some(Act::Relu),
        Activation::Gelu => Some(Act::Gelu),
        Activation::Silu => None,
    }
}

/// What the backward pass reads, kept from the forward pass.
struct Saved {
    dims: Dims,
    x: Tensor,
    norm_1: NormParts,
    stats_1: Vec<(f32, f32)>,
    h: Tensor,
    attention: SelfAttention,
    mask_1: Option<Vec<f32>>,
    x1: Vec<f32>,
    norm_2: NormParts,
    stats_2: Vec<(f32, f32)>,
    h2: Tensor,
    w1: LinearParts,
    act: Act,
    pre: Vec<f32>,
    hidden: Tensor,
    ff_mask: Option<Vec<f32>>,
    ff_mask_scale: f32,
    w2: LinearParts,
    mask_2: Option<Vec<f32>>,
    mask_3: Option<Vec<f32>>,
}

/// The fused forward pass of `block` on `x` `[B, L, d]`; with `train`, the returned tensor's
/// backward pass is the fused one. The feed-forward's activation must have a fused form
/// ([`fused_act`]).
pub(crate) fn forward_t(
    block: &PreLNTransformerLayer,
    x: &Tensor,
    attn_bias: Option<&Tensor>,
    train: bool,
) -> Result<Tensor> {
    let (b, l, d) = x.dims3()?;
    let n = b * l;
    let mha = &block.multi_head_attn;
    let ff = &block.feed_forward;
    let act = fused_act(ff.activation).ok_or_else(|| {
        crate::CoreError::Other(format!(
            "pre-LN block: no fused form of the {:?} activation",
            ff.activation
        ))
    })?;
    let dims = Dims {
        b,
        l,
        d,
        heads: mha.n_heads,
    };
    let xd = x.detach().contiguous()?.reshape((n, d))?;
    let norm_1 = NormParts::new(&block.layer_norm_1)?;
    let norm_2 = NormParts::new(&block.layer_norm_2)?;
    let w1 = LinearParts::new(&[&ff.ff_linear_1])?;
    let w2 = LinearParts::new(&[&ff.ff_linear_2])?;
    let hidden_dim = w1.out_dim()?;

    // The generic block's draw order: attention weights, dropout_1, feed-forward hidden,
    // dropout_2, dropout_3.
    let draw = |dropout: &crate::nn::Dropout, len: usize| {
        if train {
            dropout.draw_mask(len)
        } else {
            None
        }
    };
    let attn_mask = draw(&mha.dropout, b * dims.heads * l * l);
    let mask_1 = draw(&block.dropout_1, n * d);
    let ff_mask = draw(&ff.dropout, n * hidden_dim);
    let mask_2 = draw(&block.dropout_2, n * d);
    let mask_3 = draw(&block.dropout_3, n * d);

    let (h_vec, stats_1) = {
        let xs = F32View::new(&xd, "pre-LN block input")?;
        norm_1.forward(xs.get(), d)
    };
    let h = Tensor::from_vec(h_vec, (n, d), xd.device())?;
    let (attention, proj) = SelfAttention::forward(mha, &h, &h, attn_bias, attn_mask, dims)?;
    let x1 = {
        let pv = F32View::new(&proj, "attention output")?;
        let xv = F32View::new(&xd, "pre-LN block input")?;
        kernels::bias_dropout_residual(
            pv.get(),
            attention.out_bias(),
            mask_1.as_deref(),
            Some(xv.get()),
            d,
        )
    };
    let (h2_vec, stats_2) = norm_2.forward(&x1, d);
    let h2 = Tensor::from_vec(h2_vec, (n, d), xd.device())?;
    let (pre, hidden) = {
        let p = x_wt(&h2, &w1.w)?;
        let pv = F32View::new(&p, "feed-forward hidden")?;
        kernels::bias_act_dropout(pv.get(), &w1.b, act, ff_mask.as_deref(), hidden_dim)
    };
    let hidden = Tensor::from_vec(hidden, (n, hidden_dim), xd.device())?;
    let x2 = {
        let f = x_wt(&hidden, &w2.w)?;
        let fv = F32View::new(&f, "feed-forward output")?;
        kernels::bias_dropout_residual(fv.get(), &w2.b, mask_2.as_deref(), Some(&x1), d)
    };
    let out = match &mask_3 {
        Some(m) => kernels::mul(&x2, m),
        None => x2,
    };
    super::check_finite("pre-LN block", &xd, &out)?;

    let params: Vec<Tensor> = [
        norm_1.params(),
        attention.params(),
        norm_2.params(),
        w1.params(),
        w2.params(),
    ]
    .concat();
    let backward: Option<Backward> = if super::needs_grad(x, &params) {
        let saved = Arc::new(Saved {
            dims,
            x: xd,
            norm_1,
            stats_1,
            h,
            attention,
            mask_1,
            x1,
            norm_2,
            stats_2,
            h2,
            w1,
            act,
            pre,
            hidden,
            ff_mask,
            ff_mask_scale: ff.dropout.scale(),
            w2,
            mask_2,
            mask_3,
        });
        Some(Box::new(move |g: &[f32]| backward(&saved, g)))
    } else {
        None
    };
    Ok(attach("fused-preln-block", x, &params, out, backward)?)
}

fn backward(s: &Saved, g: &[f32]) -> candle_core::Result<(Vec<f32>, Vec<Vec<f32>>)> {
    let d = s.dims.d;
    let dev = s.x.device().clone();
    let n = g.len() / d.max(1);
    let hidden_dim = s.w1.out_dim()?;
    // out = x2 ⊙ m3; x2 = x1 + (f + b2) ⊙ m2
    let dx2 = match &s.mask_3 {
        Some(m) => kernels::mul(g, m),
        None => g.to_vec(),
    };
    let df = match &s.mask_2 {
        Some(m) => kernels::mul(&dx2, m),
        None => dx2.clone(),
    };
    let df = Tensor::from_vec(df, (n, d), &dev)?;
    let (dw2, db2) = s.w2.grads(&df, &s.hidden)?;
    let d_hidden = g_w(&df, &s.w2.w)?;
    let d_pre = {
        let dh = F32View::new(&d_hidden, "hidden gradient")?;
        let hv = F32View::new(&s.hidden, "hidden")?;
        kernels::bias_act_dropout_backward(
            dh.get(),
            s.act,
            &s.pre,
            hv.get(),
            s.ff_mask.as_deref(),
            s.ff_mask_scale,
        )
    };
    let d_pre = Tensor::from_vec(d_pre, (n, hidden_dim), &dev)?;
    let (dw1, db1) = s.w1.grads(&d_pre, &s.h2)?;
    let dh2 = g_w(&d_pre, &s.w1.w)?;
    // h2 = LN2(x1); dx1 = dx2 (residual) + LN2 backward
    let ln_2 = {
        let dv = F32View::new(&dh2, "feed-forward input gradient")?;
        s.norm_2
            .backward(&s.x1, &s.stats_2, dv.get(), None, Some(&dx2), d)
    };
    // x1 = x + (Ao + bo) ⊙ m1
    let d_ao = match &s.mask_1 {
        Some(m) => kernels::mul(&ln_2.dx, m),
        None => ln_2.dx.clone(),
    };
    let d_ao = Tensor::from_vec(d_ao, (n, d), &dev)?;
    let att = s.attention.backward(&d_ao, &s.h, &s.h)?;
    // h = LN1(x); dx = dx1 (residual) + LN1 backward of (dh_q + dh_kv)
    let ln_1 = {
        let xv = F32View::new(&s.x, "block input")?;
        let a = F32View::new(&att.d_q_in, "query projection gradient")?;
        let b = F32View::new(&att.d_kv_in, "key/value projection gradient")?;
        s.norm_1.backward(
            xv.get(),
            &s.stats_1,
            a.get(),
            Some(b.get()),
            Some(&ln_2.dx),
            d,
        )
    };
    let mut grads = vec![ln_1.dw, ln_1.db];
    grads.extend(att.params);
    grads.push(ln_2.dw);
    grads.push(ln_2.db);
    s.w1.push_grads(&mut grads, dw1, db1);
    s.w2.push_grads(&mut grads, dw2, db2);
    Ok((ln_1.dx, grads))
}
