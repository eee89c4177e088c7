//! `AlbertLayers`: parameter counts, the group schedule the forward pass runs, padding, errors.

use std::collections::BTreeSet;

use recblocks_albert::{schedule, AlbertLayers, AlbertLayersKwargs};
use recblocks_core::{
    candle::{Device, Tensor},
    components::TransformerLayers,
    nn::{blocks::LAST_LAYER_NORM_EPS, LayerNorm, PreLNTransformerLayer, SASRecTransformerLayer},
    serde_json::{json, Value},
    DatasetSchema, ParamStore, Result,
};

use crate::util::{assert_close, flat, inputs, json_env, masks_for, Env};

const D: usize = 8;

fn env(n_blocks: usize, dropout: f64) -> Result<Env> {
    json_env(
        json!({"n_factors": D, "n_heads": 2, "n_blocks": n_blocks, "dropout_rate": dropout}),
        DatasetSchema::new(5, &["PAD"]),
    )
}

fn kwargs(groups: usize, inner: usize, layer_type: &str) -> AlbertLayersKwargs {
    AlbertLayersKwargs {
        n_hidden_groups: groups,
        n_inner_groups: inner,
        layer_type: layer_type.into(),
        ..Default::default()
    }
}

/// Builds through the registry, as assembly does.
fn build(env: &Env, kw: Value) -> Result<Box<dyn TransformerLayers>> {
    (env.registry.transformer_layers("AlbertLayers")?.build)(&env.ctx(11), &kw)
}

/// The `albert_layer_groups.{g}.albert_layers.{i}` prefixes present in the parameter map.
fn layer_prefixes(env: &Env) -> BTreeSet<String> {
    env.param_names()
        .iter()
        .filter_map(|n| {
            let parts: Vec<&str> = n.split('.').collect();
            (parts.len() > 4).then(|| parts[..4].join("."))
        })
        .collect()
}

#[test]
fn parameters_are_g_times_i_layers_whatever_n_blocks() -> Result<()> {
    let (d, m) = (D, 4usize);
    let preln = (4 + 2 * m) * d * d + (9 + m) * d; // one PreLN layer (docs/rectools.md §6)
    let sasrec = 6 * d * d + 10 * d; // one SASRec layer
    for (g, i) in [(1usize, 1usize), (2, 2), (1, 3), (3, 1)] {
        for n_blocks in [g, 2 * g, 4 * g] {
            for (layer_type, per_layer, extra) in [("PreLN", preln, 0), ("SASRec", sasrec, 2 * d)] {
                let env = env(n_blocks, 0.1)?;
                let layers = AlbertLayers::new(&env.ctx(1), &kwargs(g, i, layer_type))?;
                assert_eq!(
                    env.n_params(),
                    g * i * per_layer + extra,
                    "{g} {i} {n_blocks}"
                );
                let expected: BTreeSet<String> = (0..g)
                    .flat_map(|gi| {
                        (0..i).map(move |ii| format!("albert_layer_groups.{gi}.albert_layers.{ii}"))
                    })
                    .collect();
                assert_eq!(layer_prefixes(&env), expected);
                assert_eq!(layers.applications().len(), n_blocks * i);
                assert_eq!(
                    env.param_names()
                        .iter()
                        .any(|n| n == "last_layernorm.weight"),
                    layer_type == "SASRec"
                );
            }
        }
    }
    let env = env(2, 0.1)?;
    build(&env, json!({"n_hidden_groups": 2, "n_inner_groups": 2}))?;
    for name in [
        "albert_layer_groups.1.albert_layers.1.multi_head_attn.q_proj.weight",
        "albert_layer_groups.0.albert_layers.1.feed_forward.ff_linear_1.weight",
        "albert_layer_groups.1.albert_layers.0.layer_norm_2.bias",
    ] {
        env.param(name)?;
    }
    Ok(())
}

#[test]
fn forward_runs_the_hf_group_schedule() -> Result<()> {
    let env = env(4, 0.0)?;
    let layers = AlbertLayers::new(&env.ctx(1), &kwargs(2, 2, "PreLN"))?;
    let (ids, x) = inputs(D)?;
    let mut seen = Vec::new();
    layers.forward_traced(&x, &masks_for(&ids, false, true)?, false, &mut |g, i| {
        seen.push((g, i))
    })?;
    let expected = [
        (0, 0),
        (0, 1),
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
        (1, 0),
        (1, 1),
    ];
    assert_eq!(seen, expected);
    assert_eq!(schedule(4, 2, 2), expected);
    assert_eq!(layers.applications(), expected);
    Ok(())
}

