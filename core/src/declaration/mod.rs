//! Run-time plugins: the declaration a plugin library exports, the host's compatibility check,
//! and the [`export_plugin!`](crate::export_plugin) macro.
//!
//! A plugin library exports one `extern "C"` function, [`DECLARATION_SYMBOL`], returning a
//! `#[repr(C)]` [`PluginDeclaration`]. The host reads the plain-data head (magic, ABI version)
//! first, then the version strings and the build fingerprint, and calls the plugin's `register`
//! function only when everything matches its own build ([`BuildInfo::check_plugin`]).
//!
//! Host and plugins share one copy of this crate (a Rust `dylib`) and of candle inside it, so a
//! tensor made by a plugin and one made by the host are numbered by the same counter and training
//! through a plugin's component works. That is also why the build must match exactly: Rust has no
//! stable ABI, so the plugin must be compiled by the same rustc, against the same core source,
//! with the same profile.

mod build_info;
mod export;
mod header;
mod identity;
mod source;

pub use build_info::{
    BuildInfo, Mismatch, BOUNDARY_LAYOUT, BUILD_FINGERPRINT, CANDLE_VERSION, RUSTC_VERSION,
    SOURCE_HASH,
};
pub use export::plugin_registrations;
pub use header::{
    FfiStr, IdentityFn, PluginDeclaration, RegisterFn, ABI_VERSION, DECLARATION_SYMBOL, MAGIC,
};
pub use identity::{core_identity, CORE_IDENTITY};
