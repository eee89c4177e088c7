//! Core's CUDA kernels (`src/nn/cuda/kernels.cu`) run on the CPU through a small emulation of the
//! CUDA they use (`tests/cuda_emulation/emulate.h`: one OS thread per CUDA thread, `__syncthreads`
//! and warp shuffles as barriers) and checked against plain loops
//! (`tests/cuda_emulation/kernels_check.cpp`): the sort of ids, the sums by id, row lookups and
//! candidate scores (`rows.cu`), Adam over a table of parameters with its guard and its
//! coefficients from memory, the attention biases and weights, dropout keys read from memory
//! (the same masks as keys by value), the layer norm forward and backward, the cross-entropy and
//! catalog-loss row kernels and the catalog loss's total, the bias, row-scale and softmax row
//! kernels, and the position rows with their table's gradient: every kernel. This tests the
//! kernels' logic (indexing, the merge passes, where the barriers are) on machines without a
//! GPU; the GPU tests (`src/nn/cuda/tests.rs`) check the kernels on a device against the CPU ops.
//! Needs a C++20 compiler: `c++`, or the one `CXX` names.

use std::{path::PathBuf, process::Command};

#[test]
fn the_kernels_match_plain_loops_when_emulated_on_the_cpu() -> Result<(), String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/cuda_emulation");
    let exe = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kernels_check");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let built = Command::new(&cxx)
        // No contraction into fused multiply-adds: the kernels' `_rn` operations are emulated as
        // plain IEEE operations, and the Adam check compares bits.
        .args(["-std=c++20", "-O1", "-pthread", "-ffp-contract=off"])
        .args(["-Wall", "-Werror", "-Wno-unknown-pragmas", "-o"])
        .arg(&exe)
        .arg(dir.join("kernels_check.cpp"))
        .output()
        .map_err(|e| format!("could not run `{cxx}` ({e}); this test needs a C++20 compiler"))?;
    if !built.status.success() {
        return Err(format!(
            "`{cxx}` failed on kernels_check.cpp:\n{}",
            String::from_utf8_lossy(&built.stderr)
        ));
    }
    let run = Command::new(&exe)
        .output()
        .map_err(|e| format!("could not run {}: {e}", exe.display()))?;
    let out = String::from_utf8_lossy(&run.stdout);
    let passed = out.lines().filter(|l| l.starts_with("ok ")).count();
    if !run.status.success() || !out.contains("\n0 failed") || passed < 50 {
        return Err(format!(
            "emulated kernels: {} ({passed} checks passed)\n{out}{}",
            run.status,
            String::from_utf8_lossy(&run.stderr)
        ));
    }
    Ok(())
}
