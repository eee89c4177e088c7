//! Model presets (`cls`): the full default config of a model class (RecTools'
//! `SASRecModelConfig`, `BERT4RecModelConfig`) and the trainer it runs by default.

use serde_json::{Map, Value};

/// What a model class gives a spec.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelPreset {
    /// The complete default config: every key the class accepts, with its default value. Keys
    /// not in this map are rejected for that class.
    pub defaults: Map<String, Value>,
    /// The trainer (a registered trainer name) that runs when `get_trainer_func` is null.
    pub default_trainer: &'static str,
}

/// Returns the model class's preset.
pub type BuildModelPreset = fn() -> ModelPreset;
