//! The example specs in full models: they load, their parameter counts match RecTools' guide
//! (docs/rectools.md §5), and one training step reaches every parameter (no dead layers, unlike the
//! guide's `AlbertLayers`).

use recblocks_core::{
    candle::Device,
    components::{Backbone, BackboneParts, SessionRef},
    DatasetSchema, ModelSpec, Registry, Result, SpecInput,
};

use recblocks_conformance::env::TestEnv;

use crate::util::{cat_schema, flat, Env};

/// An example spec from `examples/specs/`, read as a user's file.
fn example(name: &str, registry: &Registry) -> Result<ModelSpec> {
    let path = format!("{}/../../examples/specs/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path)
        .map_err(|e| recblocks_core::CoreError::Other(format!("cannot read {path}: {e}")))?;
    SpecInput::from_json_str(&text)?.resolve(registry)
}

/// An environment for `spec`, over a schema with the extra tokens of its data preparator.
fn env_for(spec: ModelSpec, n_real: usize, features: bool) -> Result<Env> {
    let registry = Registry::from_inventory()?;
    let prep = (registry.data_preparator(&spec.data_preparator_type)?.build)(
        &spec,
        &ModelSpec::kwargs_value(&spec.data_preparator_kwargs),
    )?;
    let tokens = prep.item_extra_tokens();
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let schema = if features {
        cat_schema(n_real, &tokens)
    } else {
        DatasetSchema::new(n_real, &tokens)
    };
    Ok(TestEnv::new(spec, schema, registry))
}

/// Builds the model as the host's assembly does: slots under `item_model`,
/// `pos_encoding_layer`, `transformer_layers`, `similarity_module`, wrapped by the backbone.
fn assemble(env: &Env) -> Result<Box<dyn Backbone>> {
    let (ctx, spec, r) = (
        env.ctx(env.spec.seed_or_default()),
        &env.spec,
        &env.registry,
    );
    let kw = ModelSpec::kwargs_value;
    let parts = BackboneParts {
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
    };
    (r.backbone(&spec.backbone_type)?.build)(&ctx, parts, &kw(&spec.backbone_kwargs))
}

/// One PreLN layer with multiplier 4 at width d, and one SASRec layer (docs/rectools.md §6).
fn preln(d: usize) -> usize {
    12 * d * d + 13 * d
}
fn sasrec(d: usize) -> usize {
    6 * d * d + 10 * d
}

#[test]
fn example_specs_load_with_the_guides_settings() -> Result<()> {
    let registry = Registry::from_inventory()?;
    for (file, cls, n_blocks, groups, layer_type) in [
        ("albert_bert4rec.json", "BERT4RecModel", 2, 2, None),
        ("alsasrec.json", "SASRecModel", 2, 2, Some("SASRec")),
        ("albert_shared_layer.json", "BERT4RecModel", 4, 1, None),
    ] {
        let spec = example(file, &registry)?;
        assert_eq!(spec.cls, cls);
        assert_eq!(spec.n_blocks, n_blocks, "{file}");
        assert_eq!(spec.item_net_constructor_type, "AlbertSumConstructor");
        assert_eq!(spec.transformer_layers_type, "AlbertLayers");
        let ik = ModelSpec::kwargs_value(&spec.item_net_constructor_kwargs);
        assert_eq!(ik["emb_factors"], 64);
        let tk = ModelSpec::kwargs_value(&spec.transformer_layers_kwargs);
        assert_eq!(tk["n_hidden_groups"], groups, "{file}");
        assert_eq!(tk["n_inner_groups"], groups, "{file}");
        assert_eq!(tk.get("layer_type").and_then(|v| v.as_str()), layer_type);
    }
    Ok(())
}

#[test]
fn parameter_counts_match_the_guide() -> Result<()> {
    // The guide's KION catalog: N ≈ 15 253 rows with PAD and MASK, d = 256, L = 100, e = 64.
    // ALBERT BERT4Rec: 64·N + (64·256 + 256) + 100·256 + 4 PreLN layers ≈ 4.2 M (printed 4.2 M),
    // against 256·N + 100·256 + 2 PreLN layers ≈ 5.5 M for the default BERT4Rec.
    let registry = Registry::from_inventory()?;
    let (n, d, e, l) = (15_253usize, 256usize, 64usize, 100usize);
    let cases = [
        ("albert_bert4rec.json", 4 * preln(d)),
        ("alsasrec.json", 4 * sasrec(d) + 2 * d),
        ("albert_shared_layer.json", preln(d)),
    ];
    for (file, layers) in cases {
        let spec = example(file, &registry)?;
        let n_extra = if spec.cls == "BERT4RecModel" { 2 } else { 1 };
        let env = env_for(spec, n - n_extra, false)?;
        assert_eq!(env.schema.n_items, n);
        assemble(&env)?;
        assert_eq!(env.n_params(), e * n + e * d + d + l * d + layers, "{file}");
    }
    let spec = example("albert_bert4rec.json", &registry)?;
    let env = env_for(spec, n - 2, false)?;
    assemble(&env)?;
    assert_eq!((env.n_params() as f64 / 1e5).round(), 42.0);
    // More steps share the same groups: the count does not change with n_blocks.
    for n_blocks in [4, 6] {
        let mut spec = example("albert_bert4rec.json", &registry)?;
        spec.n_blocks = n_blocks;
        let env = env_for(spec, 30, false)?;
        assemble(&env)?;
        assert_eq!(env.n_params(), e * 32 + e * d + d + l * d + 4 * preln(d));
    }
    Ok(())
}

#[test]
fn one_training_step_reaches_every_parameter() -> Result<()> {
    let registry = Registry::from_inventory()?;
    for file in [
        "albert_bert4rec.json",
        "alsasrec.json",
        "albert_shared_layer.json",
    ] {
        for features in [false, true] {
            let mut spec = example(file, &registry)?;
            spec.session_max_len = 8; // keeps the step small; everything else as in the file
            let env = env_for(spec, 12, features)?;
            let backbone = assemble(&env)?;
            let spec = &env.spec;
            let kw = ModelSpec::kwargs_value;
            let prep = (registry.data_preparator(&spec.data_preparator_type)?.build)(
                spec,
                &kw(&spec.data_preparator_kwargs),
            )?;
            let objective = (registry.objective(&spec.lightning_module_type)?.build)(
                spec,
                &env.schema,
                &kw(&spec.lightning_module_kwargs),
            )?;
            let first = env.schema.n_extra_tokens() as u32;
            let items: Vec<Vec<u32>> = (0..16u32)
                .map(|u| {
                    (0..3 + u % 6)
                        .map(|j| first + (u * 5 + j * 3) % 12)
                        .collect()
                })
                .collect();
            let weights: Vec<Vec<f32>> = items.iter().map(|s| vec![1.0; s.len()]).collect();
            let sessions: Vec<SessionRef<'_>> = items
                .iter()
                .zip(&weights)
                .map(|(i, w)| SessionRef {
                    items: i,
                    weights: w,
                })
                .collect();
            let batch =
                prep.collate_train(&sessions, env.schema.n_items, None, &env.rng, &Device::Cpu)?;
            let loss = objective.train_loss(backbone.as_ref(), &batch)?;
            let value = loss.to_scalar::<f32>()?;
            assert!(value.is_finite() && value > 0.0, "{file}: loss {value}");
            let grads = loss.backward()?;
            for name in env.param_names() {
                let g = grads
                    .get(&env.param(&name)?)
                    .map(flat)
                    .transpose()?
                    .unwrap_or_default();
                let max = g.iter().fold(0f32, |m, v| m.max(v.abs()));
                assert!(g.iter().all(|v| v.is_finite()), "{file}: {name}");
                if name.ends_with("k_proj.bias") {
                    // Softmax ignores a bias shared by every key: q·b_k is the same per row.
                    assert!(
                        max < 1e-5,
                        "{file}: {name} gradient should vanish, max {max}"
                    );
                } else {
                    assert!(
                        max > 0.0,
                        "{file} (features: {features}): `{name}` gets no gradient"
                    );
                }
            }
        }
    }
    Ok(())
}
