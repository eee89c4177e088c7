//! Captured training steps (`FitOptions::cuda_graph`) against ordinary training, on the CPU: the
//! CPU form runs the captured path's bookkeeping — batches collated on the host and copied into
//! fixed buffers, two warm-up steps under static shapes that note the dropout streams, then
//! "replays" whose dropout keys are drawn ahead in a replay's order and handed out by a tape, Adam
//! counting its step before the update — with each replay executed directly. Training must follow
//! the same course: every batch's loss (seen through the observer's running mean) agrees to 1e-5
//! (relative), three epochs long, with dropout on, for SASRec (softmax) and BERT4Rec, and for a
//! sampled loss with negatives. An epoch's last, shorter batch is a shape of its own: it warms up
//! in the first two epochs and is captured and replayed in the third.
//!
//! The only difference allowed is rounding: a step under static shapes scores the positions with a
//! target from buffers of a fixed length (unused slots with weight 0), or every position (padding
//! with weight 0) where those buffers would hold the whole batch, while the ordinary step scores
//! only the positions with a target. A key drawn out of order would change a batch's loss by far
//! more (dropout 0.2 changes it by ~1%). A batch with more positions with a target than the
//! buffers hold takes an ordinary step, in the same course.

use std::sync::{Arc, Mutex};

use recblocks::{
    data::{generate_synthetic, SyntheticConfig},
    device::DeviceSpec,
    train::{BatchProgress, EpochInfo, EpochObserver},
    FitOptions, Model, TrainData,
};

use crate::util::{registry, spec};

/// Every batch's running mean loss, and the run's messages.
#[derive(Default)]
struct Losses {
    means: Mutex<Vec<f64>>,
    messages: Mutex<Vec<String>>,
}

impl EpochObserver for Losses {
    fn batch_done(&self, _e: &EpochInfo, p: &BatchProgress) {
        self.means.lock().unwrap().push(p.mean_loss);
    }
    fn message(&self, text: &str) {
        self.messages.lock().unwrap().push(text.to_string());
    }
}

fn fit(spec_json: &str, cuda_graph: bool) -> (Vec<f64>, Vec<String>, Model) {
    // 650 users: 20 full batches of 32 and a short one (10) each epoch.
    let data = SyntheticConfig {
        n_users: 650,
        n_items: 120,
        min_len: 12,
        max_len: 20,
        ..SyntheticConfig::default()
    };
    fit_on(&data, 3, spec_json, cuda_graph, DeviceSpec::Cpu)
}

fn fit_on(
    data: &SyntheticConfig,
    epochs: usize,
    spec_json: &str,
    cuda_graph: bool,
    device: DeviceSpec,
) -> (Vec<f64>, Vec<String>, Model) {
    let data = generate_synthetic(data).unwrap();
    let losses = Arc::new(Losses::default());
    let opts = FitOptions {
        epochs: Some(epochs),
        device,
        observer: Some(losses.clone() as Arc<dyn EpochObserver>),
        cuda_graph,
        ..FitOptions::default()
    };
    let data = TrainData {
        interactions: &data,
        item_features: None,
    };
    let model = Model::fit(spec(spec_json), data, &registry(), &opts).unwrap();
    let means = losses.means.lock().unwrap().clone();
    let messages = losses.messages.lock().unwrap().clone();
    (means, messages, model)
}

const COMMON: &str = r#""n_factors": 16, "n_heads": 2, "session_max_len": 16, "n_blocks": 2,
    "dropout_rate": 0.2, "batch_size": 32, "lr": 0.001, "seed": 7"#;

