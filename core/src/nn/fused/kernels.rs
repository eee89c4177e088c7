//! The element-wise and row-wise passes of the fused blocks, on row-major `[rows, d]` slices.
//!
//! Each pass fuses what the generic path does in several candle ops (bias, activation, dropout,
//! residual; a layer norm with the residual feeding its gradient). Rows are processed in parallel
//! blocks of a fixed size and column sums (bias and norm gradients) are added block by block in
//! order, so every result is the same on any number of threads. Each parallel task's loops are
//! compiled for the CPU's best SIMD level (pulp's run-time dispatch); the passes are element-wise
//! or sum in a fixed order, so the level changes no result.

use rayon::prelude::*;

use crate::nn::workspace::Buf;

/// Rows per parallel task.
const ROWS: usize = 64;

/// Runs `f` compiled for the best SIMD level the CPU has (AVX-512 or AVX2 + FMA on x86-64).
#[inline(always)]
fn simd<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

/// `y = (x − mean) / sqrt(var + eps) · w + b` per row of `d`, and each row's `(mean, 1/σ)`.
pub(crate) fn layer_norm(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    d: usize,
    eps: f32,
) -> (Buf, Vec<(f32, f32)>) {
    let rows = x.len() / d.max(1);
    let mut y = Buf::scratch(rows * d);
    let mut stats = vec![(0f32, 0f32); rows];
    if d == 0 {
        return (y, stats);
    }
    y.par_chunks_mut(ROWS * d)
        .zip(stats.par_chunks_mut(ROWS))
        .zip(x.par_chunks(ROWS * d))
        .for_each(|((yt, st), xt)| {
            simd(
                #[inline(always)]
                || {
                    for ((yr, xr), s) in yt.chunks_exact_mut(d).zip(xt.chunks_exact(d)).zip(st) {
                        let mean = xr.iter().sum::<f32>() / d as f32;
                        let var =
                            xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
                        let rstd = 1.0 / (var + eps).sqrt();
                        for (((o, &v), &wj), &bj) in yr.iter_mut().zip(xr).zip(w).zip(b) {
                            *o = (v - mean) * rstd * wj + bj;
                        }
                        *s = (mean, rstd);
                    }
                },
            )
        });
    (y, stats)
}

/// The gradients of a layer norm: `dx` (plus `extra`, when given, added element-wise), and the
/// weight and bias gradients. The output gradient is `dy + dy2` (a residual's two branches).
pub(crate) struct LayerNormGrads {
    pub dx: Buf,
    pub dw: Vec<f32>,
    pub db: Vec<f32>,
}

/// Backward of [`layer_norm`] from its input `x`, saved `stats` and weight `w`.
pub(crate) fn layer_norm_backward(
    x: &[f32],
    stats: &[(f32, f32)],
    w: &[f32],
    dy: &[f32],
    dy2: Option<&[f32]>,
    extra: Option<&[f32]>,
    d: usize,
) -> LayerNormGrads {
    let rows = x.len() / d.max(1);
    let mut dx = Buf::scratch(rows * d);
    if d == 0 {
        return LayerNormGrads {
            dx,
            dw: Vec::new(),
            db: Vec::new(),
        };
    }
    let block = ROWS * d;
    let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
        .par_chunks_mut(block)
        .enumerate()
        .map(|(t, dxt)| {
            simd(
                #[inline(always)]
                || {
                    let start = t * block;
                    let end = start + dxt.len();
                    let xt = &x[start..end];
                    let gt = &dy[start..end];
                    let g2t = dy2.map(|g| &g[start..end]);
                    let et = extra.map(|e| &e[start..end]);
                    let st = &stats[t * ROWS..t * ROWS + dxt.len() / d];
                    let mut dw = vec![0f32; d];
                    let mut db = vec![0f32; d];
                    let mut g = vec![0f32; d];
                    for (r, (dxr, &(mean, rstd))) in dxt.chunks_exact_mut(d).zip(st).enumerate() {
                        let xr = &xt[r * d..(r + 1) * d];
                        g.copy_from_slice(&gt[r * d..(r + 1) * d]);
                        if let Some(g2) = g2t {
                            for (a, &b) in g.iter_mut().zip(&g2[r * d..(r + 1) * d]) {
                                *a += b;
                            }
                        }
                        let (mut sum_dyh, mut sum_dyh_xhat) = (0f32, 0f32);
                        for j in 0..d {
                            let xhat = (xr[j] - mean) * rstd;
                            let dyh = g[j] * w[j];
                            sum_dyh += dyh;
                            sum_dyh_xhat += dyh * xhat;
                            dw[j] += g[j] * xhat;
                            db[j] += g[j];
                        }
                        let (m1, m2) = (sum_dyh / d as f32, sum_dyh_xhat / d as f32);
                        for j in 0..d {
                            let xhat = (xr[j] - mean) * rstd;
                            dxr[j] = (g[j] * w[j] - m1 - xhat * m2) * rstd;
                        }
                        if let Some(e) = et {
                            for (o, &v) in dxr.iter_mut().zip(&e[r * d..(r + 1) * d]) {
                                *o += v;
                            }
                        }
                    }
                    (dw, db)
                },
            )
        })
        .collect();
    let mut dw = vec![0f32; d];
    let mut db = vec![0f32; d];
    for (pw, pb) in &partials {
        for (o, v) in dw.iter_mut().zip(pw) {
            *o += v;
        }
        for (o, v) in db.iter_mut().zip(pb) {
            *o += v;
        }
    }
    LayerNormGrads { dx, dw, db }
}

