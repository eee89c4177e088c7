//! Negative sampling: port of RecTools' `CatalogUniformSampler`
//! (`rectools/models/nn/transformers/negative_sampler.py`, docs/rectools.md §2.5).
//!
//! Negatives are drawn uniformly from `[lowest_id, highest_id)` (the data preparator passes the
//! number of extra tokens as `lowest_id`, so PAD/MASK are never drawn); positives are not
//! rejected and padded positions are sampled too (the loss masks them).

use rand::Rng;

use recblocks_core::{
    components::NegativeSampler,
    kwargs::{decode_kwargs, NoKwargs},
    serde_json::Value,
    ComponentKind, ModelSpec, Result, SharedRng,
};

const NAME: &str = "CatalogUniformSampler";

/// RecTools' `CatalogUniformSampler`: `n_negatives` uniform draws per position.
#[derive(Debug, Clone)]
pub struct CatalogUniformSampler {
    n_negatives: usize,
}

impl CatalogUniformSampler {
    /// A sampler drawing `n_negatives` per position.
    pub fn new(n_negatives: usize) -> Self {
        CatalogUniformSampler { n_negatives }
    }
}

impl NegativeSampler for CatalogUniformSampler {
    /// Draws from the shared stream in row-major order. An empty range (`highest_id <=
    /// lowest_id`, a catalog without real items) yields `lowest_id` everywhere instead of failing.
    fn sample(
        &self,
        batch: usize,
        seq_len: usize,
        lowest_id: u32,
        highest_id: u32,
        rng: &SharedRng,
    ) -> Vec<u32> {
        let n = batch * seq_len * self.n_negatives;
        if highest_id <= lowest_id {
            return vec![lowest_id; n];
        }
        let mut rng = rng.lock();
        (0..n)
            .map(|_| rng.random_range(lowest_id..highest_id))
            .collect()
    }

    fn n_negatives(&self) -> usize {
        self.n_negatives
    }
}

fn build(spec: &ModelSpec, kwargs: &Value) -> Result<Box<dyn NegativeSampler>> {
    let _: NoKwargs = decode_kwargs(ComponentKind::NegativeSampler, NAME, kwargs)?;
    Ok(Box::new(CatalogUniformSampler::new(spec.n_negatives)))
}

recblocks_core::register! {
    NegativeSamplerRegistration {
        name: NAME,
        aliases: ["rectools.models.nn.transformers.negative_sampler.CatalogUniformSampler"],
        summary: "uniform negatives over the real items of the catalog (PAD/MASK excluded)",
        build: build,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::test_spec;
    use recblocks_core::serde_json::json;

    #[test]
    fn draws_in_range_from_the_shared_stream() -> Result<()> {
        let spec = test_spec(json!({"n_negatives": 3}))?;
        let s = build(&spec, &Value::Null)?;
        assert_eq!(s.n_negatives(), 3);
        let rng = SharedRng::new(11);
        let a = s.sample(4, 5, 2, 7, &rng);
        assert_eq!(a.len(), 4 * 5 * 3);
        assert!(a.iter().all(|v| (2..7).contains(v)));
        // Every id of the range shows up, the lowest and the highest included.
        for id in 2..7 {
            assert!(a.contains(&id), "{id} never drawn in {a:?}");
        }
        // The stream advances, and the same seed repeats the draws.
        let b = s.sample(4, 5, 2, 7, &rng);
        assert_ne!(a, b);
        assert_eq!(a, s.sample(4, 5, 2, 7, &SharedRng::new(11)));
        Ok(())
    }

    #[test]
    fn edge_cases_and_kwargs() -> Result<()> {
        let s = CatalogUniformSampler::new(2);
        assert_eq!(s.sample(1, 2, 1, 1, &SharedRng::new(0)), vec![1; 4]);
        assert_eq!(s.sample(1, 3, 1, 2, &SharedRng::new(0)), vec![1; 6]);
        let spec = test_spec(json!({}))?;
        let err = build(&spec, &json!({"n_negatives": 5}))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("n_negatives"), "{err}");
        // RecTools builds the sampler whatever the loss: zero negatives is accepted.
        let zero = build(&test_spec(json!({"n_negatives": 0}))?, &Value::Null)?;
        assert!(zero.sample(2, 3, 1, 5, &SharedRng::new(0)).is_empty());
        Ok(())
    }
}
