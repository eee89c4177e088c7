//! RecTools' four losses as free functions over given logits, targets and weights: [`softmax_loss`],
//! [`bce_loss`], [`gbce_loss`] (with [`gbce_beta`] and [`gbce_transform_logits`]) and
//! [`sampled_softmax_loss`], so each can be checked without a backbone (`lightning.py`'s
//! `_calc_*_loss`; docs/rectools.md §2.8).
//!
//! Every op used has a backward in candle (`log_softmax` is built from max, sub, exp, sum, log;
//! the stable BCE from relu, abs, exp, log; masks use `where_cond` or products). A loss whose
//! denominator is zero (no counted position) is NaN, as `torch.sum(...) / 0` is.

use recblocks_core::{
    candle::{DType, Tensor, D},
    candle_nn,
    error::CoreError,
    kind::ComponentKind,
    nn::softmax_cross_entropy_ignore_0,
    Result,
};

use super::NAME;

/// The gBCE clamp epsilon (RecTools `epsilon = 1e-10`).
pub const GBCE_EPSILON: f64 = 1e-10;

pub(super) fn check_shapes(
    what: &str,
    logits: &Tensor,
    y: &Tensor,
    w: &Tensor,
) -> Result<(usize, usize, usize)> {
    let (b, l, c) = logits.dims3()?;
    if y.dims() != [b, l] || w.dims() != [b, l] {
        return Err(CoreError::invalid(
            ComponentKind::Objective,
            NAME,
            format!(
                "{what} loss: logits are {:?}, so targets and weights must be [{b}, {l}]; found \
                 targets {:?}, weights {:?}",
                logits.dims(),
                y.dims(),
                w.dims()
            ),
        ));
    }
    Ok((b, l, c))
}

/// Per-position cross-entropy `[B, L]` with class 0 ignored (0 where `y == 0`), like
/// `cross_entropy(logits.transpose(1, 2), y, ignore_index=0, reduction="none")`; the fused
/// catalog kernel of `recblocks_core::nn::cross_entropy` on the CPU.
fn cross_entropy_ignore_0(logits: &Tensor, y: &Tensor) -> Result<Tensor> {
    let (b, l, c) = logits.dims3()?;
    let ce = softmax_cross_entropy_ignore_0(&logits.reshape((b * l, c))?, &y.flatten_all()?)?;
    Ok(ce.reshape((b, l))?)
}

/// RecTools' `softmax` loss: `l = ce * w` per position (class 0 ignored), then
/// `Σl / count(l > 0)` — the denominator counts positions with a positive *weighted* loss, not
/// `y != 0`. `logits` `[B, L, C]` (all C classes, PAD/MASK included), `y` `[B, L]` integer
/// targets, `w` `[B, L]` f32 weights.
pub fn softmax_loss(logits: &Tensor, y: &Tensor, w: &Tensor) -> Result<Tensor> {
    check_shapes("softmax", logits, y, w)?;
    let l = cross_entropy_ignore_0(logits, y)?.mul(&w.to_dtype(logits.dtype())?)?;
    let n = l.gt(0.0)?.to_dtype(logits.dtype())?.sum_all()?;
    Ok(l.sum_all()?.div(&n)?)
}

/// Element-wise binary cross-entropy with logits, in the stable form
/// `max(x, 0) − x·t + log(1 + exp(−|x|))`.
fn bce_with_logits(x: &Tensor, t: &Tensor) -> Result<Tensor> {
    let softplus_neg_abs = x.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    Ok(x.relu()?.sub(&x.mul(t)?)?.add(&softplus_neg_abs)?)
}

