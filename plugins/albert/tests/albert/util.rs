//! Test helpers: the shared test environment over a spec resolved through this binary's
//! registry, and small inputs.

use recblocks_conformance::env::TestEnv;
pub use recblocks_conformance::env::{masks_for, probe_loss};
use recblocks_core::{
    candle::{Device, Tensor},
    schema::CatFeatureSchema,
    serde_json::Value,
    DatasetSchema, Registry, Result,
};

/// The shared test environment (`recblocks_conformance::env::TestEnv`).
pub type Env = TestEnv;

/// An environment over a spec read as a user's JSON (`cls` defaults to SASRecModel), resolved
/// through this binary's registry, and a schema.
pub fn json_env(spec: Value, schema: DatasetSchema) -> Result<Env> {
    TestEnv::from_json(spec, schema, Registry::from_inventory()?)
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
