//! Backbones (RecTools `TransformerBackboneBase`): item net → positional encoding → dropout →
//! transformer layers → similarity.

use candle_core::Tensor;
use serde_json::Value;

use crate::{
    components::{
        last_position, ItemNetConstructor, PositionalEncoding, Similarity, TransformerLayers,
    },
    context::BuildContext,
    Result,
};

/// The sub-components a backbone is assembled from (built by the host from the spec).
pub struct BackboneParts {
    /// `item_net_constructor_type`.
    pub item_net: Box<dyn ItemNetConstructor>,
    /// `pos_encoding_type`.
    pub pos_encoding: Box<dyn PositionalEncoding>,
    /// `transformer_layers_type`.
    pub transformer_layers: Box<dyn TransformerLayers>,
    /// `similarity_module_type`.
    pub similarity: Box<dyn Similarity>,
}

/// Encodes sessions and scores them against items.
pub trait Backbone: Send + Sync {
    /// The catalog's item embeddings `[n_items, d]` (recomputed every step in training, as
    /// RecTools does, so item-net dropout acts).
    fn item_embeddings(&self, train: bool) -> Result<Tensor>;
    /// Session encodings `[B, L, d]` for input ids `x` `[B, L]` (u32, 0 = PAD).
    fn encode_sessions(&self, x: &Tensor, item_embs: &Tensor, train: bool) -> Result<Tensor>;
    /// Eval-mode session encodings at the last position only, `[B, 1, d]`: what recommending
    /// uses. Equals `encode_sessions(x, item_embs, false)` at the last position; the default
    /// computes every position, backbones override it to let the layers skip work
    /// ([`TransformerLayers::forward_last`]).
    fn encode_last(&self, x: &Tensor, item_embs: &Tensor) -> Result<Tensor> {
        last_position(&self.encode_sessions(x, item_embs, false)?)
    }
    /// The similarity module.
    fn similarity(&self) -> &dyn Similarity;
    /// Logits for `x`: against the whole catalog `[B, L, N]`, or against `candidates`
    /// `[B, L, K]`.
    fn logits(&self, x: &Tensor, candidates: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let item_embs = self.item_embeddings(train)?;
        let sessions = self.encode_sessions(x, &item_embs, train)?;
        match candidates {
            Some(c) => self.similarity().candidate_logits(&sessions, &item_embs, c),
            None => self.similarity().full_catalog_logits(&sessions, &item_embs),
        }
    }
}

/// Builds a backbone from its parts (reads `use_causal_attn`, `use_key_padding_mask`,
/// `n_heads`, `dropout_rate` from the spec).
pub type BuildBackbone =
    fn(ctx: &BuildContext<'_>, parts: BackboneParts, kwargs: &Value) -> Result<Box<dyn Backbone>>;
