//! `librecblocks_albert_plugin.so`: the ALBERT components (`AlbertSumConstructor`,
//! `AlbertLayers`) for `recblocks --plugin`, for a host built without them
//! (`cargo build -p recblocks --no-default-features`).
//!
//! The logic lives in the `recblocks-albert` rlib; this crate only links it and exports the
//! plugin declaration, so the rlib can still be linked statically next to other plugins.

// Naming the crate links it, with its `inventory` registrations.
use recblocks_albert as _;

recblocks_core::export_plugin!(provides = ["recblocks-albert"]);
