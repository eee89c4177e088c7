//! A linear layer `y = x·Wᵀ + b` as one autograd node with a hand-written backward pass
//! (`dx = g·W`, `dW = gᵀ·x`, `db = Σ_rows g`), for devices where every candle op is a kernel
//! launch.
//!
//! Composed from candle ops a linear layer is five graph nodes (flatten, transpose, product, bias,
//! unflatten), and candle's backward pass gives each a zeroed gradient to add into: about sixteen
//! launches backward on a GPU. This node computes the same ops on detached tensors (no graph) and
//! its backward in three products and a column sum, plus candle's accumulation into `x`, `W` and
//! `b`: about nine. It runs wherever its ops do (the tests compare it with the composed layer on
//! the CPU); [`crate::nn::Linear`] uses it on CUDA devices.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use super::precomputed::Precomputed;

/// `x·Wᵀ + b` over the last dimension of `x`, as one node.
pub(crate) fn linear_node(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (out_dim, in_dim) = weight.dims2()?;
    let rows = x.elem_count() / in_dim.max(1);
    let mut out_dims = x.dims().to_vec();
    if let Some(last) = out_dims.last_mut() {
        *last = out_dim;
    }
    let x2d = x.detach().reshape((rows, in_dim))?.contiguous()?;
    let w = weight.detach();
    let y = crate::nn::linear::add_bias(&x2d.matmul(&w.t()?)?, &bias.detach())?;
    let y = y.reshape(out_dims)?;
    if !(x.track_op() || weight.track_op() || bias.track_op()) {
        return Ok(y);
    }
    if let Some(collector) = super::param_grads::writer(x, &[weight, bias]) {
        // Under a trainer's scope: a node over x alone, writing dW and db to the scope.
        let x_shape = x.shape().clone();
        let backward: super::param_node::ParamBackward = Box::new(move |grad: &Tensor| {
            let (dx, dw, db) = gradients(grad, &x2d, &w)?;
            Ok((Some(dx.reshape(x_shape)?), vec![dw, db]))
        });
        let params = vec![weight.clone(), bias.clone()];
        let out = Precomputed::new("linear", y);
        return super::param_node::attach("linear", x, out, params, collector, backward);
    }
    let node = LinearNode {
        out: Precomputed::new("linear", y),
        x2d,
        w,
    };
    x.apply_op3(weight, bias, node)
}

struct LinearNode {
    /// The output, computed before the node; its forward hands it to candle.
    out: Precomputed,
    /// The input as rows `[R, in]`, detached.
    x2d: Tensor,
    /// The weight `[out, in]`, detached.
    w: Tensor,
}

impl CustomOp3 for LinearNode {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.out.cpu()
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        self.out.cuda()
    }

    fn bwd(
        &self,
        x: &Tensor,
        _w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = gradients(grad, &self.x2d, &self.w)?;
        Ok((Some(dx.reshape(x.shape())?), Some(dw), Some(db)))
    }
}

/// `(dx [R, in], dW, db)` of the layer from the output's gradient `grad` (`R` rows of `out`),
/// the input rows `x2d` and the weight `w`.
pub(crate) fn gradients(
    grad: &Tensor,
    x2d: &Tensor,
    w: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (out_dim, _) = w.dims2()?;
    let rows = x2d.dims2()?.0;
    let g = grad.detach().reshape((rows, out_dim))?.contiguous()?;
    Ok((g.matmul(w)?, g.t()?.matmul(x2d)?, g.sum(0)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Module, Var};

    #[test]
    fn the_node_equals_the_composed_layer_values_and_gradients() -> Result<()> {
        the_node_equals_the_composed_layer(false)
    }

    #[test]
    fn the_node_writing_to_a_scope_equals_the_composed_layer_values_and_gradients() -> Result<()> {
        the_node_equals_the_composed_layer(true)
    }

    /// The node against the composed layer; `scoped`: the node built under a parameter-gradient
    /// scope (a node over x alone, dW and db written to the scope).
    fn the_node_equals_the_composed_layer(scoped: bool) -> Result<()> {
        let dev = Device::Cpu;
        let (b, l, i, o) = (3, 5, 7, 4);
        let v = |n: usize, salt: usize| -> Vec<f32> {
            (0..n)
                .map(|k| (((k * 29 + salt * 13) % 83) as f32 / 20.0) - 2.0)
                .collect()
        };
        let make = || -> Result<(Var, Var, Var)> {
            Ok((
                Var::from_vec(v(b * l * i, 1), (b, l, i), &dev)?,
                Var::from_vec(v(o * i, 2), (o, i), &dev)?,
                Var::from_vec(v(o, 3), o, &dev)?,
            ))
        };
        let (x1, w1, b1) = make()?;
        let (x2, w2, b2) = make()?;
        let composed = crate::nn::Linear::new(w1.as_tensor().clone(), Some(b1.as_tensor().clone()));
        let want = composed.forward(x1.as_tensor())?;
        let scope = scoped.then(crate::nn::ParamGradScope::enter);
        let got = linear_node(x2.as_tensor(), w2.as_tensor(), b2.as_tensor())?;
        assert_eq!(got.dims(), want.dims());
        let close = |a: &Tensor, c: &Tensor, what: &str| -> Result<()> {
            let (a, c) = (
                a.flatten_all()?.to_vec1::<f32>()?,
                c.flatten_all()?.to_vec1::<f32>()?,
            );
            for (k, (p, q)) in a.iter().zip(&c).enumerate() {
                assert!(
                    (p - q).abs() <= 1e-5 * q.abs().max(1.0),
                    "{what} {k}: {p} vs {q}"
                );
            }
            Ok(())
        };
        close(&got, &want, "output")?;
        let r = Tensor::from_vec(v(b * l * o, 4), (b, l, o), &dev)?;
        let g1 = (want * &r)?.sum_all()?.backward()?;
        let loss = (got * &r)?.sum_all()?;
        let g2 = match scope {
            Some(scope) => {
                // Only x is an input of the node: the parameters are not in the graph.
                let in_graph = loss
                    .sorted_nodes()
                    .iter()
                    .map(|t| t.id())
                    .collect::<Vec<_>>();
                assert!(in_graph.contains(&x2.id()));
                assert!(!in_graph.contains(&w2.id()) && !in_graph.contains(&b2.id()));
                scope.backward(&loss)?
            }
            None => loss.backward()?,
        };
        for (what, a, c) in [("x", &x1, &x2), ("w", &w1, &w2), ("b", &b1, &b2)] {
            let (Some(p), Some(q)) = (g1.get(a.as_tensor()), g2.get(c.as_tensor())) else {
                return Err(candle_core::Error::Msg(format!("no {what} gradient")));
            };
            close(q, p, what)?;
        }
        Ok(())
    }
}
