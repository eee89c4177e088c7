//! `AlbertSumConstructor`: factorized embeddings `item_emb_proj(Σ blocks at width e)`.

use recblocks_albert::{AlbertSumConstructor, AlbertSumConstructorKwargs};
use recblocks_core::{
    candle::{Device, Tensor},
    components::ItemNetConstructor,
    serde_json::{json, Value},
    CoreError, DatasetSchema, Result,
};

use crate::util::{cat_schema, flat, json_env, Env};

const IDS: &str = "IdEmbeddingsItemNet";
const CAT: &str = "CatFeaturesItemNet";

fn env(d: usize, schema: DatasetSchema) -> Result<Env> {
    json_env(json!({"n_factors": d, "n_heads": 1}), schema)
}

fn types(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Builds through the registry, as assembly does.
fn build(env: &Env, blocks: &[&str], kwargs: Value) -> Result<Box<dyn ItemNetConstructor>> {
    let reg = env.registry.item_net_constructor("AlbertSumConstructor")?;
    (reg.build)(&env.ctx(3), &types(blocks), &kwargs)
}

#[test]
fn parameters_are_n_e_plus_e_d_plus_d_instead_of_n_d() -> Result<()> {
    // SASRec (PAD) and BERT4Rec (PAD, MASK) catalogs, ids only.
    for tokens in [&["PAD"][..], &["PAD", "MASK"][..]] {
        let (n_real, e, d) = (30usize, 8usize, 32usize);
        let env = env(d, DatasetSchema::new(n_real, tokens))?;
        let net = build(&env, &[IDS, CAT], json!({"emb_factors": e}))?;
        let n = n_real + tokens.len();
        assert_eq!(env.n_params(), n * e + e * d + d);
        assert!(env.n_params() < n * d);
        assert_eq!(
            env.param_names(),
            [
                "item_emb_proj.bias",
                "item_emb_proj.weight",
                "item_net_blocks.0.ids_emb.weight"
            ]
        );
        assert_eq!(
            env.param("item_net_blocks.0.ids_emb.weight")?.dims(),
            &[n, e]
        );
        assert_eq!(env.param("item_emb_proj.weight")?.dims(), &[d, e]);
        assert_eq!(net.out_dim(), d);
        assert_eq!(net.all_embeddings(false)?.dims(), &[n, d]);
    }
    Ok(())
}

#[test]
fn feature_tables_are_built_at_width_e_too() -> Result<()> {
    for tokens in [&["PAD"][..], &["PAD", "MASK"][..]] {
        let (n_real, e, d) = (5usize, 4usize, 8usize);
        let env = env(d, cat_schema(n_real, tokens))?;
        let net = build(&env, &[IDS, CAT], json!({"emb_factors": e}))?;
        let n = n_real + tokens.len();
        assert_eq!(env.n_params(), n * e + 3 * e + e * d + d);
        assert_eq!(
            env.param("item_net_blocks.1.embedding_bag.weight")?.dims(),
            &[3, e]
        );
        assert_eq!(net.all_embeddings(true)?.dims(), &[n, d]);
    }
    Ok(())
}

#[test]
fn embeddings_are_the_projected_sum_of_the_blocks() -> Result<()> {
    // e = 2, d = 3, PAD + 3 items; item 1 has columns {0, 2}, item 2 {1}, item 3 none.
    let env = env(3, cat_schema(3, &["PAD"]))?;
    let net = build(&env, &[IDS, CAT], json!({"emb_factors": 2}))?;
    let dev = &Device::Cpu;
    let set = |name: &str, t: Tensor| env.set_param(name, &t);
    set(
        "item_net_blocks.0.ids_emb.weight",
        Tensor::new(&[[1f32, 2.], [3., 4.], [5., 6.], [7., 8.]], dev)?,
    )?;
    set(
        "item_net_blocks.1.embedding_bag.weight",
        Tensor::new(&[[0.5f32, 1.], [2., -1.], [-0.25, 0.5]], dev)?,
    )?;
    set(
        "item_emb_proj.weight",
        Tensor::new(&[[1f32, 0.], [0., 1.], [1., -1.]], dev)?,
    )?;
    set("item_emb_proj.bias", Tensor::new(&[0.5f32, -0.5, 2.], dev)?)?;
    // Sums: PAD [1, 2], item 1 [3.25, 5.5], item 2 [7, 5], item 3 [7, 8]; then W·s + b.
    // The PAD row is W·pad + b, not zero (RecTools semantics, see the module doc).
    let all = net.all_embeddings(false)?;
    assert_eq!(
        all.to_vec2::<f32>()?,
        [
            [1.5, 1.5, 1.0],
            [3.75, 5.0, -0.25],
            [7.5, 4.5, 4.0],
            [7.5, 7.5, 1.0]
        ]
    );
    // d Σ all / d b = n_items per column; the id table's PAD row stays frozen, other rows get
    // the column sums of W, [2, 0].
    let grads = all.sum_all()?.backward()?;
    let g = |name: &str| -> Result<Tensor> {
        grads
            .get(&env.param(name)?)
            .cloned()
            .ok_or_else(|| CoreError::Other(format!("no gradient for {name}")))
    };
    assert_eq!(g("item_emb_proj.bias")?.to_vec1::<f32>()?, [4.0, 4.0, 4.0]);
    assert_eq!(
        g("item_net_blocks.0.ids_emb.weight")?.to_vec2::<f32>()?,
        [[0.0, 0.0], [2.0, 0.0], [2.0, 0.0], [2.0, 0.0]]
    );
    Ok(())
}

#[test]
fn default_width_is_16_and_projection_init_is_rectools() -> Result<()> {
    let env = env(256, DatasetSchema::new(99, &["PAD"]))?;
    let kw = AlbertSumConstructorKwargs::default();
    let net = AlbertSumConstructor::new(&env.ctx(5), &types(&[IDS]), &kw)?;
    assert_eq!(net.emb_factors(), 16);
    assert_eq!(net.n_blocks(), 1);
    build(&env, &[IDS], Value::Null)?;
    assert_eq!(
        env.param("item_net_blocks.0.ids_emb.weight")?.dims(),
        &[100, 16]
    );
    // Xavier-normal weight: var 2 / (16 + 256); torch-default bias: U(±1/√16).
    let w = flat(&env.param("item_emb_proj.weight")?)?;
    let var = w.iter().map(|v| (v * v) as f64).sum::<f64>() / w.len() as f64;
    assert!((var / (2.0 / 272.0) - 1.0).abs() < 0.06, "var {var}");
    let b = flat(&env.param("item_emb_proj.bias")?)?;
    assert!(b.iter().all(|v| v.abs() <= 0.25) && b.iter().any(|v| v.abs() > 0.1));
    Ok(())
}

#[test]
fn rejects_unknown_kwargs_and_a_zero_width() -> Result<()> {
    let env = env(8, DatasetSchema::new(5, &["PAD"]))?;
    let err = build(&env, &[IDS], json!({"embedding_size": 4}))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("embedding_size") && err.contains("emb_factors"),
        "{err}"
    );
    let err = build(&env, &[IDS], json!({"emb_factors": 0}))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("emb_factors (0)"), "{err}");
    Ok(())
}
