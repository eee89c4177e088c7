//! The checks that catch silent errors fail on deliberately broken components, each one RecTools'
//! SASRec stack plus one defect, and name the component, the check and the worst position or
//! parameter:
//! - `FutureLeakingLayers` drops the attention mask (the causal mask is ignored);
//! - `WrongBackwardLayers` passes the output through a custom op whose backward is 1.5× too large;
//! - `EvalSkipsNormLayers` normalises its input in training and skips that layer norm in eval;
//! - `WrongSmallGradientLayers` (not SASRec: small outputs, so little f32 round-off) adds a
//!   parameter's small contribution through the 1.5× backward: derivatives of about 1e-3 off by
//!   about 5e-4, which an absolute tolerance of 2e-3 let through;
//! - `WigglingLayers` adds `1e-3 · sin(1e4 · w)` to the SASRec stack's output: no finite difference
//!   at the check's steps can follow `w`'s derivative, so all its comparisons are inconclusive;
//! - `StaticShapesUnmaskedLayers` drops the timeline mask when `nn::capture::static_shapes()`
//!   holds (a "fixed-shape path" that computes something else at padded positions).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use recblocks_conformance::{check_component, Outcome, Report};
use recblocks_core::{
    candle::{CpuStorage, CustomOp1, Layout, Shape, Tensor},
    candle_nn::Init,
    components::transformer_layers::{AttentionMasks, TransformerLayers},
    nn::LayerNorm,
    serde_json::Value,
    BuildContext, ComponentKind, Registry, Result,
};

use recblocks_rectools as _;

/// RecTools' SASRec stack, built in the fixture's own parameter scope.
fn sasrec(ctx: &BuildContext<'_>) -> Result<Box<dyn TransformerLayers>> {
    (ctx.registry
        .transformer_layers("SASRecTransformerLayers")?
        .build)(ctx, &Value::Null)
}

/// Ignores every attention mask: each position attends to all positions.
struct FutureLeakingLayers(Box<dyn TransformerLayers>);

impl TransformerLayers for FutureLeakingLayers {
    fn forward_t(&self, seqs: &Tensor, masks: &AttentionMasks, train: bool) -> Result<Tensor> {
        let unmasked = AttentionMasks {
            timeline_mask: masks.timeline_mask.clone(),
            attn_bias: None,
        };
        self.0.forward_t(seqs, &unmasked, train)
    }
}

fn build_leaking(ctx: &BuildContext<'_>, _kwargs: &Value) -> Result<Box<dyn TransformerLayers>> {
    Ok(Box::new(FutureLeakingLayers(sasrec(ctx)?)))
}

/// Identity forward; backward returns 1.5 × the incoming gradient.
struct WrongBackwardIdentity;

