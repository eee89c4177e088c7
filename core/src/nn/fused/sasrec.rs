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
    products::{g_w, x_wt},
    self_attention::SelfAttention,
};
use crate::{
    nn::{blocks::SASRecTransformerLayer, cpu_slice::F32View},
    Result,
};

/// What the backward pass reads, kept from the forward pass.
struct Saved {
    dims: Dims,
    x: Tensor,
    q_norm: NormParts,
    q_stats: Vec<(f32, f32)>,
    q: Tensor,
    attention: SelfAttention,
    x1: Vec<f32>,
    ff_norm: NormParts,
    ff_stats: Vec<(f32, f32)>,
    f: Tensor,
    w1: LinearParts,
    hidden: Tensor,
    ff_mask_scale: f32,
    w2: LinearParts,
    out_mask: Option<Vec<f32>>,
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
    let xd = {
        let xd = x.detach().contiguous()?.reshape((n, d))?;
        match &row_mask {
            Some(m) => {
                let xv = F32View::new(&xd, "SASRec block input")?;
                Tensor::from_vec(kernels::scale_rows(xv.get(), m, d), (n, d), xd.device())?
            }
            None => xd,
        }
    };
    let q_norm = NormParts::new(&block.q_layer_norm)?;
    let ff_norm = NormParts::new(&block.ff_layer_norm)?;
    let ff = &block.feed_forward;
    let w1 = LinearParts::new(&[&ff.ff_linear_1])?;
    let w2 = LinearParts::new(&[&ff.ff_linear_2])?;
    let hidden_dim = w1.out_dim()?;

    // The generic block's draw order: attention weights, feed-forward hidden, block output.
    let attn_mask = if train {
        mha.dropout.draw_mask(b * dims.heads * l * l)
    } else {
        None
    };
    let ff_mask = if train {
        ff.dropout.draw_mask(n * hidden_dim)
    } else {
        None
    };
    let out_mask = if train {
        block.dropout.draw_mask(n * d)
    } else {
        None
    };

    let (q_vec, q_stats) = {
        let xs = F32View::new(&xd, "SASRec block input")?;
        q_norm.forward(xs.get(), d)
    };
    let q = Tensor::from_vec(q_vec, (n, d), xd.device())?;
    let (attention, proj) = SelfAttention::forward(mha, &q, &xd, attn_bias, attn_mask, dims)?;
    let x1 = {
        let pv = F32View::new(&proj, "attention output")?;
        let qv = F32View::new(&q, "normalised query")?;
        kernels::bias_dropout_residual(pv.get(), attention.out_bias(), None, Some(qv.get()), d)
    };
    let (f_vec, ff_stats) = ff_norm.forward(&x1, d);
    let f = Tensor::from_vec(f_vec, (n, d), xd.device())?;
    let hidden = {
        let h = x_wt(&f, &w1.w)?;
        let hv = F32View::new(&h, "feed-forward hidden")?;
        kernels::bias_act_dropout(hv.get(), &w1.b, Act::Relu, ff_mask.as_deref(), hidden_dim).1
    };
    let hidden = Tensor::from_vec(hidden, (n, hidden_dim), xd.device())?;
    let out = {
        let h2 = x_wt(&hidden, &w2.w)?;
        let hv = F32View::new(&h2, "feed-forward output")?;
        let fv = F32View::new(&f, "normalised block state")?;
        kernels::bias_dropout_residual(hv.get(), &w2.b, out_mask.as_deref(), Some(fv.get()), d)
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
    Ok(attach("fused-sasrec-block", x, &params, out, backward)?)
}

fn backward(s: &Saved, g: &[f32]) -> candle_core::Result<(Vec<f32>, Vec<Vec<f32>>)> {
    let Dims { l: _, d, .. } = s.dims;
    let dev = s.x.device().clone();
    let n = g.len() / d.max(1);
    let hidden_dim = s.w1.out_dim()?;
    // out = (h2 + b2) ⊙ m + f
    let d_h2 = match &s.out_mask {
        Some(m) => kernels::mul(g, m),
        None => g.to_vec(),
    };
    let d_h2 = Tensor::from_vec(d_h2, (n, d), &dev)?;
    let (dw2, db2) = s.w2.grads(&d_h2, &s.hidden)?;
    let d_hidden = g_w(&d_h2, &s.w2.w)?;
    let d_pre = {
        let dh = F32View::new(&d_hidden, "hidden gradient")?;
        let hv = F32View::new(&s.hidden, "hidden")?;
        kernels::bias_act_dropout_backward(
            dh.get(),
            Act::Relu,
            &[],
            hv.get(),
            None,
            s.ff_mask_scale,
        )
    };
    let d_pre = Tensor::from_vec(d_pre, (n, hidden_dim), &dev)?;
    let (dw1, db1) = s.w1.grads(&d_pre, &s.f)?;
    let df_ff = g_w(&d_pre, &s.w1.w)?;
    // f = LN_ff(x1); df = g (residual) + df_ff
    let ln_ff = {
        let dv = F32View::new(&df_ff, "feed-forward input gradient")?;
        s.ff_norm
            .backward(&s.x1, &s.ff_stats, g, Some(dv.get()), None, d)
    };
    // x1 = q + attention projection
    let dx1 = Tensor::from_vec(ln_ff.dx, (n, d), &dev)?;
    let att = s.attention.backward(&dx1, &s.q, &s.x)?;
    // q = LN_q(x); dq = dx1 (residual) + dq_proj; dx = LN_q backward + dx_kv
    let ln_q = {
        let xv = F32View::new(&s.x, "block input")?;
        let dx1v = F32View::new(&dx1, "residual gradient")?;
        let dqp = F32View::new(&att.d_q_in, "query projection gradient")?;
        let dkvx = F32View::new(&att.d_kv_in, "key/value projection gradient")?;
        s.q_norm.backward(
            xv.get(),
            &s.q_stats,
            dx1v.get(),
            Some(dqp.get()),
            Some(dkvx.get()),
            d,
        )
    };
    let mut grads = vec![ln_q.dw, ln_q.db];
    grads.extend(att.params);
    grads.push(ln_ff.dw);
    grads.push(ln_ff.db);
    s.w1.push_grads(&mut grads, dw1, db1);
    s.w2.push_grads(&mut grads, dw2, db2);
    let dx = match &s.row_mask {
        Some(m) => kernels::scale_rows(&ln_q.dx, m, d),
        None => ln_q.dx,
    };
    Ok((dx, grads))
}
