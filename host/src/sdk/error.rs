//! Why a plugin could not be scaffolded or built.

use std::path::PathBuf;

/// Everything `recblocks plugin new` and `recblocks plugin build` can fail with.
#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    /// The binary's SDK (its recblocks-core and the crates core refers to) is not where it should
    /// be.
    #[error("no recblocks SDK for the binary {}: looked for {}; a recblocks binary finds its SDK beside it, in `<root>/lib/recblocks-<version>/` when installed with `recblocks install --root DIR` or in `target/<profile>/deps/` when it was built in a checkout", .exe.display(), .looked.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" and "))]
    NoSdk {
        /// The running binary.
        exe: PathBuf,
        /// Where the core library was looked for.
        looked: Vec<PathBuf>,
    },
    /// A plugin name that is not a valid crate name.
    #[error("plugin name `{name}`: {why}; use lowercase letters, digits, `-` and `_`, starting with a letter (e.g. `my-layers`)")]
    BadName {
        /// The name given.
        name: String,
        /// What is wrong.
        why: String,
    },
    /// The directory to scaffold into already has files.
    #[error("{}: the directory exists and is not empty; choose another --path or remove it", .0.display())]
    NotEmpty(PathBuf),
    /// The directory to scaffold into lies inside another Cargo workspace.
    #[error("{}: inside the Cargo workspace {}; a plugin made by `plugin new` is its own workspace, so make it outside any other (an in-tree plugin of a recblocks checkout is a workspace member instead: docs/plugins.md)", .dir.display(), .workspace.display())]
    InsideWorkspace {
        /// The directory asked for.
        dir: PathBuf,
        /// The enclosing workspace's root.
        workspace: PathBuf,
    },
    /// The plugin directory has no Cargo.toml.
    #[error("{}: no Cargo.toml; `recblocks plugin build` builds a plugin crate (make one with `recblocks plugin new NAME`)", .0.display())]
    NoManifest(PathBuf),
    /// The rustc that would build the plugin is not the one that built the host.
    #[error("the plugin would be compiled by `{found}`, but this recblocks was built by `{expected}`: host and plugin must use one compiler. Install it with `rustup toolchain install {toolchain}` (recblocks plugin build selects it with RUSTUP_TOOLCHAIN), or build with that rustc on PATH")]
    WrongRustc {
        /// `rustc -V` found.
        found: String,
        /// `rustc -V` of the host's core.
        expected: String,
        /// The toolchain to install.
        toolchain: String,
    },
    /// Cargo failed (its own messages went to stderr).
    #[error("cargo failed building the plugin in {} ({status}); its messages are above", .dir.display())]
    CargoFailed {
        /// The plugin directory.
        dir: PathBuf,
        /// Cargo's exit status.
        status: String,
    },
    /// Cargo succeeded but reported no library.
    #[error("cargo built the plugin in {} but reported no cdylib; the crate needs a `[lib]` target (src/lib.rs)", .0.display())]
    NoLibrary(PathBuf),
    /// A file or directory could not be read, written or run.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

impl SdkError {
    /// Wraps an I/O error with the path concerned.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        SdkError::Io {
            path: path.into(),
            source,
        }
    }
}
