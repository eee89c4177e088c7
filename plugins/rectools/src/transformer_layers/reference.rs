//! Test-only reference math in plain `f64` (no candle ops): linear, LayerNorm, torch-style
//! multi-head attention, activations. The layer tests compute the expected outputs of RecTools'
//! formulas (docs/rectools.md §3) with these, from the parameters the stacks created.

use recblocks_core::{
    candle::{DType, Tensor},
    CoreError, Result,
};

use crate::test_util::Env;

/// A row-major matrix: `rows × cols`.
pub(crate) type Mat = Vec<Vec<f64>>;

/// A 2-D tensor as a matrix.
pub(crate) fn rows(t: &Tensor) -> Result<Mat> {
    Ok(t.to_dtype(DType::F64)?.to_vec2::<f64>()?)
}

/// A `[B, L, d]` tensor as one `L × d` matrix per session.
pub(crate) fn batches(t: &Tensor) -> Result<Vec<Mat>> {
    Ok(t.to_dtype(DType::F64)?.to_vec3::<f64>()?)
}

/// The additive attention bias of each session as an `L × L` matrix (zeros when `None`).
pub(crate) fn batch_biases(bias: Option<&Tensor>, b: usize, l: usize) -> Result<Vec<Mat>> {
    match bias {
        None => Ok(vec![vec![vec![0.0; l]; l]; b]),
        Some(t) => {
            let full = t.broadcast_as((b, 1, l, l))?.squeeze(1)?.contiguous()?;
            batches(&full)
        }
    }
}

/// `x W^T + b`.
pub(crate) struct Lin {
    w: Mat,
    b: Option<Vec<f64>>,
}

impl Lin {
    /// Reads `{prefix}.weight` and, when present, `{prefix}.bias`.
    pub(crate) fn load(env: &Env, prefix: &str) -> Result<Self> {
        let w = rows(&env.param(&format!("{prefix}.weight"))?)?;
        let b = match env.param(&format!("{prefix}.bias")) {
            Ok(t) => Some(t.to_dtype(DType::F64)?.to_vec1::<f64>()?),
            Err(_) => None,
        };
        Ok(Lin { w, b })
    }

    pub(crate) fn apply(&self, x: &Mat) -> Mat {
        x.iter()
            .map(|row| {
                self.w
                    .iter()
                    .enumerate()
                    .map(|(o, wr)| {
                        let dot: f64 = wr.iter().zip(row).map(|(a, b)| a * b).sum();
                        dot + self.b.as_ref().map_or(0.0, |b| b[o])
                    })
                    .collect()
            })
            .collect()
    }
}

/// torch `nn.LayerNorm` (biased variance).
pub(crate) struct Ln {
    w: Vec<f64>,
    b: Vec<f64>,
    eps: f64,
}

impl Ln {
    pub(crate) fn load(env: &Env, prefix: &str, eps: f64) -> Result<Self> {
        let v = |n: &str| -> Result<Vec<f64>> {
            Ok(env
                .param(&format!("{prefix}.{n}"))?
                .to_dtype(DType::F64)?
                .to_vec1::<f64>()?)
        };
        Ok(Ln {
            w: v("weight")?,
            b: v("bias")?,
            eps,
        })
    }

    pub(crate) fn apply(&self, x: &Mat) -> Mat {
        x.iter()
            .map(|row| {
                let n = row.len() as f64;
                let mean = row.iter().sum::<f64>() / n;
                let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
                row.iter()
                    .enumerate()
                    .map(|(i, v)| (v - mean) / (var + self.eps).sqrt() * self.w[i] + self.b[i])
                    .collect()
            })
            .collect()
    }
}

/// torch `nn.MultiheadAttention` math (eval: no attention dropout).
pub(crate) struct Mha {
    q: Lin,
    k: Lin,
    v: Lin,
    o: Lin,
    heads: usize,
}

impl Mha {
    pub(crate) fn load(env: &Env, prefix: &str, heads: usize) -> Result<Self> {
        Ok(Mha {
            q: Lin::load(env, &format!("{prefix}.q_proj"))?,
            k: Lin::load(env, &format!("{prefix}.k_proj"))?,
            v: Lin::load(env, &format!("{prefix}.v_proj"))?,
            o: Lin::load(env, &format!("{prefix}.out_proj"))?,
            heads,
        })
    }

