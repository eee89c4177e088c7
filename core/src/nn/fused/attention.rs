//! Multi-head attention inside a fused block: `softmax(Q Kᵀ/√d_h + bias)`, dropout, `· V`, per
//! session and head, with its backward pass.
//!
//! Queries are `[N, d]` and keys and values one `[N, 2d]` buffer (keys in the first `d` columns),
//! `N = B·L` rows, head `h` in columns `h·d_h .. (h+1)·d_h`. Each session is one parallel task; a
//! head's queries, keys and values are copied into small contiguous buffers that stay in cache,
//! and its five products (`Q Kᵀ`, `P V`, `dO Vᵀ`, `dS K`, `dSᵀ Q`, `Pᵀ dO`) go through one small
//! register-tiled kernel compiled for the best SIMD level the CPU has (pulp's run-time dispatch:
//! AVX2 + FMA on x86-64). Masked keys (bias −inf) get weight exactly 0.

use pulp::{Arch, Simd, WithSimd};
use rayon::prelude::*;

use crate::nn::{fast_exp, workspace::Buf};

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

/// One SIMD vector from `x` (`x.len()` ≤ the lane count; a plain load when it is the full width).
#[inline(always)]
fn load<S: Simd>(simd: S, x: &[f32]) -> S::f32s {
    match S::as_simd_f32s(x) {
        ([v], []) => *v,
        _ => simd.partial_load_f32s(x),
    }
}

/// Stores one SIMD vector into `x` (`x.len()` ≤ the lane count).
#[inline(always)]
fn store<S: Simd>(simd: S, x: &mut [f32], v: S::f32s) {
    match S::as_mut_simd_f32s(x) {
        ([o], []) => *o = v,
        _ => simd.partial_store_f32s(x, v),
    }
}

/// One block of `c = a · b`: rows `i..i + R` and the `V` full SIMD vectors of columns from `j`,
/// accumulated in `R·V` registers over `k` (each `b` load feeds `R` FMAs, each `a` broadcast `V`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn gemm_tile<S: Simd, const R: usize, const V: usize>(
    simd: S,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    i: usize,
    j: usize,
    k: usize,
    n: usize,
) {
    let lanes = S::F32_LANES;
    let mut acc = [[simd.splat_f32s(0.0); V]; R];
    for p in 0..k {
        let row = &b[p * n + j..p * n + j + V * lanes];
        let mut bv = [simd.splat_f32s(0.0); V];
        for (v, bv) in bv.iter_mut().enumerate() {
            *bv = load(simd, &row[v * lanes..(v + 1) * lanes]);
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            let av = simd.splat_f32s(a[(i + r) * k + p]);
            for (acc, &bv) in acc.iter_mut().zip(&bv) {
                *acc = simd.mul_add_e_f32s(av, bv, *acc);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        let out = &mut c[(i + r) * n + j..(i + r) * n + j + V * lanes];
        for (v, &acc) in acc.iter().enumerate() {
            store(simd, &mut out[v * lanes..(v + 1) * lanes], acc);
        }
    }
}

/// Columns `j..j + w` of `c = a · b` (`w` below the lane count), a row at a time.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn gemm_tail<S: Simd>(
    simd: S,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    m: usize,
    j: usize,
    w: usize,
    k: usize,
    n: usize,
) {
    for i in 0..m {
        let mut acc = simd.splat_f32s(0.0);
        for p in 0..k {
            let bv = load(simd, &b[p * n + j..p * n + j + w]);
            acc = simd.mul_add_e_f32s(simd.splat_f32s(a[i * k + p]), bv, acc);
        }
        store(simd, &mut c[i * n + j..i * n + j + w], acc);
    }
}

/// The full-vector columns `j..j + V·lanes` of `c = a · b`, in blocks of 4 rows.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn gemm_columns<S: Simd, const V: usize>(
    simd: S,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    m: usize,
    j: usize,
    k: usize,
    n: usize,
) {
    let mut i = 0;
    while i + 4 <= m {
        gemm_tile::<S, 4, V>(simd, a, b, c, i, j, k, n);
        i += 4;
    }
    while i < m {
        gemm_tile::<S, 1, V>(simd, a, b, c, i, j, k, n);
        i += 1;
    }
}

/// `c = a · b` for row-major `a` `[m, k]`, `b` `[k, n]`, `c` `[m, n]`, in register tiles of 4
/// rows by two SIMD vectors of columns (8 accumulators, enough to keep both FMA units busy), then
/// one vector, then the columns left over. Each element is one sum over `k` in order, whatever
/// tile computes it.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn small_gemm<S: Simd>(simd: S, a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize) {
    let lanes = S::F32_LANES;
    let mut j = 0;
    while j + 2 * lanes <= n {
        gemm_columns::<S, 2>(simd, a, b, c, m, j, k, n);
        j += 2 * lanes;
    }
    if j + lanes <= n {
        gemm_columns::<S, 1>(simd, a, b, c, m, j, k, n);
        j += lanes;
    }
    if j < n {
        gemm_tail(simd, a, b, c, m, j, n - j, k, n);
    }
}

