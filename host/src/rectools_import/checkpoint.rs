//! Reading a RecTools Lightning checkpoint: a PyTorch zip file whose `data.pkl` pickles a dict
//! with `state_dict` (tensors, stored beside it in the zip) and `hyper_parameters`
//! (`model_config`, `dataset_schema`, `item_external_ids`, ...). Tensors are read with candle's
//! PyTorch reader; the hyper-parameters with its generic pickle parser.

use std::{
    io::{BufReader, Read},
    path::Path,
};

use candle_core::{pickle::Object, Tensor};
use serde_json::Value;

use super::pyobject::{describe, to_json};

/// What recblocks needs from a checkpoint.
#[derive(Debug)]
pub struct RecToolsCheckpoint {
    /// `hyper_parameters.model_config`: RecTools' `get_config(simple_types=True)`.
    pub model_config: Value,
    /// `hyper_parameters.dataset_schema`.
    pub dataset_schema: Value,
    /// `hyper_parameters.item_external_ids`, as strings (internal id order, PAD/MASK first).
    pub item_external_ids: Vec<String>,
    /// `state_dict`, RecTools' names.
    pub state_dict: Vec<(String, Tensor)>,
}

/// An external id as recblocks stores it: strings as they are, numbers in decimal.
pub fn external_id(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(format!("item id {other} is neither a string nor a number")),
    }
}

/// The largest `data.pkl` read (the tensors are separate files; the pickle is kilobytes).
const MAX_PICKLE_BYTES: u64 = 256 << 20;

fn top_level(path: &Path) -> Result<Object, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open it: {e}"))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| {
        format!("not a PyTorch checkpoint (expected a zip file written by torch.save): {e}")
    })?;
    let all: Vec<String> = zip
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.into_owned()))
        .collect();
    let pickles: Vec<&String> = all.iter().filter(|n| n.ends_with("data.pkl")).collect();
    if pickles.len() > 1 {
        return Err(format!(
            "the zip file holds {} pickles ({pickles:?}); a torch.save file holds one data.pkl",
            pickles.len()
        ));
    }
    let name = pickles.first().map(|n| n.to_string()).ok_or_else(|| {
        let names: Vec<&String> = all.iter().take(8).collect();
        format!("the zip file has no `data.pkl` (found {names:?}); not a torch.save file")
    })?;
    let entry = zip.by_name(&name).map_err(|e| {
        if e.to_string().contains("compression method") {
            format!(
                "not a PyTorch checkpoint saved by torch.save: `{name}` is compressed ({e}), \
                 and torch.save stores its entries uncompressed"
            )
        } else {
            format!("cannot read `{name}`: {e}")
        }
    })?;
    let mut bytes = Vec::new();
    entry
        .take(MAX_PICKLE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read `{name}`: {e}"))?;
    if bytes.len() as u64 > MAX_PICKLE_BYTES {
        return Err(format!(
            "`{name}` is larger than {MAX_PICKLE_BYTES} bytes: a checkpoint's pickle holds only \
             the hyper-parameters and tensor references"
        ));
    }
    super::pickle_guard::check_pickle(&bytes).map_err(|e| format!("`{name}`: {e}"))?;
    crate::panic_guard::guarded(|| {
        let mut stack = candle_core::pickle::Stack::empty();
        stack.read_loop(&mut std::io::Cursor::new(bytes))?;
        stack.finalize()
    })
    .map_err(|panic| format!("`{name}` is corrupt: candle's pickle reader failed with `{panic}`"))?
    .map_err(|e| format!("`{name}` is not a readable pickle: {e}"))
}

fn entry<'a>(entries: &'a [(Object, Object)], key: &str) -> Option<&'a Object> {
    entries
        .iter()
        .find(|(k, _)| matches!(k, Object::Unicode(s) if s == key))
        .map(|(_, v)| v)
}

fn keys(entries: &[(Object, Object)]) -> Vec<String> {
    entries
        .iter()
        .map(|(k, _)| match k {
            Object::Unicode(s) => s.clone(),
            other => describe(other),
        })
        .collect()
}

/// Reads the parts of a RecTools checkpoint recblocks uses. Errors say what was found instead.
pub fn read_checkpoint(path: &Path) -> Result<RecToolsCheckpoint, String> {
    let Object::Dict(top) = top_level(path)? else {
        return Err(
            "the pickle does not hold a dict; expected a Lightning checkpoint with \
             `state_dict` and `hyper_parameters`"
                .into(),
        );
    };
    let Some(Object::Dict(hp)) = entry(&top, "hyper_parameters") else {
        return Err(format!(
            "no `hyper_parameters` dict (found keys {:?}); expected a Lightning checkpoint of a \
             RecTools transformer model (SASRecModel, BERT4RecModel)",
            keys(&top)
        ));
    };
    let get = |key: &str| -> Result<Value, String> {
        let obj = entry(hp, key).ok_or_else(|| {
            format!(
                "`hyper_parameters` has no `{key}` (found {:?}); expected RecTools' \
                 TransformerLightningModule hyper-parameters",
                keys(hp)
            )
        })?;
        to_json(obj, &format!("hyper_parameters.{key}"))
    };
    let model_config = get("model_config")?;
    let dataset_schema = get("dataset_schema")?;
    let ids = match get("item_external_ids")? {
        Value::Array(ids) => ids
            .iter()
            .map(external_id)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|m| format!("hyper_parameters.item_external_ids: {m}"))?,
        other => {
            return Err(format!(
                "hyper_parameters.item_external_ids is {other}, expected an array of ids"
            ))
        }
    };
    // candle's reader panics on some crafted tensor records (found by fuzzing): refused as corrupt.
    let state_dict = crate::panic_guard::guarded(|| {
        candle_core::pickle::read_all_with_key(path, Some("state_dict"))
    })
    .map_err(|panic| {
        format!(
            "the checkpoint is corrupt: candle's reader of the `state_dict` tensors failed with \
             `{panic}`"
        )
    })?
    .map_err(|e| format!("cannot read the `state_dict` tensors: {e}"))?;
    if state_dict.is_empty() {
        return Err("the `state_dict` holds no tensors".into());
    }
    Ok(RecToolsCheckpoint {
        model_config,
        dataset_schema,
        item_external_ids: ids,
        state_dict,
    })
}
