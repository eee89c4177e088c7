//! SASRec layers: port of RecTools' `SASRecTransformerLayer(s)`
//! (`rectools/models/nn/transformers/sasrec.py`, docs/rectools.md §3), the SASRec authors' block.
//!
//! The block itself ([`SASRecTransformerLayer`]: keys and values from the un-normalised input,
//! both residuals from normalised tensors) lives in core; this stack applies the timeline mask
//! before every block and after the last, and ends with a LayerNorm of eps 1e-8.

use recblocks_core::{
    candle::Tensor,
    components::{last_position, AttentionMasks, TransformerLayers},
    kwargs::{decode_kwargs, NoKwargs},
    nn::{masks::apply_timeline_mask, LayerNorm},
    serde_json::Value,
    BuildContext, ComponentKind, Result,
};

/// The block and the final norm's epsilon live in core (`recblocks_core::nn::layers`), so other
/// plugins can stack the same block; re-exported here under their old paths.
pub use recblocks_core::nn::blocks::sasrec::{SASRecTransformerLayer, LAST_LAYER_NORM_EPS};

use super::StackDims;

const NAME: &str = "SASRecTransformerLayers";

/// RecTools' `SASRecTransformerLayers`: blocks `transformer_blocks.{i}` and `last_layernorm`
/// (eps 1e-8). Each block sees `x ⊙ timeline_mask`, and so does the final norm.
#[derive(Debug, Clone)]
pub struct SASRecTransformerLayers {
    transformer_blocks: Vec<SASRecTransformerLayer>,
    last_layernorm: LayerNorm,
}

