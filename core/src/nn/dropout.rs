//! Dropout with masks drawn from the model's seeded stream (candle's `ops::dropout` uses an
//! unseedable generator). Inverted dropout, as torch: kept values are scaled by 1 / (1 − p).
//!
//! Each call takes one 64-bit key from the model's stream; the mask is then a pure function of
//! (key, element index), Philox4x32-10 ([`crate::nn::philox`]): element `i` is kept when its
//! 16-bit draw is below `round((1 − p)·2¹⁶)`. The mask is the same on any thread count, in the
//! generic and the fused blocks (which draw their keys in the generic order), and on a CUDA
//! device, where it is drawn by the kernel that applies it (no mask crosses from the host, and the
//! backward pass draws it again from the key). The keep probability is quantised to 1/65,536
//! (p = 0.2 keeps with probability 0.800003).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

use crate::{
    context::SharedRng,
    nn::{
        capture::{take_key, TapedKey},
        philox::{fill_mask, keep_threshold},
        workspace::Buf,
    },
    Result,
};

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
        let key = self.draw_key()?;
        // Under a slot tape (a CUDA capture) the key is a placeholder and the tape fails the
        // capture; a host mask cannot be replayed.
        let mut mask = Buf::scratch(n);
        fill_mask(key, &mut mask, keep_threshold(self.p), self.scale());
        Some(mask)
    }

    /// The next mask's key, for a mask computed on the host; `None` (and no draw) when `p` is 0.
    /// Keys come from the stream, or from the running [`KeyTape`](crate::nn::capture::KeyTape).
    fn draw_key(&self) -> Option<u64> {
        if !self.is_active() {
            return None;
        }
        Some(match take_key(&self.rng, true) {
            TapedKey::Value(k) => k,
            TapedKey::Slot(_) => 0,
        })
    }

    /// The next mask as its key and parameters, for ops that apply it inside another pass (the
    /// device ops draw it where they apply it); takes one key from the stream, as
    /// [`draw_mask`](Self::draw_mask) does (or from the running tape, which may hand out the
    /// key's device address instead). `None` (and no draw) when `p` is 0.
    pub(crate) fn draw(&self) -> Option<MaskDraw> {
        if !self.is_active() {
            return None;
        }
        let (key, key_slot) = match take_key(&self.rng, false) {
            TapedKey::Value(k) => (k, 0),
            TapedKey::Slot(a) => (0, a),
        };
        Some(MaskDraw {
            key,
            key_slot,
            threshold: keep_threshold(self.p),
            scale: self.scale(),
        })
    }

    /// Zeroes each element with probability `p` and scales the rest by 1 / (1 − p) when `train`;
    /// the identity otherwise.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if !train || !self.is_active() {
            return Ok(x.clone());
        }
        let device_op = x.device().is_cuda() || crate::nn::fused::gpu_composition(x.device());
        if device_op && x.dtype() == candle_core::DType::F32 {
            let Some(draw) = self.draw() else {
                return Ok(x.clone());
            };
            return Ok(x.contiguous()?.apply_op1(MaskOp(draw))?);
        }
        let Some(mask) = self.draw_mask(x.elem_count()) else {
            return Ok(x.clone());
        };
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        Ok(x.mul(&mask)?)
    }
}

/// The mask under `key` of `n` elements: `scale` where element `i`'s draw is below the keep
/// threshold of `p`, else 0.
pub fn mask_from_key(key: u64, n: usize, p: f64, scale: f32) -> Vec<f32> {
    let mut mask = vec![0f32; n];
    fill_mask(key, &mut mask, keep_threshold(p), scale);
    mask
}

/// One dropout mask, as the function of the element index it is ([`crate::nn::philox`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct MaskDraw {
    /// The mask's key.
    pub key: u64,
    /// The device address the key is read from instead, during a captured step (0: none; only
    /// the CUDA kernels read it, and only a slot tape sets it).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub key_slot: u64,
    /// Elements whose 16-bit draw is below this are kept.
    pub threshold: u32,
    /// The value of kept mask elements, 1 / (1 − p).
    pub scale: f32,
}

impl MaskDraw {
    /// The mask of `n` elements.
    pub fn mask(&self, n: usize) -> Vec<f32> {
        let mut m = vec![0f32; n];
        fill_mask(self.key, &mut m, self.threshold, self.scale);
        m
    }
}

/// `x · mask`, outside the graph: the forward pass of a drawn dropout mask and, applied to the
/// output's gradient, its backward pass (a GPU block node runs it among its other ops).
pub(crate) fn apply_mask(x: &Tensor, draw: MaskDraw) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&MaskOp(draw))
}

/// `x · mask(key)` as one op (the device path: the mask is drawn where it is applied); its
/// backward pass applies the same mask, drawn again from the key, to the output gradient.
#[derive(Debug, Clone, Copy)]
struct MaskOp(MaskDraw);

