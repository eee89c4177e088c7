//! The host's registry: every statically linked plugin's registrations (the host names each
//! static plugin crate so the linker keeps its `inventory` entries), plus the components of
//! plugins loaded at run time ([`crate::loader`]).

use std::path::PathBuf;

use recblocks_core::{CoreError, Registry};

use crate::loader::{self, LoadedPlugin, PluginError};

// Static plugins: naming the crate keeps its registrations in the binary (inventory #50).
#[cfg(feature = "albert")]
use recblocks_albert as _;
use recblocks_rectools as _;

/// The crates whose components are linked into this host.
#[cfg(feature = "albert")]
pub const STATIC_PLUGINS: &[&str] = &["recblocks-rectools", "recblocks-albert"];
/// The crates whose components are linked into this host.
#[cfg(not(feature = "albert"))]
pub const STATIC_PLUGINS: &[&str] = &["recblocks-rectools"];

/// Builds the registry of the statically linked components.
pub fn builtin_registry() -> Result<Registry, CoreError> {
    Registry::from_inventory()
}

/// The built-in registry plus the components of the plugins at `paths` (loaded in order).
pub fn registry_with_plugins(
    paths: &[PathBuf],
) -> Result<(Registry, Vec<LoadedPlugin>), PluginError> {
    let mut registry = builtin_registry().map_err(|source| PluginError::Clash {
        path: PathBuf::from("(built-in)"),
        source,
    })?;
    let loaded = loader::load_into(&mut registry, paths)?;
    Ok((registry, loaded))
}
