//! recblocks-rectools: RecTools' standard SASRec and BERT4Rec components, under RecTools' class
//! names (and dotted paths as aliases), registered exactly as any third-party plugin registers.
//!
//! Ports `rectools/models/nn/item_net.py` and `rectools/models/nn/transformers/*.py`
//! (RecTools 0.17–0.19); the exact math is in `docs/rectools.md` §2–3.
#![recursion_limit = "256"]

pub mod backbone;
pub mod data_preparator;
pub mod item_net;
pub mod lightning;
pub mod negative_sampler;
pub mod pos_encoding;
pub mod presets;
pub mod similarity;
#[cfg(test)]
mod test_util;
pub mod trainer;
pub mod transformer_layers;
pub mod val_mask;

/// This crate's name, as recorded in every registration.
pub const CRATE: &str = env!("CARGO_PKG_NAME");
