//! Where a model trains: `--device cpu` (default) or `--device cuda[:N]`.
//!
//! CUDA goes through candle's `cuda` feature and core's CUDA kernels, which this crate's `cuda`
//! feature turns on (off by default: it needs the CUDA toolkit to build). The models' code is the
//! same on every device; the ops they call take their CUDA forms on a GPU (`docs/gpu.md`). A CUDA
//! device is set up for training's allocations as it opens (`docs/gpu.md`, "Allocations").

use std::{fmt, str::FromStr};

use candle_core::Device;

use crate::{HostError, Result};

/// A device named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// The CPU (threads from `--threads`).
    #[default]
    Cpu,
    /// A CUDA GPU by ordinal.
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = HostError;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            HostError::Other(format!(
                "unknown device `{s}`; expected `cpu`, `cuda` or `cuda:N` (N a GPU ordinal)"
            ))
        };
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            other => match other.strip_prefix("cuda:") {
                Some(n) => n.parse().map(DeviceSpec::Cuda).map_err(|_| bad()),
                None => Err(bad()),
            },
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// Opens the device; a CUDA device in a build without the `cuda` feature is an error that
    /// says how to rebuild.
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(n) => {
                if !cfg!(feature = "cuda") {
                    return Err(HostError::Other(format!(
                        "--device {self}: this recblocks was built without CUDA; rebuild with \
                         `cargo build --release -p recblocks --features cuda` (needs the CUDA \
                         toolkit)"
                    )));
                }
                let dev = Device::new_cuda(n)
                    .map_err(|e| HostError::Other(format!("cannot open --device {self}: {e}")))?;
                prepare_allocations(&dev).map_err(|e| {
                    HostError::Other(format!("--device {self}: setting up allocations: {e}"))
                })?;
                Ok(dev)
            }
        }
    }
}

/// Sets a CUDA device's allocations up for training, before any tensor is made on it: no
/// per-buffer CUDA events and a memory pool that keeps its memory between steps
/// (`recblocks_core::nn::cuda::allocator`; `RECBLOCKS_CUDA_ALLOC=driver` keeps the defaults).
fn prepare_allocations(dev: &Device) -> candle_core::Result<()> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = dev {
        let setup = recblocks_core::nn::cuda::allocator::prepare(cuda)?;
        tracing::debug!(?setup, "CUDA allocations");
    }
    let _ = dev;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_cuda_ordinals() {
        assert_eq!("cpu".parse::<DeviceSpec>().ok(), Some(DeviceSpec::Cpu));
        assert_eq!("CUDA".parse::<DeviceSpec>().ok(), Some(DeviceSpec::Cuda(0)));
        assert_eq!(
            "cuda:2".parse::<DeviceSpec>().ok(),
            Some(DeviceSpec::Cuda(2))
        );
        for bad in ["gpu", "cuda:", "cuda:x", "metal"] {
            let err = bad.parse::<DeviceSpec>().err().map(|e| e.to_string());
            assert!(
                err.as_deref().is_some_and(|m| m.contains("expected `cpu`")),
                "{bad}: {err:?}"
            );
        }
        assert_eq!(DeviceSpec::Cuda(1).to_string(), "cuda:1");
    }

    #[test]
    fn cuda_without_the_feature_says_how_to_rebuild() {
        if cfg!(feature = "cuda") {
            return;
        }
        let err = DeviceSpec::Cuda(0).open().err().map(|e| e.to_string());
        assert!(err.is_some_and(|m| m.contains("--features cuda")));
        assert!(DeviceSpec::Cpu.open().is_ok());
    }
}
