//! The matrix products of the fused blocks, through candle's gemm (transposes are strides, not
//! copies), on detached tensors: they build no autograd graph.

use candle_core::{Result, Tensor};

/// `x · wᵀ`: `[m, k] × [n, k] → [m, n]` (a linear layer without its bias).
pub(crate) fn x_wt(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.matmul(&w.t()?)
}

/// `gᵀ · x`: `[m, n]ᵀ × [m, k] → [n, k]` (a weight gradient).
pub(crate) fn gt_x(g: &Tensor, x: &Tensor) -> Result<Tensor> {
    g.t()?.matmul(x)
}

/// `g · w`: `[m, n] × [n, k] → [m, k]` (an input gradient).
pub(crate) fn g_w(g: &Tensor, w: &Tensor) -> Result<Tensor> {
    g.matmul(w)
}

/// A tensor's elements as a `Vec` (small tensors: weights and their gradients).
pub(crate) fn to_vec(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}
