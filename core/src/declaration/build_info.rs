//! What must match between host and plugin, and the check that compares them.

use std::mem::{align_of, size_of};

use crate::{
    context::BuildContext,
    registry::{ComponentInfo, Registered, TransformerLayersRegistration},
    CoreError,
};

/// `rustc -V` of the compiler that built this core.
pub const RUSTC_VERSION: &str = env!("RECBLOCKS_RUSTC_VERSION");

/// The candle-core version inside this core (pinned with `=` in the workspace manifest; a test
/// checks it against `Cargo.lock`).
pub const CANDLE_VERSION: &str = "0.11.1";

/// Target, profile, opt-level, debug assertions, panic strategy and `prefer-dynamic` (from
/// `build.rs`), as `key=value;...`. The hash of core's source is [`SOURCE_HASH`].
pub const BUILD_FINGERPRINT: &str = env!("RECBLOCKS_BUILD_FINGERPRINT");

/// FNV-1a hash of core's source files, manifest and build script.
pub const SOURCE_HASH: u64 = SOURCE_HASH_VALUE;

/// [`SOURCE_HASH`], evaluated once, here: a `static` keeps the value in core's metadata, so a crate
/// that reads the constant (every plugin's declaration) does not hash the sources again. The hash
/// runs past the const evaluator's "taking a long time" threshold (half a megabyte, byte by byte);
/// the loop is bounded by the sources' length.
#[allow(long_running_const_eval)]
static SOURCE_HASH_VALUE: u64 = super::source::source_hash();

/// A hash of the sizes and alignments of the types that cross the host–plugin boundary.
pub const BOUNDARY_LAYOUT: u64 = layout_hash(&[
    size_of::<Registered>(),
    align_of::<Registered>(),
    size_of::<ComponentInfo>(),
    size_of::<TransformerLayersRegistration>(),
    size_of::<BuildContext<'static>>(),
    size_of::<CoreError>(),
    size_of::<candle_core::Tensor>(),
    size_of::<candle_nn::VarBuilder<'static>>(),
    size_of::<serde_json::Value>(),
    size_of::<Vec<Registered>>(),
]);

const fn layout_hash(values: &[usize]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < values.len() {
        h ^= values[i] as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    h
}

/// The build facts of one side (host or plugin), as plain strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildInfo {
    /// `MAGIC` as found.
    pub magic: [u8; 8],
    /// ABI version.
    pub abi_version: u32,
    /// recblocks-core version.
    pub core_version: String,
    /// rustc version.
    pub rustc_version: String,
    /// candle-core version.
    pub candle_version: String,
    /// Build fingerprint (`key=value;...`).
    pub build_fingerprint: String,
    /// Boundary type layout hash.
    pub boundary_layout: u64,
    /// Hash of core's source.
    pub core_source: u64,
}

/// One field that differs between host and plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// The field's name (`recblocks-core version`, `rustc version`, `profile`, ...).
    pub field: String,
    /// The host's value.
    pub host: String,
    /// The plugin's value.
    pub plugin: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} differs: host has `{}`, plugin has `{}`",
            self.field, self.host, self.plugin
        )
    }
}

impl BuildInfo {
    /// The facts of the core this code was compiled into (the host's, when called by the host).
    pub fn current() -> Self {
        BuildInfo {
            magic: super::MAGIC,
            abi_version: super::ABI_VERSION,
            core_version: crate::VERSION.to_string(),
            rustc_version: RUSTC_VERSION.to_string(),
            candle_version: CANDLE_VERSION.to_string(),
            build_fingerprint: BUILD_FINGERPRINT.to_string(),
            boundary_layout: BOUNDARY_LAYOUT,
            core_source: SOURCE_HASH,
        }
    }

