//! The output of an autograd node computed before the node exists.
//!
//! The nodes that run their forward pass on detached tensors (`attention_core`, `linear_node`,
//! the chunked catalog loss, `param_node`) compute their output first, then enter candle's graph
//! as a custom op whose forward only hands that output over: as a copy of its storage on a CUDA
//! device (one device-to-device copy), as its values on the CPU (moved when the node was given
//! values, as a fused CPU block's output is).

use std::sync::Mutex;

use candle_core::{CpuStorage, Error, Result, Shape, Tensor};

/// A node's output, handed to candle once by the op's forward.
pub(crate) struct Precomputed {
    what: &'static str,
    out: Mutex<Option<Output>>,
}

/// What a node computed: a tensor, or row-major f32 values of a shape (CPU only).
enum Output {
    Tensor(Tensor),
    Values(Vec<f32>, Shape),
}

impl Precomputed {
    /// `out`, computed for the node `what` (named in errors).
    pub(crate) fn new(what: &'static str, out: Tensor) -> Self {
        Precomputed {
            what,
            out: Mutex::new(Some(Output::Tensor(out))),
        }
    }

    /// `values` of `shape`, computed on the CPU for the node `what`.
    pub(crate) fn from_values(what: &'static str, values: Vec<f32>, shape: Shape) -> Self {
        Precomputed {
            what,
            out: Mutex::new(Some(Output::Values(values, shape))),
        }
    }

    fn take(&self) -> Result<Output> {
        self.out
            .lock()
            .map_err(|_| Error::Msg(format!("{}: poisoned state", self.what)))?
            .take()
            .ok_or_else(|| Error::Msg(format!("{}: output taken twice", self.what)))
    }

    /// The output as CPU storage (its values).
    pub(crate) fn cpu(&self) -> Result<(CpuStorage, Shape)> {
        match self.take()? {
            Output::Tensor(out) => {
                let shape = out.shape().clone();
                Ok((CpuStorage::F32(out.flatten_all()?.to_vec1::<f32>()?), shape))
            }
            Output::Values(values, shape) if values.len() == shape.elem_count() => {
                Ok((CpuStorage::F32(values), shape))
            }
            Output::Values(values, shape) => Err(Error::Msg(format!(
                "{}: {} output values for shape {:?}",
                self.what,
                values.len(),
                shape.dims()
            ))),
        }
    }

    /// The output as CUDA storage (a copy).
    #[cfg(feature = "cuda")]
    pub(crate) fn cuda(&self) -> Result<(candle_core::CudaStorage, Shape)> {
        match self.take()? {
            Output::Tensor(out) => cuda_copy(&out, self.what),
            Output::Values(..) => Err(Error::Msg(format!(
                "{}: the output was computed on the CPU",
                self.what
            ))),
        }
    }
}

/// A copy of `t`'s CUDA storage that holds `t`'s values from its first element in row-major
/// order, with its shape; an error naming `what` if `t` is elsewhere.
///
/// `CudaStorage::try_clone` copies the whole buffer from element 0 whatever the layout, so a view
/// (a `narrow` past the start, a transpose) is first made into a fresh row-major tensor: the
/// output then holds the view's own elements, as the CPU path's values do.
#[cfg(feature = "cuda")]
pub(crate) fn cuda_copy(t: &Tensor, what: &str) -> Result<(candle_core::CudaStorage, Shape)> {
    use candle_core::backend::BackendStorage;
    let laid_out = t.layout().is_contiguous() && t.layout().start_offset() == 0;
    let t = if laid_out {
        t.clone()
    } else {
        t.force_contiguous()?
    };
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cuda(c) => Ok((c.try_clone(layout)?, t.shape().clone())),
        _ => Err(Error::Msg(format!(
            "{what}: the output is not on the CUDA device"
        ))),
    }
}
