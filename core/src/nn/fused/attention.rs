//! Multi-head attention inside a fused block: `softmax(Q Kᵀ/√d_h + bias)`, dropout, `· V`, per
//! session and head, with its backward pass.
//!
//! Queries are `[N, d]` and keys and values one `[N, 2d]` buffer (keys in the first `d` columns),
//! `N = B·L` rows, head `h` in columns `h·d_h .. (h+1)·d_h`. Each session is one parallel task; a
//! head's queries, keys and values are copied into small contiguous buffers that stay in cache,
//! and the products are loops whose inner dimension is contiguous, compiled for the best SIMD
//! level the CPU has (pulp's run-time dispatch: AVX2 + FMA on x86-64). Masked keys (bias −inf)
//! get weight exactly 0 and are skipped in the products that read the weights.

use pulp::{Arch, Simd, WithSimd};
use rayon::prelude::*;

use crate::nn::fast_exp;

/// Batch, session length, width and heads of one attention call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    pub b: usize,
    pub l: usize,
    pub d: usize,
    pub heads: usize,
}

impl Dims {
    fn hd(&self) -> usize {
        self.d / self.heads.max(1)
    }
}

/// `s += a · row` (equal lengths).
#[inline(always)]
fn axpy<S: Simd>(simd: S, s: &mut [f32], a: f32, row: &[f32]) {
    let (sh, st) = S::as_mut_simd_f32s(s);
    let (rh, rt) = S::as_simd_f32s(row);
    let av = simd.splat_f32s(a);
    for (o, &r) in sh.iter_mut().zip(rh) {
        *o = simd.mul_add_e_f32s(av, r, *o);
    }
    for (o, &r) in st.iter_mut().zip(rt) {
        *o += a * r;
    }
}

/// `Σ a·b` (equal lengths), in a fixed order.
#[inline(always)]
fn dot<S: Simd>(simd: S, a: &[f32], b: &[f32]) -> f32 {
    let (ah, at) = S::as_simd_f32s(a);
    let (bh, bt) = S::as_simd_f32s(b);
    let mut acc = simd.splat_f32s(0.0);
    for (&x, &y) in ah.iter().zip(bh) {
        acc = simd.mul_add_e_f32s(x, y, acc);
    }
    let mut s = simd.reduce_sum_f32s(acc);
    for (&x, &y) in at.iter().zip(bt) {
        s += x * y;
    }
    s
}

/// Softmax of one row of scores in place; `-inf` scores get exactly 0.
#[inline(always)]
fn softmax_row(row: &mut [f32]) {
    let mx = fast_exp::max(row);
    let mut sum = 0f32;
    for v in row.iter_mut() {
        let e = fast_exp::exp(*v - mx);
        *v = if *v == f32::NEG_INFINITY { 0.0 } else { e };
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// Copies head `h` of session `bi` into contiguous buffers: queries `[L, d_h]`, keys and values
/// `[L, d_h]`, and the keys or values (`transpose_values`) transposed `[d_h, L]`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn gather(
    q: &[f32],
    kv: &[f32],
    dims: Dims,
    bi: usize,
    h: usize,
    qh: &mut [f32],
    kh: &mut [f32],
    vh: &mut [f32],
    t: &mut [f32],
    transpose_values: bool,
) {
    let (l, d, hd) = (dims.l, dims.d, dims.hd());
    for i in 0..l {
        let row = (bi * l + i) * d + h * hd;
        qh[i * hd..(i + 1) * hd].copy_from_slice(&q[row..row + hd]);
        let kv_row = (bi * l + i) * 2 * d + h * hd;
        kh[i * hd..(i + 1) * hd].copy_from_slice(&kv[kv_row..kv_row + hd]);
        vh[i * hd..(i + 1) * hd].copy_from_slice(&kv[kv_row + d..kv_row + d + hd]);
        let src = if transpose_values { kv_row + d } else { kv_row };
        for c in 0..hd {
            t[c * l + i] = kv[src + c];
        }
    }
}

/// The keys a query row can see: from the first to the last key whose bias is not −inf (all keys
/// without a bias). Keys inside the range may still be hidden; they get −inf scores.
#[inline(always)]
fn visible_range(bias_row: Option<&[f32]>, l: usize) -> (usize, usize) {
    match bias_row {
        None => (0, l),
        Some(b) => {
            let first = b.iter().position(|&v| v != f32::NEG_INFINITY);
            match first {
                None => (0, 0),
                Some(a) => {
                    let last = b.iter().rposition(|&v| v != f32::NEG_INFINITY).unwrap_or(a);
                    (a, last + 1)
                }
            }
        }
    }
}

struct SessionForward<'a> {
    bi: usize,
    q: &'a [f32],
    kv: &'a [f32],
    bias: Option<&'a [f32]>,
    mask: Option<&'a [f32]>,
    dims: Dims,
    o: &'a mut [f32],
    p: &'a mut [f32],
}