    /// The first field in which `plugin` differs from this (host) build, in the order the host
    /// reads them: magic, ABI version, core version, rustc, candle, each fingerprint entry, and
    /// the boundary layout.
    pub fn check_plugin(&self, plugin: &BuildInfo) -> Result<(), Mismatch> {
        let differ = |field: &str, host: String, plugin: String| {
            Err(Mismatch {
                field: field.to_string(),
                host,
                plugin,
            })
        };
        if self.magic != plugin.magic {
            return differ(
                "magic",
                String::from_utf8_lossy(&self.magic).into_owned(),
                String::from_utf8_lossy(&plugin.magic).into_owned(),
            );
        }
        if self.abi_version != plugin.abi_version {
            return differ(
                "plugin ABI version",
                self.abi_version.to_string(),
                plugin.abi_version.to_string(),
            );
        }
        let pairs = [
            (
                "recblocks-core version",
                &self.core_version,
                &plugin.core_version,
            ),
            ("rustc version", &self.rustc_version, &plugin.rustc_version),
            (
                "candle-core version",
                &self.candle_version,
                &plugin.candle_version,
            ),
        ];
        for (field, host, theirs) in pairs {
            if host != theirs {
                return differ(field, host.clone(), theirs.clone());
            }
        }
        if self.build_fingerprint != plugin.build_fingerprint {
            let ours = entries(&self.build_fingerprint);
            let theirs = entries(&plugin.build_fingerprint);
            for (key, value) in &ours {
                let other = theirs
                    .iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_else(|| "(missing)".into());
                if *value != other {
                    return differ(key, value.clone(), other);
                }
            }
            return differ(
                "build fingerprint",
                self.build_fingerprint.clone(),
                plugin.build_fingerprint.clone(),
            );
        }
        if self.core_source != plugin.core_source {
            return differ(
                "core-source",
                format!("{:016x}", self.core_source),
                format!("{:016x}", plugin.core_source),
            );
        }
        if self.boundary_layout != plugin.boundary_layout {
            return differ(
                "boundary type layout",
                format!("{:016x}", self.boundary_layout),
                format!("{:016x}", plugin.boundary_layout),
            );
        }
        Ok(())
    }
}

fn entries(fingerprint: &str) -> Vec<(String, String)> {
    fingerprint
        .split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_builds_match() {
        let host = BuildInfo::current();
        assert_eq!(host.check_plugin(&host.clone()), Ok(()));
    }

    #[test]
    fn every_field_is_compared_and_named() {
        let host = BuildInfo::current();
        type Change = Box<dyn Fn(&mut BuildInfo)>;
        let cases: Vec<(&str, Change)> = vec![
            (
                "magic",
                Box::new(|b: &mut BuildInfo| b.magic = *b"NOTAPLUG"),
            ),
            (
                "plugin ABI version",
                Box::new(|b: &mut BuildInfo| b.abi_version += 1),
            ),
            (
                "recblocks-core version",
                Box::new(|b: &mut BuildInfo| b.core_version = "0.0.9".into()),
            ),
            (
                "rustc version",
                Box::new(|b: &mut BuildInfo| b.rustc_version = "rustc 1.80.0".into()),
            ),
            (
                "candle-core version",
                Box::new(|b: &mut BuildInfo| b.candle_version = "0.9.0".into()),
            ),
            (
                "profile",
                Box::new(|b: &mut BuildInfo| {
                    b.build_fingerprint = b.build_fingerprint.replace("profile=", "profile=x")
                }),
            ),
            (
                "core-source",
                Box::new(|b: &mut BuildInfo| b.core_source ^= 1),
            ),
            (
                "boundary type layout",
                Box::new(|b: &mut BuildInfo| b.boundary_layout ^= 1),
            ),
        ];
        for (field, change) in cases {
            let mut plugin = host.clone();
            change(&mut plugin);
            let err = host.check_plugin(&plugin).err();
            assert_eq!(err.map(|m| m.field), Some(field.to_string()), "{field}");
        }
    }

    #[test]
    fn fingerprint_names_what_must_match() {
        for key in ["target=", "profile=", "opt-level=", "prefer-dynamic="] {
            assert!(BUILD_FINGERPRINT.contains(key), "{BUILD_FINGERPRINT}");
        }
    }

    #[test]
    fn candle_version_matches_the_lock_file() {
        let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock"))
            .unwrap_or_default();
        let pinned = format!("name = \"candle-core\"\nversion = \"{CANDLE_VERSION}\"");
        assert!(
            lock.contains(&pinned),
            "Cargo.lock pins another candle-core"
        );
    }
}
