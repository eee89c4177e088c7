//! Causality of transformer layers. Under a causal mask (SASRec) the output at position t may
//! depend only on inputs at positions ≤ t: a stack that ignores the mask leaks the future, trains
//! fine and reports metrics better than they are. Under a bidirectional mask (BERT4Rec) the output
//! at t *should* depend on later positions, which catches a stack that hard-codes causality.
//!
//! Both run with dropout off, in eval and in train mode, on sessions with and without left
//! padding; only real (non-PAD) positions are compared, since padded query rows see no key.

use candle_core::{Tensor, D as LastDim};
use recblocks_core::{components::TransformerLayers, Result};

use crate::{
    env::masks_for,
    harness::{Probe, MAX_LEN},
    report::Outcome,
};

/// Largest change at a real position ≤ t that still counts as "unchanged" (f32 round-off).
const UNCHANGED: f32 = 1e-5;
/// Smallest change that counts as "depends on later positions".
const CHANGED: f32 = 1e-4;

/// Inputs with every position after `t` replaced by other values.
fn perturb_after(x: &Tensor, t: usize) -> Result<Tensor> {
    let (_, l, _) = x.dims3()?;
    if t + 1 >= l {
        return Ok(x.clone());
    }
    let head = x.narrow(1, 0, t + 1)?;
    let tail = x.narrow(1, t + 1, l - t - 1)?.affine(-2.0, 0.7)?;
    Ok(Tensor::cat(&[&head, &tail], 1)?)
}

/// `(batch, position, |Δ|)` of the largest output change at real positions `0..=t`.
fn worst_change(a: &Tensor, b: &Tensor, p: &Probe, t: usize) -> Result<(usize, usize, f32)> {
    let diff = p.at_real_positions(&(a - b)?.abs()?.max_keepdim(LastDim::Minus1)?)?;
    let diff = diff.narrow(1, 0, t + 1)?.squeeze(2)?;
    let rows = diff.to_vec2::<f32>()?;
    let mut worst = (0, 0, 0f32);
    for (b, row) in rows.iter().enumerate() {
        for (p, &d) in row.iter().enumerate() {
            // NaN counts as the worst change.
            if d.is_nan() || d > worst.2 {
                worst = (b, p, if d.is_nan() { f32::INFINITY } else { d });
            }
        }
    }
    Ok(worst)
}

/// Under the causal mask, outputs at positions ≤ t ignore inputs after t, for every t.
pub(crate) fn causal(layers: &dyn TransformerLayers) -> Result<Outcome> {
    let p = Probe::new(3, MAX_LEN, 1.0)?;
    let masks = masks_for(&p.ids, true, true)?;
    for train in [false, true] {
        let base = layers.forward_t(&p.x, &masks, train)?;
        for t in 0..MAX_LEN - 1 {
            let moved = layers.forward_t(&perturb_after(&p.x, t)?, &masks, train)?;
            let (b, pos, d) = worst_change(&base, &moved, &p, t)?;
            if d > UNCHANGED {
                return Ok(Outcome::Fail(format!(
                    "with a causal mask (dropout off, train {train}), changing the inputs after \
                     position {t} changed the output at position {pos} of session {b} by {d:.3e}; \
                     expected no change (≤ {UNCHANGED:.0e}): the layers let a position see the \
                     future"
                )));
            }
        }
    }
    Ok(Outcome::Pass)
}

/// Under a bidirectional mask, the output at the first real position of a session without
/// padding depends on later positions.
pub(crate) fn bidirectional(layers: &dyn TransformerLayers) -> Result<Outcome> {
    // Session 0 of a probe has no padding.
    let p = Probe::new(1, MAX_LEN, 1.0)?;
    let masks = masks_for(&p.ids, false, true)?;
    for train in [false, true] {
        let base = layers.forward_t(&p.x, &masks, train)?;
        let moved = layers.forward_t(&perturb_after(&p.x, 0)?, &masks, train)?;
        let (_, _, d) = worst_change(&base, &moved, &p, 0)?;
        if d.is_infinite() {
            return Ok(Outcome::Fail(format!(
                "with a bidirectional mask (dropout off, train {train}), the output at position 0 \
                 is NaN or infinite; expected finite values"
            )));
        }
        if d < CHANGED {
            return Ok(Outcome::Fail(format!(
                "with a bidirectional mask (dropout off, train {train}), changing the inputs at \
                 positions 1..{MAX_LEN} changed the output at position 0 by {d:.3e}; expected a \
                 change (≥ {CHANGED:.0e}): the layers ignore the mask and attend causally"
            )));
        }
    }
    Ok(Outcome::Pass)
}
