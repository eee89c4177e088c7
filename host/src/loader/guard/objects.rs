//! [`Guarded`]: a component built by a plugin, each of whose methods calls the plugin's under
//! [`Origin::call`] (or [`Origin::call_plain`] when the method cannot return an error).
//!
//! Default methods of the traits are forwarded too, so that a plugin's override runs (guarded)
//! and a plugin without one gets the trait's default computed by its own code.

use recblocks_core::{
    batch::Batch,
    candle::{Device, Tensor},
    components::{
        AttentionMasks, Backbone, DataPreparator, Distance, ItemNetBlock, ItemNetConstructor,
        NegativeSampler, Objective, PositionalEncoding, SessionRef, Similarity, TransformerLayers,
    },
    Result, SharedRng,
};

use super::Origin;

/// A plugin's component, with its origin for the error a panic becomes.
pub struct Guarded<T> {
    origin: Origin,
    inner: T,
}

impl<T> Guarded<T> {
    /// Wraps what a plugin's build fn returned.
    pub fn new(origin: Origin, inner: T) -> Self {
        Guarded { origin, inner }
    }
}

impl ItemNetBlock for Guarded<Box<dyn ItemNetBlock>> {
    fn all_embeddings(&self, train: bool) -> Result<Tensor> {
        self.origin
            .call("all_embeddings", || self.inner.all_embeddings(train))
    }
    fn forward_t(&self, items: &Tensor, train: bool) -> Result<Tensor> {
        self.origin
            .call("forward_t", || self.inner.forward_t(items, train))
    }
    fn out_dim(&self) -> usize {
        self.origin.call_plain("out_dim", || self.inner.out_dim())
    }
    fn n_params(&self) -> Option<usize> {
        self.origin.call_plain("n_params", || self.inner.n_params())
    }
}

impl ItemNetConstructor for Guarded<Box<dyn ItemNetConstructor>> {
    fn all_embeddings(&self, train: bool) -> Result<Tensor> {
        self.origin
            .call("all_embeddings", || self.inner.all_embeddings(train))
    }
    fn out_dim(&self) -> usize {
        self.origin.call_plain("out_dim", || self.inner.out_dim())
    }
    fn n_params(&self) -> Option<usize> {
        self.origin.call_plain("n_params", || self.inner.n_params())
    }
}

impl PositionalEncoding for Guarded<Box<dyn PositionalEncoding>> {
    fn forward_t(&self, sessions: &Tensor, train: bool) -> Result<Tensor> {
        self.origin
            .call("forward_t", || self.inner.forward_t(sessions, train))
    }
    fn n_params(&self) -> Option<usize> {
        self.origin.call_plain("n_params", || self.inner.n_params())
    }
}

impl TransformerLayers for Guarded<Box<dyn TransformerLayers>> {
    fn forward_t(&self, seqs: &Tensor, masks: &AttentionMasks, train: bool) -> Result<Tensor> {
        self.origin
            .call("forward_t", || self.inner.forward_t(seqs, masks, train))
    }
    fn forward_last(&self, seqs: &Tensor, masks: &AttentionMasks) -> Result<Tensor> {
        self.origin
            .call("forward_last", || self.inner.forward_last(seqs, masks))
    }
    fn n_params(&self) -> Option<usize> {
        self.origin.call_plain("n_params", || self.inner.n_params())
    }
}

impl Similarity for Guarded<Box<dyn Similarity>> {
    fn session_tower(&self, sessions: &Tensor) -> Result<Tensor> {
        self.origin
            .call("session_tower", || self.inner.session_tower(sessions))
    }
    fn item_tower(&self, items: &Tensor) -> Result<Tensor> {
        self.origin
            .call("item_tower", || self.inner.item_tower(items))
    }
    fn full_catalog_logits(&self, sessions: &Tensor, item_embs: &Tensor) -> Result<Tensor> {
        self.origin.call("full_catalog_logits", || {
            self.inner.full_catalog_logits(sessions, item_embs)
        })
    }
    fn catalog_factors(
        &self,
        sessions: &Tensor,
        item_embs: &Tensor,
    ) -> Result<Option<(Tensor, Tensor)>> {
        self.origin.call("catalog_factors", || {
            self.inner.catalog_factors(sessions, item_embs)
        })
    }
    fn candidate_logits(
        &self,
        sessions: &Tensor,
        item_embs: &Tensor,
        candidates: &Tensor,
    ) -> Result<Tensor> {
        self.origin.call("candidate_logits", || {
            self.inner.candidate_logits(sessions, item_embs, candidates)
        })
    }
    fn distance(&self) -> Distance {
        self.origin.call_plain("distance", || self.inner.distance())
    }
    fn n_params(&self) -> Option<usize> {
        self.origin.call_plain("n_params", || self.inner.n_params())
    }
}

