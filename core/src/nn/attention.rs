//! Multi-head attention with torch `nn.MultiheadAttention`'s math (bias on, no `add_bias_kv`):
//! `softmax(Q Kᵀ / √d_h + bias) V`, attention dropout in training, then the output projection.
//!
//! Parameters: `q_proj`, `k_proj`, `v_proj`, `out_proj` (each `.weight [d, d]`, `.bias [d]`);
//! RecTools' packed `in_proj_weight [3d, d]` is these three stacked by rows. Initialised as
//! RecTools leaves torch's MHA: xavier-normal over the packed `[3d, d]` (std √(2 / 4d)) for q/k/v,
//! xavier-normal for `out_proj`, zero biases.

use candle_core::Tensor;
use candle_nn::{Module, VarBuilder};

use crate::{
    context::SharedRng,
    nn::{init, linear::linear_with_init, Dropout, Linear},
    Result,
};

/// How torch's `nn.MultiheadAttention` names what this module keeps as three projections: the
/// query, key and value weights stacked by rows into one `[3d, d]` tensor, and their biases into
/// one `[3d]` tensor. Importers of RecTools checkpoints split them with this.
pub struct TorchPackedProjections {
    /// The packed weight's name (`{prefix}in_proj_weight`).
    pub weight: &'static str,
    /// The packed bias's name (`{prefix}in_proj_bias`).
    pub bias: &'static str,
    /// This module's projections, in the packed row order (`{prefix}{name}.weight`, `.bias`).
    pub parts: [&'static str; 3],
}

impl MultiHeadAttention {
    /// The torch state_dict names of the query, key and value projections.
    pub const TORCH_PACKED: TorchPackedProjections = TorchPackedProjections {
        weight: "in_proj_weight",
        bias: "in_proj_bias",
        parts: ["q_proj", "k_proj", "v_proj"],
    };
}

/// Multi-head attention.
#[derive(Debug, Clone)]
pub struct MultiHeadAttention {
    pub(crate) q_proj: Linear,
    pub(crate) k_proj: Linear,
    pub(crate) v_proj: Linear,
    pub(crate) out_proj: Linear,
    pub(crate) n_heads: usize,
    pub(crate) head_dim: usize,
    pub(crate) dropout: Dropout,
}

impl MultiHeadAttention {
    /// Attention of width `d` with `n_heads` heads and attention dropout `dropout_rate`.
    pub fn new(
        d: usize,
        n_heads: usize,
        dropout_rate: f64,
        vb: &VarBuilder,
        rng: SharedRng,
    ) -> Result<Self> {
        if n_heads == 0 || !d.is_multiple_of(n_heads) {
            return Err(crate::CoreError::Other(format!(
                "multi-head attention: width {d} is not divisible by n_heads {n_heads}"
            )));
        }
        let packed = init::xavier_normal(&[3 * d, d]);
        let qkv = |name: &str| linear_with_init(d, d, true, packed, init::ZEROS, &vb.pp(name));
        Ok(MultiHeadAttention {
            q_proj: qkv("q_proj")?,
            k_proj: qkv("k_proj")?,
            v_proj: qkv("v_proj")?,
            out_proj: linear_with_init(
                d,
                d,
                true,
                init::xavier_normal(&[d, d]),
                init::ZEROS,
                &vb.pp("out_proj"),
            )?,
            n_heads,
            head_dim: d / n_heads,
            dropout: Dropout::new(dropout_rate, rng),
        })
    }

    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        Ok(x.reshape((b, l, self.n_heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()?)
    }

    /// Attends from `query` `[B, Lq, d]` to `key`/`value` `[B, Lk, d]`. `attn_bias` is additive and
    /// broadcastable to `[B, H, Lq, Lk]` (see [`crate::nn::masks`]).
    pub fn forward_t(
        &self,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
        attn_bias: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let (b, lq, d) = query.dims3()?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let (qp, kp, vp) = (
            self.q_proj.forward(query)?,
            self.k_proj.forward(key)?,
            self.v_proj.forward(value)?,
        );
        if crate::nn::fused::gpu_composition(qp.device()) {
            // On a GPU the attention core is one node (crate::nn::attention_core): about twenty
            // kernel launches instead of forty.
            if let Some(out) = crate::nn::attention_core::attention_core(
                &qp,
                &kp,
                &vp,
                self.n_heads,
                attn_bias,
                scale,
                train.then_some(&self.dropout),
            )? {
                return Ok(self.out_proj.forward(&out)?);
            }
        }
        let q = self.split_heads(&qp)?;
        let k = self.split_heads(&kp)?;
        let v = self.split_heads(&vp)?;
        let mut scores = (q.matmul(&k.t()?)? * scale)?;
        if let Some(bias) = attn_bias {
            scores = scores.broadcast_add(bias)?;
        }
        let attn = crate::nn::softmax::softmax_last_dim(&scores)?;
        let attn = self.dropout.forward_t(&attn, train)?;
        let out = attn.matmul(&v)?.transpose(1, 2)?.reshape((b, lq, d))?;
        Ok(self.out_proj.forward(&out)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use std::collections::HashMap;

    fn identity_attention(d: usize, heads: usize) -> Result<MultiHeadAttention> {
        let dev = Device::Cpu;
        let eye = Tensor::eye(d, DType::F32, &dev)?;
        let zero = Tensor::zeros(d, DType::F32, &dev)?;
        let mut ts = HashMap::new();
        for p in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            ts.insert(format!("{p}.weight"), eye.clone());
            ts.insert(format!("{p}.bias"), zero.clone());
        }
        let vb = VarBuilder::from_tensors(ts, DType::F32, &dev);
        MultiHeadAttention::new(d, heads, 0.0, &vb, SharedRng::new(0))
    }

    #[test]
    fn single_head_matches_hand_computed_softmax() -> Result<()> {
        // d = 2, one head, identity projections: out_i = Σ_j softmax_j(q_i·k_j / √2) v_j.
        let mha = identity_attention(2, 1)?;
        let x = Tensor::new(&[[[1f32, 0.], [0., 1.]]], &Device::Cpu)?;
        let out = mha.forward_t(&x, &x, &x, None, false)?.to_vec3::<f32>()?;
        let s = 1.0f64 / 2f64.sqrt();
        let (a, b) = (s.exp(), 1.0f64); // scores of row 0: [1/√2, 0]
        let w0 = a / (a + b);
        let expected_row0 = [w0, 1.0 - w0];
        for (o, e) in out[0][0].iter().zip(expected_row0) {
            assert!((*o as f64 - e).abs() < 1e-6);
        }
        Ok(())
    }

    #[test]
    fn causal_bias_hides_future_keys() -> Result<()> {
        let mha = identity_attention(2, 2)?;
        let x = Tensor::new(&[[[1f32, 2.], [30., 40.]]], &Device::Cpu)?;
        let bias = crate::nn::masks::causal_bias(2, &Device::Cpu)?;
        let out = mha
            .forward_t(&x, &x, &x, Some(&bias), false)?
            .to_vec3::<f32>()?;
        // The first query sees only itself.
        assert_eq!(out[0][0], vec![1.0, 2.0]);
        Ok(())
    }
}
