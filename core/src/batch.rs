//! A batch as produced by a data preparator and consumed by backbones and objectives
//! (RecTools' batch dict: `x`, `y`, `yw`, `negatives`).

use candle_core::Tensor;

/// One batch of sessions.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Input item ids, `[B, L]` u32, left-padded with 0 (PAD).
    pub x: Tensor,
    /// Target item ids, `[B, L]` (train) or `[B, 1]` (validation) u32; 0 means "no target".
    pub y: Tensor,
    /// Target weights, same shape as `y`, f32.
    pub yw: Tensor,
    /// Sampled negatives, `[B, L_y, K]` u32, when the loss needs them.
    pub negatives: Option<Tensor>,
}
