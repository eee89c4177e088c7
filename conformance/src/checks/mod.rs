//! Which checks run for which kind.

mod catalog_factors;
mod causality;
mod config;
mod gradcheck;
mod module;

use recblocks_core::{ComponentKind, Registry};

use crate::report::{ConformanceError, Report};

/// Runs every check that applies to the component `name` of `kind` in `registry`.
///
/// Returns `Err` only when the harness cannot run (the component is not registered, or the
/// standard components the harness needs are missing); failed checks are in the [`Report`].
pub fn check_component(
    registry: &Registry,
    kind: ComponentKind,
    name: &str,
) -> Result<Report, ConformanceError> {
    let reg = registry.lookup(kind, name)?;
    let info = reg.info();
    let results = match kind {
        ComponentKind::TransformerLayers
        | ComponentKind::PositionalEncoding
        | ComponentKind::ItemNetBlock
        | ComponentKind::ItemNetConstructor
        | ComponentKind::Similarity => module::run(registry, kind, info)?,
        _ => config::run(registry, kind, reg)?,
    };
    Ok(Report {
        kind,
        name: info.name.to_string(),
        crate_name: info.crate_name.to_string(),
        results,
    })
}

/// The kwarg name no component accepts.
pub(crate) const UNKNOWN_KWARG: &str = "conformance_unknown_kwarg";

/// The component's default kwargs plus [`UNKNOWN_KWARG`].
pub(crate) fn with_unknown_kwarg(
    defaults: &recblocks_core::serde_json::Value,
) -> recblocks_core::serde_json::Value {
    let mut map = defaults.as_object().cloned().unwrap_or_default();
    map.insert(UNKNOWN_KWARG.into(), recblocks_core::serde_json::json!(1));
    recblocks_core::serde_json::Value::Object(map)
}

/// The outcome of "rejects an unknown kwarg" given what the build returned.
pub(crate) fn unknown_kwarg_outcome<T>(built: recblocks_core::Result<T>) -> crate::report::Outcome {
    use crate::report::Outcome;
    match built {
        Ok(_) => Outcome::Fail(format!(
            "building with the unknown kwarg `{UNKNOWN_KWARG}` succeeded; kwargs structs need \
             `#[serde(deny_unknown_fields)]`"
        )),
        Err(e) if e.to_string().contains(UNKNOWN_KWARG) => Outcome::Pass,
        Err(e) => Outcome::Fail(format!(
            "the error for the unknown kwarg `{UNKNOWN_KWARG}` does not name it: {e}"
        )),
    }
}
