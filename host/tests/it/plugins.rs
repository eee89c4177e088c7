//! Plugins loaded at run time: the ALBERT plugin library trains exactly like the statically
//! linked ALBERT; refused plugins (other core version, not a plugin, missing file, clashing
//! names) give clear errors; `recblocks plugins check` passes on ALBERT and the template and
//! fails on a broken plugin naming the check and the parameter; the template plugin is built on
//! its own, loaded into the built binary, trained, saved, reloaded and used to recommend.

use std::{collections::BTreeMap, process::Command};

use candle_core::Tensor;
use recblocks::{
    assembly, data::write_interactions_csv, loader as plugins, registry::registry_with_plugins,
    FitOptions, Model, TrainData,
};
use recblocks_core::{ComponentKind, Registry};

use crate::{
    plugin_libs::{template_plugin, workspace_plugin},
    util::{recblocks, small_data},
};

const ALBERT_SPEC: &str = r#"{"cls": "SASRecModel", "n_factors": 16, "n_heads": 2,
    "n_blocks": 2, "session_max_len": 10, "batch_size": 16, "lr": 0.01,
    "item_net_constructor_type": "AlbertSumConstructor",
    "item_net_constructor_kwargs": {"emb_factors": 8},
    "transformer_layers_type": "AlbertLayers",
    "transformer_layers_kwargs": {"n_hidden_groups": 1, "n_inner_groups": 2}}"#;

/// The built-in registry without the statically linked ALBERT, plus ALBERT loaded from its
/// plugin library: a host built without ALBERT, inside this test binary.
fn registry_with_dynamic_albert() -> Registry {
    let statics = recblocks_core::registry::static_registrations();
    let mut registry = Registry::from_registrations(
        statics
            .iter()
            .copied()
            .filter(|r| r.info().crate_name != "recblocks-albert"),
    )
    .unwrap();
    let plugin = plugins::load_plugin(&workspace_plugin("recblocks_albert_plugin")).unwrap();
    plugins::add_components(&mut registry, &plugin.path, &plugin.components).unwrap();
    registry
}

fn weights(m: &Model) -> BTreeMap<String, Vec<f32>> {
    let data = m.net.varmap.data().lock().unwrap();
    data.iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_tensor().flatten_all().unwrap().to_vec1().unwrap(),
            )
        })
        .collect()
}

