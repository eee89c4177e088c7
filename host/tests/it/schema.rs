//! `recblocks schema`: the spec's JSON Schema is a valid draft 2020-12 schema, accepts every
//! shipped spec (examples, bench, the plugin template's with the template loaded), rejects
//! misspelt keys and kwargs as spec resolution does, and agrees with `recblocks components
//! --json` on every component's names and default kwargs.

use std::path::Path;

use recblocks::{
    assembly,
    spec_schema::{kwargs_def_name, kwargs_slot, spec_schema},
};
use recblocks_core::{ComponentKind, ModelSpec, SpecInput};
use serde_json::{json, Value};

use crate::{
    plugin_libs::{template_plugin, workspace_root},
    util::{recblocks, registry},
};

/// A compiled spec schema.
struct Validator {
    schemas: boon::Schemas,
    index: boon::SchemaIndex,
}

/// Compiles `schema` as draft 2020-12; boon checks it against the draft's metaschema first.
fn validator(schema: &Value) -> Validator {
    const LOC: &str = "file:///recblocks/spec.schema.json";
    let mut schemas = boon::Schemas::new();
    let mut compiler = boon::Compiler::new();
    compiler.set_default_draft(boon::Draft::V2020_12);
    compiler.add_resource(LOC, schema.clone()).unwrap();
    let index = compiler
        .compile(LOC, &mut schemas)
        .unwrap_or_else(|e| panic!("not a valid schema: {e:#}"));
    Validator { schemas, index }
}

