//! A fused block's view of its linear layers and layer norms: detached weights for the forward
//! pass, the original parameters to attach gradients to, and the gradient formulas.

use candle_core::Tensor;

use super::{
    kernels::{self, LayerNormGrads},
    products::{g_w, gt_x, to_vec, x_wt},
};
use crate::nn::{workspace::Buf, LayerNorm, Linear};

/// One or more linear layers over the same input, stacked by output rows (`[Wk; Wv]`).
pub(crate) struct LinearParts {
    /// The stacked weight `[Σ out, in]`, row-major.
    pub w: Vec<f32>,
    /// The stacked bias (zeros for layers without one).
    pub b: Vec<f32>,
    /// Input width.
    in_dim: usize,
    /// Each layer's (weight, bias) as the model holds them.
    originals: Vec<(Tensor, Option<Tensor>)>,
}

impl LinearParts {
    /// The layers' parameters, stacked.
    pub fn new(layers: &[&Linear]) -> candle_core::Result<Self> {
        let mut w = Vec::new();
        let mut b = Vec::new();
        let mut in_dim = None;
        for l in layers {
            let (out, inp) = l.weight().dims2()?;
            if in_dim.is_some_and(|i| i != inp) {
                return Err(candle_core::Error::Msg(format!(
                    "stacked linear layers take inputs of {} and {inp} features",
                    in_dim.unwrap_or(0)
                )));
            }
            in_dim = Some(inp);
            w.extend(to_vec(l.weight())?);
            match l.bias() {
                Some(bias) => b.extend(to_vec(bias)?),
                None => b.extend(std::iter::repeat_n(0f32, out)),
            }
        }
        Ok(LinearParts {
            w,
            b,
            in_dim: in_dim.unwrap_or(0),
            originals: layers
                .iter()
                .map(|l| (l.weight().clone(), l.bias().cloned()))
                .collect(),
        })
    }

    /// Input width.
    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    /// Output width (all layers together).
    pub fn out_dim(&self) -> usize {
        self.b.len()
    }

    /// `x · Wᵀ` `[n, Σ out]` without the bias (a fused kernel adds it).
    pub fn product(&self, x: &[f32]) -> candle_core::Result<Buf> {
        x_wt(x, &self.w, self.out_dim(), self.in_dim)
    }

    /// `x · Wᵀ + b`, `[n, Σ out]`.
    pub fn forward(&self, x: &[f32]) -> candle_core::Result<Buf> {
        let y = self.product(x)?;
        Ok(kernels::bias_dropout_residual(
            &y,
            &self.b,
            None,
            None,
            self.out_dim(),
        ))
    }

    /// The gradient of the input from the output gradient `dy` `[n, Σ out]`: `dy · W`.
    pub fn input_grad(&self, dy: &[f32]) -> candle_core::Result<Buf> {
        g_w(dy, &self.w, self.out_dim(), self.in_dim)
    }

    /// The parameters to attach gradients to: each layer's weight, then its bias if any.
    pub fn params(&self) -> Vec<Tensor> {
        let mut out = Vec::new();
        for (w, b) in &self.originals {
            out.push(w.clone());
            if let Some(b) = b {
                out.push(b.clone());
            }
        }
        out
    }

    /// The stacked weight and bias gradients from the output gradient `dy` `[n, Σ out]` and the
    /// input `x` `[n, in]`.
    pub fn grads(&self, dy: &[f32], x: &[f32]) -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
        let dw = gt_x(dy, x, self.out_dim(), self.in_dim)?;
        let db = kernels::column_sums(dy, self.out_dim());
        Ok((dw, db))
    }

    /// Appends the gradients in [`params`](Self::params)' order, splitting the stacked ones.
    pub fn push_grads(&self, grads: &mut Vec<Vec<f32>>, dw: Vec<f32>, db: Vec<f32>) {
        let mut row = 0;
        let cols = self.in_dim;
        for (w, b) in &self.originals {
            let rows = w.dims().first().copied().unwrap_or(0);
            grads.push(dw[row * cols..(row + rows) * cols].to_vec());
            if b.is_some() {
                grads.push(db[row..row + rows].to_vec());
            }
            row += rows;
        }
    }
}

/// A layer norm's parameters.
pub(crate) struct NormParts {
    w: Vec<f32>,
    b: Vec<f32>,
    eps: f32,
    originals: [Tensor; 2],
}

impl NormParts {
    /// The norm's parameters.
    pub fn new(norm: &LayerNorm) -> candle_core::Result<Self> {
        Ok(NormParts {
            w: to_vec(&norm.weight)?,
            b: to_vec(&norm.bias)?,
            eps: norm.eps as f32,
            originals: [norm.weight.clone(), norm.bias.clone()],
        })
    }

    /// The normalised rows and each row's `(mean, 1/σ)`.
    pub fn forward(&self, x: &[f32], d: usize) -> (Buf, Vec<(f32, f32)>) {
        kernels::layer_norm(x, &self.w, &self.b, d, self.eps)
    }

    /// The norm's gradients for the output gradient `dy + dy2`, with `extra` added to `dx`.
    pub fn backward(
        &self,
        x: &[f32],
        stats: &[(f32, f32)],
        dy: &[f32],
        dy2: Option<&[f32]>,
        extra: Option<&[f32]>,
        d: usize,
    ) -> LayerNormGrads {
        kernels::layer_norm_backward(x, stats, &self.w, dy, dy2, extra, d)
    }

    /// Weight, then bias.
    pub fn params(&self) -> Vec<Tensor> {
        self.originals.to_vec()
    }
}
