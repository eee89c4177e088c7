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
    products::{g_w, x_wt},
    self_attention::SelfAttention,
};
use crate::{
    nn::{
        blocks::ligr::{LiGRFeedForward, LiGRLayer},
        cpu_slice::F32View,
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
    x: Tensor,
    norm_1: NormParts,
    stats_1: Vec<(f32, f32)>,
    h: Tensor,
    attention: SelfAttention,
    mask_1: Option<Vec<f32>>,
    gate_1: LinearParts,
    g1: Vec<f32>,
    attn_dropped: Vec<f32>,
    x1: Tensor,
    norm_2: NormParts,
    stats_2: Vec<(f32, f32)>,
    h2: Tensor,
    ff: Ff,
    w_in: LinearParts,
    /// SwiGLU: the biased `[u, v]`; point-wise: the pre-activation (GELU only).
    pre: Vec<f32>,
    hidden: Tensor,
    ff_mask: Option<Vec<f32>>,
    ff_mask_scale: f32,
    w2: LinearParts,
    mask_2: Option<Vec<f32>>,
    gate_2: LinearParts,
    g2: Vec<f32>,
    ff_dropped: Vec<f32>,
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
    let hidden_dim = w2.w.dim(1)?;
    let xd = x.detach().contiguous()?.reshape((n, d))?;
    let norm_1 = NormParts::new(&block.layer_norm_1)?;
    let norm_2 = NormParts::new(&block.layer_norm_2)?;
    let gate_1 = LinearParts::new(&[&block.gating_linear_1])?;
    let gate_2 = LinearParts::new(&[&block.gating_linear_2])?;

    // The generic block's draw order: attention weights, dropout_1, feed-forward hidden,
    // dropout_2.
    let draw = |dropout: &Dropout, len: usize| {
        if train {
            dropout.draw_mask(len)
        } else {
            None
        }
    };
    let attn_mask = draw(&mha.dropout, b * dims.heads * l * l);
    let mask_1 = draw(&block.dropout_1, n * d);
    let ff_mask = draw(ff_dropout, n * hidden_dim);
    let mask_2 = draw(&block.dropout_2, n * d);

    let (h_vec, stats_1) = {
        let xs = F32View::new(&xd, "LiGR block input")?;
        norm_1.forward(xs.get(), d)
    };
    let h = Tensor::from_vec(h_vec, (n, d), xd.device())?;
    let (attention, proj) = SelfAttention::forward(mha, &h, &h, attn_bias, attn_mask, dims)?;
    let g1 = {
        let p = x_wt(&xd, &gate_1.w)?;
        let pv = F32View::new(&p, "gate")?;
        kernels::bias_sigmoid(pv.get(), &gate_1.b, d)
    };
    let (attn_dropped, x1) = {
        let pv = F32View::new(&proj, "attention output")?;
        let xv = F32View::new(&xd, "LiGR block input")?;
        kernels::gated_residual(
            xv.get(),
            &g1,
            pv.get(),
            attention.out_bias(),
            mask_1.as_deref(),
            d,
        )
    };
    let (h2_vec, stats_2) = norm_2.forward(&x1, d);
    let x1 = Tensor::from_vec(x1, (n, d), xd.device())?;
    let h2 = Tensor::from_vec(h2_vec, (n, d), xd.device())?;
    let (pre, hidden) = {
        let p = x_wt(&h2, &w_in.w)?;
        let pv = F32View::new(&p, "feed-forward hidden")?;
        match ff {
            Ff::Swiglu => kernels::swiglu(pv.get(), &w_in.b, ff_mask.as_deref(), hidden_dim),
            Ff::PointWise(act) => {
                kernels::bias_act_dropout(pv.get(), &w_in.b, act, ff_mask.as_deref(), hidden_dim)
            }
        }
    };
    let hidden = Tensor::from_vec(hidden, (n, hidden_dim), xd.device())?;
    let g2 = {
        let p = x_wt(&x1, &gate_2.w)?;
        let pv = F32View::new(&p, "gate")?;
        kernels::bias_sigmoid(pv.get(), &gate_2.b, d)
    };
    let (ff_dropped, out) = {
        let f = x_wt(&hidden, &w2.w)?;
        let fv = F32View::new(&f, "feed-forward output")?;
        let x1v = F32View::new(&x1, "LiGR residual stream")?;
        kernels::gated_residual(x1v.get(), &g2, fv.get(), &w2.b, mask_2.as_deref(), d)
    };
    super::check_finite("LiGR block", &xd, &out)?;

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
    Ok(attach("fused-ligr-block", x, &params, out, backward)?)
}

fn backward(s: &Saved, g: &[f32]) -> candle_core::Result<(Vec<f32>, Vec<Vec<f32>>)> {
    let d = s.dims.d;
    let dev = s.x.device().clone();
    let n = g.len() / d.max(1);
    let hidden_dim = s.w2.w.dim(1)?;
    // out = x1 + σ(x1·G2ᵀ + g2) ⊙ ((f + b2) ⊙ m2)
    let (d_gate2, d_f) =
        kernels::gated_residual_backward(g, &s.g2, &s.ff_dropped, s.mask_2.as_deref());
    let d_gate2 = Tensor::from_vec(d_gate2, (n, d), &dev)?;
    let (dg2w, dg2b) = s.gate_2.grads(&d_gate2, &s.x1)?;
    let dx1_gate = g_w(&d_gate2, &s.gate_2.w)?;
    let d_f = Tensor::from_vec(d_f, (n, d), &dev)?;
    let (dw2, db2) = s.w2.grads(&d_f, &s.hidden)?;
    let d_hidden = g_w(&d_f, &s.w2.w)?;
    let d_in = {
        let dh = F32View::new(&d_hidden, "hidden gradient")?;
        match s.ff {
            Ff::Swiglu => {
                kernels::swiglu_backward(dh.get(), &s.pre, s.ff_mask.as_deref(), hidden_dim)
            }
            Ff::PointWise(act) => {
                let hv = F32View::new(&s.hidden, "hidden")?;
                kernels::bias_act_dropout_backward(
                    dh.get(),
                    act,
                    &s.pre,
                    hv.get(),
                    s.ff_mask.as_deref(),
                    s.ff_mask_scale,
                )
            }
        }
    };
    let in_dim = s.w_in.out_dim()?;
    let d_in = Tensor::from_vec(d_in, (n, in_dim), &dev)?;
    let (dw_in, db_in) = s.w_in.grads(&d_in, &s.h2)?;
    let dh2 = g_w(&d_in, &s.w_in.w)?;
    // h2 = LN2(x1); dx1 = g (residual) + gate 2's input gradient + LN2 backward
    let ln_2 = {
        let dv = F32View::new(&dh2, "feed-forward input gradient")?;
        let gv = F32View::new(&dx1_gate, "gate input gradient")?;
        let x1v = F32View::new(&s.x1, "LiGR residual stream")?;
        let extra = kernels::add(g, gv.get());
        s.norm_2
            .backward(x1v.get(), &s.stats_2, dv.get(), None, Some(&extra), d)
    };
    // x1 = x + σ(x·G1ᵀ + g1) ⊙ ((Ao + bo) ⊙ m1)
    let (d_gate1, d_ao) =
        kernels::gated_residual_backward(&ln_2.dx, &s.g1, &s.attn_dropped, s.mask_1.as_deref());
    let d_gate1 = Tensor::from_vec(d_gate1, (n, d), &dev)?;
    let (dg1w, dg1b) = s.gate_1.grads(&d_gate1, &s.x)?;
    let dx_gate = g_w(&d_gate1, &s.gate_1.w)?;
    let d_ao = Tensor::from_vec(d_ao, (n, d), &dev)?;
    let att = s.attention.backward(&d_ao, &s.h, &s.h)?;
    // h = LN1(x); dx = dx1 (residual) + gate 1's input gradient + LN1 backward
    let ln_1 = {
        let xv = F32View::new(&s.x, "block input")?;
        let a = F32View::new(&att.d_q_in, "query projection gradient")?;
        let b = F32View::new(&att.d_kv_in, "key/value projection gradient")?;
        let gv = F32View::new(&dx_gate, "gate input gradient")?;
        let extra = kernels::add(&ln_2.dx, gv.get());
        s.norm_1.backward(
            xv.get(),
            &s.stats_1,
            a.get(),
            Some(b.get()),
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
    Ok((ln_1.dx, grads))
}
