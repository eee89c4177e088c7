//! Peak device memory as the CUDA driver counts it: the high-water marks of the device's current
//! memory pool (where candle's stream-ordered allocations come from; the default pool unless
//! something in the process set another) and of the memory CUDA graphs allocate (a captured training step's temporaries, [`super::graph`]). Unlike a sampled
//! `nvidia-smi` reading these are exact, and they can be reset between phases (training, then
//! recommending). Also the pool's release threshold, which [`super::allocator`] raises.

use candle_core::{
    cuda_backend::{cudarc::driver::sys, CudaDevice},
    Error, Result,
};

/// High-water marks of device memory, in bytes, since the last [`reset_peak`] (or the start).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeviceMemory {
    /// Memory in use by allocations at its highest (the pool's and the graphs' added).
    pub used_high: u64,
    /// Memory the pools held from the device at their highest (what `nvidia-smi` shows of them).
    pub reserved_high: u64,
}

fn check(what: &str, r: sys::CUresult) -> Result<()> {
    if r == sys::CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(Error::Msg(format!("CUDA memory statistics: {what}: {r:?}")))
    }
}

/// The device's current memory pool (the one `cuMemAllocAsync` allocates from) and the device
/// handle, with the context bound.
fn pool(dev: &CudaDevice) -> Result<(sys::CUmemoryPool, sys::CUdevice)> {
    let stream = dev.cuda_stream();
    let ctx = stream.context();
    ctx.bind_to_thread()
        .map_err(|e| Error::Msg(format!("CUDA memory statistics: {e}")))?;
    let cu_dev = ctx.cu_device();
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: `pool` is a valid place for the handle, and `cu_dev` a device of the bound context.
    check("current pool", unsafe {
        sys::cuDeviceGetMemPool(&mut pool, cu_dev)
    })?;
    Ok((pool, cu_dev))
}

/// One 64-bit attribute through `call`, which hands the driver a pointer to it: read (the driver
/// fills it) or reset (the driver takes the 0 there).
fn attribute(what: &str, call: impl FnOnce(*mut std::ffi::c_void) -> sys::CUresult) -> Result<u64> {
    let mut value = 0u64;
    check(what, call((&mut value as *mut u64).cast()))?;
    Ok(value)
}

/// The pool's and the graphs' used and reserved high-water marks: read, or (`reset`) set back to
/// the memory in use now (the driver accepts only 0 for a reset). Returns the values read, or 0s.
fn marks(dev: &CudaDevice, reset: bool) -> Result<DeviceMemory> {
    use sys::{CUgraphMem_attribute as G, CUmemPool_attribute as P};
    let (pool, cu_dev) = pool(dev)?;
    let on_pool = |what: &str, attr: P| {
        attribute(what, |v| {
            // SAFETY: the attribute is a 64-bit unsigned value (cuuint64_t) and `v` points to a
            // live u64; `pool` is the device's pool, from the driver.
            unsafe {
                if reset {
                    sys::cuMemPoolSetAttribute(pool, attr, v)
                } else {
                    sys::cuMemPoolGetAttribute(pool, attr, v)
                }
            }
        })
    };
    let on_graphs = |what: &str, attr: G| {
        attribute(what, |v| {
            // SAFETY: as above; `cu_dev` is the bound context's device.
            unsafe {
                if reset {
                    sys::cuDeviceSetGraphMemAttribute(cu_dev, attr, v)
                } else {
                    sys::cuDeviceGetGraphMemAttribute(cu_dev, attr, v)
                }
            }
        })
    };
    let used = on_pool("pool used", P::CU_MEMPOOL_ATTR_USED_MEM_HIGH)?
        + on_graphs("graph used", G::CU_GRAPH_MEM_ATTR_USED_MEM_HIGH)?;
    let reserved = on_pool("pool reserved", P::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH)?
        + on_graphs("graph reserved", G::CU_GRAPH_MEM_ATTR_RESERVED_MEM_HIGH)?;
    Ok(DeviceMemory {
        used_high: used,
        reserved_high: reserved,
    })
}

/// The high-water marks since the last [`reset_peak`].
pub fn peak(dev: &CudaDevice) -> Result<DeviceMemory> {
    marks(dev, false)
}

/// Resets the high-water marks to the memory in use now, so that [`peak`] reports the next
/// phase's. The memory the pool holds beyond what is in use (all of it kept when
/// [`super::allocator::prepare`] raised the release threshold) goes back to the device first, after
/// the work queued so far, so the next phase's reserved peak is its own.
pub fn reset_peak(dev: &CudaDevice) -> Result<()> {
    give_back_unused(dev)?;
    marks(dev, true).map(|_| ())
}

/// Once the work queued on this thread's stream is done, gives the device back the memory the
/// pool holds beyond what allocations use (all of it kept when [`super::allocator::prepare`]
/// raised the release threshold), and the graph memory no live CUDA graph uses (a dropped
/// captured step's, which the driver otherwise keeps until a trim): before a new phase, and
/// before a CUDA graph is captured, whose allocations come from the device's graph memory
/// instead. A device without memory pools has nothing to give back.
pub fn give_back_unused(dev: &CudaDevice) -> Result<()> {
    let stream = dev.cuda_stream();
    stream
        .synchronize()
        .map_err(|e| Error::Msg(format!("CUDA memory statistics: synchronize: {e}")))?;
    if !stream.context().has_async_alloc() {
        return Ok(());
    }
    let (pool, cu_dev) = pool(dev)?;
    // SAFETY: `pool` is the device's pool, from the driver; trimming releases only memory that no
    // allocation uses (the driver keeps what backs an allocation or a free not yet done).
    check("trim", unsafe { sys::cuMemPoolTrimTo(pool, 0) })?;
    // SAFETY: `cu_dev` is the bound context's device; the driver frees only graph memory that no
    // live graph's allocation holds, after the work queued on it (synchronised above).
    check("graph memory trim", unsafe {
        sys::cuDeviceGraphMemTrim(cu_dev)
    })
}

/// Sets how many reserved bytes the device's pool keeps at a synchronisation before it
/// returns memory to the operating system (the driver's default: 0).
pub(crate) fn set_release_threshold(dev: &CudaDevice, bytes: u64) -> Result<()> {
    let (pool, _) = pool(dev)?;
    attribute("release threshold", |v| {
        // SAFETY: the attribute is a 64-bit unsigned value (cuuint64_t) and `v` points to a live
        // u64 holding `bytes`; `pool` is the device's pool, from the driver.
        unsafe {
            v.cast::<u64>().write(bytes);
            sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                v,
            )
        }
    })
    .map(|_| ())
}

/// The device's pool's release threshold, in bytes.
pub fn release_threshold(dev: &CudaDevice) -> Result<u64> {
    pool_value(
        dev,
        "release threshold",
        sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
    )
}

/// The memory the device's pool holds from the device now, in bytes.
pub fn reserved_now(dev: &CudaDevice) -> Result<u64> {
    pool_value(
        dev,
        "pool reserved now",
        sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT,
    )
}

/// One 64-bit attribute of the device's pool.
fn pool_value(dev: &CudaDevice, what: &str, attr: sys::CUmemPool_attribute) -> Result<u64> {
    let (pool, _) = pool(dev)?;
    attribute(what, |v| {
        // SAFETY: the attributes read here are 64-bit unsigned values (cuuint64_t), which the
        // driver writes into `v`, a live u64; `pool` is the device's pool, from the driver.
        unsafe { sys::cuMemPoolGetAttribute(pool, attr, v) }
    })
}
