//! Fused blocks against the generic blocks they replace: outputs, the input's gradient and every
//! parameter's gradient, with padding, causal and bidirectional masks, and dropout on (both paths
//! draw the same masks from the same stream).

use std::collections::BTreeMap;

use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;

use crate::{
    components::AttentionMasks,
    context::SharedRng,
    nn::{blocks::test_util::store, masks},
    Result,
};

/// A block's forward pass taking `train`: `(x, attention bias, train) -> y`.
pub(crate) type Forward<'a> = &'a dyn Fn(&Tensor, Option<&Tensor>, bool) -> Result<Tensor>;

/// Output, input gradient and parameter gradients (by name) of `sum(y ⊙ up)`.
pub(crate) struct Run {
    pub y: Vec<f32>,
    pub dx: Vec<f32>,
    pub dparams: BTreeMap<String, Vec<f32>>,
}

/// Sessions `[B = 3, L = 6]` with left padding (one session fully real, one mostly padding).
pub(crate) fn ids() -> Result<Tensor> {
    Ok(Tensor::new(
        &[
            [0u32, 0, 3, 4, 5, 6],
            [1, 2, 3, 4, 5, 6],
            [0, 0, 0, 0, 2, 7],
        ],
        &Device::Cpu,
    )?)
}

/// The masks of each case: bidirectional without padding, causal, key padding (bidirectional),
/// and RecTools' merged causal + padding mask.
pub(crate) fn mask_cases() -> Result<Vec<(&'static str, AttentionMasks)>> {
    let ids = ids()?;
    let mut out = Vec::new();
    for (name, causal, key_padding) in [
        ("none", false, false),
        ("causal", true, false),
        ("key padding", false, true),
        ("causal + padding", true, true),
    ] {
        out.push((
            name,
            AttentionMasks {
                timeline_mask: masks::timeline_mask(&ids)?,
                attn_bias: masks::attention_bias(&ids, causal, key_padding)?,
            },
        ));
    }
    Ok(out)
}

/// Runs `forward` in training mode on a fixed input with the stream reseeded to `seed`.
pub(crate) fn run(
    forward: Forward,
    varmap: &VarMap,
    rng: &SharedRng,
    bias: Option<&Tensor>,
    d: usize,
    seed: u64,
) -> Result<Run> {
    let (b, l) = (3, 6);
    let xs: Vec<f32> = (0..b * l * d)
        .map(|i| ((i * 37 % 29) as f32 - 14.0) / 7.0)
        .collect();
    let x = Var::from_vec(xs, (b, l, d), &Device::Cpu)?;
    let up: Vec<f32> = (0..b * l * d).map(|i| (i as f32 * 0.77).sin()).collect();
    let up = Tensor::from_vec(up, (b, l, d), &Device::Cpu)?;
    rng.reseed(seed);
    let y = forward(x.as_tensor(), bias, true)?;
    let grads = y.mul(&up)?.sum_all()?.backward()?;
    run_grads(y, &grads, x, varmap)
}

/// The output, the input gradient and every parameter's gradient of a run.
pub(crate) fn run_grads(
    y: Tensor,
    grads: &candle_core::backprop::GradStore,
    x: Var,
    varmap: &VarMap,
) -> Result<Run> {
    let get = |t: &Tensor| -> Result<Vec<f32>> {
        Ok(grads
            .get(t)
            .ok_or_else(|| crate::CoreError::Other("no gradient".into()))?
            .flatten_all()?
            .to_vec1::<f32>()?)
    };
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let mut dparams = BTreeMap::new();
    for (name, var) in data.iter() {
        dparams.insert(name.clone(), get(var.as_tensor())?);
    }
    Ok(Run {
        y: y.flatten_all()?.to_vec1::<f32>()?,
        dx: get(x.as_tensor())?,
        dparams,
    })
}

/// Asserts `a` and `b` agree: `|a − b| ≤ tol · max(1, |b|)` element-wise.
pub(crate) fn assert_close(what: &str, a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * y.abs().max(1.0),
            "{what}[{i}]: fused {x} vs generic {y}"
        );
    }
}

/// Builds a block from its parameters' builder, its dropout rate and its stream.
pub(crate) type Build<'a> =
    &'a dyn Fn(&candle_nn::VarBuilder, f64, SharedRng) -> Result<Box<dyn BlockPaths>>;

