//! Reusable, differentiable building blocks for transformer recommenders: attention, feed-forwards,
//! norms, dropout, initialisation, masks, and the single transformer blocks ([`layers`]) that
//! layer stacks in plugins reuse.
//!
//! Everything here has a backward pass (candle's fused `LayerNorm` and `softmax_last_dim` do not,
//! see `shared/reference/candle-notes.md`), takes `train` explicitly, and draws randomness from the
//! model's seeded stream.

pub mod attention;
pub mod dropout;
pub mod feed_forward;
pub mod init;
pub mod layer_norm;
pub mod layers;
pub mod linear;
pub mod masks;

pub use attention::MultiHeadAttention;
pub use dropout::Dropout;
pub use feed_forward::{Activation, PointWiseFeedForward, SwigluFeedForward};
pub use layer_norm::LayerNorm;
pub use layers::{PreLNTransformerLayer, SASRecTransformerLayer};
pub use linear::{linear, Linear};
