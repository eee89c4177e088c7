//! The multi-head attention sub-layer the fused blocks share: the query and key/value
//! projections, the attention ([`super::attention`]) and the output projection, forward and
//! backward, with what the backward pass keeps.
//!
//! Queries come from `q_in` and keys and values from `kv_in`: the same normalised tensor in the
//! pre-LN and LiGR blocks, the normalised and the raw input in SASRec's.

use candle_core::Tensor;

use super::{
    attention::{self, Dims},
    parts::LinearParts,
};
use crate::nn::{cpu_slice::F32View, workspace::Buf, MultiHeadAttention};

/// A forward pass of the sub-layer, kept for its backward pass.
pub(crate) struct SelfAttention {
    dims: Dims,
    wq: LinearParts,
    wkv: LinearParts,
    wo: LinearParts,
    queries: Buf,
    keys_values: Buf,
    weights: Buf,
    attn_mask: Option<Buf>,
    attended: Buf,
}

/// The gradients of the sub-layer's inputs (through the query and the key/value projections)
/// and of its parameters, in [`SelfAttention::params`]' order.
pub(crate) struct SelfAttentionGrads {
    pub d_q_in: Buf,
    pub d_kv_in: Buf,
    pub params: Vec<Vec<f32>>,
}

impl SelfAttention {
    /// Runs the sub-layer on `q_in` and `kv_in` (`[n, d]` each); returns it and
    /// `attended · Woᵀ` `[n, d]` (the output projection without its bias,
    /// [`SelfAttention::out_bias`]). `attn_mask` is the attention dropout mask.
    pub fn forward(
        mha: &MultiHeadAttention,
        q_in: &[f32],
        kv_in: &[f32],
        attn_bias: Option<&Tensor>,
        attn_mask: Option<Buf>,
        dims: Dims,
    ) -> candle_core::Result<(Self, Buf)> {
        let (wq, wkv, wo) = projections(mha)?;
        let queries = wq.forward(q_in)?;
        let keys_values = wkv.forward(kv_in)?;
        let bias = super::bias_rows(attn_bias, dims.b, dims.l, dims.l)?;
        let (attended, weights) = with_bias(&bias, |bias| {
            attention::forward(&queries, &keys_values, bias, attn_mask.as_deref(), dims)
        })?;
        let projected = wo.product(&attended)?;
        Ok((
            SelfAttention {
                dims,
                wq,
                wkv,
                wo,
                queries,
                keys_values,
                weights,
                attn_mask,
                attended,
            },
            projected,
        ))
    }

    /// The output projection's bias (zeros without one).
    pub fn out_bias(&self) -> &[f32] {
        &self.wo.b
    }

    /// The parameters: query, key, value and output projections.
    pub fn params(&self) -> Vec<Tensor> {
        [self.wq.params(), self.wkv.params(), self.wo.params()].concat()
    }

    /// The backward pass from the gradient at the output projection's output `d_out` `[n, d]`;
    /// `q_in` and `kv_in` are the forward pass's inputs.
    pub fn backward(
        &self,
        d_out: &[f32],
        q_in: &[f32],
        kv_in: &[f32],
    ) -> candle_core::Result<SelfAttentionGrads> {
        let (dwo, dbo) = self.wo.grads(d_out, &self.attended)?;
        let d_att = self.wo.input_grad(d_out)?;
        let (dq, dkv) = attention::backward(
            &d_att,
            &self.queries,
            &self.keys_values,
            &self.weights,
            self.attn_mask.as_deref(),
            self.dims,
        );
        drop(d_att);
        let (dwq, dbq) = self.wq.grads(&dq, q_in)?;
        let (dwkv, dbkv) = self.wkv.grads(&dkv, kv_in)?;
        let d_q_in = self.wq.input_grad(&dq)?;
        let d_kv_in = self.wkv.input_grad(&dkv)?;
        let mut params = Vec::new();
        self.wq.push_grads(&mut params, dwq, dbq);
        self.wkv.push_grads(&mut params, dwkv, dbkv);
        self.wo.push_grads(&mut params, dwo, dbo);
        Ok(SelfAttentionGrads {
            d_q_in,
            d_kv_in,
            params,
        })
    }
}

/// The sub-layer in eval mode for one query per session: `q_in` `[B, d]` (each session's last
/// position), keys and values from `kv_in` `[B·L, d]`; returns the output projection with its
/// bias, `[B, d]`. `last_bias` is the attention bias's last query row.
pub(crate) fn forward_last(
    mha: &MultiHeadAttention,
    q_in: &[f32],
    kv_in: &[f32],
    last_bias: Option<&Tensor>,
    dims: Dims,
) -> candle_core::Result<Buf> {
    let (wq, wkv, wo) = projections(mha)?;
    let queries = wq.forward(q_in)?;
    let keys_values = wkv.forward(kv_in)?;
    let bias = super::bias_rows(last_bias, dims.b, 1, dims.l)?;
    let attended = with_bias(&bias, |bias| {
        attention::forward_last(&queries, &keys_values, bias, dims)
    })?;
    wo.forward(&attended)
}

/// The query projection, the key and value projections stacked, and the output projection.
fn projections(
    mha: &MultiHeadAttention,
) -> candle_core::Result<(LinearParts, LinearParts, LinearParts)> {
    Ok((
        LinearParts::new(&[&mha.q_proj])?,
        LinearParts::new(&[&mha.k_proj, &mha.v_proj])?,
        LinearParts::new(&[&mha.out_proj])?,
    ))
}

/// Calls `f` with the bias rows' elements (from [`super::bias_rows`]) and whether they are per
/// session.
fn with_bias<R>(
    bias: &Option<(Tensor, bool)>,
    f: impl FnOnce(Option<(&[f32], bool)>) -> R,
) -> candle_core::Result<R> {
    Ok(match bias {
        Some((t, per_session)) => {
            let view = F32View::new(t, "attention bias")?;
            f(Some((view.get(), *per_session)))
        }
        None => f(None),
    })
}
