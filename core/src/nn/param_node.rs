//! An autograd node over one activation input whose parameters' gradients go to the open
//! [`ParamGradScope`](crate::nn::param_grads::ParamGradScope) instead of through candle's graph.
//!
//! The node's output is computed beforehand (on detached tensors, or as a fused CPU block's
//! values); its backward closure returns the input's gradient and one gradient per parameter,
//! and the node hands the latter to the scope's collector. To candle the node has a single
//! input, so a backward pass accumulates one gradient for it, where a node taking its
//! parameters as inputs has candle zero and add one buffer per parameter (and a fused block
//! concatenates its 16 parameters first). `nn::param_grads::writer` says when a node may be
//! built this way.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, Error, Layout, Result, Shape, Tensor};

use super::{param_grads::Collector, precomputed::Precomputed};

/// From the gradient of the node's output to the gradient of its input (`None`: none) and of
/// each parameter, in the order the parameters were given.
pub(crate) type ParamBackward =
    Box<dyn FnOnce(&Tensor) -> Result<(Option<Tensor>, Vec<Tensor>)> + Send>;

/// The node `name` over `x` with output `out`, parameters `params` (their gradients go to
/// `collector`) and backward pass `backward`.
pub(crate) fn attach(
    name: &'static str,
    x: &Tensor,
    out: Precomputed,
    params: Vec<Tensor>,
    collector: Arc<Collector>,
    backward: ParamBackward,
) -> Result<Tensor> {
    x.apply_op1(ParamNode {
        name,
        out,
        params,
        collector,
        backward: Mutex::new(Some(backward)),
    })
}

struct ParamNode {
    name: &'static str,
    out: Precomputed,
    params: Vec<Tensor>,
    collector: Arc<Collector>,
    backward: Mutex<Option<ParamBackward>>,
}

impl CustomOp1 for ParamNode {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        self.out.cpu()
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        self.out.cuda()
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let backward = self
            .backward
            .lock()
            .map_err(|_| Error::Msg(format!("{}: poisoned state", self.name)))?
            .take()
            .ok_or_else(|| Error::Msg(format!("{}: backward ran twice", self.name)))?;
        let (dx, dparams) = backward(grad)?;
        if dparams.len() != self.params.len() {
            return Err(Error::Msg(format!(
                "{}: {} parameter gradients for {} parameters",
                self.name,
                dparams.len(),
                self.params.len()
            )));
        }
        for (i, (p, g)) in self.params.iter().zip(dparams).enumerate() {
            self.collector
                .add(p, g)
                .map_err(|e| Error::Msg(format!("{}: parameter {i}: {e}", self.name)))?;
        }
        Ok(dx)
    }
}
