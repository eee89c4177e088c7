//! Integration tests of recblocks-albert, written as its specification: parameter counts,
//! real weight sharing (gradients of a shared layer = sum over unshared copies), equivalence
//! with the wrapped RecTools stacks, the HF group schedule (`modeling_albert.py`), no dead
//! layers in a full model, and the errors. One test binary for the crate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

// Keep recblocks-rectools' registrations (item nets, presets, backbone...) in this binary.
use recblocks_rectools as _;

mod constructor;
mod layers;
mod model;
mod sharing;
mod util;
