//! A model directory whose weights or ids were damaged is refused on load, naming the file and
//! the tensor or id, instead of scoring garbage: non-finite weights, weights of another dtype,
//! an item id listed twice.

use std::{collections::HashMap, path::Path};

use candle_core::{DType, Device, Tensor};
use recblocks::{FitOptions, Model, TrainData};

use crate::util::{registry, small_data, tiny_sasrec};

fn saved_model(dir: &Path) {
    let data = small_data();
    let spec = tiny_sasrec(r#", "epochs": 1"#);
    let model = Model::fit(
        spec,
        TrainData {
            interactions: &data,
            item_features: None,
        },
        &registry(),
        &FitOptions::default(),
    )
    .unwrap();
    model.save(dir).unwrap();
}

fn load_error(dir: &Path) -> String {
    match Model::load(dir, &registry()) {
        Ok(_) => panic!("a damaged model loaded"),
        Err(e) => e.to_string(),
    }
}

fn rewrite_weights(dir: &Path, change: impl Fn(&str, Tensor) -> Tensor) {
    let path = dir.join("weights.safetensors");
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let changed: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(name, t)| {
            let t = change(&name, t);
            (name, t)
        })
        .collect();
    candle_core::safetensors::save(&changed, &path).unwrap();
    // Record the new file's checksum, so that the checks behind it are reached.
    let json = dir.join("model.json");
    let mut file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    file["weights_crc32"] = crc32fast::hash(&std::fs::read(&path).unwrap()).into();
    std::fs::write(&json, file.to_string()).unwrap();
}

#[test]
fn non_finite_weights_are_refused_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    saved_model(&m);
    rewrite_weights(&m, |name, t| {
        if name.ends_with("last_layernorm.weight") {
            (t * f64::NAN).unwrap()
        } else {
            t
        }
    });
    let err = load_error(&m);
    assert!(err.contains("last_layernorm.weight"), "{err}");
    assert!(err.contains("NaN or infinite"), "{err}");
}

#[test]
fn weights_of_another_dtype_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    saved_model(&m);
    rewrite_weights(&m, |name, t| {
        if name.ends_with("last_layernorm.bias") {
            t.to_dtype(DType::F64).unwrap()
        } else {
            t
        }
    });
    let err = load_error(&m);
    assert!(err.contains("last_layernorm.bias"), "{err}");
    assert!(err.contains("F64"), "{err}");
}

#[test]
fn an_item_id_listed_twice_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    saved_model(&m);
    let path = m.join("dataset_schema.json");
    let mut schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let ids = schema["item_external_ids"].as_array_mut().unwrap();
    let n = ids.len();
    ids[n - 1] = ids[n - 2].clone();
    std::fs::write(&path, serde_json::to_string(&schema).unwrap()).unwrap();
    let err = load_error(&m);
    assert!(
        err.contains("dataset_schema.json lists the item id"),
        "{err}"
    );
    assert!(err.contains("twice"), "{err}");
    // The undamaged model loads.
    let fresh = dir.path().join("fresh");
    saved_model(&fresh);
    assert!(Model::load(&fresh, &registry()).is_ok());
}
