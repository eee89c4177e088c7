//! Model directories (docs/architecture.md §11): `model.json` (format version, recblocks version, resolved
//! spec, which crate provided each component), `dataset_schema.json` (catalog facts and item id
//! map: enough to rebuild the model without data), `weights.safetensors`,
//! `optimizer.safetensors` and `trainer_state.json` (so training resumes exactly),
//! `train_log.csv` and `training_curve.svg`. No pickle.
//!
//! Saving writes a sibling temp directory and renames it into place, so a failed or interrupted
//! save never leaves a half-written model where a good one was. Loading rebuilds the model from
//! spec + schema, then fills every parameter, checking names, shapes, dtypes and that every value
//! is finite.

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    path::Path,
};

use candle_core::{Device, Tensor};
use recblocks_core::{components::trainer::TrainerSettings, DatasetSchema, Registry};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    assembly,
    error::HostError,
    model::Model,
    train::{adam::AdamConfig, fit::TrainingState, Adam, EpochLog},
    Result,
};

/// The artifact format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The `format` tag in `model.json`.
pub const FORMAT_NAME: &str = "recblocks-model";

/// `model.json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ModelFile {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    /// [`FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// recblocks version of the writer.
    pub recblocks_version: String,
    /// The resolved spec.
    pub spec: Value,
    /// Spec slot → component name and the crate (plugin) that provided it.
    pub components: BTreeMap<String, ComponentSource>,
    /// Number of trainable parameters.
    pub n_params: usize,
    /// CRC-32 of `weights.safetensors`, checked on load (absent in models written before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_crc32: Option<u32>,
}

/// Which crate provided a component.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComponentSource {
    /// Canonical component name.
    pub name: String,
    /// Crate that registered it.
    #[serde(rename = "crate")]
    pub crate_name: String,
    /// The plugin library (file name) that provided it, when it was loaded at run time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// The plugin build that provided it (name, version, library hash), when it was loaded at
    /// run time; loading the model with another build warns, or fails under `--strict`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_build: Option<crate::loader::provenance::PluginRecord>,
}

/// `dataset_schema.json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct SchemaFile {
    /// Catalog facts the model is built from.
    pub schema: DatasetSchema,
    /// Internal item id → external id (extra tokens first).
    pub item_external_ids: Vec<String>,
}

/// `trainer_state.json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct TrainerStateFile {
    /// Trainer settings of the run.
    pub settings: TrainerSettings,
    /// Epochs done, random stream states, early stopping.
    pub training: TrainingState,
    /// The per-epoch log.
    pub log: Vec<EpochLog>,
}

fn io<T>(path: &Path, r: std::io::Result<T>) -> Result<T> {
    r.map_err(|e| HostError::io(path, e))
}

fn artifact_err(dir: &Path, message: impl Into<String>) -> HostError {
    HostError::Artifact {
        dir: dir.to_path_buf(),
        message: message.into(),
    }
}

/// Test hook: with `RECBLOCKS_WRITE_FAILPOINT=<file name>` in a debug build, writing that file of
/// a model directory fails with ENOSPC, as on a full disk.
fn write_failpoint(path: &Path) -> Result<()> {
    #[cfg(debug_assertions)]
    if let (Ok(name), Some(file)) = (std::env::var("RECBLOCKS_WRITE_FAILPOINT"), path.file_name()) {
        if file == name.as_str() {
            const ENOSPC: i32 = 28;
            return Err(HostError::io(
                path,
                std::io::Error::from_raw_os_error(ENOSPC),
            ));
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = path;
    Ok(())
}

/// Writes tensors as safetensors; an error names the file (candle's says only "I/O error").
fn save_tensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    write_failpoint(path)?;
    candle_core::safetensors::save(tensors, path).map_err(|e| match e {
        candle_core::Error::Io(io) => HostError::io(path, io),
        other => HostError::Other(format!("writing {}: {other}", path.display())),
    })
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| HostError::Other(format!("cannot serialise {}: {e}", path.display())))?;
    write_failpoint(path)?;
    io(path, std::fs::write(path, text + "\n"))
}

fn read_json<T: for<'de> Deserialize<'de>>(dir: &Path, file: &str) -> Result<T> {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| artifact_err(dir, format!("cannot read {file}: {e}")))?;
    serde_json::from_str(&text).map_err(|e| {
        artifact_err(
            dir,
            format!(
                "{file} is not a valid recblocks file (line {}): {e}",
                e.line()
            ),
        )
    })
}

