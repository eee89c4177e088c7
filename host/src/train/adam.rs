//! Adam as `torch.optim.Adam` (no weight decay, no AMSGrad), the optimizer RecTools'
//! `TransformerLightningModule` uses with betas (0.9, 0.98) and eps 1e-8.
//!
//! candle-nn's `AdamW` hides its moments, so they could not be saved for `--resume`; this one
//! exposes them. Update for parameter θ with gradient g at step t:
//! m = β₁m + (1−β₁)g; v = β₂v + (1−β₂)g²; θ −= lr · (m / (1−β₁ᵗ)) / (√(v / (1−β₂ᵗ)) + eps).
//! Parameters that get no gradient in a step are left untouched (their moments too), as torch does.
//!
//! On the CPU in f32 the update is one in-place pass per parameter (its moments held as plain
//! vectors, the parameter's storage written where it lies), with the arithmetic, and so the
//! rounding, of the composed candle ops used elsewhere (and by [`Adam::step_generic`]).

use std::{collections::BTreeMap, sync::Mutex};

use candle_core::{
    backprop::GradStore, CpuStorage, DType, Device, InplaceOp2, Layout, Tensor, Var,
};
use rayon::prelude::*;

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
    moments: Moments,
}

/// A parameter's first and second moments.
enum Moments {
    /// CPU f32 parameters: updated by one in-place pass.
    Host { m: Vec<f32>, v: Vec<f32> },
    /// CUDA f32 parameters: device buffers, updated with the parameter by one kernel launch.
    #[cfg(feature = "cuda")]
    Cuda(recblocks_core::nn::cuda::AdamMoments),
    /// Elsewhere: tensors, updated by composed ops.
    Device { m: Tensor, v: Tensor },
}

/// The CUDA device a tensor lives on, if any.
#[cfg(feature = "cuda")]
fn cuda_device(t: &Tensor) -> Option<&candle_core::CudaDevice> {
    match t.device() {
        Device::Cuda(d) => Some(d),
        _ => None,
    }
}

impl Moments {
    fn zeros(var: &Var) -> candle_core::Result<Self> {
        if matches!(var.device(), Device::Cpu) && var.dtype() == DType::F32 {
            let n = var.elem_count();
            return Ok(Moments::Host {
                m: vec![0.0; n],
                v: vec![0.0; n],
            });
        }
        #[cfg(feature = "cuda")]
        if let (Some(dev), DType::F32) = (cuda_device(var.as_tensor()), var.dtype()) {
            return Ok(Moments::Cuda(recblocks_core::nn::cuda::AdamMoments::zeros(
                dev,
                var.elem_count(),
            )?));
        }
        let zeros = var.zeros_like()?;
        Ok(Moments::Device {
            m: zeros.clone(),
            v: zeros,
        })
    }

    fn tensors(&self, var: &Var) -> candle_core::Result<(Tensor, Tensor)> {
        Ok(match self {
            Moments::Host { m, v } => (
                Tensor::from_slice(m, var.shape(), var.device())?,
                Tensor::from_slice(v, var.shape(), var.device())?,
            ),
            #[cfg(feature = "cuda")]
            Moments::Cuda(mo) => match cuda_device(var.as_tensor()) {
                Some(dev) => mo.to_tensors(var.shape(), dev)?,
                None => {
                    return Err(candle_core::Error::Msg(
                        "adam: device moments for a parameter off the device".into(),
                    ))
                }
            },
            Moments::Device { m, v } => (m.clone(), v.clone()),
        })
    }
}

/// Coefficients of one step, as f32 the way candle's `tensor * f64` applies them.
#[derive(Clone, Copy)]
struct StepCoefficients {
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    inv_bias1: f32,
    inv_bias2: f32,
    eps: f32,
    lr: f32,
}

