//! Training on a CUDA device against training on the CPU (the `cuda` feature): the same spec,
//! seed and data, 20 Adam steps with dropout on, for SASRec, BERT4Rec, LiGR and ALBERT's shared
//! layers of both layer types. The dropout masks are the same function of the seed on both
//! devices (Philox), so the two runs differ only by rounding: the training loss agrees to 1e-4
//! (relative) and every weight stays within a few Adam steps of the other run's (`lr` per step at
//! most; a gradient that is zero in exact arithmetic, like the key projection's bias, is rounding
//! noise on both sides, which Adam turns into steps of up to `lr`).
//!
//! The same holds with the step captured as a CUDA graph and replayed (`--cuda-graph`: 2 warm-up
//! steps, then the capture and 18 replays; SASRec, BERT4Rec and ALBERT's pre-LN layers), and the
//! run must not have fallen back to uncaptured steps. And batches with more positions with a
//! target than the captured step's buffers hold take ordinary steps between the replays,
//! training as an uncaptured run does.
//!
//! Without a CUDA device the tests print that they were skipped, unless `RECBLOCKS_CUDA_TESTS=1`
//! (set on the GPU machine by `bench/gpu/run.sh`), where they fail.

use recblocks::device::DeviceSpec;

use super::fused_paths::{data, fit_on, fit_with_args, model_cases};

#[test]
fn cuda_and_cpu_training_agree() {
    agree(false);
}

#[test]
fn captured_cuda_and_cpu_training_agree() {
    agree(true);
}

/// Batches with more positions with a target than a captured step's buffers hold take ordinary
/// steps between the replays of their shape (`captured_steps`' CPU test, on the GPU): captured
/// and uncaptured GPU runs train alike, and some batches replay while others do not.
#[test]
fn cuda_batches_over_the_target_capacity_take_ordinary_steps_between_replays() {
    if skipped("captured steps over the target capacity") {
        return;
    }
    super::captured_steps::over_capacity_batches_take_ordinary_steps(DeviceSpec::Cuda(0), 1e-4);
}

/// Whether there is no CUDA device (the test then prints that it is skipped); with
/// `RECBLOCKS_CUDA_TESTS=1` a missing device fails the test instead.
fn skipped(what: &str) -> bool {
    if candle_core::Device::new_cuda(0).is_ok() {
        return false;
    }
    assert!(
        std::env::var("RECBLOCKS_CUDA_TESTS").as_deref() != Ok("1"),
        "RECBLOCKS_CUDA_TESTS=1 but no CUDA device opens"
    );
    eprintln!("{what}: skipped, no CUDA device");
    true
}

fn agree(cuda_graph: bool) {
    if skipped(&format!("cuda training (graph {cuda_graph})")) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let log = data(dir.path());
    // Uncaptured: every model of the fused-path runs (SASRec, BERT4Rec, LiGR, ALBERT's shared
    // layers of both layer types). Captured: SASRec, BERT4Rec and ALBERT's pre-LN layers (shared
    // weights under a capture, and the fixed target buffers of a masked objective).
    let captured = ["sasrec", "bert4rec", "albert_preln"];
    let cases = model_cases()
        .into_iter()
        .filter(|(name, _)| !cuda_graph || captured.contains(name));
    for (name, spec) in cases {
        let (name, spec) = (&name, &spec);
        let (loss_c, cpu) = fit_on(dir.path(), name, spec, &log, "fused", "cpu");
        let (loss_g, gpu) = if cuda_graph {
            let (loss, weights, stderr) = fit_with_args(
                dir.path(),
                name,
                spec,
                &log,
                "fused",
                "cuda",
                &["--cuda-graph"],
            );
            assert!(
                !stderr.contains("uncaptured"),
                "{name}: the captured run fell back: {stderr}"
            );
            (loss, weights)
        } else {
            fit_on(dir.path(), name, spec, &log, "fused", "cuda")
        };
        eprintln!("{name}: training loss cpu {loss_c} cuda {loss_g} (graph {cuda_graph})");
        assert!(
            (loss_c - loss_g).abs() <= 1e-4 * loss_c.abs().max(1.0),
            "{name}: training loss cpu {loss_c} vs cuda {loss_g}"
        );
        assert_eq!(
            cpu.keys().collect::<Vec<_>>(),
            gpu.keys().collect::<Vec<_>>()
        );
        let mut worst = (0f32, String::new());
        for (key, c) in &cpu {
            let g = &gpu[key];
            for (a, b) in c.iter().zip(g) {
                let diff = (a - b).abs() / a.abs().max(1.0);
                if diff > worst.0 {
                    worst = (diff, key.clone());
                }
            }
        }
        eprintln!(
            "{name}: largest weight difference {} in {}",
            worst.0, worst.1
        );
        assert!(
            worst.0 <= 5.0 * 0.001,
            "{name}: weight {} differs by {} (more than 5 Adam steps of lr 0.001)",
            worst.1,
            worst.0
        );
    }
}