/// Compares the two paths of a block on every mask case, with and without dropout.
pub(crate) fn compare_paths(build: Build, d: usize) -> Result<()> {
    for dropout in [0.0, 0.3] {
        let (varmap, vb) = store(11);
        let rng = SharedRng::new(0);
        let block = build(&vb, dropout, rng.clone())?;
        for (case, masks) in mask_cases()? {
            let bias = masks.attn_bias.as_ref();
            let fused = run(&|x, b, t| block.fused(x, b, t), &varmap, &rng, bias, d, 5)?;
            let generic = run(&|x, b, t| block.generic(x, b, t), &varmap, &rng, bias, d, 5)?;
            let what = format!("dropout {dropout}, {case}");
            assert_close(&format!("{what}: output"), &fused.y, &generic.y, 1e-5);
            assert_close(
                &format!("{what}: input gradient"),
                &fused.dx,
                &generic.dx,
                1e-4,
            );
            assert_eq!(fused.dparams.len(), generic.dparams.len());
            for (name, g) in &generic.dparams {
                assert_close(
                    &format!("{what}: gradient of {name}"),
                    &fused.dparams[name],
                    g,
                    1e-4,
                );
            }
            // Eval mode too.
            let x = Tensor::new(
                (0..3 * 6 * d)
                    .map(|i| (i as f32 * 0.3).cos())
                    .collect::<Vec<_>>(),
                &Device::Cpu,
            )?
            .reshape((3, 6, d))?;
            let ye = block
                .fused(&x, bias, false)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let yg = block
                .generic(&x, bias, false)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            assert_close(&format!("{what}: eval output"), &ye, &yg, 1e-5);
        }
    }
    Ok(())
}

/// A block with both paths.
pub(crate) trait BlockPaths {
    fn fused(&self, x: &Tensor, bias: Option<&Tensor>, train: bool) -> Result<Tensor>;
    fn generic(&self, x: &Tensor, bias: Option<&Tensor>, train: bool) -> Result<Tensor>;
}

mod sasrec {
    use super::*;
    use crate::nn::blocks::SASRecTransformerLayer;

    impl BlockPaths for SASRecTransformerLayer {
        fn fused(&self, x: &Tensor, bias: Option<&Tensor>, train: bool) -> Result<Tensor> {
            crate::nn::fused::sasrec::forward_t(self, x, None, bias, train)
        }
        fn generic(&self, x: &Tensor, bias: Option<&Tensor>, train: bool) -> Result<Tensor> {
            self.forward_generic_t(x, bias, train)
        }
    }

    /// The block applied as the stack applies it: input times the timeline mask.
    struct Masked(SASRecTransformerLayer, Tensor);

    impl BlockPaths for Masked {
        fn fused(&self, x: &Tensor, bias: Option<&Tensor>, train: bool) -> Result<Tensor> {
            crate::nn::fused::sasrec::forward_t(&self.0, x, Some(&self.1), bias, train)
        }
        fn generic(&self, x: &Tensor, bias: Option<&Tensor>, train: bool) -> Result<Tensor> {
            self.0
                .forward_generic_t(&x.broadcast_mul(&self.1)?, bias, train)
        }
    }

    #[test]
    fn fused_sasrec_block_with_the_timeline_mask_equals_masking_then_the_generic_block(
    ) -> Result<()> {
        compare_paths(
            &|vb, p, rng| {
                let tm = masks::timeline_mask(&ids()?)?;
                Ok(Box::new(Masked(
                    SASRecTransformerLayer::new(8, 2, p, vb, rng)?,
                    tm,
                )))
            },
            8,
        )
    }

