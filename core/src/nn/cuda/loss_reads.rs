//! Reading a training step's loss on the host without waiting for the work queued after it.
//!
//! A read of a device value (`to_vec1`, `to_scalar`) is a copy into pageable host memory, which
//! waits until the stream has done everything queued before it. A trainer that reads step `k`'s
//! loss after queueing step `k + 1` (so that the GPU has work while the host queues the next
//! step) would then wait for step `k + 1` as well. Here the copy goes into page-locked host
//! memory as soon as step `k` is queued, and an event recorded after it tells the host when that
//! copy, and so step `k`, is done: waiting for it leaves step `k + 1` running.

use candle_core::{
    cuda_backend::{
        cudarc::driver::{sys, CudaEvent, CudaStream, PinnedHostSlice},
        CudaDevice,
    },
    DType, Error, Result, Storage, Tensor,
};
use std::sync::Arc;

/// Slots that losses are copied into: a copy may be in flight in one while the host reads the
/// other.
const SLOTS: usize = 2;

/// Page-locked slots for losses copied off the device, used in turn, each with the event
/// recorded after the last copy into it.
///
/// The events are our own: cudarc records a page-locked buffer's own event only when its context
/// has more than one stream (candle's has one), so waiting on that event would not wait for the
/// copy.
pub struct LossReads {
    stream: Arc<CudaStream>,
    slots: Vec<(PinnedHostSlice<f32>, CudaEvent)>,
    next: usize,
}

/// A loss copy queued by [`LossReads::queue`]; [`LossReads::take`] waits for it.
#[derive(Debug)]
pub struct QueuedLoss {
    slot: usize,
    /// The slot's use count when this copy was queued (a later copy into the slot would
    /// overwrite it).
    generation: u64,
}

fn driver(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Msg(format!("loss read: {what}: {e}"))
}

impl Drop for LossReads {
    /// Waits for every copy in flight before the page-locked memory is freed (a run that stops
    /// on an error may leave one).
    ///
    /// cudarc's calls first hand back an error recorded earlier in the context (a run that
    /// stops on an error may have one) and return without waiting: that error is set aside while
    /// the context is bound and the events are waited for through the driver, then put back.
    fn drop(&mut self) {
        let ctx = self.stream.context();
        let earlier = ctx.check_err();
        let bound = ctx.bind_to_thread();
        for (_, done) in &self.slots {
            // SAFETY: `done` is a live event of this context, owned by the slot until after this
            // loop; waiting for an event never recorded returns at once. A failure leaves
            // nothing to do here but to free the slot.
            let _ = unsafe { sys::cuEventSynchronize(done.cu_event()) };
        }
        ctx.record_err(bound);
        ctx.record_err(earlier);
    }
}

impl std::fmt::Debug for LossReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LossReads")
            .field("next", &self.next)
            .finish()
    }
}

impl LossReads {
    /// Slots for `dev`'s stream (the calling thread's: candle queues on the per-thread default
    /// stream, so use it from the thread that trains).
    pub fn new(dev: &CudaDevice) -> Result<Self> {
        let stream = dev.cuda_stream();
        let ctx = stream.context().clone();
        let slots = (0..SLOTS)
            .map(|_| {
                // SAFETY: the memory is uninitialised; a slot is read only by `take`, after the
                // copy that `queue` made into it is done (the slot's event), and that copy writes
                // the slot's one value.
                let slot = unsafe { ctx.alloc_pinned_with_flags::<f32>(1, 0) }
                    .map_err(|e| driver("page-locked memory", e))?;
                // No timing and no blocking sync: the host spins on it, for the least delay.
                let done = ctx
                    .new_event(Some(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING))
                    .map_err(|e| driver("event", e))?;
                Ok((slot, done))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(LossReads {
            stream,
            slots,
            next: 0,
        })
    }

    /// Queues a copy of `loss` (one f32 value on the device) into the next slot and returns its
    /// handle. The copy runs after the work queued so far; nothing waits for it here.
    pub fn queue(&mut self, loss: &Tensor) -> Result<QueuedLoss> {
        if loss.elem_count() != 1 || loss.dtype() != DType::F32 {
            return Err(Error::Msg(format!(
                "loss read: expected one f32 value, got {:?} {:?}",
                loss.dtype(),
                loss.shape()
            )));
        }
        let (storage, layout) = loss.storage_and_layout();
        let Storage::Cuda(c) = &*storage else {
            return Err(Error::Msg(
                "loss read: the loss is not on a CUDA device".into(),
            ));
        };
        let at = layout.start_offset();
        let src = c.as_cuda_slice::<f32>()?.slice(at..at + 1);
        let slot = self.next % SLOTS;
        let (buffer, done) = &mut self.slots[slot];
        // After the slot's last copy in stream order, so no wait is needed before it; the host
        // read that copy's value before queueing this one (`take` comes first, or the value was
        // dropped).
        self.stream
            .memcpy_dtoh(&src, buffer)
            .map_err(|e| driver("copy", e))?;
        done.record(&self.stream).map_err(|e| driver("event", e))?;
        let queued = QueuedLoss {
            slot,
            generation: self.next as u64,
        };
        self.next += 1;
        Ok(queued)
    }

    /// Waits until the copy of `queued` is done and returns the loss it copied. Fails if more
    /// than one copy was queued after it (its slot has been written again).
    pub fn take(&self, queued: QueuedLoss) -> Result<f32> {
        if (self.next as u64).saturating_sub(queued.generation) > SLOTS as u64 {
            return Err(Error::Msg(format!(
                "loss read: copy {} was overwritten ({} copies queued since)",
                queued.generation,
                self.next as u64 - queued.generation - 1
            )));
        }
        let (buffer, done) = &self.slots[queued.slot];
        done.synchronize().map_err(|e| driver("wait", e))?;
        let values = buffer.as_slice().map_err(|e| driver("read", e))?;
        values
            .first()
            .copied()
            .ok_or_else(|| Error::Msg("loss read: an empty slot".into()))
    }
}
