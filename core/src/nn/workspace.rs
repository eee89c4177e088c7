//! Buffers reused across training steps: the fused blocks' and the chunked loss's workspace.
//!
//! A training step of a fused model needs the same large buffers every step (activations kept for
//! the backward pass, products, gradients), by exact length. Allocating them fresh costs a
//! zero-fill (`vec![0; n]`) and, for the largest ones, fresh pages from the kernel; a [`Buf`]
//! instead comes from a process-wide pool of free buffers keyed by length and goes back to it when
//! dropped (at the latest when the step's autograd graph is dropped). So a steady-state step takes
//! every large buffer it needs from the pool and allocates nothing large; the last, smaller batch
//! of an epoch has its own lengths, which the pool keeps beside the others.
//!
//! [`Buf::scratch`] hands out a buffer with arbitrary contents (the previous user's values): the
//! caller must overwrite every element before reading it. Debug builds fill scratch buffers with
//! NaN so that a read before the write shows up in the tests. Buffers that leave for candle
//! ([`Buf::into_vec`], e.g. a block's output) are not returned.
//!
//! The pool keeps at most [`RETAINED_BYTES`] of free buffers; [`release`] frees them all (a host
//! calls it when training ends).

use std::{
    cell::Cell,
    collections::HashMap,
    ops::{Deref, DerefMut},
    sync::Mutex,
};

/// Buffers shorter than this (in f32s) are not pooled: the allocator serves them well.
const MIN_POOLED: usize = 4096;

/// The most free memory the pool keeps (1 GiB); a buffer returned beyond it is freed.
pub const RETAINED_BYTES: usize = 1 << 30;

struct Pool {
    free: HashMap<usize, Vec<Vec<f32>>>,
    bytes: usize,
}

static POOL: Mutex<Option<Pool>> = Mutex::new(None);

thread_local! {
    /// Pooled-size buffers this thread had to allocate because the pool had none free.
    static FRESH: Cell<usize> = const { Cell::new(0) };
    /// Pooled-size buffers this thread handed over for good ([`Buf::into_vec`]).
    static ESCAPED: Cell<usize> = const { Cell::new(0) };
}

/// How many buffers of a pooled size (at least 4,096 f32) this thread has allocated fresh
/// because the pool had none of that length free.
pub fn fresh_allocations_on_this_thread() -> usize {
    FRESH.with(Cell::get)
}

/// How many buffers of a pooled size this thread has handed over for good (to become tensors
/// that candle owns: a block's output, its input's gradient). In a steady-state training step
/// every fresh allocation replaces one of these, and there are no others.
pub fn escaped_on_this_thread() -> usize {
    ESCAPED.with(Cell::get)
}

fn with_pool<R>(f: impl FnOnce(&mut Pool) -> R) -> R {
    let mut guard = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let pool = guard.get_or_insert_with(|| Pool {
        free: HashMap::new(),
        bytes: 0,
    });
    f(pool)
}

/// Frees every buffer the pool keeps (those in use are unaffected, and go back to the pool when
/// dropped). Returns the bytes freed.
pub fn release() -> usize {
    with_pool(|p| {
        let bytes = p.bytes;
        p.free.clear();
        p.bytes = 0;
        bytes
    })
}

/// The bytes of free buffers the pool keeps now.
pub fn retained_bytes() -> usize {
    with_pool(|p| p.bytes)
}

/// An f32 buffer from the pool, returned to it when dropped.
pub struct Buf(Vec<f32>);

impl Buf {
    /// A buffer of `len` elements whose contents are arbitrary: the caller overwrites each
    /// element before reading it (debug builds fill it with NaN to catch a read before the write).
    pub fn scratch(len: usize) -> Buf {
        let taken = if len >= MIN_POOLED {
            with_pool(|p| {
                let v = p.free.get_mut(&len).and_then(Vec::pop);
                if v.is_some() {
                    p.bytes -= len * 4;
                }
                v
            })
        } else {
            None
        };
        let fresh = taken.is_none() && len >= MIN_POOLED;
        if fresh {
            FRESH.with(|c| c.set(c.get() + 1));
        }
        #[allow(unused_mut)]
        let mut buf = Buf(taken.unwrap_or_else(|| vec![0f32; len]));
        #[cfg(debug_assertions)]
        buf.0.fill(f32::NAN);
        buf
    }

    /// A buffer of `len` zeros.
    pub fn zeros(len: usize) -> Buf {
        let mut buf = Buf::scratch(len);
        buf.0.fill(0.0);
        buf
    }

    /// A buffer holding `v` (returned to the pool when dropped).
    pub fn from_vec(v: Vec<f32>) -> Buf {
        Buf(v)
    }

    /// The elements as a `Vec`, which leaves the pool for good (e.g. to become a tensor).
    pub fn into_vec(mut self) -> Vec<f32> {
        if self.0.len() >= MIN_POOLED {
            ESCAPED.with(|c| c.set(c.get() + 1));
        }
        std::mem::take(&mut self.0)
    }
}

impl Deref for Buf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.0
    }
}

impl DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.0
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        let len = v.len();
        if len < MIN_POOLED || v.capacity() != len {
            return;
        }
        with_pool(|p| {
            if p.bytes + len * 4 <= RETAINED_BYTES {
                p.bytes += len * 4;
                p.free.entry(len).or_default().push(v);
            }
        });
    }
}

impl std::fmt::Debug for Buf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Buf({} f32)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pool is process-wide and tests run in parallel: each test uses lengths of its own.
    #[test]
    fn a_dropped_buffer_is_handed_out_again_and_an_escaped_one_is_not() {
        let len = MIN_POOLED + 17;
        let mut a = Buf::scratch(len);
        a[0] = 7.0;
        let ptr = a.as_ptr();
        drop(a);
        let b = Buf::scratch(len);
        assert_eq!(b.as_ptr(), ptr, "the same allocation comes back");
        let v = b.into_vec();
        assert_eq!(v.len(), len);
        let c = Buf::scratch(len);
        assert_ne!(
            c.as_ptr(),
            v.as_ptr(),
            "an escaped buffer is not in the pool"
        );
    }

    #[test]
    fn zeros_are_zero_even_when_reused() {
        let len = MIN_POOLED + 29;
        let mut a = Buf::scratch(len);
        a.fill(3.0);
        drop(a);
        let z = Buf::zeros(len);
        assert!(z.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn small_buffers_are_not_pooled_and_lengths_do_not_mix() {
        let small = Buf::scratch(8);
        assert_eq!(small.len(), 8);
        drop(small);
        let len = MIN_POOLED + 41;
        let a = Buf::scratch(len);
        drop(a);
        let other = Buf::scratch(len + 1);
        assert_eq!(other.len(), len + 1);
    }

    #[cfg(debug_assertions)]
    #[test]
    fn scratch_is_poisoned_in_debug_builds() {
        let len = MIN_POOLED + 53;
        let mut a = Buf::scratch(len);
        a.fill(1.0);
        drop(a);
        assert!(Buf::scratch(len).iter().all(|v| v.is_nan()));
    }
}
