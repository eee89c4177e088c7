//! `recblocks plugin build [DIR] [--debug]`: builds the plugin crate in DIR against the SDK of
//! the running binary.
//!
//! It runs `cargo rustc` on the plugin's own manifest, into the plugin's own target directory
//! (`DIR/target`), with the compiler that built the host, and hands rustc the host's core:
//!
//! - `--extern recblocks_core=<sdk>/librecblocks_core.so` and `-L dependency=<sdk deps>`: the
//!   plugin links the host's core (and candle inside it), which is never compiled here;
//! - `-C prefer-dynamic` on the plugin itself: it links core and libstd dynamically, as the host
//!   does;
//! - `RUSTFLAGS=-C metadata=recblocks-plugin`: every crate the plugin compiles for itself gets
//!   other symbol names than the SDK's compiled crates, so a plugin dependency that core also has
//!   (serde, rand, smallvec, ... with other features, or the same) never collides with core's copy.
//!
//! Nothing is written outside the plugin's directory but cargo's own download cache.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use recblocks_core::serde_json::{self, Value};

use super::{toolchain_version, Sdk, SdkError};

/// The `-C metadata` salt of every crate a plugin build compiles.
pub const METADATA_SALT: &str = "recblocks-plugin";

/// What `recblocks plugin build` builds.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The plugin crate's directory (with its Cargo.toml).
    pub dir: PathBuf,
    /// The release profile (default) or the dev profile (`--debug`).
    pub release: bool,
}

/// A built plugin.
#[derive(Debug, Clone)]
pub struct BuiltPlugin {
    /// The plugin library.
    pub library: PathBuf,
    /// The build's wall time.
    pub took: Duration,
}

fn cargo_program() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn rustc_program() -> String {
    std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into())
}

/// Checks that the rustc a build would use is the one that built the host's core.
pub fn check_rustc() -> Result<(), SdkError> {
    let expected = recblocks_core::declaration::RUSTC_VERSION;
    let program = rustc_program();
    let out = Command::new(&program)
        .arg("-V")
        .env("RUSTUP_TOOLCHAIN", toolchain_version())
        .output()
        .map_err(|e| SdkError::io(&program, e))?;
    let found = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || found != expected {
        return Err(SdkError::WrongRustc {
            found: if found.is_empty() {
                String::from_utf8_lossy(&out.stderr).trim().to_string()
            } else {
                found
            },
            expected: expected.to_string(),
            toolchain: toolchain_version().to_string(),
        });
    }
    Ok(())
}

/// The cargo command that builds the plugin (not run).
pub fn cargo_command(sdk: &Sdk, request: &BuildRequest) -> Command {
    let mut cmd = Command::new(cargo_program());
    cmd.current_dir(&request.dir)
        .arg("rustc")
        .arg("--manifest-path")
        .arg(request.dir.join("Cargo.toml"))
        .args(["--lib", "--crate-type", "cdylib"])
        .arg("--target-dir")
        .arg(request.dir.join("target"))
        .args(["--message-format", "json-render-diagnostics"]);
    if request.release {
        cmd.arg("--release");
    }
    cmd.arg("--")
        .arg("--extern")
        .arg(format!("recblocks_core={}", sdk.core.display()))
        .arg("-L")
        .arg(format!("dependency={}", sdk.deps.display()))
        .args(["-C", "prefer-dynamic"]);
    // Flags of whatever build this command was started from (a recblocks checkout's config, a
    // test's environment) must not reach the plugin's build, nor its target directory.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
        "CARGO_BUILD_TARGET",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("RUSTFLAGS", format!("-C metadata={METADATA_SALT}"))
        .env("RUSTUP_TOOLCHAIN", toolchain_version());
    cmd
}

/// Builds the plugin in `request.dir` against `sdk`; cargo's messages go to stderr.
pub fn build_plugin(sdk: &Sdk, request: &BuildRequest) -> Result<BuiltPlugin, SdkError> {
    let manifest = request.dir.join("Cargo.toml");
    if !manifest.is_file() {
        return Err(SdkError::NoManifest(request.dir.clone()));
    }
    check_rustc()?;
    let start = Instant::now();
    let mut cmd = cargo_command(sdk, request);
    let out = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| SdkError::io(cargo_program(), e))?;
    if !out.status.success() {
        return Err(SdkError::CargoFailed {
            dir: request.dir.clone(),
            status: out.status.to_string(),
        });
    }
    let library = cdylib_of(&String::from_utf8_lossy(&out.stdout))
        .ok_or_else(|| SdkError::NoLibrary(request.dir.clone()))?;
    Ok(BuiltPlugin {
        library,
        took: start.elapsed(),
    })
}

/// The last cdylib file in cargo's JSON messages.
fn cdylib_of(messages: &str) -> Option<PathBuf> {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter(|m| {
            m["target"]["crate_types"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|k| k == "cdylib"))
        })
        .filter_map(|m| {
            m["filenames"].as_array().and_then(|files| {
                files
                    .iter()
                    .filter_map(Value::as_str)
                    .find(|f| f.ends_with(".so"))
                    .map(PathBuf::from)
            })
        })
        .next_back()
}

/// The plugin directory a relative `dir` names, from the working directory.
pub fn plugin_dir(dir: Option<&Path>) -> Result<PathBuf, SdkError> {
    let dir = dir.unwrap_or(Path::new("."));
    dir.canonicalize().map_err(|e| SdkError::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_library_is_read_from_cargo_messages() {
        let messages = r#"{"reason":"compiler-artifact","target":{"crate_types":["lib"]},"filenames":["/p/target/release/deps/libsmallvec-1.rlib"]}
{"reason":"compiler-artifact","target":{"crate_types":["cdylib"]},"filenames":["/p/target/release/libmy_layers.so"]}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            cdylib_of(messages),
            Some(PathBuf::from("/p/target/release/libmy_layers.so"))
        );
        assert_eq!(cdylib_of("not json\n"), None);
    }

    #[test]
    fn the_command_links_the_sdk_core_and_keeps_to_the_plugin_directory() {
        let sdk = Sdk {
            layout: super::super::SdkLayout::Checkout,
            core: PathBuf::from("/sdk/librecblocks_core.so"),
            deps: PathBuf::from("/sdk/deps"),
        };
        let cmd = cargo_command(
            &sdk,
            &BuildRequest {
                dir: PathBuf::from("/p"),
                release: true,
            },
        );
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(joined.contains("--target-dir /p/target"), "{joined}");
        assert!(
            joined.contains("--extern recblocks_core=/sdk/librecblocks_core.so"),
            "{joined}"
        );
        assert!(joined.contains("dependency=/sdk/deps"), "{joined}");
        assert!(joined.contains("prefer-dynamic"), "{joined}");
    }
}