/// `t = xᵀ` for row-major `x` `[rows, cols]`.
#[inline(always)]
fn transpose(x: &[f32], t: &mut [f32], rows: usize, cols: usize) {
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = x[r * cols + c];
        }
    }
}

/// `Σ x`, lane by lane then across the lanes (a fixed order for a given length).
#[inline(always)]
fn sum<S: Simd>(simd: S, x: &[f32]) -> f32 {
    let (head, tail) = S::as_simd_f32s(x);
    let mut acc = simd.splat_f32s(0.0);
    for &v in head {
        acc = simd.add_f32s(acc, v);
    }
    let mut s = simd.reduce_sum_f32s(acc);
    for &v in tail {
        s += v;
    }
    s
}

/// Softmax of one row of scores in place; `-inf` scores get exactly 0. The exponentials are one
/// vectorised pass and their sum another (a running scalar sum would keep the pass scalar).
#[inline(always)]
fn softmax_row<S: Simd>(simd: S, row: &mut [f32]) {
    let mx = fast_exp::max(row);
    for v in row.iter_mut() {
        let e = fast_exp::exp(*v - mx);
        *v = if *v == f32::NEG_INFINITY { 0.0 } else { e };
    }
    let inv = 1.0 / sum(simd, row);
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
        let mut pd = vec![0f32; l * l];
        let mut oh = vec![0f32; l * hd];
        for h in 0..heads {
            gather(
                q, kv, dims, bi, h, &mut qh, &mut kh, &mut vh, &mut kt, false,
            );
            let ph = &mut p[h * l * l..(h + 1) * l * l];
            // Scores Q Kᵀ for the whole head, then scale, bias and softmax row by row.
            small_gemm(simd, &qh, &kt, ph, l, hd, l);
            for i in 0..l {
                let pr = &mut ph[i * l..(i + 1) * l];
                match bias.map(|bb| &bb[i * l..(i + 1) * l]) {
                    Some(br) => {
                        for (v, &bv) in pr.iter_mut().zip(br) {
                            *v = *v * scale + bv;
                        }
                    }
                    None => {
                        for v in pr.iter_mut() {
                            *v *= scale;
                        }
                    }
                }
                softmax_row(simd, pr);
            }
            let weights: &[f32] = match mask {
                Some(m) => {
                    let mh = &m[(bi * heads + h) * l * l..(bi * heads + h + 1) * l * l];
                    for ((o, &pv), &mv) in pd.iter_mut().zip(ph.iter()).zip(mh) {
                        *o = pv * mv;
                    }
                    &pd
                }
                None => ph,
            };
            small_gemm(simd, weights, &vh, &mut oh, l, l, hd);
            for i in 0..l {
                o[i * d + h * hd..i * d + (h + 1) * hd].copy_from_slice(&oh[i * hd..(i + 1) * hd]);
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
) -> (Buf, Buf) {
    let (l, d, heads) = (dims.l, dims.d, dims.heads);
    let mut o = Buf::scratch(dims.b * l * d);
    let mut p = Buf::scratch(dims.b * heads * l * l);
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
        let mut doh = vec![0f32; l * hd];
        let mut dp = vec![0f32; l * l];
        let mut ds = vec![0f32; l * l];
        let mut t = vec![0f32; l * l];
        let mut dqh = vec![0f32; l * hd];
        let mut dkh = vec![0f32; l * hd];
        let mut dvh = vec![0f32; l * hd];
        for h in 0..heads {
            gather(q, kv, dims, bi, h, &mut qh, &mut kh, &mut vh, &mut vt, true);
            for i in 0..l {
                let row = (bi * l + i) * d + h * hd;
                doh[i * hd..(i + 1) * hd].copy_from_slice(&d_o[row..row + hd]);
            }
            let at = (bi * heads + h) * l * l;
            let ph = &p[at..at + l * l];
            let mh = mask.map(|m| &m[at..at + l * l]);
            // dPd = dO Vᵀ
            small_gemm(simd, &doh, &vt, &mut dp, l, hd, l);
            // dP = dPd ⊙ mask; dS = P ⊙ (dP − Σ_k dP_k P_k) · scale; t = Pdᵀ for dV.
            for i in 0..l {
                let pr = &ph[i * l..(i + 1) * l];
                let dpr = &mut dp[i * l..(i + 1) * l];
                if let Some(m) = mh {
                    for (v, &mv) in dpr.iter_mut().zip(&m[i * l..(i + 1) * l]) {
                        *v *= mv;
                    }
                }
                let dotp = dot(simd, dpr, pr);
                for ((o, &pv), &g) in ds[i * l..(i + 1) * l].iter_mut().zip(pr).zip(dpr.iter()) {
                    *o = pv * (g - dotp) * scale;
                }
            }
            // dV = Pdᵀ dO
            match mh {
                Some(m) => {
                    for i in 0..l {
                        for j in 0..l {
                            t[j * l + i] = ph[i * l + j] * m[i * l + j];
                        }
                    }
                }
                None => transpose(ph, &mut t, l, l),
            }
            small_gemm(simd, &t, &doh, &mut dvh, l, l, hd);
            // dQ = dS K; dK = dSᵀ Q
            small_gemm(simd, &ds, &kh, &mut dqh, l, l, hd);
            transpose(&ds, &mut t, l, l);
            small_gemm(simd, &t, &qh, &mut dkh, l, l, hd);
            for j in 0..l {
                dq[j * d + h * hd..j * d + (h + 1) * hd]
                    .copy_from_slice(&dqh[j * hd..(j + 1) * hd]);
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
) -> (Buf, Buf) {
    let (l, d) = (dims.l, dims.d);
    let mut dq = Buf::scratch(dims.b * l * d);
    let mut dkv = Buf::scratch(dims.b * l * 2 * d);
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

struct LastQuery<'a> {
    bi: usize,
    q: &'a [f32],
    kv: &'a [f32],
    bias: Option<&'a [f32]>,
    dims: Dims,
    o: &'a mut [f32],
}

impl WithSimd for LastQuery<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let LastQuery {
            bi,
            q,
            kv,
            bias,
            dims,
            o,
        } = self;
        let (l, d, heads, hd) = (dims.l, dims.d, dims.heads, dims.hd());
        let scale = 1.0 / (hd as f32).sqrt();
        let mut p = vec![0f32; l];
        for h in 0..heads {
            let qh = &q[h * hd..(h + 1) * hd];
            for (j, pj) in p.iter_mut().enumerate() {
                let row = (bi * l + j) * 2 * d + h * hd;
                let s = dot(simd, qh, &kv[row..row + hd]) * scale;
                *pj = match bias {
                    Some(b) => s + b[j],
                    None => s,
                };
            }
            softmax_row(simd, &mut p);
            let oh = &mut o[h * hd..(h + 1) * hd];
            oh.fill(0.0);
            for (j, &pj) in p.iter().enumerate() {
                let row = (bi * l + j) * 2 * d + d + h * hd;
                for (o, &v) in oh.iter_mut().zip(&kv[row..row + hd]) {
                    *o += pj * v;
                }
            }
        }
    }
}

/// Eval-mode attention of one query per session (its last position) over all of its keys: the
/// output `[B, d]` from queries `q` `[B, d]` and keys and values `kv` `[B·L, 2d]`. `bias` is the
/// last query's row of the attention bias, `[B, L]` (`true`: one per session) or `[1, L]`.
pub(crate) fn forward_last(q: &[f32], kv: &[f32], bias: Option<(&[f32], bool)>, dims: Dims) -> Buf {
    let (l, d) = (dims.l, dims.d);
    let mut o = Buf::scratch(dims.b * d);
    if l == 0 || d == 0 {
        o.fill(0.0);
        return o;
    }
    let arch = Arch::new();
    o.par_chunks_mut(d).enumerate().for_each(|(bi, o)| {
        let bias = bias.map(|(bs, per_session)| {
            let start = if per_session { bi * l } else { 0 };
            &bs[start..start + l]
        });
        arch.dispatch(LastQuery {
            bi,
            q: &q[bi * d..(bi + 1) * d],
            kv,
            bias,
            dims,
            o,
        });
    });
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Gemm<'a> {
        a: &'a [f32],
        b: &'a [f32],
        c: &'a mut [f32],
        m: usize,
        k: usize,
        n: usize,
    }

    impl WithSimd for Gemm<'_> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: Simd>(self, simd: S) {
            small_gemm(simd, self.a, self.b, self.c, self.m, self.k, self.n);
        }
    }

    /// Every tile path (4-row blocks and single rows; two, one and part of a SIMD vector of
    /// columns) against a naive product, on whatever SIMD level this CPU has.
    #[test]
    fn small_gemm_equals_a_naive_product_for_every_tile_shape() {
        for m in [1usize, 3, 4, 5, 50] {
            for n in [1usize, 7, 16, 31, 32, 33, 50, 64, 128] {
                for k in [1usize, 3, 32] {
                    let a: Vec<f32> = (0..m * k)
                        .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1)
                        .collect();
                    let b: Vec<f32> = (0..k * n)
                        .map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.2)
                        .collect();
                    let mut c = vec![f32::NAN; m * n];
                    Arch::new().dispatch(Gemm {
                        a: &a,
                        b: &b,
                        c: &mut c,
                        m,
                        k,
                        n,
                    });
                    for i in 0..m {
                        for j in 0..n {
                            let want: f64 = (0..k)
                                .map(|p| f64::from(a[i * k + p]) * f64::from(b[p * n + j]))
                                .sum();
                            let got = c[i * n + j];
                            assert!(
                                (f64::from(got) - want).abs() < 1e-4,
                                "m {m} n {n} k {k}: c[{i}, {j}] = {got}, expected {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}
