//! Dropout with masks drawn from the model's seeded stream (candle's `ops::dropout` uses an
//! unseedable generator). Inverted dropout, as torch: kept values are scaled by 1 / (1 − p).
//!
//! Each call takes one 64-bit key from the model's stream; the mask is then a pure function of
//! (key, element index): element `i` is kept when the `i`-th 16-bit word of the ChaCha8 keystream
//! under that key is below `round((1 − p)·2¹⁶)`. ChaCha is counter-based, so the mask is filled in
//! parallel blocks that seek to their own word position, and it is the same on any thread count,
//! in the generic and the fused blocks (which draw their keys in the generic order), and on any
//! device that implements the same function. The keep probability is quantised to 1/65,536
//! (p = 0.2 keeps with probability 0.800003).

use candle_core::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::{context::SharedRng, nn::workspace::Buf, Result};

/// Elements per parallel block of a mask (a multiple of 2: one 32-bit word gives two draws).
const BLOCK: usize = 1 << 15;

/// Dropout with probability `p`; acts only when `train` is true.
#[derive(Debug, Clone)]
pub struct Dropout {
    p: f64,
    rng: SharedRng,
}

impl Dropout {
    /// Dropout with probability `p` drawing from `rng`.
    pub fn new(p: f64, rng: SharedRng) -> Self {
        Dropout { p, rng }
    }

    /// The drop probability.
    pub fn p(&self) -> f64 {
        self.p
    }

    /// Whether a training-mode call changes anything (`p > 0`).
    pub fn is_active(&self) -> bool {
        self.p > 0.0
    }

    /// The scale of kept values, 1 / (1 − p) (1 without dropout).
    pub fn scale(&self) -> f32 {
        (1.0 / (1.0 - self.p)) as f32
    }

    /// Draws the next mask of `n` elements (0 or [`scale`](Self::scale)), taking one key from the
    /// stream; `None` (and no draw) when `p` is 0. [`forward_t`](Self::forward_t) multiplies by
    /// exactly this mask, so a fused block that draws its masks in the same order reproduces it.
    pub fn draw_mask(&self, n: usize) -> Option<Vec<f32>> {
        self.draw_mask_buf(n).map(Buf::into_vec)
    }

    /// [`draw_mask`](Self::draw_mask) into a workspace buffer (the fused blocks keep their masks
    /// for the backward pass, and the buffer goes back to the workspace after it).
    pub(crate) fn draw_mask_buf(&self, n: usize) -> Option<Buf> {
        if !self.is_active() {
            return None;
        }
        let key = self.rng.lock().random::<u64>();
        let mut mask = Buf::scratch(n);
        fill_mask(key, &mut mask, self.p, self.scale());
        Some(mask)
    }

    /// Zeroes each element with probability `p` and scales the rest by 1 / (1 − p) when `train`;
    /// the identity otherwise.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if !train {
            return Ok(x.clone());
        }
        let Some(mask) = self.draw_mask(x.elem_count()) else {
            return Ok(x.clone());
        };
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        Ok(x.mul(&mask)?)
    }
}

/// The keep threshold over 16-bit draws: round((1 − p)·65,536), at most 65,536.
fn keep_threshold(p: f64) -> u32 {
    ((1.0 - p.clamp(0.0, 1.0)) * 65536.0).round() as u32
}

/// The mask of `n` elements under `key`: element `i` is `scale` when the `i`-th 16-bit draw is
/// below the keep threshold (low half of each 32-bit keystream word first), else 0.
pub fn mask_from_key(key: u64, n: usize, p: f64, scale: f32) -> Vec<f32> {
    let mut mask = vec![0f32; n];
    fill_mask(key, &mut mask, p, scale);
    mask
}