    #[test]
    fn a_block_that_turns_finite_inputs_into_nan_is_named() -> Result<()> {
        let (varmap, vb) = store(3);
        let block = SASRecTransformerLayer::new(8, 2, 0.0, &vb, SharedRng::new(1))?;
        crate::nn::blocks::test_util::set(
            &varmap,
            "feed_forward.ff_linear_2.bias",
            &Tensor::new(&[f32::NAN; 8], &Device::Cpu)?,
        )?;
        let x = Tensor::ones((2, 3, 8), candle_core::DType::F32, &Device::Cpu)?;
        let _ = crate::nn::fused::take_non_finite_origin();
        crate::nn::fused::sasrec::forward_t(&block, &x, None, None, true)?;
        let origin = crate::nn::fused::take_non_finite_origin();
        assert!(
            origin
                .as_deref()
                .is_some_and(|o| o.contains("SASRec block")),
            "{origin:?}"
        );
        // A NaN fed in is not this block's doing.
        let nan = Tensor::new(&[f32::NAN; 48], &Device::Cpu)?.reshape((2, 3, 8))?;
        crate::nn::fused::sasrec::forward_t(&block, &nan, None, None, true)?;
        assert_eq!(crate::nn::fused::take_non_finite_origin(), None);
        // Per thread: a note made here is not another thread's to take.
        crate::nn::fused::sasrec::forward_t(&block, &x, None, None, true)?;
        let elsewhere = std::thread::spawn(crate::nn::fused::take_non_finite_origin)
            .join()
            .map_err(|_| candle_core::Error::Msg("thread panicked".into()))?;
        assert_eq!(elsewhere, None);
        assert!(crate::nn::fused::take_non_finite_origin().is_some());
        Ok(())
    }

    #[test]
    fn fused_sasrec_block_equals_the_generic_block() -> Result<()> {
        compare_paths(
            &|vb, p, rng| Ok(Box::new(SASRecTransformerLayer::new(8, 2, p, vb, rng)?)),
            8,
        )
    }
}

mod preln {
    use super::*;
    use crate::nn::blocks::PreLNTransformerLayer;

    impl BlockPaths for PreLNTransformerLayer {
        fn fused(&self, x: &Tensor, bias: Option<&Tensor>, train: bool) -> Result<Tensor> {
            crate::nn::fused::preln::forward_t(self, x, bias, train)
        }
        fn generic(&self, x: &Tensor, bias: Option<&Tensor>, train: bool) -> Result<Tensor> {
            self.forward_generic_t(x, bias, train)
        }
    }

    #[test]
    fn fused_preln_block_equals_the_generic_block() -> Result<()> {
        compare_paths(
            &|vb, p, rng| Ok(Box::new(PreLNTransformerLayer::new(8, 2, p, 4, vb, rng)?)),
            8,
        )
    }
}

mod ligr {
    use super::*;
    use crate::nn::blocks::{LiGRActivation, LiGRLayer};

    impl BlockPaths for LiGRLayer {
        fn fused(&self, x: &Tensor, bias: Option<&Tensor>, train: bool) -> Result<Tensor> {
            crate::nn::fused::ligr::forward_t(self, x, bias, train)
        }
        fn generic(&self, x: &Tensor, bias: Option<&Tensor>, train: bool) -> Result<Tensor> {
            self.forward_generic_t(x, bias, train)
        }
    }

    #[test]
    fn fused_ligr_block_equals_the_generic_block_for_each_feed_forward() -> Result<()> {
        for (act, bias_in_ff) in [
            (LiGRActivation::Swiglu, false),
            (LiGRActivation::Swiglu, true),
            (LiGRActivation::Relu, true),
            (LiGRActivation::Gelu, false),
        ] {
            compare_paths(
                &|vb, p, rng| {
                    Ok(Box::new(LiGRLayer::new(
                        8, 2, p, 2, act, bias_in_ff, vb, rng,
                    )?))
                },
                8,
            )?;
        }
        Ok(())
    }
}

/// After one training step of a fused block, the next takes every large buffer it keeps to
/// itself (activations kept for the backward pass, products, gradients) from the workspace: the
/// only fresh allocations replace the buffers that became candle's tensors (the block's output and
/// its input's gradient).
#[test]
fn a_second_training_step_allocates_no_large_buffer() -> Result<()> {
    use crate::nn::{blocks::SASRecTransformerLayer, workspace};
    // Lengths no other test uses (the workspace is shared by the tests' threads): B·L·d = 6,216.
    let (b, l, d) = (37, 7, 24);
    let (varmap, vb) = store(3);
    let _ = varmap;
    let rng = SharedRng::new(1);
    let block = SASRecTransformerLayer::new(d, 2, 0.3, &vb, rng)?;
    let xs: Vec<f32> = (0..b * l * d).map(|i| (i as f32 * 0.37).sin()).collect();
    let x = Var::from_vec(xs, (b, l, d), &Device::Cpu)?;
    let step = || -> Result<()> {
        let y = crate::nn::fused::sasrec::forward_t(&block, x.as_tensor(), None, None, true)?;
        let grads = y.sqr()?.sum_all()?.backward()?;
        assert!(grads.get(x.as_tensor()).is_some());
        Ok(())
    };
    step()?;
    let fresh = workspace::fresh_allocations_on_this_thread();
    let escaped = workspace::escaped_on_this_thread();
    step()?;
    step()?;
    let fresh = workspace::fresh_allocations_on_this_thread() - fresh;
    let escaped = workspace::escaped_on_this_thread() - escaped;
    // Two steps, each handing candle an output and an input gradient.
    assert_eq!(escaped, 4);
    assert!(
        fresh <= escaped,
        "two steady-state steps allocated {fresh} large buffers fresh, {escaped} of which \
         replace tensors handed to candle"
    );
    Ok(())
}

