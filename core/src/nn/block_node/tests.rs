//! The block nodes, run on the CPU under a parameter-gradient scope, against the composed blocks
//! they stand for: outputs to 1e-5, the input's and every parameter's gradient to 1e-4, with
//! padding, causal and bidirectional masks, dropout on and off (both draw the same masks from the
//! same stream), and a block used twice (ALBERT's sharing).

use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;

use crate::{
    context::SharedRng,
    nn::{
        blocks::test_util::store,
        fused::tests::{assert_close, ids, mask_cases, run_grads, Run},
        masks, ParamGradScope, PreLNTransformerLayer, SASRecTransformerLayer,
    },
    Result,
};

const D: usize = 8;
const B: usize = 3;
const L: usize = 6;

/// `(name, bias)` of each mask case: none, causal, key padding, causal + padding.
fn biases() -> Result<Vec<(&'static str, Option<Tensor>)>> {
    Ok(mask_cases()?
        .into_iter()
        .map(|(name, m)| (name, m.attn_bias))
        .collect())
}

/// Runs `forward` on a fixed input with the stream reseeded; `scoped`: under a
/// parameter-gradient scope, which must keep every parameter out of the graph.
fn run(
    forward: &dyn Fn(&Tensor) -> Result<Tensor>,
    varmap: &VarMap,
    rng: &SharedRng,
    scoped: bool,
) -> Result<Run> {
    let xs: Vec<f32> = (0..B * L * D)
        .map(|i| ((i * 37 % 29) as f32 - 14.0) / 7.0)
        .collect();
    let x = Var::from_vec(xs, (B, L, D), &Device::Cpu)?;
    let up: Vec<f32> = (0..B * L * D).map(|i| (i as f32 * 0.77).sin()).collect();
    let up = Tensor::from_vec(up, (B, L, D), &Device::Cpu)?;
    rng.reseed(5);
    let scope = scoped.then(ParamGradScope::enter);
    let y = forward(x.as_tensor())?;
    let loss = y.mul(&up)?.sum_all()?;
    let vars = varmap.all_vars();
    let in_graph = loss
        .sorted_nodes()
        .iter()
        .filter(|t| vars.iter().any(|v| v.id() == t.id()))
        .count();
    assert_eq!(
        in_graph,
        if scoped { 0 } else { vars.len() },
        "parameters in the graph"
    );
    let grads = match scope {
        Some(scope) => scope.backward(&loss)?,
        None => loss.backward()?,
    };
    run_grads(y, &grads, x, varmap)
}

fn compare(what: &str, node: &Run, composed: &Run) {
    assert_close(&format!("{what}: output"), &node.y, &composed.y, 1e-5);
    assert_close(
        &format!("{what}: input gradient"),
        &node.dx,
        &composed.dx,
        1e-4,
    );
    assert_eq!(node.dparams.len(), composed.dparams.len(), "{what}");
    for (name, g) in &composed.dparams {
        assert_close(
            &format!("{what}: gradient of {name}"),
            &node.dparams[name],
            g,
            1e-4,
        );
    }
}

/// The collector of the scope the run opened (the block nodes are called directly here, on the
/// CPU, where the models would compose the block).
fn collector(x: &Tensor) -> Result<std::sync::Arc<crate::nn::param_grads::Collector>> {
    crate::nn::param_grads::writer(x, &[])
        .ok_or_else(|| crate::CoreError::Other("no scope open".into()))
}

#[test]
fn the_sasrec_block_node_equals_the_composed_block() -> Result<()> {
    let tm = masks::timeline_mask(&ids()?)?;
    for dropout in [0.0, 0.3] {
        let (varmap, vb) = store(11);
        let rng = SharedRng::new(0);
        let block = SASRecTransformerLayer::new(D, 2, dropout, &vb, rng.clone())?;
        for (case, bias) in biases()? {
            let bias = bias.as_ref();
            for timeline in [None, Some(&tm)] {
                let node = |x: &Tensor| -> Result<Tensor> {
                    assert!(super::usable(x, bias));
                    Ok(super::sasrec::forward_t(
                        &block,
                        x,
                        timeline,
                        bias,
                        true,
                        collector(x)?,
                    )?)
                };
                let composed = |x: &Tensor| -> Result<Tensor> {
                    let x = match timeline {
                        Some(m) => x.broadcast_mul(m)?,
                        None => x.clone(),
                    };
                    block.forward_generic_t(&x, bias, true)
                };
                let what = format!("dropout {dropout}, {case}, timeline {}", timeline.is_some());
                compare(
                    &what,
                    &run(&node, &varmap, &rng, true)?,
                    &run(&composed, &varmap, &rng, false)?,
                );
            }
        }
    }
    Ok(())
}

