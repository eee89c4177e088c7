//! The transformer backbone: port of RecTools' `TransformerTorchBackbone`
//! (`rectools/models/nn/transformers/torch_backbone.py`, docs/rectools.md §2.7).
//!
//! `encode_sessions`: timeline mask from the input ids, item embeddings looked up by id,
//! positional encoding, embedding dropout, RecTools' attention masks, then the transformer layers.
//! Logits come from the similarity module (the trait's default `logits`).

use recblocks_core::{
    candle::{DType, Tensor},
    components::{
        AttentionMasks, Backbone, BackboneParts, ItemNetConstructor, PositionalEncoding,
        Similarity, TransformerLayers,
    },
    kwargs::{decode_kwargs, NoKwargs},
    nn::{gather_rows, masks, Dropout},
    serde_json::Value,
    BuildContext, ComponentKind, CoreError, Result,
};

const NAME: &str = "TransformerTorchBackbone";

/// RecTools' `TransformerTorchBackbone`: item net → positional encoding → embedding dropout →
/// transformer layers, scored by the similarity module.
pub struct TransformerTorchBackbone {
    item_net: Box<dyn ItemNetConstructor>,
    pos_encoding: Box<dyn PositionalEncoding>,
    emb_dropout: Dropout,
    transformer_layers: Box<dyn TransformerLayers>,
    similarity: Box<dyn Similarity>,
    use_causal_attn: bool,
    use_key_padding_mask: bool,
    n_factors: usize,
}

impl TransformerTorchBackbone {
    /// Assembles the backbone from its parts; reads `dropout_rate`, `use_causal_attn` and
    /// `use_key_padding_mask` from the spec. The item net must produce `ctx.n_factors` columns.
    pub fn new(ctx: &BuildContext<'_>, parts: BackboneParts) -> Result<Self> {
        if parts.item_net.out_dim() != ctx.n_factors {
            return Err(CoreError::invalid(
                ComponentKind::Backbone,
                NAME,
                format!(
                    "the item net produces {} columns, but the sessions are {} wide (n_factors)",
                    parts.item_net.out_dim(),
                    ctx.n_factors
                ),
            ));
        }
        Ok(TransformerTorchBackbone {
            item_net: parts.item_net,
            pos_encoding: parts.pos_encoding,
            emb_dropout: Dropout::new(ctx.spec.dropout_rate, ctx.rng.clone()),
            transformer_layers: parts.transformer_layers,
            similarity: parts.similarity,
            use_causal_attn: ctx.spec.use_causal_attn,
            use_key_padding_mask: ctx.spec.use_key_padding_mask,
            n_factors: ctx.n_factors,
        })
    }
}

impl Backbone for TransformerTorchBackbone {
    fn item_embeddings(&self, train: bool) -> Result<Tensor> {
        self.item_net.all_embeddings(train)
    }

    fn encode_sessions(&self, x: &Tensor, item_embs: &Tensor, train: bool) -> Result<Tensor> {
        let (h, masks) = self.layer_inputs(x, item_embs, train)?;
        self.transformer_layers.forward_t(&h, &masks, train)
    }

    fn encode_last(&self, x: &Tensor, item_embs: &Tensor) -> Result<Tensor> {
        let (h, masks) = self.layer_inputs(x, item_embs, false)?;
        self.transformer_layers.forward_last(&h, &masks)
    }

    fn similarity(&self) -> &dyn Similarity {
        self.similarity.as_ref()
    }
}

impl TransformerTorchBackbone {
    /// Everything `encode_sessions` does before the transformer layers: the layers' input
    /// `[B, L, d]` and their masks.
    fn layer_inputs(
        &self,
        x: &Tensor,
        item_embs: &Tensor,
        train: bool,
    ) -> Result<(Tensor, AttentionMasks)> {
        if x.dtype() != DType::U32 || x.rank() != 2 {
            return Err(CoreError::invalid(
                ComponentKind::Backbone,
                NAME,
                format!(
                    "input ids must be a [batch, session_len] u32 tensor, found {:?} {:?}",
                    x.dtype(),
                    x.dims()
                ),
            ));
        }
        let (n_items, d) = item_embs.dims2()?;
        if d != self.n_factors {
            return Err(CoreError::invalid(
                ComponentKind::Backbone,
                NAME,
                format!(
                    "item embeddings are {d} wide, expected n_factors = {}",
                    self.n_factors
                ),
            ));
        }
        x.dims2()?; // sessions [B, L]
        let ids = x.flatten_all()?;
        // In a step that may be captured, and on a GPU, the ids are not read here (a read stops
        // the host until the GPU has caught up); the trainer checks each batch on the host before
        // copying it to the device, and a lookup of an id outside the table gives NaN there.
        let bad = if recblocks_core::nn::capture::static_shapes() || !ids.device().is_cpu() {
            None
        } else {
            ids.to_vec1::<u32>()?
                .into_iter()
                .find(|&id| id as usize >= n_items)
        };
        if let Some(bad) = bad {
            return Err(CoreError::invalid(
                ComponentKind::Backbone,
                NAME,
                format!("input item id {bad} is out of range (the catalog has {n_items} rows)"),
            ));
        }
        let timeline_mask = masks::timeline_mask(x)?;
        let h = gather_rows(item_embs, x)?; // [B, L, d]
        let h = self.pos_encoding.forward_t(&h, train)?;
        let h = self.emb_dropout.forward_t(&h, train)?;
        let attn_bias = masks::attention_bias(x, self.use_causal_attn, self.use_key_padding_mask)?;
        let masks = AttentionMasks {
            timeline_mask,
            attn_bias,
        };
        Ok((h, masks))
    }
}

