//! One object-safe trait per component kind, and the signature of each kind's build fn.
//!
//! Train/eval is always an explicit argument (`train: bool`); there are no hidden mode flags.

pub mod backbone;
pub mod data_preparator;
pub mod item_net;
pub mod model_preset;
pub mod negative_sampler;
pub mod objective;
pub mod pos_encoding;
pub mod similarity;
pub mod trainer;
pub mod transformer_layers;
pub mod val_mask;

pub use backbone::{Backbone, BackboneParts};
pub use data_preparator::{DataPreparator, SessionRef};
pub use item_net::{ItemNetBlock, ItemNetConstructor};
pub use model_preset::ModelPreset;
pub use negative_sampler::NegativeSampler;
pub use objective::Objective;
pub use pos_encoding::PositionalEncoding;
pub use similarity::{Distance, Similarity};
pub use trainer::TrainerSettings;
pub use transformer_layers::{last_position, AttentionMasks, TransformerLayers};
pub use val_mask::InteractionsView;
