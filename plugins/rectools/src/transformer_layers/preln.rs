//! Pre-LN layers: port of RecTools' `PreLNTransformerLayers`
//! (`rectools/models/nn/transformers/net_blocks.py`, docs/rectools.md §3), BERT4Rec's default stack.
//!
//! Each block ([`PreLNTransformerLayer`], in core) computes
//! `h = LN1(x); x = x + Drop1(MHA(h, h, h)); x = x + Drop2(FF(LN2(x))); x = Drop3(x)`, with a
//! GELU (exact erf) feed-forward of width `m·d`. No timeline masking and no final norm: BERT4Rec
//! relies on the key padding mask.

use serde::{Deserialize, Serialize};

use recblocks_core::{
    candle::Tensor,
    components::{last_position, AttentionMasks, TransformerLayers},
    kwargs::decode_kwargs,
    serde_json::Value,
    BuildContext, ComponentKind, Result,
};

/// The block lives in core (`recblocks_core::nn::layers`), so other plugins can stack it;
/// re-exported here under its old path.
pub use recblocks_core::nn::blocks::preln::PreLNTransformerLayer;

use super::{check_multiplier, StackDims};

const NAME: &str = "PreLNTransformerLayers";

/// Kwargs of [`PreLNTransformerLayers`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PreLNTransformerLayersKwargs {
    /// Feed-forward hidden width as a multiple of `n_factors`.
    pub ff_factors_multiplier: usize,
}

impl Default for PreLNTransformerLayersKwargs {
    fn default() -> Self {
        PreLNTransformerLayersKwargs {
            ff_factors_multiplier: 4,
        }
    }
}

/// RecTools' `PreLNTransformerLayers`: blocks `transformer_blocks.{i}` applied in sequence.
#[derive(Debug, Clone)]
pub struct PreLNTransformerLayers {
    transformer_blocks: Vec<PreLNTransformerLayer>,
}

