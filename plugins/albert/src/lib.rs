//! recblocks-albert: ALBERT's two parameter-reduction ideas (Lan et al., 2019) as recblocks
//! components, the way RecTools' transformers customization guide applies them to SASRec and
//! BERT4Rec (`examples/tutorials/transformers_customization_guide.ipynb`, docs/rectools.md §5), with the
//! group semantics of HuggingFace's ALBERT
//! ([`modeling_albert.py`](https://github.com/huggingface/transformers/blob/main/src/transformers/models/albert/modeling_albert.py),
//! docs/rectools.md §8):
//!
//! - [`AlbertSumConstructor`] (item net constructor): factorized embeddings. Item net blocks are
//!   built at a small width `emb_factors`, summed, and projected to `n_factors` by
//!   `item_emb_proj` (HF's `embedding_hidden_mapping_in`).
//! - [`AlbertLayers`] (transformer layers): cross-layer sharing. `n_hidden_groups ×
//!   n_inner_groups` distinct layers are reused over `n_blocks` steps, step `i` running every
//!   inner layer of group `i · n_hidden_groups / n_blocks`.
//!
//! Unlike the guide's code, every allocated layer runs (the guide indexes layers by step and
//! leaves half of them dead), padding is handled as in the wrapped layer type, and the
//! constructor reports `n_factors` as its width. Registered exactly like any third-party plugin.

pub mod constructor;
pub mod layers;

pub use constructor::{AlbertSumConstructor, AlbertSumConstructorKwargs};
pub use layers::{schedule, AlbertLayer, AlbertLayerType, AlbertLayers, AlbertLayersKwargs};

/// This crate's name, as recorded in every registration.
pub const CRATE: &str = env!("CARGO_PKG_NAME");
