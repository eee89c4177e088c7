//! Training objectives (RecTools `TransformerLightningModule`): batch → loss.

use candle_core::Tensor;
use serde_json::Value;

use crate::{batch::Batch, components::Backbone, schema::DatasetSchema, spec::ModelSpec, Result};

/// Computes the loss of a batch.
pub trait Objective: Send + Sync {
    /// Whether batches must carry negatives for the configured loss.
    fn requires_negatives(&self) -> bool;
    /// The training loss (a scalar) for a training batch.
    fn train_loss(&self, backbone: &dyn Backbone, batch: &Batch) -> Result<Tensor>;
    /// The validation loss (a scalar) for a validation batch (logits at the last position only).
    fn val_loss(&self, backbone: &dyn Backbone, batch: &Batch) -> Result<Tensor>;
}

/// Builds an objective (reads `loss`, `gbce_t`, `n_negatives` from the spec).
pub type BuildObjective =
    fn(spec: &ModelSpec, schema: &DatasetSchema, kwargs: &Value) -> Result<Box<dyn Objective>>;
