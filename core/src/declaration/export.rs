//! The export macro plugin crates invoke, and the registrations it hands over.

use crate::registry::{inventory_registrations, static_registrations, Registered};

/// The registrations of the crates in `provides` (comma-separated crate names) that were added by
/// a library loaded at run time: `inventory` entries of those crates that are not part of the
/// host's own (static) set. Host and plugin share one core, hence one `inventory` list, so the
/// plugin's entries are found there once its constructors have run.
#[doc(hidden)]
pub fn plugin_registrations(provides: &str) -> Vec<Registered> {
    let crates: Vec<&str> = provides.split(',').map(str::trim).collect();
    let statics = static_registrations();
    inventory_registrations()
        .into_iter()
        .filter(|r| crates.contains(&r.info().crate_name))
        .filter(|r| !statics.iter().any(|s| s.same_entry(r)))
        .collect()
}

/// Exports a plugin declaration from a `cdylib` crate, so `recblocks --plugin lib….so` can load it.
///
/// ```ignore
/// recblocks_core::export_plugin!(provides = ["my-plugin-logic"]);
/// // or, when the registrations live in this crate itself:
/// recblocks_core::export_plugin!();
/// ```
///
/// `provides` lists the crates whose `inventory` registrations the plugin hands over (defaults to
/// the invoking crate). Invoke it once per library, in a tiny wrapper crate when the logic crate
/// is also linked statically somewhere (two exports of the same symbol cannot be linked together).
#[macro_export]
macro_rules! export_plugin {
    () => {
        $crate::export_plugin!(provides = [env!("CARGO_PKG_NAME")]);
    };
    (provides = [$($krate:expr),+ $(,)?]) => {
        $crate::__export_declaration!(
            core_version = $crate::VERSION,
            identity = $crate::declaration::core_identity,
            provides = [$($krate),+]
        );
    };
}

/// The expansion of [`export_plugin!`], with the recblocks-core version and the core identity
/// probe as parameters so that test fixtures can declare another version or stand in for a plugin
/// with its own copy of core, and check that the host refuses them. Not for plugins.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_declaration {
    (core_version = $core_version:expr, identity = $identity:path, provides = [$($krate:expr),+]) => {
        const _: () = {
            const PROVIDES: &str = $crate::__concat_provides!($($krate),+);

            extern "C" fn core_identity() -> usize {
                $identity()
            }

            fn register() -> ::std::vec::Vec<$crate::registry::Registered> {
                $crate::declaration::plugin_registrations(PROVIDES)
            }

            // A `const`, promoted to `'static` where it is borrowed (a `static` would need `Sync`,
            // which raw pointers are not).
            const DECLARATION: $crate::declaration::PluginDeclaration = $crate::declaration::PluginDeclaration {
                magic: $crate::declaration::MAGIC,
                abi_version: $crate::declaration::ABI_VERSION,
                core_version: $crate::declaration::FfiStr::new($core_version),
                rustc_version: $crate::declaration::FfiStr::new($crate::declaration::RUSTC_VERSION),
                candle_version: $crate::declaration::FfiStr::new($crate::declaration::CANDLE_VERSION),
                build_fingerprint: $crate::declaration::FfiStr::new($crate::declaration::BUILD_FINGERPRINT),
                boundary_layout: $crate::declaration::BOUNDARY_LAYOUT,
                core_source: $crate::declaration::SOURCE_HASH,
                plugin_name: $crate::declaration::FfiStr::new(env!("CARGO_PKG_NAME")),
                plugin_version: $crate::declaration::FfiStr::new(env!("CARGO_PKG_VERSION")),
                provides: $crate::declaration::FfiStr::new(PROVIDES),
                register,
                core_identity,
            };

            /// The plugin declaration `recblocks --plugin` looks for.
            // `no_mangle` makes the function findable by name (`dlsym`). The `unsafe_code` lint
            // flags it because two exports of one name clash at link time; that is why a plugin
            // exports from its own small `cdylib` crate, once.
            #[allow(unsafe_code)]
            #[no_mangle]
            pub extern "C" fn recblocks_plugin_declaration_v1(
            ) -> &'static $crate::declaration::PluginDeclaration {
                &DECLARATION
            }
        };
    };
}

/// Joins crate names with commas at compile time (used by [`export_plugin!`]).
#[doc(hidden)]
#[macro_export]
macro_rules! __concat_provides {
    ($first:expr $(, $rest:expr)*) => {
        concat!($first $(, ",", $rest)*)
    };
}
