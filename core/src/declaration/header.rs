//! The `#[repr(C)]` declaration a plugin library exports.

use crate::registry::Registered;

/// The name of the exported function returning `&'static PluginDeclaration`
/// (NUL-terminated, as `dlsym` wants it). The head of the declaration (magic, ABI version) keeps
/// its layout across versions, so a library built for another declaration layout is reported as
/// "plugin ABI version differs" before anything else is read.
pub const DECLARATION_SYMBOL: &[u8] = b"recblocks_plugin_declaration_v1\0";

/// The first eight bytes of every declaration.
pub const MAGIC: [u8; 8] = *b"RECBLKPL";

/// Version of the declaration layout and of the register protocol. Bumped on any change to
/// [`PluginDeclaration`] or [`RegisterFn`].
pub const ABI_VERSION: u32 = 2;

/// A string as plain data (pointer and length), readable before anything else is trusted.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FfiStr {
    /// Start of the UTF-8 bytes (static data of the plugin library).
    pub ptr: *const u8,
    /// Number of bytes.
    pub len: usize,
}

impl FfiStr {
    /// Wraps a static string.
    pub const fn new(s: &'static str) -> Self {
        FfiStr {
            ptr: s.as_ptr(),
            len: s.len(),
        }
    }
}

/// Returns the plugin's registrations. Rust ABI: only called after the host has checked that the
/// plugin was built by the same rustc against the same core.
pub type RegisterFn = fn() -> Vec<Registered>;

/// What a plugin library declares about itself. Built by [`export_plugin!`](crate::export_plugin);
/// every field except `plugin_name`, `plugin_version` and `register` is a constant of the core the
/// plugin was compiled against.
#[repr(C)]
pub struct PluginDeclaration {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// [`ABI_VERSION`].
    pub abi_version: u32,
    /// The recblocks-core version the plugin was built against.
    pub core_version: FfiStr,
    /// `rustc -V` of the compiler that built the plugin's core.
    pub rustc_version: FfiStr,
    /// The candle-core version inside that core.
    pub candle_version: FfiStr,
    /// Target, profile, opt-level, debug assertions, panic strategy and `prefer-dynamic`, as
    /// `key=value;...`.
    pub build_fingerprint: FfiStr,
    /// A hash of the sizes and alignments of the types that cross the boundary.
    pub boundary_layout: u64,
    /// A hash of core's source.
    pub core_source: u64,
    /// The plugin's name (its crate name).
    pub plugin_name: FfiStr,
    /// The plugin's version.
    pub plugin_version: FfiStr,
    /// The crates whose registrations this plugin provides, comma-separated.
    pub provides: FfiStr,
    /// Returns the plugin's registrations.
    pub register: RegisterFn,
    /// Returns the address of [`CORE_IDENTITY`](super::CORE_IDENTITY) in the core the plugin's
    /// code links: equal to the host's only when host and plugin share one copy of core. A plain
    /// `extern "C"` function returning an integer, so the host may call it before trusting
    /// anything else of the plugin.
    pub core_identity: IdentityFn,
}

/// Returns the address of the core static the plugin links ([`super::core_identity`]).
pub type IdentityFn = extern "C" fn() -> usize;
