//! The model spec: a RecTools `get_config(simple_types=True)` object, read verbatim.
//!
//! Reading is two-phase (as ripgrep's flags): [`ModelSpec::from_json_str`] checks the keys
//! against the class's full default config (unknown keys are rejected, like pydantic's
//! `extra="forbid"`), fills in the class's defaults and decodes the types; [`ModelSpec::resolve`]
//! then maps every component type name to its canonical registered name.
//!
//! Keys beyond RecTools' (documented in the README): `seed`. Python-only keys are accepted and
//! documented there as ignored or mapped.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{error::CoreError, kind::ComponentKind, registry::Registry, Result};

/// Keys recblocks accepts beyond RecTools' config.
pub const EXTENSION_KEYS: &[&str] = &["seed"];

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
}

impl ModelSpec {
    /// Reads a spec from JSON text: checks keys against the defaults of its `cls` and fills them.
    pub fn from_json_str(text: &str, registry: &Registry) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|e| {
            CoreError::Spec(format!(
                "not valid JSON (line {}, column {}): {e}",
                e.line(),
                e.column()
            ))
        })?;
        Self::from_value(value, registry)
    }

    /// Reads a spec from a JSON value (see [`ModelSpec::from_json_str`]) and resolves it.
    pub fn from_value(value: Value, registry: &Registry) -> Result<Self> {
        let Value::Object(user) = value else {
            return Err(CoreError::Spec(format!(
                "expected a JSON object at the top level, found {}",
                json_type(&value)
            )));
        };
        let cls = match user.get("cls") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(CoreError::Spec(format!(
                    "key `cls`: expected a model class name such as \"SASRecModel\", found {other}"
                )))
            }
            None => {
                return Err(CoreError::Spec(format!(
                    "key `cls` is missing: name the model class, one of {}",
                    registry.names_of(ComponentKind::Model).join(", ")
                )))
            }
        };
        let preset = registry.model_preset(&cls)?;
        let mut merged = (preset.build)();
        for (key, v) in user {
            if !merged.contains_key(&key) && !EXTENSION_KEYS.contains(&key.as_str()) {
                let mut known: Vec<String> = merged.keys().cloned().collect();
                known.extend(EXTENSION_KEYS.iter().map(|s| s.to_string()));
                let hint = closest_key(&key, &known)
                    .map(|k| format!(" (did you mean `{k}`?)"))
                    .unwrap_or_default();
                return Err(CoreError::Spec(format!(
                    "unknown key `{key}` for {}{hint}; accepted keys: {}",
                    preset.info.name,
                    known.join(", ")
                )));
            }
            merged.insert(key, v);
        }
        merged.insert("cls".into(), Value::String(preset.info.name.to_string()));
        let mut spec: ModelSpec = serde_path_to_error::deserialize(Value::Object(merged))
            .map_err(|e| CoreError::Spec(format!("key `{}`: {}", e.path(), e.inner())))?;
        spec.resolve(registry)?;
        Ok(spec)
    }

    /// Maps every component type name to its canonical registered name, failing on unknown names.
    pub fn resolve(&mut self, registry: &Registry) -> Result<()> {
        use ComponentKind as K;
        let canon = |kind: K, name: &mut String| -> Result<()> {
            *name = registry.canonical_name(kind, name)?.to_string();
            Ok(())
        };
        canon(K::Model, &mut self.cls)?;
        canon(K::DataPreparator, &mut self.data_preparator_type)?;
        for b in &mut self.item_net_block_types {
            canon(K::ItemNetBlock, b)?;
        }
        canon(K::ItemNetConstructor, &mut self.item_net_constructor_type)?;
        canon(K::PosEncoding, &mut self.pos_encoding_type)?;
        canon(K::TransformerLayers, &mut self.transformer_layers_type)?;
        canon(K::LightningModule, &mut self.lightning_module_type)?;
        canon(K::NegativeSampler, &mut self.negative_sampler_type)?;
        canon(K::Similarity, &mut self.similarity_module_type)?;
        canon(K::Backbone, &mut self.backbone_type)?;
        if let Some(f) = &mut self.get_val_mask_func {
            canon(K::ValMaskFunc, f)?;
        }
        if let Some(f) = &mut self.get_trainer_func {
            canon(K::Trainer, f)?;
        }
        self.check()
    }

    /// Checks model-wide settings that no single component owns.
    fn check(&self) -> Result<()> {
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

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn closest_key(key: &str, known: &[String]) -> Option<String> {
    known
        .iter()
        .map(|k| (strsim::levenshtein(key, k), k))
        .filter(|(d, _)| *d <= 3)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.clone())
}
