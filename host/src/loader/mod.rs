//! Run-time plugins: loading plugin libraries named on the command line (`--plugin PATH`) or in
//! `RECBLOCKS_PLUGINS`, checking that they were built like this host, and adding their components
//! to the registry.
//!
//! Only files named explicitly are loaded: no directory is scanned, nothing is picked up from the
//! working directory. Loading a library runs its code with the user's rights (its constructors run
//! before any check can happen): load only plugins you trust. Libraries are never unloaded, since
//! registrations point into them.

mod dlopen;
mod error;
pub mod guard;
pub mod provenance;

use std::path::{Path, PathBuf};

use recblocks_core::{registry::Registered, Registry};

pub use dlopen::{load_plugin, loaded_plugins, LoadedPlugin};
pub use error::PluginError;

/// The environment variable naming plugin libraries to load, `:`-separated.
pub const PLUGINS_ENV: &str = "RECBLOCKS_PLUGINS";

/// The plugin paths to load: those of `RECBLOCKS_PLUGINS` (`:`-separated, empty entries skipped),
/// then `explicit` (from `--plugin`), without repeats.
pub fn plugin_paths(env_value: Option<&str>, explicit: &[PathBuf]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    let from_env = env_value
        .unwrap_or_default()
        .split(':')
        .filter(|s| !s.trim().is_empty())
        .map(PathBuf::from);
    for path in from_env.chain(explicit.iter().cloned()) {
        if !out.contains(&path) {
            out.push(path);
        }
    }
    out
}

/// Loads each plugin and adds its components to `registry`; a clash with a registered name is an
/// error naming both crates and the plugin file, and adds nothing of that plugin.
pub fn load_into(
    registry: &mut Registry,
    paths: &[PathBuf],
) -> Result<Vec<LoadedPlugin>, PluginError> {
    let mut loaded = Vec::new();
    for path in paths {
        let plugin = load_plugin(path)?;
        add_components(registry, &plugin.path, &plugin.components)?;
        loaded.push(plugin);
    }
    Ok(loaded)
}

/// Adds a plugin's components to `registry`, all or nothing.
pub fn add_components(
    registry: &mut Registry,
    path: &Path,
    components: &[Registered],
) -> Result<(), PluginError> {
    registry
        .add_all(components)
        .map_err(|source| PluginError::Clash {
            path: path.to_path_buf(),
            source,
        })
}

/// The plugin library (file name) that provided components of `crate_name`, if a loaded plugin
/// did; recorded in saved models.
pub fn plugin_providing(crate_name: &str) -> Option<String> {
    loaded_plugins()
        .into_iter()
        .find(|p| p.provides.iter().any(|c| c == crate_name))
        .map(|p| {
            p.path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_else(|| p.path.display().to_string())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_paths_come_first_and_repeats_are_dropped() {
        let got = plugin_paths(
            Some("/a/liba.so::/b/libb.so"),
            &[PathBuf::from("/b/libb.so"), PathBuf::from("/c/libc.so")],
        );
        let want: Vec<PathBuf> = ["/a/liba.so", "/b/libb.so", "/c/libc.so"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(got, want);
        assert!(plugin_paths(None, &[]).is_empty());
    }
}
