//! The loader cannot be fooled: a plugin with its own copy of core, a plugin without components
//! and a plugin that panics are refused or reported with errors naming the library (and, for a
//! panic, the kind and the component); `plugins check` fails on each instead of passing or
//! aborting.

use recblocks::{data::write_interactions_csv, loader as plugins, Model, TrainData};
use recblocks_core::{ComponentKind, CoreError, Registry};

use crate::{
    plugin_libs::workspace_plugin,
    util::{recblocks, small_data},
};

#[test]
fn a_plugin_with_its_own_copy_of_core_is_refused_saying_why() {
    let path = workspace_plugin("recblocks_fixture_second_core_plugin");
    let err = plugins::load_plugin(&path).unwrap_err();
    assert!(
        matches!(err, plugins::PluginError::SecondCore { .. }),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("carries its own copy of recblocks-core")
            && text.contains("recblocks_fixture_second_core_plugin")
            && text.contains("recblocks plugin build"),
        "{text}"
    );
    let (ok, _, stderr) = recblocks(&["plugins", "check", path.to_str().unwrap()]);
    assert!(
        !ok && stderr.contains("its own copy of recblocks-core"),
        "{stderr}"
    );
}

#[test]
fn a_plugin_without_components_is_refused_and_fails_plugins_check() {
    let path = workspace_plugin("recblocks_fixture_no_components_plugin");
    let err = plugins::load_plugin(&path).unwrap_err().to_string();
    assert!(
        err.contains("registers no component")
            && err.contains("recblocks-fixture-no-components-plugin"),
        "{err}"
    );
    let (ok, stdout, stderr) = recblocks(&["plugins", "check", path.to_str().unwrap()]);
    assert!(!ok, "{stdout}");
    assert!(stderr.contains("registers no component"), "{stderr}");
    assert!(
        !stdout.contains("all conformance checks passed"),
        "{stdout}"
    );
    let (ok, _, stderr) = recblocks(&["--plugin", path.to_str().unwrap(), "components"]);
    assert!(!ok && stderr.contains("registers no component"), "{stderr}");
}

#[test]
fn a_panic_in_a_plugin_forward_is_an_error_naming_library_kind_and_component() {
    let path = workspace_plugin("recblocks_fixture_panicking_plugin");
    let plugin = plugins::load_plugin(&path).unwrap();
    let mut registry = Registry::from_inventory().unwrap();
    plugins::add_components(&mut registry, &plugin.path, &plugin.components).unwrap();
    let spec = recblocks_core::SpecInput::from_json_str(
        r#"{"cls": "SASRecModel", "n_factors": 16, "n_heads": 2, "n_blocks": 1,
            "session_max_len": 10, "batch_size": 16,
            "transformer_layers_type": "PanickingLayers"}"#,
    )
    .and_then(|s| s.resolve(&registry))
    .unwrap();
    let data = small_data();
    let err = Model::fit(
        spec,
        TrainData {
            interactions: &data,
            item_features: None,
        },
        &registry,
        &recblocks::FitOptions {
            epochs: Some(1),
            ..recblocks::FitOptions::default()
        },
    )
    .err()
    .unwrap();
    match &err {
        recblocks::HostError::Core(CoreError::PluginPanicked(info)) => {
            assert!(info
                .library
                .ends_with("librecblocks_fixture_panicking_plugin.so"));
            assert_eq!(info.kind, ComponentKind::TransformerLayers);
            assert_eq!(info.component, "PanickingLayers");
            assert_eq!(info.call, "forward_t");
            assert!(
                info.message.contains("index 99 out of range"),
                "{}",
                info.message
            );
        }
        _ => panic!("not a plugin panic: {err}"),
    }

    // The CLI: `fit` fails with the same error; `plugins check` reports failed checks, naming
    // the plugin, and does not abort.
    let dir = tempfile::tempdir().unwrap();
    let spec_file = dir.path().join("spec.json");
    std::fs::write(
        &spec_file,
        r#"{"cls": "SASRecModel", "n_factors": 16, "n_heads": 2, "n_blocks": 1,
            "session_max_len": 10, "batch_size": 16, "transformer_layers_type": "PanickingLayers"}"#,
    )
    .unwrap();
    let log = dir.path().join("log.csv");
    write_interactions_csv(&log, &data).unwrap();
    let lib = path.to_str().unwrap();
    let model = dir.path().join("model");
    let (ok, _, stderr) = recblocks(&[
        "--plugin",
        lib,
        "fit",
        spec_file.to_str().unwrap(),
        "--data",
        log.to_str().unwrap(),
        "--out",
        model.to_str().unwrap(),
        "--epochs",
        "1",
        "--quiet",
    ]);
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("error: ")
            && stderr.contains("librecblocks_fixture_panicking_plugin.so")
            && stderr.contains("transformer_layers `PanickingLayers` panicked in `forward_t`"),
        "{stderr}"
    );
    let (ok, stdout, stderr) = recblocks(&["plugins", "check", lib]);
    assert!(!ok, "{stdout}");
    assert!(
        stdout.contains("FAILED") && stdout.contains("panicked in `forward_t`"),
        "{stdout}"
    );
    assert!(stderr.contains("conformance check(s) failed"), "{stderr}");
}
