//! The host's registry: every statically linked plugin's registrations (the host names each
//! static plugin crate so the linker keeps its `inventory` entries).

use recblocks_core::{CoreError, Registry};

// Static plugins: naming the crate keeps its registrations in the binary (inventory #50).
use recblocks_albert as _;
use recblocks_rectools as _;

/// The crates whose components are linked into this host.
pub const STATIC_PLUGINS: &[&str] = &["recblocks-rectools", "recblocks-albert"];

/// Builds the registry of the statically linked components.
pub fn builtin_registry() -> Result<Registry, CoreError> {
    Registry::from_inventory()
}
