//! Adam as `torch.optim.Adam` (no weight decay, no AMSGrad), the optimizer RecTools'
//! `TransformerLightningModule` uses with betas (0.9, 0.98) and eps 1e-8.
//!
//! candle-nn's `AdamW` hides its moments, so they could not be saved for `--resume`; this one
//! exposes them. Update for parameter θ with gradient g at step t:
//! m = β₁m + (1−β₁)g; v = β₂v + (1−β₂)g²; θ −= lr · (m / (1−β₁ᵗ)) / (√(v / (1−β₂ᵗ)) + eps).
//! Parameters that get no gradient in a step are left untouched (their moments too), as torch does.

use std::collections::BTreeMap;

use candle_core::{backprop::GradStore, Tensor, Var};

/// Adam hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConfig {
    /// Learning rate.
    pub lr: f64,
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
}

impl AdamConfig {
    /// RecTools' settings: betas (0.9, 0.98), eps 1e-8.
    pub fn rectools(lr: f64) -> Self {
        AdamConfig {
            lr,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-8,
        }
    }
}

/// One parameter with its moments.
struct Slot {
    name: String,
    var: Var,
    m: Tensor,
    v: Tensor,
}

/// The optimizer and its state.
pub struct Adam {
    config: AdamConfig,
    slots: Vec<Slot>,
    step: u64,
}

impl Adam {
    /// An optimizer over named variables (sorted by name so the state layout is stable).
    pub fn new(vars: BTreeMap<String, Var>, config: AdamConfig) -> candle_core::Result<Self> {
        let slots = vars
            .into_iter()
            .map(|(name, var)| {
                let zeros = var.zeros_like()?;
                Ok(Slot {
                    name,
                    m: zeros.clone(),
                    v: zeros,
                    var,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Adam {
            config,
            slots,
            step: 0,
        })
    }

    /// Steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Applies one update from `grads`.
    pub fn step(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2 = 1.0 - c.beta2.powi(t);
        for slot in &mut self.slots {
            let Some(g) = grads.get(slot.var.as_tensor()) else {
                continue;
            };
            let m = ((&slot.m * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            let v = ((&slot.v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let denom = ((&v / bias2)?.sqrt()? + c.eps)?;
            let update = ((&m / bias1)? / denom)?;
            let new = (slot.var.as_tensor() - (update * c.lr)?)?;
            slot.var.set(&new)?;
            slot.m = m;
            slot.v = v;
        }
        Ok(())
    }

    /// The state as named tensors (`m.{name}`, `v.{name}`) plus the step count.
    pub fn state(&self) -> (BTreeMap<String, Tensor>, u64) {
        let mut out = BTreeMap::new();
        for s in &self.slots {
            out.insert(format!("m.{}", s.name), s.m.clone());
            out.insert(format!("v.{}", s.name), s.v.clone());
        }
        (out, self.step)
    }

    /// Restores a state saved by [`Adam::state`]; every moment must be present with the
    /// parameter's shape.
    pub fn load_state(
        &mut self,
        tensors: &BTreeMap<String, Tensor>,
        step: u64,
    ) -> Result<(), String> {
        for s in &mut self.slots {
            for (key, dst) in [("m", &mut s.m), ("v", &mut s.v)] {
                let name = format!("{key}.{}", s.name);
                let t = tensors
                    .get(&name)
                    .ok_or_else(|| format!("optimizer state has no tensor `{name}`"))?;
                if t.dims() != s.var.dims() {
                    return Err(format!(
                        "optimizer tensor `{name}` has shape {:?}, the parameter has {:?}",
                        t.dims(),
                        s.var.dims()
                    ));
                }
                *dst = t.clone();
            }
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn two_steps_match_torch_adam() -> candle_core::Result<()> {
        // torch: p = tensor([1., -2.], requires_grad=True); opt = Adam([p], lr=0.1, betas=(0.9, 0.98), eps=1e-8)
        // loss = (p ** 2).sum(); two steps; expected values by the update formula in f64.
        let p = Var::new(&[1f32, -2.], &Device::Cpu)?;
        let mut vars = BTreeMap::new();
        vars.insert("p".to_string(), p.clone());
        let mut opt = Adam::new(vars, AdamConfig::rectools(0.1))?;
        for _ in 0..2 {
            let loss = p.as_tensor().sqr()?.sum_all()?;
            opt.step(&loss.backward()?)?;
        }
        let got = p.as_tensor().to_vec1::<f32>()?;
        // Exact values by the formula, in f64.
        let mut want = [1f64, -2.];
        let (mut m, mut v) = ([0f64; 2], [0f64; 2]);
        for t in 1..=2 {
            for i in 0..2 {
                let g = 2.0 * want[i];
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.98 * v[i] + 0.02 * g * g;
                let mh = m[i] / (1.0 - 0.9f64.powi(t));
                let vh = v[i] / (1.0 - 0.98f64.powi(t));
                want[i] -= 0.1 * mh / (vh.sqrt() + 1e-8);
            }
        }
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-6, "{g} vs {w}");
        }
        // Adam's first step moves every coordinate by lr against the gradient's sign.
        assert!(got[0] < 1.0 - 0.1 && got[1] > -2.0 + 0.1);
        assert_eq!(opt.step_count(), 2);
        Ok(())
    }

    #[test]
    fn parameters_without_gradient_are_untouched() -> candle_core::Result<()> {
        let a = Var::new(&[1f32], &Device::Cpu)?;
        let b = Var::new(&[5f32], &Device::Cpu)?;
        let vars = BTreeMap::from([("a".to_string(), a.clone()), ("b".to_string(), b.clone())]);
        let mut opt = Adam::new(vars, AdamConfig::rectools(0.1))?;
        let loss = a.as_tensor().sqr()?.sum_all()?;
        opt.step(&loss.backward()?)?;
        assert_eq!(b.as_tensor().to_vec1::<f32>()?, vec![5.0]);
        Ok(())
    }
}
