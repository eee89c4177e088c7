//! The fused transformer blocks against the generic blocks through the whole `fit`: the same spec
//! and seed trained with `RECBLOCKS_BLOCKS=fused` and `=generic` (each in its own process, so the
//! switch touches no other test), dropout on, 20 Adam steps. Each model's training loss agrees to
//! 1e-5 and every weight to 1e-4 (relative to max(1, |w|)) — SASRec, BERT4Rec, LiGR, and ALBERT's
//! shared layers (2 hidden groups × 2 inner groups) of both layer types. The same for
//! `RECBLOCKS_BLOCKS=nodes`: the model composed on the CPU as a GPU composes it (the device ops'
//! nodes, the block nodes), trained under `fit`'s parameter-gradient scope.
//!
//! One exception, named: the key projection's bias. Its gradient is zero in exact arithmetic (a
//! softmax does not change when every score of a row shifts by the same amount), so each path
//! hands Adam rounding noise, which Adam scales to steps of up to ±lr (seen: 1.1e-4 apart after
//! 20 steps). That bias is checked to stay within 20 steps of lr of the other path instead.

use std::{collections::BTreeMap, path::Path, process::Command};

use recblocks::data::{generate_synthetic, write_interactions_csv, SyntheticConfig};

/// The settings every spec of these runs shares: small, dropout on, 20 batches an epoch.
pub(crate) const COMMON: &str = r#""n_factors": 16, "n_heads": 2, "session_max_len": 16,
    "dropout_rate": 0.2, "batch_size": 32, "lr": 0.001, "seed": 7"#;

/// 640 users with sessions of 12–20 items: 20 batches of 32 in one epoch.
pub(crate) fn data(dir: &Path) -> std::path::PathBuf {
    let log = dir.join("log.csv");
    let data = generate_synthetic(&SyntheticConfig {
        n_users: 640,
        n_items: 120,
        min_len: 12,
        max_len: 20,
        ..SyntheticConfig::default()
    })
    .unwrap();
    write_interactions_csv(&log, &data).unwrap();
    log
}

/// Fits `spec` with the given block path; returns the training loss and every weight by name.
fn fit(
    dir: &Path,
    name: &str,
    spec: &str,
    log: &Path,
    path: &str,
) -> (f64, BTreeMap<String, Vec<f32>>) {
    fit_on(dir, name, spec, log, path, "cpu")
}

/// [`fit`] on `device` (`cpu` or `cuda`). The binary is `RECBLOCKS_BIN` where set (a build
/// shipped to another machine), else the one cargo built with these tests.
pub(crate) fn fit_on(
    dir: &Path,
    name: &str,
    spec: &str,
    log: &Path,
    path: &str,
    device: &str,
) -> (f64, BTreeMap<String, Vec<f32>>) {
    let (loss, weights, _) = fit_with_args(dir, name, spec, log, path, device, &["--quiet"]);
    (loss, weights)
}

