//! The [`register!`](crate::register) macro: how a crate adds a component to the registry.
//!
//! It expands to an `inventory::submit!` of the kind's registration struct and fills in what the
//! author should not have to write: the crate name (taken from `CARGO_PKG_NAME` where the macro is
//! invoked, so it cannot be wrong), no aliases when none are given, and "takes no kwargs" when no
//! kwargs type is given.

/// Registers a component: its kind's registration struct (from [`crate::registry`]), its
/// canonical name, optional aliases, a one-line summary, its optional kwargs type (a
/// `Serialize + Default` struct whose default is shown by `recblocks components`; omitted, the
/// component takes none) and its build fn.
///
/// ```
/// use recblocks_core::{candle::Tensor, components::PositionalEncoding, BuildContext, Result};
///
/// /// Leaves session embeddings as they are.
/// struct NoPositions;
///
/// impl PositionalEncoding for NoPositions {
///     fn forward_t(&self, sessions: &Tensor, _train: bool) -> Result<Tensor> {
///         Ok(sessions.clone())
///     }
/// }
///
/// fn build(
///     _ctx: &BuildContext<'_>,
///     _kwargs: &recblocks_core::serde_json::Value,
/// ) -> Result<Box<dyn PositionalEncoding>> {
///     Ok(Box::new(NoPositions))
/// }
///
/// recblocks_core::register! {
///     PositionalEncodingRegistration {
///         name: "NoPositions",
///         aliases: ["my_plugin.NoPositions"],
///         summary: "adds no position information",
///         build: build,
///     }
/// }
///
/// # fn main() -> Result<()> {
/// // The registry finds it by name or alias, and records the registering crate.
/// let registry = recblocks_core::Registry::from_inventory()?;
/// let found = registry.positional_encoding("my_plugin.NoPositions")?;
/// assert_eq!(found.info.name, "NoPositions");
/// assert_eq!(found.info.crate_name, env!("CARGO_PKG_NAME"));
/// # Ok(())
/// # }
/// ```
#[macro_export]
macro_rules! register {
    (
        $registration:ident {
            name: $name:expr,
            $(aliases: [$($alias:expr),* $(,)?],)?
            summary: $summary:expr,
            $(kwargs: $kwargs:ty,)?
            build: $build:expr $(,)?
        }
    ) => {
        $crate::inventory::submit! {
            $crate::registry::$registration {
                info: $crate::registry::ComponentInfo {
                    name: $name,
                    aliases: &[$($($alias),*)?],
                    summary: $summary,
                    crate_name: ::core::env!("CARGO_PKG_NAME"),
                    default_kwargs: $crate::__default_kwargs!($($kwargs)?),
                },
                build: $build,
            }
        }
    };
}

/// The `default_kwargs` fn of a registration: `{}` without a kwargs type.
#[doc(hidden)]
#[macro_export]
macro_rules! __default_kwargs {
    () => {
        $crate::kwargs::default_kwargs_json::<$crate::kwargs::NoKwargs>
    };
    ($kwargs:ty) => {
        $crate::kwargs::default_kwargs_json::<$kwargs>
    };
}
