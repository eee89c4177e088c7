//! Initialisations used by RecTools: `xavier_normal_` on every ≥2-D parameter
//! (`TransformerLightningModule.on_train_start`), torch's default `nn.Linear` bias init, zeros and
//! ones.

use candle_nn::Init;

/// torch `xavier_normal_` for a parameter of shape `[fan_out, fan_in, ...]`:
/// std = sqrt(2 / (fan_in + fan_out)), where fan_in = dim 1 × receptive field and
/// fan_out = dim 0 × receptive field.
pub fn xavier_normal(shape: &[usize]) -> Init {
    let receptive: usize = shape.iter().skip(2).product::<usize>().max(1);
    let fan_out = shape.first().copied().unwrap_or(1) * receptive;
    let fan_in = shape.get(1).copied().unwrap_or(1) * receptive;
    Init::Randn {
        mean: 0.0,
        stdev: (2.0 / (fan_in + fan_out) as f64).sqrt(),
    }
}

/// torch's default `nn.Linear` bias init: U(−1/√fan_in, 1/√fan_in).
pub fn torch_linear_bias(fan_in: usize) -> Init {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// All zeros.
pub const ZEROS: Init = Init::Const(0.0);
/// All ones.
pub const ONES: Init = Init::Const(1.0);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xavier_normal_std_follows_torch_fans() {
        // torch: fan_in = size(1), fan_out = size(0); std = sqrt(2 / (fan_in + fan_out)).
        let Init::Randn { stdev, mean } = xavier_normal(&[192, 64]) else {
            unreachable!()
        };
        assert_eq!(mean, 0.0);
        assert!((stdev - (2.0f64 / 256.0).sqrt()).abs() < 1e-12);
        let Init::Randn { stdev, .. } = xavier_normal(&[10, 4]) else {
            unreachable!()
        };
        assert!((stdev - (2.0f64 / 14.0).sqrt()).abs() < 1e-12);
    }
}
