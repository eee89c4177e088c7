//! Data preparators (RecTools `TransformerDataPreparatorBase`): sessions → batches.

use candle_core::{Device, Tensor};
use serde_json::Value;

use crate::{
    batch::Batch, components::NegativeSampler, context::SharedRng, spec::ModelSpec, Result,
};

/// One user's session: internal item ids in time order, with their weights.
#[derive(Debug, Clone, Copy)]
pub struct SessionRef<'a> {
    /// Internal item ids, oldest first.
    pub items: &'a [u32],
    /// Interaction weights, same length as `items`.
    pub weights: &'a [f32],
}

/// Turns sessions into batches for training, validation and recommendation.
pub trait DataPreparator: Send + Sync {
    /// The extra tokens at the start of the item id map (`["PAD"]`, or `["PAD", "MASK"]`).
    fn item_extra_tokens(&self) -> Vec<String>;
    /// How many items beyond `session_max_len` a training session keeps (1 for SASRec: the
    /// inputs are shifted against the targets).
    fn train_session_max_len_addition(&self) -> usize;
    /// Whether training batches are drawn in shuffled order.
    fn shuffle_train(&self) -> bool;
    /// A training batch. `n_items` counts extra tokens. Negatives are drawn from `sampler` when
    /// given.
    fn collate_train(
        &self,
        sessions: &[SessionRef<'_>],
        n_items: usize,
        sampler: Option<&dyn NegativeSampler>,
        rng: &SharedRng,
        device: &Device,
    ) -> Result<Batch>;
    /// A validation batch: each session holds the input items (weight 0) followed by the target
    /// (the first item with a non-zero weight); `y`, `yw` are `[B, 1]`.
    fn collate_val(
        &self,
        sessions: &[SessionRef<'_>],
        n_items: usize,
        sampler: Option<&dyn NegativeSampler>,
        rng: &SharedRng,
        device: &Device,
    ) -> Result<Batch>;
    /// The input ids `[B, L]` to recommend from each session's history.
    fn collate_recommend(&self, sessions: &[&[u32]], device: &Device) -> Result<Tensor>;
}

/// Builds a data preparator.
pub type BuildDataPreparator =
    fn(spec: &ModelSpec, kwargs: &Value) -> Result<Box<dyn DataPreparator>>;
