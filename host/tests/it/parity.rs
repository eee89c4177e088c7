//! Parity with RecTools: each golden fixture of `host/tests/parity/fixtures/` (written by
//! `host/tests/parity/generate.py` with RecTools) is loaded through the RecTools import path and must
//! give RecTools' eval-mode session encodings and logits (1e-5 absolute), loss (1e-5 relative)
//! and top-10 recommendations with `filter_viewed` (identical lists).

use std::{collections::BTreeMap, path::PathBuf};

use candle_core::{DType, Device, Tensor, D};
use recblocks::{
    data::{read_interactions, ColumnNames, ReadOptions},
    recommend::{OnUnsupported, RecommendRequest},
    rectools_import::{from_parts, ids_from_json, RecToolsCheckpoint},
    Model,
};
use recblocks_core::ModelSpec;
use recblocks_rectools::lightning::TransformerLightningModule;
use serde_json::Value;

use crate::util::registry;

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/parity/fixtures")
}

pub struct Fixture {
    pub config: Value,
    pub model: Model,
    pub warnings: Vec<String>,
    pub io: BTreeMap<String, Tensor>,
}

pub fn load_fixture(name: &str) -> Fixture {
    let dir = fixtures_dir().join(name);
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let config: Value = serde_json::from_str(&text).unwrap();
    let weights = candle_core::safetensors::load(dir.join("weights.safetensors"), &Device::Cpu)
        .unwrap()
        .into_iter()
        .collect();
    let parts = RecToolsCheckpoint {
        model_config: config["model_config"].clone(),
        dataset_schema: config["dataset_schema"].clone(),
        item_external_ids: ids_from_json(&config["item_external_ids"]).unwrap(),
        state_dict: weights,
    };
    let imported = from_parts(name, parts, &registry()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let io = candle_core::safetensors::load(dir.join("io.safetensors"), &Device::Cpu)
        .unwrap()
        .into_iter()
        .collect();
    Fixture {
        config,
        model: imported.model,
        warnings: imported.warnings,
        io,
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    a.to_dtype(DType::F32)
        .unwrap()
        .sub(&b.to_dtype(DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn ids(t: &Tensor) -> Tensor {
    t.to_dtype(DType::U32).unwrap()
}

/// recblocks' top-10 (filter_viewed) for every user of the fixture's interaction table.
pub fn top10(model: &Model) -> BTreeMap<String, Vec<String>> {
    let (history, _) = read_interactions(
        &fixtures_dir().join("interactions.csv"),
        &ColumnNames::default(),
        &ReadOptions::default(),
    )
    .unwrap();
    let out = model
        .recommend(
            &history,
            &RecommendRequest {
                users: None,
                k: 10,
                filter_viewed: true,
                items_to_recommend: None,
                on_unsupported: OnUnsupported::Raise,
            },
        )
        .unwrap();
    let mut by_user: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in out.rows {
        by_user.entry(r.user_id).or_default().push(r.item_id);
    }
    by_user
}

/// Checks one fixture; returns (encodings, logits) max abs differences and the loss' relative
/// difference.
fn check(name: &str) -> (f32, f32, f64) {
    let f = load_fixture(name);
    let backbone = &f.model.net.backbone;
    let x = ids(&f.io["x"]);
    let y = ids(&f.io["y"]);
    let yw = f.io["yw"].to_dtype(DType::F32).unwrap();

    let item_embs = backbone.item_embeddings(false).unwrap();
    let enc = backbone.encode_sessions(&x, &item_embs, false).unwrap();
    let enc_diff = max_abs_diff(&enc, &f.io["encodings"]);

    let spec: &ModelSpec = &f.model.net.spec;
    let objective = TransformerLightningModule::from_spec(
        spec,
        &f.model.net.schema,
        &ModelSpec::kwargs_value(&spec.lightning_module_kwargs),
    )
    .unwrap();
    let candidates = f.io.get("negatives").map(|neg| {
        let neg = ids(neg);
        Tensor::cat(&[&y.unsqueeze(D::Minus1).unwrap(), &neg], D::Minus1).unwrap()
    });
    assert_eq!(
        candidates.is_some(),
        objective.loss().requires_negatives(),
        "{name}: negatives in the fixture iff the loss needs them"
    );
    let logits = backbone.logits(&x, candidates.as_ref(), false).unwrap();
    let logits = (logits / objective.logits_t()).unwrap();
    let logits_diff = max_abs_diff(&logits, &f.io["logits"]);

    let loss = objective
        .loss_from_logits(&logits, &y, &yw)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let expected = f.io["loss"].to_vec1::<f64>().unwrap()[0];
    let loss_rel = ((loss - expected) / expected).abs();

    let want: BTreeMap<String, Vec<String>> =
        serde_json::from_value(f.config["top10_filter_viewed"].clone()).unwrap();
    let got = top10(&f.model);
    assert_eq!(
        got, want,
        "{name}: top-10 recommendations differ from RecTools"
    );

    eprintln!(
        "parity {name}: encodings max|d| {enc_diff:.2e}, logits max|d| {logits_diff:.2e}, \
         loss rel {loss_rel:.2e} (recblocks {loss:.7}, RecTools {expected:.7})"
    );
    assert!(
        enc_diff <= 1e-5,
        "{name}: encodings differ by {enc_diff} > 1e-5"
    );
    assert!(
        logits_diff <= 1e-5,
        "{name}: logits differ by {logits_diff} > 1e-5"
    );
    assert!(
        loss_rel <= 1e-5,
        "{name}: loss {loss} vs RecTools {expected} (relative {loss_rel} > 1e-5)"
    );
    (enc_diff, logits_diff, loss_rel)
}

macro_rules! parity_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                check(stringify!($name));
            }
        )*

        /// Every fixture directory has a test above.
        #[test]
        fn every_fixture_is_tested() {
            let tested = [$(stringify!($name)),*];
            let mut dirs: Vec<String> = std::fs::read_dir(fixtures_dir())
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| e.path().join("config.json").exists())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect();
            dirs.sort();
            for d in &dirs {
                assert!(tested.contains(&d.as_str()), "fixture {d} has no parity test");
            }
            assert_eq!(dirs.len(), tested.len());
        }
    };
}

parity_tests!(
    sasrec_default,
    bert4rec_default,
    sasrec_kpm_causal,
    bert4rec_kpm_causal,
    sasrec_cosine,
    sasrec_ligr,
    sasrec_ligr_gelu_bias,
    sasrec_cat_features,
    bert4rec_cat_features,
    sasrec_bce,
    sasrec_gbce,
    sasrec_sampled_softmax,
    bert4rec_gbce,
    sasrec_scaled_pos,
);

/// The fixtures carry `get_trainer_func: "__main__.trainer"` (the generator's own function):
/// it is ignored with a warning.
#[test]
fn python_trainer_func_is_ignored_with_a_warning() {
    let f = load_fixture("sasrec_default");
    assert!(
        f.warnings
            .iter()
            .any(|w| w.contains("get_trainer_func") && w.contains("__main__.trainer")),
        "{:?}",
        f.warnings
    );
    assert_eq!(f.model.net.spec.get_trainer_func, None);
}
