//! The identity of this copy of recblocks-core in the process.
//!
//! Host and plugins must share one copy of core (and of candle inside it). A plugin that carries
//! its own copy (compiled into it, or a second `librecblocks_core` with other symbol names) still
//! declares the same versions and fingerprint, since it was compiled from the same source, so the
//! declaration's strings cannot tell. What can tell is an address: [`CORE_IDENTITY`] is one static
//! of core, and a plugin's declaration reports the address of the `CORE_IDENTITY` its code links.
//! When the plugin links the host's core, that is the host's static; when it carries its own core,
//! it is another one.

/// A static of core whose address identifies the copy of core that code is linked against. Its
/// value is never read.
#[used]
pub static CORE_IDENTITY: u8 = 0;

/// The address of [`CORE_IDENTITY`] as seen by the caller's copy of core.
#[inline(never)]
pub fn core_identity() -> usize {
    std::ptr::addr_of!(CORE_IDENTITY) as usize
}