/// `y = (x + b) ⊙ mask + residual` per row of `d` (`mask` and `residual` optional).
pub(crate) fn bias_dropout_residual(
    x: &[f32],
    b: &[f32],
    mask: Option<&[f32]>,
    residual: Option<&[f32]>,
    d: usize,
) -> Buf {
    let mut y = Buf::scratch(x.len());
    let block = ROWS * d.max(1);
    y.par_chunks_mut(block).enumerate().for_each(|(t, yt)| {
        simd(
            #[inline(always)]
            || {
                let start = t * block;
                let len = yt.len();
                let xt = &x[start..start + len];
                for (yr, xr) in yt.chunks_exact_mut(d.max(1)).zip(xt.chunks_exact(d.max(1))) {
                    for ((o, &v), &bj) in yr.iter_mut().zip(xr).zip(b) {
                        *o = v + bj;
                    }
                }
                if let Some(m) = mask {
                    for (o, &mv) in yt.iter_mut().zip(&m[start..start + len]) {
                        *o *= mv;
                    }
                }
                if let Some(r) = residual {
                    for (o, &rv) in yt.iter_mut().zip(&r[start..start + len]) {
                        *o += rv;
                    }
                }
            },
        )
    });
    y
}

/// `y[r, :] = x[r, :] · m[r]` (a timeline mask over rows of `d`).
pub(crate) fn scale_rows(x: &[f32], m: &[f32], d: usize) -> Buf {
    let mut y = Buf::scratch(x.len());
    let block = ROWS * d.max(1);
    y.par_chunks_mut(block)
        .zip(x.par_chunks(block))
        .enumerate()
        .for_each(|(t, (yt, xt))| {
            simd(
                #[inline(always)]
                || {
                    let rows = yt.chunks_exact_mut(d.max(1)).zip(xt.chunks_exact(d.max(1)));
                    for ((yr, xr), &mv) in rows.zip(&m[t * ROWS..]) {
                        for (o, &v) in yr.iter_mut().zip(xr) {
                            *o = v * mv;
                        }
                    }
                },
            )
        });
    y
}

/// A gradient through an optional dropout mask: `g ⊙ mask`, or `g` itself.
pub(crate) enum Masked<'a> {
    Same(&'a [f32]),
    Scaled(Buf),
}

impl std::ops::Deref for Masked<'_> {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self {
            Masked::Same(g) => g,
            Masked::Scaled(b) => b,
        }
    }
}

/// `g ⊙ mask` with a mask, `g` without one.
pub(crate) fn through_mask<'a>(g: &'a [f32], mask: Option<&[f32]>) -> Masked<'a> {
    match mask {
        Some(m) => Masked::Scaled(mul(g, m)),
        None => Masked::Same(g),
    }
}

/// `a ⊙ b`, element-wise (a gradient through a dropout mask).
pub(crate) fn mul(a: &[f32], b: &[f32]) -> Buf {
    zip_with(
        a,
        b,
        #[inline(always)]
        |x, m| x * m,
    )
}

