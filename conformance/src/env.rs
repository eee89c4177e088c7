//! The test environment every component test uses — the conformance checks, the built-in crates'
//! unit tests and plugin authors' tests alike: what a [`BuildContext`] borrows (a spec, a dataset
//! schema, the registry), the parameter map the component's parameters go into, and access to
//! those parameters by name.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use recblocks_core::{
    components::AttentionMasks, nn::masks, serde_json::Value, BuildContext, CoreError,
    DatasetSchema, ModelSpec, ParamStore, Registry, Result, SharedRng, SpecInput,
};

/// Everything a build context borrows, plus the parameter map.
///
/// ```
/// use recblocks_conformance::env::TestEnv;
/// use recblocks_core::{serde_json::json, DatasetSchema, Registry};
/// use recblocks_rectools as _; // links the standard components into this binary
///
/// # fn main() -> recblocks_core::Result<()> {
/// let env = TestEnv::from_json(
///     json!({"n_factors": 8, "n_heads": 2, "n_blocks": 1}),
///     DatasetSchema::new(10, &["PAD"]),
///     Registry::from_inventory()?,
/// )?;
/// let layers = env.registry.transformer_layers("SASRecTransformerLayers")?;
/// let _stack = (layers.build)(&env.ctx(42), &json!({}))?;
/// // One SASRec block at d = 8: 6d² + 10d, plus the final layer norm's 2d.
/// assert_eq!(env.n_params(), 6 * 64 + 10 * 8 + 2 * 8);
/// assert!(env.param_names().iter().any(|n| n.contains("multi_head_attn")));
/// # Ok(())
/// # }
/// ```
pub struct TestEnv {
    /// The model spec components are built under.
    pub spec: ModelSpec,
    /// The catalog.
    pub schema: DatasetSchema,
    /// The registry build contexts hand to components (to build other components).
    pub registry: Registry,
    /// The parameters of every component built from [`TestEnv::ctx`].
    pub varmap: VarMap,
    /// The random stream build contexts hand to components (dropout, sampling); seed 7.
    pub rng: SharedRng,
}

impl TestEnv {
    /// An environment over a spec taken as it is (not checked against the registry).
    pub fn new(spec: ModelSpec, schema: DatasetSchema, registry: Registry) -> Self {
        TestEnv {
            spec,
            schema,
            registry,
            varmap: VarMap::new(),
            rng: SharedRng::new(7),
        }
    }

    /// An environment over a spec read as a user's JSON (`cls` defaults to `SASRecModel`) and
    /// resolved through `registry`, as `recblocks fit` reads one.
    pub fn from_json(spec: Value, schema: DatasetSchema, registry: Registry) -> Result<Self> {
        let mut spec = spec;
        if let Value::Object(m) = &mut spec {
            m.entry("cls")
                .or_insert(Value::String("SASRecModel".into()));
        }
        let spec = SpecInput::from_value(spec)?.resolve(&registry)?;
        Ok(Self::new(spec, schema, registry))
    }

    /// A context of width `spec.n_factors` whose parameters go into `self.varmap`, initialised
    /// from `seed`.
    pub fn ctx(&self, seed: u64) -> BuildContext<'_> {
        let vb = ParamStore::new(self.varmap.clone(), seed).into_var_builder(&Device::Cpu);
        self.ctx_with(vb)
    }

    /// A context over a given var builder.
    pub fn ctx_with<'a>(&'a self, vb: VarBuilder<'a>) -> BuildContext<'a> {
        BuildContext {
            spec: &self.spec,
            n_factors: self.spec.n_factors,
            schema: &self.schema,
            vb,
            rng: self.rng.clone(),
            registry: &self.registry,
        }
    }

    /// The current value of a parameter.
    pub fn param(&self, name: &str) -> Result<Tensor> {
        let data = self.varmap.data().lock().unwrap_or_else(|e| e.into_inner());
        match data.get(name) {
            Some(v) => Ok(v.as_tensor().clone()),
            None => Err(CoreError::Other(format!(
                "no parameter `{name}`; have {:?}",
                data.keys().collect::<Vec<_>>()
            ))),
        }
    }

    /// Overwrites a parameter in place (modules holding it see the new value).
    pub fn set_param(&self, name: &str, value: &Tensor) -> Result<()> {
        let data = self.varmap.data().lock().unwrap_or_else(|e| e.into_inner());
        match data.get(name) {
            Some(v) => Ok(v.set(&value.to_dtype(DType::F32)?)?),
            None => Err(CoreError::Other(format!("no parameter `{name}`"))),
        }
    }

    /// Sorted parameter names.
    pub fn param_names(&self) -> Vec<String> {
        let data = self.varmap.data().lock().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<String> = data.keys().cloned().collect();
        names.sort();
        names
    }

    /// Total number of parameter elements.
    pub fn n_params(&self) -> usize {
        self.varmap.all_vars().iter().map(|v| v.elem_count()).sum()
    }

    /// Copies every parameter of `self` into `to`, renamed by `rename` (which may give several
    /// names: one source feeding unshared copies).
    pub fn copy_params_to(&self, to: &TestEnv, rename: impl Fn(&str) -> Vec<String>) -> Result<()> {
        for name in self.param_names() {
            let value = self.param(&name)?;
            for target in rename(&name) {
                to.set_param(&target, &value)?;
            }
        }
        Ok(())
    }
}

/// The attention masks a backbone gives for item ids `[B, L]` (PAD = 0).
pub fn masks_for(ids: &Tensor, causal: bool, key_padding: bool) -> Result<AttentionMasks> {
    Ok(AttentionMasks {
        timeline_mask: masks::timeline_mask(ids)?,
        attn_bias: masks::attention_bias(ids, causal, key_padding)?,
    })
}

/// `Σ out ⊙ c` with `c` varying per element, so that no normalisation inside the component makes
/// the loss constant: a scalar whose gradient reaches every output element.
pub fn probe_loss(out: &Tensor) -> Result<Tensor> {
    let c = Tensor::arange(0f32, out.elem_count() as f32, out.device())?
        .affine(0.37, 0.0)?
        .sin()?
        .reshape(out.shape())?;
    Ok((out * c)?.sum_all()?)
}
