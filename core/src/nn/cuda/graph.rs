//! The device half of a captured training step ([`crate::nn::capture`]): recording the step's
//! work on the device's stream as one CUDA graph, replaying it, and the device addresses of the
//! buffers the host writes before each replay.
//!
//! Capture runs in cudarc's relaxed mode on the stream candle uses; allocations made while
//! capturing become the graph's own (stream-ordered allocation), so a step whose temporaries are
//! all dropped before the capture ends replays with no allocation. Small constant uploads that
//! candle makes inside ops (layouts, scalars) are served from candle's capture cache, filled by
//! an uncaptured step run with the same shapes first ([`ConstantUploads`]).

use std::{any::Any, sync::Arc};

use candle_core::{
    cuda_backend::{
        cudarc::driver::{result, sys, CudaGraph, CudaStream, DevicePtr},
        CudaDevice,
    },
    Error, Result, Tensor,
};

/// While alive, candle keeps the small host-to-device copies its ops make (at most 4 KiB each)
/// and serves a capture from them; a copy it has not seen fails the capture with an error naming
/// it. Hold one over the uncaptured warm-up step and the capture.
pub struct ConstantUploads {
    _guard: Box<dyn Any>,
}

impl ConstantUploads {
    /// Starts caching on the current thread.
    pub fn enable(dev: &CudaDevice) -> Self {
        ConstantUploads {
            _guard: Box::new(dev.enable_cuda_graph_htod_cache()),
        }
    }
}

/// A recorded step: replaying it runs the same kernels on the same addresses.
pub struct StepGraph {
    graph: CudaGraph,
}

impl std::fmt::Debug for StepGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StepGraph")
    }
}

fn driver(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Msg(format!("CUDA graph {what}: {e}"))
}

/// A recording in progress on a device's stream, from [`begin_capture`] until
/// [`Capture::end`]. Dropped without `end` (an error or a panic inside the step), it ends the
/// recording and throws it away, so the stream never stays in capture mode.
pub struct Capture {
    stream: Arc<CudaStream>,
    ended: bool,
}

/// Starts recording the work queued on `dev`'s stream (nothing runs until a replay).
pub fn begin_capture(dev: &CudaDevice) -> Result<Capture> {
    let stream = dev.cuda_stream();
    // An error cudarc recorded earlier would be returned by the call below without starting.
    stream
        .context()
        .check_err()
        .map_err(|e| driver("capture (an earlier call had failed)", e))?;
    stream
        .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
        .map_err(|e| driver("capture", e))?;
    Ok(Capture {
        stream,
        ended: false,
    })
}

impl Capture {
    /// Ends the recording and prepares it for replay. Call it even when the step failed; the
    /// error then is the step's.
    ///
    /// cudarc records the errors of calls that cannot return one (a free in a `Drop`) and hands
    /// the last back at its next call, before doing anything. One recorded during the capture (a
    /// free the capture refused, which invalidates it) is taken first, so that ending the capture
    /// runs and the error names the capture's failure rather than a later, unrelated op.
    pub fn end(mut self) -> Result<StepGraph> {
        self.ended = true;
        let during = self.stream.context().check_err();
        let ended = self.stream.end_capture(sys::CUgraphInstantiate_flags(0));
        leave_capture(&self.stream);
        let after = self.stream.context().check_err();
        let graph = match (ended, during.and(after)) {
            (Ok(Some(graph)), Ok(())) => graph,
            (Ok(None), Ok(())) => {
                return Err(Error::Msg("CUDA graph capture recorded no work".into()))
            }
            (Ok(_), Err(e)) => return Err(driver("capture (a call during it failed)", e)),
            (Err(e), Ok(())) => return Err(driver("instantiation", e)),
            (Err(e), Err(during)) => {
                return Err(Error::Msg(format!(
                    "CUDA graph instantiation: {e}; during the capture: {during}"
                )))
            }
        };
        graph.upload().map_err(|e| driver("upload", e))?;
        Ok(StepGraph { graph })
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if !self.ended {
            let _ = self.stream.context().check_err();
            leave_capture(&self.stream);
            let _ = self.stream.context().check_err();
        }
    }
}

/// Ends a capture still in progress on `stream` and destroys what it recorded.
fn leave_capture(stream: &CudaStream) {
    let capturing = !matches!(
        stream.capture_status(),
        Ok(sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE)
    );
    if !capturing {
        return;
    }
    // SAFETY: the stream is a live stream of its context (held by the Arc), and ending its
    // capture is what the driver requires before the stream can be used again; the graph it
    // returns (null when the capture was invalidated) is ours and destroyed once, here.
    unsafe {
        if let Ok(graph) = result::stream::end_capture(stream.cu_stream()) {
            if !graph.is_null() {
                let _ = result::graph::destroy(graph);
            }
        }
    }
}

impl StepGraph {
    /// Queues one replay on the stream.
    pub fn replay(&self) -> Result<()> {
        self.graph.launch().map_err(|e| driver("replay", e))
    }
}

/// The device address of the first element of `t`, a contiguous f32 or u32 tensor on a CUDA
/// device: where a captured kernel reads a value the host writes before each replay.
pub fn address(t: &Tensor) -> Result<u64> {
    let (storage, layout) = t.storage_and_layout();
    let (a, _) = layout
        .contiguous_offsets()
        .ok_or_else(|| Error::Msg("device address: the tensor is not contiguous".into()))?;
    let candle_core::Storage::Cuda(c) = &*storage else {
        return Err(Error::Msg(
            "device address: the tensor is not on a CUDA device".into(),
        ));
    };
    let stream = c.device.cuda_stream();
    let base = match t.dtype() {
        candle_core::DType::F32 => c.as_cuda_slice::<f32>()?.device_ptr(&stream).0,
        candle_core::DType::U32 => c.as_cuda_slice::<u32>()?.device_ptr(&stream).0,
        other => {
            return Err(Error::Msg(format!(
                "device address: a {other:?} tensor; expected f32 or u32"
            )))
        }
    };
    Ok(base + (a * 4) as u64)
}
