//! Negative samplers (RecTools `TransformerNegativeSamplerBase`).

use serde_json::Value;

use crate::{context::SharedRng, spec::ModelSpec, Result};

/// Draws negatives for sampled losses.
pub trait NegativeSampler: Send + Sync {
    /// Draws `batch * seq_len * n_negatives` ids in `[lowest_id, highest_id)`, row-major
    /// `[batch, seq_len, n_negatives]`.
    fn sample(
        &self,
        batch: usize,
        seq_len: usize,
        lowest_id: u32,
        highest_id: u32,
        rng: &SharedRng,
    ) -> Vec<u32>;
    /// Negatives per position.
    fn n_negatives(&self) -> usize;
}

/// Builds a sampler (`n_negatives` comes from the spec).
pub type BuildNegativeSampler =
    fn(spec: &ModelSpec, kwargs: &Value) -> Result<Box<dyn NegativeSampler>>;
