//! A feed-forward's activation and the dropout after it as one op, `act(h)·mask`, with its own
//! backward pass `dh = g·mask·act'(h)` (ReLU, or the exact erf GELU).
//!
//! The generic feed-forward composes these from candle ops, and candle's backward pass of ReLU
//! and GELU is itself several ops, each with a zeroed gradient to add into: on a GPU, where every
//! op is a kernel launch, that is over a dozen launches where this op takes two
//! (`rb_act_dropout_fwd`/`_bwd` in `nn/cuda/kernels.cu`). The dropout mask is drawn from its key
//! in both passes (the same mask [`Dropout::forward_t`] would multiply by). The CPU form is the
//! reference the device kernels are tested against (the fused transformer blocks do this work on
//! the CPU).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Error, Layout, Result, Shape, Tensor};

use super::{
    cpu_slice::storage_f32,
    dropout::{Dropout, MaskDraw},
    fused::kernels::{gelu, gelu_grad},
    Activation,
};

/// `dropout(act(h))` as one op for ReLU and GELU on f32; `None` for other activations and dtypes
/// (the caller composes it then).
pub(crate) fn activation_dropout(
    h: &Tensor,
    act: Activation,
    dropout: &Dropout,
    train: bool,
) -> Result<Option<Tensor>> {
    let Some(op) = op_for(h, act, dropout, train) else {
        return Ok(None);
    };
    Ok(Some(h.contiguous()?.apply_op1(op)?))
}

/// The op for `h` (drawing its mask when `train`), or `None` for SiLU and other dtypes.
fn op_for(h: &Tensor, act: Activation, dropout: &Dropout, train: bool) -> Option<ActDropout> {
    let code = match act {
        Activation::Relu => 0,
        Activation::Gelu => 1,
        Activation::Silu => return None,
    };
    if h.dtype() != candle_core::DType::F32 {
        return None;
    }
    Some(ActDropout {
        act: code,
        drop: if train { dropout.draw() } else { None },
    })
}

/// `dropout(act(h))` outside the graph (`h` detached), and what its backward pass needs; `None`
/// where [`activation_dropout`] would be (a GPU block node runs it among its other ops).
pub(crate) fn act_dropout_forward(
    h: &Tensor,
    act: Activation,
    dropout: &Dropout,
    train: bool,
) -> Result<Option<(Tensor, ActDropoutGradOf)>> {
    let Some(op) = op_for(h, act, dropout, train) else {
        return Ok(None);
    };
    let h = h.contiguous()?;
    let y = h.apply_op1_no_bwd(&op)?;
    Ok(Some((y, ActDropoutGradOf { op, h })))
}

/// The input of an [`act_dropout_forward`] and its op, for the backward pass.
pub(crate) struct ActDropoutGradOf {
    op: ActDropout,
    h: Tensor,
}

impl ActDropoutGradOf {
    /// `dh = g·mask·act'(h)`.
    pub(crate) fn backward(&self, g: &Tensor) -> Result<Tensor> {
        self.h
            .apply_op2_no_bwd(&g.contiguous()?, &ActDropoutGrad(self.op))
    }
}

#[derive(Debug, Clone, Copy)]
struct ActDropout {
    /// 0 = ReLU, 1 = exact GELU (the kernels' codes).
    act: i32,
    drop: Option<MaskDraw>,
}

impl ActDropout {
    fn value(&self, h: f32) -> f32 {
        if self.act == 0 {
            h.max(0.0)
        } else {
            gelu(h)
        }
    }

    fn slope(&self, h: f32) -> f32 {
        if self.act == 0 {
            if h > 0.0 {
                1.0
            } else {
                0.0
            }
        } else {
            gelu_grad(h)
        }
    }
}