/// The activation of a fused feed-forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Act {
    Relu,
    /// Exact GELU, `x·Φ(x)` (candle's `gelu_erf`).
    Gelu,
}

/// `(Φ(h), e^(−h²/2))`: the standard normal CDF and the Gaussian factor of its density, without
/// branches or library calls, so that loops over them vectorise (libm's `erff`, which candle's
/// `erf_f32` calls, is scalar and was a fifth of BERT4Rec's training time). `erf` is Abramowitz &
/// Stegun's 7.1.26 (Handbook of Mathematical Functions, 1964): `erf(z) = 1 − t·P(t)·e^(−z²)`,
/// `t = 1/(1 + p·z)` for `z ≥ 0`, odd in `z`, absolute error at most 1.5e-7; `e^(−z²)` with
/// `z = |h|/√2` is the same factor the density needs.
#[inline(always)]
fn normal_cdf_and_gauss(h: f32) -> (f32, f32) {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_8,
        -1.453_152,
        1.061_405_4,
    ];
    let z = h.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + P * z);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let gauss = crate::nn::fast_exp::exp(-0.5 * h * h);
    let erf = (1.0 - poly * gauss).copysign(h);
    (0.5 * (1.0 + erf), gauss)
}

/// Exact GELU, `h·Φ(h)` (candle's `gelu_erf`, to within 1e-7 of Φ).
#[inline(always)]
pub(crate) fn gelu(h: f32) -> f32 {
    h * normal_cdf_and_gauss(h).0
}

/// d/dh of [`gelu`]: Φ(h) + h·φ(h).
#[inline(always)]
pub(crate) fn gelu_grad(h: f32) -> f32 {
    let (cdf, gauss) = normal_cdf_and_gauss(h);
    cdf + h * gauss * 0.398_942_3
}

/// `h = x + b` and `a = act(h) ⊙ mask` per row of `d`. Returns `(h, a)`; `h` is kept only for
/// GELU (ReLU's backward reads `a`).
pub(crate) fn bias_act_dropout(
    x: &[f32],
    b: &[f32],
    act: Act,
    mask: Option<&[f32]>,
    d: usize,
) -> (Buf, Buf) {
    let keep_h = act == Act::Gelu;
    let mut h = Buf::scratch(if keep_h { x.len() } else { 0 });
    let mut a = Buf::scratch(x.len());
    let block = ROWS * d.max(1);
    if keep_h {
        a.par_chunks_mut(block)
            .zip(h.par_chunks_mut(block))
            .enumerate()
            .for_each(|(t, (at, ht))| {
                simd(
                    #[inline(always)]
                    || bias_act_rows(x, b, act, mask, d, t * block, at, Some(ht)),
                )
            });
    } else {
        a.par_chunks_mut(block).enumerate().for_each(|(t, at)| {
            simd(
                #[inline(always)]
                || bias_act_rows(x, b, act, mask, d, t * block, at, None),
            )
        });
    }
    (h, a)
}

/// One parallel task of [`bias_act_dropout`]: the rows of `at` (and `ht`), starting at element
/// `start` of `x`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn bias_act_rows(
    x: &[f32],
    b: &[f32],
    act: Act,
    mask: Option<&[f32]>,
    d: usize,
    start: usize,
    at: &mut [f32],
    ht: Option<&mut [f32]>,
) {
    let xt = &x[start..start + at.len()];
    let mt = mask.map(|m| &m[start..start + at.len()]);
    let mut hrow = vec![0f32; d];
    let mut ht = ht;
    for (r, (ar, xr)) in at
        .chunks_exact_mut(d.max(1))
        .zip(xt.chunks_exact(d.max(1)))
        .enumerate()
    {
        for ((hv, &v), &bj) in hrow.iter_mut().zip(xr).zip(b) {
            *hv = v + bj;
        }
        match act {
            Act::Relu => {
                for (o, &hv) in ar.iter_mut().zip(&hrow) {
                    *o = hv.max(0.0);
                }
            }
            Act::Gelu => {
                for (o, &hv) in ar.iter_mut().zip(&hrow) {
                    *o = gelu(hv);
                }
            }
        }
        if let Some(m) = mt {
            for (o, &mv) in ar.iter_mut().zip(&m[r * d..(r + 1) * d]) {
                *o *= mv;
            }
        }
        if let Some(ht) = ht.as_deref_mut() {
            ht[r * d..(r + 1) * d].copy_from_slice(&hrow);
        }
    }
}

