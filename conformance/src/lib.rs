//! recblocks-conformance: the conformance suite every recblocks component must pass.
//!
//! [`check_component`] takes a registered component by kind and name and runs the checks that
//! apply to its kind; [`check_registry`] runs them over every registered component. The built-in
//! components pass them (this crate's tests), `recblocks plugins check PATH` runs them on a
//! plugin's components, and a plugin author calls the same functions from their own tests:
//!
//! ```ignore
//! let registry = recblocks_core::Registry::from_inventory()?;
//! let report = recblocks_conformance::check_component(&registry, ComponentKind::TransformerLayers, "MyLayers")?;
//! report.into_result()?; // fails with every failed check, named
//! ```
//!
//! Checks of module kinds (transformer layers, positional encoding, item net blocks and
//! constructors, similarity): builds with default kwargs; rejects an unknown kwarg with an error
//! naming it; output shapes for several batch sizes and sequence lengths; eval forward
//! deterministic; the same outputs under static shapes (`nn::capture`, the rules of a training
//! step captured as a CUDA graph); train forward deterministic when `dropout_rate` is 0, and stochastic when it is
//! not (transformer layers only: the kind that applies dropout); train and eval forwards agree
//! when `dropout_rate` is 0; outputs at real positions do not depend on inputs at padded positions
//! (under a key-padding mask for transformer layers; position-wise kinds trivially); under a
//! causal mask, outputs at positions ≤ t do not depend on inputs after t, and under a
//! bidirectional mask they do (transformer layers); every parameter is connected to the output's
//! gradient and one optimizer step changes the parameters; autograd's gradients of every
//! parameter and of the input match central finite differences; declared parameter count equals
//! the `VarMap` (when the component declares one); save → load into a freshly built copy gives
//! identical outputs; finite outputs for large-magnitude inputs, batch size 1 and one real item
//! per session. A failure names the check and the worst position or parameter, with the value
//! found and the value expected.
//!
//! About gradients: a parameter can have a gradient that is zero in exact arithmetic (the key
//! projection's bias in softmax attention: adding a constant per query does not change softmax).
//! So the check requires every parameter to be *connected* (present in candle's `GradStore` after
//! `backward`, which is exactly what a missing backward or an unused parameter breaks) and at
//! least one parameter to change after one SGD step, rather than a non-zero gradient everywhere.
//!
//! Other kinds (data preparator, negative sampler, objective, trainer): builds with default kwargs
//! and rejects an unknown kwarg. Model presets: the defaults are a JSON object naming `cls`'s
//! component slots. Backbones and validation mask functions need a whole model or a dataset and
//! are covered by the host's integration tests; their checks report `skipped` with that reason.
//!
//! [`env::TestEnv`] is the test environment these checks build components in; the built-in
//! crates' unit tests and plugin authors' tests use it too.
//!
//! The harness resolves a small SASRec spec, so the registry must hold the standard components
//! (`recblocks-rectools`): plugin test binaries link it as a dev-dependency.

mod checks;
pub mod env;
mod harness;
mod report;

pub use checks::check_component;
pub use report::{CheckResult, ConformanceError, Outcome, Report};

use recblocks_core::{ComponentKind, Registry};

/// Runs [`check_component`] on every component of `registry`.
pub fn check_registry(registry: &Registry) -> Result<Vec<Report>, ConformanceError> {
    let mut reports = Vec::new();
    for kind in ComponentKind::ALL {
        for reg in registry.of_kind(kind) {
            reports.push(check_component(registry, kind, reg.info().name)?);
        }
    }
    Ok(reports)
}