impl NegativeSampler for Guarded<Box<dyn NegativeSampler>> {
    fn sample(
        &self,
        batch: usize,
        seq_len: usize,
        lowest_id: u32,
        highest_id: u32,
        rng: &SharedRng,
    ) -> Vec<u32> {
        self.origin.call_plain("sample", || {
            self.inner
                .sample(batch, seq_len, lowest_id, highest_id, rng)
        })
    }
    fn n_negatives(&self) -> usize {
        self.origin
            .call_plain("n_negatives", || self.inner.n_negatives())
    }
}

impl DataPreparator for Guarded<Box<dyn DataPreparator>> {
    fn item_extra_tokens(&self) -> Vec<String> {
        self.origin
            .call_plain("item_extra_tokens", || self.inner.item_extra_tokens())
    }
    fn train_session_max_len_addition(&self) -> usize {
        self.origin
            .call_plain("train_session_max_len_addition", || {
                self.inner.train_session_max_len_addition()
            })
    }
    fn shuffle_train(&self) -> bool {
        self.origin
            .call_plain("shuffle_train", || self.inner.shuffle_train())
    }
    fn collate_train(
        &self,
        sessions: &[SessionRef<'_>],
        n_items: usize,
        sampler: Option<&dyn NegativeSampler>,
        rng: &SharedRng,
        device: &Device,
    ) -> Result<Batch> {
        self.origin.call("collate_train", || {
            self.inner
                .collate_train(sessions, n_items, sampler, rng, device)
        })
    }
    fn collate_val(
        &self,
        sessions: &[SessionRef<'_>],
        n_items: usize,
        sampler: Option<&dyn NegativeSampler>,
        rng: &SharedRng,
        device: &Device,
    ) -> Result<Batch> {
        self.origin.call("collate_val", || {
            self.inner
                .collate_val(sessions, n_items, sampler, rng, device)
        })
    }
    fn collate_recommend(&self, sessions: &[&[u32]], device: &Device) -> Result<Tensor> {
        self.origin.call("collate_recommend", || {
            self.inner.collate_recommend(sessions, device)
        })
    }
}

impl Backbone for Guarded<Box<dyn Backbone>> {
    fn item_embeddings(&self, train: bool) -> Result<Tensor> {
        self.origin
            .call("item_embeddings", || self.inner.item_embeddings(train))
    }
    fn encode_sessions(&self, x: &Tensor, item_embs: &Tensor, train: bool) -> Result<Tensor> {
        self.origin.call("encode_sessions", || {
            self.inner.encode_sessions(x, item_embs, train)
        })
    }
    fn encode_last(&self, x: &Tensor, item_embs: &Tensor) -> Result<Tensor> {
        self.origin
            .call("encode_last", || self.inner.encode_last(x, item_embs))
    }
    fn similarity(&self) -> &dyn Similarity {
        self.origin
            .call_plain("similarity", || self.inner.similarity())
    }
    fn logits(&self, x: &Tensor, candidates: Option<&Tensor>, train: bool) -> Result<Tensor> {
        self.origin
            .call("logits", || self.inner.logits(x, candidates, train))
    }
}

impl Objective for Guarded<Box<dyn Objective>> {
    fn requires_negatives(&self) -> bool {
        self.origin
            .call_plain("requires_negatives", || self.inner.requires_negatives())
    }
    fn train_loss(&self, backbone: &dyn Backbone, batch: &Batch) -> Result<Tensor> {
        self.origin
            .call("train_loss", || self.inner.train_loss(backbone, batch))
    }
    fn val_loss(&self, backbone: &dyn Backbone, batch: &Batch) -> Result<Tensor> {
        self.origin
            .call("val_loss", || self.inner.val_loss(backbone, batch))
    }
}
