//! Model presets (`cls`): the full default config of a model class (RecTools'
//! `SASRecModelConfig`, `BERT4RecModelConfig`).

use serde_json::{Map, Value};

/// Returns the complete default config of a model class: every key the class accepts, with its
/// default value. Keys not in this map are rejected for that class.
pub type ModelDefaults = fn() -> Map<String, Value>;
