//! Gradients against finite differences. Fused blocks and a plugin's custom ops have hand-written
//! backward passes; a wrong one trains quietly toward the wrong place. For every parameter and for
//! the input embeddings (kinds that take embeddings), autograd's directional derivative `⟨∇L, v⟩`
//! is compared with central differences `(L(θ + εv) − L(θ − εv)) / 2ε` at three steps ε, on a
//! small random instance with dropout off, at a few random points: two initialisations × two
//! directions `v` per parameter, each ±1 on up to [`COORDINATES`] random elements. `L` weighs the
//! outputs at real positions only: a training loss never reads padded positions, and components
//! may stop gradients there by design (the frozen PAD embedding row).
//!
//! Parameters are f32 (core's parameter store creates f32 and the fused CPU kernels are f32), so
//! the loss is summed in f64 on the host and the tolerance follows f32 round-off rather than a
//! blanket constant: `|fd − ad| ≤ RTOL · max(|fd|, |ad|) + atol(ε)`, where
//! `atol(ε) = NOISE · u · R / ε + CANCELLATION · Σ|gᵢvᵢ|`. The first term is the round-off of a
//! central difference: `u` is f32's unit round-off, `R = √Σ(oᵢwᵢ)²` the size of the loss's terms
//! (the f32 outputs' rounding errors add up like a random walk), divided by the step. The second is
//! autograd's own round-off where the moved elements' contributions cancel. So a component whose
//! loss is small, or a derivative near 0, is checked at the precision its round-off allows, not
//! waved through under an absolute 2e-3.
//!
//! ReLU makes `L` piecewise smooth: a step that crosses a kink is off by O(1) relative, so the
//! central differences at different steps disagree with each other, and at a kink sitting at θ
//! itself autograd gives the right or the left derivative while the central difference averages
//! both. So:
//! - when the central differences agree with each other (within their tolerances), autograd is
//!   judged against the one at the largest step, the least noisy: a miss fails, unless the right
//!   and left differences at the smallest step differ (a kink at θ) and autograd matches one of
//!   them (within four times the tolerance: a one-sided difference has O(ε) truncation and twice
//!   the round-off);
//! - when they disagree (a kink crossed by the larger steps), autograd passes when it agrees with
//!   any of them, or with a one-sided difference at a kink at θ; otherwise the comparison is
//!   inconclusive, as is a kink at θ that autograd matches on neither side.
//!
//! A wrong backward pass is off by a factor or by a term the function does not have, and the
//! central differences then agree with each other and all miss autograd. The check also fails
//! when fewer than half of one target's comparisons (a parameter, or the input embeddings) are
//! conclusive, naming it: a target whose every comparison came out inconclusive has not been
//! checked.

use candle_core::{Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use recblocks_core::{serde_json::Value, ComponentKind, Registry, Result};

use super::module::{sorted_vars, values, Built};
use crate::{
    env::probe_loss,
    harness::{self, Probe, MAX_LEN},
    report::Outcome,
};

/// Steps of the central difference.
const STEPS: [f64; 3] = [2e-3, 1e-3, 5e-4];
/// Elements a direction moves (fewer moved elements cross fewer ReLU kinks).
const COORDINATES: usize = 4;
/// Relative tolerance.
const RTOL: f64 = 1e-2;
/// f32's unit round-off, 2⁻²⁴.
const F32_ROUNDOFF: f64 = f32::EPSILON as f64 / 2.0;
/// A central difference's round-off in units of `u · R / ε` (see the module doc). The largest
/// seen on the built-in components is 1.5 (an attention key bias, whose true derivative is 0),
/// so 4 leaves a margin of about 2.7.
const NOISE: f64 = 4.0;
/// Autograd's relative round-off on a directional derivative whose terms cancel, relative to the
/// sum of their magnitudes: f32 sums of a few thousand products.
const CANCELLATION: f64 = 1e-4;
/// The share of a target's comparisons that must be conclusive.
const MIN_CONCLUSIVE: f64 = 0.5;
/// Initialisation seeds: the random instances.
const INSTANCES: [u64; 2] = [3, 4];
/// Random directions per parameter and instance.
const DIRECTIONS: u64 = 2;

/// The checked loss: [`probe_loss`] over the outputs at real positions only. A training loss
/// never reads outputs at padded positions, and components may stop gradients there by design
/// (the PAD embedding row is frozen, as torch's `padding_idx`).
fn real_loss(out: &Tensor, probe: &Probe) -> Result<Tensor> {
    probe_loss(&probe.at_real_positions(out)?)
}

/// [`real_loss`] computed on the host in f64 from the forward's output, with the size of its
/// terms `R = √Σ(oᵢwᵢ)²` (what the outputs' f32 round-off scales with).
fn host_loss(out: &Tensor, probe: &Probe) -> Result<(f64, f64)> {
    let terms: Vec<f64> = values(&probe.at_real_positions(out)?)?
        .iter()
        .enumerate()
        .map(|(i, &o)| o as f64 * (0.37 * i as f64).sin())
        .collect();
    Ok((
        terms.iter().sum(),
        terms.iter().map(|t| t * t).sum::<f64>().sqrt(),
    ))
}

/// A direction with the shape of `t`: ±1 on up to [`COORDINATES`] random elements, 0 elsewhere.
fn direction(t: &Tensor, seed: u64) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = t.elem_count();
    let mut v = vec![0f32; n];
    for _ in 0..COORDINATES.min(n) {
        let i = rng.random_range(0..n);
        v[i] = if rng.random::<bool>() { 1.0 } else { -1.0 };
    }
    Ok(Tensor::from_vec(v, t.shape(), t.device())?)
}