/// The schema's errors for `spec` (each with the instance and schema locations), `None` when it
/// is valid.
fn errors(v: &Validator, spec: &Value) -> Option<String> {
    v.schemas
        .validate(spec, v.index)
        .err()
        .map(|e| format!("{e:#}"))
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn json_files(dir: &str) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(workspace_root().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no spec in {dir}");
    files
}

#[test]
fn the_schema_is_draft_2020_12_and_the_cli_prints_the_librarys() {
    let schema = spec_schema(&registry());
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    validator(&schema);
    let (ok, stdout, stderr) = recblocks(&["schema"]);
    assert!(ok, "{stderr}");
    assert_eq!(serde_json::from_str::<Value>(&stdout).unwrap(), schema);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("spec.schema.json");
    let (ok, stdout, stderr) = recblocks(&["schema", "--out", out.to_str().unwrap()]);
    assert!(ok && stdout.is_empty(), "{stderr}");
    assert_eq!(read_json(&out), schema);
}

#[test]
fn every_example_and_bench_spec_is_valid() {
    let v = validator(&spec_schema(&registry()));
    let mut files = json_files("examples/specs");
    files.extend(json_files("bench/specs"));
    for path in files {
        let spec = read_json(&path);
        assert_eq!(errors(&v, &spec), None, "{}", path.display());
    }
}

/// The plugin template's spec names `SwiGLUPreLNTransformerLayers`, which only the template's
/// library registers: it is valid against the schema of `recblocks --plugin LIB schema`, and
/// not against the built-in one.
#[test]
fn the_plugin_templates_spec_is_valid_with_the_template_loaded() {
    let spec = read_json(&workspace_root().join("examples/plugin-template/spec.json"));
    let builtin = validator(&spec_schema(&registry()));
    assert!(errors(&builtin, &spec).is_some());
    let (lib, _) = template_plugin();
    let (ok, stdout, stderr) = recblocks(&["--plugin", lib.to_str().unwrap(), "schema"]);
    assert!(ok, "{stderr}");
    let schema: Value = serde_json::from_str(&stdout).unwrap();
    let with_template = validator(&schema);
    assert_eq!(errors(&with_template, &spec), None);
    let mut misspelt = spec.clone();
    misspelt["transformer_layers_kwargs"] = json!({"ff_hiden_factors": 32});
    let errs = errors(&with_template, &misspelt).unwrap_or_default();
    assert!(errs.contains("ff_hiden_factors"), "{errs}");
}

/// What the host makes of `spec` without data: resolution, then the parts that check their
/// kwargs when built (the data preparator, the assembled model, the objective, the trainer).
fn host_check(spec: &Value) -> recblocks::Result<()> {
    let registry = registry();
    let spec = SpecInput::from_value(spec.clone())?.resolve(&registry)?;
    let schema = assembly::schema_for(&spec, &registry, 9)?;
    assembly::assemble(&spec, &schema, &registry, &candle_core::Device::Cpu)?;
    assembly::build_objective(&spec, &schema, &registry)?;
    let trainer = registry.trainer(&spec.trainer_name(&registry)?)?;
    (trainer.build)(
        &spec,
        &ModelSpec::kwargs_value(&spec.get_trainer_func_kwargs),
    )?;
    Ok(())
}

/// Asserts that the schema and the host both reject `spec`, and that a schema error names
/// `word`.
fn rejected(v: &Validator, spec: Value, word: &str) {
    let errs = errors(v, &spec).unwrap_or_default();
    assert!(
        errs.contains(word),
        "{spec}: no schema error names `{word}`: {errs}"
    );
    assert!(host_check(&spec).is_err(), "{spec}: the host accepted it");
}

/// Asserts that the schema and the host both accept `spec`.
fn accepted(v: &Validator, spec: Value) {
    assert_eq!(errors(v, &spec), None, "{spec}");
    host_check(&spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
}

#[test]
fn misspelt_keys_and_kwargs_fail_as_in_resolution() {
    let v = validator(&spec_schema(&registry()));
    rejected(
        &v,
        json!({"cls": "SASRecModel", "n_factor": 64}),
        "n_factor",
    );
    rejected(
        &v,
        json!({"cls": "SASRecModel", "similarity_module_kwargs": {"distanse": "dot"}}),
        "distanse",
    );
    rejected(
        &v,
        json!({"cls": "SASRecModel",
               "similarity_module_type": "DistanceSimilarityModule",
               "similarity_module_kwargs": {"distanse": "dot"}}),
        "distanse",
    );
    rejected(
        &v,
        json!({"cls": "SASRecModel", "n_blocks": "two"}),
        "n_blocks",
    );
    rejected(
        &v,
        json!({"cls": "SASRecModel", "mask_prob": 0.2}),
        "mask_prob",
    );
    rejected(
        &v,
        json!({"cls": "SASRecModel", "pos_encoding_type": "LearnablePositionalEncoding"}),
        "LearnablePositionalEncoding",
    );
    rejected(
        &v,
        json!({"cls": "SASRecModel", "get_trainer_func_kwargs": {"val_kk": 5}}),
        "val_kk",
    );
    // The class's default layers (BERT4Rec: pre-LN) check the kwargs when no type is given.
    rejected(
        &v,
        json!({"cls": "BERT4RecModel", "transformer_layers_kwargs": {"n_hidden_groups": 2}}),
        "n_hidden_groups",
    );
    accepted(
        &v,
        json!({"cls": "rectools.models.BERT4RecModel", "mask_prob": 0.2,
               "transformer_layers_kwargs": {"ff_factors_multiplier": 2},
               "get_trainer_func": null, "get_trainer_func_kwargs": {"val_k": 5},
               "get_val_mask_func": "leave_one_out_mask", "seed": 7}),
    );
}

#[cfg(feature = "albert")]
#[test]
fn a_misspelt_albert_kwarg_fails_and_dotted_paths_are_names() {
    let v = validator(&spec_schema(&registry()));
    rejected(
        &v,
        json!({"cls": "SASRecModel", "transformer_layers_type": "AlbertLayers",
               "transformer_layers_kwargs": {"n_hiden_groups": 2}}),
        "n_hiden_groups",
    );
    accepted(
        &v,
        json!({"cls": "SASRecModel", "transformer_layers_type": "__main__.AlbertLayers",
               "transformer_layers_kwargs": {"n_hidden_groups": 2}}),
    );
    rejected(
        &v,
        json!({"cls": "SASRecModel", "transformer_layers_type": "__main__.AlbertLayers",
               "transformer_layers_kwargs": {"n_hiden_groups": 2}}),
        "n_hiden_groups",
    );
}

/// Every component that `recblocks components --json` lists is in the schema of
/// `recblocks schema`: its canonical name and aliases in its slot's names, and its default
/// kwargs, exactly, as the properties of its `$defs` entry, which the kwargs slot refers to.
#[test]
fn components_json_and_the_schema_agree() {
    let (ok, stdout, stderr) = recblocks(&["components", "--json"]);
    assert!(ok, "{stderr}");
    let components: Vec<Value> = serde_json::from_str(&stdout).unwrap();
    let (ok, stdout, stderr) = recblocks(&["schema"]);
    assert!(ok, "{stderr}");
    let schema: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(components.len(), registry().all().len());
    for c in &components {
        let name = c["name"].as_str().unwrap();
        let kind = ComponentKind::parse(c["kind"].as_str().unwrap()).unwrap();
        let slot = c["spec_slot"].as_str().unwrap();
        let mut names = &schema["properties"][slot];
        if let Some(alternatives) = names["anyOf"].as_array() {
            if alternatives[0] == json!({"type": "null"}) {
                names = &alternatives[1];
            }
        }
        if kind == ComponentKind::ItemNetBlock {
            names = &names["items"];
        }
        let listed = names["anyOf"][0]["enum"].as_array().unwrap();
        for n in std::iter::once(&c["name"]).chain(c["aliases"].as_array().unwrap()) {
            assert!(listed.contains(n), "{slot}: {n} not in {listed:?}");
        }
        let pattern = names["anyOf"][1]["pattern"].as_str().unwrap();
        assert!(pattern.contains(name), "{slot}: {pattern}");

        let Some(kwargs_slot) = kwargs_slot(kind) else {
            assert_eq!(
                c["kwargs"],
                json!({}),
                "{name} has kwargs but no kwargs slot"
            );
            continue;
        };
        let def = kwargs_def_name(kind, name);
        let properties = schema["$defs"][&def]["properties"].as_object().unwrap();
        let defaults: serde_json::Map<String, Value> = properties
            .iter()
            .map(|(k, p)| (k.clone(), p["default"].clone()))
            .collect();
        assert_eq!(Value::Object(defaults), c["kwargs"], "{def}");
        assert_eq!(schema["$defs"][&def]["additionalProperties"], false);
        let reference = json!({"$ref": format!("#/$defs/{def}")});
        let used = schema["allOf"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["then"]["properties"][&kwargs_slot] == reference);
        assert!(used, "{kwargs_slot} never refers to {def}");
    }
}
