//! recblocks-conformance: the conformance suite every recblocks component must pass.
//!
//! Not written yet: the checks (build with default kwargs, reject unknown kwargs, output shapes,
//! train/eval determinism, padding invariance, gradients reach every parameter, declared
//! parameter count, save/load round trip, finite outputs) land with the issue "Load plugins at
//! run time, and a conformance suite every plugin must pass". Until then each component's crate
//! tests these properties itself (see `plugins/rectools` and `plugins/albert`).
