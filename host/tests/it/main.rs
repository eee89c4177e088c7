//! Integration tests of the recblocks host: spec reading and its error messages, the spec's JSON
//! Schema, parameter counts, the registered component set, training (reproducibility, resume,
//! artifacts, the epoch observer) and the CLI, and plugins loaded at run time. One test binary,
//! so candle is linked once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod captured_steps;
mod cli;
mod cli_refusals;
#[cfg(feature = "cuda")]
mod cuda_training;
mod fused_paths;
mod fuzz_regressions;
mod generate;
mod import_rectools;
mod model_checks;
mod model_dir;
mod observer;
mod param_counts;
mod parity;
mod plugin_libs;
mod plugin_refusals;
mod plugin_sdk;
mod plugins;
mod recommend;
mod registry_set;
mod schema;
mod spec;
mod training;
mod util;
mod workspace;