/// [`fit_on`] with `extra` arguments to `fit` (in place of `--quiet`); also returns its stderr.
pub(crate) fn fit_with_args(
    dir: &Path,
    name: &str,
    spec: &str,
    log: &Path,
    path: &str,
    device: &str,
    extra: &[&str],
) -> (f64, BTreeMap<String, Vec<f32>>, String) {
    let spec_file = dir.join(format!("{name}.json"));
    std::fs::write(&spec_file, spec).unwrap();
    let out = dir.join(format!("{name}-{path}-{device}{}", extra.join("")));
    let bin =
        std::env::var("RECBLOCKS_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_recblocks").into());
    let run = Command::new(bin)
        .env("RECBLOCKS_BLOCKS", path)
        .args([
            "fit",
            spec_file.to_str().unwrap(),
            "--data",
            log.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--epochs",
            "1",
            "--threads",
            "2",
            "--device",
            device,
        ])
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(run.status.success(), "{name} ({path}, {device}): {stderr}");
    let bytes = std::fs::read(out.join("weights.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut weights = BTreeMap::new();
    for (key, view) in tensors.tensors() {
        let values = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        weights.insert(key, values);
    }
    // train_log.csv: epoch,train_loss,...; one epoch.
    let log_csv = std::fs::read_to_string(out.join("train_log.csv")).unwrap();
    let loss = log_csv
        .lines()
        .nth(1)
        .and_then(|row| row.split(',').nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("{name}: no training loss in train_log.csv: {log_csv}"));
    (loss, weights, stderr)
}

/// The models these runs train, by name: SASRec, BERT4Rec, LiGR, and ALBERT's shared layers
/// (2 hidden groups × 2 inner groups) of both layer types, all on [`COMMON`].
pub(crate) fn model_cases() -> Vec<(&'static str, String)> {
    let common = COMMON;
    vec![
        (
            "sasrec",
            format!(r#"{{"cls": "SASRecModel", "n_blocks": 2, {common}}}"#),
        ),
        (
            "bert4rec",
            format!(r#"{{"cls": "BERT4RecModel", "n_blocks": 2, {common}}}"#),
        ),
        (
            "ligr",
            format!(
                r#"{{"cls": "SASRecModel", "n_blocks": 2, "transformer_layers_type": "LiGRLayers", {common}}}"#
            ),
        ),
        (
            "albert_preln",
            format!(
                r#"{{"cls": "BERT4RecModel", "n_blocks": 4, "item_net_constructor_type": "AlbertSumConstructor",
                "transformer_layers_type": "AlbertLayers",
                "transformer_layers_kwargs": {{"n_hidden_groups": 2, "n_inner_groups": 2}}, {common}}}"#
            ),
        ),
        (
            "albert_sasrec",
            format!(
                r#"{{"cls": "SASRecModel", "n_blocks": 4, "item_net_constructor_type": "AlbertSumConstructor",
                "transformer_layers_type": "AlbertLayers",
                "transformer_layers_kwargs": {{"n_hidden_groups": 2, "n_inner_groups": 2, "layer_type": "SASRec"}}, {common}}}"#
            ),
        ),
    ]
}

#[test]
fn fused_and_generic_blocks_train_to_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let log = data(dir.path());
    let cases = model_cases();
    for (name, spec) in &cases {
        let (loss_g, generic) = fit(dir.path(), name, spec, &log, "generic");
        // `nodes`: the model composed on the CPU as a GPU composes it (device ops, and block
        // nodes for SASRec's and the pre-LN blocks; LiGR's are composed from the device ops).
        for path in ["fused", "nodes"] {
            check_against_generic(dir.path(), name, spec, &log, path, loss_g, &generic);
        }
    }
}

/// Fits `spec` with `path` and checks it against the generic run's loss and weights.
fn check_against_generic(
    dir: &Path,
    name: &str,
    spec: &str,
    log: &Path,
    path: &str,
    loss_g: f64,
    generic: &BTreeMap<String, Vec<f32>>,
) {
    let (loss_f, got) = fit(dir, name, spec, log, path);
    assert!(
        (loss_f - loss_g).abs() <= 1e-5 * loss_g.abs().max(1.0),
        "{name}: loss {path} {loss_f} vs generic {loss_g}"
    );
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        generic.keys().collect::<Vec<_>>()
    );
    let mut compared = 0;
    for (key, g) in generic {
        let f = &got[key];
        // The key bias's gradient is zero in exact arithmetic; see the module doc.
        let tol = if key.ends_with("k_proj.bias") {
            20.0 * 0.001
        } else {
            1e-4
        };
        for (i, (a, b)) in f.iter().zip(g).enumerate() {
            assert!(
                (a - b).abs() <= tol * b.abs().max(1.0),
                "{name}: {key}[{i}] {path} {a} vs generic {b}"
            );
        }
        compared += 1;
    }
    assert!(compared > 10, "{name}: only {compared} tensors");
    // The two runs really took different paths: their rounding differs somewhere.
    assert!(
        generic.iter().any(|(key, g)| got[key] != *g),
        "{name}: {path} and generic weights are bit-identical; was RECBLOCKS_BLOCKS applied?"
    );
}
