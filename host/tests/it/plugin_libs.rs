//! Builds the plugin libraries the plugin tests load, with the cargo that runs the tests, into
//! this workspace's target directory and profile, so their dependencies (candle, core) are the
//! ones already compiled for the test binaries and nothing is rebuilt but the plugins themselves.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::{Duration, Instant},
};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `target/<profile>`: the test binary lives in its `deps/`.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// Runs cargo; returns its wall time and its stderr (the "Compiling ..." lines).
fn cargo(dir: &Path, args: &[&str]) -> (Duration, String) {
    let profile = profile_dir();
    let target = profile.parent().unwrap();
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(dir)
        .args(args)
        .env("CARGO_TARGET_DIR", target);
    if profile.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let start = Instant::now();
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "cargo {args:?} in {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        start.elapsed(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A plugin library of this workspace (`recblocks_albert_plugin`, `recblocks_fixture_…`), built
/// once per test run.
pub fn workspace_plugin(lib: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        cargo(
            &workspace_root(),
            &[
                "build",
                "--locked",
                "--offline",
                "-p",
                "recblocks-albert-plugin",
                "-p",
                "recblocks-fixture-broken-plugin",
                "-p",
                "recblocks-fixture-old-core-plugin",
                "-p",
                "recblocks-fixture-no-components-plugin",
                "-p",
                "recblocks-fixture-second-core-plugin",
                "-p",
                "recblocks-fixture-panicking-plugin",
            ],
        );
    });
    let path = profile_dir().join(format!("lib{lib}.so"));
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

/// `examples/plugin-template`, built on its own (`cargo build -p recblocks-plugin-template`)
/// after the host: only the template is compiled, and neither candle nor recblocks-core is
/// rebuilt, so the already-built `recblocks` binary keeps its core. Returns the library and the
/// build's wall time.
pub fn template_plugin() -> (PathBuf, Duration) {
    static BUILT: OnceLock<(PathBuf, Duration)> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let (took, log) = cargo(
                &workspace_root(),
                &[
                    "build",
                    "--locked",
                    "--offline",
                    "--lib",
                    "-p",
                    "recblocks-plugin-template",
                ],
            );
            for dep in ["candle", "recblocks-core"] {
                assert!(
                    !log.contains(&format!("Compiling {dep}")),
                    "building the template recompiled {dep}:\n{log}"
                );
            }
            let lib = profile_dir().join("librecblocks_plugin_template.so");
            assert!(lib.is_file(), "{} was not built", lib.display());
            (lib, took)
        })
        .clone()
}