fn build(
    ctx: &BuildContext<'_>,
    parts: BackboneParts,
    kwargs: &Value,
) -> Result<Box<dyn Backbone>> {
    let _: NoKwargs = decode_kwargs(ComponentKind::Backbone, NAME, kwargs)?;
    Ok(Box::new(TransformerTorchBackbone::new(ctx, parts)?))
}

recblocks_core::register! {
    BackboneRegistration {
        name: NAME,
        aliases: ["rectools.models.nn.transformers.torch_backbone.TransformerTorchBackbone"],
        summary: "RecTools' backbone: item embeddings + positional encoding + dropout, then the transformer layers under causal/key-padding masks",
        build: build,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{assert_close, env, Env};
    use recblocks_core::{
        candle::{Device, Tensor},
        serde_json::json,
        DatasetSchema, ModelSpec, Registry,
    };

    /// Builds the parts of a default model through the registry, under RecTools' module names.
    fn parts(ctx: &BuildContext<'_>) -> Result<BackboneParts> {
        let spec = ctx.spec;
        let r = ctx.registry;
        let kw = |k: &recblocks_core::spec::Kwargs| ModelSpec::kwargs_value(k);
        Ok(BackboneParts {
            item_net: (r
                .item_net_constructor(&spec.item_net_constructor_type)?
                .build)(
                &ctx.pp("item_model"),
                &spec.item_net_block_types,
                &kw(&spec.item_net_constructor_kwargs),
            )?,
            pos_encoding: (r.positional_encoding(&spec.pos_encoding_type)?.build)(
                &ctx.pp("pos_encoding_layer"),
                &kw(&spec.pos_encoding_kwargs),
            )?,
            transformer_layers: (r.transformer_layers(&spec.transformer_layers_type)?.build)(
                &ctx.pp("transformer_layers"),
                &kw(&spec.transformer_layers_kwargs),
            )?,
            similarity: (r.similarity(&spec.similarity_module_type)?.build)(
                &ctx.pp("similarity_module"),
                &kw(&spec.similarity_module_kwargs),
            )?,
        })
    }

    fn backbone(env: &Env) -> Result<Box<dyn Backbone>> {
        let ctx = env.ctx(3);
        let b = env.registry.backbone(NAME)?.build;
        b(&ctx, parts(&ctx)?, &Value::Null)
    }

    fn sasrec_env() -> Result<Env> {
        env(
            json!({"n_factors": 8, "n_heads": 2, "session_max_len": 4, "dropout_rate": 0.3}),
            DatasetSchema::new(5, &["PAD"]),
        )
    }

    #[test]
    fn encode_sessions_composes_the_parts_in_rectools_order() -> Result<()> {
        let env = sasrec_env()?;
        let bb = backbone(&env)?;
        // The same parts again: the parameter store hands back the same variables by name.
        let ctx = env.ctx(99);
        let p = parts(&ctx)?;
        let x = Tensor::new(&[[0u32, 0, 3, 5], [1, 2, 3, 4]], &Device::Cpu)?;
        let item_embs = bb.item_embeddings(false)?;
        let got = bb.encode_sessions(&x, &item_embs, false)?;
        assert_eq!(got.dims(), &[2, 4, 8]);

        let h = item_embs
            .index_select(&x.flatten_all()?, 0)?
            .reshape((2, 4, 8))?;
        let h = p.pos_encoding.forward_t(&h, false)?;
        let masks = AttentionMasks {
            timeline_mask: masks::timeline_mask(&x)?,
            attn_bias: Some(masks::causal_bias(4, &Device::Cpu)?),
        };
        let expected = p.transformer_layers.forward_t(&h, &masks, false)?;
        let expected: Vec<f64> = expected
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .map(|v| *v as f64)
            .collect();
        assert_close(&got.flatten_all()?.to_vec1::<f32>()?, &expected, 1e-6);
        Ok(())
    }

    #[test]
    fn encode_last_is_the_last_position_of_encode_sessions() -> Result<()> {
        // Every stack with its own `forward_last` (SASRec, pre-LN) and one on the trait's default
        // (LiGR), under every mask combination, two blocks, dropout on (eval must drop it), and a
        // padded session; the default embedding-width item table has 5 rows (PAD + 4).
        let x = Tensor::new(&[[0u32, 0, 3, 4], [1, 2, 3, 4], [0, 0, 0, 2]], &Device::Cpu)?;
        for layers in [
            "SASRecTransformerLayers",
            "PreLNTransformerLayers",
            "rectools.models.nn.transformers.ligr.LiGRLayers",
        ] {
            for (causal, key_padding) in
                [(true, false), (false, true), (true, true), (false, false)]
            {
                let env = env(
                    json!({"n_factors": 8, "n_heads": 2, "n_blocks": 2, "session_max_len": 4,
                           "dropout_rate": 0.3, "transformer_layers_type": layers,
                           "use_causal_attn": causal, "use_key_padding_mask": key_padding}),
                    DatasetSchema::new(5, &["PAD"]),
                )?;
                let bb = backbone(&env)?;
                let item_embs = bb.item_embeddings(false)?;
                let full = bb.encode_sessions(&x, &item_embs, false)?;
                let want: Vec<f64> = full
                    .narrow(1, 3, 1)?
                    .flatten_all()?
                    .to_vec1::<f32>()?
                    .iter()
                    .map(|v| *v as f64)
                    .collect();
                let got = bb.encode_last(&x, &item_embs)?;
                assert_eq!(got.dims(), &[3, 1, 8], "{layers} {causal} {key_padding}");
                assert_close(&got.flatten_all()?.to_vec1::<f32>()?, &want, 1e-5);
            }
        }
        Ok(())
    }

    #[test]
    fn causal_attention_hides_later_items() -> Result<()> {
        let env = sasrec_env()?;
        let bb = backbone(&env)?;
        let a = Tensor::new(&[[1u32, 2, 3, 4]], &Device::Cpu)?;
        let b = Tensor::new(&[[1u32, 2, 5, 5]], &Device::Cpu)?;
        let la = bb.logits(&a, None, false)?.get(0)?.to_vec2::<f32>()?;
        let lb = bb.logits(&b, None, false)?.get(0)?.to_vec2::<f32>()?;
        // Positions 0 and 1 see the same prefix, so their logits agree; position 2 does not.
        assert_eq!(la[0], lb[0]);
        assert_eq!(la[1], lb[1]);
        assert_ne!(la[2], lb[2]);
        Ok(())
    }

    #[test]
    fn logits_shapes_candidates_and_train_mode() -> Result<()> {
        let env = sasrec_env()?;
        let bb = backbone(&env)?;
        let x = Tensor::new(&[[0u32, 1, 2, 3], [0, 0, 4, 5]], &Device::Cpu)?;
        let full = bb.logits(&x, None, false)?;
        assert_eq!(full.dims(), &[2, 4, 6]); // N = 5 items + PAD
        let again = bb.logits(&x, None, false)?;
        assert_eq!(full.to_vec3::<f32>()?, again.to_vec3::<f32>()?);
        let train = bb.logits(&x, None, true)?;
        assert_ne!(full.to_vec3::<f32>()?, train.to_vec3::<f32>()?);

        let cand = Tensor::new(&[[[5u32, 1]], [[2, 2]]], &Device::Cpu)?; // [B, 1, K]
        let c = bb.logits(&x, Some(&cand), false)?.to_vec3::<f32>()?;
        let f = full.to_vec3::<f32>()?;
        for (bi, ids) in [[5usize, 1], [2, 2]].iter().enumerate() {
            for l in 0..4 {
                for (k, &id) in ids.iter().enumerate() {
                    assert!((c[bi][l][k] - f[bi][l][id]).abs() < 1e-5);
                }
            }
        }
        Ok(())
    }

    #[test]
    fn rejects_bad_inputs_and_kwargs() -> Result<()> {
        let env = sasrec_env()?;
        let bb = backbone(&env)?;
        let embs = bb.item_embeddings(false)?;
        let out_of_range = Tensor::new(&[[0u32, 9]], &Device::Cpu)?;
        assert!(bb.encode_sessions(&out_of_range, &embs, false).is_err());
        let wrong_dtype = Tensor::new(&[[0i64, 1]], &Device::Cpu)?;
        assert!(bb.encode_sessions(&wrong_dtype, &embs, false).is_err());

        let ctx = env.ctx(3);
        let err = build(&ctx, parts(&ctx)?, &json!({"foo": 1}))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("foo"), "{err}");
        Ok(())
    }

    #[test]
    fn sasrec_parameter_count_matches_rectools() -> Result<()> {
        // N·d + L·d + n_blocks·(6d² + 10d) + 2d, ids only (docs/rectools.md §6).
        let env = sasrec_env()?;
        let _bb = backbone(&env)?;
        let (n, d, l, nb) = (6usize, 8usize, 4usize, 2usize);
        assert_eq!(
            env.n_params(),
            n * d + l * d + nb * (6 * d * d + 10 * d) + 2 * d
        );
        let names = env.param_names();
        for expected in [
            "item_model.item_net_blocks.0.ids_emb.weight",
            "pos_encoding_layer.pos_emb.weight",
            "transformer_layers.transformer_blocks.1.multi_head_attn.q_proj.weight",
            "transformer_layers.last_layernorm.bias",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} not in {names:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn bert4rec_style_key_padding_ignores_pad_keys() -> Result<()> {
        // PreLN layers with a key padding mask and no causal mask: what sits at a padded
        // position (the PAD embedding plus its positional embedding) never reaches real items.
        let env = env(
            json!({"n_factors": 8, "n_heads": 2, "session_max_len": 4,
                   "transformer_layers_type": "PreLNTransformerLayers",
                   "use_causal_attn": false, "use_key_padding_mask": true}),
            DatasetSchema::new(5, &["PAD", "MASK"]),
        )?;
        let bb = backbone(&env)?;
        let embs = bb.item_embeddings(false)?;
        let x = Tensor::new(&[[0u32, 0, 3, 4]], &Device::Cpu)?;
        let out = bb.encode_sessions(&x, &embs, false)?;
        // Change the PAD row of the item embeddings: real positions are unaffected.
        let pad_changed = Tensor::cat(
            &[&(embs.narrow(0, 0, 1)? + 5.0)?, &embs.narrow(0, 1, 6)?],
            0,
        )?;
        let out2 = bb.encode_sessions(&x, &pad_changed, false)?;
        let (a, b) = (
            out.get(0)?.to_vec2::<f32>()?,
            out2.get(0)?.to_vec2::<f32>()?,
        );
        assert_eq!(a[2], b[2]);
        assert_eq!(a[3], b[3]);
        assert_ne!(a[0], b[0]);
        Ok(())
    }

    #[test]
    fn every_component_resolves_by_class_name_and_dotted_path() -> Result<()> {
        use ComponentKind as K;
        let registry = Registry::from_inventory()?;
        let entries = [
            (
                K::ItemNetBlock,
                "rectools.models.nn.item_net.IdEmbeddingsItemNet",
            ),
            (
                K::ItemNetBlock,
                "rectools.models.nn.item_net.CatFeaturesItemNet",
            ),
            (
                K::ItemNetConstructor,
                "rectools.models.nn.item_net.SumOfEmbeddingsConstructor",
            ),
            (
                K::PositionalEncoding,
                "rectools.models.nn.transformers.net_blocks.LearnableInversePositionalEncoding",
            ),
            (
                K::TransformerLayers,
                "rectools.models.nn.transformers.sasrec.SASRecTransformerLayers",
            ),
            (
                K::TransformerLayers,
                "rectools.models.nn.transformers.net_blocks.PreLNTransformerLayers",
            ),
            (
                K::TransformerLayers,
                "rectools.models.nn.transformers.ligr.LiGRLayers",
            ),
            (
                K::Similarity,
                "rectools.models.nn.transformers.similarity.DistanceSimilarityModule",
            ),
            (
                K::NegativeSampler,
                "rectools.models.nn.transformers.negative_sampler.CatalogUniformSampler",
            ),
            (
                K::Backbone,
                "rectools.models.nn.transformers.torch_backbone.TransformerTorchBackbone",
            ),
        ];
        for (kind, path) in entries {
            let class = path.rsplit('.').next().unwrap_or(path);
            assert_eq!(registry.canonical_name(kind, path)?, class);
            assert_eq!(registry.canonical_name(kind, class)?, class);
            let info = registry.lookup(kind, class)?.info();
            assert_eq!(info.crate_name, crate::CRATE);
            assert!((info.default_kwargs)().is_object(), "{class}");
        }
        Ok(())
    }
}
