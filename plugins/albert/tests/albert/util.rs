//! Test helpers: an environment holding what a `BuildContext` borrows (spec resolved through the
//! registry of this binary, schema, parameter map), parameter access by name, and small inputs.

use recblocks_core::{
    candle::{DType, Device, Tensor},
    candle_nn::VarMap,
    components::AttentionMasks,
    nn::masks,
    schema::CatFeatureSchema,
    serde_json::{json, Value},
    BuildContext, CoreError, DatasetSchema, ModelSpec, ParamStore, Registry, Result, SharedRng,
};

/// Everything a build context borrows, plus the parameter map.
pub struct Env {
    pub spec: ModelSpec,
    pub schema: DatasetSchema,
    pub registry: Registry,
    pub varmap: VarMap,
    pub rng: SharedRng,
}

impl Env {
    /// A spec read as a user's JSON (`cls` defaults to SASRecModel) and a schema.
    pub fn new(spec: Value, schema: DatasetSchema) -> Result<Self> {
        let registry = Registry::from_inventory()?;
        let mut spec = spec;
        if let Value::Object(m) = &mut spec {
            m.entry("cls").or_insert(json!("SASRecModel"));
        }
        Ok(Env {
            spec: ModelSpec::from_value(spec, &registry)?,
            schema,
            registry,
            varmap: VarMap::new(),
            rng: SharedRng::new(7),
        })
    }

    /// A context whose parameters go into `self.varmap`, initialised from `seed`.
    pub fn ctx(&self, seed: u64) -> BuildContext<'_> {
        let vb = ParamStore::new(self.varmap.clone(), seed).into_var_builder(&Device::Cpu);
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
        let data = self.varmap.data().lock().unwrap();
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
        let data = self.varmap.data().lock().unwrap();
        match data.get(name) {
            Some(v) => Ok(v.set(&value.to_dtype(DType::F32)?)?),
            None => Err(CoreError::Other(format!("no parameter `{name}`"))),
        }
    }

    /// Sorted parameter names.
    pub fn param_names(&self) -> Vec<String> {
        let data = self.varmap.data().lock().unwrap();
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
    pub fn copy_params_to(&self, to: &Env, rename: impl Fn(&str) -> Vec<String>) -> Result<()> {
        for name in self.param_names() {
            let value = self.param(&name)?;
            for target in rename(&name) {
                to.set_param(&target, &value)?;
            }
        }
        Ok(())
    }
}

/// Asserts two float slices agree within `tol`.
pub fn assert_close(actual: &[f32], expected: &[f32], tol: f32) {
    assert_eq!(actual.len(), expected.len(), "lengths differ");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= tol * (1.0 + e.abs()),
            "element {i}: got {a}, expected {e} (tol {tol})"
        );
    }
}

/// A tensor's values, flattened.
pub fn flat(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

/// `n_real` items after `tokens`, with 3 categorical (feature, value) columns: the first real
/// item has {0, 2}, the second {1}, the others none.
pub fn cat_schema(n_real: usize, tokens: &[&str]) -> DatasetSchema {
    let mut s = DatasetSchema::new(n_real, tokens);
    let mut offsets = vec![0u32; tokens.len() + 1];
    offsets.extend([2u32, 3]);
    while offsets.len() < s.n_items + 1 {
        offsets.push(3);
    }
    s.cat_features = Some(CatFeatureSchema {
        value_names: vec!["genre__a".into(), "genre__b".into(), "country__x".into()],
        offsets,
        values: vec![0, 2, 1],
    });
    s
}

/// Ids with padding (session 0 starts with two PADs) and `[2, 4, d]` inputs that are non-zero at
/// padded positions too.
pub fn inputs(d: usize) -> Result<(Tensor, Tensor)> {
    let ids = Tensor::new(&[[0u32, 0, 3, 2], [1, 2, 4, 3]], &Device::Cpu)?;
    let x = Tensor::arange(0f32, (8 * d) as f32, &Device::Cpu)?
        .affine(0.61, 0.3)?
        .sin()?
        .reshape((2, 4, d))?;
    Ok((ids, x))
}

/// The masks the backbone would give for `ids`.
pub fn masks_for(ids: &Tensor, causal: bool, key_padding: bool) -> Result<AttentionMasks> {
    Ok(AttentionMasks {
        timeline_mask: masks::timeline_mask(ids)?,
        attn_bias: masks::attention_bias(ids, causal, key_padding)?,
    })
}

/// `Σ out ⊙ c` with `c` varying per element (so no norm makes the loss constant).
pub fn probe_loss(out: &Tensor) -> Result<Tensor> {
    let c = Tensor::arange(0f32, out.elem_count() as f32, out.device())?
        .affine(0.37, 0.0)?
        .sin()?
        .reshape(out.shape())?;
    Ok((out * c)?.sum_all()?)
}