#[test]
fn captured_steps_train_as_ordinary_steps_do() {
    let cases = [
        ("sasrec", format!(r#"{{"cls": "SASRecModel", {COMMON}}}"#)),
        (
            "bert4rec",
            format!(r#"{{"cls": "BERT4RecModel", {COMMON}}}"#),
        ),
        (
            "sasrec_gbce",
            format!(
                r#"{{"cls": "SASRecModel", "loss": "gBCE", "n_negatives": 4, "gbce_t": 0.5, {COMMON}}}"#
            ),
        ),
    ];
    for (name, json) in &cases {
        let (plain, _, plain_model) = fit(json, false);
        let (captured, messages, captured_model) = fit(json, true);
        assert!(messages.is_empty(), "{name}: {messages:?}");
        assert_eq!(plain.len(), 3 * 21, "{name}: 21 batches an epoch");
        same_course(
            name,
            (&plain, &plain_model),
            (&captured, &captured_model),
            1e-5,
        );
        // Each epoch: 20 full batches and a short one. The first two full batches warm up, and
        // the short batches of the first two epochs; the third epoch's short batch replays.
        assert_eq!(plain_model.training.captured_steps, 0, "{name}");
        assert_eq!(
            captured_model.training.captured_steps,
            18 + 20 + 20 + 1,
            "{name}: replayed steps"
        );
    }
}

/// Checks that two runs trained alike: every batch's running mean loss agrees to `tolerance`
/// (relative), and Adam took as many steps.
fn same_course(name: &str, plain: (&[f64], &Model), captured: (&[f64], &Model), tolerance: f64) {
    assert_eq!(plain.0.len(), captured.0.len(), "{name}: batches");
    let mut worst = 0f64;
    for (i, (a, b)) in plain.0.iter().zip(captured.0).enumerate() {
        let diff = (a - b).abs() / a.abs().max(1e-12);
        worst = worst.max(diff);
        assert!(
            diff <= tolerance,
            "{name}: running mean loss after batch {} differs: {a} vs {b}",
            i + 1
        );
    }
    eprintln!("{name}: largest relative difference of a running mean loss {worst:.2e}");
    assert_eq!(
        plain.1.training.adam_step, captured.1.training.adam_step,
        "{name}: Adam steps"
    );
}

#[test]
fn a_batch_with_more_targets_than_the_buffers_hold_takes_an_ordinary_step() {
    over_capacity_batches_take_ordinary_steps(DeviceSpec::Cpu, 1e-5);
}

/// Trains, on `device`, runs where some batches have more positions with a target than the
/// captured step's buffers hold, captured and not, and checks that they train alike (each
/// batch's running mean loss to `tolerance`) and that some batches replayed and some did not.
/// Also run on a GPU (`cuda_training`), where those ordinary steps come between replays.
pub(crate) fn over_capacity_batches_take_ordinary_steps(device: DeviceSpec, tolerance: f64) {
    // Histories of 2 to 60 items in sessions of 60 positions: a batch of 4 has 4 to 236
    // positions with a target, so the buffers sized from the first batch (a quarter more room)
    // are too small for some later ones, which take ordinary steps; the others replay. SASRec
    // with the catalog softmax, and with gBCE's negatives (picked by the same positions).
    let data = SyntheticConfig {
        n_users: 120,
        n_items: 80,
        min_len: 2,
        max_len: 60,
        ..SyntheticConfig::default()
    };
    let common = r#""n_factors": 16, "n_heads": 2, "session_max_len": 60, "n_blocks": 1,
        "dropout_rate": 0.2, "batch_size": 4, "lr": 0.001, "seed": 3"#;
    let cases = [
        ("softmax", format!(r#"{{"cls": "SASRecModel", {common}}}"#)),
        (
            "gbce",
            format!(
                r#"{{"cls": "SASRecModel", "loss": "gBCE", "n_negatives": 3, "gbce_t": 0.5, {common}}}"#
            ),
        ),
    ];
    for (name, json) in &cases {
        let (plain, _, plain_model) = fit_on(&data, 2, json, false, device);
        let (captured, messages, captured_model) = fit_on(&data, 2, json, true, device);
        assert!(messages.is_empty(), "{name}: {messages:?}");
        same_course(
            name,
            (&plain, &plain_model),
            (&captured, &captured_model),
            tolerance,
        );
        // 30 full batches an epoch, the first two warm up: at most 58 replays.
        let replays = captured_model.training.captured_steps;
        eprintln!("{name}: {replays} of 58 batches replayed");
        assert!(replays > 0 && replays < 58, "{name}: {replays} replays");
    }
}
