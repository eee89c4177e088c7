//! The conformance suite over every statically registered component (the standard components and
//! ALBERT): each must pass every check that applies to its kind.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use recblocks_conformance::{check_component, check_registry, Outcome};
use recblocks_core::{ComponentKind, Registry};

use recblocks_albert as _;
use recblocks_rectools as _;

#[test]
fn every_registered_component_passes() {
    let registry = Registry::from_inventory().unwrap();
    let reports = check_registry(&registry).unwrap();
    assert_eq!(reports.len(), registry.all().len());
    assert!(reports.len() >= 19, "{} components", reports.len());
    let mut failures = Vec::new();
    for report in reports {
        for r in &report.results {
            println!(
                "{} `{}` {}: {:?}",
                report.kind, report.name, r.check, r.outcome
            );
        }
        if let Err(e) = report.into_result() {
            failures.push(e.to_string());
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn module_checks_actually_run_on_transformer_layers() {
    let registry = Registry::from_inventory().unwrap();
    let report = check_component(
        &registry,
        ComponentKind::TransformerLayers,
        "SASRecTransformerLayers",
    )
    .unwrap();
    let passed: Vec<&str> = report
        .results
        .iter()
        .filter(|r| r.outcome == Outcome::Pass)
        .map(|r| r.check)
        .collect();
    for check in [
        "builds with default kwargs",
        "rejects an unknown kwarg",
        "output shapes",
        "eval forward is deterministic",
        "static shapes (a captured step) give the same outputs",
        "train forward is deterministic without dropout",
        "train forward is stochastic with dropout",
        "padding does not change outputs at real positions",
        "last-position forward equals the full pass",
        "gradients reach every parameter",
        "save → load round trip gives identical outputs",
        "finite outputs for extreme inputs",
    ] {
        assert!(passed.contains(&check), "{check} did not pass: {report:?}");
    }
}

#[test]
fn rectools_similarity_gives_factors_that_multiply_to_its_logits() {
    let registry = Registry::from_inventory().unwrap();
    let report = check_component(
        &registry,
        ComponentKind::Similarity,
        "DistanceSimilarityModule",
    )
    .unwrap();
    let check = report
        .results
        .iter()
        .find(|r| r.check == "catalog factors multiply to the full-catalog logits")
        .unwrap();
    assert_eq!(check.outcome, Outcome::Pass, "{report:?}");
}

#[test]
fn an_unknown_component_is_a_setup_error() {
    let registry = Registry::from_inventory().unwrap();
    let err = check_component(&registry, ComponentKind::TransformerLayers, "NoSuchLayers")
        .unwrap_err()
        .to_string();
    assert!(err.contains("NoSuchLayers"), "{err}");
}
