//! What a build fn receives: the model-wide settings, the dataset schema, a parameter store
//! scoped to the component, a seeded random stream, and the registry (to build sub-components).
//!
//! Parameters are created by [`ParamStore`], a candle `VarBuilder` backend over a `VarMap` that
//! draws initial values from a seeded stream, so a seed makes initialisation reproducible (candle's
//! CPU random generator cannot be seeded).

use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::{var_builder::SimpleBackend, Init, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr_shim::{sample_normal, sample_uniform};

use crate::{registry::Registry, schema::DatasetSchema, spec::ModelSpec};

/// A seeded random stream shared by every component of one model (dropout masks, negatives,
/// masking). Cloning shares the stream. Draws happen in call order, so a run is reproducible.
#[derive(Clone, Debug)]
pub struct SharedRng(Arc<Mutex<ChaCha8Rng>>);

impl SharedRng {
    /// A stream seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        SharedRng(Arc::new(Mutex::new(ChaCha8Rng::seed_from_u64(seed))))
    }

    /// Locks the stream for a series of draws.
    pub fn lock(&self) -> MutexGuard<'_, ChaCha8Rng> {
        // A poisoned lock only means another thread panicked mid-draw; the stream is still usable.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The stream's state, to save with a checkpoint.
    pub fn state(&self) -> ChaCha8Rng {
        self.lock().clone()
    }

    /// Restores a state saved by [`SharedRng::state`].
    pub fn restore(&self, state: ChaCha8Rng) {
        *self.lock() = state;
    }

    /// Reseeds the stream.
    pub fn reseed(&self, seed: u64) {
        *self.lock() = ChaCha8Rng::seed_from_u64(seed);
    }

    /// Whether `self` and `other` are handles of the same stream (not merely equal states).
    pub fn same_stream(&self, other: &SharedRng) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

mod rand_distr_shim {
    //! Normal and uniform draws (Box-Muller), to avoid a distributions dependency for two formulas.
    use rand::Rng;

    /// One draw from N(mean, std²).
    pub fn sample_normal<R: Rng + ?Sized>(rng: &mut R, mean: f64, std: f64) -> f64 {
        // u1 in (0, 1] so ln(u1) is finite.
        let u1: f64 = 1.0 - rng.random::<f64>();
        let u2: f64 = rng.random::<f64>();
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        mean + std * z
    }

    /// One draw from U[lo, up).
    pub fn sample_uniform<R: Rng + ?Sized>(rng: &mut R, lo: f64, up: f64) -> f64 {
        lo + (up - lo) * rng.random::<f64>()
    }
}

/// A `VarBuilder` backend: creates each parameter once, in a [`VarMap`], with values drawn from a
/// seeded stream; asking again for an existing name returns the same variable (weight sharing by
/// name) after checking its shape.
pub struct ParamStore {
    varmap: VarMap,
    rng: Mutex<ChaCha8Rng>,
}

impl ParamStore {
    /// A store that creates parameters in `varmap`, initialised from `seed`.
    pub fn new(varmap: VarMap, seed: u64) -> Self {
        ParamStore {
            varmap,
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
        }
    }

    /// A `VarBuilder` over this store (f32 on `device`).
    pub fn into_var_builder(self, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self), DType::F32, device.clone())
    }

    fn init_values(&self, n: usize, init: &Init) -> Vec<f32> {
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        match init {
            Init::Const(v) => vec![*v as f32; n],
            Init::Randn { mean, stdev } => (0..n)
                .map(|_| sample_normal(&mut *rng, *mean, *stdev) as f32)
                .collect(),
            Init::Uniform { lo, up } => (0..n)
                .map(|_| sample_uniform(&mut *rng, *lo, *up) as f32)
                .collect(),
            // Kaiming inits are not used by recblocks' components; treat as a small normal.
            Init::Kaiming { .. } => (0..n)
                .map(|_| sample_normal(&mut *rng, 0.0, 0.02) as f32)
                .collect(),
        }
    }
}

impl SimpleBackend for ParamStore {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut data = self.varmap.data().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(var) = data.get(name) {
            if var.shape() != &s {
                candle_core::bail!(
                    "parameter `{name}` already exists with shape {:?}, asked again with shape {:?}",
                    var.shape(),
                    s
                );
            }
            return Ok(var.as_tensor().clone());
        }
        let values = self.init_values(s.elem_count(), &h);
        let tensor = Tensor::from_vec(values, s, dev)?.to_dtype(dtype)?;
        let var = Var::from_tensor(&tensor)?;
        let out = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(out)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let data = self.varmap.data().lock().unwrap_or_else(|e| e.into_inner());
        match data.get(name) {
            Some(v) => Ok(v.as_tensor().clone()),
            None => candle_core::bail!("parameter `{name}` does not exist"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap
            .data()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(name)
    }
}

/// Everything a component's build fn receives.
#[derive(Clone)]
pub struct BuildContext<'a> {
    /// The resolved model spec (model-wide settings such as `n_heads`, `dropout_rate`).
    pub spec: &'a ModelSpec,
    /// The width this component must produce. Usually `spec.n_factors`; ALBERT builds item net
    /// blocks at `emb_factors`.
    pub n_factors: usize,
    /// Item catalog facts: number of items (with PAD/MASK), extra tokens, item features.
    pub schema: &'a DatasetSchema,
    /// Parameter store scoped to this component (`vb.pp("name")` for sub-modules).
    pub vb: VarBuilder<'a>,
    /// The model's seeded random stream (dropout, sampling).
    pub rng: SharedRng,
    /// The registry, to build sub-components by name.
    pub registry: &'a Registry,
}

impl<'a> BuildContext<'a> {
    /// The same context with parameters scoped under `prefix`.
    pub fn pp(&self, prefix: impl ToString) -> BuildContext<'a> {
        BuildContext {
            vb: self.vb.pp(prefix),
            ..self.clone()
        }
    }

    /// The same context producing width `n_factors`.
    pub fn with_width(&self, n_factors: usize) -> BuildContext<'a> {
        BuildContext {
            n_factors,
            ..self.clone()
        }
    }

    /// The device parameters live on.
    pub fn device(&self) -> &Device {
        self.vb.device()
    }

    /// Draws one `u64` from the shared stream (for components that keep their own sub-stream).
    pub fn draw_seed(&self) -> u64 {
        self.rng.lock().random()
    }
}