/// The gradient at `h` of `a = act(h) ⊙ mask`, from `da`. ReLU reads the output `a` (`a > 0`
/// exactly where the unit was active and kept; kept units carry the mask's `scale`); GELU reads
/// `h` and the mask.
pub(crate) fn bias_act_dropout_backward(
    da: &[f32],
    act: Act,
    h: &[f32],
    a: &[f32],
    mask: Option<&[f32]>,
    scale: f32,
) -> Buf {
    let mut dh = Buf::scratch(da.len());
    let block = ROWS * 64;
    dh.par_chunks_mut(block).enumerate().for_each(|(t, dt)| {
        simd(
            #[inline(always)]
            || {
                let start = t * block;
                let len = dt.len();
                let dat = &da[start..start + len];
                match act {
                    Act::Relu => {
                        let at = &a[start..start + dt.len()];
                        for ((o, &g), &av) in dt.iter_mut().zip(dat).zip(at) {
                            *o = if av > 0.0 { g * scale } else { 0.0 };
                        }
                    }
                    Act::Gelu => {
                        let ht = &h[start..start + dt.len()];
                        for ((o, &g), &hv) in dt.iter_mut().zip(dat).zip(ht) {
                            *o = g * gelu_grad(hv);
                        }
                        if let Some(m) = mask {
                            for (o, &mv) in dt.iter_mut().zip(&m[start..start + len]) {
                                *o *= mv;
                            }
                        }
                    }
                }
            },
        )
    });
    dh
}

/// `σ(v) = 1 / (1 + e^−v)`, as candle's `sigmoid`.
fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + crate::nn::fast_exp::exp(-v))
}

/// `g = σ(y + b)` per row of `d` (a LiGR gate).
pub(crate) fn bias_sigmoid(y: &[f32], b: &[f32], d: usize) -> Buf {
    let mut g = bias_dropout_residual(y, b, None, None, d);
    g.par_chunks_mut(ROWS * 64).for_each(|t| {
        simd(
            #[inline(always)]
            || {
                for v in t.iter_mut() {
                    *v = sigmoid(*v);
                }
            },
        )
    });
    g
}

/// `yd = (y + b) ⊙ mask` and `out = x + g ⊙ yd` per row of `d` (a gated residual); returns
/// `(yd, out)`.
pub(crate) fn gated_residual(
    x: &[f32],
    g: &[f32],
    y: &[f32],
    b: &[f32],
    mask: Option<&[f32]>,
    d: usize,
) -> (Buf, Buf) {
    let yd = bias_dropout_residual(y, b, mask, None, d);
    let mut out = Buf::scratch(x.len());
    let block = ROWS * 64;
    out.par_chunks_mut(block).enumerate().for_each(|(t, ot)| {
        simd(
            #[inline(always)]
            || {
                let start = t * block;
                let len = ot.len();
                let xs = &x[start..start + len];
                let gs = &g[start..start + len];
                let ys = &yd[start..start + len];
                for (((o, &xv), &gv), &yv) in ot.iter_mut().zip(xs).zip(gs).zip(ys) {
                    *o = xv + gv * yv;
                }
            },
        )
    });
    (yd, out)
}

/// The backward of [`gated_residual`] with `g = σ(pre)`: from the output gradient `dout`, the
/// gradient at the gate's pre-activation and at `y` (through the dropout mask).
pub(crate) fn gated_residual_backward(
    dout: &[f32],
    g: &[f32],
    yd: &[f32],
    mask: Option<&[f32]>,
) -> (Buf, Buf) {
    let mut d_pre = Buf::scratch(dout.len());
    let mut d_y = Buf::scratch(dout.len());
    let block = ROWS * 64;
    d_pre
        .par_chunks_mut(block)
        .zip(d_y.par_chunks_mut(block))
        .enumerate()
        .for_each(|(t, (pt, yt))| {
            simd(
                #[inline(always)]
                || {
                    let start = t * block;
                    let len = pt.len();
                    let rows = dout[start..start + len]
                        .iter()
                        .zip(&g[start..start + len])
                        .zip(&yd[start..start + len]);
                    for (i, ((&dv, &gv), &yv)) in rows.enumerate() {
                        pt[i] = dv * yv * gv * (1.0 - gv);
                        let m = mask.map_or(1.0, |m| m[start + i]);
                        yt[i] = dv * gv * m;
                    }
                },
            )
        });
    (d_pre, d_y)
}

