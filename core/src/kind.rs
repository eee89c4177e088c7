//! The component kinds: one per `*_type` slot of a RecTools model config.

use std::fmt;

/// A kind of component; each has one trait in [`crate::components`] and one registration struct.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ComponentKind {
    /// `cls`: a model preset (SASRecModel, BERT4RecModel) giving per-model defaults.
    ModelPreset,
    /// `item_net_block_types`: one source of item embeddings (ids, categorical features).
    ItemNetBlock,
    /// `item_net_constructor_type`: combines item net blocks into item embeddings.
    ItemNetConstructor,
    /// `pos_encoding_type`: adds position information to session embeddings.
    PositionalEncoding,
    /// `transformer_layers_type`: the stack of transformer layers.
    TransformerLayers,
    /// `similarity_module_type`: scores sessions against items.
    Similarity,
    /// `negative_sampler_type`: draws negatives for sampled losses.
    NegativeSampler,
    /// `data_preparator_type`: turns sessions into batches.
    DataPreparator,
    /// `backbone_type`: encodes sessions and computes logits.
    Backbone,
    /// `lightning_module_type`: the training objective (batch to loss).
    Objective,
    /// `get_val_mask_func`: chooses validation interactions.
    ValMask,
    /// `get_trainer_func`: trainer settings (epochs, early stopping, seed).
    Trainer,
}

impl ComponentKind {
    /// Every kind, in spec order.
    pub const ALL: [ComponentKind; 12] = [
        ComponentKind::ModelPreset,
        ComponentKind::ItemNetBlock,
        ComponentKind::ItemNetConstructor,
        ComponentKind::PositionalEncoding,
        ComponentKind::TransformerLayers,
        ComponentKind::Similarity,
        ComponentKind::NegativeSampler,
        ComponentKind::DataPreparator,
        ComponentKind::Backbone,
        ComponentKind::Objective,
        ComponentKind::ValMask,
        ComponentKind::Trainer,
    ];

    /// The snake_case name used on the command line (`--kind transformer_layers`).
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentKind::ModelPreset => "model",
            ComponentKind::ItemNetBlock => "item_net_block",
            ComponentKind::ItemNetConstructor => "item_net_constructor",
            ComponentKind::PositionalEncoding => "pos_encoding",
            ComponentKind::TransformerLayers => "transformer_layers",
            ComponentKind::Similarity => "similarity",
            ComponentKind::NegativeSampler => "negative_sampler",
            ComponentKind::DataPreparator => "data_preparator",
            ComponentKind::Backbone => "backbone",
            ComponentKind::Objective => "lightning_module",
            ComponentKind::ValMask => "val_mask_func",
            ComponentKind::Trainer => "trainer",
        }
    }

    /// The spec key whose value names a component of this kind.
    pub fn spec_slot(self) -> &'static str {
        match self {
            ComponentKind::ModelPreset => "cls",
            ComponentKind::ItemNetBlock => "item_net_block_types",
            ComponentKind::ItemNetConstructor => "item_net_constructor_type",
            ComponentKind::PositionalEncoding => "pos_encoding_type",
            ComponentKind::TransformerLayers => "transformer_layers_type",
            ComponentKind::Similarity => "similarity_module_type",
            ComponentKind::NegativeSampler => "negative_sampler_type",
            ComponentKind::DataPreparator => "data_preparator_type",
            ComponentKind::Backbone => "backbone_type",
            ComponentKind::Objective => "lightning_module_type",
            ComponentKind::ValMask => "get_val_mask_func",
            ComponentKind::Trainer => "get_trainer_func",
        }
    }

    /// Parses the snake_case name (as printed by [`ComponentKind::as_str`]) or the spec slot.
    pub fn parse(s: &str) -> Option<ComponentKind> {
        ComponentKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s || k.spec_slot() == s)
    }
}

impl fmt::Display for ComponentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
