//! A plugin outside the checkout, end to end: `recblocks plugin new` scaffolds it in a temporary
//! directory, it gets a dependency that turns on another feature of a crate core also uses,
//! `recblocks plugin build` builds it against the test's `recblocks` binary (the checkout's SDK)
//! without compiling candle or core, and the library passes `plugins check`, trains an epoch and
//! recommends. The host's files are byte-identical before and after.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use recblocks::{data::write_interactions_csv, loader as plugins};

use crate::{
    plugin_libs::profile_dir,
    util::{self, small_data},
};

fn recblocks(args: &[&str]) -> (bool, String, String) {
    // Only crates already in the local registry cache.
    util::output_of(
        Command::new(env!("CARGO_BIN_EXE_recblocks"))
            .args(args)
            .env("CARGO_NET_OFFLINE", "true"),
    )
}

/// The host's files a plugin build could overwrite: the binary and its core library, with a
/// checksum of each.
fn host_files() -> Vec<(PathBuf, u32)> {
    let profile = profile_dir();
    let mut files = vec![PathBuf::from(env!("CARGO_BIN_EXE_recblocks"))];
    for dir in [profile.clone(), profile.join("deps")] {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("librecblocks_core") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let sum = crc32fast::hash(&std::fs::read(&p).unwrap());
            (p, sum)
        })
        .collect()
}

fn add_smallvec_dependency(dir: &Path) {
    // Core uses smallvec with `const_generics`; the plugin turns on `union` as well.
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let text = text.replacen(
        "[dependencies]\n",
        "[dependencies]\nsmallvec = { version = \"1\", features = [\"union\"] }\n",
        1,
    );
    std::fs::write(&manifest, text).unwrap();
    let lib = dir.join("src/lib.rs");
    let mut code = std::fs::read_to_string(&lib).unwrap();
    code.push_str(
        "\n/// Uses the plugin's own smallvec.\npub fn small_ids() -> smallvec::SmallVec<[u32; 4]> {\n    smallvec::smallvec![1, 2, 3]\n}\n",
    );
    std::fs::write(&lib, code).unwrap();
}

#[test]
fn a_plugin_made_outside_the_checkout_builds_against_the_host_loads_trains_and_recommends() {
    let before = host_files();
    assert!(before.len() >= 2, "{before:?}");
    let tmp = tempfile::tempdir().unwrap();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    assert!(!tmp.path().starts_with(workspace));
    let dir = tmp.path().join("e2e-plugin");
    let d = dir.to_str().unwrap();

    let (ok, stdout, stderr) = recblocks(&["plugin", "new", "e2e-plugin", "--path", d]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("src/lib.rs"), "{stdout}");
    add_smallvec_dependency(&dir);

    let start = std::time::Instant::now();
    let (ok, stdout, stderr) = recblocks(&["plugin", "build", d]);
    let took = start.elapsed();
    assert!(ok, "{stderr}");
    eprintln!("recblocks plugin build took {:.1} s", took.as_secs_f64());
    for dep in ["candle", "recblocks-core"] {
        assert!(
            !stderr.contains(&format!("Compiling {dep}")),
            "plugin build compiled {dep}:\n{stderr}"
        );
    }
    assert!(stderr.contains("Compiling smallvec"), "{stderr}");
    let lib = PathBuf::from(stdout.lines().last().unwrap());
    assert!(
        lib.is_file() && lib.starts_with(dir.join("target")),
        "{stdout}"
    );
    assert_eq!(lib.file_name().unwrap(), "libe2e_plugin.so");
    let lib = lib.to_str().unwrap();

    let (ok, stdout, stderr) = recblocks(&["plugins", "check", lib]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("E2ePluginTransformerLayers")
            && stdout.contains("all conformance checks passed"),
        "{stdout}"
    );

    let spec = tmp.path().join("spec.json");
    std::fs::write(
        &spec,
        r#"{"cls": "SASRecModel", "n_factors": 16, "n_heads": 2, "n_blocks": 2,
            "session_max_len": 10, "batch_size": 16, "lr": 0.01,
            "transformer_layers_type": "E2ePluginTransformerLayers",
            "transformer_layers_kwargs": {"ff_factors_multiplier": 2}}"#,
    )
    .unwrap();
    let log = tmp.path().join("log.csv");
    write_interactions_csv(&log, &small_data()).unwrap();
    let model = tmp.path().join("model");
    let (s, l, m) = (
        spec.to_str().unwrap(),
        log.to_str().unwrap(),
        model.to_str().unwrap(),
    );
    let (ok, _, stderr) = recblocks(&[
        "--plugin", lib, "fit", s, "--data", l, "--out", m, "--epochs", "1", "--quiet",
    ]);
    assert!(ok, "{stderr}");
    let (ok, stdout, stderr) =
        recblocks(&["--plugin", lib, "recommend", m, "--data", l, "-k", "3"]);
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "user_id,item_id,score,rank");
    assert!(lines.len() > 3, "{stdout}");

    assert_eq!(
        host_files(),
        before,
        "the plugin build changed the host's files"
    );
}

