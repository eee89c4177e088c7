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
//! the loss is summed in f64 on the host and the tolerance is chosen for f32 round-off:
//! `|fd − ad| ≤ RTOL · max(|fd|, |ad|) + ATOL`. ReLU makes `L` piecewise smooth: a step that
//! crosses a kink is off by O(1) relative, so the three central differences disagree with each
//! other, and at a kink sitting at θ itself autograd gives the right or the left derivative
//! while the central difference averages both. So autograd passes when it agrees with a central
//! difference or with a one-sided difference at the smallest step; a comparison whose central
//! differences disagree with each other, or whose one-sided differences differ, is counted as
//! inconclusive. A comparison fails when the finite differences agree with each other, the
//! function is smooth at θ, and they all miss autograd: what a wrong backward pass does (off by a
//! factor of 1.5, it misses by far). The check also fails when fewer than half of the comparisons
//! are conclusive.

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
/// Absolute tolerance: the f32 round-off of the loss divided by 2ε is about 6e-4 on the probe.
const ATOL: f64 = 2e-3;
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

/// [`real_loss`] computed on the host in f64 from the forward's output.
fn host_loss(out: &Tensor, probe: &Probe) -> Result<f64> {
    Ok(values(&probe.at_real_positions(out)?)?
        .iter()
        .enumerate()
        .map(|(i, &o)| o as f64 * (0.37 * i as f64).sin())
        .sum())
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

/// Whether two derivatives agree within the tolerance (NaN never agrees).
fn agree(a: f64, b: f64) -> bool {
    (a - b).abs() <= RTOL * a.abs().max(b.abs()) + ATOL
}

/// Agreement of one-sided differences at the smallest step: their O(ε) truncation error and
/// larger round-off get four times the tolerance.
fn agree_loosely(a: f64, b: f64) -> bool {
    (a - b).abs() <= 4.0 * (RTOL * a.abs().max(b.abs()) + ATOL)
}

/// A comparison whose finite differences agree with each other but not with autograd.
struct Miss {
    target: String,
    autograd: f64,
    finite: Vec<f64>,
}

impl Miss {
    /// How far autograd is from the middle step's difference, in tolerances.
    fn badness(&self) -> f64 {
        let fd = self.finite[1];
        let err = (fd - self.autograd).abs() / (RTOL * fd.abs().max(self.autograd.abs()) + ATOL);
        if err.is_nan() {
            f64::INFINITY
        } else {
            err
        }
    }
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
        let at_theta = host_loss(&out, &probe)?;
        for (t, (target, var)) in targets.iter().enumerate() {
            let Some(grad) = grads.get(var.as_tensor()) else {
                // "gradients reach every parameter" reports a missing gradient.
                continue;
            };
            let original = var.as_tensor().copy()?;
            for k in 0..DIRECTIONS {
                let v = direction(&original, seed * 1_000 + t as u64 * 10 + k)?;
                let autograd: f64 = values(&(grad * &v)?)?.iter().map(|&g| g as f64).sum();
                let mut finite = Vec::with_capacity(STEPS.len());
                let mut one_sided = (0.0, 0.0);
                for eps in STEPS {
                    var.set(&(&original + (&v * eps)?)?)?;
                    let plus = host_loss(&module.forward(&probe, true)?, &probe)?;
                    var.set(&(&original - (&v * eps)?)?)?;
                    let minus = host_loss(&module.forward(&probe, true)?, &probe)?;
                    var.set(&original)?;
                    finite.push((plus - minus) / (2.0 * eps));
                    one_sided = ((plus - at_theta) / eps, (at_theta - minus) / eps);
                }
                n += 1;
                let (right, left) = one_sided;
                // At a kink sitting at θ, autograd gives the right or the left derivative.
                if finite
                    .iter()
                    .chain([&right, &left])
                    .any(|&fd| agree(fd, autograd))
                {
                    continue;
                }
                // A kink between the steps makes the central differences disagree; a kink at θ
                // itself makes the right and left derivatives differ (autograd takes one side).
                let consistent = finite.iter().all(|&a| finite.iter().all(|&b| agree(a, b)));
                let smooth_at_theta = agree_loosely(right, left);
                if (!consistent || !smooth_at_theta) && autograd.is_finite() {
                    inconclusive += 1;
                    continue;
                }
                let miss = Miss {
                    target: format!("{target} (instance {seed}, direction {k})"),
                    autograd,
                    finite,
                };
                if worst.as_ref().is_none_or(|w| miss.badness() > w.badness()) {
                    worst = Some(miss);
                }
            }
        }
    }
    Ok(match worst {
        Some(w) => Outcome::Fail(format!(
            "{}: autograd's directional derivative is {:.6e}, central finite differences give \
             {} at steps {STEPS:?} (expected within {RTOL} relative + {ATOL} absolute; worst \
             of {n} comparisons): a backward pass is wrong",
            w.target,
            w.autograd,
            w.finite
                .iter()
                .map(|f| format!("{f:.6e}"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        None if n == 0 => Outcome::Skipped("no parameter or input receives a gradient".into()),
        None if 2 * inconclusive > n => Outcome::Fail(format!(
            "{inconclusive} of {n} comparisons were inconclusive (the finite differences at \
             steps {STEPS:?} disagree with each other): the output is not smooth enough to check"
        )),
        None => Outcome::Pass,
    })
}
