//! Plugin provenance in saved models: which build of which plugin provided a component, and the
//! check made when a model is loaded with whatever plugin is loaded now.
//!
//! `model.json` records, for each component that came from a plugin, the plugin's name, version
//! and a hash of its library file ([`PluginRecord`]). Loading the model compares that with the
//! plugin loaded now that provides the same crate: another version or another hash is a warning
//! (on stderr), or an error under `--strict` ([`set_strict`]). A model recorded before provenance
//! existed, or a component that is now built in, is not compared.

use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use super::{loaded_plugins, LoadedPlugin};

static STRICT: AtomicBool = AtomicBool::new(false);

/// Whether loading a model refuses a plugin build other than the one it was trained with
/// (`--strict`), instead of warning.
pub fn set_strict(on: bool) {
    STRICT.store(on, Ordering::Relaxed);
}

/// Whether [`set_strict`] is on.
pub fn strict() -> bool {
    STRICT.load(Ordering::Relaxed)
}

/// The plugin build that provided a component, as `model.json` records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginRecord {
    /// The library's file name.
    pub file: String,
    /// The plugin's name (its crate).
    pub name: String,
    /// The plugin's version.
    pub version: String,
    /// CRC-32 of the library file, as `crc32:xxxxxxxx`: which build it was.
    pub hash: String,
}

/// The hash recorded for a library's bytes.
pub fn library_hash(bytes: &[u8]) -> String {
    format!("crc32:{:08x}", crc32fast::hash(bytes))
}

impl PluginRecord {
    fn of(plugin: &LoadedPlugin) -> PluginRecord {
        PluginRecord {
            file: plugin
                .path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_else(|| plugin.path.display().to_string()),
            name: plugin.name.clone(),
            version: plugin.version.clone(),
            hash: plugin.hash.clone(),
        }
    }
}

/// The record of the loaded plugin that provides `crate_name`, if a loaded plugin does.
pub fn record_for(crate_name: &str) -> Option<PluginRecord> {
    loaded_plugins()
        .iter()
        .find(|p| p.provides.iter().any(|c| c == crate_name))
        .map(PluginRecord::of)
}

/// How the plugin loaded now differs from `recorded` (for the component `what`), if it does.
pub fn difference(what: &str, crate_name: &str, recorded: &PluginRecord) -> Option<String> {
    let now = record_for(crate_name)?;
    if now.version == recorded.version && now.hash == recorded.hash {
        return None;
    }
    Some(format!(
        "{what} was trained with plugin {} {} ({}, {}), but the loaded plugin is {} {} ({}, {})",
        recorded.name,
        recorded.version,
        recorded.file,
        recorded.hash,
        now.name,
        now.version,
        now.file,
        now.hash
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_names_its_kind_and_changes_with_the_bytes() {
        let a = library_hash(b"one build");
        assert!(a.starts_with("crc32:") && a.len() == 14, "{a}");
        assert_ne!(a, library_hash(b"another build"));
    }

    #[test]
    fn a_crate_no_loaded_plugin_provides_is_not_compared() {
        let recorded = PluginRecord {
            file: "libx.so".into(),
            name: "x".into(),
            version: "0.1.0".into(),
            hash: "crc32:00000000".into(),
        };
        assert_eq!(difference("layers", "no-such-crate", &recorded), None);
    }
}
