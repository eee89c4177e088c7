//! The model spec: a RecTools `get_config(simple_types=True)` object, read verbatim.
//!
//! Reading is two-phase (as ripgrep's flags): [`SpecInput`] is what the user wrote (a JSON object,
//! checked for syntax only); [`SpecInput::resolve`] (in [`crate::resolve`], the only part that
//! needs the registry) checks the keys against the class's full default config (unknown keys are
//! rejected, like pydantic's `extra="forbid"`), fills in the class's defaults, decodes the types
//! and maps every component type name to its canonical registered name. This module knows
//! nothing of the registry.
//!
//! Keys beyond RecTools' (documented in the README): `seed`. Python-only keys are accepted and
//! documented there as ignored or mapped.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{error::CoreError, kind::ComponentKind, Result};

/// Keys recblocks accepts beyond RecTools' config.
pub const EXTENSION_KEYS: &[&str] = &["seed", "item_net_block_kwargs"];

/// Kwargs of a component: a JSON object, or `None` (`null` in the spec) for none.
pub type Kwargs = Option<Map<String, Value>>;

/// A resolved model spec: RecTools' `TransformerModelConfig` fields, in RecTools' key order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Model class (`SASRecModel`, `BERT4RecModel`): picks the defaults.
    pub cls: String,
    /// Verbosity (RecTools: Lightning progress bar and logs). recblocks shows progress unless
    /// `--quiet`; kept for round-trips.
    pub verbose: i64,
    /// Data preparator type.
    pub data_preparator_type: String,
    /// Number of transformer blocks.
    pub n_blocks: usize,
    /// Number of attention heads.
    pub n_heads: usize,
    /// Embedding and hidden width d.
    pub n_factors: usize,
    /// Whether the positional encoding has a learnable embedding.
    pub use_pos_emb: bool,
    /// Causal (left-to-right) attention.
    pub use_causal_attn: bool,
    /// Key padding mask in attention.
    pub use_key_padding_mask: bool,
    /// Dropout probability everywhere.
    pub dropout_rate: f64,
    /// Maximum session length L.
    pub session_max_len: usize,
    /// Python-only (DataLoader workers): accepted and ignored.
    pub dataloader_num_workers: i64,
    /// Training batch size.
    pub batch_size: usize,
    /// Loss: `softmax`, `BCE`, `gBCE`, `sampled_softmax`.
    pub loss: String,
    /// Negatives per position for sampled losses.
    pub n_negatives: usize,
    /// gBCE calibration t.
    pub gbce_t: f64,
    /// Adam learning rate.
    pub lr: f64,
    /// Training epochs.
    pub epochs: usize,
    /// Python-only (torch deterministic algorithms): accepted; recblocks is deterministic on CPU
    /// for a given seed.
    pub deterministic: bool,
    /// Users per batch when recommending.
    pub recommend_batch_size: usize,
    /// `"cpu"`, `"cuda"` or null: mapped to the inference device (null = CPU).
    pub recommend_torch_device: Option<String>,
    /// Users with fewer training interactions are dropped from training.
    pub train_min_user_interactions: usize,
    /// Item net block types.
    pub item_net_block_types: Vec<String>,
    /// Item net constructor type.
    pub item_net_constructor_type: String,
    /// Positional encoding type.
    pub pos_encoding_type: String,
    /// Transformer layers type.
    pub transformer_layers_type: String,
    /// Training objective type.
    pub lightning_module_type: String,
    /// Negative sampler type.
    pub negative_sampler_type: String,
    /// Similarity module type.
    pub similarity_module_type: String,
    /// Backbone type.
    pub backbone_type: String,
    /// Validation mask function (`leave_one_out_mask`), or null for no validation.
    pub get_val_mask_func: Option<String>,
    /// Trainer settings factory, or null for the default trainer.
    pub get_trainer_func: Option<String>,
    /// Kwargs of `get_val_mask_func`.
    pub get_val_mask_func_kwargs: Kwargs,
    /// Kwargs of `get_trainer_func` (also read by the default trainer).
    pub get_trainer_func_kwargs: Kwargs,
    /// Kwargs of the data preparator.
    pub data_preparator_kwargs: Kwargs,
    /// Kwargs of the transformer layers.
    pub transformer_layers_kwargs: Kwargs,
    /// Kwargs of the item net constructor.
    pub item_net_constructor_kwargs: Kwargs,
    /// Kwargs of the positional encoding.
    pub pos_encoding_kwargs: Kwargs,
    /// Kwargs of the training objective.
    pub lightning_module_kwargs: Kwargs,
    /// Kwargs of the negative sampler.
    pub negative_sampler_kwargs: Kwargs,
    /// Kwargs of the similarity module.
    pub similarity_module_kwargs: Kwargs,
    /// Kwargs of the backbone.
    pub backbone_kwargs: Kwargs,
    /// BERT4Rec only: probability that a position is masked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_prob: Option<f64>,
    /// recblocks extension: seed of every random stream (default 42).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// recblocks extension: kwargs of item net blocks, by block type (a name of
    /// `item_net_block_types`; canonical once resolved). A block without an entry gets `null`.
    /// RecTools' configs have no such key (BERT4Rec's `item_net_block_kwargs` argument is
    /// discarded there), so a RecTools export never sets it.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub item_net_block_kwargs: Map<String, Value>,
}

/// What the user wrote: a spec's JSON object, checked for syntax only (valid JSON, an object at
/// the top level, `cls` a string when present). [`SpecInput::resolve`] turns it into a
/// [`ModelSpec`].
#[derive(Debug, Clone, PartialEq)]
pub struct SpecInput {
    /// The spec's keys and values, as written.
    pub keys: Map<String, Value>,
}

