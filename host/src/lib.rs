//! recblocks host: assembles models from specs and the registry, reads interaction logs, trains,
//! evaluates, recommends, and saves/loads model artifacts. The `recblocks` binary is a thin CLI
//! over this library. [`loader`] loads plugin libraries at run time; [`sdk`] scaffolds and builds
//! them against the running binary's recblocks-core.

pub mod artifact;
pub mod assembly;
pub mod data;
pub mod device;
pub mod error;
pub mod evaluate;
pub mod loader;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod model_dir;
pub mod output;
pub mod output_file;
pub(crate) mod panic_guard;
pub mod plot;
pub mod ranking;
pub mod recommend;
pub mod rectools_import;
pub mod registry;
pub mod sdk;
pub mod spec_schema;
pub mod threads;
pub mod train;

pub use assembly::{assemble, AssembledModel};
pub use error::{HostError, Result};
pub use model::{Model, TrainData};
pub use registry::builtin_registry;
pub use train::FitOptions;

/// The version of recblocks, recorded in model directories.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
