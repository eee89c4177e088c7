//! How a training device's allocations are set up before the first tensor is made on it.
//!
//! candle's CUDA backend allocates every tensor from the device's default stream-ordered memory
//! pool (`cuMemAllocAsync`), through cudarc, and frees it when the tensor is dropped. An
//! uncaptured training step makes a few hundred such allocations. Two defaults cost host time on
//! each of them:
//!
//! - **Events.** cudarc creates two CUDA events with every buffer and destroys them with it, so
//!   that it can order a buffer's uses across streams once its context has more than one stream
//!   (["event tracking"](https://docs.rs/cudarc/latest/cudarc/driver/safe/struct.CudaContext.html)).
//!   candle puts each thread's work on that thread's default stream and never creates another, so
//!   the context never has more than one and the events are never recorded or waited on; their
//!   creation and destruction (a few microseconds each: PyTorch measured ~2.5 µs, and pools its
//!   own) is all they cost.
//! - **The pool's release threshold.** By default (threshold 0) the pool gives every byte no
//!   allocation uses back to the operating system at each synchronisation, and a training step
//!   synchronises at least once (to read its loss). The next step's allocations then map their
//!   memory from the OS again, which the CUDA programming guide calls expensive
//!   ([stream-ordered allocator](https://docs.nvidia.com/cuda/cuda-programming-guide/04-special-topics/stream-ordered-memory-allocation.html)).
//!   A threshold of `u64::MAX` keeps what the pool has reserved (at most the run's peak), as
//!   PyTorch's caching allocator does.
//!
//! [`prepare`] turns both off for a device; `recblocks` calls it when it opens `--device cuda`.
//! `RECBLOCKS_CUDA_ALLOC=driver` leaves cudarc's and the driver's defaults, a baseline to time
//! against (stage `alloc` of `bench/gpu/run.sh`). [`super::memory::reset_peak`] gives the kept
//! memory back between phases, so each phase's reserved peak is its own.

use candle_core::{cuda_backend::CudaDevice, Result};

use super::memory;

/// What [`prepare`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocatorSetup {
    /// Buffers made from now on carry no events, and the pool keeps its memory.
    Kept,
    /// `RECBLOCKS_CUDA_ALLOC=driver`: cudarc's and the driver's defaults, unchanged.
    DriverDefaults,
    /// The device's context already has more than one stream, whose buffers' uses the events
    /// order: they stay on. The pool keeps its memory.
    EventsKept,
    /// The device has no stream-ordered memory pools (cudarc then allocates with `cuMemAlloc`):
    /// there is no pool to keep memory in. Buffers carry no events.
    NoPool,
}

/// Whether `RECBLOCKS_CUDA_ALLOC=driver` asks for cudarc's and the driver's defaults.
pub fn driver_defaults_requested() -> bool {
    std::env::var("RECBLOCKS_CUDA_ALLOC").is_ok_and(|v| v == "driver")
}

/// Sets `dev` up for training (see the module's comment): no per-buffer events where they would
/// never be used, and a memory pool that keeps the memory it has reserved. Call it right after
/// opening the device: buffers made before keep their events.
pub fn prepare(dev: &CudaDevice) -> Result<AllocatorSetup> {
    if driver_defaults_requested() {
        return Ok(AllocatorSetup::DriverDefaults);
    }
    let ctx = dev.cuda_stream().context().clone();
    let pools = ctx.has_async_alloc();
    if pools {
        memory::set_release_threshold(dev, u64::MAX)?;
    }
    if ctx.is_in_multi_stream_mode() {
        return Ok(AllocatorSetup::EventsKept);
    }
    // SAFETY: cudarc asks that, without events, no buffer is freed or read on one stream before
    // work on another stream that uses it is done, and none is written by two streams at once.
    // The context has a single stream object (checked above: no `new_stream`/`fork`), the handle
    // of the per-thread default stream, and recblocks creates no other. Work from two threads
    // does go to two per-thread streams: the batch collator's uploads, which it synchronises
    // before it hands the batch over; everything else runs on the training thread. Until a
    // context has a second stream object cudarc neither records nor waits on the events, so
    // turning them off changes no ordering: it only stops creating them.
    unsafe { dev.disable_event_tracking() };
    Ok(if pools {
        AllocatorSetup::Kept
    } else {
        AllocatorSetup::NoPool
    })
}
