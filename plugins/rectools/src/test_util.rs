//! Test helpers shared by this crate's unit tests: a spec built from the SASRec preset without
//! resolution, the test environment of `recblocks-conformance` over it, and a tolerance check.

use recblocks_conformance::env::TestEnv;
use recblocks_core::{serde_json::Value, CoreError, DatasetSchema, ModelSpec, Registry, Result};

use crate::presets::sasrec_defaults;

/// The SASRec preset merged with `overrides` (an object), decoded without resolution.
pub(crate) fn test_spec(overrides: Value) -> Result<ModelSpec> {
    let mut m = sasrec_defaults();
    if let Value::Object(o) = overrides {
        m.extend(o);
    }
    recblocks_core::serde_json::from_value(Value::Object(m))
        .map_err(|e| CoreError::Spec(e.to_string()))
}

/// The shared test environment.
pub(crate) type Env = TestEnv;

/// The test environment over [`test_spec`]`(overrides)`, `schema` and this binary's registry.
pub(crate) fn env(overrides: Value, schema: DatasetSchema) -> Result<Env> {
    Ok(TestEnv::new(
        test_spec(overrides)?,
        schema,
        Registry::from_inventory()?,
    ))
}

/// Asserts two float slices agree within `tol`.
pub(crate) fn assert_close(actual: &[f32], expected: &[f64], tol: f64) {
    assert_eq!(actual.len(), expected.len(), "lengths differ");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (*a as f64 - e).abs() <= tol,
            "element {i}: got {a}, expected {e} (tol {tol})\nactual:   {actual:?}\nexpected: {expected:?}"
        );
    }
}