impl PreLNTransformerLayers {
    /// Builds the stack from the spec's `n_blocks`, `n_heads`, `dropout_rate` at `ctx.n_factors`.
    pub fn new(ctx: &BuildContext<'_>, kwargs: &PreLNTransformerLayersKwargs) -> Result<Self> {
        let dims = StackDims::from_ctx(ctx, NAME)?;
        check_multiplier(NAME, kwargs.ff_factors_multiplier)?;
        let blocks_vb = ctx.vb.pp("transformer_blocks");
        let transformer_blocks = (0..dims.n_blocks)
            .map(|i| {
                PreLNTransformerLayer::new(
                    dims.d,
                    dims.n_heads,
                    dims.dropout_rate,
                    kwargs.ff_factors_multiplier,
                    &blocks_vb.pp(i),
                    ctx.rng.clone(),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(PreLNTransformerLayers { transformer_blocks })
    }
}

impl TransformerLayers for PreLNTransformerLayers {
    fn forward_t(&self, seqs: &Tensor, masks: &AttentionMasks, train: bool) -> Result<Tensor> {
        let bias = masks.attn_bias.as_ref();
        let mut x = seqs.clone();
        for block in &self.transformer_blocks {
            x = block.forward_t(&x, bias, train)?;
        }
        Ok(x)
    }

    fn forward_last(&self, seqs: &Tensor, masks: &AttentionMasks) -> Result<Tensor> {
        let Some((last, rest)) = self.transformer_blocks.split_last() else {
            return last_position(seqs);
        };
        let bias = masks.attn_bias.as_ref();
        let mut x = seqs.clone();
        for block in rest {
            x = block.forward_t(&x, bias, false)?;
        }
        last.forward_last(&x, masks.last_query_bias()?.as_ref())
    }
}

fn build(ctx: &BuildContext<'_>, kwargs: &Value) -> Result<Box<dyn TransformerLayers>> {
    let kw: PreLNTransformerLayersKwargs =
        decode_kwargs(ComponentKind::TransformerLayers, NAME, kwargs)?;
    Ok(Box::new(PreLNTransformerLayers::new(ctx, &kw)?))
}

recblocks_core::register! {
    TransformerLayersRegistration {
        name: NAME,
        aliases: ["rectools.models.nn.transformers.net_blocks.PreLNTransformerLayers"],
        summary: "pre-LayerNorm transformer blocks with a GELU feed-forward (BERT4Rec's default)",
        kwargs: PreLNTransformerLayersKwargs,
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
    use recblocks_core::kwargs::default_kwargs_json;
    use recblocks_core::{
        candle::{DType, Device},
        nn::masks,
        serde_json::json,
        DatasetSchema,
    };

    fn env(n_blocks: usize, dropout: f64) -> Result<Env> {
        test_util::env(
            json!({"n_factors": 4, "n_heads": 2, "n_blocks": n_blocks, "dropout_rate": dropout,
                   "use_causal_attn": false, "use_key_padding_mask": true}),
            DatasetSchema::new(5, &["PAD", "MASK"]),
        )
    }

    fn inputs() -> Result<(Tensor, Tensor)> {
        let ids = Tensor::new(&[[0u32, 2, 3], [1, 5, 4]], &Device::Cpu)?;
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

    fn masks_for(ids: &Tensor, causal: bool, kpm: bool) -> Result<AttentionMasks> {
        Ok(AttentionMasks {
            timeline_mask: masks::timeline_mask(ids)?,
            attn_bias: masks::attention_bias(ids, causal, kpm)?,
        })
    }

    #[test]
    fn stack_matches_the_formula() -> Result<()> {
        let env = env(2, 0.3)?;
        let layers = build(&env.ctx(5), &json!({"ff_factors_multiplier": 2}))?;
        env.set_param(
            "transformer_blocks.1.layer_norm_1.weight",
            &Tensor::new(&[0.5f32, 1.5, -1.0, 2.0], &Device::Cpu)?,
        )?;
        env.set_param(
            "transformer_blocks.0.layer_norm_2.bias",
            &Tensor::new(&[0.1f32, -0.2, 0.3, 0.0], &Device::Cpu)?,
        )?;
        let (ids, x) = inputs()?;
        for (causal, kpm) in [(false, true), (true, true), (false, false)] {
            let m = masks_for(&ids, causal, kpm)?;
            let got = layers
                .forward_t(&x, &m, false)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let biases = r::batch_biases(m.attn_bias.as_ref(), 2, 3)?;
            let mut expected = Vec::new();
            for (b, mut h) in r::batches(&x)?.into_iter().enumerate() {
                for i in 0..2 {
                    let p = format!("transformer_blocks.{i}");
                    let mha = r::Mha::load(&env, &format!("{p}.multi_head_attn"), 2)?;
                    let ln1 = r::Ln::load(&env, &format!("{p}.layer_norm_1"), 1e-5)?;
                    let ln2 = r::Ln::load(&env, &format!("{p}.layer_norm_2"), 1e-5)?;
                    let l1 = r::Lin::load(&env, &format!("{p}.feed_forward.ff_linear_1"))?;
                    let l2 = r::Lin::load(&env, &format!("{p}.feed_forward.ff_linear_2"))?;
                    let n = ln1.apply(&h);
                    h = r::add(&h, &mha.apply(&n, &n, &n, &biases[b]));
                    let ff = l2.apply(&r::map(&l1.apply(&ln2.apply(&h)), r::gelu));
                    h = r::add(&h, &ff);
                }
                expected.extend(h.into_iter().flatten());
            }
            assert_close(&got, &expected, 2e-5);
        }
        Ok(())
    }

    #[test]
    fn zeroed_sublayers_leave_the_residual_stream_plus_output_biases() -> Result<()> {
        // Every projection zero: attention gives its output bias bo, the feed-forward its
        // output bias b2, so n_blocks = 2 gives x + 2·(bo + b2), with no masking or final norm.
        let env = env(2, 0.0)?;
        let layers = build(&env.ctx(5), &Value::Null)?;
        for name in env.param_names() {
            let t = env.param(&name)?;
            if name.ends_with("weight") && !name.contains("norm") {
                env.set_param(&name, &Tensor::zeros(t.shape(), DType::F32, &Device::Cpu)?)?;
            }
        }
        for i in 0..2 {
            let p = format!("transformer_blocks.{i}");
            env.set_param(
                &format!("{p}.multi_head_attn.out_proj.bias"),
                &Tensor::new(&[1f32, 0., -1., 0.5], &Device::Cpu)?,
            )?;
            env.set_param(
                &format!("{p}.feed_forward.ff_linear_2.bias"),
                &Tensor::new(&[0.25f32, 0.25, 0., -2.], &Device::Cpu)?,
            )?;
        }
        let (ids, x) = inputs()?;
        let got = layers.forward_t(&x, &masks_for(&ids, false, true)?, false)?;
        let shift = Tensor::new(&[2.5f32, 0.5, -2., -3.], &Device::Cpu)?;
        let expected: Vec<f64> = x
            .broadcast_add(&shift)?
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .map(|v| *v as f64)
            .collect();
        assert_close(&got.flatten_all()?.to_vec1::<f32>()?, &expected, 1e-6);
        Ok(())
    }

    #[test]
    fn dropout_acts_only_in_training() -> Result<()> {
        let env = env(1, 0.5)?;
        let layers = build(&env.ctx(5), &Value::Null)?;
        let (ids, x) = inputs()?;
        let m = masks_for(&ids, false, true)?;
        let e1 = layers.forward_t(&x, &m, false)?.to_vec3::<f32>()?;
        let e2 = layers.forward_t(&x, &m, false)?.to_vec3::<f32>()?;
        let t = layers.forward_t(&x, &m, true)?.to_vec3::<f32>()?;
        assert_eq!(e1, e2);
        assert_ne!(e1, t);
        Ok(())
    }

    #[test]
    fn parameter_count_names_and_gradients() -> Result<()> {
        let (nb, d) = (2usize, 4usize);
        for m in [4usize, 3] {
            let env = env(nb, 0.1)?;
            let layers = build(&env.ctx(5), &json!({ "ff_factors_multiplier": m }))?;
            // n_blocks · ((4 + 2m)d² + (9 + m)d) (docs/rectools.md §6).
            assert_eq!(env.n_params(), nb * ((4 + 2 * m) * d * d + (9 + m) * d));
            assert_eq!(
                env.param("transformer_blocks.1.feed_forward.ff_linear_1.weight")?
                    .dims(),
                &[m * d, d]
            );
            assert!(env
                .param_names()
                .iter()
                .all(|n| !n.contains("last_layernorm")));
            let (ids, x) = inputs()?;
            let out = layers.forward_t(&x, &masks_for(&ids, false, true)?, true)?;
            r::assert_every_parameter_learns(&env, &out)?;
        }
        Ok(())
    }

    #[test]
    fn rejects_bad_configs() -> Result<()> {
        let env0 = env(0, 0.1)?;
        assert!(build(&env0.ctx(0), &Value::Null).is_err());
        let env1 = env(1, 0.1)?;
        assert!(build(&env1.ctx(0), &json!({"ff_factors_multiplier": 0})).is_err());
        let err = build(&env1.ctx(0), &json!({"ff_multiplier": 2}))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("ff_multiplier") && err.contains("ff_factors_multiplier"),
            "{err}"
        );
        assert_eq!(
            default_kwargs_json::<PreLNTransformerLayersKwargs>(),
            json!({"ff_factors_multiplier": 4})
        );
        Ok(())
    }
}
