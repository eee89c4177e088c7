//! RecTools `model_config` and `dataset_schema` → recblocks spec and dataset schema.
//!
//! Python-only settings that do not change the model are dropped with a warning, because real
//! checkpoints carry them: a `get_trainer_func` or `get_val_mask_func` that recblocks does not
//! know (a user's own Python function, e.g. `__main__.trainer`) together with its kwargs, a
//! non-zero `dataloader_num_workers` and a `recommend_torch_device`. Every component class must
//! be one recblocks knows; an unknown one is an error that names it.

use recblocks_core::{schema::CatFeatureSchema, ComponentKind, DatasetSchema, ModelSpec, Registry};
use serde_json::{Map, Value};

use super::names::CatBuffers;

/// Drops the Python-only settings of a RecTools config, returning the warnings.
pub fn sanitize_config(config: &mut Map<String, Value>, registry: &Registry) -> Vec<String> {
    let mut warnings = Vec::new();
    for (key, kwargs, kind) in [
        (
            "get_trainer_func",
            "get_trainer_func_kwargs",
            ComponentKind::Trainer,
        ),
        (
            "get_val_mask_func",
            "get_val_mask_func_kwargs",
            ComponentKind::ValMask,
        ),
    ] {
        if let Some(Value::String(name)) = config.get(key) {
            if registry.lookup(kind, name).is_err() {
                warnings.push(format!(
                    "{key} `{name}` is a Python function recblocks does not have; ignored \
                     together with {kwargs} (it only affects training, not the model)"
                ));
                config.insert(key.into(), Value::Null);
                config.insert(kwargs.into(), Value::Null);
            }
        }
    }
    match config.get("dataloader_num_workers") {
        Some(Value::Number(n)) if n.as_i64() != Some(0) => {
            warnings.push(format!(
                "dataloader_num_workers = {n} is a PyTorch DataLoader setting; ignored"
            ));
            config.insert("dataloader_num_workers".into(), Value::from(0));
        }
        _ => {}
    }
    if let Some(Value::String(device)) = config.get("recommend_torch_device") {
        warnings.push(format!(
            "recommend_torch_device = {device:?} is a PyTorch device; ignored (recblocks runs \
             on the CPU)"
        ));
        config.insert("recommend_torch_device".into(), Value::Null);
    }
    warnings
}

/// Reads a RecTools `model_config` as a recblocks spec, after [`sanitize_config`].
pub fn spec_from_config(
    config: &Value,
    registry: &Registry,
) -> Result<(ModelSpec, Vec<String>), String> {
    let Value::Object(map) = config else {
        return Err(format!("model_config is {config}, expected a JSON object"));
    };
    let mut map = map.clone();
    let warnings = sanitize_config(&mut map, registry);
    let spec = recblocks_core::SpecInput::from_value(Value::Object(map))
        .and_then(|s| s.resolve(registry))
        .map_err(|e| format!("model_config: {e}"))?;
    Ok((spec, warnings))
}

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

/// The recblocks dataset schema of a RecTools `dataset_schema` and item id map; `extra_tokens`
/// are the data preparator's (they must start the id map), `cat` the `CatFeaturesItemNet`
/// buffers when the state_dict has them.
pub fn schema_from_rectools(
    dataset_schema: &Value,
    item_external_ids: &[String],
    extra_tokens: &[String],
    cat: Option<&CatBuffers>,
) -> Result<DatasetSchema, String> {
    let n_hot = get(dataset_schema, &["items", "n_hot"])
        .and_then(Value::as_u64)
        .ok_or("dataset_schema has no items.n_hot")? as usize;
    if n_hot != item_external_ids.len() {
        return Err(format!(
            "dataset_schema.items.n_hot is {n_hot}, but item_external_ids has {} ids",
            item_external_ids.len()
        ));
    }
    if !item_external_ids.starts_with(extra_tokens) {
        return Err(format!(
            "item_external_ids start with {:?}, but the data preparator's extra tokens are {:?}",
            &item_external_ids[..extra_tokens.len().min(item_external_ids.len())],
            extra_tokens
        ));
    }
    let mut schema = DatasetSchema {
        n_items: n_hot,
        item_extra_tokens: extra_tokens.to_vec(),
        cat_features: None,
    };
    let Some(cat) = cat else {
        return Ok(schema);
    };
    let features = get(dataset_schema, &["items", "features"]).unwrap_or(&Value::Null);
    let names = features
        .get("names")
        .and_then(Value::as_array)
        .ok_or("the state_dict has CatFeaturesItemNet buffers, but dataset_schema.items.features has no names")?;
    let indices = features
        .get("cat_feature_indices")
        .and_then(Value::as_array)
        .ok_or("dataset_schema.items.features has no cat_feature_indices (dense features are not categorical)")?;
    let mut value_names = Vec::new();
    for i in indices {
        let name = i
            .as_u64()
            .and_then(|i| names.get(i as usize))
            .ok_or_else(|| format!("cat_feature_indices entry {i} is not an index into names"))?;
        value_names.push(match name {
            Value::Array(parts) => parts
                .iter()
                .map(|p| {
                    p.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| p.to_string())
                })
                .collect::<Vec<_>>()
                .join("__"),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        });
    }
    let (offsets, values) = cat.to_csr(n_hot, value_names.len())?;
    schema.cat_features = Some(CatFeatureSchema {
        value_names,
        offsets,
        values,
    });
    Ok(schema)
}
