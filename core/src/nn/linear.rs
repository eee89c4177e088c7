//! Linear layer with RecTools' initialisation (xavier-normal weight, torch-default bias), as
//! `torch.nn.Linear`: `y = x·Wᵀ + b` over the last dimension.
//!
//! Leading dimensions are flattened so that the weight gradient is one 2-D matmul (candle's own
//! `Linear` broadcasts the weight over the batch and then reduces the batched gradient), and the
//! bias is added by a fused op whose gradient is a deterministic column sum.

use candle_core::{CpuStorage, CustomOp2, Device, Layout, Module, Shape, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::{
    nn::{
        column_sum::column_sums,
        cpu_slice::{storage_f32, with_f32},
        init,
    },
    Result,
};

/// A linear layer: weight `[out, in]`, optional bias `[out]` (torch's layout and names).
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// A layer from its tensors.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear { weight, bias }
    }

    /// The weight `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias `[out]`, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if let Some(b) = &self.bias {
            if x.dtype() == candle_core::DType::F32 && crate::nn::fused::gpu_composition(x.device())
            {
                // On a GPU the layer is one node (two to three times fewer kernel launches).
                return crate::nn::linear_node::linear_node(x, &self.weight, b);
            }
        }
        let dims = x.dims().to_vec();
        let (out_dim, in_dim) = self.weight.dims2()?;
        let rows = x.elem_count() / in_dim.max(1);
        let y = x.reshape((rows, in_dim))?.matmul(&self.weight.t()?)?;
        let y = match &self.bias {
            Some(b) => add_bias(&y, b)?,
            None => y,
        };
        let mut out_dims = dims;
        if let Some(last) = out_dims.last_mut() {
            *last = out_dim;
        }
        y.reshape(out_dims)
    }
}

/// `x [R, C] + b [C]`; on the CPU and CUDA devices a fused op whose bias gradient is a column
/// sum (one kernel each way on a GPU, where candle's broadcast add costs about ten launches with
/// its backward pass).
pub fn add_bias(x: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    let fused_device = matches!(x.device(), Device::Cpu) || x.device().is_cuda();
    if fused_device && x.dtype() == candle_core::DType::F32 && b.dtype() == x.dtype() {
        x.contiguous()?.apply_op2(&b.contiguous()?, BiasAdd)
    } else {
        x.broadcast_add(b)
    }
}

struct BiasAdd;

impl CustomOp2 for BiasAdd {
    fn name(&self) -> &'static str {
        "bias-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (r, c) = l1.shape().dims2()?;
        let x = storage_f32(s1, l1, "bias-add: input")?;
        let b = storage_f32(s2, l2, "bias-add: bias")?;
        if b.len() != c {
            return Err(candle_core::Error::Msg(format!(
                "bias-add: input rows are {c} wide but the bias has {} values",
                b.len()
            )));
        }
        let mut out = vec![0f32; x.len()];
        for (row, xr) in out.chunks_exact_mut(c.max(1)).zip(x.chunks_exact(c.max(1))) {
            for ((o, &v), &bv) in row.iter_mut().zip(xr).zip(b) {
                *o = v + bv;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((r, c))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        // Rows [r, c] only, as on the CPU (the backward pass sums the rows into the bias).
        l1.shape().dims2()?;
        crate::nn::cuda::bias_add((s1, l1), (s2, l2))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        if grad.device().is_cuda() {
            return Ok((Some(grad.clone()), Some(grad.sum(0)?)));
        }
        let (_, c) = grad.dims2()?;
        let sums = with_f32(grad, |g| column_sums(g, c))?;
        let gb = Tensor::from_vec(sums, c, b.device())?;
        Ok((Some(grad.clone()), Some(gb)))
    }
}

/// A linear layer with RecTools' initialisation, variables `weight` and (if `bias`) `bias`.
pub fn linear(in_dim: usize, out_dim: usize, bias: bool, vb: &VarBuilder) -> Result<Linear> {
    linear_with_init(
        in_dim,
        out_dim,
        bias,
        init::xavier_normal(&[out_dim, in_dim]),
        init::torch_linear_bias(in_dim),
        vb,
    )
}

/// A linear layer with explicit initialisers.
pub fn linear_with_init(
    in_dim: usize,
    out_dim: usize,
    bias: bool,
    weight_init: Init,
    bias_init: Init,
    vb: &VarBuilder,
) -> Result<Linear> {
    let weight = vb.get_with_hints((out_dim, in_dim), "weight", weight_init)?;
    let bias: Option<Tensor> = if bias {
        Some(vb.get_with_hints(out_dim, "bias", bias_init)?)
    } else {
        None
    };
    Ok(Linear::new(weight, bias))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Var};

    #[test]
    fn equals_torch_linear_values_and_gradients() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let w = Var::new(&[[1f32, 2., 3.], [-1., 0.5, 0.]], &dev)?;
        let b = Var::new(&[0.25f32, -2.], &dev)?;
        let x = Var::new(&[[[1f32, 0., 2.], [0., 1., -1.]]], &dev)?; // [1, 2, 3]
        let lin = Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone()));
        let y = lin.forward(x.as_tensor())?;
        assert_eq!(y.dims(), &[1, 2, 2]);
        // Hand-computed: row (1,0,2) -> (1+6+0.25, -1+0-2) ; row (0,1,-1) -> (2-3+0.25, 0.5-2).
        assert_eq!(
            y.to_vec3::<f32>()?,
            vec![vec![vec![7.25, -3.], vec![-0.75, -1.5]]]
        );

        // Gradients of Σ y·c against candle's composed broadcast ops.
        let c = Tensor::new(&[[[1f32, -2.], [0.5, 3.]]], &dev)?;
        let g = y.mul(&c)?.sum_all()?.backward()?;
        let y_ref = x
            .as_tensor()
            .broadcast_matmul(&w.as_tensor().t()?)?
            .broadcast_add(b.as_tensor())?;
        let g_ref = y_ref.mul(&c)?.sum_all()?.backward()?;
        for v in [&w, &b, &x] {
            let a: Vec<f32> = g
                .get(v)
                .map(|t| t.flatten_all())
                .transpose()?
                .map(|t| t.to_vec1())
                .transpose()?
                .unwrap_or_default();
            let e: Vec<f32> = g_ref
                .get(v)
                .map(|t| t.flatten_all())
                .transpose()?
                .map(|t| t.to_vec1())
                .transpose()?
                .unwrap_or_default();
            assert!(!a.is_empty());
            assert_eq!(a, e);
        }
        Ok(())
    }

    #[test]
    fn bias_width_mismatch_is_an_error() -> candle_core::Result<()> {
        let x = Tensor::zeros((2, 3), DType::F32, &Device::Cpu)?;
        let b = Tensor::zeros(2, DType::F32, &Device::Cpu)?;
        assert!(add_bias(&x, &b).is_err());
        Ok(())
    }
}