impl CustomOp1 for WrongBackwardIdentity {
    fn name(&self) -> &'static str {
        "wrong-backward-identity"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> recblocks_core::candle::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            recblocks_core::candle::bail!("f32 only")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            recblocks_core::candle::bail!("contiguous input only")
        };
        Ok((
            CpuStorage::F32(data[start..end].to_vec()),
            layout.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> recblocks_core::candle::Result<Option<Tensor>> {
        Ok(Some(grad_res.affine(1.5, 0.0)?))
    }
}

struct WrongBackwardLayers(Box<dyn TransformerLayers>);

impl TransformerLayers for WrongBackwardLayers {
    fn forward_t(&self, seqs: &Tensor, masks: &AttentionMasks, train: bool) -> Result<Tensor> {
        let out = self.0.forward_t(seqs, masks, train)?.contiguous()?;
        Ok(out.apply_op1(WrongBackwardIdentity)?)
    }
}

fn build_wrong_backward(
    ctx: &BuildContext<'_>,
    _kwargs: &Value,
) -> Result<Box<dyn TransformerLayers>> {
    Ok(Box::new(WrongBackwardLayers(sasrec(ctx)?)))
}

/// An input layer norm that the eval path forgets.
struct EvalSkipsNormLayers {
    norm: LayerNorm,
    stack: Box<dyn TransformerLayers>,
}

impl TransformerLayers for EvalSkipsNormLayers {
    fn forward_t(&self, seqs: &Tensor, masks: &AttentionMasks, train: bool) -> Result<Tensor> {
        if train {
            self.stack
                .forward_t(&self.norm.forward(seqs)?, masks, train)
        } else {
            self.stack.forward_t(seqs, masks, train)
        }
    }
}

fn build_eval_skips_norm(
    ctx: &BuildContext<'_>,
    _kwargs: &Value,
) -> Result<Box<dyn TransformerLayers>> {
    Ok(Box::new(EvalSkipsNormLayers {
        norm: LayerNorm::new(ctx.n_factors, 1e-5, &ctx.vb.pp("input_norm"))?,
        stack: sasrec(ctx)?,
    }))
}

/// `0.01 · seqs + 1e-3 · w` (`w` one value per factor), with `w` through the 1.5× backward: the
/// loss's derivatives in `w` are about 1e-3 and autograd's are half as large again.
struct WrongSmallGradientLayers {
    weight: Tensor,
}

impl TransformerLayers for WrongSmallGradientLayers {
    fn forward_t(&self, seqs: &Tensor, _masks: &AttentionMasks, _train: bool) -> Result<Tensor> {
        let wrong = self
            .weight
            .apply_op1(WrongBackwardIdentity)?
            .affine(1e-3, 0.0)?;
        Ok(seqs.affine(0.01, 0.0)?.broadcast_add(&wrong)?)
    }
}

fn build_wrong_small_gradient(
    ctx: &BuildContext<'_>,
    _kwargs: &Value,
) -> Result<Box<dyn TransformerLayers>> {
    Ok(Box::new(WrongSmallGradientLayers {
        weight: ctx
            .vb
            .get_with_hints(ctx.n_factors, "weight", Init::Const(0.3))?,
    }))
}

/// The SASRec stack plus `1e-3 · sin(1e4 · w)`: a correct gradient, but `w`'s period (6e-4) is
/// shorter than the finite differences' steps.
struct WigglingLayers {
    wiggle: Tensor,
    stack: Box<dyn TransformerLayers>,
}

impl TransformerLayers for WigglingLayers {
    fn forward_t(&self, seqs: &Tensor, masks: &AttentionMasks, train: bool) -> Result<Tensor> {
        let wiggle = self.wiggle.affine(1e4, 0.0)?.sin()?.affine(1e-3, 0.0)?;
        Ok(self
            .stack
            .forward_t(seqs, masks, train)?
            .broadcast_add(&wiggle)?)
    }
}

fn build_wiggling(ctx: &BuildContext<'_>, _kwargs: &Value) -> Result<Box<dyn TransformerLayers>> {
    Ok(Box::new(WigglingLayers {
        wiggle: ctx
            .vb
            .get_with_hints(ctx.n_factors, "wiggle", Init::Const(0.3))?,
        stack: sasrec(ctx)?,
    }))
}

/// The SASRec stack, with every position treated as real under static shapes.
struct StaticShapesUnmaskedLayers(Box<dyn TransformerLayers>);

impl TransformerLayers for StaticShapesUnmaskedLayers {
    fn forward_t(&self, seqs: &Tensor, masks: &AttentionMasks, train: bool) -> Result<Tensor> {
        if !recblocks_core::nn::capture::static_shapes() {
            return self.0.forward_t(seqs, masks, train);
        }
        let all_real = AttentionMasks {
            timeline_mask: masks.timeline_mask.ones_like()?,
            attn_bias: masks.attn_bias.clone(),
        };
        self.0.forward_t(seqs, &all_real, train)
    }
}

fn build_static_unmasked(
    ctx: &BuildContext<'_>,
    _kwargs: &Value,
) -> Result<Box<dyn TransformerLayers>> {
    Ok(Box::new(StaticShapesUnmaskedLayers(sasrec(ctx)?)))
}

recblocks_core::register! {
    TransformerLayersRegistration {
        name: "StaticShapesUnmaskedLayers",
        summary: "test fixture: SASRec layers whose static-shapes path drops the timeline mask",
        build: build_static_unmasked,
    }
}

recblocks_core::register! {
    TransformerLayersRegistration {
        name: "WrongSmallGradientLayers",
        summary: "test fixture: small outputs whose parameter's backward is 1.5x too large",
        build: build_wrong_small_gradient,
    }
}

recblocks_core::register! {
    TransformerLayersRegistration {
        name: "WigglingLayers",
        summary: "test fixture: SASRec layers plus a term too wiggly for finite differences",
        build: build_wiggling,
    }
}

recblocks_core::register! {
    TransformerLayersRegistration {
        name: "FutureLeakingLayers",
        summary: "test fixture: SASRec layers that drop the attention mask",
        build: build_leaking,
    }
}

recblocks_core::register! {
    TransformerLayersRegistration {
        name: "WrongBackwardLayers",
        summary: "test fixture: SASRec layers behind a custom op whose backward is 1.5x too large",
        build: build_wrong_backward,
    }
}

recblocks_core::register! {
    TransformerLayersRegistration {
        name: "EvalSkipsNormLayers",
        summary: "test fixture: SASRec layers whose eval path skips the final layer norm",
        build: build_eval_skips_norm,
    }
}

fn report(name: &str) -> Report {
    let registry = Registry::from_inventory().unwrap();
    check_component(&registry, ComponentKind::TransformerLayers, name).unwrap()
}

fn outcome<'a>(report: &'a Report, check: &str) -> &'a Outcome {
    &report
        .results
        .iter()
        .find(|r| r.check == check)
        .unwrap_or_else(|| panic!("no check `{check}` in {report:?}"))
        .outcome
}