impl SASRecTransformerLayers {
    /// Builds the stack from the spec's `n_blocks`, `n_heads`, `dropout_rate` at `ctx.n_factors`.
    pub fn new(ctx: &BuildContext<'_>) -> Result<Self> {
        let dims = StackDims::from_ctx(ctx, NAME)?;
        let blocks_vb = ctx.vb.pp("transformer_blocks");
        let transformer_blocks = (0..dims.n_blocks)
            .map(|i| {
                SASRecTransformerLayer::new(
                    dims.d,
                    dims.n_heads,
                    dims.dropout_rate,
                    &blocks_vb.pp(i),
                    ctx.rng.clone(),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(SASRecTransformerLayers {
            transformer_blocks,
            last_layernorm: LayerNorm::new(
                dims.d,
                LAST_LAYER_NORM_EPS,
                &ctx.vb.pp("last_layernorm"),
            )?,
        })
    }
}

impl TransformerLayers for SASRecTransformerLayers {
    fn forward_t(&self, seqs: &Tensor, masks: &AttentionMasks, train: bool) -> Result<Tensor> {
        let tm = &masks.timeline_mask;
        let bias = masks.attn_bias.as_ref();
        let mut x = seqs.clone();
        for block in &self.transformer_blocks {
            x = block.forward_masked_t(&x, tm, bias, train)?;
        }
        x = apply_timeline_mask(&x, tm)?;
        self.last_layernorm.forward(&x)
    }

    fn forward_last(&self, seqs: &Tensor, masks: &AttentionMasks) -> Result<Tensor> {
        let Some((last, rest)) = self.transformer_blocks.split_last() else {
            return last_position(&self.forward_t(seqs, masks, false)?);
        };
        let tm = &masks.timeline_mask;
        let bias = masks.attn_bias.as_ref();
        let mut x = seqs.clone();
        for block in rest {
            x = block.forward_masked_t(&x, tm, bias, false)?;
        }
        x = x.broadcast_mul(tm)?;
        let x = last.forward_last(&x, masks.last_query_bias()?.as_ref())?;
        let x = x.broadcast_mul(&last_position(tm)?)?;
        self.last_layernorm.forward(&x)
    }
}

fn build(ctx: &BuildContext<'_>, kwargs: &Value) -> Result<Box<dyn TransformerLayers>> {
    let _: NoKwargs = decode_kwargs(ComponentKind::TransformerLayers, NAME, kwargs)?;
    Ok(Box::new(SASRecTransformerLayers::new(ctx)?))
}

recblocks_core::register! {
    TransformerLayersRegistration {
        name: NAME,
        aliases: ["rectools.models.nn.transformers.sasrec.SASRecTransformerLayers"],
        summary: "SASRec authors' blocks (keys/values from the un-normalised input, timeline masking, final LayerNorm)",
        build: build,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        test_util::{self, assert_close, Env},
        transformer_layers::reference as r,
    };
    use recblocks_core::{candle::Device, nn::masks, serde_json::json, DatasetSchema};

    fn env(n_blocks: usize, dropout: f64) -> Result<Env> {
        test_util::env(
            json!({"n_factors": 4, "n_heads": 2, "n_blocks": n_blocks, "dropout_rate": dropout}),
            DatasetSchema::new(5, &["PAD"]),
        )
    }

    /// Ids with padding, and inputs that are non-zero at padded positions too.
    fn inputs() -> Result<(Tensor, Tensor)> {
        let ids = Tensor::new(&[[0u32, 0, 3], [1, 2, 4]], &Device::Cpu)?;
        let x = Tensor::new(
            &[
                [
                    [0.3f32, -1.2, 0.5, 2.0],
                    [1.0, 0.1, -0.4, 0.2],
                    [-0.7, 0.9, 1.5, -0.3],
                ],
                [
                    [0.2, 0.4, -0.6, 0.8],
                    [-1.1, 0.0, 0.3, 0.6],
                    [0.5, -0.5, 1.0, 1.2],
                ],
            ],
            &Device::Cpu,
        )?;
        Ok((ids, x))
    }

    /// Plain-f64 SASRec stack (docs/rectools.md §3), read from the parameters in `env`.
    fn reference(
        env: &Env,
        n_blocks: usize,
        ids: &Tensor,
        x: &Tensor,
        bias: Option<&Tensor>,
    ) -> Result<Vec<f64>> {
        let tm = r::rows(&masks::timeline_mask(ids)?.squeeze(2)?)?;
        let biases = r::batch_biases(bias, 2, 3)?;
        let mut out = Vec::new();
        for (b, mut h) in r::batches(x)?.into_iter().enumerate() {
            for i in 0..n_blocks {
                let p = format!("transformer_blocks.{i}");
                let mha = r::Mha::load(env, &format!("{p}.multi_head_attn"), 2)?;
                let ln_q = r::Ln::load(env, &format!("{p}.q_layer_norm"), 1e-5)?;
                let ln_ff = r::Ln::load(env, &format!("{p}.ff_layer_norm"), 1e-5)?;
                let l1 = r::Lin::load(env, &format!("{p}.feed_forward.ff_linear_1"))?;
                let l2 = r::Lin::load(env, &format!("{p}.feed_forward.ff_linear_2"))?;
                h = r::scale_rows(&h, &tm[b]);
                let q = ln_q.apply(&h);
                let a = mha.apply(&q, &h, &h, &biases[b]);
                let x1 = r::add(&q, &a);
                let f = ln_ff.apply(&x1);
                let ff = l2.apply(&r::map(&l1.apply(&f), r::relu));
                h = r::add(&ff, &f);
            }
            h = r::scale_rows(&h, &tm[b]);
            let last = r::Ln::load(env, "last_layernorm", 1e-8)?;
            out.extend(last.apply(&h).into_iter().flatten());
        }
        Ok(out)
    }

    #[test]
    fn stack_matches_the_formula_with_causal_and_merged_masks() -> Result<()> {
        let env = env(2, 0.4)?;
        let layers = build(&env.ctx(17), &Value::Null)?;
        // Non-trivial norm parameters, so the asymmetric residuals and final norm are visible.
        for (i, name) in [
            "transformer_blocks.0.q_layer_norm.weight",
            "transformer_blocks.1.ff_layer_norm.bias",
            "last_layernorm.weight",
            "last_layernorm.bias",
        ]
        .iter()
        .enumerate()
        {
            let v = Tensor::new(&[0.5f32 + i as f32, -0.3, 1.7, 0.2], &Device::Cpu)?;
            env.set_param(name, &v)?;
        }
        let (ids, x) = inputs()?;
        for (causal, kpm) in [(true, false), (true, true), (false, false)] {
            let bias = masks::attention_bias(&ids, causal, kpm)?;
            let m = AttentionMasks {
                timeline_mask: masks::timeline_mask(&ids)?,
                attn_bias: bias.clone(),
            };
            let got = layers
                .forward_t(&x, &m, false)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let expected = reference(&env, 2, &ids, &x, bias.as_ref())?;
            assert_close(&got, &expected, 2e-5);
        }
        Ok(())
    }

    #[test]
    fn padded_positions_leave_as_the_final_norm_bias() -> Result<()> {
        let env = env(2, 0.0)?;
        let layers = SASRecTransformerLayers::new(&env.ctx(3))?;
        let beta = [0.1f32, -0.2, 0.3, -0.4];
        env.set_param("last_layernorm.bias", &Tensor::new(&beta, &Device::Cpu)?)?;
        let (ids, x) = inputs()?;
        let m = AttentionMasks {
            timeline_mask: masks::timeline_mask(&ids)?,
            attn_bias: masks::attention_bias(&ids, true, false)?,
        };
        let out = layers.forward_t(&x, &m, false)?.to_vec3::<f32>()?;
        // LN(0) = 0 · γ + β = β at the two padded positions of session 0.
        assert_eq!(out[0][0], beta.to_vec());
        assert_eq!(out[0][1], beta.to_vec());
        assert_ne!(out[0][2], beta.to_vec());
        Ok(())
    }

    #[test]
    fn dropout_acts_only_in_training() -> Result<()> {
        let env = env(2, 0.5)?;
        let layers = build(&env.ctx(3), &Value::Null)?;
        let (ids, x) = inputs()?;
        let m = AttentionMasks {
            timeline_mask: masks::timeline_mask(&ids)?,
            attn_bias: masks::attention_bias(&ids, true, false)?,
        };
        let eval1 = layers.forward_t(&x, &m, false)?.to_vec3::<f32>()?;
        let eval2 = layers.forward_t(&x, &m, false)?.to_vec3::<f32>()?;
        let train = layers.forward_t(&x, &m, true)?.to_vec3::<f32>()?;
        assert_eq!(eval1, eval2);
        assert_ne!(eval1, train);
        Ok(())
    }

    #[test]
    fn parameters_names_count_and_gradients() -> Result<()> {
        let (nb, d) = (3usize, 4usize);
        let env = env(nb, 0.1)?;
        let layers = build(&env.ctx(3), &Value::Null)?;
        // n_blocks · (6d² + 10d) + 2d (docs/rectools.md §6).
        assert_eq!(env.n_params(), nb * (6 * d * d + 10 * d) + 2 * d);
        let names = env.param_names();
        for n in [
            "transformer_blocks.0.multi_head_attn.q_proj.weight",
            "transformer_blocks.2.multi_head_attn.out_proj.bias",
            "transformer_blocks.1.q_layer_norm.weight",
            "transformer_blocks.1.ff_layer_norm.bias",
            "transformer_blocks.2.feed_forward.ff_linear_2.bias",
            "last_layernorm.weight",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
        }
        let (ids, x) = inputs()?;
        let m = AttentionMasks {
            timeline_mask: masks::timeline_mask(&ids)?,
            attn_bias: masks::attention_bias(&ids, true, false)?,
        };
        let out = layers.forward_t(&x, &m, true)?;
        r::assert_every_parameter_learns(&env, &out)?;
        Ok(())
    }

    #[test]
    fn rejects_zero_blocks_and_kwargs() -> Result<()> {
        let env0 = env(0, 0.1)?;
        let err = build(&env0.ctx(0), &Value::Null)
            .err()
            .map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("n_blocks"));
        let env = env(1, 0.1)?;
        let err = build(&env.ctx(0), &json!({"ff_factors_multiplier": 2}))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("ff_factors_multiplier"), "{err}");
        Ok(())
    }
}
