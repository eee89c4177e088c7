//! Calls into plugin code, guarded: a panic in a plugin's component becomes an error naming the
//! library, the component kind and the component, instead of unwinding through the host.
//!
//! A plugin's registrations are replaced, when the plugin is loaded, by registrations of the host
//! whose `build` is a trampoline (`tables.rs`): it calls the plugin's build fn under
//! [`std::panic::catch_unwind`] and wraps what it returns in a guarded object (`objects.rs`) whose
//! every method does the same. A method that returns a `Result` returns
//! [`CoreError::PluginPanicked`]; one that cannot (`out_dim`, `n_negatives`, ...) panics again with
//! a [`PluginPanic`] payload carrying the same text, which the binary's `main` reports as an
//! error. A build fn is a plain `fn` pointer, so each trampoline is one instance of a generic
//! function per slot: a process can load at most [`SLOTS`] plugin components of one kind.
//!
//! What is not guarded: code of the plugin that the host does not call through a component
//! (its library initialisers, a custom op's backward pass run by candle's autograd, the
//! `similarity()` a plugin backbone hands out) and `default_kwargs` (a `Default` of plain data).

mod objects;
mod tables;

use std::{
    any::Any,
    panic::{catch_unwind, AssertUnwindSafe},
    sync::Arc,
};

use recblocks_core::{
    error::PluginPanicInfo, registry::Registered, ComponentKind, CoreError, Result,
};

pub use tables::SLOTS;

use super::PluginError;

/// Where a call into plugin code goes: the library, the component kind and the component.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The plugin library file.
    pub library: Arc<str>,
    /// The component kind.
    pub kind: ComponentKind,
    /// The component's canonical name.
    pub component: &'static str,
}

/// The payload of a panic re-raised by a guarded method that cannot return an error: the text
/// names the library, the kind, the component and the call.
#[derive(Debug)]
pub struct PluginPanic(pub String);

impl Origin {
    fn error(&self, call: &str, payload: &(dyn Any + Send)) -> CoreError {
        CoreError::PluginPanicked(Box::new(PluginPanicInfo {
            library: self.library.to_string(),
            kind: self.kind,
            component: self.component.to_string(),
            call: call.to_string(),
            message: panic_text(payload),
        }))
    }

    /// Runs `f` (a call into the plugin); a panic becomes [`CoreError::PluginPanicked`].
    pub fn call<T>(&self, call: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| Err(self.error(call, &*payload)))
    }

    /// Runs `f` (a call into the plugin that cannot return an error); a panic is raised again as a
    /// [`PluginPanic`] naming the library, the kind, the component and the call.
    pub fn call_plain<T>(&self, call: &str, f: impl FnOnce() -> T) -> T {
        match catch_unwind(AssertUnwindSafe(f)) {
            Ok(value) => value,
            Err(payload) => std::panic::resume_unwind(Box::new(PluginPanic(
                self.error(call, &*payload).to_string(),
            ))),
        }
    }
}

/// The text of a panic payload: the message of `panic!`, or of a [`PluginPanic`].
pub fn panic_text(payload: &(dyn Any + Send)) -> String {
    if let Some(p) = payload.downcast_ref::<PluginPanic>() {
        p.0.clone()
    } else if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic without a message)".to_string()
    }
}

/// The guarded stand-in of a plugin's registration: same name, aliases, summary, crate and
/// default kwargs, with a `build` that guards the plugin's build fn and what it builds.
pub fn guard(library: &Arc<str>, reg: Registered) -> Result<Registered, PluginError> {
    let origin = Origin {
        library: library.clone(),
        kind: reg.kind(),
        component: reg.info().name,
    };
    tables::guard(origin, reg).map_err(|kind| PluginError::TooManyComponents {
        path: library.to_string().into(),
        kind,
        slots: SLOTS,
    })
}