/// Gradients of a fixed probe loss over the backbone's session encodings, by parameter name.
fn gradients(registry: &Registry) -> BTreeMap<String, Vec<f32>> {
    let spec = recblocks_core::SpecInput::from_json_str(ALBERT_SPEC)
        .and_then(|s| s.resolve(registry))
        .unwrap();
    let schema = assembly::schema_for(&spec, registry, 30).unwrap();
    let net = assembly::assemble(&spec, &schema, registry, &candle_core::Device::Cpu).unwrap();
    let ids = Tensor::new(
        &[
            [0u32, 0, 3, 5, 7, 2, 9, 4, 8, 6],
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
        ],
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let items = net.backbone.item_embeddings(true).unwrap();
    let out = net.backbone.encode_sessions(&ids, &items, true).unwrap();
    let c = Tensor::arange(0f32, out.elem_count() as f32, out.device())
        .unwrap()
        .affine(0.37, 0.0)
        .unwrap()
        .sin()
        .unwrap()
        .reshape(out.shape())
        .unwrap();
    let grads = (out * c).unwrap().sum_all().unwrap().backward().unwrap();
    let data = net.varmap.data().lock().unwrap();
    data.iter()
        .map(|(k, v)| {
            let g = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {k}"));
            (k.clone(), g.flatten_all().unwrap().to_vec1().unwrap())
        })
        .collect()
}

#[test]
fn dynamic_albert_trains_bit_identically_to_static_albert() {
    let static_registry = recblocks::builtin_registry().unwrap();
    let dynamic_registry = registry_with_dynamic_albert();
    // The dynamic registry really holds the library's entries, not the static ones.
    let s = static_registry
        .lookup(ComponentKind::TransformerLayers, "AlbertLayers")
        .unwrap();
    let d = dynamic_registry
        .lookup(ComponentKind::TransformerLayers, "AlbertLayers")
        .unwrap();
    assert!(
        !s.same_entry(&d),
        "the dynamic registry uses the static AlbertLayers"
    );

    let g_static = gradients(&static_registry);
    let g_dynamic = gradients(&dynamic_registry);
    assert!(g_static.keys().any(|k| k.starts_with("transformer_layers")));
    assert_eq!(g_static, g_dynamic, "gradients differ");

    let data = small_data();
    let fit = |registry: &Registry| {
        Model::fit(
            recblocks_core::SpecInput::from_json_str(ALBERT_SPEC)
                .and_then(|s| s.resolve(registry))
                .unwrap(),
            TrainData {
                interactions: &data,
                item_features: None,
            },
            registry,
            &FitOptions {
                epochs: Some(2),
                seed: Some(5),
                ..FitOptions::default()
            },
        )
        .unwrap()
    };
    assert_eq!(
        weights(&fit(&static_registry)),
        weights(&fit(&dynamic_registry)),
        "weights differ"
    );
}

#[test]
fn a_plugin_built_against_another_core_version_is_refused_with_the_versions_and_a_fix() {
    let path = workspace_plugin("recblocks_fixture_old_core_plugin");
    let err = plugins::load_plugin(&path).unwrap_err().to_string();
    assert!(err.contains("recblocks-core version differs"), "{err}");
    assert!(
        err.contains(&format!("host has `{}`", recblocks_core::VERSION)),
        "{err}"
    );
    assert!(err.contains("plugin has `0.0.1`"), "{err}");
    assert!(err.contains("rebuild the plugin"), "{err}");
    // The CLI says the same and exits non-zero.
    let (ok, _, stderr) = recblocks(&["--plugin", path.to_str().unwrap(), "components"]);
    assert!(!ok);
    assert!(
        stderr.contains("recblocks-core version differs"),
        "{stderr}"
    );
}

#[test]
fn missing_files_non_plugins_and_clashes_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("libnothing.so");
    let err = plugins::load_plugin(&missing).unwrap_err().to_string();
    assert!(err.contains("no such file"), "{err}");

    let text = dir.path().join("libtext.so");
    std::fs::write(&text, "not a library").unwrap();
    let err = plugins::load_plugin(&text).unwrap_err().to_string();
    assert!(err.contains("cannot load it as a shared library"), "{err}");
    // The dynamic loader's own reason is kept, not just "dlopen failed".
    let reason = err
        .split("dlopen failed: ")
        .nth(1)
        .unwrap_or_else(|| panic!("no dlerror text in: {err}"));
    assert!(reason.contains("libtext.so"), "{err}");

    // A real shared library that is not a plugin: the core library itself.
    let core = crate::plugin_libs::profile_dir().join("deps/librecblocks_core.so");
    let err = plugins::load_plugin(&core).unwrap_err().to_string();
    assert!(err.contains("not a recblocks plugin"), "{err}");

    // ALBERT is linked statically into this host: loading it again clashes.
    let albert = workspace_plugin("recblocks_albert_plugin");
    let err = registry_with_plugins(std::slice::from_ref(&albert))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("duplicate") && err.contains("recblocks-albert"),
        "{err}"
    );
    let (ok, _, stderr) = recblocks(&["--plugin", albert.to_str().unwrap(), "components"]);
    assert!(!ok && stderr.contains("duplicate"), "{stderr}");
}

#[test]
fn plugins_check_passes_on_albert_and_fails_on_a_broken_plugin_naming_check_and_parameter() {
    let broken = workspace_plugin("recblocks_fixture_broken_plugin");
    let (ok, stdout, stderr) = recblocks(&["plugins", "check", broken.to_str().unwrap()]);
    assert!(!ok, "{stdout}");
    assert!(
        stdout.contains("gradients reach every parameter: FAILED")
            && stdout.contains("`forgotten.weight`"),
        "{stdout}"
    );
    assert!(stderr.contains("conformance check(s) failed"), "{stderr}");

    // The library's components are checked, not the statically linked copy of ALBERT.
    let albert = workspace_plugin("recblocks_albert_plugin");
    let (ok, stdout, stderr) = recblocks(&["plugins", "check", albert.to_str().unwrap()]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("AlbertLayers") && stdout.contains("AlbertSumConstructor"),
        "{stdout}"
    );
    assert!(stdout.contains("all conformance checks passed"), "{stdout}");
}