/// The run path entries and resolved libraries of `binary`, from `ldd`.
fn ldd(binary: &Path) -> String {
    // Without the test's LD_LIBRARY_PATH (cargo points it at target/ and the toolchain), which
    // would win over the binary's run path.
    let out = Command::new("ldd")
        .arg(binary)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    assert!(out.status.success(), "ldd {}", binary.display());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn recblocks_install_is_relocatable_and_its_sdk_builds_plugins() {
    let tmp = tempfile::tempdir().unwrap();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let root = tmp.path().join("install");
    let (ok, stdout, stderr) = recblocks(&["install", "--root", root.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let binary = root.join("bin/recblocks");
    assert_eq!(stdout.lines().last(), Some(binary.to_str().unwrap()));
    let lib_dir = root.join(format!("lib/recblocks-{}", recblocks_core::VERSION));

    // The installed binary loads core and libstd from the install, nothing from the checkout or
    // the toolchain. Moving the install keeps it working (the run path is relative).
    let moved = tmp.path().join("moved");
    std::fs::rename(&root, &moved).unwrap();
    let binary = moved.join("bin/recblocks");
    let resolved = ldd(&binary);
    for line in resolved.lines() {
        assert!(
            !line.contains(workspace.to_str().unwrap()) && !line.contains("rustup"),
            "{resolved}"
        );
    }
    let lib_dir = moved.join(lib_dir.strip_prefix(&root).unwrap());
    for lib in ["librecblocks_core.so", "libstd-"] {
        let line = resolved
            .lines()
            .find(|l| l.trim_start().starts_with(lib))
            .unwrap_or_else(|| panic!("{lib} not in:\n{resolved}"));
        assert!(line.contains(moved.to_str().unwrap()), "{line}");
    }
    assert!(lib_dir.join("deps").is_dir());

    // Its SDK: a plugin made and built by the installed binary loads into it.
    let plugin = tmp.path().join("installed-plugin");
    let run = |args: &[&str]| {
        let out = Command::new(&binary)
            .args(args)
            .env_remove(plugins::PLUGINS_ENV)
            .env_remove("LD_LIBRARY_PATH")
            .env("CARGO_NET_OFFLINE", "true")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let p = plugin.to_str().unwrap();
    let (ok, _, stderr) = run(&["plugin", "new", "installed-plugin", "--path", p]);
    assert!(ok, "{stderr}");
    let (ok, stdout, stderr) = run(&["plugin", "build", p, "--check"]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!(
            "against {}",
            lib_dir.join("librecblocks_core.so").display()
        )) || stderr.contains("lib/recblocks-"),
        "{stderr}"
    );
    assert!(stdout.contains("all conformance checks passed"), "{stdout}");
    let lib = stdout.lines().last().unwrap();
    assert!(lib.ends_with("libinstalled_plugin.so"), "{stdout}");
}