impl CustomOp1 for ActDropout {
    fn name(&self) -> &'static str {
        "activation-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let h = storage_f32(s, l, "activation dropout: input")?;
        let mut out: Vec<f32> = h.iter().map(|&v| self.value(v)).collect();
        if let Some(d) = &self.drop {
            for (o, m) in out.iter_mut().zip(d.mask(h.len())) {
                *o *= m;
            }
        }
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let out = super::cuda::act_dropout((s, l), None, self.act, self.drop)?;
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, h: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(h.apply_op2_no_bwd(
            &grad.contiguous()?,
            &ActDropoutGrad(*self),
        )?))
    }
}

/// The backward pass over `(h, g)`.
struct ActDropoutGrad(ActDropout);

impl CustomOp2 for ActDropoutGrad {
    fn name(&self) -> &'static str {
        "activation-dropout-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let h = storage_f32(s1, l1, "activation dropout: input")?;
        let g = storage_f32(s2, l2, "activation dropout: output gradient")?;
        if h.len() != g.len() {
            return Err(Error::Msg(format!(
                "activation dropout backward: {} inputs and {} gradient values",
                h.len(),
                g.len()
            )));
        }
        let mut dh: Vec<f32> = h
            .iter()
            .zip(g)
            .map(|(&v, &gv)| gv * self.0.slope(v))
            .collect();
        if let Some(d) = &self.0.drop {
            for (o, m) in dh.iter_mut().zip(d.mask(h.len())) {
                *o *= m;
            }
        }
        Ok((CpuStorage::F32(dh), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let dh = super::cuda::act_dropout((s1, l1), Some((s2, l2)), self.0.act, self.0.drop)?;
        Ok((dh, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::SharedRng;
    use candle_core::{Device, Var};

    #[test]
    fn the_op_equals_the_activation_then_dropout() -> Result<()> {
        let dev = Device::Cpu;
        let n = 3000;
        // Offset so that no input is exactly 0, where candle's ReLU slope (1) and torch's (0) differ.
        let vals: Vec<f32> = (0..n)
            .map(|i| ((i * 53 % 199) as f32 / 33.0) - 3.01)
            .collect();
        for act in [Activation::Relu, Activation::Gelu] {
            for train in [false, true] {
                let x1 = Var::from_vec(vals.clone(), (3, n / 3), &dev)?;
                let x2 = Var::from_vec(vals.clone(), (3, n / 3), &dev)?;
                let (d1, d2) = (
                    Dropout::new(0.2, SharedRng::new(9)),
                    Dropout::new(0.2, SharedRng::new(9)),
                );
                let want = d1
                    .forward_t(&act.apply(x1.as_tensor()).map_err(Error::wrap)?, train)
                    .map_err(Error::wrap)?;
                let got = activation_dropout(x2.as_tensor(), act, &d2, train)?
                    .ok_or_else(|| Error::Msg("the op did not apply".into()))?;
                let (a, b) = (
                    got.flatten_all()?.to_vec1::<f32>()?,
                    want.flatten_all()?.to_vec1::<f32>()?,
                );
                for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                    assert!(
                        (x - y).abs() <= 1e-6 * y.abs().max(1.0),
                        "{act:?} {i}: {x} vs {y}"
                    );
                }
                let r = Tensor::from_vec(
                    (0..n).map(|i| (i as f32 * 0.7).cos()).collect::<Vec<_>>(),
                    (3, n / 3),
                    &dev,
                )?;
                let g1 = (want * &r)?.sum_all()?.backward()?;
                let g2 = (got * &r)?.sum_all()?.backward()?;
                let (Some(a), Some(b)) = (g2.get(x2.as_tensor()), g1.get(x1.as_tensor())) else {
                    return Err(candle_core::Error::Msg(format!("{act:?}: no gradient")));
                };
                let (a, b) = (
                    a.flatten_all()?.to_vec1::<f32>()?,
                    b.flatten_all()?.to_vec1::<f32>()?,
                );
                for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                    assert!(
                        (x - y).abs() <= 1e-5 * y.abs().max(1.0),
                        "{act:?} grad {i}: {x} vs {y}"
                    );
                }
            }
        }
        Ok(())
    }
}