/// Applies core blocks read from `env`'s parameters in the given order (SASRec: timeline mask
/// before each application and after the last, then `last_layernorm`).
fn manual(env: &Env, order: &[(usize, usize)], sasrec: bool) -> Result<Vec<f32>> {
    let vb = ParamStore::new(env.varmap.clone(), 0).into_var_builder(&Device::Cpu);
    let (ids, mut x) = inputs(D)?;
    let m = masks_for(&ids, sasrec, !sasrec)?;
    for (g, i) in order {
        let lvb = vb.pp(format!("albert_layer_groups.{g}.albert_layers.{i}"));
        if sasrec {
            x = x.broadcast_mul(&m.timeline_mask)?;
            let block = SASRecTransformerLayer::new(D, 2, 0.0, &lvb, env.rng.clone())?;
            x = block.forward_t(&x, m.attn_bias.as_ref(), false)?;
        } else {
            let block = PreLNTransformerLayer::new(D, 2, 0.0, 4, &lvb, env.rng.clone())?;
            x = block.forward_t(&x, m.attn_bias.as_ref(), false)?;
        }
    }
    if sasrec {
        let ln = LayerNorm::new(D, LAST_LAYER_NORM_EPS, &vb.pp("last_layernorm"))?;
        x = ln.forward(&x.broadcast_mul(&m.timeline_mask)?)?;
    }
    flat(&x)
}

#[test]
fn forward_last_is_the_last_position_of_the_full_pass() -> Result<()> {
    // The (4, 2, 2) schedule for both layer types, every mask combination, dropout on.
    for layer_type in ["PreLN", "SASRec"] {
        for (causal, key_padding) in [(true, false), (false, true), (true, true), (false, false)] {
            let env = env(4, 0.3)?;
            let layers = build(
                &env,
                json!({"n_hidden_groups": 2, "n_inner_groups": 2, "layer_type": layer_type}),
            )?;
            let (ids, x) = inputs(D)?;
            let m = masks_for(&ids, causal, key_padding)?;
            let full = layers.forward_t(&x, &m, false)?;
            let want = flat(&full.narrow(1, 3, 1)?)?;
            let got = layers.forward_last(&x, &m)?;
            assert_eq!(got.dims(), &[2, 1, D]);
            assert_close(&flat(&got)?, &want, 1e-5);
        }
    }
    Ok(())
}

#[test]
fn output_equals_the_layers_applied_in_schedule_order() -> Result<()> {
    for (layer_type, sasrec) in [("PreLN", false), ("SASRec", true)] {
        let env = env(4, 0.0)?;
        let layers = build(
            &env,
            json!({"n_hidden_groups": 2, "n_inner_groups": 2, "layer_type": layer_type}),
        )?;
        if sasrec {
            let v = Tensor::new(&[0.5f32, 1.5, -1.0, 2.0, 0.3, 0.7, 1.1, -0.2], &Device::Cpu)?;
            env.set_param("last_layernorm.weight", &v)?;
        }
        let (ids, x) = inputs(D)?;
        let got = flat(&layers.forward_t(&x, &masks_for(&ids, sasrec, !sasrec)?, false)?)?;
        assert_close(&got, &manual(&env, &schedule(4, 2, 2), sasrec)?, 1e-5);
        // The guide's indexing (layer = step, each run n_inner_groups times) gives another output.
        let guide: Vec<(usize, usize)> = (0..4).flat_map(|s| [(s / 2, s % 2); 2]).collect();
        let other = manual(&env, &guide, sasrec)?;
        assert!(got.iter().zip(&other).any(|(a, b)| (a - b).abs() > 1e-3));
    }
    Ok(())
}

