//! The CLI end to end on generated data: validate, components, fit, evaluate; errors exit
//! non-zero with a message and never panic.

use std::process::Command;

use recblocks::data::write_interactions_csv;

use crate::util::small_data;

fn recblocks(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_recblocks"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn validate_json_prints_spec_components_and_total() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("s.json");
    std::fs::write(
        &spec,
        r#"{"cls": "SASRecModel", "n_factors": 16, "n_heads": 2, "session_max_len": 10}"#,
    )
    .unwrap();
    let (ok, stdout, stderr) = recblocks(&[
        "validate",
        spec.to_str().unwrap(),
        "--n-items",
        "99",
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let (d, l, n) = (16, 10, 100);
    assert_eq!(
        v["n_params"],
        n * d + l * d + 2 * (6 * d * d + 10 * d) + 2 * d
    );
    assert_eq!(
        v["spec"]["transformer_layers_type"],
        "SASRecTransformerLayers"
    );
    assert_eq!(v["components"]["pos_encoding"], l * d);
}

#[test]
fn validate_reports_a_bad_spec_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("s.json");
    std::fs::write(
        &spec,
        r#"{"cls": "SASRecModel", "similarity_module_type": "Cosine"}"#,
    )
    .unwrap();
    let (ok, _, stderr) = recblocks(&["validate", spec.to_str().unwrap(), "--n-items", "9"]);
    assert!(!ok);
    assert_eq!(
        stderr.trim(),
        format!(
            "error: in spec {}: unknown similarity `Cosine`; known similarity names: \
             DistanceSimilarityModule",
            spec.display()
        )
    );
    let (ok, _, stderr) = recblocks(&["validate", "/nonexistent/spec.json", "--n-items", "9"]);
    assert!(!ok);
    assert!(
        stderr.starts_with("error: cannot read spec /nonexistent/spec.json: "),
        "{stderr}"
    );
}

#[test]
fn components_json_lists_every_component_with_its_crate() {
    let (ok, stdout, _) = recblocks(&["components", "--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let rows = v.as_array().unwrap();
    let find = |name: &str| rows.iter().find(|r| r["name"] == name).cloned().unwrap();
    assert_eq!(
        find("PreLNTransformerLayers")["crate"],
        "recblocks-rectools"
    );
    assert_eq!(
        find("PreLNTransformerLayers")["kwargs"]["ff_factors_multiplier"],
        4
    );
    assert_eq!(find("AlbertLayers")["crate"], "recblocks-albert");
    assert_eq!(find("AlbertLayers")["kind"], "transformer_layers");
}

#[test]
fn fit_then_evaluate_on_a_csv_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log.csv");
    write_interactions_csv(&log, &small_data()).unwrap();
    let spec = dir.path().join("s.json");
    std::fs::write(
        &spec,
        r#"{"cls": "SASRecModel", "n_factors": 16, "n_heads": 2, "session_max_len": 10, "batch_size": 16}"#,
    )
    .unwrap();
    let out = dir.path().join("model");
    let (ok, stdout, stderr) = recblocks(&[
        "fit",
        spec.to_str().unwrap(),
        "--data",
        log.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--epochs",
        "1",
        "--quiet",
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.is_empty(), "--quiet prints nothing: {stdout}");
    assert!(out.join("weights.safetensors").exists());

    let (ok, stdout, stderr) = recblocks(&[
        "evaluate",
        spec.to_str().unwrap(),
        "--data",
        log.to_str().unwrap(),
        "--epochs",
        "1",
        "--json",
        "--baseline",
        "popular",
    ]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    for key in ["recall@10", "ndcg@10", "mrr@10"] {
        let x = v["metrics"][key].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&x), "{key} = {x}");
        assert!(v["baseline_popular"][key].as_f64().is_some());
    }
    assert_eq!(v["epoch_seconds"].as_array().unwrap().len(), 1);
    assert!(v["n_params"].as_u64().unwrap() > 0);
    assert!(v["recommend_seconds"].as_f64().is_some() && v["fit_seconds"].as_f64().is_some());
    assert_eq!(v["spec"]["cls"], "SASRecModel");
}

#[test]
fn a_failed_fit_leaves_the_previous_model_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log.csv");
    write_interactions_csv(&log, &small_data()).unwrap();
    let good = dir.path().join("good.json");
    std::fs::write(
        &good,
        r#"{"cls": "SASRecModel", "n_factors": 16, "n_heads": 2, "session_max_len": 10}"#,
    )
    .unwrap();
    let out = dir.path().join("model");
    let (ok, _, stderr) = recblocks(&[
        "fit",
        good.to_str().unwrap(),
        "--data",
        log.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--epochs",
        "1",
        "--quiet",
    ]);
    assert!(ok, "{stderr}");
    let before = std::fs::read(out.join("weights.safetensors")).unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"cls": "SASRecModel", "n_factors": 16, "n_heads": 2, "session_max_len": 10, "lr": 1e30}"#)
        .unwrap();
    let (ok, _, stderr) = recblocks(&[
        "fit",
        bad.to_str().unwrap(),
        "--data",
        log.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--epochs",
        "2",
        "--quiet",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("training failed;") && stderr.contains("the training loss became"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(out.join("weights.safetensors")).unwrap(),
        before
    );
}

#[test]
fn a_malformed_csv_row_is_reported_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log.csv");
    std::fs::write(
        &log,
        "user_id,item_id,weight,datetime\nu1,i1,1,10\nu1,i2,abc,11\n",
    )
    .unwrap();
    let (ok, _, stderr) = recblocks(&[
        "fit",
        "../examples/specs/sasrec.json",
        "--data",
        log.to_str().unwrap(),
        "--out",
        dir.path().join("m").to_str().unwrap(),
        "--quiet",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains(&format!(
            "{}, line 3, column `weight`: found \"abc\", expected",
            log.display()
        )),
        "{stderr}"
    );
}
