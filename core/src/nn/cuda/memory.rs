//! Peak device memory as the CUDA driver counts it: the high-water marks of the device's default
//! memory pool (where candle's stream-ordered allocations come from) and of the memory CUDA graphs
//! allocate (a captured training step's temporaries, [`super::graph`]). Unlike a sampled
//! `nvidia-smi` reading these are exact, and they can be reset between phases (training, then
//! recommending).

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

/// The device's default memory pool and the device handle, with the context bound.
fn pool(dev: &CudaDevice) -> Result<(sys::CUmemoryPool, sys::CUdevice)> {
    let stream = dev.cuda_stream();
    let ctx = stream.context();
    ctx.bind_to_thread()
        .map_err(|e| Error::Msg(format!("CUDA memory statistics: {e}")))?;
    let cu_dev = ctx.cu_device();
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: `pool` is a valid place for the handle, and `cu_dev` a device of the bound context.
    check("default pool", unsafe {
        sys::cuDeviceGetDefaultMemPool(&mut pool, cu_dev)
    })?;
    Ok((pool, cu_dev))
}

/// The high-water marks since the last [`reset_peak`].
pub fn peak(dev: &CudaDevice) -> Result<DeviceMemory> {
    let (pool, cu_dev) = pool(dev)?;
    let (mut used, mut reserved, mut graph_used, mut graph_reserved) = (0u64, 0u64, 0u64, 0u64);
    // SAFETY: each attribute below is documented as a 64-bit unsigned value (cuuint64_t), and each
    // pointer is to a live u64; `pool` and `cu_dev` come from the driver above.
    unsafe {
        check(
            "pool used",
            sys::cuMemPoolGetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                (&mut used as *mut u64).cast(),
            ),
        )?;
        check(
            "pool reserved",
            sys::cuMemPoolGetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH,
                (&mut reserved as *mut u64).cast(),
            ),
        )?;
        check(
            "graph used",
            sys::cuDeviceGetGraphMemAttribute(
                cu_dev,
                sys::CUgraphMem_attribute::CU_GRAPH_MEM_ATTR_USED_MEM_HIGH,
                (&mut graph_used as *mut u64).cast(),
            ),
        )?;
        check(
            "graph reserved",
            sys::cuDeviceGetGraphMemAttribute(
                cu_dev,
                sys::CUgraphMem_attribute::CU_GRAPH_MEM_ATTR_RESERVED_MEM_HIGH,
                (&mut graph_reserved as *mut u64).cast(),
            ),
        )?;
    }
    Ok(DeviceMemory {
        used_high: used + graph_used,
        reserved_high: reserved + graph_reserved,
    })
}

/// Resets the high-water marks to the memory in use now, so that [`peak`] reports the next
/// phase's.
pub fn reset_peak(dev: &CudaDevice) -> Result<()> {
    let (pool, cu_dev) = pool(dev)?;
    // SAFETY: the driver accepts only 0 for these attributes (a reset to the current value); each
    // pointer is to a live u64.
    unsafe {
        let mut zero = 0u64;
        check(
            "reset pool used",
            sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                (&mut zero as *mut u64).cast(),
            ),
        )?;
        let mut zero = 0u64;
        check(
            "reset pool reserved",
            sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH,
                (&mut zero as *mut u64).cast(),
            ),
        )?;
        let mut zero = 0u64;
        check(
            "reset graph used",
            sys::cuDeviceSetGraphMemAttribute(
                cu_dev,
                sys::CUgraphMem_attribute::CU_GRAPH_MEM_ATTR_USED_MEM_HIGH,
                (&mut zero as *mut u64).cast(),
            ),
        )?;
        let mut zero = 0u64;
        check(
            "reset graph reserved",
            sys::cuDeviceSetGraphMemAttribute(
                cu_dev,
                sys::CUgraphMem_attribute::CU_GRAPH_MEM_ATTR_RESERVED_MEM_HIGH,
                (&mut zero as *mut u64).cast(),
            ),
        )?;
    }
    Ok(())
}