/// SwiGLU's gate: from `uv` `[n, 2m]` (`u` then `v` in each row) and its bias, the biased `uv`
/// (kept for the backward pass) and `z = SiLU(u) ⊙ v ⊙ mask` `[n, m]`.
pub(crate) fn swiglu(uv: &[f32], b: &[f32], mask: Option<&[f32]>, m: usize) -> (Buf, Buf) {
    let uvb = bias_dropout_residual(uv, b, None, None, 2 * m);
    let rows = uvb.len() / (2 * m).max(1);
    let mut z = Buf::scratch(rows * m);
    if m == 0 {
        return (uvb, z);
    }
    z.par_chunks_mut(ROWS * m).enumerate().for_each(|(t, zt)| {
        simd(
            #[inline(always)]
            || {
                for (r, zr) in zt.chunks_exact_mut(m).enumerate() {
                    let row = t * ROWS + r;
                    let (u, v) = uvb[row * 2 * m..(row + 1) * 2 * m].split_at(m);
                    for ((o, &uu), &vv) in zr.iter_mut().zip(u).zip(v) {
                        *o = uu / (1.0 + crate::nn::fast_exp::exp(-uu)) * vv;
                    }
                    if let Some(mk) = mask {
                        for (o, &mv) in zr.iter_mut().zip(&mk[row * m..(row + 1) * m]) {
                            *o *= mv;
                        }
                    }
                }
            },
        )
    });
    (uvb, z)
}

/// The backward of [`swiglu`]: `[n, 2m]` gradients of `u` and `v` from `dz`.
pub(crate) fn swiglu_backward(dz: &[f32], uvb: &[f32], mask: Option<&[f32]>, m: usize) -> Buf {
    let mut duv = Buf::scratch(uvb.len());
    if m == 0 {
        return duv;
    }
    duv.par_chunks_mut(ROWS * 2 * m)
        .enumerate()
        .for_each(|(t, dt)| {
            simd(
                #[inline(always)]
                || {
                    for (r, dr) in dt.chunks_exact_mut(2 * m).enumerate() {
                        let row = t * ROWS + r;
                        let (u, v) = uvb[row * 2 * m..(row + 1) * 2 * m].split_at(m);
                        let (du, dv) = dr.split_at_mut(m);
                        for j in 0..m {
                            let g = dz[row * m + j] * mask.map_or(1.0, |mk| mk[row * m + j]);
                            let s = sigmoid(u[j]);
                            let silu = u[j] / (1.0 + crate::nn::fast_exp::exp(-u[j]));
                            du[j] = g * v[j] * s * (1.0 + u[j] * (1.0 - s));
                            dv[j] = g * silu;
                        }
                    }
                },
            )
        });
    duv
}

/// `a + b`, element-wise.
pub(crate) fn add(a: &[f32], b: &[f32]) -> Buf {
    zip_with(
        a,
        b,
        #[inline(always)]
        |x, v| x + v,
    )
}

