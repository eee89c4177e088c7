//! Build facts for the plugin handshake (`src/declaration/build_info.rs`): the rustc version, target
//! and profile. A run-time plugin is only loaded when these
//! equal the host's: a change in any of them can change the layout of what crosses the boundary
//! without changing a symbol name.

use std::{env, process::Command};

#[path = "build/launchers.rs"]
mod launchers;

fn main() {
    // Only this script's own inputs: the source hash is computed by the compiler
    // (`src/declaration/source.rs`), so that rebuilding core from another build graph (a plugin's)
    // does not rerun this script and rebuild core.
    println!("cargo:rerun-if-changed=build.rs");
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_version = Command::new(rustc)
        .arg("-V")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let prefer_dynamic = flags.split('\x1f').any(|f| f.contains("prefer-dynamic"));
    let fingerprint = format!(
        "target={};profile={};opt-level={};debug-assertions={};panic={};prefer-dynamic={}",
        env::var("TARGET").unwrap_or_default(),
        env::var("PROFILE").unwrap_or_default(),
        env::var("OPT_LEVEL").unwrap_or_default(),
        env::var("CARGO_CFG_DEBUG_ASSERTIONS").is_ok(),
        env::var("CARGO_CFG_PANIC").unwrap_or_default(),
        prefer_dynamic,
    );
    if env::var_os("CARGO_FEATURE_CUDA").is_some() {
        compile_kernels();
        generate_launchers();
    }
    println!("cargo:rustc-env=RECBLOCKS_RUSTC_VERSION={rustc_version}");
    println!("cargo:rustc-env=RECBLOCKS_BUILD_FINGERPRINT={fingerprint}");
}

/// The `cuda` feature's kernels (`src/nn/cuda/kernels.cu`) as PTX in OUT_DIR, for compute
/// capability 8.0 and up (the driver compiles PTX for the GPU it runs on).
fn compile_kernels() {
    let src = "src/nn/cuda/kernels.cu";
    println!("cargo:rerun-if-changed={src}");
    // Included by kernels.cu.
    println!("cargo:rerun-if-changed=src/nn/cuda/rows.cu");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    let nvcc = env::var_os("CUDA_HOME")
        .map(|h| std::path::PathBuf::from(h).join("bin").join("nvcc"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| "nvcc".into());
    let out = std::path::PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default())
        .join("recblocks_kernels.ptx");
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", "-arch=compute_80", "-o"])
        .arg(&out)
        .arg(src)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => {
            println!("cargo:warning=nvcc failed on {src} ({s})");
            std::process::exit(1);
        }
        Err(e) => {
            println!(
                "cargo:warning=the cuda feature needs nvcc ({}): {e}; set CUDA_HOME",
                nvcc.display()
            );
            std::process::exit(1);
        }
    }
}

/// Typed launchers of the kernels (`src/nn/cuda/launch.rs`) from their signatures in
/// `kernels.cu` and `rows.cu`, as Rust source in OUT_DIR.
fn generate_launchers() {
    println!("cargo:rerun-if-changed=build/launchers.rs");
    let mut kernels = Vec::new();
    for src in launchers::KERNEL_SOURCES {
        let parsed = std::fs::read_to_string(src)
            .map_err(|e| format!("{src}: {e}"))
            .and_then(|text| launchers::parse_kernels(&text, src));
        match parsed {
            Ok(k) => kernels.extend(k),
            Err(e) => {
                println!("cargo:warning=kernel launchers: {e}");
                std::process::exit(1);
            }
        }
    }
    let out = std::path::PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default())
        .join("recblocks_launchers.rs");
    if let Err(e) = std::fs::write(&out, launchers::rust_launchers(&kernels)) {
        println!("cargo:warning=kernel launchers: {}: {e}", out.display());
        std::process::exit(1);
    }
}