    /// `softmax(Q Kᵀ / √d_h + bias) V` per head, concatenated, then the output projection.
    pub(crate) fn apply(&self, q_in: &Mat, k_in: &Mat, v_in: &Mat, bias: &Mat) -> Mat {
        let (q, k, v) = (self.q.apply(q_in), self.k.apply(k_in), self.v.apply(v_in));
        let d = q[0].len();
        let dh = d / self.heads;
        let mut out = vec![vec![0.0; d]; q.len()];
        for h in 0..self.heads {
            let cols = h * dh..(h + 1) * dh;
            for (i, qi) in q.iter().enumerate() {
                let scores: Vec<f64> = k
                    .iter()
                    .enumerate()
                    .map(|(j, kj)| {
                        let s: f64 = cols.clone().map(|c| qi[c] * kj[c]).sum();
                        s / (dh as f64).sqrt() + bias[i][j]
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let z: f64 = e.iter().sum();
                for c in cols.clone() {
                    out[i][c] = e.iter().zip(&v).map(|(w, vj)| w / z * vj[c]).sum();
                }
            }
        }
        self.o.apply(&out)
    }
}

/// Element-wise `a + b`.
pub(crate) fn add(a: &Mat, b: &Mat) -> Mat {
    zip(a, b, |x, y| x + y)
}

/// Element-wise `f(a, b)`.
pub(crate) fn zip(a: &Mat, b: &Mat, f: impl Fn(f64, f64) -> f64) -> Mat {
    a.iter()
        .zip(b)
        .map(|(ra, rb)| ra.iter().zip(rb).map(|(x, y)| f(*x, *y)).collect())
        .collect()
}

/// Element-wise `f(a)`.
pub(crate) fn map(a: &Mat, f: impl Fn(f64) -> f64) -> Mat {
    a.iter()
        .map(|r| r.iter().map(|x| f(*x)).collect())
        .collect()
}

/// Row `i` times `s[i]` (the timeline mask).
pub(crate) fn scale_rows(a: &Mat, s: &[f64]) -> Mat {
    a.iter()
        .zip(s)
        .map(|(r, s)| r.iter().map(|x| x * s).collect())
        .collect()
}

pub(crate) fn relu(x: f64) -> f64 {
    x.max(0.0)
}

pub(crate) fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

pub(crate) fn silu(x: f64) -> f64 {
    x * sigmoid(x)
}

/// Exact GELU, `x Φ(x) = x (1 + erf(x / √2)) / 2`.
pub(crate) fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))
}

/// erf by its Maclaurin series for |x| ≤ 3 (error below 1e-12), Abramowitz–Stegun 7.1.26
/// beyond (error below 1.5e-7).
pub(crate) fn erf(x: f64) -> f64 {
    if x.abs() <= 3.0 {
        let mut term = x; // x^(2n+1) (-1)^n / n!
        let mut sum = x;
        for n in 1..80 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        return 2.0 / std::f64::consts::PI.sqrt() * sum;
    }
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    (1.0 - poly * (-x * x).exp()).copysign(x)
}

/// Backpropagates `Σ out ⊙ c` (c varies per element, so no norm makes it constant) and checks
/// that every parameter gets a finite gradient, non-zero except the key bias (softmax is
/// invariant to it: `q·b_k` is the same for every key).
pub(crate) fn assert_every_parameter_learns(env: &Env, out: &Tensor) -> Result<()> {
    let n = out.elem_count();
    let c = Tensor::arange(0f32, n as f32, out.device())?
        .affine(0.37, 0.0)?
        .sin()?
        .reshape(out.shape())?;
    let grads = (out * c)?.sum_all()?.backward()?;
    for name in env.param_names() {
        let p = env.param(&name)?;
        let g = grads
            .get(&p)
            .ok_or_else(|| CoreError::Other(format!("`{name}` gets no gradient")))?;
        let g = g.flatten_all()?.to_vec1::<f32>()?;
        assert!(g.iter().all(|v| v.is_finite()), "`{name}`: {g:?}");
        let max = g.iter().fold(0f32, |m, v| m.max(v.abs()));
        if name.ends_with("k_proj.bias") {
            assert!(max < 1e-4, "`{name}` gradient should vanish, max {max}");
        } else {
            assert!(max > 1e-7, "`{name}` gets a zero gradient");
        }
    }
    Ok(())
}

#[test]
fn erf_and_gelu_match_known_values() {
    // math.erf(0.5) = 0.5204998778130465, math.erf(-1.7) = -0.9837904585907746,
    // math.erf(3.5) = 0.9999992569016276; torch.nn.GELU()(1.) = 0.8413447
    assert!((erf(0.5) - 0.520_499_877_813_046_5).abs() < 1e-12);
    assert!((erf(-1.7) + 0.983_790_458_590_774_6).abs() < 1e-12);
    assert!((erf(3.5) - 0.999_999_256_901_627_6).abs() < 2e-7);
    assert!((gelu(1.0) - 0.841_344_746).abs() < 1e-8);
}