/// Under a trainer's parameter-gradient scope a fused block is a node over its input alone and
/// writes its parameters' gradients to the scope (`nn::param_grads`): the same gradients as
/// candle's routing through the concatenated parameters, bit for bit, for each block, and for a
/// block applied twice (ALBERT's sharing: the two writes are summed in candle's order).
#[test]
fn blocks_writing_parameter_gradients_to_a_scope_equal_candles_routing_bit_for_bit() -> Result<()> {
    use crate::nn::{
        blocks::{LiGRActivation, LiGRLayer, PreLNTransformerLayer, SASRecTransformerLayer},
        ParamGradScope,
    };
    let d = 8;
    let (b, l) = (3, 6);
    let bias = mask_cases()?
        .into_iter()
        .find(|(name, _)| *name == "causal + padding")
        .and_then(|(_, m)| m.attn_bias)
        .ok_or_else(|| crate::CoreError::Other("no mask case".into()))?;
    let tm = masks::timeline_mask(&ids()?)?;
    let (varmap, vb) = store(17);
    let rng = SharedRng::new(0);
    let sasrec = SASRecTransformerLayer::new(d, 2, 0.3, &vb.pp("s"), rng.clone())?;
    let preln = PreLNTransformerLayer::new(d, 2, 0.3, 4, &vb.pp("p"), rng.clone())?;
    let ligr = LiGRLayer::new(
        d,
        2,
        0.3,
        2,
        LiGRActivation::Swiglu,
        true,
        &vb.pp("l"),
        rng.clone(),
    )?;
    let stack = |x: &Tensor| -> Result<Tensor> {
        let y = crate::nn::fused::sasrec::forward_t(&sasrec, x, Some(&tm), Some(&bias), true)?;
        let y = crate::nn::fused::preln::forward_t(&preln, &y, Some(&bias), true)?;
        let y = crate::nn::fused::ligr::forward_t(&ligr, &y, Some(&bias), true)?;
        // The SASRec block again: its parameters get two gradients.
        crate::nn::fused::sasrec::forward_t(&sasrec, &y, Some(&tm), Some(&bias), true)
    };
    let xs: Vec<f32> = (0..b * l * d).map(|i| (i as f32 * 0.61).cos()).collect();
    let up: Vec<f32> = (0..b * l * d).map(|i| (i as f32 * 0.77).sin()).collect();
    let up = Tensor::from_vec(up, (b, l, d), &Device::Cpu)?;
    let params: Vec<candle_core::TensorId> = varmap.all_vars().iter().map(|v| v.id()).collect();
    let mut runs = Vec::new();
    for scoped in [false, true] {
        let x = Var::from_vec(xs.clone(), (b, l, d), &Device::Cpu)?;
        rng.reseed(5);
        let scope = scoped.then(ParamGradScope::enter);
        let y = stack(x.as_tensor())?;
        let loss = y.mul(&up)?.sum_all()?;
        let in_graph = loss
            .sorted_nodes()
            .iter()
            .filter(|t| params.contains(&t.id()))
            .count();
        // Candle's routing reaches every parameter through the graph; the scope's, none.
        assert_eq!(
            in_graph,
            if scoped { 0 } else { params.len() },
            "scoped {scoped}"
        );
        let grads = match scope {
            Some(scope) => scope.backward(&loss)?,
            None => loss.backward()?,
        };
        runs.push(run_grads(y, &grads, x, &varmap)?);
    }
    let (plain, scoped) = (&runs[0], &runs[1]);
    assert_eq!(plain.y, scoped.y);
    assert_eq!(plain.dx, scoped.dx);
    assert_eq!(plain.dparams.len(), params.len());
    for (name, g) in &plain.dparams {
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&scoped.dparams[name]), bits(g), "gradient of {name}");
    }
    Ok(())
}
