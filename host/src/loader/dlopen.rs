//! The plugin loader: `dlopen`, read the declaration, check it, take the registrations.
//!
//! The only module of recblocks with `unsafe` code: loading a library and reading what it
//! exports cannot be checked by the compiler. Each block says why it is sound.
#![allow(unsafe_code)]

use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
};

use libloading::Library;
use recblocks_core::{
    declaration::{
        core_identity, BuildInfo, FfiStr, PluginDeclaration, ABI_VERSION, DECLARATION_SYMBOL, MAGIC,
    },
    registry::{static_registrations, Registered},
};

use super::{guard, PluginError};

/// A plugin library that was loaded and accepted.
#[derive(Clone)]
pub struct LoadedPlugin {
    /// The library file (canonical path).
    pub path: PathBuf,
    /// The plugin's name (the crate that exports it).
    pub name: String,
    /// The plugin's version.
    pub version: String,
    /// A hash of the library file (`provenance::library_hash`), recorded in saved models.
    pub hash: String,
    /// The crates whose components it provides.
    pub provides: Vec<String>,
    /// Its registrations, guarded (`guard`): a panic in a component's code becomes an error
    /// naming this library, the kind and the component.
    pub components: Vec<Registered>,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("path", &self.path)
            .field("name", &self.name)
            .field("version", &self.version)
            .field("hash", &self.hash)
            .field("provides", &self.provides)
            .field(
                "components",
                &self
                    .components
                    .iter()
                    .map(|r| r.info().name)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Every library ever opened by this process, kept open until exit: registrations (and, after a
/// refused plugin, its `inventory` entries) point into them.
static LIBRARIES: Mutex<Vec<Library>> = Mutex::new(Vec::new());
/// The plugins accepted so far.
static ACCEPTED: Mutex<Vec<LoadedPlugin>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The plugins loaded so far in this process.
pub fn loaded_plugins() -> Vec<LoadedPlugin> {
    lock(&ACCEPTED).clone()
}

/// Loads one plugin library, checks its declaration against this host's build, and returns its
/// registrations. Loading the same file again returns the same plugin.
pub fn load_plugin(path: &Path) -> Result<LoadedPlugin, PluginError> {
    let path = path.canonicalize().map_err(|_| PluginError::NotFound {
        path: path.to_path_buf(),
    })?;
    if !path.is_file() {
        return Err(PluginError::NotFound { path });
    }
    // The static set must be known before a plugin's constructors add to the shared list.
    let _ = static_registrations();
    let mut libraries = lock(&LIBRARIES);
    if let Some(done) = lock(&ACCEPTED).iter().find(|p| p.path == path) {
        return Ok(done.clone());
    }

    // SAFETY: opening a library runs its initialisers with this process's rights. That cannot be
    // made safe by the host; the user names each plugin file explicitly (nothing is loaded from a
    // directory scan or the working directory), and the README says a plugin is trusted code.
    let library = unsafe { Library::new(&path) }.map_err(|e| PluginError::NotALibrary {
        path: path.clone(),
        message: with_causes(&e),
    })?;
    libraries.push(library);
    let library = libraries.last().ok_or_else(|| PluginError::NotALibrary {
        path: path.clone(),
        message: "library list is empty after loading".into(),
    })?;

    type DeclarationFn = extern "C" fn() -> &'static PluginDeclaration;
    // SAFETY: the symbol name carries the declaration version (`_v1`), and every plugin exports it
    // through `export_plugin!`, which defines it with exactly this signature. Nothing else in the
    // declaration is trusted before the checks below.
    let declaration_fn = unsafe { library.get::<DeclarationFn>(DECLARATION_SYMBOL) }
        .map(|symbol| *symbol)
        .map_err(|_| PluginError::NotAPlugin {
            path: path.clone(),
            symbol: String::from_utf8_lossy(
                DECLARATION_SYMBOL
                    .strip_suffix(b"\0")
                    .unwrap_or(DECLARATION_SYMBOL),
            )
            .into_owned(),
        })?;
    let declaration = declaration_fn();

    let host = BuildInfo::current();
    // The head (magic, ABI version) is plain data at a fixed offset in every version of the
    // declaration: check it before reading anything whose layout depends on it.
    if declaration.magic != MAGIC || declaration.abi_version != ABI_VERSION {
        let plugin = BuildInfo {
            magic: declaration.magic,
            abi_version: declaration.abi_version,
            ..host.clone()
        };
        let mismatch = host.check_plugin(&plugin).err();
        return Err(match mismatch {
            Some(mismatch) => PluginError::Incompatible {
                path,
                name: "unknown".into(),
                mismatch,
            },
            None => PluginError::Malformed {
                path,
                message: "unreadable declaration head".into(),
            },
        });
    }

    let text = |field: &str, s: FfiStr| {
        read_str(s).map_err(|message| PluginError::Malformed {
            path: path.clone(),
            message: format!("{field}: {message}"),
        })
    };
    let name = text("plugin_name", declaration.plugin_name)?;
    let plugin = BuildInfo {
        magic: declaration.magic,
        abi_version: declaration.abi_version,
        core_version: text("core_version", declaration.core_version)?,
        rustc_version: text("rustc_version", declaration.rustc_version)?,
        candle_version: text("candle_version", declaration.candle_version)?,
        build_fingerprint: text("build_fingerprint", declaration.build_fingerprint)?,
        boundary_layout: declaration.boundary_layout,
        core_source: declaration.core_source,
    };
    if let Err(mismatch) = host.check_plugin(&plugin) {
        return Err(PluginError::Incompatible {
            path,
            name,
            mismatch,
        });
    }
    // Equal declarations do not prove one shared core: a plugin that compiled its own copy of
    // the same core source declares the same facts. The address of a core static does: the
    // plugin's probe is a plain `extern "C" fn() -> usize`, safe to call at this point.
    let (host_core, plugin_core) = (core_identity(), (declaration.core_identity)());
    if host_core != plugin_core {
        return Err(PluginError::SecondCore {
            path,
            name,
            host: host_core,
            plugin: plugin_core,
        });
    }
    let version = text("plugin_version", declaration.plugin_version)?;
    let provides_text = text("provides", declaration.provides)?;
    let provides: Vec<String> = provides_text
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();

    // Same rustc, same core source, same profile, same boundary layout, one shared core: calling
    // the plugin's Rust function and using the values it returns is as sound as calling a
    // statically linked one. A panic in it is caught like one in any plugin call.
    let library_name: Arc<str> = path.display().to_string().into();
    let origin = |call: &str, payload: &(dyn std::any::Any + Send)| PluginError::Panicked {
        path: path.clone(),
        call: call.to_string(),
        message: guard::panic_text(payload),
    };
    let registered = catch_unwind(AssertUnwindSafe(declaration.register))
        .map_err(|payload| origin("register", &*payload))?;
    if registered.is_empty() {
        return Err(PluginError::NoComponents {
            path,
            name,
            provides: provides_text,
        });
    }
    let components = registered
        .into_iter()
        .map(|reg| guard::guard(&library_name, reg))
        .collect::<Result<Vec<_>, _>>()?;
    let hash = std::fs::read(&path)
        .map(|bytes| super::provenance::library_hash(&bytes))
        .map_err(|e| PluginError::Malformed {
            path: path.clone(),
            message: format!("cannot read the library file to hash it: {e}"),
        })?;
    let loaded = LoadedPlugin {
        path,
        name,
        version,
        hash,
        provides,
        components,
    };
    lock(&ACCEPTED).push(loaded.clone());
    Ok(loaded)
}

/// Reads a declaration string.
fn read_str(s: FfiStr) -> Result<String, String> {
    if s.ptr.is_null() {
        return Err("null pointer".into());
    }
    // SAFETY: `s` comes from a declaration whose magic and ABI version match this host's, so it
    // was built by `FfiStr::new` from a `&'static str` of the plugin library, which stays mapped
    // (libraries are never unloaded): `len` bytes at `ptr` are readable and immutable.
    let bytes = unsafe { std::slice::from_raw_parts(s.ptr, s.len) };
    std::str::from_utf8(bytes)
        .map(str::to_string)
        .map_err(|e| format!("not UTF-8: {e}"))
}

/// An error with its causes: libloading's `dlopen failed` keeps the dynamic loader's own text
/// (the missing symbol or library) in its source.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
