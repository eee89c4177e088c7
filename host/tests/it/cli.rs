//! The CLI end to end on generated data: validate, components, fit, evaluate; errors exit
//! non-zero with a message and never panic.

use recblocks::data::{generate_synthetic, write_interactions_csv, SyntheticConfig};

use crate::util::{recblocks, small_data};

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
    // A step's median time: positive, and less than the epoch it is part of.
    let step_ms = v["step_ms_median"][0].as_f64().unwrap();
    let epoch_ms = 1e3 * v["epoch_seconds"][0].as_f64().unwrap();
    assert!(
        step_ms > 0.0 && step_ms <= epoch_ms,
        "{step_ms} ms of {epoch_ms}"
    );
    let loss = v["train_loss"].as_array().unwrap();
    assert_eq!(loss.len(), 1);
    assert!(loss[0].as_f64().unwrap() > 0.0);
    assert!(v["n_params"].as_u64().unwrap() > 0);
    assert!(v["recommend_seconds"].as_f64().is_some() && v["fit_seconds"].as_f64().is_some());
    assert_eq!(v["spec"]["cls"], "SASRecModel");
}

#[test]
fn the_thread_count_does_not_change_the_trained_weights() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log.csv");
    write_interactions_csv(&log, &small_data()).unwrap();
    let spec = dir.path().join("s.json");
    std::fs::write(
        &spec,
        r#"{"cls": "SASRecModel", "n_factors": 16, "n_heads": 2, "session_max_len": 10, "batch_size": 16, "seed": 3}"#,
    )
    .unwrap();
    let mut weights = Vec::new();
    for threads in ["1", "2", "3"] {
        let out = dir.path().join(format!("model{threads}"));
        let (ok, _, stderr) = recblocks(&[
            "fit",
            spec.to_str().unwrap(),
            "--data",
            log.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--epochs",
            "2",
            "--quiet",
            "--threads",
            threads,
        ]);
        assert!(ok, "{stderr}");
        weights.push(std::fs::read(out.join("weights.safetensors")).unwrap());
    }
    assert!(weights[0] == weights[1] && weights[1] == weights[2]);

    let (ok, _, stderr) = recblocks(&["components", "--threads", "0"]);
    assert!(!ok);
    assert!(stderr.contains("--threads must be at least 1"), "{stderr}");
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

#[test]
fn evaluate_with_a_time_split_and_the_full_metric_set() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log.csv");
    // 30 users active over the same 12 seconds, so a global time cut leaves each user a train
    // part and a test part; items are distinct within a user.
    let rows = (0..30).flat_map(|u: usize| {
        (0..12).map(move |t: usize| {
            (
                format!("u{u}"),
                format!("i{}", (u + 2 * t) % 25),
                1.0f32,
                t as i64,
            )
        })
    });
    let data = recblocks::data::Interactions::from_rows(rows).unwrap();
    write_interactions_csv(&log, &data).unwrap();
    let spec = dir.path().join("s.json");
    std::fs::write(
        &spec,
        r#"{"cls": "BERT4RecModel", "n_factors": 16, "n_heads": 2, "session_max_len": 10, "batch_size": 16}"#,
    )
    .unwrap();
    let (ok, stdout, stderr) = recblocks(&[
        "evaluate",
        spec.to_str().unwrap(),
        "--data",
        log.to_str().unwrap(),
        "--epochs",
        "1",
        "--split",
        "time:0.3",
        "-k",
        "5",
        "--json",
        "--metrics",
        "recall,precision,hitrate,ndcg,ndcg_rectools,map,mrr,coverage,avg_rec_pop,serendipity",
    ]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let m = v["metrics"].as_object().unwrap();
    let keys: Vec<&str> = m.keys().map(String::as_str).collect();
    for key in [
        "recall@5",
        "precision@5",
        "hitrate@5",
        "ndcg@5",
        "ndcg_rectools@5",
        "map@5",
        "mrr@5",
        "coverage@5",
        "avg_rec_pop@5",
        "serendipity@5",
    ] {
        assert!(keys.contains(&key), "{key} missing from {keys:?}");
    }
    // RecTools' NDCG divides by the ideal DCG of k items: never above the standard one.
    assert!(m["ndcg_rectools@5"].as_f64().unwrap() <= m["ndcg@5"].as_f64().unwrap() + 1e-12);
    let (ok, _, stderr) = recblocks(&[
        "evaluate",
        spec.to_str().unwrap(),
        "--data",
        log.to_str().unwrap(),
        "--split",
        "time:1.5",
    ]);
    assert!(!ok);
    assert!(stderr.contains("a fraction must be in (0, 1)"), "{stderr}");
}

