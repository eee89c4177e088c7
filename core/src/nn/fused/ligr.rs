//! RecTools' `LiGRLayer` as one fused node (the generic block is [`crate::nn::blocks::ligr`]):
//!
//! ```text
//! h = LN1(x); Q, K, V = h·[Wq; Wk; Wv]ᵀ + b
//! x1 = x + σ(x·G1ᵀ + g1) ⊙ Drop1(Attention(Q, K, V) · Woᵀ + bo)
//! f = FF(LN2(x1)); out = x1 + σ(x1·G2ᵀ + g2) ⊙ Drop2(f)
//! ```
//!
//! `FF` is SwiGLU (`W2 · Dropout(SiLU(W1 h) ⊙ W3 h)`, with `W1` and `W3` in one product) or a
//! point-wise ReLU/GELU feed-forward.

use std::sync::Arc;

use candle_core::Tensor;

use super::{
    attention::Dims,
    kernels::{self, Act},
    node::{attach, Backward},
    parts::{LinearParts, NormParts},
    self_attention::SelfAttention,
};
use crate::{
    nn::{
        blocks::ligr::{LiGRFeedForward, LiGRLayer},
        cpu_slice::F32View,
        workspace::Buf,
        Dropout,
    },
    Result,
};

/// The feed-forward's form, its first projection (`[W1; W3]` for SwiGLU) and dropout.
enum Ff {
    Swiglu,
    PointWise(Act),
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
    gate_1: LinearParts,
    g1: Buf,
    attn_dropped: Buf,
    x1: Buf,
    norm_2: NormParts,
    stats_2: Vec<(f32, f32)>,
    h2: Buf,
    ff: Ff,
    w_in: LinearParts,
    /// SwiGLU: the biased `[u, v]`; point-wise: the pre-activation (GELU only).
    pre: Buf,
    hidden: Buf,
    ff_mask: Option<Buf>,
    ff_mask_scale: f32,
    w2: LinearParts,
    mask_2: Option<Buf>,
    gate_2: LinearParts,
    g2: Buf,
    ff_dropped: Buf,
}

/// Whether `block` has a fused form: its point-wise activation must be ReLU or GELU.
pub(crate) fn supported(block: &LiGRLayer) -> bool {
    match &block.feed_forward {
        LiGRFeedForward::Swiglu(_) => true,
        LiGRFeedForward::PointWise(f) => super::preln::fused_act(f.activation).is_some(),
    }
}

/// The fused forward pass of `block` on `x` `[B, L, d]`; with `train`, the returned tensor's
/// backward pass is the fused one.
pub(crate) fn forward_t(
    block: &LiGRLayer,
    x: &Tensor,
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
    let (ff, w_in, w2, ff_dropout) = match &block.feed_forward {
        LiGRFeedForward::Swiglu(f) => (
            Ff::Swiglu,
            LinearParts::new(&[&f.ff_linear_1, &f.ff_linear_3])?,
            LinearParts::new(&[&f.ff_linear_2])?,
            &f.dropout,
        ),
        LiGRFeedForward::PointWise(f) => {
            let act = super::preln::fused_act(f.activation).ok_or_else(|| {
                crate::CoreError::Other(format!(
                    "LiGR block: no fused form of the {:?} activation",
                    f.activation
                ))
            })?;
            (
                Ff::PointWise(act),
                LinearParts::new(&[&f.ff_linear_1])?,
                LinearParts::new(&[&f.ff_linear_2])?,
                &f.dropout,
            )
        }
    };
    let hidden_dim = w2.in_dim();
    let xd = x.detach().contiguous()?.reshape((n, d))?;
    let norm_1 = NormParts::new(&block.layer_norm_1)?;
    let norm_2 = NormParts::new(&block.layer_norm_2)?;
    let gate_1 = LinearParts::new(&[&block.gating_linear_1])?;
    let gate_2 = LinearParts::new(&[&block.gating_linear_2])?;

    // The generic block's draw order: attention weights, dropout_1, feed-forward hidden,
    // dropout_2.
    let draw = |dropout: &Dropout, len: usize| {
        if train {
            dropout.draw_mask_buf(len)
        } else {
            None
        }
    };
    let attn_mask = draw(&mha.dropout, b * dims.heads * l * l);
    let mask_1 = draw(&block.dropout_1, n * d);
    let ff_mask = draw(ff_dropout, n * hidden_dim);
    let mask_2 = draw(&block.dropout_2, n * d);

    let xv = F32View::new(&xd, "LiGR block input")?;
    let (h, stats_1) = norm_1.forward(xv.get(), d);
    let (attention, proj) = SelfAttention::forward(mha, &h, &h, attn_bias, attn_mask, dims)?;
    let g1 = {
        let p = gate_1.product(xv.get())?;
        kernels::bias_sigmoid(&p, &gate_1.b, d)
    };
    let (attn_dropped, x1) = kernels::gated_residual(
        xv.get(),
        &g1,
        &proj,
        attention.out_bias(),
        mask_1.as_deref(),
        d,
    );
    drop(proj);
    let (h2, stats_2) = norm_2.forward(&x1, d);
    let (pre, hidden) = {
        let p = w_in.product(&h2)?;
        match ff {
            Ff::Swiglu => kernels::swiglu(&p, &w_in.b, ff_mask.as_deref(), hidden_dim),
            Ff::PointWise(act) => {
                kernels::bias_act_dropout(&p, &w_in.b, act, ff_mask.as_deref(), hidden_dim)
            }
        }
    };
    let g2 = {
        let p = gate_2.product(&x1)?;
        kernels::bias_sigmoid(&p, &gate_2.b, d)
    };
    let (ff_dropped, out) = {
        let f = w2.product(&hidden)?;
        kernels::gated_residual(&x1, &g2, &f, &w2.b, mask_2.as_deref(), d)
    };
    super::check_finite("LiGR block", xv.get(), &out)?;
    drop(xv);

    let params: Vec<Tensor> = [
        norm_1.params(),
        attention.params(),
        gate_1.params(),
        norm_2.params(),
        w_in.params(),
        w2.params(),
        gate_2.params(),
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
            gate_1,
            g1,
            attn_dropped,
            x1,
            norm_2,
            stats_2,
            h2,
            ff,
            w_in,
            pre,
            hidden,
            ff_mask,
            ff_mask_scale: ff_dropout.scale(),
            w2,
            mask_2,
            gate_2,
            g2,
            ff_dropped,
        });
        Some(Box::new(move |g: &[f32]| backward(&saved, g)))
    } else {
        None
    };
    Ok(attach(
        "fused-ligr-block",
        x,
        &params,
        out.into_vec(),
        backward,
    )?)
}