impl SpecInput {
    /// Reads JSON text. A key given twice in one object is an error (JSON readers would keep
    /// one of them silently).
    pub fn from_json_str(text: &str) -> Result<Self> {
        let value: Value = crate::strict_json::from_str(text).map_err(|e| {
            CoreError::Spec(format!(
                "not valid JSON (line {}, column {}): {e}",
                e.line(),
                e.column()
            ))
        })?;
        Self::from_value(value)
    }

    /// Takes a JSON value, which must be an object.
    pub fn from_value(value: Value) -> Result<Self> {
        let Value::Object(keys) = value else {
            return Err(CoreError::Spec(format!(
                "expected a JSON object at the top level, found {}",
                json_type(&value)
            )));
        };
        if let Some(other) = keys.get("cls").filter(|v| !v.is_string()) {
            return Err(CoreError::Spec(format!(
                "key `cls`: expected a model class name such as \"SASRecModel\", found {other}"
            )));
        }
        Ok(SpecInput { keys })
    }

    /// The model class the user named, if any.
    pub fn cls(&self) -> Option<&str> {
        self.keys.get("cls").and_then(Value::as_str)
    }
}

/// One component slot of a spec: the kind it holds, its key, and the component name in it
/// (`item_net_block_types` gives one slot per block, keyed `item_net_block_types.N`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// The component kind of the slot.
    pub kind: ComponentKind,
    /// The spec key (`transformer_layers_type`, `item_net_block_types.0`, ...).
    pub key: String,
    /// The component name the spec gives.
    pub name: String,
}

impl ModelSpec {
    /// Every component slot the spec fills, in spec order: `cls`, the data preparator, each item
    /// net block, then the other `*_type` keys, and the validation mask and trainer functions
    /// when set. The one list of slots that resolution, provenance and artifact checks share.
    pub fn slots(&self) -> Vec<Slot> {
        let mut copy = self.clone();
        copy.slot_names()
            .into_iter()
            .map(|(kind, index, name)| Slot {
                kind,
                key: match index {
                    Some(i) => format!("{}.{i}", kind.spec_slot()),
                    None => kind.spec_slot().to_string(),
                },
                name: name.clone(),
            })
            .collect()
    }

    /// `(kind, index within item_net_block_types, name)` for every filled slot, mutable.
    pub(crate) fn slot_names(&mut self) -> Vec<(ComponentKind, Option<usize>, &mut String)> {
        use ComponentKind as K;
        let mut out: Vec<(K, Option<usize>, &mut String)> = vec![
            (K::ModelPreset, None, &mut self.cls),
            (K::DataPreparator, None, &mut self.data_preparator_type),
        ];
        for (i, b) in self.item_net_block_types.iter_mut().enumerate() {
            out.push((K::ItemNetBlock, Some(i), b));
        }
        out.extend([
            (
                K::ItemNetConstructor,
                None,
                &mut self.item_net_constructor_type,
            ),
            (K::PositionalEncoding, None, &mut self.pos_encoding_type),
            (
                K::TransformerLayers,
                None,
                &mut self.transformer_layers_type,
            ),
            (K::Objective, None, &mut self.lightning_module_type),
            (K::NegativeSampler, None, &mut self.negative_sampler_type),
            (K::Similarity, None, &mut self.similarity_module_type),
            (K::Backbone, None, &mut self.backbone_type),
        ]);
        if let Some(f) = &mut self.get_val_mask_func {
            out.push((K::ValMask, None, f));
        }
        if let Some(f) = &mut self.get_trainer_func {
            out.push((K::Trainer, None, f));
        }
        out
    }

    /// Checks model-wide settings that no single component owns.
    pub(crate) fn check(&self) -> Result<()> {
        let bad = |m: String| Err(CoreError::Spec(m));
        if self.n_factors == 0 || self.n_heads == 0 || !self.n_factors.is_multiple_of(self.n_heads)
        {
            return bad(format!(
                "n_factors ({}) must be a positive multiple of n_heads ({})",
                self.n_factors, self.n_heads
            ));
        }
        if self.session_max_len == 0 {
            return bad("session_max_len must be at least 1".into());
        }
        if self.batch_size == 0 || self.recommend_batch_size == 0 {
            return bad("batch_size and recommend_batch_size must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.dropout_rate) {
            return bad(format!(
                "dropout_rate must be in [0, 1), found {}",
                self.dropout_rate
            ));
        }
        if let Some(p) = self.mask_prob {
            if !(0.0..=1.0).contains(&p) {
                return bad(format!("mask_prob must be in [0, 1], found {p}"));
            }
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad(format!("lr must be positive and finite, found {}", self.lr));
        }
        Ok(())
    }

    /// The kwargs stored for a component slot, as a JSON value (`null` when none).
    pub fn kwargs_value(kwargs: &Kwargs) -> Value {
        kwargs.clone().map(Value::Object).unwrap_or(Value::Null)
    }

    /// The seed of every random stream (spec `seed`, default 42).
    pub fn seed_or_default(&self) -> u64 {
        self.seed.unwrap_or(42)
    }

    /// The spec as pretty JSON, in RecTools' key order.
    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

pub(crate) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(crate) fn closest_key(key: &str, known: &[String]) -> Option<String> {
    // The edit distance costs key length × known length: no hint for an absurd key.
    if key.len() > 100 {
        return None;
    }
    known
        .iter()
        .map(|k| (strsim::levenshtein(key, k), k))
        .filter(|(d, _)| *d <= 3)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.clone())
}
