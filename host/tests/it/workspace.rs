//! The workspace picks up every crate under `plugins/` (a glob in the root manifest), so an
//! in-tree plugin needs no edit of the root `Cargo.toml`.

use std::process::Command;

#[test]
fn every_crate_under_plugins_is_a_workspace_member() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
            "--locked",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let members: Vec<String> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["manifest_path"].as_str().map(str::to_string))
        .collect();
    let mut crates = 0;
    for entry in std::fs::read_dir(root.join("plugins")).unwrap() {
        let manifest = entry.unwrap().path().join("Cargo.toml");
        if manifest.is_file() {
            crates += 1;
            let manifest = manifest.to_string_lossy().into_owned();
            assert!(members.contains(&manifest), "{manifest} is not a member");
        }
    }
    assert!(crates >= 3, "plugins/ has {crates} crates");
}
