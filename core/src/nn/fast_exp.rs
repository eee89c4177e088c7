//! A branch-free `exp` for f32 slices that the compiler vectorises, and lane-wise reductions.
//!
//! The catalog softmax evaluates one `exp` per (position, item) pair: tens of millions per
//! training step. `f32::exp` is a scalar libm call; PyTorch uses a vectorised SLEEF `expf`. This is
//! the classic Cephes `expf` (range reduction by `ln 2`, degree-6 polynomial on `[-ln2/2, ln2/2]`,
//! then `2^n` by building the exponent bits) written without branches so that loops over slices
//! compile to SIMD. Maximum relative error against `f32::exp` is a few ulp (tested).

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// `ln 2` split in two so that `x - n·ln2` keeps its precision (Cephes' C1/C2).
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Adding then subtracting `1.5·2^23` rounds an f32 of magnitude < 2^22 to the nearest integer.
const ROUND_MAGIC: f32 = 12_582_912.0;
/// Inputs are clamped to this range so that `2^n` stays a normal, finite f32.
const MIN_X: f32 = -87.0;
const MAX_X: f32 = 88.0;

/// `e^x` for one value, branch-free (clamped to `[-87, 88]`; `e^-87 ≈ 1.6e-38`; NaN stays NaN).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(MIN_X, MAX_X);
    let t = x * LOG2E + ROUND_MAGIC;
    let n = t - ROUND_MAGIC;
    let ni = (t.to_bits() as i32).wrapping_sub(ROUND_MAGIC.to_bits() as i32);
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    let scale = f32::from_bits(((ni + 127) as u32) << 23);
    y * scale
}

/// Number of independent accumulators in the reductions (one SIMD register of f32 on AVX).
const LANES: usize = 8;

/// Runs `f` compiled for the best SIMD level the CPU has (pulp's run-time dispatch: AVX2 + FMA on
/// x86-64), so that the loops inlined into it vectorise wider than the baseline target's SSE2.
/// The arithmetic, and so every result, is the same on every level.
#[inline(always)]
fn simd<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

/// The maximum of `xs` (`-inf` when empty). NaN inputs are ignored unless all are NaN.
pub fn max(xs: &[f32]) -> f32 {
    simd(
        #[inline(always)]
        || max_impl(xs),
    )
}

#[inline(always)]
fn max_impl(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = a.max(v);
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &v in acc.iter().chain(tail) {
        m = m.max(v);
    }
    m
}

/// `Σ e^(x - shift)` over `xs`, accumulated in [`LANES`] partial sums (a fixed order, so the
/// result is deterministic).
pub fn sum_exp_shifted(xs: &[f32], shift: f32) -> f32 {
    simd(
        #[inline(always)]
        || sum_exp_shifted_impl(xs, shift),
    )
}

#[inline(always)]
fn sum_exp_shifted_impl(xs: &[f32], shift: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += exp(v - shift);
        }
    }
    let mut s: f32 = acc.iter().sum();
    for &v in tail {
        s += exp(v - shift);
    }
    s
}

/// `xs = e^(xs − shift)` element-wise, in place, returning their sum accumulated as in
/// [`sum_exp_shifted`] (the same value). One `exp` per element serves both a softmax's
/// normaliser and its probabilities.
pub fn exp_shifted_in_place_sum(xs: &mut [f32], shift: f32) -> f32 {
    simd(
        #[inline(always)]
        || {
            // Two loops: a map the compiler vectorises, then the lane-wise sum (fusing them kept
            // the exponentials scalar).
            for v in xs.iter_mut() {
                *v = exp(*v - shift);
            }
            let mut acc = [0f32; LANES];
            let chunks = xs.chunks_exact(LANES);
            let tail = chunks.remainder();
            for c in chunks {
                for (a, &v) in acc.iter_mut().zip(c) {
                    *a += v;
                }
            }
            let mut s: f32 = acc.iter().sum();
            for &v in tail {
                s += v;
            }
            s
        },
    )
}

/// `xs = xs · g` element-wise, in place.
pub fn mul_in_place(xs: &mut [f32], g: f32) {
    simd(
        #[inline(always)]
        || {
            for v in xs.iter_mut() {
                *v *= g;
            }
        },
    )
}

/// `out = g · e^(x − shift)` element-wise (a softmax gradient row).
pub fn scaled_exp_shifted(out: &mut [f32], xs: &[f32], shift: f32, g: f32) {
    simd(
        #[inline(always)]
        || {
            for (o, &v) in out.iter_mut().zip(xs) {
                *o = g * exp(v - shift);
            }
        },
    )
}

/// `xs = xs / t` element-wise, in place.
pub fn div_in_place(xs: &mut [f32], t: f32) {
    simd(
        #[inline(always)]
        || {
            for v in xs.iter_mut() {
                *v /= t;
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_libm_within_a_few_ulp() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let got = exp(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max(((got - want) / want).abs());
            x += 0.001_37;
        }
        // f32 has a relative spacing of 1.19e-7; Cephes' expf is within ~2 ulp.
        assert!(worst < 3.0e-7, "worst relative error {worst}");
    }

    #[test]
    fn exp_special_points() {
        assert_eq!(exp(0.0), 1.0);
        assert!((exp(1.0) - std::f32::consts::E).abs() < 1e-6);
        assert!(exp(-1000.0) < 2e-38 && exp(-1000.0) >= 0.0);
        assert!(exp(1000.0).is_finite());
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn reductions_match_naive_sums() {
        let xs: Vec<f32> = (0..37)
            .map(|i| ((i * 7919) % 23) as f32 * 0.37 - 3.0)
            .collect();
        let naive_max = xs.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(max(&xs), naive_max);
        assert_eq!(max(&[]), f32::NEG_INFINITY);
        let naive: f64 = xs.iter().map(|&v| ((v - 1.5) as f64).exp()).sum();
        let got = sum_exp_shifted(&xs, 1.5) as f64;
        assert!(((got - naive) / naive).abs() < 1e-6, "{got} vs {naive}");
        // The in-place form: the same sum, bit for bit, and the exponentials left in place.
        let mut ys = xs.clone();
        assert_eq!(
            exp_shifted_in_place_sum(&mut ys, 1.5),
            sum_exp_shifted(&xs, 1.5)
        );
        for (y, x) in ys.iter().zip(&xs) {
            assert_eq!(*y, exp(x - 1.5));
        }
        mul_in_place(&mut ys, 2.0);
        assert_eq!(ys[3], 2.0 * exp(xs[3] - 1.5));
    }
}