/// Whether two derivatives agree within `RTOL` relative plus `atol` (NaN never agrees).
fn agree(a: f64, b: f64, atol: f64) -> bool {
    (a - b).abs() <= RTOL * a.abs().max(b.abs()) + atol
}

/// Agreement of one-sided differences at the smallest step: their O(ε) truncation error and
/// larger round-off get four times the tolerance.
fn agree_loosely(a: f64, b: f64, atol: f64) -> bool {
    (a - b).abs() <= 4.0 * (RTOL * a.abs().max(b.abs()) + atol)
}

/// What one comparison of autograd with finite differences shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pass,
    Inconclusive,
    Miss,
}

/// Judges autograd's directional derivative against the central differences `finite` at
/// [`STEPS`] with their absolute tolerances `atol`, and the right and left differences at the
/// smallest step (see the module doc).
fn judge(autograd: f64, finite: &[f64], atol: &[f64], right: f64, left: f64) -> Verdict {
    let smallest = atol[atol.len() - 1];
    // One-sided differences divide by ε, not 2ε: twice the round-off.
    let one_sided = 2.0 * smallest;
    let kink_at_theta = !agree_loosely(right, left, 2.0 * one_sided);
    let matches_a_side = kink_at_theta
        && (agree_loosely(right, autograd, one_sided) || agree_loosely(left, autograd, one_sided));
    let consistent = finite.iter().zip(atol).all(|(&a, &ta)| {
        finite
            .iter()
            .zip(atol)
            .all(|(&b, &tb)| agree(a, b, ta + tb))
    });
    if consistent {
        if agree(autograd, finite[0], atol[0]) || matches_a_side {
            Verdict::Pass
        } else if kink_at_theta && autograd.is_finite() {
            Verdict::Inconclusive
        } else {
            Verdict::Miss
        }
    } else if finite
        .iter()
        .zip(atol)
        .any(|(&fd, &t)| agree(fd, autograd, t))
        || matches_a_side
    {
        Verdict::Pass
    } else if autograd.is_finite() {
        Verdict::Inconclusive
    } else {
        Verdict::Miss
    }
}

/// A comparison whose finite differences agree with each other but not with autograd.
struct Miss {
    target: String,
    autograd: f64,
    finite: Vec<f64>,
    /// The absolute tolerances at [`STEPS`].
    atol: Vec<f64>,
}

impl Miss {
    /// How far autograd is from the largest step's difference, in tolerances.
    fn badness(&self) -> f64 {
        let fd = self.finite[0];
        let err =
            (fd - self.autograd).abs() / (RTOL * fd.abs().max(self.autograd.abs()) + self.atol[0]);
        if err.is_nan() {
            f64::INFINITY
        } else {
            err
        }
    }
}

