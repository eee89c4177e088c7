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
//! The only difference allowed is rounding: a step under static shapes scores every position
//! (padding with weight 0) where the ordinary step scores only the positions with a target. A key
//! drawn out of order would change a batch's loss by far more (dropout 0.2 changes it by ~1%).

use std::sync::{Arc, Mutex};

use recblocks::{
    data::{generate_synthetic, SyntheticConfig},
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
    let data = generate_synthetic(&SyntheticConfig {
        n_users: 650,
        n_items: 120,
        min_len: 12,
        max_len: 20,
        ..SyntheticConfig::default()
    })
    .unwrap();
    let losses = Arc::new(Losses::default());
    let opts = FitOptions {
        epochs: Some(3),
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
        assert_eq!(plain.len(), captured.len(), "{name}: batches");
        assert_eq!(plain.len(), 3 * 21, "{name}: 21 batches an epoch");
        let mut worst = 0f64;
        for (i, (a, b)) in plain.iter().zip(&captured).enumerate() {
            let diff = (a - b).abs() / a.abs().max(1e-12);
            worst = worst.max(diff);
            assert!(
                diff <= 1e-5,
                "{name}: running mean loss after batch {} differs: {a} vs {b}",
                i + 1
            );
        }
        eprintln!("{name}: largest relative difference of a running mean loss {worst:.2e}");
        assert_eq!(
            plain_model.training.adam_step, captured_model.training.adam_step,
            "{name}: Adam steps"
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
