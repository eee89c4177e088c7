//! A fused block's view of its linear layers and layer norms: detached weights for the forward
//! pass, the original parameters to attach gradients to, and the gradient formulas.

use candle_core::Tensor;

use super::{
    kernels::{self, LayerNormGrads},
    products::{gt_x, to_vec, x_wt},
};
use crate::nn::{cpu_slice::F32View, LayerNorm, Linear};

/// One or more linear layers over the same input, stacked by output rows (`[Wk; Wv]`).
pub(crate) struct LinearParts {
    /// The stacked weight `[Σ out, in]`, detached.
    pub w: Tensor,
    /// The stacked bias (zeros for layers without one).
    pub b: Vec<f32>,
    /// Each layer's (weight, bias) as the model holds them.
    originals: Vec<(Tensor, Option<Tensor>)>,
}

impl LinearParts {
    /// The layers' parameters, stacked.
    pub fn new(layers: &[&Linear]) -> candle_core::Result<Self> {
        let ws: Vec<Tensor> = layers.iter().map(|l| l.weight().detach()).collect();
        let w = if ws.len() == 1 {
            ws[0].contiguous()?
        } else {
            Tensor::cat(&ws, 0)?
        };
        let mut b = Vec::with_capacity(w.dim(0)?);
        for l in layers {
            match l.bias() {
                Some(bias) => b.extend(to_vec(bias)?),
                None => b.extend(std::iter::repeat_n(0f32, l.weight().dim(0)?)),
            }
        }
        Ok(LinearParts {
            w,
            b,
            originals: layers
                .iter()
                .map(|l| (l.weight().clone(), l.bias().cloned()))
                .collect(),
        })
    }

    /// Output width (all layers together).
    pub fn out_dim(&self) -> candle_core::Result<usize> {
        self.w.dim(0)
    }

    /// `x · Wᵀ + b`, `[n, Σ out]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Vec<f32>> {
        let y = x_wt(x, &self.w)?;
        let yv = F32View::new(&y, "linear output")?;
        Ok(kernels::bias_dropout_residual(
            yv.get(),
            &self.b,
            None,
            None,
            self.b.len(),
        ))
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
    pub fn grads(&self, dy: &Tensor, x: &Tensor) -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
        let dw = to_vec(&gt_x(dy, x)?)?;
        let out = self.b.len();
        let db = {
            let v = F32View::new(dy, "linear output gradient")?;
            kernels::column_sums(v.get(), out)
        };
        Ok((dw, db))
    }

    /// Appends the gradients in [`params`](Self::params)' order, splitting the stacked ones.
    pub fn push_grads(&self, grads: &mut Vec<Vec<f32>>, dw: Vec<f32>, db: Vec<f32>) {
        let mut row = 0;
        let cols = dw.len() / self.b.len().max(1);
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
    pub fn forward(&self, x: &[f32], d: usize) -> (Vec<f32>, Vec<(f32, f32)>) {
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
