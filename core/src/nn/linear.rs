//! Linear layer with RecTools' initialisation (xavier-normal weight, torch-default bias).

use candle_core::Tensor;
use candle_nn::{Init, VarBuilder};

use crate::{nn::init, Result};

/// `y = x Wᵀ + b`, weight `[out, in]` (torch's layout).
pub type Linear = candle_nn::Linear;

/// A linear layer `in_dim → out_dim` named `{vb}.weight` / `{vb}.bias`, initialised as RecTools
/// does: xavier-normal weight, bias U(±1/√in_dim) (torch's default).
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

/// A linear layer with explicit initialisations.
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