/// Shows numbers as `a, b, c` in scientific notation.
fn listed(numbers: &[f64]) -> String {
    numbers
        .iter()
        .map(|f| format!("{f:.3e}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Compares autograd with central differences for every parameter and the input.
pub(crate) fn check(
    registry: &Registry,
    kind: ComponentKind,
    name: &str,
    kwargs: &Value,
) -> Result<Outcome> {
    let mut worst: Option<Miss> = None;
    let (mut n, mut inconclusive) = (0usize, 0usize);
    // Per target, in order: (name, comparisons, conclusive ones).
    let mut per_target: Vec<(String, usize, usize)> = Vec::new();
    for seed in INSTANCES {
        let h = harness::env(registry, 0.0)?;
        let module = Built::build(&h, kind, name, kwargs, seed)?;
        let base = Probe::new(3, MAX_LEN, 1.0)?;
        let x = Var::from_tensor(&base.x)?;
        let probe = Probe {
            ids: base.ids.clone(),
            x: x.as_tensor().clone(),
        };
        let mut targets: Vec<(String, Var)> = sorted_vars(&h)
            .into_iter()
            .map(|(n, v)| (format!("parameter `{n}`"), v))
            .collect();
        if module.takes_embeddings() {
            targets.push(("the input embeddings".into(), x));
        }
        let out = module.forward(&probe, true)?;
        let grads = real_loss(&out, &probe)?.backward()?;
        let (at_theta, terms) = host_loss(&out, &probe)?;
        for (t, (target, var)) in targets.iter().enumerate() {
            let Some(grad) = grads.get(var.as_tensor()) else {
                // "gradients reach every parameter" reports a missing gradient.
                continue;
            };
            let counts = match per_target.iter().position(|(name, ..)| name == target) {
                Some(i) => i,
                None => {
                    per_target.push((target.clone(), 0, 0));
                    per_target.len() - 1
                }
            };
            let original = var.as_tensor().copy()?;
            for k in 0..DIRECTIONS {
                let v = direction(&original, seed * 1_000 + t as u64 * 10 + k)?;
                let products = values(&(grad * &v)?)?;
                let autograd: f64 = products.iter().map(|&g| g as f64).sum();
                let magnitude: f64 = products.iter().map(|&g| (g as f64).abs()).sum();
                let mut finite = Vec::with_capacity(STEPS.len());
                let mut atol = Vec::with_capacity(STEPS.len());
                let mut one_sided = (0.0, 0.0);
                for eps in STEPS {
                    var.set(&(&original + (&v * eps)?)?)?;
                    let (plus, _) = host_loss(&module.forward(&probe, true)?, &probe)?;
                    var.set(&(&original - (&v * eps)?)?)?;
                    let (minus, _) = host_loss(&module.forward(&probe, true)?, &probe)?;
                    var.set(&original)?;
                    finite.push((plus - minus) / (2.0 * eps));
                    atol.push(NOISE * F32_ROUNDOFF * terms / eps + CANCELLATION * magnitude);
                    one_sided = ((plus - at_theta) / eps, (at_theta - minus) / eps);
                }
                n += 1;
                per_target[counts].1 += 1;
                let (right, left) = one_sided;
                match judge(autograd, &finite, &atol, right, left) {
                    Verdict::Pass => per_target[counts].2 += 1,
                    Verdict::Inconclusive => inconclusive += 1,
                    Verdict::Miss => {
                        per_target[counts].2 += 1;
                        let miss = Miss {
                            target: format!("{target} (instance {seed}, direction {k})"),
                            autograd,
                            finite,
                            atol,
                        };
                        if worst.as_ref().is_none_or(|w| miss.badness() > w.badness()) {
                            worst = Some(miss);
                        }
                    }
                }
            }
        }
    }
    let unchecked = per_target
        .iter()
        .find(|(_, total, conclusive)| (*conclusive as f64) < MIN_CONCLUSIVE * *total as f64);
    Ok(match (worst, unchecked) {
        (Some(w), _) => Outcome::Fail(format!(
            "{}: autograd's directional derivative is {:.6e}, central finite differences give \
             {} at steps {STEPS:?} (expected within {RTOL} relative + {} absolute, the \
             f32 round-off at each step; worst of {n} comparisons): a backward pass is wrong",
            w.target,
            w.autograd,
            listed(&w.finite),
            listed(&w.atol),
        )),
        (None, _) if n == 0 => Outcome::Skipped("no parameter or input receives a gradient".into()),
        (None, Some((target, total, conclusive))) => Outcome::Fail(format!(
            "{target}: only {conclusive} of its {total} comparisons were conclusive (the finite \
             differences at steps {STEPS:?} disagree with each other, or the right and left \
             differences differ and autograd matches neither); expected at least \
             {MIN_CONCLUSIVE} of them, so its gradient is not checked ({inconclusive} of {n} \
             comparisons inconclusive in all)"
        )),
        (None, None) => Outcome::Pass,
    })
}
