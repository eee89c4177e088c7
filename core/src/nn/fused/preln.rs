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
    self_attention::{self, SelfAttention},
};
use crate::{
    nn::{blocks::PreLNTransformerLayer, cpu_slice::F32View, workspace::Buf, Activation},
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

/// The block's norms, feed-forward layers and fused activation.
struct Parts {
    act: Act,
    norm_1: NormParts,
    norm_2: NormParts,
    w1: LinearParts,
    w2: LinearParts,
}

fn parts(block: &PreLNTransformerLayer) -> Result<Parts> {
    let ff = &block.feed_forward;
    let act = fused_act(ff.activation).ok_or_else(|| {
        crate::CoreError::Other(format!(
            "pre-LN block: no fused form of the {:?} activation",
            ff.activation
        ))
    })?;
    Ok(Parts {
        act,
        norm_1: NormParts::new(&block.layer_norm_1)?,
        norm_2: NormParts::new(&block.layer_norm_2)?,
        w1: LinearParts::new(&[&ff.ff_linear_1])?,
        w2: LinearParts::new(&[&ff.ff_linear_2])?,
    })
}

/// What the backward pass reads, kept from the forward pass.
struct Saved {
    dims: Dims,
    /// The block input `[n, d]` (contiguous).
    x: Tensor,
    norm_1: NormParts,
    stats_1: Vec<(f32, f32)>,
    h: Buf,
    attention: SelfAttention,
    mask_1: Option<Buf>,
    x1: Buf,
    norm_2: NormParts,
    stats_2: Vec<(f32, f32)>,
    h2: Buf,
    w1: LinearParts,
    act: Act,
    pre: Buf,
    hidden: Buf,
    ff_mask: Option<Buf>,
    ff_mask_scale: f32,
    w2: LinearParts,
    mask_2: Option<Buf>,
    mask_3: Option<Buf>,
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
    let dims = Dims {
        b,
        l,
        d,
        heads: mha.n_heads,
    };
    let xd = x.detach().contiguous()?.reshape((n, d))?;
    let Parts {
        act,
        norm_1,
        norm_2,
        w1,
        w2,
    } = parts(block)?;
    let hidden_dim = w1.out_dim();

    // The generic block's draw order: attention weights, dropout_1, feed-forward hidden,
    // dropout_2, dropout_3.
    let draw = |dropout: &crate::nn::Dropout, len: usize| {
        if train {
            dropout.draw_mask_buf(len)
        } else {
            None
        }
    };
    let attn_mask = draw(&mha.dropout, b * dims.heads * l * l);
    let mask_1 = draw(&block.dropout_1, n * d);
    let ff_mask = draw(&ff.dropout, n * hidden_dim);
    let mask_2 = draw(&block.dropout_2, n * d);
    let mask_3 = draw(&block.dropout_3, n * d);

    let xv = F32View::new(&xd, "pre-LN block input")?;
    let (h, stats_1) = norm_1.forward(xv.get(), d);
    let (attention, proj) = SelfAttention::forward(mha, &h, &h, attn_bias, attn_mask, dims)?;
    let x1 = kernels::bias_dropout_residual(
        &proj,
        attention.out_bias(),
        mask_1.as_deref(),
        Some(xv.get()),
        d,
    );
    drop(proj);
    let (h2, stats_2) = norm_2.forward(&x1, d);
    let (pre, hidden) = {
        let p = w1.product(&h2)?;
        kernels::bias_act_dropout(&p, &w1.b, act, ff_mask.as_deref(), hidden_dim)
    };
    let x2 = {
        let f = w2.product(&hidden)?;
        kernels::bias_dropout_residual(&f, &w2.b, mask_2.as_deref(), Some(&x1), d)
    };
    let out = match &mask_3 {
        Some(m) => kernels::mul(&x2, m),
        None => x2,
    };
    super::check_finite("pre-LN block", xv.get(), &out)?;
    drop(xv);

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
    Ok(attach(
        "fused-preln-block",
        x,
        &params,
        out.into_vec(),
        backward,
    )?)
}

fn backward(s: &Saved, g: &[f32]) -> candle_core::Result<(Vec<f32>, Vec<Vec<f32>>)> {
    let d = s.dims.d;
    // out = x2 ⊙ m3; x2 = x1 + (f + b2) ⊙ m2
    let dx2 = kernels::through_mask(g, s.mask_3.as_deref());
    let df = kernels::through_mask(&dx2, s.mask_2.as_deref());
    let (dw2, db2) = s.w2.grads(&df, &s.hidden)?;
    let d_hidden = s.w2.input_grad(&df)?;
    drop(df);
    let d_pre = kernels::bias_act_dropout_backward(
        &d_hidden,
        s.act,
        &s.pre,
        &s.hidden,
        s.ff_mask.as_deref(),
        s.ff_mask_scale,
    );
    drop(d_hidden);
    let (dw1, db1) = s.w1.grads(&d_pre, &s.h2)?;
    let dh2 = s.w1.input_grad(&d_pre)?;
    drop(d_pre);
    // h2 = LN2(x1); dx1 = dx2 (residual) + LN2 backward
    let ln_2 = s
        .norm_2
        .backward(&s.x1, &s.stats_2, &dh2, None, Some(&dx2), d);
    drop(dh2);
    // x1 = x + (Ao + bo) ⊙ m1
    let d_ao = kernels::through_mask(&ln_2.dx, s.mask_1.as_deref());
    let att = s.attention.backward(&d_ao, &s.h, &s.h)?;
    drop(d_ao);
    // h = LN1(x); dx = dx1 (residual) + LN1 backward of (dh_q + dh_kv)
    let ln_1 = {
        let xv = F32View::new(&s.x, "block input")?;
        s.norm_1.backward(
            xv.get(),
            &s.stats_1,
            &att.d_q_in,
            Some(&att.d_kv_in),
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
    Ok((ln_1.dx.into_vec(), grads))
}

/// The eval-mode output of `block` at the last position only, `[B, 1, d]`, for `x` `[B, L, d]`:
/// keys and values from every position, the query, residuals and feed-forward from the last (the
/// generic form is [`PreLNTransformerLayer::forward_last`]). It builds no autograd graph.
pub(crate) fn forward_last(
    block: &PreLNTransformerLayer,
    x: &Tensor,
    last_query_bias: Option<&Tensor>,
) -> Result<Tensor> {
    let mha = &block.multi_head_attn;
    let (dims, x_c) = super::last_position_input(x, mha.n_heads)?;
    let Dims { b, l, d, .. } = dims;
    let xv = F32View::new(&x_c, "pre-LN block input")?;
    let Parts {
        act,
        norm_1,
        norm_2,
        w1,
        w2,
    } = parts(block)?;
    let (h, _) = norm_1.forward(xv.get(), d);
    let h_last = super::last_rows(&h, b, l, d);
    let proj = self_attention::forward_last(mha, &h_last, &h, last_query_bias, dims)?;
    let x_last = super::last_rows(xv.get(), b, l, d);
    let x1 = kernels::add(&x_last, &proj);
    let (h2, _) = norm_2.forward(&x1, d);
    let hidden = {
        let p = w1.product(&h2)?;
        kernels::bias_act_dropout(&p, &w1.b, act, None, w1.out_dim()).1
    };
    let out = {
        let f = w2.product(&hidden)?;
        kernels::bias_dropout_residual(&f, &w2.b, None, Some(&x1), d)
    };
    Ok(Tensor::from_vec(out.into_vec(), (b, 1, d), x.device())?)
}
