//! Serving RecTools-trained models: a RecTools Lightning checkpoint (or its parts: config,
//! dataset schema, item id map, state_dict) becomes a recblocks [`Model`] with the same weights,
//! which [`Model::save`] writes as a model directory.
//!
//! - [`checkpoint`]: reading the `.ckpt` (PyTorch zip + pickle) without Python;
//! - [`names`]: the state_dict name map (the packed attention projections are split);
//! - [`config`]: `model_config` → spec (Python-only settings dropped with a warning) and
//!   `dataset_schema` → dataset schema;
//! - [`pyobject`]: pickled Python objects → JSON.
//!
//! The imported model has no optimizer state and no training log: it serves (`recommend`,
//! `similar`), and `fit` can train a fresh model from its spec, but it cannot `--resume`.

pub mod checkpoint;
pub mod config;
pub mod names;
pub mod pickle_guard;
pub mod pyobject;

use std::path::Path;

use candle_core::{Device, Tensor};
use recblocks_core::Registry;
use serde_json::Value;

use crate::{
    assembly::{self, AssembledModel},
    error::HostError,
    model::{provenance, Model},
    train::{fit::TrainingState, rng_state::RngState},
    Result,
};

pub use checkpoint::{read_checkpoint, RecToolsCheckpoint};
pub use names::{map_state_dict, CatBuffers, MappedWeights};

/// A model imported from RecTools, with the warnings about settings that were ignored.
pub struct Imported {
    /// The model, ready to recommend or save.
    pub model: Model,
    /// Python-only settings that were dropped.
    pub warnings: Vec<String>,
}

fn err(source: &str, message: impl Into<String>) -> HostError {
    HostError::RecTools {
        origin: source.to_string(),
        message: message.into(),
    }
}

/// Reads a RecTools Lightning checkpoint and builds the model it holds.
pub fn import_checkpoint(path: &Path, registry: &Registry) -> Result<Imported> {
    let source = path.display().to_string();
    let ckpt = read_checkpoint(path).map_err(|m| err(&source, m))?;
    from_parts(&source, ckpt, registry)
}

/// Builds a model from the parts of a RecTools model; `source` names them in errors.
pub fn from_parts(
    source: &str,
    parts: RecToolsCheckpoint,
    registry: &Registry,
) -> Result<Imported> {
    let (spec, warnings) =
        config::spec_from_config(&parts.model_config, registry).map_err(|m| err(source, m))?;
    let weights = map_state_dict(parts.state_dict).map_err(|m| err(source, m))?;
    let preparator = assembly::build_data_preparator(&spec, registry)?;
    let schema = config::schema_from_rectools(
        &parts.dataset_schema,
        &parts.item_external_ids,
        &preparator.item_extra_tokens(),
        weights.cat.as_ref(),
    )
    .map_err(|m| err(source, m))?;
    crate::memory::check(&spec, schema.n_items, false).map_err(|e| err(source, e.to_string()))?;
    let net = assembly::assemble(&spec, &schema, registry, &Device::Cpu)
        .map_err(|e| err(source, format!("building the model: {e}")))?;
    fill(&net, &weights).map_err(|m| err(source, m))?;
    let settings = assembly::build_trainer_settings(&spec, registry)?;
    let rng = RngState::capture(&net.rng);
    let model = Model {
        provenance: provenance(&spec, registry)?,
        n_extra_tokens: schema.n_extra_tokens(),
        item_ids: parts.item_external_ids,
        train_log: Vec::new(),
        settings,
        training: TrainingState {
            epochs_done: 0,
            adam_step: 0,
            model_rng: rng.clone(),
            data_rng: rng,
            early_stopping: None,
            stopped_early: false,
            captured_steps: 0,
        },
        net,
        preparator,
        adam: None,
        best_weights: None,
    };
    Ok(Imported { model, warnings })
}

/// Sets every parameter of `net` from the mapped weights; names and shapes must match exactly.
fn fill(net: &AssembledModel, weights: &MappedWeights) -> Result<(), String> {
    let data = net.varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let Some(var) = data.get(name) else { continue };
        let t: &Tensor = weights.params.get(name).ok_or_else(|| {
            format!(
                "the state_dict has no weights for recblocks parameter `{name}` (RecTools name \
                 `torch_model.{}`); the checkpoint's model differs from its model_config",
                rectools_name(name)
            )
        })?;
        if t.dims() != var.dims() {
            return Err(format!(
                "`{}` has shape {:?}, the model built from model_config expects {:?}",
                weights
                    .sources
                    .get(name)
                    .map(String::as_str)
                    .unwrap_or(name),
                t.dims(),
                var.dims()
            ));
        }
        let value = t.to_dtype(var.dtype()).map_err(|e| e.to_string())?;
        var.set(&value).map_err(|e| e.to_string())?;
    }
    let mut extra: Vec<&str> = weights
        .params
        .keys()
        .filter(|k| !data.contains_key(*k))
        .map(|k| weights.sources.get(k).map(String::as_str).unwrap_or(k))
        .collect();
    if !extra.is_empty() {
        extra.sort();
        extra.dedup();
        return Err(format!(
            "the state_dict holds weights the model built from model_config does not have: \
             {extra:?}"
        ));
    }
    Ok(())
}

/// The RecTools name (without `torch_model.`) of a recblocks parameter.
pub fn rectools_name(name: &str) -> String {
    for p in ["q_proj", "k_proj", "v_proj"] {
        for (suffix, packed) in [("weight", "in_proj_weight"), ("bias", "in_proj_bias")] {
            if let Some(stem) = name.strip_suffix(&format!("{p}.{suffix}")) {
                return format!("{stem}{packed}");
            }
        }
    }
    name.to_string()
}

/// Reads a JSON value as a list of external ids.
pub fn ids_from_json(v: &Value) -> Result<Vec<String>, String> {
    v.as_array()
        .ok_or_else(|| format!("expected an array of item ids, found {v}"))?
        .iter()
        .map(checkpoint::external_id)
        .collect()
}