#[test]
fn preln_type_keeps_padded_keys_out_of_real_positions() -> Result<()> {
    // As PreLNTransformerLayers under BERT4Rec's key padding mask: whatever sits at padded
    // positions never reaches real ones.
    let env = env(2, 0.0)?;
    let layers = build(&env, json!({"n_hidden_groups": 1, "n_inner_groups": 2}))?;
    let (ids, x) = inputs(D)?;
    let m = masks_for(&ids, false, true)?;
    let out = layers.forward_t(&x, &m, false)?.to_vec3::<f32>()?;
    let bump = Tensor::new(
        &[[[5f32], [5.], [0.], [0.]], [[0.], [0.], [0.], [0.]]],
        &Device::Cpu,
    )?;
    let out2 = layers
        .forward_t(&x.broadcast_add(&bump)?, &m, false)?
        .to_vec3::<f32>()?;
    assert_eq!(out[0][2], out2[0][2]);
    assert_eq!(out[0][3], out2[0][3]);
    assert_eq!(out[1], out2[1]);
    assert_ne!(out[0][0], out2[0][0]);
    Ok(())
}

#[test]
fn sasrec_type_masks_the_timeline_and_ends_with_the_final_norm() -> Result<()> {
    // As SASRecTransformerLayers: padded positions are zeroed before the final norm, so they
    // leave as its bias, and what sat there never matters (causal mask only, no key padding).
    let env = env(2, 0.0)?;
    let layers = build(
        &env,
        json!({"n_hidden_groups": 2, "n_inner_groups": 1, "layer_type": "SASRec"}),
    )?;
    let beta = [0.1f32, -0.2, 0.3, -0.4, 0.5, -0.6, 0.7, -0.8];
    env.set_param("last_layernorm.bias", &Tensor::new(&beta, &Device::Cpu)?)?;
    let (ids, x) = inputs(D)?;
    let m = masks_for(&ids, true, false)?;
    let out = layers.forward_t(&x, &m, false)?.to_vec3::<f32>()?;
    assert_eq!(out[0][0], beta);
    assert_eq!(out[0][1], beta);
    assert_ne!(out[0][2], beta);
    let bump = Tensor::new(
        &[[[5f32], [5.], [0.], [0.]], [[0.], [0.], [0.], [0.]]],
        &Device::Cpu,
    )?;
    let out2 = layers
        .forward_t(&x.broadcast_add(&bump)?, &m, false)?
        .to_vec3::<f32>()?;
    assert_eq!(out, out2);
    Ok(())
}

#[test]
fn dropout_acts_only_in_training() -> Result<()> {
    let env = env(2, 0.5)?;
    let layers = build(&env, json!({"n_hidden_groups": 1}))?;
    let (ids, x) = inputs(D)?;
    let m = masks_for(&ids, false, true)?;
    let e1 = flat(&layers.forward_t(&x, &m, false)?)?;
    let e2 = flat(&layers.forward_t(&x, &m, false)?)?;
    let t = flat(&layers.forward_t(&x, &m, true)?)?;
    assert_eq!(e1, e2);
    assert_ne!(e1, t);
    Ok(())
}

fn build_err(n_blocks: usize, kw: Value) -> Result<String> {
    let env = env(n_blocks, 0.1)?;
    Ok(build(&env, kw)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default())
}

#[test]
fn rejects_bad_configs_with_clear_errors() -> Result<()> {
    let err = build_err(3, json!({"n_hidden_groups": 2}))?;
    assert!(
        err.contains("n_blocks (3)") && err.contains("n_hidden_groups (2)"),
        "{err}"
    );
    let err = build_err(2, json!({"n_hidden_groups": 4}))?;
    assert!(
        err.contains("n_blocks (2)") && err.contains("n_hidden_groups (4)"),
        "{err}"
    );
    let err = build_err(0, Value::Null)?;
    assert!(err.contains("n_blocks (0)"), "{err}");
    let err = build_err(2, json!({"n_inner_groups": 0}))?;
    assert!(err.contains("n_inner_groups (0)"), "{err}");
    let err = build_err(2, json!({"ff_factors_multiplier": 0}))?;
    assert!(err.contains("ff_factors_multiplier"), "{err}");
    let err = build_err(2, json!({"n_groups": 2}))?;
    assert!(
        err.contains("n_groups") && err.contains("n_hidden_groups"),
        "{err}"
    );
    let err = build_err(2, json!({"layer_type": "PostLN"}))?;
    assert!(
        err.contains("PostLN") && err.contains("\"PreLN\"") && err.contains("\"SASRec\""),
        "{err}"
    );
    Ok(())
}
