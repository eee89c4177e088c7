//! Decoding under a guard. Some decoders of other crates panic on corrupt input instead of
//! returning an error: the `parquet` fuzz target found an out-of-bounds index in the parquet
//! crate's BYTE_STREAM_SPLIT decoder (a page claiming more values than it holds), and the `pickle`
//! target a `Vec::remove` past the end in candle's checkpoint reader (`rebuild_args` of a crafted
//! tensor record). [`guarded`] turns such a panic into an error message naming what the decoder
//! said and where, so that a corrupt file is refused like any other bad input instead of aborting
//! the command; the panic is not printed.

use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

thread_local! {
    /// Whether this thread is inside [`guarded`].
    static GUARDED: Cell<bool> = const { Cell::new(false) };
    /// The last panic inside [`guarded`] on this thread: its message and location.
    static CAUGHT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Wraps the panic hook (once per process): a panic inside [`guarded`] is recorded for the error
/// message instead of being printed; any other panic goes to the previous hook, as before.
fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if GUARDED.with(Cell::get) {
                let message = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".to_string());
                let at = info
                    .location()
                    .map(|l| format!(" (at {}:{})", l.file(), l.line()))
                    .unwrap_or_default();
                CAUGHT.with(|c| *c.borrow_mut() = Some(format!("{message}{at}")));
            } else {
                previous(info);
            }
        }));
    });
}

/// Runs `f`; a panic inside it is returned as `Err` with the panic's message and location.
pub(crate) fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    install_hook();
    let outer = GUARDED.with(|g| g.replace(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(outer));
    result.map_err(|_| {
        CAUGHT
            .with(|c| c.borrow_mut().take())
            .unwrap_or_else(|| "a panic without a message".to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::guarded;

    #[test]
    fn a_panic_inside_is_an_error_with_its_message_and_a_value_passes_through() {
        assert_eq!(guarded(|| 7), Ok(7));
        let v: Vec<u8> = vec![1];
        let i = v.len();
        let error = guarded(|| v[i]).err().unwrap_or_default();
        assert!(
            error.starts_with("index out of bounds: the len is 1 but the index is 1 (at "),
            "{error}"
        );
        assert!(error.contains("guard.rs:"), "{error}");
    }
}
