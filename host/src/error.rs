//! Typed errors of the host library.

use std::path::PathBuf;

use recblocks_core::CoreError;

use crate::data::DataError;

/// Everything the host library can fail with.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// Resolving a spec or building/running a component failed.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// Reading or splitting data failed.
    #[error(transparent)]
    Data(#[from] DataError),
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// A file or directory could not be read or written.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A model directory is missing a file, or a file does not match what the model needs.
    #[error("model directory {}: {message}", .dir.display())]
    Artifact {
        /// The model directory.
        dir: PathBuf,
        /// What is wrong, and what was expected.
        message: String,
    },
    /// A RecTools checkpoint (or fixture) cannot be imported: what was found, and what was
    /// expected.
    #[error("RecTools model {origin}: {message}")]
    RecTools {
        /// The checkpoint file (or other source).
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// The training data cannot train this model.
    #[error("training data: {0}")]
    TrainingData(String),
    /// The loss became NaN or infinite; the weights are those before the failing step.
    #[error("the training loss became {value} at epoch {epoch}, batch {batch}{origin}; training stopped and the last good weights were kept (try a lower lr; or, if the data has weight-0 interactions, a batch whose targets all weigh 0 makes the softmax loss 0/0 = NaN)")]
    NonFiniteLoss {
        /// 1-based epoch.
        epoch: usize,
        /// 1-based batch within the epoch.
        batch: usize,
        /// The loss value.
        value: f32,
        /// Where the first non-finite values appeared, when a fused block saw them appear
        /// (`"; first: the SASRec block turned ..."`), else empty.
        origin: String,
    },
    /// Anything else, with a message that says what and where.
    #[error("{0}")]
    Other(String),
}

/// Result alias of the host library.
pub type Result<T, E = HostError> = std::result::Result<T, E>;

impl HostError {
    /// An I/O error with its path.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        HostError::Io {
            path: path.into(),
            source,
        }
    }
}