impl StepCoefficients {
    fn new(c: &AdamConfig, bias1: f64, bias2: f64) -> Self {
        StepCoefficients {
            beta1: c.beta1 as f32,
            one_minus_beta1: (1.0 - c.beta1) as f32,
            beta2: c.beta2 as f32,
            one_minus_beta2: (1.0 - c.beta2) as f32,
            inv_bias1: (1.0 / bias1) as f32,
            inv_bias2: (1.0 / bias2) as f32,
            eps: c.eps as f32,
            lr: c.lr as f32,
        }
    }

    /// The device kernels' form of these coefficients.
    #[cfg(feature = "cuda")]
    fn device(&self) -> recblocks_core::nn::cuda::AdamCoefficients {
        recblocks_core::nn::cuda::AdamCoefficients {
            beta1: self.beta1,
            one_minus_beta1: self.one_minus_beta1,
            beta2: self.beta2,
            one_minus_beta2: self.one_minus_beta2,
            inv_bias1: self.inv_bias1,
            inv_bias2: self.inv_bias2,
            eps: self.eps,
            lr: self.lr,
        }
    }

    /// The coefficients as the eight f32 a captured step reads from device memory, in the order
    /// of the kernels' `AdamCoefficients`.
    fn as_array(&self) -> [f32; 8] {
        [
            self.beta1,
            self.one_minus_beta1,
            self.beta2,
            self.one_minus_beta2,
            self.inv_bias1,
            self.inv_bias2,
            self.eps,
            self.lr,
        ]
    }

    /// One element: the same operations, in the same order, as the composed path.
    #[inline(always)]
    fn apply(&self, p: &mut f32, m: &mut f32, v: &mut f32, g: f32) {
        *m = *m * self.beta1 + g * self.one_minus_beta1;
        *v = *v * self.beta2 + (g * g) * self.one_minus_beta2;
        let denom = (*v * self.inv_bias2).sqrt() + self.eps;
        let update = (*m * self.inv_bias1) / denom;
        *p -= update * self.lr;
    }
}

/// Elements per parallel block of the in-place pass.
const BLOCK: usize = 16 * 1024;

/// The in-place pass over one parameter (written) and its gradient (read).
struct HostStep<'a> {
    k: StepCoefficients,
    moments: Mutex<(&'a mut [f32], &'a mut [f32])>,
}

fn contiguous_f32<'s>(s: &'s CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'s [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => Err(candle_core::Error::Msg(format!(
            "adam: the {what} is not a contiguous f32 tensor"
        ))),
    }
}