fn tensors_of(model: &Model) -> HashMap<String, Tensor> {
    let data = model
        .net
        .varmap
        .data()
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    data.iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect()
}

impl Model {
    /// Writes the model directory `dir`, replacing a previous model there atomically and keeping
    /// every file recblocks did not write ([`crate::model_dir`]). A non-empty directory that is
    /// not a recblocks model is refused.
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.save_to(dir, false)
    }

    /// [`Model::save`]; with `force`, also into a non-empty directory that is not a model (its
    /// files are kept beside the model's).
    pub fn save_to(&self, dir: &Path, force: bool) -> Result<()> {
        crate::model_dir::replace(dir, force, |tmp| self.write_files(tmp))
    }

    fn write_files(&self, dir: &Path) -> Result<()> {
        let components = self
            .provenance
            .iter()
            .map(|(slot, (name, krate))| {
                (
                    slot.clone(),
                    ComponentSource {
                        name: name.clone(),
                        crate_name: krate.clone(),
                        plugin: crate::loader::plugin_providing(krate),
                        plugin_build: crate::loader::provenance::record_for(krate),
                    },
                )
            })
            .collect();
        write_json(
            &dir.join("dataset_schema.json"),
            &SchemaFile {
                schema: self.net.schema.clone(),
                item_external_ids: self.item_ids.clone(),
            },
        )?;
        let weights = dir.join("weights.safetensors");
        save_tensors(&tensors_of(self), &weights)?;
        if let Some(adam) = &self.adam {
            let (state, _) = adam.state();
            let state: HashMap<String, Tensor> = state.into_iter().collect();
            save_tensors(&state, &dir.join("optimizer.safetensors"))?;
        }
        if let Some(best) = &self.best_weights {
            let best: HashMap<String, Tensor> =
                best.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            save_tensors(&best, &dir.join("best_weights.safetensors"))?;
        }
        write_json(
            &dir.join("trainer_state.json"),
            &TrainerStateFile {
                settings: self.settings.clone(),
                training: self.training.clone(),
                log: self.train_log.clone(),
            },
        )?;
        write_train_log(&dir.join("train_log.csv"), &self.train_log)?;
        if !self.train_log.is_empty() {
            crate::plot::training_curve_svg(
                &self.train_log,
                self.settings.val_k,
                &dir.join("training_curve.svg"),
            )
            .map_err(|e| HostError::Other(format!("cannot draw the training curve: {e}")))?;
        }
        // Every file on disk before model.json, which is written last and names the weights'
        // checksum: a model.json on disk means the model it describes is complete.
        for file in crate::model_dir::OWN_FILES {
            let path = dir.join(file);
            if path.exists() {
                io(&path, File::open(&path).and_then(|f| f.sync_all()))?;
            }
        }
        let weights_crc32 = crc32fast::hash(&io(&weights, std::fs::read(&weights))?);
        let spec = serde_json::to_value(&self.net.spec)
            .map_err(|e| HostError::Other(format!("cannot serialise the spec: {e}")))?;
        write_json(
            &dir.join("model.json"),
            &ModelFile {
                format: FORMAT_NAME.into(),
                format_version: FORMAT_VERSION,
                recblocks_version: crate::VERSION.into(),
                spec,
                components,
                n_params: self.n_params(),
                weights_crc32: Some(weights_crc32),
            },
        )?;
        let model_json = dir.join("model.json");
        io(
            &model_json,
            File::open(&model_json).and_then(|f| f.sync_all()),
        )?;
        Ok(())
    }

    /// Reads a model directory written by [`Model::save`].
    pub fn load(dir: &Path, registry: &Registry) -> Result<Model> {
        if !dir.is_dir() {
            return Err(artifact_err(dir, "is not a directory"));
        }
        // A save to the same path waits until this load has read its files.
        let _lock = crate::model_dir::lock_for_reading(dir)?;
        let file: ModelFile = read_json(dir, "model.json")?;
        if file.format != FORMAT_NAME {
            return Err(artifact_err(
                dir,
                format!(
                    "model.json has format {:?}, expected {FORMAT_NAME:?}",
                    file.format
                ),
            ));
        }
        if file.format_version > FORMAT_VERSION {
            return Err(artifact_err(
                dir,
                format!(
                    "written by recblocks {} in format version {}; this recblocks ({}) reads \
                     up to version {FORMAT_VERSION}",
                    file.recblocks_version,
                    file.format_version,
                    crate::VERSION
                ),
            ));
        }
        check_components_available(dir, &file, registry)?;
        check_plugin_builds(dir, &file)?;
        let spec = recblocks_core::SpecInput::from_value(file.spec.clone())
            .and_then(|s| s.resolve(registry))
            .map_err(|e| artifact_err(dir, format!("model.json spec: {e}")))?;
        let schema_file: SchemaFile = read_json(dir, "dataset_schema.json")?;
        let schema = schema_file.schema;
        if schema_file.item_external_ids.len() != schema.n_items {
            return Err(artifact_err(
                dir,
                format!(
                    "dataset_schema.json lists {} item ids for n_items = {}",
                    schema_file.item_external_ids.len(),
                    schema.n_items
                ),
            ));
        }
        let mut seen =
            std::collections::HashSet::with_capacity(schema_file.item_external_ids.len());
        if let Some(dup) = schema_file
            .item_external_ids
            .iter()
            .find(|id| !seen.insert(id.as_str()))
        {
            return Err(artifact_err(
                dir,
                format!(
                    "dataset_schema.json lists the item id {} twice: every internal id must map \
                     to its own external id",
                    crate::data::error::shown(dup)
                ),
            ));
        }
        if let Some(cat) = &schema.cat_features {
            cat.check(schema.n_items)
                .map_err(|m| artifact_err(dir, format!("dataset_schema.json: {m}")))?;
        }
        crate::memory::check(&spec, schema.n_items, false)
            .map_err(|e| artifact_err(dir, e.to_string()))?;
        let net = assembly::assemble(&spec, &schema, registry, &Device::Cpu)?;
        fill_weights(dir, "weights.safetensors", file.weights_crc32, &net)?;
        let state: TrainerStateFile = read_json(dir, "trainer_state.json")?;
        let adam = load_optimizer(dir, &net, state.training.adam_step)?;
        let best_path = dir.join("best_weights.safetensors");
        let best_weights = if best_path.exists() {
            let t = candle_core::safetensors::load(&best_path, &Device::Cpu).map_err(|e| {
                artifact_err(dir, format!("best_weights.safetensors is unreadable: {e}"))
            })?;
            Some(t.into_iter().collect())
        } else {
            None
        };
        state
            .training
            .model_rng
            .restore(&net.rng)
            .map_err(|m| artifact_err(dir, format!("trainer_state.json: {m}")))?;
        let provenance = file
            .components
            .into_iter()
            .map(|(slot, c)| (slot, (c.name, c.crate_name)))
            .collect();
        let preparator = assembly::build_data_preparator(&spec, registry)?;
        Ok(Model {
            preparator,
            n_extra_tokens: schema.n_extra_tokens(),
            item_ids: schema_file.item_external_ids,
            net,
            train_log: state.log,
            settings: state.settings,
            training: state.training,
            provenance,
            adam,
            best_weights,
        })
    }
}

