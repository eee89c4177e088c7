//! RecTools' `SASRecTransformerLayer` as one fused node (the generic block is
//! [`crate::nn::blocks::sasrec`]):
//!
//! ```text
//! q = LN_q(x); Q = q·Wqᵀ + bq; K, V = x·[Wk; Wv]ᵀ + [bk; bv]
//! x1 = q + (Attention(Q, K, V) · Woᵀ + bo)
//! f = LN_ff(x1); a = Dropout(ReLU(f·W1ᵀ + b1)); out = Dropout(a·W2ᵀ + b2) + f
//! ```
//!
//! The backward pass runs the same steps in reverse, each gradient written once; the input's
//! gradient gathers the query norm's and the key/value projections' in one pass.

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
    nn::{blocks::SASRecTransformerLayer, cpu_slice::F32View, workspace::Buf},
    Result,
};

/// The block's norms and feed-forward layers.
struct Parts {
    q_norm: NormParts,
    ff_norm: NormParts,
    w1: LinearParts,
    w2: LinearParts,
}

fn parts(block: &SASRecTransformerLayer) -> Result<Parts> {
    let ff = &block.feed_forward;
    Ok(Parts {
        q_norm: NormParts::new(&block.q_layer_norm)?,
        ff_norm: NormParts::new(&block.ff_layer_norm)?,
        w1: LinearParts::new(&[&ff.ff_linear_1])?,
        w2: LinearParts::new(&[&ff.ff_linear_2])?,
    })
}

/// What the backward pass reads, kept from the forward pass.
struct Saved {
    dims: Dims,
    /// The block input after the timeline mask, `[n, d]`.
    x: Buf,
    q_norm: NormParts,
    q_stats: Vec<(f32, f32)>,
    q: Buf,
    attention: SelfAttention,
    x1: Buf,
    ff_norm: NormParts,
    ff_stats: Vec<(f32, f32)>,
    f: Buf,
    w1: LinearParts,
    hidden: Buf,
    ff_mask_scale: f32,
    w2: LinearParts,
    out_mask: Option<Buf>,
    /// The timeline mask applied to the input, one value per row.
    row_mask: Option<Vec<f32>>,
}

/// The fused forward pass of `block` on `x` `[B, L, d]`, first multiplied by `timeline_mask`
/// `[B, L, 1]` when given (the SASRec stack masks every block's input); with `train`, the
/// returned tensor's backward pass is the fused one.
pub(crate) fn forward_t(
    block: &SASRecTransformerLayer,
    x: &Tensor,
    timeline_mask: Option<&Tensor>,
    attn_bias: Option<&Tensor>,
    train: bool,
) -> Result<Tensor> {
    let (b, l, d) = x.dims3()?;
    let n = b * l;
    let mha = &block.multi_head_attn;
    let dims = Dims {
        b,
        l,
        d,
        heads: mha.n_heads,
    };
    let row_mask = match timeline_mask {
        Some(tm) => Some(super::row_mask(tm, n)?),
        None => None,
    };
    let xd: Buf = {
        let x_c = x.detach().contiguous()?;
        let xv = F32View::new(&x_c, "SASRec block input")?;
        match &row_mask {
            Some(m) => kernels::scale_rows(xv.get(), m, d),
            None => {
                let mut copy = Buf::scratch(n * d);
                copy.copy_from_slice(xv.get());
                copy
            }
        }
    };
    let Parts {
        q_norm,
        ff_norm,
        w1,
        w2,
    } = parts(block)?;
    let ff = &block.feed_forward;
    let hidden_dim = w1.out_dim();

    // The generic block's draw order: attention weights, feed-forward hidden, block output.
    let attn_mask = if train {
        mha.dropout.draw_mask_buf(b * dims.heads * l * l)
    } else {
        None
    };
    let ff_mask = if train {
        ff.dropout.draw_mask_buf(n * hidden_dim)
    } else {
        None
    };
    let out_mask = if train {
        block.dropout.draw_mask_buf(n * d)
    } else {
        None
    };

    let (q, q_stats) = q_norm.forward(&xd, d);
    let (attention, proj) = SelfAttention::forward(mha, &q, &xd, attn_bias, attn_mask, dims)?;
    let x1 = kernels::bias_dropout_residual(&proj, attention.out_bias(), None, Some(&q), d);
    drop(proj);
    let (f, ff_stats) = ff_norm.forward(&x1, d);
    let hidden = {
        let h = w1.product(&f)?;
        kernels::bias_act_dropout(&h, &w1.b, Act::Relu, ff_mask.as_deref(), hidden_dim).1
    };
    let out = {
        let h2 = w2.product(&hidden)?;
        kernels::bias_dropout_residual(&h2, &w2.b, out_mask.as_deref(), Some(&f), d)
    };
    super::check_finite("SASRec block", &xd, &out)?;

    let params: Vec<Tensor> = [
        q_norm.params(),
        attention.params(),
        ff_norm.params(),
        w1.params(),
        w2.params(),
    ]
    .concat();
    let backward: Option<Backward> = if super::needs_grad(x, &params) {
        let saved = Arc::new(Saved {
            dims,
            x: xd,
            q_norm,
            q_stats,
            q,
            attention,
            x1,
            ff_norm,
            ff_stats,
            f,
            w1,
            hidden,
            ff_mask_scale: ff.dropout.scale(),
            w2,
            out_mask,
            row_mask,
        });
        Some(Box::new(move |g: &[f32]| backward(&saved, g)))
    } else {
        None
    };
    Ok(attach(
        "fused-sasrec-block",
        x,
        &params,
        out.into_vec(),
        backward,
    )?)
}

