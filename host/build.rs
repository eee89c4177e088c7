//! Run paths of the `recblocks` binary (and of this crate's tests and examples).
//!
//! Binaries of this workspace link the toolchain's `libstd-*.so` and `librecblocks_core.so`
//! dynamically (see `.cargo/config.toml`). `$ORIGIN` run paths (from the config) find core beside
//! the binary in `target/<profile>/`; this script adds the toolchain's library directory (libstd)
//! and this build's `target/<profile>/deps` as absolute run paths, so that `target/release/recblocks`
//! runs without `LD_LIBRARY_PATH`; before them, `$ORIGIN/../lib/recblocks-<version>`, where
//! `recblocks install --root DIR` puts core, libstd and the plugin SDK (a relocatable install).

use std::{env, path::PathBuf, process::Command};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let libdir = Command::new(rustc)
        .args(["--print", "target-libdir"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    // First, relative to the binary: an install made by `recblocks install --root DIR` keeps
    // core, libstd and the plugin SDK in `DIR/lib/recblocks-<version>/` beside `DIR/bin/`, so it
    // runs from there whatever happens to the checkout (the absolute paths below come later in
    // the run path and are only reached when that directory is absent).
    println!(
        "cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../lib/recblocks-{}",
        env::var("CARGO_PKG_VERSION").unwrap_or_default()
    );
    if let Some(libdir) = &libdir {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{libdir}");
        // Where `recblocks install` finds the libstd to copy.
        println!("cargo:rustc-env=RECBLOCKS_TOOLCHAIN_LIBDIR={libdir}");
    }
    // OUT_DIR is target/<profile>/build/recblocks-<hash>/out.
    let out = PathBuf::from(env::var("OUT_DIR").unwrap_or_default());
    if let Some(profile_dir) = out.ancestors().nth(3) {
        println!(
            "cargo:rustc-link-arg=-Wl,-rpath,{}",
            profile_dir.join("deps").display()
        );
    }
}
