//! Training: data preparation, the Adam optimizer, the epoch loop with validation, early
//! stopping and progress, and the state `--resume` needs.

pub mod adam;
pub mod fit;
pub mod prepare;
pub mod rng_state;
pub mod validation;

pub use adam::{Adam, AdamConfig};
pub use fit::{EpochLog, FitOptions, TrainingState};
pub use prepare::{prepare, PreparedData, Session};
