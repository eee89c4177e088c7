//! Trainer settings (RecTools `get_trainer_func`): what the training loop does beyond the model.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{spec::ModelSpec, Result};

/// Settings for the training loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerSettings {
    /// Number of epochs.
    pub epochs: usize,
    /// Seed of every random stream (init, shuffling, dropout, masking, negatives).
    pub seed: u64,
    /// Early stopping, when validation is configured.
    pub early_stopping: Option<EarlyStopping>,
    /// k of the validation Recall/NDCG reported per epoch.
    pub val_k: usize,
}

/// Stop when a monitored validation value has not improved for `patience` epochs, then restore
/// the best weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EarlyStopping {
    /// `val_loss`, `recall@k` or `ndcg@k`.
    pub monitor: String,
    /// Epochs without improvement before stopping.
    pub patience: usize,
    /// Smallest change that counts as an improvement.
    pub min_delta: f64,
}

/// Builds trainer settings from the spec and `get_trainer_func_kwargs`.
pub type BuildTrainer = fn(spec: &ModelSpec, kwargs: &Value) -> Result<TrainerSettings>;