/// [`mask_from_key`] into `mask` (every element is written).
fn fill_mask(key: u64, mask: &mut [f32], p: f64, scale: f32) {
    let threshold = keep_threshold(p);
    mask.par_chunks_mut(BLOCK)
        .enumerate()
        .for_each(|(block, out)| {
            let mut rng = ChaCha8Rng::seed_from_u64(key);
            // Word positions count 32-bit words; each word gives two draws, its low half first
            // (the keystream's bytes read as little-endian u16).
            rng.set_word_pos((block * BLOCK / 2) as u128);
            // Draws in pieces of a whole number of keystream words (an even count of u16), so
            // that consecutive fills continue the keystream exactly.
            let mut draws = [0u16; DRAWS];
            for out in out.chunks_mut(DRAWS) {
                let draws = &mut draws[..out.len()];
                rng.fill(draws);
                threshold_pass(out, draws, threshold, scale);
            }
        });
}

/// 16-bit draws per keystream fill (even: whole 32-bit words).
const DRAWS: usize = 2048;

/// `out[i] = scale` where `draws[i] < threshold`, else 0, compiled for the CPU's best SIMD level
/// (pulp's run-time dispatch).
fn threshold_pass(out: &mut [f32], draws: &[u16], threshold: u32, scale: f32) {
    pulp::Arch::new().dispatch(
        #[inline(always)]
        || {
            for (o, &d) in out.iter_mut().zip(draws) {
                *o = if u32::from(d) < threshold { scale } else { 0.0 };
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::RngCore;

    #[test]
    fn eval_is_identity_and_train_scales_kept_values() -> Result<()> {
        let x = Tensor::ones((1000,), candle_core::DType::F32, &Device::Cpu)?;
        let d = Dropout::new(0.25, SharedRng::new(1));
        assert_eq!(d.forward_t(&x, false)?.to_vec1::<f32>()?, vec![1f32; 1000]);
        let y = d.forward_t(&x, true)?.to_vec1::<f32>()?;
        assert!(y
            .iter()
            .all(|v| *v == 0.0 || (*v - 1.0 / 0.75).abs() < 1e-6));
        let dropped = y.iter().filter(|v| **v == 0.0).count();
        assert!(
            (180..320).contains(&dropped),
            "dropped {dropped} of 1000 at p = 0.25"
        );
        Ok(())
    }

    #[test]
    fn same_seed_same_mask() -> Result<()> {
        let x = Tensor::ones((64,), candle_core::DType::F32, &Device::Cpu)?;
        let a = Dropout::new(0.5, SharedRng::new(7)).forward_t(&x, true)?;
        let b = Dropout::new(0.5, SharedRng::new(7)).forward_t(&x, true)?;
        assert_eq!(a.to_vec1::<f32>()?, b.to_vec1::<f32>()?);
        Ok(())
    }

    #[test]
    fn a_mask_is_the_keystream_compared_with_the_threshold_across_blocks() {
        // Rebuild the mask from one sequential keystream: the parallel blocks must seek exactly.
        let (key, n, p) = (0xDEC0DE, 3 * BLOCK + 5, 0.2);
        let mask = mask_from_key(key, n, p, 1.25);
        let mut rng = ChaCha8Rng::seed_from_u64(key);
        let t = keep_threshold(p);
        assert_eq!(t, 52429);
        for i in (0..n).step_by(2) {
            let w = rng.next_u32();
            for (j, d) in [(i, w & 0xFFFF), (i + 1, w >> 16)] {
                if j < n {
                    assert_eq!(mask[j], if d < t { 1.25 } else { 0.0 }, "element {j}");
                }
            }
        }
        let kept = mask.iter().filter(|&&m| m > 0.0).count() as f64 / n as f64;
        assert!((kept - 0.8).abs() < 0.01, "kept fraction {kept}");
    }

    #[test]
    fn p_zero_draws_nothing_and_p_one_drops_everything() {
        let rng = SharedRng::new(3);
        assert!(Dropout::new(0.0, rng.clone()).draw_mask(10).is_none());
        let before = rng.state();
        assert!(Dropout::new(0.0, rng.clone()).draw_mask(10).is_none());
        assert_eq!(rng.state(), before, "p = 0 must not advance the stream");
        assert!(mask_from_key(1, 100, 1.0, 0.0).iter().all(|&m| m == 0.0));
    }
}
