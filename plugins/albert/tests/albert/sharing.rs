//! Sharing is real: one ALBERT layer applied n times is the wrapped RecTools stack with n
//! identical copies, in outputs and in gradients (a shared weight's gradient is the sum of the
//! copies' gradients).

use recblocks_core::{
    candle::{backprop::GradStore, Device, Tensor},
    components::TransformerLayers,
    serde_json::{json, Value},
    CoreError, DatasetSchema, Result,
};

use crate::util::{assert_close, flat, inputs, json_env, masks_for, probe_loss, Env};

const D: usize = 8;
const SHARED: &str = "albert_layer_groups.0.albert_layers.0.";

/// One environment per side, same spec and random stream seed.
fn env(n_blocks: usize, dropout: f64) -> Result<Env> {
    json_env(
        json!({"n_factors": D, "n_heads": 2, "n_blocks": n_blocks, "dropout_rate": dropout}),
        DatasetSchema::new(5, &["PAD"]),
    )
}

fn build(env: &Env, name: &str, kw: Value) -> Result<Box<dyn TransformerLayers>> {
    (env.registry.transformer_layers(name)?.build)(&env.ctx(5), &kw)
}

/// The ALBERT stack with G = I = 1 and the wrapped RecTools stack with `n_blocks` copies of
/// the shared layer's weights (and the same `last_layernorm`).
struct Pair {
    albert_env: Env,
    albert: Box<dyn TransformerLayers>,
    stack_env: Env,
    stack: Box<dyn TransformerLayers>,
    sasrec: bool,
}

fn pair(layer_type: &str, n_blocks: usize, dropout: f64) -> Result<Pair> {
    let sasrec = layer_type == "SASRec";
    let albert_env = env(n_blocks, dropout)?;
    let albert = build(
        &albert_env,
        "AlbertLayers",
        json!({"n_hidden_groups": 1, "n_inner_groups": 1, "layer_type": layer_type}),
    )?;
    let stack_env = env(n_blocks, dropout)?;
    let stack = if sasrec {
        build(&stack_env, "SASRecTransformerLayers", Value::Null)?
    } else {
        build(
            &stack_env,
            "PreLNTransformerLayers",
            json!({"ff_factors_multiplier": 4}),
        )?
    };
    // Non-trivial norms, so the copies' norm gradients are distinct and the final norm matters.
    for name in albert_env.param_names() {
        if name.contains("norm") {
            let p = albert_env.param(&name)?;
            albert_env.set_param(&name, &(p + flat_noise(D)?)?)?;
        }
    }
    albert_env.copy_params_to(&stack_env, |name| match name.strip_prefix(SHARED) {
        Some(rest) => (0..n_blocks)
            .map(|k| format!("transformer_blocks.{k}.{rest}"))
            .collect(),
        None => vec![name.to_string()],
    })?;
    // The stack holds n_blocks copies of the shared layer (and the same final norm).
    let final_norm = if sasrec { 2 * D } else { 0 };
    assert_eq!(
        stack_env.n_params(),
        n_blocks * (albert_env.n_params() - final_norm) + final_norm
    );
    Ok(Pair {
        albert_env,
        albert,
        stack_env,
        stack,
        sasrec,
    })
}

/// A small deterministic perturbation of width `n`.
fn flat_noise(n: usize) -> Result<Tensor> {
    let t = Tensor::arange(0f32, n as f32, &Device::Cpu)?;
    Ok(t.affine(1.3, 0.2)?.sin()?.affine(0.3, 0.0)?)
}

#[test]
fn one_block_equals_the_wrapped_stack_in_eval_and_training() -> Result<()> {
    for layer_type in ["PreLN", "SASRec"] {
        let p = pair(layer_type, 1, 0.3)?;
        let (ids, x) = inputs(D)?;
        // SASRec: causal mask only, so padding is handled by timeline masking alone.
        let m = masks_for(&ids, p.sasrec, !p.sasrec)?;
        let a = flat(&p.albert.forward_t(&x, &m, false)?)?;
        let b = flat(&p.stack.forward_t(&x, &m, false)?)?;
        assert_close(&a, &b, 1e-6);
        // Same random stream seed and the same dropouts in the same order: the same masks.
        let a = flat(&p.albert.forward_t(&x, &m, true)?)?;
        let b = flat(&p.stack.forward_t(&x, &m, true)?)?;
        assert_close(&a, &b, 1e-6);
    }
    Ok(())
}

#[test]
fn shared_gradient_is_the_sum_over_unshared_copies() -> Result<()> {
    let n_blocks = 4;
    for layer_type in ["PreLN", "SASRec"] {
        let p = pair(layer_type, n_blocks, 0.0)?;
        let (ids, x) = inputs(D)?;
        let m = masks_for(&ids, p.sasrec, !p.sasrec)?;
        let out_a = p.albert.forward_t(&x, &m, false)?;
        let out_b = p.stack.forward_t(&x, &m, false)?;
        assert_close(&flat(&out_a)?, &flat(&out_b)?, 1e-5);
        let grads_a = probe_loss(&out_a)?.backward()?;
        let grads_b = probe_loss(&out_b)?.backward()?;
        let grad = |env: &Env, grads: &GradStore, name: &str| {
            let p = env.param(name)?;
            grads
                .get(&p)
                .map(|g| g.flatten_all().and_then(|g| g.to_vec1::<f32>()))
                .transpose()?
                .ok_or_else(|| CoreError::Other(format!("no gradient for {name}")))
        };
        let mut checked = 0;
        for name in p.albert_env.param_names() {
            let shared = grad(&p.albert_env, &grads_a, &name)?;
            let sum = match name.strip_prefix(SHARED) {
                Some(rest) => {
                    let mut sum = vec![0f32; shared.len()];
                    for k in 0..n_blocks {
                        let copy = grad(
                            &p.stack_env,
                            &grads_b,
                            &format!("transformer_blocks.{k}.{rest}"),
                        )?;
                        for (s, c) in sum.iter_mut().zip(&copy) {
                            *s += c;
                        }
                    }
                    sum
                }
                None => grad(&p.stack_env, &grads_b, &name)?,
            };
            assert_close(&shared, &sum, 1e-5);
            checked += 1;
        }
        assert_eq!(checked, p.albert_env.param_names().len());
        // The sum is not dominated by one copy: copy 0 alone differs from the shared gradient.
        let w = format!("{SHARED}multi_head_attn.q_proj.weight");
        let one = grad(
            &p.stack_env,
            &grads_b,
            "transformer_blocks.0.multi_head_attn.q_proj.weight",
        )?;
        let shared = grad(&p.albert_env, &grads_a, &w)?;
        assert!(shared.iter().zip(&one).any(|(a, b)| (a - b).abs() > 1e-4));
    }
    Ok(())
}