impl InplaceOp2 for HostStep<'_> {
    fn name(&self) -> &'static str {
        "adam-step"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let g = contiguous_f32(s2, l2, "gradient")?;
        let (CpuStorage::F32(p), Some((a, b))) = (s1, l1.contiguous_offsets()) else {
            return Err(candle_core::Error::Msg(
                "adam: the parameter is not a contiguous f32 tensor".into(),
            ));
        };
        let p = &mut p[a..b];
        let mut guard = self
            .moments
            .lock()
            .map_err(|_| candle_core::Error::Msg("adam: poisoned state".into()))?;
        let (m, v) = &mut *guard;
        if p.len() != g.len() || m.len() != p.len() || v.len() != p.len() {
            return Err(candle_core::Error::Msg(format!(
                "adam: a parameter of {} values, a gradient of {}, moments of {} and {}",
                p.len(),
                g.len(),
                m.len(),
                v.len()
            )));
        }
        let k = self.k;
        let run = |p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]| {
            for (((p, m), v), &g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
                k.apply(p, m, v, g);
            }
        };
        if p.len() <= BLOCK {
            run(p, m, v, g);
        } else {
            p.par_chunks_mut(BLOCK)
                .zip(m.par_chunks_mut(BLOCK))
                .zip(v.par_chunks_mut(BLOCK))
                .zip(g.par_chunks(BLOCK))
                .for_each(|(((p, m), v), g)| run(p, m, v, g));
        }
        Ok(())
    }
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
                Ok(Slot {
                    name,
                    moments: Moments::zeros(&var)?,
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
        let (k, bias1, bias2) = self.advance_coefficients();
        self.apply(grads, k, bias1, bias2, None, None)
    }

    /// Whether every parameter has its moments on a CUDA device (f32), so that
    /// [`step_guarded`](Self::step_guarded) applies. False without the `cuda` feature.
    pub fn all_on_cuda(&self) -> bool {
        #[cfg(feature = "cuda")]
        {
            !self.slots.is_empty()
                && self
                    .slots
                    .iter()
                    .all(|s| matches!(s.moments, Moments::Cuda(_)))
        }
        #[cfg(not(feature = "cuda"))]
        false
    }

    /// Applies one update from `grads`, except that nothing changes unless the value of `guard`
    /// (a one-value f32 tensor on the parameters' device: the step's loss) is finite. The step is
    /// counted either way, as a replayed step counts its own.
    ///
    /// Where every parameter is on a CUDA device ([`all_on_cuda`](Self::all_on_cuda)) the update
    /// kernel reads `guard` when it runs: the host reads nothing, so it can go on queueing work.
    /// Elsewhere the host reads `guard` first, then updates or not.
    pub fn step_guarded(&mut self, grads: &GradStore, guard: &Tensor) -> candle_core::Result<()> {
        let (k, bias1, bias2) = self.advance_coefficients();
        if self.all_on_cuda() {
            return self.apply(grads, k, bias1, bias2, None, Some(guard));
        }
        let value = guard
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        match value.as_slice() {
            [v] if v.is_finite() => self.apply(grads, k, bias1, bias2, None, None),
            [_] => Ok(()),
            other => Err(candle_core::Error::Msg(format!(
                "adam: the guard of a step has {} values; expected one",
                other.len()
            ))),
        }
    }

    /// Counts one more step and returns its coefficients as the eight f32 that
    /// [`step_reading_coefficients`](Self::step_reading_coefficients) reads: what the host
    /// writes before each replay of a captured step.
    pub fn advance(&mut self) -> [f32; 8] {
        self.advance_coefficients().0.as_array()
    }

    /// Applies `grads` with the coefficients of the step [`advance`](Self::advance) counted last
    /// (the CPU form of a replayed step).
    pub fn step_counted(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        let (k, bias1, bias2) = self.coefficients(self.step.max(1));
        self.apply(grads, k, bias1, bias2, None, None)
    }

    /// The update of a captured step (CUDA only): applies `grads` with the coefficients found at
    /// `coefficients` (8 f32 on the device, see [`advance`](Self::advance)) when the work runs,
    /// without counting a step (each replay's [`advance`](Self::advance) does). With `guard` (a
    /// one-value f32 tensor on the device, the step's loss), nothing changes unless that value is
    /// finite when the work runs.
    pub fn step_reading_coefficients(
        &mut self,
        grads: &GradStore,
        coefficients: &Tensor,
        guard: Option<&Tensor>,
    ) -> candle_core::Result<()> {
        let (k, bias1, bias2) = self.coefficients(self.step.max(1));
        self.apply(grads, k, bias1, bias2, Some(coefficients), guard)
    }

    fn coefficients(&self, step: u64) -> (StepCoefficients, f64, f64) {
        let c = self.config;
        let t = step as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2 = 1.0 - c.beta2.powi(t);
        (StepCoefficients::new(&c, bias1, bias2), bias1, bias2)
    }

    fn advance_coefficients(&mut self) -> (StepCoefficients, f64, f64) {
        self.step += 1;
        self.coefficients(self.step)
    }

    /// One update with coefficients `k` (and the biases they came from, for the composed path);
    /// `device_k`: the device parameters read their coefficients there instead; `guard`: they
    /// skip the update unless the guard's value is finite. Either needs every parameter on the
    /// CUDA device.
    fn apply(
        &mut self,
        grads: &GradStore,
        k: StepCoefficients,
        bias1: f64,
        bias2: f64,
        device_k: Option<&Tensor>,
        guard: Option<&Tensor>,
    ) -> candle_core::Result<()> {
        let device_only = device_k.is_some() || guard.is_some();
        let c = self.config;
        #[cfg(feature = "cuda")]
        let mut on_device: Vec<recblocks_core::nn::cuda::AdamParam<'_>> = Vec::new();
        #[cfg(feature = "cuda")]
        let mut device = None;
        for slot in &mut self.slots {
            let Some(g) = grads.get(slot.var.as_tensor()) else {
                continue;
            };
            let Slot { var, moments, .. } = slot;
            let f32_grad = g.dtype() == DType::F32;
            let in_place = match moments {
                Moments::Host { .. } => !device_only && f32_grad && g.is_contiguous(),
                #[cfg(feature = "cuda")]
                Moments::Cuda(_) => f32_grad,
                Moments::Device { .. } => false,
            };
            if !in_place {
                if device_only {
                    return Err(candle_core::Error::Msg(
                        "adam: a captured or guarded update needs every parameter on the CUDA \
                         device in f32"
                            .into(),
                    ));
                }
                composed_step(var, moments, g, &c, bias1, bias2)?;
                continue;
            }
            match moments {
                Moments::Host { m, v } => {
                    let op = HostStep {
                        k,
                        moments: Mutex::new((m.as_mut_slice(), v.as_mut_slice())),
                    };
                    var.as_tensor().inplace_op2(g, &op)?;
                }
                #[cfg(feature = "cuda")]
                Moments::Cuda(mo) => {
                    device = cuda_device(var.as_tensor()).cloned();
                    on_device.push(recblocks_core::nn::cuda::AdamParam {
                        param: var.as_tensor(),
                        grad: g,
                        moments: mo,
                    });
                }
                Moments::Device { .. } => {}
            }
        }
        #[cfg(feature = "cuda")]
        if let Some(dev) = device {
            let address = |t: Option<&Tensor>| match t {
                Some(t) => recblocks_core::nn::cuda::graph::address(t),
                None => Ok(0),
            };
            let (k_slot, guard) = (address(device_k)?, address(guard)?);
            recblocks_core::nn::cuda::adam_step(&dev, &mut on_device, k.device(), k_slot, guard)?;
        }
        Ok(())
    }

    /// The same step from composed candle ops on every parameter (the reference the in-place
    /// pass is tested against; the path off the CPU).
    pub fn step_generic(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2 = 1.0 - c.beta2.powi(t);
        for slot in &mut self.slots {
            let Some(g) = grads.get(slot.var.as_tensor()) else {
                continue;
            };
            composed_step(&slot.var, &mut slot.moments, g, &c, bias1, bias2)?;
        }
        Ok(())
    }

    /// The state as named tensors (`m.{name}`, `v.{name}`) plus the step count.
    pub fn state(&self) -> (BTreeMap<String, Tensor>, u64) {
        let mut out = BTreeMap::new();
        for s in &self.slots {
            // A CPU slice always makes a tensor of the parameter's shape.
            if let Ok((m, v)) = s.moments.tensors(&s.var) {
                out.insert(format!("m.{}", s.name), m);
                out.insert(format!("v.{}", s.name), v);
            }
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
            let mut pair = Vec::with_capacity(2);
            for key in ["m", "v"] {
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
                pair.push(t.clone());
            }
            let (Some(v), Some(m)) = (pair.pop(), pair.pop()) else {
                return Err("optimizer state: two moments expected".into());
            };
            s.moments = match s.moments {
                Moments::Host { .. } => {
                    let flat = |t: Tensor, key: &str| {
                        t.to_dtype(DType::F32)
                            .and_then(|t| t.flatten_all())
                            .and_then(|t| t.to_vec1::<f32>())
                            .map_err(|e| format!("optimizer tensor `{key}.{}`: {e}", s.name))
                    };
                    Moments::Host {
                        m: flat(m, "m")?,
                        v: flat(v, "v")?,
                    }
                }
                #[cfg(feature = "cuda")]
                Moments::Cuda(_) => {
                    let on_device = |t: Tensor, key: &str| {
                        t.to_device(s.var.device())
                            .map_err(|e| format!("optimizer tensor `{key}.{}`: {e}", s.name))
                    };
                    let (m, v) = (on_device(m, "m")?, on_device(v, "v")?);
                    Moments::Cuda(
                        recblocks_core::nn::cuda::AdamMoments::from_tensors(&m, &v)
                            .map_err(|e| format!("optimizer state of `{}`: {e}", s.name))?,
                    )
                }
                Moments::Device { .. } => Moments::Device { m, v },
            };
        }
        self.step = step;
        Ok(())
    }
}