fn failure(report: &Report, check: &str) -> String {
    match outcome(report, check) {
        Outcome::Fail(message) => message.clone(),
        other => panic!("`{check}` should fail on {}, got {other:?}", report.name),
    }
}

#[test]
fn a_layer_that_ignores_the_causal_mask_fails_causality_naming_the_position() {
    let r = report("FutureLeakingLayers");
    let message = failure(&r, "causal mask: outputs ignore later positions");
    assert!(
        message.contains("changing the inputs after position 0"),
        "{message}"
    );
    assert!(
        message.contains("changed the output at position 0"),
        "{message}"
    );
    assert!(message.contains("see the future"), "{message}");
    // It attends everywhere, so the bidirectional check passes: only causality catches it.
    assert_eq!(
        outcome(&r, "bidirectional mask: outputs depend on later positions"),
        &Outcome::Pass
    );
    let error = r.into_result().unwrap_err().to_string();
    assert!(error.contains("FutureLeakingLayers"), "{error}");
    assert!(error.contains("causal mask"), "{error}");
}

#[test]
fn a_backward_off_by_a_factor_fails_the_gradient_check_naming_the_parameter() {
    let r = report("WrongBackwardLayers");
    let message = failure(&r, "gradients match finite differences");
    assert!(
        message.contains("parameter `") || message.contains("the input embeddings"),
        "{message}"
    );
    assert!(
        message.contains("autograd's directional derivative is"),
        "{message}"
    );
    assert!(
        message.contains("central finite differences give"),
        "{message}"
    );
    // Everything else about it is right.
    for check in [
        "causal mask: outputs ignore later positions",
        "train and eval forwards agree without dropout",
        "gradients reach every parameter",
    ] {
        assert_eq!(outcome(&r, check), &Outcome::Pass, "{check}");
    }
}

#[test]
fn a_static_shapes_path_that_computes_otherwise_fails_its_check() {
    let r = report("StaticShapesUnmaskedLayers");
    let message = failure(&r, "static shapes (a captured step) give the same outputs");
    assert!(
        message.contains("outputs under static shapes differ by up to"),
        "{message}"
    );
    assert_eq!(
        outcome(&r, "train and eval forwards agree without dropout"),
        &Outcome::Pass
    );
}

#[test]
fn an_eval_path_that_skips_a_layer_norm_fails_train_eval_agreement() {
    let r = report("EvalSkipsNormLayers");
    let message = failure(&r, "train and eval forwards agree without dropout");
    assert!(message.contains("the train forward gives"), "{message}");
    assert!(message.contains("at session"), "{message}");
    assert!(message.contains("the eval forward"), "{message}");
    assert_eq!(
        outcome(&r, "gradients match finite differences"),
        &Outcome::Pass
    );
}

#[test]
fn the_new_checks_pass_on_the_sasrec_stack_the_fixtures_wrap() {
    let r = report("SASRecTransformerLayers");
    for check in [
        "causal mask: outputs ignore later positions",
        "bidirectional mask: outputs depend on later positions",
        "gradients match finite differences",
        "train and eval forwards agree without dropout",
    ] {
        assert_eq!(outcome(&r, check), &Outcome::Pass, "{check}");
    }
}

#[test]
fn a_small_gradient_off_by_half_fails_the_gradient_check() {
    // Derivatives of about 1e-3 off by about 5e-4: inside the absolute 2e-3 the check used to
    // allow, far outside this component's f32 round-off.
    let r = report("WrongSmallGradientLayers");
    let message = failure(&r, "gradients match finite differences");
    assert!(
        message.contains("parameter `weight` (instance"),
        "{message}"
    );
    assert!(
        message.contains("autograd's directional derivative is"),
        "{message}"
    );
    assert!(message.contains("a backward pass is wrong"), "{message}");
}

#[test]
fn a_parameter_whose_comparisons_are_all_inconclusive_fails_the_gradient_check() {
    // The SASRec stack's own parameters are conclusive, so the share over the whole component
    // stays above half; `wiggle` alone has not been checked.
    let r = report("WigglingLayers");
    let message = failure(&r, "gradients match finite differences");
    assert!(
        message.starts_with("parameter `wiggle`: only 0 of its 4 comparisons were conclusive"),
        "{message}"
    );
    assert!(
        message.contains("expected at least 0.5 of them"),
        "{message}"
    );
}