/// RecTools' `BCE` loss over `[pos, negatives]` logits `[B, L, 1 + K]` (target 1 for column 0,
/// else 0): `Σ(mean_over_columns(bce) · [y≠0] · w) / Σ[y≠0]`.
pub fn bce_loss(logits: &Tensor, y: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (b, l, c) = check_shapes("BCE", logits, y, w)?;
    if c == 0 {
        return Err(CoreError::invalid(
            ComponentKind::Objective,
            NAME,
            "BCE loss: logits have no column (the positive must be column 0)",
        ));
    }
    let dtype = logits.dtype();
    let dev = logits.device();
    let pos = Tensor::ones((b, l, 1), dtype, dev)?;
    let target = if c > 1 {
        Tensor::cat(
            &[&pos, &Tensor::zeros((b, l, c - 1), dtype, dev)?],
            D::Minus1,
        )?
    } else {
        pos
    };
    let per_pos = bce_with_logits(logits, &target)?.mean(D::Minus1)?;
    let mask = y.ne(0u32)?.to_dtype(dtype)?;
    let num = per_pos.mul(&mask)?.mul(&w.to_dtype(dtype)?)?.sum_all()?;
    Ok(num.div(&mask.sum_all()?)?)
}

/// gBCE's β for `n_real_items` real items (extra tokens excluded), `n_negatives` negatives per
/// position and calibration `t`: `α = n_negatives / (n_real_items − 1)`,
/// `β = α·(t·(1 − 1/α) + 1/α)`.
pub fn gbce_beta(n_real_items: usize, n_negatives: usize, t: f64) -> f64 {
    let alpha = n_negatives as f64 / (n_real_items as f64 - 1.0);
    alpha * (t * (1.0 - 1.0 / alpha) + 1.0 / alpha)
}

/// gBCE's logit transform, in f64, applied to column 0 (the positive) of `[B, L, 1 + K]` logits;
/// negatives are unchanged. With `p = clamp(σ(s), ε, 1 − ε)`, `a = clamp(p^(−β), 1 + ε, max)`,
/// the positive becomes `log(clamp(1 / (a − 1), ε, max))` (= `logit(p^β)`), ε = 1e-10. The
/// result has the dtype of `logits`.
pub fn gbce_transform_logits(logits: &Tensor, beta: f64) -> Result<Tensor> {
    let (_, _, c) = logits.dims3()?;
    if c == 0 {
        return Err(CoreError::invalid(
            ComponentKind::Objective,
            NAME,
            "gBCE loss: logits have no column (the positive must be column 0)",
        ));
    }
    let dtype = logits.dtype();
    let eps = GBCE_EPSILON;
    let s = logits.narrow(D::Minus1, 0, 1)?.to_dtype(DType::F64)?;
    let p = candle_nn::ops::sigmoid(&s)?.clamp(eps, 1.0 - eps)?;
    let a = p.powf(-beta)?.clamp(1.0 + eps, f64::MAX)?;
    let s_new = (a - 1.0)?
        .recip()?
        .clamp(eps, f64::MAX)?
        .log()?
        .to_dtype(dtype)?;
    if c == 1 {
        return Ok(s_new);
    }
    let negs = logits.narrow(D::Minus1, 1, c - 1)?;
    Ok(Tensor::cat(&[&s_new, &negs], D::Minus1)?)
}

/// RecTools' `gBCE` loss: [`bce_loss`] over [`gbce_transform_logits`]`(logits, beta)`.
pub fn gbce_loss(logits: &Tensor, y: &Tensor, w: &Tensor, beta: f64) -> Result<Tensor> {
    check_shapes("gBCE", logits, y, w)?;
    bce_loss(&gbce_transform_logits(logits, beta)?, y, w)
}