impl WithSimd for SessionForward<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let SessionForward {
            bi,
            q,
            kv,
            bias,
            mask,
            dims,
            o,
            p,
        } = self;
        let (l, d, heads, hd) = (dims.l, dims.d, dims.heads, dims.hd());
        let scale = 1.0 / (hd as f32).sqrt();
        let mut qh = vec![0f32; l * hd];
        let mut kh = vec![0f32; l * hd];
        let mut vh = vec![0f32; l * hd];
        let mut kt = vec![0f32; hd * l];
        for h in 0..heads {
            gather(
                q, kv, dims, bi, h, &mut qh, &mut kh, &mut vh, &mut kt, false,
            );
            let ph = &mut p[h * l * l..(h + 1) * l * l];
            let mh = mask.map(|m| &m[(bi * heads + h) * l * l..(bi * heads + h + 1) * l * l]);
            for i in 0..l {
                let pr = &mut ph[i * l..(i + 1) * l];
                let bias_row = bias.map(|bb| &bb[i * l..(i + 1) * l]);
                let (a, b) = visible_range(bias_row, l);
                pr.fill(f32::NEG_INFINITY);
                let sr = &mut pr[a..b];
                sr.fill(0.0);
                // Scores Q_i·K_j for the visible keys, as Σ_c Q_ic · Kᵀ_c (no horizontal sums).
                for c in 0..hd {
                    axpy(simd, sr, qh[i * hd + c], &kt[c * l + a..c * l + b]);
                }
                match bias_row {
                    Some(br) => {
                        for (v, &bv) in sr.iter_mut().zip(&br[a..b]) {
                            *v = *v * scale + bv;
                        }
                    }
                    None => {
                        for v in sr.iter_mut() {
                            *v *= scale;
                        }
                    }
                }
                softmax_row(pr);
                let orow = &mut o[i * d + h * hd..i * d + (h + 1) * hd];
                for j in a..b {
                    let w = match mh {
                        Some(m) => pr[j] * m[i * l + j],
                        None => pr[j],
                    };
                    if w != 0.0 {
                        axpy(simd, orow, w, &vh[j * hd..(j + 1) * hd]);
                    }
                }
            }
        }
    }
}

/// The attention output `O` `[N, d]` (before the output projection) and the weights `P`
/// `[B, H, L, L]` (before dropout). `bias` is `[B, L, L]` (`true`: one per session) or
/// `[1, L, L]` (additive, −inf hides a key); `mask` is the dropout mask over `[B, H, L, L]`.
pub(crate) fn forward(
    q: &[f32],
    kv: &[f32],
    bias: Option<(&[f32], bool)>,
    mask: Option<&[f32]>,
    dims: Dims,
) -> (Vec<f32>, Vec<f32>) {
    let (l, d, heads) = (dims.l, dims.d, dims.heads);
    let mut o = vec![0f32; dims.b * l * d];
    let mut p = vec![0f32; dims.b * heads * l * l];
    if l == 0 || d == 0 {
        return (o, p);
    }
    let arch = Arch::new();
    o.par_chunks_mut(l * d)
        .zip(p.par_chunks_mut(heads * l * l))
        .enumerate()
        .for_each(|(bi, (o, p))| {
            let bias = bias.map(|(bs, per_session)| {
                let start = if per_session { bi * l * l } else { 0 };
                &bs[start..start + l * l]
            });
            arch.dispatch(SessionForward {
                bi,
                q,
                kv,
                bias,
                mask,
                dims,
                o,
                p,
            });
        });
    (o, p)
}

struct SessionBackward<'a> {
    bi: usize,
    d_o: &'a [f32],
    q: &'a [f32],
    kv: &'a [f32],
    p: &'a [f32],
    mask: Option<&'a [f32]>,
    dims: Dims,
    dq: &'a mut [f32],
    dkv: &'a mut [f32],
}

