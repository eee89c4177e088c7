//! recblocks-core: what every recblocks component and plugin builds on.
//!
//! - [`components`]: one object-safe trait per component kind (item net block, item net
//!   constructor, positional encoding, transformer layers, similarity, negative sampler, data
//!   preparator, backbone, training objective, validation mask function, trainer, model preset),
//!   with the build-fn signature of each kind.
//! - [`registry`]: registration structs collected with `inventory`, and the [`Registry`] built
//!   from them once, which detects duplicates and resolves RecTools' class names and dotted paths.
//! - [`spec`]: the serde schema of a model spec, compatible with RecTools'
//!   `get_config(simple_types=True)` output, and its component slots; [`resolve`]: how what the
//!   user wrote ([`SpecInput`]) becomes a [`ModelSpec`] through the registry.
//! - [`nn`]: reusable, differentiable building blocks (multi-head attention with RecTools' masks,
//!   feed-forwards, layer norm, seeded dropout and initialisation, and the SASRec and pre-LN
//!   transformer blocks that layer stacks reuse).
//! - [`register!`]: how a crate adds a component to the registry.
//! - [`declaration`]: the declaration a run-time plugin library exports, the host's compatibility
//!   check, and the [`export_plugin!`] macro.
//!
//! Core has no I/O and no CLI.

pub mod batch;
pub mod components;
pub mod context;
pub mod declaration;
pub mod error;
pub mod kind;
pub mod kwargs;
pub mod nn;
mod register;
pub mod registry;
pub mod resolve;
pub mod schema;
pub mod spec;
pub mod strict_json;

pub use batch::Batch;
pub use context::{BuildContext, ParamStore, SharedRng};
pub use error::{CoreError, Result};
pub use kind::ComponentKind;
pub use registry::{ComponentInfo, Registry};
pub use schema::DatasetSchema;
pub use spec::{ModelSpec, SpecInput};

// Re-exported so that plugins use exactly the crates core was built with, and a plugin built
// against an installed SDK needs no version matching: a component's kwargs derive with
// `#[serde(crate = "recblocks_core::serde")]`, its tensors are core's candle, its random streams
// core's rand. Removing or changing one of these is a breaking change of the plugin API
// (CHANGELOG.md).
pub use candle_core as candle;
pub use candle_nn;
pub use inventory;
pub use rand;
pub use serde;
pub use serde_json;

/// The version of this crate, recorded in model artifacts and plugin declarations.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