/// RecTools' `sampled_softmax` loss over `[pos, negatives]` logits `[B, L, 1 + K]`, K ≥ 1:
/// columns 0 and 1 are swapped so the positive sits at class 1 (class 0 is the ignore index),
/// the target is 1 where `y ≠ 0` and 0 (ignored) elsewhere, then [`softmax_loss`] with weights
/// `w`.
pub fn sampled_softmax_loss(logits: &Tensor, y: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (_, _, c) = check_shapes("sampled_softmax", logits, y, w)?;
    if c < 2 {
        return Err(CoreError::invalid(
            ComponentKind::Objective,
            NAME,
            "sampled_softmax loss needs at least one negative per position (logits [B, L, 1 + K] \
             with K >= 1)",
        ));
    }
    let first = logits.narrow(D::Minus1, 0, 1)?;
    let second = logits.narrow(D::Minus1, 1, 1)?;
    let swapped = if c > 2 {
        let rest = logits.narrow(D::Minus1, 2, c - 2)?;
        Tensor::cat(&[&second, &first, &rest], D::Minus1)?
    } else {
        Tensor::cat(&[&second, &first], D::Minus1)?
    };
    let target = y.ne(0u32)?.to_dtype(DType::U32)?;
    softmax_loss(&swapped, &target, w)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub(crate) mod tests {
    use recblocks_core::candle::{Device, Var};

    use super::{super::Loss, *};

    const TOL: f64 = 1e-5;

    pub(crate) fn t3(v: &[f32], dims: (usize, usize, usize)) -> Tensor {
        Tensor::from_vec(v.to_vec(), dims, &Device::Cpu).expect("tensor")
    }

    pub(crate) fn u2(v: &[u32], dims: (usize, usize)) -> Tensor {
        Tensor::from_vec(v.to_vec(), dims, &Device::Cpu).expect("tensor")
    }

    pub(crate) fn f2(v: &[f32], dims: (usize, usize)) -> Tensor {
        Tensor::from_vec(v.to_vec(), dims, &Device::Cpu).expect("tensor")
    }

    pub(crate) fn scalar(t: &Tensor) -> f64 {
        t.to_dtype(DType::F64)
            .and_then(|t| t.to_scalar::<f64>())
            .expect("scalar")
    }

    pub(crate) fn lse(xs: &[f64]) -> f64 {
        let m = xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        m + xs.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
    }

    /// BCE with logits, by the textbook formula.
    pub(crate) fn bce(x: f64, t: f64) -> f64 {
        let s = 1.0 / (1.0 + (-x).exp());
        -(t * s.ln() + (1.0 - t) * (1.0 - s).ln())
    }

    pub(crate) fn mean_bce(row: &[f64]) -> f64 {
        row.iter()
            .enumerate()
            .map(|(j, &x)| bce(x, if j == 0 { 1.0 } else { 0.0 }))
            .sum::<f64>()
            / row.len() as f64
    }

    /// The gBCE transform of one positive logit, step by step in f64.
    pub(crate) fn gbce_scalar(s: f64, beta: f64) -> f64 {
        let eps = 1e-10;
        let p = (1.0 / (1.0 + (-s).exp())).clamp(eps, 1.0 - eps);
        let a = p.powf(-beta).clamp(1.0 + eps, f64::MAX);
        (1.0 / (a - 1.0)).clamp(eps, f64::MAX).ln()
    }

    #[test]
    fn softmax_loss_counts_positive_weighted_losses() {
        // b0: pad (y=0, w=1: ignored), target 2 with w=2; b1: target 1 with w=0 (l = 0, not
        // counted although y != 0), target 1 with w=0.5.
        let logits = t3(
            &[
                0.5, 1.0, -1.0, 0.1, 0.2, 0.3, 1.0, -0.5, 0.25, 2.0, 0.0, -2.0,
            ],
            (2, 2, 3),
        );
        let y = u2(&[0, 2, 1, 1], (2, 2));
        let w = f2(&[1.0, 2.0, 0.0, 0.5], (2, 2));
        let ce1 = lse(&[0.1, 0.2, 0.3]) - 0.3;
        let ce2 = lse(&[2.0, 0.0, -2.0]) - 0.0;
        let expected = (2.0 * ce1 + 0.5 * ce2) / 2.0;
        let got = scalar(&softmax_loss(&logits, &y, &w).expect("loss"));
        assert!((got - expected).abs() < TOL, "{got} vs {expected}");
    }

    #[test]
    fn bce_loss_matches_hand_computation() {
        let rows = [
            [0.3, -0.2, 0.1], // pad: ignored
            [1.5, 0.5, -1.0], // y=4, w=2
            [0.0, 0.0, 0.0],  // y=3, w=0.5
            [-1.0, 2.0, 0.5], // y=5, w=1
        ];
        let flat: Vec<f32> = rows.iter().flatten().map(|&v| v as f32).collect();
        let logits = t3(&flat, (2, 2, 3));
        let y = u2(&[0, 4, 3, 5], (2, 2));
        let w = f2(&[1.0, 2.0, 0.5, 1.0], (2, 2));
        let expected =
            (2.0 * mean_bce(&rows[1]) + 0.5 * mean_bce(&rows[2]) + mean_bce(&rows[3])) / 3.0;
        let got = scalar(&bce_loss(&logits, &y, &w).expect("loss"));
        assert!((got - expected).abs() < TOL, "{got} vs {expected}");
        // Large logits stay finite (stable form).
        let big = t3(&[80.0, -80.0, 90.0], (1, 1, 3));
        let got = scalar(&bce_loss(&big, &u2(&[1], (1, 1)), &f2(&[1.0], (1, 1))).expect("loss"));
        assert!((got - 30.0).abs() < 1e-4, "{got}");
    }

    #[test]
    fn gbce_beta_and_transform() {
        // 101 real items, 10 negatives: alpha = 0.1, beta = 0.1 * (0.2 * (1 - 10) + 10) = 0.82.
        let beta = gbce_beta(101, 10, 0.2);
        assert!((beta - 0.82).abs() < 1e-12, "{beta}");
        // t = 0 gives beta = 1 (plain BCE); t = 1 gives beta = alpha.
        assert!((gbce_beta(50, 7, 0.0) - 1.0).abs() < 1e-12);
        assert!((gbce_beta(50, 7, 1.0) - 7.0 / 49.0).abs() < 1e-12);

        let s = [0.5f64, -30.0, 40.0, 2.0];
        let logits = t3(
            &[
                0.5, 0.7, -0.3, -30.0, 1.0, 2.0, 40.0, 0.0, 0.0, 2.0, -1.0, 3.0,
            ],
            (1, 4, 3),
        );
        let out = gbce_transform_logits(&logits, beta)
            .expect("transform")
            .to_vec3::<f32>()
            .expect("vec");
        for (i, &si) in s.iter().enumerate() {
            let want = gbce_scalar(si, beta);
            assert!(
                (out[0][i][0] as f64 - want).abs() < 1e-4 * want.abs().max(1.0),
                "s={si}: {} vs {want}",
                out[0][i][0]
            );
        }
        // Unclamped, s' = logit(sigmoid(s)^beta).
        let p = (1.0 / (1.0 + (-0.5f64).exp())).powf(beta);
        let closed = (p / (1.0 - p)).ln();
        assert!((out[0][0][0] as f64 - closed).abs() < 1e-5);
        // Clamped ends: p = 1e-10 gives log(1 / (1e-10^-beta - 1)); p = 1 - 1e-10 gives ~log(1e10).
        assert!((out[0][1][0] as f64 - (1.0 / (1e-10f64.powf(-beta) - 1.0)).ln()).abs() < 1e-3);
        assert!(
            (out[0][2][0] as f64 - 1e10f64.ln()).abs() < 1e-3,
            "{}",
            out[0][2][0]
        );
        // beta = 1 (t = 0) leaves unclamped logits unchanged.
        let id = gbce_transform_logits(&logits, 1.0)
            .expect("transform")
            .to_vec3::<f32>()
            .expect("vec");
        assert!((id[0][0][0] - 0.5).abs() < 1e-5 && (id[0][3][0] - 2.0).abs() < 1e-5);
        // Negatives untouched.
        assert_eq!((out[0][0][1], out[0][0][2]), (0.7, -0.3));

        // gBCE loss = BCE over the transformed logits.
        let y = u2(&[3, 0, 2, 9], (1, 4));
        let w = f2(&[1.0, 1.0, 2.0, 0.5], (1, 4));
        let rows: Vec<Vec<f64>> = [[0.5, 0.7, -0.3], [40.0, 0.0, 0.0], [2.0, -1.0, 3.0]]
            .iter()
            .map(|r| {
                let mut r = r.to_vec();
                r[0] = gbce_scalar(r[0], beta);
                r
            })
            .collect();
        let expected =
            (mean_bce(&rows[0]) + 2.0 * mean_bce(&rows[1]) + 0.5 * mean_bce(&rows[2])) / 3.0;
        let got = scalar(&gbce_loss(&logits, &y, &w, beta).expect("loss"));
        assert!((got - expected).abs() < 1e-4, "{got} vs {expected}");
    }

    #[test]
    fn sampled_softmax_puts_the_positive_at_class_1() {
        // pad row ignored; the positive is column 0 of the input.
        let logits = t3(&[0.4, 0.1, -0.3, 1.0, 2.0, 0.5], (1, 2, 3));
        let y = u2(&[0, 7], (1, 2));
        let w = f2(&[1.0, 1.5], (1, 2));
        let expected = (lse(&[1.0, 2.0, 0.5]) - 1.0) * 1.5;
        let got = scalar(&sampled_softmax_loss(&logits, &y, &w).expect("loss"));
        assert!((got - expected).abs() < TOL, "{got} vs {expected}");
        // One negative: two columns.
        let two = t3(&[0.3, -0.6], (1, 1, 2));
        let got = scalar(
            &sampled_softmax_loss(&two, &u2(&[1], (1, 1)), &f2(&[1.0], (1, 1))).expect("loss"),
        );
        assert!((got - (lse(&[0.3, -0.6]) - 0.3)).abs() < TOL);
        // No negative: error.
        let one = t3(&[0.3], (1, 1, 1));
        let err =
            sampled_softmax_loss(&one, &u2(&[1], (1, 1)), &f2(&[1.0], (1, 1))).expect_err("K = 0");
        assert!(err.to_string().contains("at least one negative"), "{err}");
    }

    #[test]
    fn shape_mismatch_is_an_error() {
        let logits = t3(&[0.0; 6], (1, 2, 3));
        let err = softmax_loss(&logits, &u2(&[1], (1, 1)), &f2(&[1.0], (1, 1))).expect_err("shape");
        assert!(err.to_string().contains("must be [1, 2]"), "{err}");
    }

    #[test]
    fn every_loss_is_differentiable() {
        let data = [
            0.5f32, 1.0, -1.0, 0.1, 0.2, 0.3, 1.0, -0.5, 0.25, 2.0, 0.0, -2.0,
        ];
        let y = u2(&[0, 2, 1, 1], (2, 2));
        let w = f2(&[1.0, 2.0, 0.3, 0.5], (2, 2));
        let beta = gbce_beta(101, 2, 0.2);
        for name in Loss::NAMES {
            let var = Var::from_tensor(&t3(&data, (2, 2, 3))).expect("var");
            let l = var.as_tensor();
            let loss = match name {
                "softmax" => softmax_loss(l, &y, &w),
                "BCE" => bce_loss(l, &y, &w),
                "gBCE" => gbce_loss(l, &y, &w, beta),
                _ => sampled_softmax_loss(l, &y, &w),
            }
            .expect("loss");
            let grads = loss.backward().expect("backward");
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no gradient"))
                .to_vec3::<f32>()
                .expect("vec");
            // The padded position (b0, p0) gets no gradient; real positions do.
            assert!(g[0][0].iter().all(|&v| v == 0.0), "{name}: {g:?}");
            assert!(g[0][1].iter().any(|&v| v != 0.0), "{name}: {g:?}");
            assert!(g[1][1].iter().any(|&v| v != 0.0), "{name}: {g:?}");
            assert!(
                g.iter().flatten().flatten().all(|v| v.is_finite()),
                "{name}"
            );
        }
    }
}