#[test]
fn the_preln_block_node_equals_the_composed_block() -> Result<()> {
    for dropout in [0.0, 0.3] {
        let (varmap, vb) = store(12);
        let rng = SharedRng::new(0);
        let block = PreLNTransformerLayer::new(D, 2, dropout, 4, &vb, rng.clone())?;
        for (case, bias) in biases()? {
            let bias = bias.as_ref();
            let node = |x: &Tensor| -> Result<Tensor> {
                Ok(super::preln::forward_t(
                    &block,
                    x,
                    bias,
                    true,
                    collector(x)?,
                )?)
            };
            let composed = |x: &Tensor| block.forward_generic_t(x, bias, true);
            compare(
                &format!("dropout {dropout}, {case}"),
                &run(&node, &varmap, &rng, true)?,
                &run(&composed, &varmap, &rng, false)?,
            );
        }
    }
    Ok(())
}

#[test]
fn a_block_node_used_twice_sums_its_parameter_gradients() -> Result<()> {
    // ALBERT's sharing: the same pre-LN and SASRec blocks applied twice each.
    let (varmap, vb) = store(13);
    let rng = SharedRng::new(0);
    let preln = PreLNTransformerLayer::new(D, 2, 0.3, 4, &vb.pp("p"), rng.clone())?;
    let sasrec = SASRecTransformerLayer::new(D, 2, 0.3, &vb.pp("s"), rng.clone())?;
    let bias = masks::attention_bias(&ids()?, true, true)?;
    let bias = bias.as_ref();
    let node = |x: &Tensor| -> Result<Tensor> {
        let mut y = x.clone();
        for _ in 0..2 {
            y = super::preln::forward_t(&preln, &y, bias, true, collector(&y)?)?;
            y = super::sasrec::forward_t(&sasrec, &y, None, bias, true, collector(&y)?)?;
        }
        Ok(y)
    };
    let composed = |x: &Tensor| -> Result<Tensor> {
        let mut y = x.clone();
        for _ in 0..2 {
            y = preln.forward_generic_t(&y, bias, true)?;
            y = sasrec.forward_generic_t(&y, bias, true)?;
        }
        Ok(y)
    };
    compare(
        "two of each",
        &run(&node, &varmap, &rng, true)?,
        &run(&composed, &varmap, &rng, false)?,
    );
    Ok(())
}

#[test]
fn only_attention_biases_the_op_takes_are_usable() -> Result<()> {
    let x = Tensor::zeros((B, L, D), candle_core::DType::F32, &Device::Cpu)?;
    let ok = [
        vec![1, 1, L, L],
        vec![B, 1, L, L],
        vec![B, 1, 1, L],
        vec![1, 1, 1, L],
    ];
    for dims in ok {
        let t = Tensor::zeros(dims.as_slice(), candle_core::DType::F32, &Device::Cpu)?;
        assert!(super::usable(&x, Some(&t)), "{dims:?}");
    }
    let refused = [
        vec![B, 2, L, L],
        vec![2, 1, L, L],
        vec![1, 1, L, L + 1],
        vec![L, L],
    ];
    for dims in refused {
        let t = Tensor::zeros(dims.as_slice(), candle_core::DType::F32, &Device::Cpu)?;
        assert!(!super::usable(&x, Some(&t)), "{dims:?}");
    }
    let half = x.to_dtype(candle_core::DType::F16)?;
    assert!(!super::usable(&half, None));
    // Off a CUDA device the models never take a block node, scope or not.
    let _scope = ParamGradScope::enter();
    let v = Var::from_tensor(&x)?;
    assert!(super::writer(v.as_tensor(), &[], None).is_none());
    Ok(())
}
