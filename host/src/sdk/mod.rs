//! The plugin SDK: what a plugin build needs from the recblocks binary that will load the plugin,
//! and the two commands that use it, `recblocks plugin new` ([`scaffold`]) and
//! `recblocks plugin build` ([`build`]), and the relocatable install that carries it
//! ([`install`]).
//!
//! A plugin must link the very recblocks-core (and candle inside it) that the host links. The
//! SDK is that core's compiled crate (`librecblocks_core.so`, whose metadata rustc reads) and the
//! compiled crates its metadata refers to ([`locate`]). A plugin crate does not depend on
//! recblocks-core through cargo: `recblocks plugin build` hands the SDK's core to rustc with
//! `--extern`, so cargo never compiles core or candle for a plugin, and the plugin gets the
//! host's core whatever features its own dependencies turn on.

pub mod build;
mod error;
pub mod install;
pub mod locate;
mod lock;
pub mod scaffold;

pub use error::SdkError;
pub use locate::{Sdk, SdkLayout};

/// The toolchain version (`1.95.0`) of the rustc that built this binary's core, from its
/// `rustc -V` (`rustc 1.95.0 (59807616e 2026-04-14)`).
pub fn toolchain_version() -> &'static str {
    recblocks_core::declaration::RUSTC_VERSION
        .split_whitespace()
        .nth(1)
        .unwrap_or("stable")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_toolchain_version_is_the_second_word_of_rustc_v() {
        let v = super::toolchain_version();
        assert!(v.chars().next().is_some_and(|c| c.is_ascii_digit()), "{v}");
        assert!(recblocks_core::declaration::RUSTC_VERSION.contains(v));
    }
}