fn backward(s: &Saved, g: &[f32]) -> candle_core::Result<(Vec<f32>, Vec<Vec<f32>>)> {
    let d = s.dims.d;
    let hidden_dim = s.w2.in_dim();
    // out = x1 + σ(x1·G2ᵀ + g2) ⊙ ((f + b2) ⊙ m2)
    let (d_gate2, d_f) =
        kernels::gated_residual_backward(g, &s.g2, &s.ff_dropped, s.mask_2.as_deref());
    let (dg2w, dg2b) = s.gate_2.grads(&d_gate2, &s.x1)?;
    let dx1_gate = s.gate_2.input_grad(&d_gate2)?;
    drop(d_gate2);
    let (dw2, db2) = s.w2.grads(&d_f, &s.hidden)?;
    let d_hidden = s.w2.input_grad(&d_f)?;
    drop(d_f);
    let d_in = match s.ff {
        Ff::Swiglu => kernels::swiglu_backward(&d_hidden, &s.pre, s.ff_mask.as_deref(), hidden_dim),
        Ff::PointWise(act) => kernels::bias_act_dropout_backward(
            &d_hidden,
            act,
            &s.pre,
            &s.hidden,
            s.ff_mask.as_deref(),
            s.ff_mask_scale,
        ),
    };
    drop(d_hidden);
    let (dw_in, db_in) = s.w_in.grads(&d_in, &s.h2)?;
    let dh2 = s.w_in.input_grad(&d_in)?;
    drop(d_in);
    // h2 = LN2(x1); dx1 = g (residual) + gate 2's input gradient + LN2 backward
    let ln_2 = {
        let extra = kernels::add(g, &dx1_gate);
        s.norm_2
            .backward(&s.x1, &s.stats_2, &dh2, None, Some(&extra), d)
    };
    drop((dh2, dx1_gate));
    // x1 = x + σ(x·G1ᵀ + g1) ⊙ ((Ao + bo) ⊙ m1)
    let (d_gate1, d_ao) =
        kernels::gated_residual_backward(&ln_2.dx, &s.g1, &s.attn_dropped, s.mask_1.as_deref());
    let xv = F32View::new(&s.x, "block input")?;
    let (dg1w, dg1b) = s.gate_1.grads(&d_gate1, xv.get())?;
    let dx_gate = s.gate_1.input_grad(&d_gate1)?;
    drop(d_gate1);
    let att = s.attention.backward(&d_ao, &s.h, &s.h)?;
    drop(d_ao);
    // h = LN1(x); dx = dx1 (residual) + gate 1's input gradient + LN1 backward
    let ln_1 = {
        let extra = kernels::add(&ln_2.dx, &dx_gate);
        s.norm_1.backward(
            xv.get(),
            &s.stats_1,
            &att.d_q_in,
            Some(&att.d_kv_in),
            Some(&extra),
            d,
        )
    };
    let mut grads = vec![ln_1.dw, ln_1.db];
    grads.extend(att.params);
    s.gate_1.push_grads(&mut grads, dg1w, dg1b);
    grads.push(ln_2.dw);
    grads.push(ln_2.db);
    s.w_in.push_grads(&mut grads, dw_in, db_in);
    s.w2.push_grads(&mut grads, dw2, db2);
    s.gate_2.push_grads(&mut grads, dg2w, dg2b);
    Ok((ln_1.dx.into_vec(), grads))
}
