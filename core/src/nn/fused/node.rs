//! One candle autograd node for a whole fused block.
//!
//! The block computes its output before the node exists; [`attach`] hands that output to candle
//! as the result of a custom op over `(x, parameters concatenated)`, and the op's backward runs
//! the block's own backward closure. The parameters are concatenated (a copy of a few hundred KB
//! at most) only so that candle routes one gradient back into each of them through `cat`; under
//! a trainer's [`ParamGradScope`](crate::nn::param_grads::ParamGradScope) they are not: the
//! block is a node over `x` alone and writes each parameter's gradient to the scope
//! (`nn::param_node`).

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, Error, Layout, Shape, Tensor};

use crate::nn::cpu_slice::with_f32;

/// A block's backward pass: from the gradient of its output (row-major, the output's shape) to
/// the gradient of its input and of each parameter, in the order the parameters were attached.
pub(crate) type Backward =
    Box<dyn Fn(&[f32]) -> candle_core::Result<(Vec<f32>, Vec<Vec<f32>>)> + Send + Sync>;

/// The output of a block computed from `x` and `params`, as a tensor whose backward pass is
/// `backward`. `out` has `x`'s shape. Without a backward pass (nothing to differentiate) the
/// output is returned as a plain tensor.
pub(crate) fn attach(
    name: &'static str,
    x: &Tensor,
    params: &[Tensor],
    out: Vec<f32>,
    backward: Option<Backward>,
) -> candle_core::Result<Tensor> {
    let Some(backward) = backward else {
        return Tensor::from_vec(out, x.shape(), x.device());
    };
    let refs: Vec<&Tensor> = params.iter().collect();
    if let Some(collector) = crate::nn::param_grads::writer(x, &refs) {
        return attach_writing(name, x, params, out, backward, collector);
    }
    let flat = params
        .iter()
        .map(|p| p.flatten_all())
        .collect::<candle_core::Result<Vec<_>>>()?;
    let packed = Tensor::cat(&flat, 0)?;
    let op = BlockNode {
        name,
        out: Mutex::new(Some(out)),
        sizes: params.iter().map(|p| p.elem_count()).collect(),
        backward,
    };
    x.apply_op2(&packed, op)
}

struct BlockNode {
    name: &'static str,
    /// Taken by the op's forward (which runs once, inside `attach`).
    out: Mutex<Option<Vec<f32>>>,
    sizes: Vec<usize>,
    backward: Backward,
}

impl CustomOp2 for BlockNode {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(
        &self,
        _x: &CpuStorage,
        l: &Layout,
        _p: &CpuStorage,
        _lp: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = self
            .out
            .lock()
            .map_err(|_| Error::Msg(format!("{}: poisoned state", self.name)))?
            .take()
            .ok_or_else(|| Error::Msg(format!("{}: output taken twice", self.name)))?;
        if out.len() != l.shape().elem_count() {
            return Err(Error::Msg(format!(
                "{}: output of {} values for an input of shape {:?}",
                self.name,
                out.len(),
                l.shape().dims()
            )));
        }
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        packed: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dparams) = with_f32(grad, |g| (self.backward)(g))??;
        let mut flat = Vec::with_capacity(packed.elem_count());
        for (i, (g, &n)) in dparams.iter().zip(&self.sizes).enumerate() {
            if g.len() != n {
                return Err(Error::Msg(format!(
                    "{}: gradient of parameter {i} has {} values, expected {n}",
                    self.name,
                    g.len()
                )));
            }
            flat.extend_from_slice(g);
        }
        if dparams.len() != self.sizes.len() {
            return Err(Error::Msg(format!(
                "{}: {} parameter gradients for {} parameters",
                self.name,
                dparams.len(),
                self.sizes.len()
            )));
        }
        let dx = Tensor::from_vec(dx, x.shape(), x.device())?;
        let dp = Tensor::from_vec(flat, packed.shape(), packed.device())?;
        Ok((Some(dx), Some(dp)))
    }
}

/// [`attach`] under a parameter-gradient scope: a node over `x` alone whose backward writes the
/// parameters' gradients to `collector`.
fn attach_writing(
    name: &'static str,
    x: &Tensor,
    params: &[Tensor],
    out: Vec<f32>,
    backward: Backward,
    collector: std::sync::Arc<crate::nn::param_grads::Collector>,
) -> candle_core::Result<Tensor> {
    let shapes: Vec<Shape> = params.iter().map(|p| p.shape().clone()).collect();
    let x_shape = x.shape().clone();
    let node_backward: crate::nn::param_node::ParamBackward = Box::new(move |grad: &Tensor| {
        let (dx, dparams) = with_f32(grad, |g| backward(g))??;
        if dparams.len() != shapes.len() {
            return Err(Error::Msg(format!(
                "{name}: {} parameter gradients for {} parameters",
                dparams.len(),
                shapes.len()
            )));
        }
        let dev = grad.device();
        let dparams = dparams
            .into_iter()
            .zip(&shapes)
            .map(|(g, s)| Tensor::from_vec(g, s, dev))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok((Some(Tensor::from_vec(dx, &x_shape, dev)?), dparams))
    });
    let out = crate::nn::precomputed::Precomputed::from_values(name, out, x.shape().clone());
    crate::nn::param_node::attach(name, x, out, params.to_vec(), collector, node_backward)
}
