//! Reusable, differentiable building blocks for transformer recommenders: attention, feed-forwards,
//! norms, dropout, initialisation, masks, and the single transformer blocks ([`blocks`]) that
//! layer stacks in plugins reuse.
//!
//! Everything here has a backward pass (candle's fused `LayerNorm` and `softmax_last_dim` do not,
//! see `docs/candle.md`), takes `train` explicitly, and draws randomness from the
//! model's seeded stream. The hot ops (linear bias, layer norm, attention softmax, catalog
//! cross-entropy) are fused CPU kernels with their own backward, each tested against the composed
//! candle ops it replaces.

pub(crate) mod activation_dropout;
pub mod attention;
pub(crate) mod attention_core;
pub(crate) mod attention_weights;
pub(crate) mod block_node;
pub mod blocks;
pub mod capture;
pub mod catalog_softmax;
pub(crate) mod column_sum;
pub(crate) mod cpu_slice;
pub mod cross_entropy;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod dropout;
pub(crate) mod fast_exp;
pub mod feed_forward;
pub mod fused;
pub mod gather_dot;
pub mod gather_rows;
pub mod host_targets;
pub mod init;
pub mod layer_norm;
pub mod linear;
pub(crate) mod linear_node;
pub mod masks;
pub mod padding_row;
pub mod param_grads;
pub(crate) mod param_node;
pub mod philox;
pub mod position_rows;
pub(crate) mod precomputed;
pub mod softmax;
pub mod workspace;

pub use attention::MultiHeadAttention;
pub use blocks::{PreLNTransformerLayer, SASRecTransformerLayer};
pub use catalog_softmax::catalog_softmax_loss;
pub use cross_entropy::softmax_cross_entropy_ignore_0;
pub use dropout::Dropout;
pub use feed_forward::{Activation, PointWiseFeedForward, SwigluFeedForward};
pub use gather_dot::gather_dot;
pub use gather_rows::{gather_rows, scatter_add_rows};
pub use layer_norm::LayerNorm;
pub use linear::{linear, Linear};
pub use param_grads::ParamGradScope;
pub use position_rows::{add_position_rows, PositionRows};