#[test]
fn recommend_and_similar_write_csv_with_external_ids() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log.csv");
    let data = small_data();
    write_interactions_csv(&log, &data).unwrap();
    let spec = dir.path().join("s.json");
    std::fs::write(
        &spec,
        r#"{"cls": "SASRecModel", "n_factors": 16, "n_heads": 2, "session_max_len": 10, "epochs": 1}"#,
    )
    .unwrap();
    let model = dir.path().join("m");
    let (ok, _, stderr) = recblocks(&[
        "fit",
        spec.to_str().unwrap(),
        "--data",
        log.to_str().unwrap(),
        "--out",
        model.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(ok, "{stderr}");
    let users = dir.path().join("users.txt");
    std::fs::write(
        &users,
        format!("user_id\n{}\n{}\n", data.user_ids[0], data.user_ids[1]),
    )
    .unwrap();
    let (ok, stdout, stderr) = recblocks(&[
        "recommend",
        model.to_str().unwrap(),
        "--data",
        log.to_str().unwrap(),
        "--users",
        users.to_str().unwrap(),
        "-k",
        "3",
    ]);
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "user_id,item_id,score,rank");
    assert_eq!(lines.len(), 1 + 2 * 3);
    assert!(lines[1].starts_with(&format!("{},", data.user_ids[0])) && lines[1].ends_with(",1"));

    let out = dir.path().join("sim.parquet");
    let (ok, _, stderr) = recblocks(&[
        "similar",
        model.to_str().unwrap(),
        "-k",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(std::fs::metadata(&out).unwrap().len() > 0);
    let (ok, stdout, _) = recblocks(&["similar", model.to_str().unwrap(), "-k", "2"]);
    assert!(ok);
    assert!(stdout.starts_with("target_item_id,item_id,score,rank\n"));
}

/// Without `--data`, `recommend` reads the built-in dataset's histories, as `fit` trains on it.
#[test]
fn recommend_without_data_uses_the_built_in_dataset_like_fit() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("s.json");
    std::fs::write(
        &spec,
        r#"{"cls": "SASRecModel", "n_factors": 8, "n_heads": 1, "n_blocks": 1,
            "session_max_len": 5, "batch_size": 256, "epochs": 1}"#,
    )
    .unwrap();
    let model = dir.path().join("m");
    let (ok, _, stderr) = recblocks(&[
        "fit",
        spec.to_str().unwrap(),
        "--out",
        model.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(ok, "{stderr}");
    let (ok, help, _) = recblocks(&["recommend", "--help"]);
    assert!(ok && help.contains("built-in synthetic dataset"), "{help}");

    let builtin = generate_synthetic(&SyntheticConfig::default()).unwrap();
    let (ok, stdout, stderr) = recblocks(&["recommend", model.to_str().unwrap(), "-k", "2"]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("no --data: using the built-in synthetic dataset"),
        "{stderr}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "user_id,item_id,score,rank");
    assert_eq!(lines.len(), 1 + 2 * builtin.n_users());
    assert!(lines[1].starts_with(&format!("{},", builtin.user_ids[0])));
}
