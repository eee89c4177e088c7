//! Training: seeded runs are bit-for-bit reproducible, `resume` equals an uninterrupted run, a
//! saved model loads and gives the same outputs, a NaN loss stops training with a clear error.

use std::collections::BTreeMap;

use recblocks::{
    recommend::{OnUnsupported, RecommendRequest},
    FitOptions, HostError, Model, TrainData,
};

use crate::util::{registry, small_data, spec, tiny_sasrec};

fn quiet(epochs: Option<usize>, seed: Option<u64>) -> FitOptions {
    FitOptions {
        epochs,
        seed,
        ..Default::default()
    }
}

fn weights(m: &Model) -> BTreeMap<String, Vec<f32>> {
    let data = m.net.varmap.data().lock().unwrap();
    data.iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
            )
        })
        .collect()
}

fn fit(spec_json: &str, epochs: usize, seed: u64) -> Model {
    let data = small_data();
    let s = spec(spec_json);
    Model::fit(
        s,
        TrainData {
            interactions: &data,
            item_features: None,
        },
        &registry(),
        &quiet(Some(epochs), Some(seed)),
    )
    .unwrap()
}

const SASREC_VAL: &str = r#"{"cls": "SASRecModel", "n_factors": 16, "n_heads": 2, "n_blocks": 2,
    "session_max_len": 10, "batch_size": 16, "lr": 0.01,
    "get_val_mask_func": "leave_one_out_mask", "get_val_mask_func_kwargs": {"val_users": 10}}"#;

const BERT4REC_BCE: &str = r#"{"cls": "BERT4RecModel", "n_factors": 16, "n_heads": 2,
    "n_blocks": 1, "session_max_len": 10, "batch_size": 16, "lr": 0.01, "loss": "BCE",
    "n_negatives": 3}"#;

#[test]
fn a_seeded_run_is_bit_for_bit_reproducible() {
    for json in [SASREC_VAL, BERT4REC_BCE] {
        let a = fit(json, 2, 7);
        let b = fit(json, 2, 7);
        assert_eq!(weights(&a), weights(&b), "{json}");
        assert_eq!(a.train_log.len(), 2);
        for (x, y) in a.train_log.iter().zip(&b.train_log) {
            assert_eq!(x.train_loss, y.train_loss);
            assert_eq!(x.val_loss, y.val_loss);
        }
        let c = fit(json, 2, 8);
        assert_ne!(weights(&a), weights(&c), "another seed gives other weights");
    }
}

#[test]
fn training_lowers_the_loss_and_validation_is_reported() {
    let m = fit(SASREC_VAL, 3, 1);
    let log = &m.train_log;
    assert!(log[2].train_loss < log[0].train_loss, "{log:?}");
    assert!(log
        .iter()
        .all(|e| e.val_loss.is_some() && e.val_recall.is_some()));
}

#[test]
fn resume_equals_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model");
    for json in [SASREC_VAL, BERT4REC_BCE] {
        let full = fit(json, 3, 11);
        let first = fit(json, 1, 11);
        first.save(&path).unwrap();
        let mut resumed = Model::load(&path, &registry()).unwrap();
        let data = small_data();
        resumed
            .resume(
                TrainData {
                    interactions: &data,
                    item_features: None,
                },
                &registry(),
                &quiet(Some(3), None),
            )
            .unwrap();
        assert_eq!(resumed.training.epochs_done, 3);
        assert_eq!(weights(&resumed), weights(&full), "{json}");
        let losses = |m: &Model| m.train_log.iter().map(|e| e.train_loss).collect::<Vec<_>>();
        assert_eq!(losses(&resumed), losses(&full));
    }
}

#[test]
fn a_saved_model_loads_and_recommends_identically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m");
    let m = fit(SASREC_VAL, 1, 3);
    m.save(&path).unwrap();
    for f in [
        "model.json",
        "dataset_schema.json",
        "weights.safetensors",
        "optimizer.safetensors",
        "trainer_state.json",
        "train_log.csv",
        "training_curve.svg",
    ] {
        assert!(path.join(f).exists(), "{f} is written");
    }
    let loaded = Model::load(&path, &registry()).unwrap();
    assert_eq!(weights(&loaded), weights(&m));
    let data = small_data();
    let req = RecommendRequest {
        users: None,
        k: 5,
        filter_viewed: true,
        items_to_recommend: None,
        on_unsupported: OnUnsupported::Raise,
    };
    let a = m.recommend(&data, &req).unwrap();
    let b = loaded.recommend(&data, &req).unwrap();
    assert_eq!(a.rows, b.rows);
    assert_eq!(a.rows.len(), 60 * 5);
}

#[test]
fn a_corrupt_weights_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m");
    fit(SASREC_VAL, 1, 3).save(&path).unwrap();
    std::fs::write(path.join("weights.safetensors"), b"not safetensors").unwrap();
    let e = Model::load(&path, &registry())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.starts_with(&format!(
            "model directory {}: weights.safetensors does not match model.json",
            path.display()
        )),
        "{e}"
    );
    // Without the checksum (a model written before it), the file itself is reported unreadable.
    let json = path.join("model.json");
    let mut file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    file.as_object_mut().unwrap().remove("weights_crc32");
    std::fs::write(&json, file.to_string()).unwrap();
    let e = Model::load(&path, &registry())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.starts_with(&format!(
            "model directory {}: weights.safetensors is unreadable",
            path.display()
        )),
        "{e}"
    );
}

#[test]
fn a_diverging_loss_stops_training_with_a_clear_error() {
    let data = small_data();
    let s = tiny_sasrec(r#", "lr": 1e30"#);
    let r = Model::fit(
        s,
        TrainData {
            interactions: &data,
            item_features: None,
        },
        &registry(),
        &quiet(Some(3), Some(1)),
    );
    match r {
        Err(HostError::NonFiniteLoss {
            epoch,
            batch,
            value,
            origin,
        }) => {
            // The first update (lr 1e30) sends the second batch's forward pass off to NaN; the
            // error names that batch and the block that first produced non-finite values, even
            // though the loss is read one step later, after the next forward pass (if any).
            assert_eq!((epoch, batch), (1, 2), "loss {value}, {origin}");
            assert!(value.is_nan(), "{value}");
            assert!(
                origin.starts_with("; first: the SASRec block turned finite inputs into"),
                "{origin:?}"
            );
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("training with lr 1e30 should diverge"),
    }
}

#[test]
fn early_stopping_restores_the_best_weights() {
    // With min_delta huge, no epoch after the first improves val_loss: training stops after
    // 1 + patience epochs and restores the weights of epoch 1, i.e. those of a 1-epoch run.
    let json = SASREC_VAL.replace(
        "\"lr\": 0.01,",
        "\"lr\": 0.01, \"get_trainer_func_kwargs\": {\"early_stopping\": \
         {\"monitor\": \"val_loss\", \"patience\": 2, \"min_delta\": 1e9}},",
    );
    let stopped = fit(&json, 10, 5);
    assert!(stopped.training.stopped_early);
    assert_eq!(stopped.training.epochs_done, 3);
    assert_eq!(stopped.train_log.len(), 3);
    let one_epoch = fit(SASREC_VAL, 1, 5);
    assert_eq!(weights(&stopped), weights(&one_epoch));
}