impl CustomOp1 for MaskOp {
    fn name(&self) -> &'static str {
        "dropout-mask"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = crate::nn::cpu_slice::storage_f32(s, l, "dropout: input")?;
        let mut out = vec![0f32; x.len()];
        fill_mask(self.0.key, &mut out, self.0.threshold, self.0.scale);
        for (o, &v) in out.iter_mut().zip(x) {
            *o *= v;
        }
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        crate::nn::cuda::dropout(s, l, self.0)
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(self)?))
    }
}

/// `x · mask + r`, outside the graph, in one op: a block's dropout and residual connection (on a
/// CUDA device one kernel, `rb_dropout_add`). Equal, bit for bit, to
/// `apply_mask(x, draw)? + r`: the product is rounded before the sum, as the two ops round.
pub(crate) fn apply_mask_add(
    x: &Tensor,
    draw: MaskDraw,
    r: &Tensor,
) -> candle_core::Result<Tensor> {
    if x.dims() != r.dims() {
        return Err(candle_core::Error::Msg(format!(
            "dropout with a residual: input {:?} and residual {:?}; expected the same shape",
            x.dims(),
            r.dims()
        )));
    }
    x.contiguous()?
        .apply_op2_no_bwd(&r.contiguous()?, &MaskAddOp(draw))
}

/// [`apply_mask_add`]'s op over `(x, r)`.
struct MaskAddOp(MaskDraw);

impl CustomOp2 for MaskAddOp {
    fn name(&self) -> &'static str {
        "dropout-mask-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = crate::nn::cpu_slice::storage_f32(s1, l1, "dropout: input")?;
        let r = crate::nn::cpu_slice::storage_f32(s2, l2, "dropout: residual")?;
        let mut out = vec![0f32; x.len()];
        fill_mask(self.0.key, &mut out, self.0.threshold, self.0.scale);
        for ((o, &v), &add) in out.iter_mut().zip(x).zip(r) {
            *o = *o * v + add;
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        crate::nn::cuda::dropout_add((s1, l1), (s2, l2), self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

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
    fn the_mask_op_equals_the_drawn_mask_forward_and_backward() -> Result<()> {
        // MaskOp (the device path's op) on the CPU: the same mask as `mask_from_key`, and its
        // backward multiplies the output gradient by that mask again.
        let dev = Device::Cpu;
        let n = 4099;
        let x = candle_core::Var::from_vec(
            (0..n).map(|i| (i as f32 * 0.37).sin()).collect::<Vec<_>>(),
            n,
            &dev,
        )?;
        let op = MaskOp(MaskDraw {
            key: 0xDEC0DE,
            key_slot: 0,
            threshold: keep_threshold(0.2),
            scale: 1.25,
        });
        let y = x.as_tensor().apply_op1(op)?;
        let mask = mask_from_key(0xDEC0DE, n, 0.2, 1.25);
        let xs = x.as_tensor().to_vec1::<f32>()?;
        let want: Vec<f32> = xs.iter().zip(&mask).map(|(a, m)| a * m).collect();
        assert_eq!(y.to_vec1::<f32>()?, want);
        let r = Tensor::from_vec((0..n).map(|i| i as f32).collect::<Vec<_>>(), n, &dev)?;
        let grads = (&y * &r)?.sum_all()?.backward()?;
        let g = grads.get(x.as_tensor()).map(|g| g.to_vec1::<f32>());
        let want_g: Vec<f32> = (0..n).map(|i| i as f32 * mask[i]).collect();
        assert_eq!(g.transpose()?, Some(want_g));
        Ok(())
    }

    #[test]
    fn the_mask_add_op_equals_the_mask_then_the_residual_sum_bit_for_bit() -> Result<()> {
        let dev = Device::Cpu;
        let n = 4099;
        let x = Tensor::from_vec(
            (0..n)
                .map(|i| (i as f32 * 0.37).sin() * 3.1)
                .collect::<Vec<_>>(),
            (n,),
            &dev,
        )?;
        let r = Tensor::from_vec(
            (0..n)
                .map(|i| (i as f32 * 0.11).cos() / 7.0)
                .collect::<Vec<_>>(),
            (n,),
            &dev,
        )?;
        let draw = MaskDraw {
            key: 0xFACE,
            key_slot: 0,
            threshold: keep_threshold(0.3),
            scale: 1.0 / 0.7,
        };
        let fused = apply_mask_add(&x, draw, &r)?.to_vec1::<f32>()?;
        let two_ops = (&r + apply_mask(&x, draw)?)?.to_vec1::<f32>()?;
        assert_eq!(fused, two_ops);
        let dropped = fused
            .iter()
            .zip(r.to_vec1::<f32>()?)
            .filter(|(f, r)| *f == r)
            .count();
        assert!((1000..1500).contains(&dropped), "{dropped} of {n} dropped");
        let short = Tensor::zeros((n - 1,), candle_core::DType::F32, &dev)?;
        assert!(apply_mask_add(&x, draw, &short).is_err());
        Ok(())
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
