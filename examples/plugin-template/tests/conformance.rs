//! The recblocks conformance suite on this plugin's component, linked statically.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use recblocks_core::{ComponentKind, Registry};

// Link the standard components (the harness resolves a SASRec spec) and this plugin.
use recblocks_plugin_template as _;
use recblocks_rectools as _;

#[test]
fn swiglu_layers_pass_the_conformance_suite() {
    let registry = Registry::from_inventory().unwrap();
    let report = recblocks_conformance::check_component(
        &registry,
        ComponentKind::TransformerLayers,
        recblocks_plugin_template::NAME,
    )
    .unwrap();
    for r in &report.results {
        println!("{}: {:?}", r.check, r.outcome);
    }
    report.into_result().unwrap();
}