/// `f(a[i], b[i])` element-wise, in parallel blocks under SIMD dispatch.
#[inline(always)]
fn zip_with(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Buf {
    let mut y = Buf::scratch(a.len());
    y.par_chunks_mut(ROWS * 64)
        .zip(a.par_chunks(ROWS * 64).zip(b.par_chunks(ROWS * 64)))
        .for_each(|(yt, (at, bt))| {
            simd(
                #[inline(always)]
                || {
                    for ((o, &x), &w) in yt.iter_mut().zip(at).zip(bt) {
                        *o = f(x, w);
                    }
                },
            )
        });
    y
}

/// Column sums of `[rows, d]` in a fixed order (bias gradients).
pub(crate) fn column_sums(x: &[f32], d: usize) -> Vec<f32> {
    crate::nn::column_sum::column_sums(x, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against candle's `erf_f32` (libm's `erff`) on a fine grid: GELU within 3e-7·max(1, |h|),
    /// its derivative within 5e-7.
    #[test]
    fn gelu_matches_the_library_erf_everywhere() {
        let lib_cdf = |h: f32| {
            0.5 * (1.0 + candle_core::cpu::erf::erf_f32(h * std::f32::consts::FRAC_1_SQRT_2))
        };
        let (mut max_err, mut max_grad_err) = (0f32, 0f32);
        for i in -20_000..=20_000 {
            let h = i as f32 * 5e-4;
            let want = h * lib_cdf(h);
            let got = gelu(h);
            max_err = max_err.max((got - want).abs() / h.abs().max(1.0));
            let want_grad = lib_cdf(h) + h * (-0.5 * h * h).exp() * 0.398_942_3;
            let got_grad = gelu_grad(h);
            max_grad_err = max_grad_err.max((got_grad - want_grad).abs());
        }
        eprintln!("max errors: gelu {max_err:e}, gelu' {max_grad_err:e}");
        assert!(max_err <= 3e-7, "GELU off by {max_err:e}");
        assert!(
            max_grad_err <= 5e-7,
            "GELU's derivative off by {max_grad_err:e}"
        );
        assert_eq!(gelu(0.0), 0.0);
        assert_eq!(gelu(-30.0), 0.0);
        assert_eq!(gelu(30.0), 30.0);
        assert!(gelu(f32::NAN).is_nan());
    }

    #[test]
    fn gelu_and_its_derivative_match_hand_values() {
        // torch: gelu(1) = 0.841345, d/dx at 1 = Φ(1) + φ(1) = 0.841345 + 0.241971 = 1.083315.
        assert!((gelu(1.0) - 0.841_345).abs() < 1e-6);
        assert!((gelu_grad(1.0) - 1.083_315).abs() < 1e-5);
        assert!((gelu_grad(0.0) - 0.5).abs() < 1e-7);
        // Central difference elsewhere.
        for h in [-2.5f32, -0.3, 0.7, 3.0] {
            let e = 1e-2f32;
            let fd = (gelu(h + e) - gelu(h - e)) / (2.0 * e);
            assert!(
                (fd - gelu_grad(h)).abs() < 1e-3,
                "h {h}: {fd} vs {}",
                gelu_grad(h)
            );
        }
    }

    #[test]
    fn relu_backward_reads_the_kept_active_units_from_the_output() {
        let x = [1.0f32, -1.0, 2.0, 0.5];
        let mask = [2.0f32, 2.0, 0.0, 2.0];
        let (_, a) = bias_act_dropout(&x, &[0.0, 0.0], Act::Relu, Some(&mask), 2);
        assert_eq!(&a[..], &[2.0, 0.0, 0.0, 1.0]);
        let dh = bias_act_dropout_backward(&[1.0; 4], Act::Relu, &[], &a, Some(&mask), 2.0);
        assert_eq!(&dh[..], &[2.0, 0.0, 0.0, 2.0]);
    }

    #[test]
    fn layer_norm_backward_sums_both_residual_branches_and_adds_extra() {
        let (d, rows) = (3, 130);
        let x: Vec<f32> = (0..rows * d).map(|i| ((i * 7 % 11) as f32) * 0.3).collect();
        let w = [1.0f32, -0.5, 2.0];
        let (_, stats) = layer_norm(&x, &w, &[0.0; 3], d, 1e-5);
        let g1: Vec<f32> = (0..rows * d).map(|i| (i as f32 * 0.1).sin()).collect();
        let g2: Vec<f32> = (0..rows * d).map(|i| (i as f32 * 0.2).cos()).collect();
        let sum: Vec<f32> = g1.iter().zip(&g2).map(|(a, b)| a + b).collect();
        let one = layer_norm_backward(&x, &stats, &w, &sum, None, None, d);
        let two = layer_norm_backward(&x, &stats, &w, &g1, Some(&g2), Some(&g1), d);
        for ((a, g), b) in one.dx.iter().zip(&g1).zip(two.dx.iter()) {
            assert!((a + g - b).abs() < 1e-5);
        }
        assert_eq!(one.dw, two.dw);
        assert_eq!(one.db, two.db);
        let db: f32 = sum.iter().step_by(3).sum();
        assert!((one.db[0] - db).abs() < 1e-3);
    }
}
