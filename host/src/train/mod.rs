//! Training: data preparation, the Adam optimizer, the epoch loop with validation and early
//! stopping, the observer that hears about its progress, and the state `--resume` needs.

pub mod adam;
pub mod captured_step;
pub mod fit;
pub mod observer;
pub mod prepare;
mod queued_steps;
pub mod rng_state;
pub mod validation;
mod write_in_place;

pub use adam::{Adam, AdamConfig};
pub use fit::{EpochLog, FitOptions, TrainingState};
pub use observer::{BatchProgress, EpochInfo, EpochObserver, NoopObserver};
pub use prepare::{prepare, PreparedData, Session};
