//! LiGR layers: port of RecTools' `LiGRLayer(s)` (`rectools/models/nn/transformers/ligr.py`,
//! docs/rectools.md §3), the layers of the "eSASRec" recipe (LiGR, arXiv 2502.03417).
//!
//! Pre-LN sub-layers whose outputs enter the residual stream through sigmoid gates computed
//! from the stream itself:
//! `x = x + σ(G1 x) ⊙ Drop1(MHA(LN1 x ×3)); x = x + σ(G2 x) ⊙ Drop2(FF(LN2 x))`. No final norm.

use serde::{Deserialize, Serialize};

use recblocks_core::{
    candle::Tensor,
    components::{AttentionMasks, TransformerLayers},
    kwargs::decode_kwargs,
    serde_json::Value,
    BuildContext, ComponentKind, CoreError, Result,
};

use super::{check_multiplier, StackDims};

const NAME: &str = "LiGRLayers";

/// Kwargs of [`LiGRLayers`], in RecTools' order.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LiGRLayersKwargs {
    /// Feed-forward hidden width as a multiple of `n_factors`.
    pub ff_factors_multiplier: usize,
    /// `"swiglu"`, `"relu"` or `"gelu"`.
    pub ff_activation: String,
    /// Whether the feed-forward's linear layers have biases.
    pub bias_in_ff: bool,
}

impl Default for LiGRLayersKwargs {
    fn default() -> Self {
        LiGRLayersKwargs {
            ff_factors_multiplier: 4,
            ff_activation: "swiglu".into(),
            bias_in_ff: false,
        }
    }
}

/// The block and its feed-forward live in core (`recblocks_core::nn::blocks::ligr`), with their
/// fused CPU form, so other plugins can stack the same block; re-exported here.
pub use recblocks_core::nn::blocks::ligr::{
    LiGRActivation, LiGRFeedForward as FeedForward, LiGRLayer,
};

/// The activation named by `ff_activation`, or the kwargs error RecTools users expect.
fn activation(name: &str) -> Result<LiGRActivation> {
    LiGRActivation::from_name(name).ok_or_else(|| CoreError::BadKwargs {
        kind: ComponentKind::TransformerLayers,
        component: NAME.into(),
        message: format!(
            "field `ff_activation`: unknown value `{name}`, expected `swiglu`, `relu` or `gelu`"
        ),
    })
}

/// RecTools' `LiGRLayers`: blocks `transformer_blocks.{i}` applied in sequence, no final norm.
#[derive(Debug, Clone)]
pub struct LiGRLayers {
    transformer_blocks: Vec<LiGRLayer>,
}