/// One parameter's update from composed candle ops.
fn composed_step(
    var: &Var,
    moments: &mut Moments,
    g: &Tensor,
    c: &AdamConfig,
    bias1: f64,
    bias2: f64,
) -> candle_core::Result<()> {
    let (m, v) = moments.tensors(var)?;
    let m = ((m * c.beta1)? + (g * (1.0 - c.beta1))?)?;
    let v = ((v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
    let denom = ((&v / bias2)?.sqrt()? + c.eps)?;
    let update = ((&m / bias1)? / denom)?;
    let new = (var.as_tensor() - (update * c.lr)?)?;
    var.set(&new)?;
    *moments = match moments {
        Moments::Host { .. } => Moments::Host {
            m: m.flatten_all()?.to_vec1()?,
            v: v.flatten_all()?.to_vec1()?,
        },
        #[cfg(feature = "cuda")]
        Moments::Cuda(_) => {
            Moments::Cuda(recblocks_core::nn::cuda::AdamMoments::from_tensors(&m, &v)?)
        }
        Moments::Device { .. } => Moments::Device { m, v },
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The GPU, or `None` (the test is skipped) where none opens and `RECBLOCKS_CUDA_TESTS` is
    /// not `1` (where a missing GPU fails the test).
    #[cfg(feature = "cuda")]
    fn gpu(test: &str) -> Option<Device> {
        let gpu = Device::new_cuda(0).ok();
        if gpu.is_none() {
            assert!(
                std::env::var("RECBLOCKS_CUDA_TESTS").as_deref() != Ok("1"),
                "RECBLOCKS_CUDA_TESTS=1 but no CUDA device opens"
            );
            eprintln!("{test}: skipped, no CUDA device");
        }
        gpu
    }

    /// The parameters of the guarded-step tests: 53 of assorted sizes (more than one launch's 48, block
    /// edges of 256 on both sides, a single value), values and gradient weights.
    fn assorted(dev: &Device) -> candle_core::Result<(BTreeMap<String, Var>, Vec<Tensor>)> {
        let sizes: Vec<usize> = (0..53)
            .map(|i| [1usize, 255, 256, 257, 1000, 37][i % 6] + i)
            .collect();
        let mut vars = BTreeMap::new();
        let mut weights = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            let init: Vec<f32> = (0..n)
                .map(|j| ((j as f32) * 0.37 + i as f32).sin() * 3.0)
                .collect();
            vars.insert(format!("p{i:02}"), Var::from_vec(init, n, dev)?);
            let c: Vec<f32> = (0..n).map(|j| ((j + 7 * i) as f32 * 0.11).cos()).collect();
            weights.push(Tensor::from_vec(c, n, dev)?);
        }
        Ok((vars, weights))
    }

    /// `Σ_i (p_i · c_i · s).sum()`: gradient c_i·s, exact on both devices.
    fn weighted_loss(
        vars: &BTreeMap<String, Var>,
        weights: &[Tensor],
        s: f64,
    ) -> candle_core::Result<GradStore> {
        let mut total: Option<Tensor> = None;
        for (v, c) in vars.values().zip(weights) {
            let term = (v.as_tensor() * (c * s)?)?.sum_all()?;
            total = Some(match total {
                Some(t) => (t + term)?,
                None => term,
            });
        }
        total
            .ok_or_else(|| candle_core::Error::Msg("no parameter".into()))?
            .backward()
    }

    /// Every parameter and first moment, on the host.
    fn host_state(vars: &BTreeMap<String, Var>, opt: &Adam) -> candle_core::Result<Vec<Vec<f32>>> {
        let (state, _) = opt.state();
        let mut out = Vec::new();
        for (name, v) in vars {
            out.push(v.as_tensor().to_device(&Device::Cpu)?.to_vec1::<f32>()?);
            out.push(
                state[&format!("m.{name}")]
                    .to_device(&Device::Cpu)?
                    .to_vec1::<f32>()?,
            );
        }
        Ok(out)
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_adam_step_equals_the_cpu_pass_bit_for_bit() -> candle_core::Result<()> {
        let Some(gpu) = gpu("cuda_adam_step") else {
            return Ok(());
        };
        // The CPU pass, the device pass with coefficients by value, and the device pass reading
        // them from device memory (a captured step's): the same bits after 5 steps.
        let mut got = Vec::new();
        for (dev, from_memory) in [(Device::Cpu, false), (gpu.clone(), false), (gpu, true)] {
            let (vars, weights) = assorted(&dev)?;
            let mut opt = Adam::new(vars.clone(), AdamConfig::rectools(0.01))?;
            for step in 0..5 {
                let grads = weighted_loss(&vars, &weights, (step + 1) as f64)?;
                if from_memory {
                    let k = opt.advance();
                    let k = Tensor::from_vec(k.to_vec(), 8, &dev)?;
                    opt.step_reading_coefficients(&grads, &k, None)?;
                } else {
                    opt.step(&grads)?;
                }
            }
            assert_eq!(opt.step_count(), 5);
            got.push(host_state(&vars, &opt)?);
        }
        assert!(got[0] == got[1], "CPU and CUDA Adam differ after 5 steps");
        assert!(
            got[1] == got[2],
            "CUDA Adam with coefficients by value and from device memory differ"
        );
        Ok(())
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_adam_changes_nothing_when_its_guard_is_not_finite() -> candle_core::Result<()> {
        let Some(gpu) = gpu("cuda_adam_guard") else {
            return Ok(());
        };
        let (vars, weights) = assorted(&gpu)?;
        let mut opt = Adam::new(vars.clone(), AdamConfig::rectools(0.01))?;
        let before = host_state(&vars, &opt)?;
        for bad in [f32::NAN, f32::INFINITY] {
            let guard = Tensor::from_vec(vec![bad], 1, &gpu)?;
            let k = Tensor::from_vec(opt.advance().to_vec(), 8, &gpu)?;
            let grads = weighted_loss(&vars, &weights, 1.0)?;
            opt.step_reading_coefficients(&grads, &k, Some(&guard))?;
            assert!(
                host_state(&vars, &opt)? == before,
                "guard {bad}: state changed"
            );
        }
        let guard = Tensor::from_vec(vec![2.5f32], 1, &gpu)?;
        let k = Tensor::from_vec(opt.advance().to_vec(), 8, &gpu)?;
        let grads = weighted_loss(&vars, &weights, 1.0)?;
        opt.step_reading_coefficients(&grads, &k, Some(&guard))?;
        assert!(host_state(&vars, &opt)? != before, "a finite guard updates");
        Ok(())
    }

    /// A guarded optimizer, its parameters and the loss weights.
    type Guarded = (Adam, BTreeMap<String, Var>, Vec<Tensor>);

    /// Guarded steps on `dev` under a finite loss equal plain steps, and a NaN or infinite loss
    /// changes nothing; returns the guarded optimizer (6 steps counted) with its parameters.
    fn guarded_steps_equal_plain_steps_and_skip_non_finite(
        dev: &Device,
        on_cuda: bool,
    ) -> candle_core::Result<Guarded> {
        let (vars_a, weights) = assorted(dev)?;
        let (vars_b, _) = assorted(dev)?;
        let mut plain = Adam::new(vars_a.clone(), AdamConfig::rectools(0.01))?;
        let mut guarded = Adam::new(vars_b.clone(), AdamConfig::rectools(0.01))?;
        assert_eq!(guarded.all_on_cuda(), on_cuda, "where the moments are");
        let finite = Tensor::from_vec(vec![1.5f32], 1, dev)?;
        for _ in 0..3 {
            plain.step(&weighted_loss(&vars_a, &weights, 1.0)?)?;
            guarded.step_guarded(&weighted_loss(&vars_b, &weights, 1.0)?, &finite)?;
        }
        assert!(
            host_state(&vars_a, &plain)? == host_state(&vars_b, &guarded)?,
            "guarded steps under a finite loss differ from plain steps"
        );
        let before = host_state(&vars_b, &guarded)?;
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let bad = Tensor::from_vec(vec![bad], 1, dev)?;
            guarded.step_guarded(&weighted_loss(&vars_b, &weights, 1.0)?, &bad)?;
        }
        assert!(
            host_state(&vars_b, &guarded)? == before,
            "a non-finite loss changed the state"
        );
        assert_eq!(guarded.step_count(), 6, "every step is counted");
        Ok((guarded, vars_b, weights))
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_guarded_steps_equal_plain_steps_and_skip_a_non_finite_loss() -> candle_core::Result<()>
    {
        let Some(gpu) = gpu("cuda_adam_guarded") else {
            return Ok(());
        };
        guarded_steps_equal_plain_steps_and_skip_non_finite(&gpu, true).map(|_| ())
    }

    #[test]
    fn guarded_steps_on_the_cpu_equal_plain_steps_and_skip_a_non_finite_loss(
    ) -> candle_core::Result<()> {
        let (mut guarded, vars, weights) =
            guarded_steps_equal_plain_steps_and_skip_non_finite(&Device::Cpu, false)?;
        let two = Tensor::from_vec(vec![1f32, 2.0], 2, &Device::Cpu)?;
        let err = guarded
            .step_guarded(&weighted_loss(&vars, &weights, 1.0)?, &two)
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|m| m.contains("2 values; expected one")));
        Ok(())
    }

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
    fn the_in_place_pass_equals_the_composed_ops_bit_for_bit() -> candle_core::Result<()> {
        // One parameter above the parallel block size, one below; three steps, then a state
        // round trip and a fourth.
        let dev = Device::Cpu;
        let sizes = [(BLOCK * 2 + 37, 1usize), (5, 3)];
        let make = || -> candle_core::Result<BTreeMap<String, Var>> {
            let mut vars = BTreeMap::new();
            for (i, &(rows, cols)) in sizes.iter().enumerate() {
                let vals: Vec<f32> = (0..rows * cols)
                    .map(|j| (((j * 7919 + i) % 1009) as f32 / 1009.0 - 0.5) * 3.0)
                    .collect();
                vars.insert(format!("p{i}"), Var::from_vec(vals, (rows, cols), &dev)?);
            }
            Ok(vars)
        };
        let loss = |vars: &BTreeMap<String, Var>| -> candle_core::Result<GradStore> {
            let mut total = Tensor::new(0f32, &dev)?;
            for v in vars.values() {
                let t = v.as_tensor();
                total = (total + (t.sqr()? * t.sin()?)?.sum_all()?)?;
            }
            total.backward()
        };
        let (fused_vars, generic_vars) = (make()?, make()?);
        let mut fused = Adam::new(fused_vars.clone(), AdamConfig::rectools(0.01))?;
        let mut generic = Adam::new(generic_vars.clone(), AdamConfig::rectools(0.01))?;
        for step in 0..4 {
            if step == 3 {
                let (state, n) = fused.state();
                fused
                    .load_state(&state, n)
                    .map_err(candle_core::Error::Msg)?;
            }
            fused.step(&loss(&fused_vars)?)?;
            generic.step_generic(&loss(&generic_vars)?)?;
        }
        for (name, a) in &fused_vars {
            let a = a.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            let b = generic_vars[name]
                .as_tensor()
                .flatten_all()?
                .to_vec1::<f32>()?;
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{name}"
            );
        }
        let (fs, _) = fused.state();
        let (gs, _) = generic.state();
        for (name, t) in &fs {
            let a = t.flatten_all()?.to_vec1::<f32>()?;
            let b = gs[name].flatten_all()?.to_vec1::<f32>()?;
            assert_eq!(a, b, "{name}");
        }
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
