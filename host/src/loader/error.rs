//! Why a plugin could not be loaded.

use std::path::PathBuf;

use recblocks_core::{declaration::Mismatch, CoreError};

/// How to rebuild a plugin so that it matches this host. `recblocks plugin build` builds against
/// the SDK of the binary that runs it, in the plugin's own target directory, and writes no file of
/// the host's install or build.
pub const REBUILD_HINT: &str = "rebuild the plugin with this recblocks binary: \
     `recblocks plugin build <plugin directory>` (it links the plugin against this binary's \
     recblocks-core and writes only under the plugin's own target directory)";

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
    #[error("plugin {}: cannot load it as a shared library: {message}. If it is a recblocks plugin, it was probably built against another recblocks-core or toolchain (an `undefined symbol` names the missing core item): {REBUILD_HINT}", .path.display())]
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
    /// The plugin links another copy of recblocks-core (and so of candle) than the host's: its
    /// core static is at another address.
    #[error("plugin {} ({name}) carries its own copy of recblocks-core (and of candle inside it): the core static `CORE_IDENTITY` it links is at {plugin:#x}, the host's at {host:#x}. A second copy has its own registry and tensor counter, so its components would not register and training through them would break. This happens when the plugin compiles recblocks-core itself (a git or path dependency in its own workspace); {REBUILD_HINT}", .path.display())]
    SecondCore {
        /// The path given.
        path: PathBuf,
        /// The plugin's name.
        name: String,
        /// The address of the host's core static.
        host: usize,
        /// The address of the core static the plugin links.
        plugin: usize,
    },
    /// The plugin registers no component.
    #[error("plugin {} ({name}) registers no component: it exports a declaration for the crates [{provides}], but none of them has a `recblocks_core::register!` this host has not already loaded; a plugin must register at least one component", .path.display())]
    NoComponents {
        /// The path given.
        path: PathBuf,
        /// The plugin's name.
        name: String,
        /// The crates it declares, comma-separated.
        provides: String,
    },
    /// The plugin's `register` fn panicked.
    #[error("plugin {}: panicked in `{call}`: {message}", .path.display())]
    Panicked {
        /// The path given.
        path: PathBuf,
        /// The call that panicked.
        call: String,
        /// The panic's message.
        message: String,
    },
    /// More plugin components of one kind than the host can guard.
    #[error("plugin {}: more than {slots} plugin components of kind {kind} are loaded in this process; load fewer plugins", .path.display())]
    TooManyComponents {
        /// The path given.
        path: PathBuf,
        /// The kind.
        kind: recblocks_core::ComponentKind,
        /// How many components of one kind can be loaded.
        slots: usize,
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