#[test]
fn template_plugin_is_built_alone_loaded_trained_saved_reloaded_and_recommends() {
    let (lib, took) = template_plugin();
    eprintln!(
        "building examples/plugin-template took {:.1} s",
        took.as_secs_f64()
    );
    let lib = lib.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let (ok, stdout, stderr) = recblocks(&["--plugin", lib, "plugins", "list"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("recblocks-plugin-template")
            && stdout.contains("SwiGLUPreLNTransformerLayers"),
        "{stdout}"
    );

    let (ok, stdout, stderr) = recblocks(&["plugins", "check", lib]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("all conformance checks passed"), "{stdout}");

    let spec = d.join("spec.json");
    std::fs::write(
        &spec,
        r#"{"cls": "SASRecModel", "n_factors": 16, "n_heads": 2, "n_blocks": 2,
            "session_max_len": 10, "batch_size": 16, "lr": 0.01,
            "transformer_layers_type": "SwiGLUPreLNTransformerLayers",
            "transformer_layers_kwargs": {"ff_hidden_factors": 24}}"#,
    )
    .unwrap();
    let log = d.join("log.csv");
    write_interactions_csv(&log, &small_data()).unwrap();
    let model = d.join("model");
    let (s, l, m) = (
        spec.to_str().unwrap(),
        log.to_str().unwrap(),
        model.to_str().unwrap(),
    );

    // Without the plugin the spec names an unknown component.
    let (ok, _, stderr) = recblocks(&[
        "fit", s, "--data", l, "--out", m, "--epochs", "1", "--quiet",
    ]);
    assert!(
        !ok && stderr.contains("SwiGLUPreLNTransformerLayers"),
        "{stderr}"
    );

    let (ok, _, stderr) = recblocks(&[
        "--plugin", lib, "fit", s, "--data", l, "--out", m, "--epochs", "2", "--quiet",
    ]);
    assert!(ok, "{stderr}");
    let saved = std::fs::read_to_string(model.join("model.json")).unwrap();
    assert!(saved.contains("librecblocks_plugin_template.so"), "{saved}");

    // Reloading without the plugin names the plugin library to pass.
    let (ok, _, stderr) = recblocks(&["recommend", m, "--data", l, "-k", "3"]);
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("librecblocks_plugin_template.so") && stderr.contains("--plugin"),
        "{stderr}"
    );

    // With RECBLOCKS_PLUGINS instead of --plugin.
    let out = Command::new(env!("CARGO_BIN_EXE_recblocks"))
        .args(["recommend", m, "--data", l, "-k", "3"])
        .env(plugins::PLUGINS_ENV, lib)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "user_id,item_id,score,rank");
    assert!(lines.len() > 3, "{stdout}");
}

#[test]
fn only_named_files_are_loaded() {
    // No --plugin, no RECBLOCKS_PLUGINS: nothing is loaded, even with plugin libraries in the
    // working directory.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        workspace_plugin("recblocks_fixture_broken_plugin"),
        dir.path().join("librecblocks_fixture_broken_plugin.so"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_recblocks"))
        .args(["plugins", "list"])
        .current_dir(dir.path())
        .env_remove(plugins::PLUGINS_ENV)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(stdout.contains("no plugins loaded"), "{stdout}");
}

#[test]
fn model_json_records_the_plugin_build_and_loading_another_build_warns_or_fails_under_strict() {
    let (lib, _) = template_plugin();
    let lib = lib.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let spec = d.join("spec.json");
    std::fs::write(
        &spec,
        r#"{"cls": "SASRecModel", "n_factors": 16, "n_heads": 2, "n_blocks": 1,
            "session_max_len": 10, "batch_size": 16,
            "transformer_layers_type": "SwiGLUPreLNTransformerLayers"}"#,
    )
    .unwrap();
    let log = d.join("log.csv");
    write_interactions_csv(&log, &small_data()).unwrap();
    let model = d.join("model");
    let (s, l, m) = (
        spec.to_str().unwrap(),
        log.to_str().unwrap(),
        model.to_str().unwrap(),
    );
    let (ok, _, stderr) = recblocks(&[
        "--plugin", lib, "fit", s, "--data", l, "--out", m, "--epochs", "1", "--quiet",
    ]);
    assert!(ok, "{stderr}");
    let path = model.join("model.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let build = &json["components"]["transformer_layers_type"]["plugin_build"];
    assert_eq!(build["name"], "recblocks-plugin-template", "{text}");
    assert_eq!(build["version"], "0.1.0", "{text}");
    assert_eq!(build["file"], "librecblocks_plugin_template.so", "{text}");
    let hash = build["hash"].as_str().unwrap();
    assert!(hash.starts_with("crc32:"), "{text}");

    // The same build: no warning.
    let (ok, _, stderr) = recblocks(&["--plugin", lib, "recommend", m, "--data", l, "-k", "3"]);
    assert!(ok && !stderr.contains("trained with plugin"), "{stderr}");

    // Another build (as if the library had been rebuilt from other source): a warning naming
    // both builds, and a refusal under --strict. (Editing model.json keeps its weights' CRC.)
    std::fs::write(&path, text.replace(hash, "crc32:00000000")).unwrap();
    let (ok, _, stderr) = recblocks(&["--plugin", lib, "recommend", m, "--data", l, "-k", "3"]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("trained with plugin recblocks-plugin-template 0.1.0")
            && stderr.contains("crc32:00000000")
            && stderr.contains(hash),
        "{stderr}"
    );
    let (ok, _, stderr) = recblocks(&[
        "--plugin",
        lib,
        "--strict",
        "recommend",
        m,
        "--data",
        l,
        "-k",
        "3",
    ]);
    assert!(!ok && stderr.contains("refused under --strict"), "{stderr}");
}
