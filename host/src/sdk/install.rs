//! `recblocks install --root DIR`: a relocatable install of the running binary.
//!
//! ```text
//! DIR/bin/recblocks
//! DIR/lib/recblocks-<version>/librecblocks_core.so      core (and candle inside it)
//! DIR/lib/recblocks-<version>/libstd-<hash>.so          the toolchain's libstd
//! DIR/lib/recblocks-<version>/deps/                     the plugin SDK: metadata of the crates
//!                                                       core refers to, and their proc macros
//! ```
//!
//! The binary's run path starts with `$ORIGIN/../lib/recblocks-<version>` (`host/build.rs`), so
//! the install runs wherever DIR is moved to and after the checkout that built it is deleted, and
//! `recblocks plugin build` run by the installed binary builds against the installed core
//! ([`super::locate`]).

use std::path::{Path, PathBuf};

use super::{locate::CORE_LIBRARY, lock::dependency_closure, Sdk, SdkError, SdkLayout};

/// What `install` wrote.
#[derive(Debug, Clone)]
pub struct Installed {
    /// `DIR/bin/recblocks`.
    pub binary: PathBuf,
    /// `DIR/lib/recblocks-<version>`.
    pub lib_dir: PathBuf,
    /// Files written.
    pub files: usize,
    /// Bytes written.
    pub bytes: u64,
}

/// The checkout's `Cargo.lock`, for a binary built in a checkout.
fn checkout_lock() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .join("Cargo.lock")
}

struct Copier {
    files: usize,
    bytes: u64,
}

impl Copier {
    fn copy(&mut self, from: &Path, to: &Path) -> Result<(), SdkError> {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(|e| SdkError::io(parent, e))?;
        }
        // Copy to a temporary name, then rename: a running binary or a loaded library at `to` is
        // replaced, not written over.
        let tmp = to.with_extension("recblocks-install-tmp");
        let bytes = std::fs::copy(from, &tmp).map_err(|e| SdkError::io(from, e))?;
        std::fs::rename(&tmp, to).map_err(|e| SdkError::io(to, e))?;
        self.files += 1;
        self.bytes += bytes;
        Ok(())
    }
}

/// Whether `file` (a name in a deps directory) is a compiled crate of `crate_name`
/// (`lib<name>-<hash>.rmeta` or a proc macro's `lib<name>-<hash>.so`).
fn is_sdk_file(file: &str, crate_name: &str) -> bool {
    let Some(rest) = file
        .strip_prefix("lib")
        .and_then(|f| f.strip_prefix(crate_name))
        .and_then(|f| f.strip_prefix('-'))
    else {
        return false;
    };
    let Some((hash, ext)) = rest.split_once('.') else {
        return false;
    };
    hash.chars().all(|c| c.is_ascii_hexdigit()) && (ext == "rmeta" || ext == "so")
}

/// Installs the running binary, its core, libstd and the plugin SDK under `root`.
pub fn install(root: &Path) -> Result<Installed, SdkError> {
    let exe = std::env::current_exe().map_err(|e| SdkError::io("current executable", e))?;
    let exe = exe.canonicalize().map_err(|e| SdkError::io(&exe, e))?;
    let sdk = Sdk::of_binary(&exe)?;
    let bin_dir = root.join("bin");
    // `bin/../lib/recblocks-<version>`, as the binary's run path and `locate` name it.
    let lib_dir = root
        .join("lib")
        .join(format!("recblocks-{}", recblocks_core::VERSION));
    let mut copier = Copier { files: 0, bytes: 0 };
    copier.copy(&sdk.core, &lib_dir.join(CORE_LIBRARY))?;

    // libstd: beside core in an install, else in the toolchain that built this binary.
    let std_dirs: Vec<PathBuf> = match sdk.layout {
        SdkLayout::Installed => vec![sdk.core.parent().unwrap_or(Path::new(".")).to_path_buf()],
        SdkLayout::Checkout => option_env!("RECBLOCKS_TOOLCHAIN_LIBDIR")
            .map(PathBuf::from)
            .into_iter()
            .collect(),
    };
    let mut found_std = false;
    for dir in &std_dirs {
        for entry in std::fs::read_dir(dir).map_err(|e| SdkError::io(dir, e))? {
            let path = entry.map_err(|e| SdkError::io(dir, e))?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            if name.is_some_and(|n| n.starts_with("libstd-") && n.ends_with(".so")) {
                copier.copy(&path, &lib_dir.join(path.file_name().unwrap_or_default()))?;
                found_std = true;
            }
        }
    }
    if !found_std {
        return Err(SdkError::io(
            std_dirs.first().cloned().unwrap_or_default(),
            std::io::Error::new(std::io::ErrorKind::NotFound, "no libstd-*.so"),
        ));
    }

    // The SDK: the metadata of every crate core depends on (any hash: rustc picks by hash), and
    // the proc macros among them.
    let crates: Vec<String> = match sdk.layout {
        SdkLayout::Installed => Vec::new(),
        SdkLayout::Checkout => {
            let lock_path = checkout_lock();
            let lock =
                std::fs::read_to_string(&lock_path).map_err(|e| SdkError::io(&lock_path, e))?;
            dependency_closure(&lock, "recblocks-core")
                .into_iter()
                .filter(|name| name != "recblocks-core")
                .map(|name| name.replace('-', "_"))
                .collect()
        }
    };
    for entry in std::fs::read_dir(&sdk.deps).map_err(|e| SdkError::io(&sdk.deps, e))? {
        let path = entry.map_err(|e| SdkError::io(&sdk.deps, e))?.path();
        let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        let wanted = match sdk.layout {
            SdkLayout::Installed => path.is_file(),
            SdkLayout::Checkout => crates.iter().any(|c| is_sdk_file(&name, c)),
        };
        if wanted {
            copier.copy(&path, &lib_dir.join("deps").join(&name))?;
        }
    }

    let binary = bin_dir.join("recblocks");
    copier.copy(&exe, &binary)?;
    Ok(Installed {
        binary,
        lib_dir,
        files: copier.files,
        bytes: copier.bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdk_files_are_metadata_and_proc_macros_of_the_named_crate() {
        assert!(is_sdk_file("libserde-0123abcd.rmeta", "serde"));
        assert!(is_sdk_file("libserde_derive-0123abcd.so", "serde_derive"));
        assert!(!is_sdk_file("libserde-0123abcd.rlib", "serde"));
        assert!(!is_sdk_file("libserde_derive-0123abcd.so", "serde"));
        assert!(!is_sdk_file("serde-0123abcd.d", "serde"));
    }
}
