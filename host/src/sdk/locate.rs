//! Where the running binary's SDK is.
//!
//! Two layouts, tried in this order from the directory of the running binary (`bin`):
//!
//! | layout | core | the crates core refers to |
//! |---|---|---|
//! | installed (`recblocks install --root DIR`) | `bin/../lib/recblocks-<version>/librecblocks_core.so` | `bin/../lib/recblocks-<version>/deps/` |
//! | a checkout's build (`target/<profile>/recblocks`) | `bin/deps/librecblocks_core.so` | `bin/deps/` |
//!
//! In both, the core found is the one the binary itself loads (its run path lists the same
//! directories in the same order), so a plugin built against it links the host's core.

use std::path::{Path, PathBuf};

use super::SdkError;

/// The file name of core's shared library (its soname).
pub const CORE_LIBRARY: &str = "librecblocks_core.so";

/// The directory of an installed SDK, relative to the installed binary's directory.
pub fn installed_dir_from_bin() -> String {
    format!("../lib/recblocks-{}", recblocks_core::VERSION)
}

/// Which layout the SDK was found in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SdkLayout {
    /// Installed with `recblocks install --root DIR`.
    Installed,
    /// A checkout's `target/<profile>/`.
    Checkout,
}

/// What a plugin build needs from the host.
#[derive(Debug, Clone)]
pub struct Sdk {
    /// The layout it was found in.
    pub layout: SdkLayout,
    /// Core's shared library (with its metadata), given to rustc with `--extern`.
    pub core: PathBuf,
    /// The compiled crates core's metadata refers to, given to rustc with `-L dependency=`.
    pub deps: PathBuf,
}

impl Sdk {
    /// The SDK of the running binary.
    pub fn of_current_exe() -> Result<Sdk, SdkError> {
        let exe = std::env::current_exe().map_err(|e| SdkError::io("current executable", e))?;
        let exe = exe.canonicalize().unwrap_or(exe);
        Sdk::of_binary(&exe)
    }

    /// The SDK of the recblocks binary at `exe`.
    pub fn of_binary(exe: &Path) -> Result<Sdk, SdkError> {
        let bin = exe.parent().unwrap_or(Path::new("."));
        let installed = bin.join(installed_dir_from_bin());
        let checkout = bin.join("deps");
        let candidates = [
            (SdkLayout::Installed, installed),
            (SdkLayout::Checkout, checkout),
        ];
        for (layout, dir) in &candidates {
            let core = dir.join(CORE_LIBRARY);
            if core.is_file() {
                let deps = match layout {
                    SdkLayout::Installed => dir.join("deps"),
                    SdkLayout::Checkout => dir.clone(),
                };
                return Ok(Sdk {
                    layout: layout.clone(),
                    core,
                    deps,
                });
            }
        }
        Err(SdkError::NoSdk {
            exe: exe.to_path_buf(),
            looked: candidates
                .iter()
                .map(|(_, dir)| dir.join(CORE_LIBRARY))
                .collect(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_without_an_sdk_says_where_it_looked() {
        let dir = tempfile::tempdir().unwrap();
        let err = Sdk::of_binary(&dir.path().join("bin/recblocks"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("no recblocks SDK"), "{err}");
        assert!(err.contains("lib/recblocks-"), "{err}");
        assert!(err.contains("bin/deps/librecblocks_core.so"), "{err}");
    }

    #[test]
    fn the_installed_layout_wins_over_a_checkout_layout() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        let lib = bin.join(installed_dir_from_bin());
        for d in [bin.join("deps"), lib.join("deps")] {
            std::fs::create_dir_all(&d).unwrap();
        }
        std::fs::write(bin.join("deps").join(CORE_LIBRARY), b"").unwrap();
        let sdk = Sdk::of_binary(&bin.join("recblocks")).unwrap();
        assert_eq!(sdk.layout, SdkLayout::Checkout);
        std::fs::write(lib.join(CORE_LIBRARY), b"").unwrap();
        let sdk = Sdk::of_binary(&bin.join("recblocks")).unwrap();
        assert_eq!(sdk.layout, SdkLayout::Installed);
        assert_eq!(sdk.deps, lib.join("deps"));
    }
}