/// Warns (fails under `--strict`) when a component of the model came from another build of its
/// plugin than the one loaded now.
fn check_plugin_builds(dir: &Path, file: &ModelFile) -> Result<()> {
    use crate::loader::provenance;
    for (slot, source) in &file.components {
        let Some(recorded) = &source.plugin_build else {
            continue;
        };
        let what = format!("{slot} `{}`", source.name);
        if let Some(difference) = provenance::difference(&what, &source.crate_name, recorded) {
            if provenance::strict() {
                return Err(artifact_err(
                    dir,
                    format!("{difference}; refused under --strict (rebuild the model or load the plugin it was trained with)"),
                ));
            }
            tracing::warn!(
                "model {}: {difference}; its outputs may differ (--strict refuses this)",
                dir.display()
            );
        }
    }
    Ok(())
}

/// Fails with a message naming the plugin crate when a component of the model is not registered.
fn check_components_available(dir: &Path, file: &ModelFile, registry: &Registry) -> Result<()> {
    for (slot, source) in &file.components {
        let kind = slot
            .split('.')
            .next()
            .and_then(recblocks_core::ComponentKind::parse);
        if let Some(kind) = kind {
            if registry.lookup(kind, &source.name).is_err() {
                let plugin = match &source.plugin {
                    Some(file) => format!("the plugin library `{file}`"),
                    None => format!("the plugin that provides crate `{}`", source.crate_name),
                };
                return Err(artifact_err(
                    dir,
                    format!(
                        "the model uses {kind} `{}` from crate `{}`, which is not loaded; pass \
                         {plugin} with --plugin PATH (or RECBLOCKS_PLUGINS)",
                        source.name, source.crate_name
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Fills every parameter of `net` from a safetensors file, checking its CRC-32 (when `crc32` is
/// given), names, shapes, dtypes and that every value is finite.
pub fn fill_weights(
    dir: &Path,
    file: &str,
    crc32: Option<u32>,
    net: &assembly::AssembledModel,
) -> Result<()> {
    let path = dir.join(file);
    let bytes = std::fs::read(&path)
        .map_err(|e| artifact_err(dir, format!("{file} is missing or unreadable: {e}")))?;
    if let Some(expected) = crc32 {
        let found = crc32fast::hash(&bytes);
        if found != expected {
            return Err(artifact_err(
                dir,
                format!(
                    "{file} does not match model.json (CRC-32 {found:08x}, model.json records \
                     {expected:08x}): the files come from different saves or were damaged"
                ),
            ));
        }
    }
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| artifact_err(dir, format!("{file} is unreadable: {e}")))?;
    let data = net.varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    for (name, var) in data.iter() {
        let t = tensors.get(name).ok_or_else(|| {
            artifact_err(
                dir,
                format!("{file} has no tensor `{name}`, which the model needs"),
            )
        })?;
        if t.dims() != var.dims() {
            return Err(artifact_err(
                dir,
                format!(
                    "{file}: tensor `{name}` has shape {:?}, the model expects {:?}",
                    t.dims(),
                    var.dims()
                ),
            ));
        }
        if t.dtype() != var.dtype() {
            return Err(artifact_err(
                dir,
                format!(
                    "{file}: tensor `{name}` is {:?}, the model's parameters are {:?} (weights \
                     relabelled or written by another tool?)",
                    t.dtype(),
                    var.dtype()
                ),
            ));
        }
        let values = t
            .flatten_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_vec1::<f64>()?;
        let bad = values.iter().filter(|v| !v.is_finite()).count();
        if bad > 0 {
            return Err(artifact_err(
                dir,
                format!(
                    "{file}: tensor `{name}` holds {bad} NaN or infinite value(s) of {}: the \
                     weights are corrupt (or training diverged before they were saved)",
                    values.len()
                ),
            ));
        }
        var.set(t)?;
    }
    let mut extra: Vec<&String> = tensors.keys().filter(|k| !data.contains_key(*k)).collect();
    if !extra.is_empty() {
        extra.sort();
        return Err(artifact_err(
            dir,
            format!("{file} holds tensors the model does not have: {extra:?}"),
        ));
    }
    Ok(())
}

fn load_optimizer(dir: &Path, net: &assembly::AssembledModel, step: u64) -> Result<Option<Adam>> {
    let path = dir.join("optimizer.safetensors");
    if !path.exists() {
        return Ok(None);
    }
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu)
        .map_err(|e| artifact_err(dir, format!("optimizer.safetensors is unreadable: {e}")))?;
    let mut adam = Adam::new(
        crate::model::trainable_vars(net),
        AdamConfig::rectools(net.spec.lr),
    )?;
    let tensors: BTreeMap<String, Tensor> = tensors.into_iter().collect();
    adam.load_state(&tensors, step)
        .map_err(|m| artifact_err(dir, format!("optimizer.safetensors: {m}")))?;
    Ok(Some(adam))
}

fn write_train_log(path: &Path, log: &[EpochLog]) -> Result<()> {
    let mut w = csv::Writer::from_path(path)
        .map_err(|e| HostError::Other(format!("{}: {e}", path.display())))?;
    let fmt = |v: Option<f64>| v.map(|x| format!("{x}")).unwrap_or_default();
    let mut rows = vec![vec![
        "epoch".to_string(),
        "train_loss".into(),
        "val_loss".into(),
        "val_recall".into(),
        "val_ndcg".into(),
        "seconds".into(),
        "sequences_per_second".into(),
        "step_ms_median".into(),
    ]];
    for e in log {
        rows.push(vec![
            e.epoch.to_string(),
            format!("{}", e.train_loss),
            fmt(e.val_loss),
            fmt(e.val_recall),
            fmt(e.val_ndcg),
            format!("{:.3}", e.seconds),
            format!("{:.1}", e.sequences_per_second),
            e.step_ms_median
                .map(|x| format!("{x:.3}"))
                .unwrap_or_default(),
        ]);
    }
    for r in rows {
        w.write_record(&r)
            .map_err(|e| HostError::Other(format!("{}: {e}", path.display())))?;
    }
    w.flush().map_err(|e| HostError::io(path, e))
}
