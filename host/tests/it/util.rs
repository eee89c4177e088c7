//! Shared helpers: the binary run as a user runs it, a small synthetic dataset and spec builders.

use std::process::Command;

use recblocks::data::{generate_synthetic, Interactions, SyntheticConfig};
use recblocks_core::{ModelSpec, Registry};

/// Runs the `recblocks` binary with `args`, without any plugin from the environment; returns
/// whether it succeeded, its stdout and its stderr.
pub fn recblocks(args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_recblocks"));
    cmd.args(args);
    output_of(&mut cmd)
}

/// Runs `cmd` (the binary, set up by the caller) without any plugin from the environment;
/// returns whether it succeeded, its stdout and its stderr.
pub fn output_of(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd
        .env_remove(recblocks::loader::PLUGINS_ENV)
        .output()
        .unwrap_or_else(|e| panic!("run recblocks: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn registry() -> Registry {
    recblocks::builtin_registry().unwrap_or_else(|e| panic!("registry: {e}"))
}

pub fn spec(json: &str) -> ModelSpec {
    recblocks_core::SpecInput::from_json_str(json)
        .and_then(|s| s.resolve(&registry()))
        .unwrap_or_else(|e| panic!("spec: {e}"))
}

pub fn small_data() -> Interactions {
    generate_synthetic(&SyntheticConfig {
        n_users: 60,
        n_items: 40,
        min_len: 6,
        max_len: 14,
        ..SyntheticConfig::default()
    })
    .unwrap_or_else(|e| panic!("synthetic data: {e}"))
}

/// A small SASRec spec; `extra` (`, "key": value, ...`) adds keys or overrides these.
pub fn tiny_sasrec(extra: &str) -> ModelSpec {
    let mut base: serde_json::Map<String, serde_json::Value> = serde_json::from_str(
        r#"{"cls": "SASRecModel", "n_factors": 16, "n_heads": 2, "n_blocks": 2,
            "session_max_len": 10, "batch_size": 16, "epochs": 2, "lr": 0.01}"#,
    )
    .unwrap_or_else(|e| panic!("base spec: {e}"));
    let extra: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&format!("{{{}}}", extra.trim().trim_start_matches(',')))
            .unwrap_or_else(|e| panic!("extra keys {extra}: {e}"));
    base.extend(extra);
    spec(&serde_json::Value::Object(base).to_string())
}
