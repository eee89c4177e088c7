//! Per-epoch validation: the objective's validation loss and Recall/NDCG@k of the validation
//! target among all real items, ranked by the score at the last position (no viewed-item
//! filtering, as RecTools' validation callbacks do).

use candle_core::Device;
use recblocks_core::{
    components::{Objective, SessionRef},
    SharedRng,
};

use crate::{assembly::AssembledModel, train::prepare::Session, Result};
use recblocks_core::components::DataPreparator;

/// Validation results of one epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ValResult {
    /// Mean validation loss (weighted by batch size).
    pub loss: f64,
    /// Recall@k (= HitRate@k: one target per user).
    pub recall: f64,
    /// NDCG@k (one relevant item: 1 / log2(rank + 1)).
    pub ndcg: f64,
}

/// Everything validation needs besides the model.
pub struct ValInputs<'a> {
    /// The validation sessions.
    pub sessions: &'a [Session],
    /// The data preparator.
    pub preparator: &'a dyn DataPreparator,
    /// The objective.
    pub objective: &'a dyn Objective,
    /// The sampler, when the loss needs negatives.
    pub sampler: Option<&'a dyn recblocks_core::components::NegativeSampler>,
    /// Number of extra tokens (never ranked).
    pub n_extra_tokens: usize,
    /// Users per batch.
    pub batch_size: usize,
    /// k of Recall/NDCG.
    pub k: usize,
}

/// Runs validation in eval mode.
pub fn validate(model: &AssembledModel, v: &ValInputs<'_>, rng: &SharedRng) -> Result<ValResult> {
    let device: &Device = &model.device;
    let n_items = model.schema.n_items;
    let (mut loss_sum, mut hits, mut ndcg, mut n) = (0.0f64, 0.0f64, 0.0f64, 0usize);
    let item_embs = model.backbone.item_embeddings(false)?;
    for chunk in v.sessions.chunks(v.batch_size.max(1)) {
        let refs: Vec<SessionRef<'_>> = chunk
            .iter()
            .map(|s| SessionRef {
                items: &s.items,
                weights: &s.weights,
            })
            .collect();
        let batch = v
            .preparator
            .collate_val(&refs, n_items, v.sampler, rng, device)?;
        let loss = v
            .objective
            .val_loss(model.backbone.as_ref(), &batch)?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
        loss_sum += loss * chunk.len() as f64;
        let enc = model
            .backbone
            .encode_sessions(&batch.x, &item_embs, false)?;
        let l = enc.dim(1)?;
        let last = enc.narrow(1, l - 1, 1)?;
        let sim = model.backbone.similarity();
        let scores = sim
            .full_catalog_logits(&sim.session_tower(&last)?, &sim.item_tower(&item_embs)?)?
            .squeeze(1)?
            .to_vec2::<f32>()?;
        let targets = batch.y.flatten_all()?.to_vec1::<u32>()?;
        for (row, &t) in scores.iter().zip(&targets) {
            n += 1;
            let target = row[t as usize];
            let rank = 1 + row[v.n_extra_tokens..]
                .iter()
                .filter(|&&s| s > target)
                .count();
            if rank <= v.k {
                hits += 1.0;
                ndcg += 1.0 / ((rank + 1) as f64).log2();
            }
        }
    }
    let n = n.max(1) as f64;
    Ok(ValResult {
        loss: loss_sum / n,
        recall: hits / n,
        ndcg: ndcg / n,
    })
}