impl WithSimd for SessionBackward<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let SessionBackward {
            bi,
            d_o,
            q,
            kv,
            p,
            mask,
            dims,
            dq,
            dkv,
        } = self;
        let (l, d, heads, hd) = (dims.l, dims.d, dims.heads, dims.hd());
        let scale = 1.0 / (hd as f32).sqrt();
        let mut qh = vec![0f32; l * hd];
        let mut kh = vec![0f32; l * hd];
        let mut vh = vec![0f32; l * hd];
        let mut vt = vec![0f32; hd * l];
        let mut dkh = vec![0f32; l * hd];
        let mut dvh = vec![0f32; l * hd];
        let mut dp = vec![0f32; l];
        let mut pd = vec![0f32; l];
        for h in 0..heads {
            gather(q, kv, dims, bi, h, &mut qh, &mut kh, &mut vh, &mut vt, true);
            dkh.fill(0.0);
            dvh.fill(0.0);
            let at = (bi * heads + h) * l * l;
            let ph = &p[at..at + l * l];
            let mh = mask.map(|m| &m[at..at + l * l]);
            for i in 0..l {
                let pr = &ph[i * l..(i + 1) * l];
                // Keys with a weight; the others get dS = 0.
                let a = pr.iter().position(|&v| v != 0.0).unwrap_or(l);
                let b = pr.iter().rposition(|&v| v != 0.0).map_or(a, |j| j + 1);
                if a >= b {
                    continue;
                }
                let dorow = &d_o[(bi * l + i) * d + h * hd..(bi * l + i) * d + (h + 1) * hd];
                // dPd_ij = dO_i · V_j, as Σ_c dO_ic · Vᵀ_c.
                let dpr = &mut dp[a..b];
                dpr.fill(0.0);
                for c in 0..hd {
                    axpy(simd, dpr, dorow[c], &vt[c * l + a..c * l + b]);
                }
                match mh {
                    Some(m) => {
                        let mr = &m[i * l..(i + 1) * l];
                        for j in a..b {
                            pd[j] = pr[j] * mr[j];
                            dp[j] *= mr[j];
                        }
                    }
                    None => pd[a..b].copy_from_slice(&pr[a..b]),
                }
                // dV_j += Pd_ij · dO_i
                for j in a..b {
                    if pd[j] != 0.0 {
                        axpy(simd, &mut dvh[j * hd..(j + 1) * hd], pd[j], dorow);
                    }
                }
                // dS_ij = P_ij (dP_ij − Σ_k dP_ik P_ik), scaled: dQ_i += dS_ij K_j, dK_j += dS_ij Q_i.
                let dotp = dot(simd, &dp[a..b], &pr[a..b]);
                let dqrow = &mut dq[i * d + h * hd..i * d + (h + 1) * hd];
                let qi = &qh[i * hd..(i + 1) * hd];
                for j in a..b {
                    if pr[j] != 0.0 {
                        let ds = pr[j] * (dp[j] - dotp) * scale;
                        axpy(simd, dqrow, ds, &kh[j * hd..(j + 1) * hd]);
                        axpy(simd, &mut dkh[j * hd..(j + 1) * hd], ds, qi);
                    }
                }
            }
            for j in 0..l {
                let row = j * 2 * d + h * hd;
                dkv[row..row + hd].copy_from_slice(&dkh[j * hd..(j + 1) * hd]);
                dkv[row + d..row + d + hd].copy_from_slice(&dvh[j * hd..(j + 1) * hd]);
            }
        }
    }
}

/// The gradients `(dQ [N, d], dKV [N, 2d])` from the output gradient `dO` `[N, d]` and what
/// [`forward`] saw and returned.
pub(crate) fn backward(
    d_o: &[f32],
    q: &[f32],
    kv: &[f32],
    p: &[f32],
    mask: Option<&[f32]>,
    dims: Dims,
) -> (Vec<f32>, Vec<f32>) {
    let (l, d) = (dims.l, dims.d);
    let mut dq = vec![0f32; dims.b * l * d];
    let mut dkv = vec![0f32; dims.b * l * 2 * d];
    if l == 0 || d == 0 {
        return (dq, dkv);
    }
    let arch = Arch::new();
    dq.par_chunks_mut(l * d)
        .zip(dkv.par_chunks_mut(l * 2 * d))
        .enumerate()
        .for_each(|(bi, (dq, dkv))| {
            arch.dispatch(SessionBackward {
                bi,
                d_o,
                q,
                kv,
                p,
                mask,
                dims,
                dq,
                dkv,
            });
        });
    (dq, dkv)
}