impl LiGRLayers {
    /// Builds the stack from the spec's `n_blocks`, `n_heads`, `dropout_rate` at `ctx.n_factors`.
    pub fn new(ctx: &BuildContext<'_>, kwargs: &LiGRLayersKwargs) -> Result<Self> {
        let dims = StackDims::from_ctx(ctx, NAME)?;
        check_multiplier(NAME, kwargs.ff_factors_multiplier)?;
        let act = activation(&kwargs.ff_activation)?;
        let blocks_vb = ctx.vb.pp("transformer_blocks");
        let transformer_blocks = (0..dims.n_blocks)
            .map(|i| {
                LiGRLayer::new(
                    dims.d,
                    dims.n_heads,
                    dims.dropout_rate,
                    kwargs.ff_factors_multiplier,
                    act,
                    kwargs.bias_in_ff,
                    &blocks_vb.pp(i),
                    ctx.rng.clone(),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(LiGRLayers { transformer_blocks })
    }
}

impl TransformerLayers for LiGRLayers {
    fn forward_t(&self, seqs: &Tensor, masks: &AttentionMasks, train: bool) -> Result<Tensor> {
        let bias = masks.attn_bias.as_ref();
        let mut x = seqs.clone();
        for block in &self.transformer_blocks {
            x = block.forward_t(&x, bias, train)?;
        }
        Ok(x)
    }
}

fn build(ctx: &BuildContext<'_>, kwargs: &Value) -> Result<Box<dyn TransformerLayers>> {
    let kw: LiGRLayersKwargs = decode_kwargs(ComponentKind::TransformerLayers, NAME, kwargs)?;
    Ok(Box::new(LiGRLayers::new(ctx, &kw)?))
}

recblocks_core::register! {
    TransformerLayersRegistration {
        name: NAME,
        aliases: ["rectools.models.nn.transformers.ligr.LiGRLayers"],
        summary: "LiGR blocks: pre-LN attention and feed-forward (SwiGLU by default) entering the residual stream through sigmoid gates",
        kwargs: LiGRLayersKwargs,
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
            json!({"n_factors": 4, "n_heads": 2, "n_blocks": n_blocks, "dropout_rate": dropout}),
            DatasetSchema::new(5, &["PAD"]),
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

    fn causal(ids: &Tensor) -> Result<AttentionMasks> {
        Ok(AttentionMasks {
            timeline_mask: masks::timeline_mask(ids)?,
            attn_bias: masks::attention_bias(ids, true, false)?,
        })
    }

    /// The plain-f64 LiGR stack, with the feed-forward given per activation.
    fn reference(
        env: &Env,
        n_blocks: usize,
        x: &Tensor,
        bias: Option<&Tensor>,
        act: &str,
    ) -> Result<Vec<f64>> {
        let biases = r::batch_biases(bias, 2, 3)?;
        let mut out = Vec::new();
        for (b, mut h) in r::batches(x)?.into_iter().enumerate() {
            for i in 0..n_blocks {
                let p = format!("transformer_blocks.{i}");
                let mha = r::Mha::load(env, &format!("{p}.multi_head_attn"), 2)?;
                let ln1 = r::Ln::load(env, &format!("{p}.layer_norm_1"), 1e-5)?;
                let ln2 = r::Ln::load(env, &format!("{p}.layer_norm_2"), 1e-5)?;
                let g1 = r::Lin::load(env, &format!("{p}.gating_linear_1"))?;
                let g2 = r::Lin::load(env, &format!("{p}.gating_linear_2"))?;
                let l1 = r::Lin::load(env, &format!("{p}.feed_forward.ff_linear_1"))?;
                let l2 = r::Lin::load(env, &format!("{p}.feed_forward.ff_linear_2"))?;
                let n = ln1.apply(&h);
                let a = mha.apply(&n, &n, &n, &biases[b]);
                let gate = r::map(&g1.apply(&h), r::sigmoid);
                h = r::add(&h, &r::zip(&gate, &a, |g, v| g * v));
                let n2 = ln2.apply(&h);
                let hidden = match act {
                    "swiglu" => {
                        let l3 = r::Lin::load(env, &format!("{p}.feed_forward.ff_linear_3"))?;
                        r::zip(&r::map(&l1.apply(&n2), r::silu), &l3.apply(&n2), |a, b| {
                            a * b
                        })
                    }
                    "relu" => r::map(&l1.apply(&n2), r::relu),
                    _ => r::map(&l1.apply(&n2), r::gelu),
                };
                let f = l2.apply(&hidden);
                let gate = r::map(&g2.apply(&h), r::sigmoid);
                h = r::add(&h, &r::zip(&gate, &f, |g, v| g * v));
            }
            out.extend(h.into_iter().flatten());
        }
        Ok(out)
    }

    #[test]
    fn stack_matches_the_formula_for_each_activation() -> Result<()> {
        let (ids, x) = inputs()?;
        for (act, bias_in_ff) in [("swiglu", false), ("relu", true), ("gelu", false)] {
            let env = env(2, 0.2)?;
            let kw =
                json!({"ff_factors_multiplier": 2, "ff_activation": act, "bias_in_ff": bias_in_ff});
            let layers = build(&env.ctx(9), &kw)?;
            env.set_param(
                "transformer_blocks.0.layer_norm_2.weight",
                &Tensor::new(&[0.5f32, 1.5, -1.0, 2.0], &Device::Cpu)?,
            )?;
            for m in [
                causal(&ids)?,
                AttentionMasks {
                    timeline_mask: masks::timeline_mask(&ids)?,
                    attn_bias: None,
                },
            ] {
                let got = layers
                    .forward_t(&x, &m, false)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                let expected = reference(&env, 2, &x, m.attn_bias.as_ref(), act)?;
                assert_close(&got, &expected, 2e-5);
            }
        }
        Ok(())
    }

    #[test]
    fn gates_at_zero_let_half_of_each_sublayer_through() -> Result<()> {
        // Zero projections and gates: σ(0) = ½, attention gives its output bias bo, the ReLU
        // feed-forward its output bias b2, so one block gives x + ½ bo + ½ b2.
        let env = env(1, 0.0)?;
        let layers = build(
            &env.ctx(9),
            &json!({"ff_activation": "relu", "bias_in_ff": true}),
        )?;
        for name in env.param_names() {
            let t = env.param(&name)?;
            if !name.contains("norm") && !name.ends_with("ff_linear_1.bias") {
                env.set_param(&name, &Tensor::zeros(t.shape(), DType::F32, &Device::Cpu)?)?;
            }
        }
        env.set_param(
            "transformer_blocks.0.multi_head_attn.out_proj.bias",
            &Tensor::new(&[2f32, 0., -4., 1.], &Device::Cpu)?,
        )?;
        env.set_param(
            "transformer_blocks.0.feed_forward.ff_linear_2.bias",
            &Tensor::new(&[1f32, 1., 0., -3.], &Device::Cpu)?,
        )?;
        let (ids, x) = inputs()?;
        let got = layers.forward_t(&x, &causal(&ids)?, false)?;
        let shift = Tensor::new(&[1.5f32, 0.5, -2., -1.], &Device::Cpu)?;
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
    fn parameter_count_names_dropout_and_gradients() -> Result<()> {
        let (nb, d, m) = (2usize, 4usize, 4usize);
        let env = env(nb, 0.5)?;
        let layers = build(&env.ctx(9), &Value::Null)?;
        // MHA 4d² + 4d, two norms 4d, two gates 2d² + 2d, SwiGLU without bias 3·m·d².
        assert_eq!(env.n_params(), nb * ((6 + 3 * m) * d * d + 10 * d));
        let names = env.param_names();
        for n in [
            "transformer_blocks.0.gating_linear_1.weight",
            "transformer_blocks.1.gating_linear_2.bias",
            "transformer_blocks.1.feed_forward.ff_linear_3.weight",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
        }
        assert!(names.iter().all(|n| !n.contains("ff_linear_1.bias")));
        let (ids, x) = inputs()?;
        let m = causal(&ids)?;
        let e1 = layers.forward_t(&x, &m, false)?.to_vec3::<f32>()?;
        assert_eq!(e1, layers.forward_t(&x, &m, false)?.to_vec3::<f32>()?);
        let t = layers.forward_t(&x, &m, true)?;
        assert_ne!(e1, t.to_vec3::<f32>()?);
        // Gradients with dropout off, so no sub-layer output is dropped entirely.
        let env = self::env(nb, 0.0)?;
        let layers = build(&env.ctx(9), &Value::Null)?;
        r::assert_every_parameter_learns(&env, &layers.forward_t(&x, &m, true)?)?;
        Ok(())
    }

    #[test]
    fn rejects_bad_kwargs() -> Result<()> {
        let env = env(1, 0.1)?;
        let err = build(&env.ctx(0), &json!({"ff_activation": "tanh"}))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("tanh") && err.contains("swiglu") && err.contains("gelu"),
            "{err}"
        );
        assert!(build(&env.ctx(0), &json!({"ff_factors_multiplier": 0})).is_err());
        assert!(build(&env.ctx(0), &json!({"use_bias": true})).is_err());
        assert!(build(&self::env(0, 0.1)?.ctx(0), &Value::Null).is_err());
        assert_eq!(
            default_kwargs_json::<LiGRLayersKwargs>(),
            json!({"ff_factors_multiplier": 4, "ff_activation": "swiglu", "bias_in_ff": false})
        );
        Ok(())
    }
}
