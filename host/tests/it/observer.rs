//! The epoch observer: `fit` reports each epoch's start, batches, end of training, log entry and
//! failure, and early stopping's message, to the observer of its options, in order; `Quiet`
//! silences it.

use std::sync::{Arc, Mutex};

use recblocks::{
    train::{BatchProgress, EpochInfo, EpochLog, EpochObserver},
    FitOptions, HostError, Model, TrainData,
};

use crate::util::{registry, small_data, spec, tiny_sasrec};

/// Records every event as a line.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<String>>,
    logs: Mutex<Vec<EpochLog>>,
}

impl Recorder {
    fn push(&self, event: String) {
        self.events.lock().unwrap().push(event);
    }
    fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }
}

impl EpochObserver for Recorder {
    fn epoch_started(&self, e: &EpochInfo) {
        self.push(format!(
            "started {}/{} {} {}",
            e.epoch, e.epochs, e.n_batches, e.val_k
        ));
    }
    fn batch_done(&self, e: &EpochInfo, p: &BatchProgress) {
        assert!(p.mean_loss.is_finite() && p.sequences_per_second > 0.0);
        self.push(format!("batch {}.{}", e.epoch, p.batch));
    }
    fn epoch_trained(&self, e: &EpochInfo) {
        self.push(format!("trained {}", e.epoch));
    }
    fn epoch_failed(&self, e: &EpochInfo, error: &HostError) {
        let non_finite = matches!(error, HostError::NonFiniteLoss { .. });
        self.push(format!("failed {} non-finite {non_finite}", e.epoch));
    }
    fn epoch_done(&self, e: &EpochInfo, log: &EpochLog) {
        self.logs.lock().unwrap().push(log.clone());
        self.push(format!("done {}", e.epoch));
    }
    fn message(&self, text: &str) {
        self.push(format!("message {text}"));
    }
}

fn fit_with(
    spec_json: &str,
    epochs: usize,
    observed: bool,
) -> (Arc<Recorder>, Result<Model, HostError>) {
    let recorder = Arc::new(Recorder::default());
    let data = small_data();
    let opts = FitOptions {
        epochs: Some(epochs),
        seed: Some(3),
        observer: observed.then(|| recorder.clone() as Arc<dyn EpochObserver>),
        ..FitOptions::default()
    };
    let data = TrainData {
        interactions: &data,
        item_features: None,
    };
    let model = Model::fit(spec(spec_json), data, &registry(), &opts);
    (recorder, model)
}

// 60 users of which 10 are validation users; 16 sessions a batch.
const EARLY_STOPPING: &str = r#"{"cls": "SASRecModel", "n_factors": 16, "n_heads": 2,
    "n_blocks": 1, "session_max_len": 10, "batch_size": 16, "lr": 0.01,
    "get_val_mask_func": "leave_one_out_mask", "get_val_mask_func_kwargs": {"val_users": 10},
    "get_trainer_func_kwargs": {"early_stopping":
        {"monitor": "val_loss", "patience": 1, "min_delta": 1e9}}}"#;

#[test]
fn fit_reports_every_epoch_batch_and_message_in_order() {
    let (recorder, model) = fit_with(EARLY_STOPPING, 5, true);
    let model = model.unwrap();
    let n_batches = 60usize.div_ceil(16);
    let mut expected = Vec::new();
    for epoch in 1..=2 {
        expected.push(format!("started {epoch}/5 {n_batches} 10"));
        expected.extend((1..=n_batches).map(|b| format!("batch {epoch}.{b}")));
        expected.push(format!("trained {epoch}"));
        expected.push(format!("done {epoch}"));
    }
    let events = recorder.events();
    assert_eq!(events[..events.len() - 1], expected[..], "{events:#?}");
    let last = events.last().unwrap();
    assert!(
        last.starts_with("message early stopping after epoch 2: val_loss did not improve"),
        "{last}"
    );
    assert_eq!(*recorder.logs.lock().unwrap(), model.train_log);
}

#[test]
fn without_an_observer_nobody_hears() {
    let (recorder, model) = fit_with(EARLY_STOPPING, 2, false);
    model.unwrap();
    assert_eq!(recorder.events(), Vec::<String>::new());
}

#[test]
fn a_diverging_loss_is_reported_as_a_failed_epoch() {
    let json = tiny_sasrec(r#", "lr": 1e30"#);
    let json = serde_json::to_string(&json).unwrap();
    let (recorder, model) = fit_with(&json, 3, true);
    assert!(matches!(model, Err(HostError::NonFiniteLoss { .. })));
    let events = recorder.events();
    assert_eq!(
        events.last().unwrap(),
        "failed 1 non-finite true",
        "{events:?}"
    );
    assert!(
        !events.iter().any(|e| e.starts_with("trained")),
        "{events:?}"
    );
}

/// Notes the name of the thread each event is told on.
#[derive(Default)]
struct ThreadNames(Mutex<Vec<String>>);

impl ThreadNames {
    fn note(&self) {
        let name = std::thread::current().name().unwrap_or("").to_string();
        self.0.lock().unwrap().push(name);
    }
}

impl EpochObserver for ThreadNames {
    fn epoch_started(&self, _: &EpochInfo) {
        self.note();
    }
    fn batch_done(&self, _: &EpochInfo, _: &BatchProgress) {
        self.note();
    }
    fn epoch_done(&self, _: &EpochInfo, _: &EpochLog) {
        self.note();
    }
}

/// Fits a small SASRec for 2 epochs; returns the names of the threads the run told its events
/// on, and its training log.
fn fit_noting_threads() -> (Vec<String>, Vec<EpochLog>) {
    let names = Arc::new(ThreadNames::default());
    let data = small_data();
    let opts = FitOptions {
        epochs: Some(2),
        seed: Some(5),
        observer: Some(names.clone() as Arc<dyn EpochObserver>),
        ..FitOptions::default()
    };
    let data = TrainData {
        interactions: &data,
        item_features: None,
    };
    let model = Model::fit(tiny_sasrec(""), data, &registry(), &opts).unwrap();
    let noted = names.0.lock().unwrap().clone();
    (noted, model.train_log)
}

#[test]
fn a_cpu_run_trains_on_a_pool_of_its_own_unless_called_from_one() {
    // From a thread outside rayon (this test's): the run's own pool, whose threads split its
    // parallel calls where they are made.
    let (names, own_pool) = fit_noting_threads();
    assert!(!names.is_empty());
    assert!(
        names.iter().all(|n| n.starts_with("recblocks-train-")),
        "{names:?}"
    );
    // From a thread of a rayon pool: the run stays on it.
    let caller = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .thread_name(|i| format!("caller-{i}"))
        .build()
        .unwrap();
    let (names, caller_pool) = caller.install(fit_noting_threads);
    assert!(names.iter().all(|n| n.starts_with("caller-")), "{names:?}");
    // Which threads do the work changes no result.
    let losses = |log: &[EpochLog]| log.iter().map(|e| e.train_loss).collect::<Vec<_>>();
    assert_eq!(losses(&own_pool), losses(&caller_pool));
}