fn backward(s: &Saved, g: &[f32]) -> candle_core::Result<(Vec<f32>, Vec<Vec<f32>>)> {
    let d = s.dims.d;
    // out = (h2 + b2) ⊙ m + f
    let d_h2 = kernels::through_mask(g, s.out_mask.as_deref());
    let (dw2, db2) = s.w2.grads(&d_h2, &s.hidden)?;
    let d_hidden = s.w2.input_grad(&d_h2)?;
    drop(d_h2);
    let d_pre = kernels::bias_act_dropout_backward(
        &d_hidden,
        Act::Relu,
        &[],
        &s.hidden,
        None,
        s.ff_mask_scale,
    );
    drop(d_hidden);
    let (dw1, db1) = s.w1.grads(&d_pre, &s.f)?;
    let df_ff = s.w1.input_grad(&d_pre)?;
    drop(d_pre);
    // f = LN_ff(x1); df = g (residual) + df_ff
    let ln_ff = s
        .ff_norm
        .backward(&s.x1, &s.ff_stats, g, Some(&df_ff), None, d);
    drop(df_ff);
    // x1 = q + attention projection
    let dx1 = ln_ff.dx;
    let att = s.attention.backward(&dx1, &s.q, &s.x)?;
    // q = LN_q(x); dq = dx1 (residual) + dq_proj; dx = LN_q backward + dx_kv
    let ln_q = s.q_norm.backward(
        &s.x,
        &s.q_stats,
        &dx1,
        Some(&att.d_q_in),
        Some(&att.d_kv_in),
        d,
    );
    let mut grads = vec![ln_q.dw, ln_q.db];
    grads.extend(att.params);
    grads.push(ln_ff.dw);
    grads.push(ln_ff.db);
    s.w1.push_grads(&mut grads, dw1, db1);
    s.w2.push_grads(&mut grads, dw2, db2);
    let dx = match &s.row_mask {
        Some(m) => kernels::scale_rows(&ln_q.dx, m, d).into_vec(),
        None => ln_q.dx.into_vec(),
    };
    Ok((dx, grads))
}

/// The eval-mode output of `block` at the last position only, `[B, 1, d]`, for `x` `[B, L, d]`
/// (already multiplied by the timeline mask): keys and values from every position, the query,
/// residuals and feed-forward from the last (the generic form is
/// [`SASRecTransformerLayer::forward_last`]). It builds no autograd graph.
pub(crate) fn forward_last(
    block: &SASRecTransformerLayer,
    x: &Tensor,
    last_query_bias: Option<&Tensor>,
) -> Result<Tensor> {
    let mha = &block.multi_head_attn;
    let (dims, x_c) = super::last_position_input(x, mha.n_heads)?;
    let Dims { b, l, d, .. } = dims;
    let xv = F32View::new(&x_c, "SASRec block input")?;
    let Parts {
        q_norm,
        ff_norm,
        w1,
        w2,
    } = parts(block)?;
    let x_last = super::last_rows(xv.get(), b, l, d);
    let (q, _) = q_norm.forward(&x_last, d);
    let proj = self_attention::forward_last(mha, &q, xv.get(), last_query_bias, dims)?;
    let x1 = kernels::add(&q, &proj);
    let (f, _) = ff_norm.forward(&x1, d);
    let hidden = {
        let h = w1.product(&f)?;
        kernels::bias_act_dropout(&h, &w1.b, Act::Relu, None, w1.out_dim()).1
    };
    let out = {
        let h2 = w2.product(&hidden)?;
        kernels::bias_dropout_residual(&h2, &w2.b, None, Some(&f), d)
    };
    Ok(Tensor::from_vec(out.into_vec(), (b, 1, d), x.device())?)
}
