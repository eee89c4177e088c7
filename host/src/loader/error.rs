//! Why a plugin could not be loaded.

use std::path::PathBuf;

use recblocks_core::{declaration::Mismatch, CoreError};

/// How to rebuild a plugin so that it matches this host.
pub const REBUILD_HINT: &str = "rebuild the plugin against this recblocks checkout with the same \
     toolchain (rust-toolchain.toml) and profile as the host, e.g. `cargo build --release` for a \
     release host, from inside the recblocks repository or with `--config <recblocks>/.cargo/config.toml` \
     and recblocks' Cargo.lock";

/// Everything that can go wrong while loading a plugin library.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The file does not exist.
    #[error("plugin {}: no such file", .path.display())]
    NotFound {
        /// The path given.
        path: PathBuf,
    },
    /// The dynamic loader refused the file (not a shared library, wrong architecture, or symbols
    /// missing because it was built against another recblocks-core).
    #[error("plugin {}: cannot load it as a shared library: {message}. If it is a recblocks plugin, it was probably built against another recblocks-core or toolchain: {REBUILD_HINT}", .path.display())]
    NotALibrary {
        /// The path given.
        path: PathBuf,
        /// The dynamic loader's message.
        message: String,
    },
    /// The library does not export the plugin declaration.
    #[error("plugin {}: not a recblocks plugin (it does not export `{symbol}`; a plugin invokes `recblocks_core::export_plugin!()` in a cdylib crate)", .path.display())]
    NotAPlugin {
        /// The path given.
        path: PathBuf,
        /// The symbol looked for.
        symbol: String,
    },
    /// The declaration does not match this host's build.
    #[error("plugin {} ({name}) is incompatible with this recblocks: {mismatch}; {REBUILD_HINT}", .path.display())]
    Incompatible {
        /// The path given.
        path: PathBuf,
        /// The plugin's name, when it could be read.
        name: String,
        /// The first field that differs.
        mismatch: Mismatch,
    },
    /// The plugin's declaration is malformed (strings that are not UTF-8).
    #[error("plugin {}: malformed declaration: {message}", .path.display())]
    Malformed {
        /// The path given.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A component of the plugin clashes with a registered name.
    #[error("plugin {}: {source}; load each plugin once and do not load a plugin whose components are already built into this host", .path.display())]
    Clash {
        /// The path given.
        path: PathBuf,
        /// The duplicate registration.
        #[source]
        source: CoreError,
    },
}
