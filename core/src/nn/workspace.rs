//! Buffers reused across training steps: the fused blocks' and the chunked loss's workspace.
//!
//! A training step of a fused model needs the same large buffers every step (activations kept for
//! the backward pass, products, gradients, dropout masks). Allocating them fresh costs a
//! zero-fill (`vec![0; n]`) each time; a [`Buf`] instead comes from a process-wide pool of free
//! buffers and goes back to it when dropped (at the latest when the step's autograd graph is
//! dropped). So a steady-state step takes every large buffer it keeps to itself from the pool; the
//! only fresh ones replace buffers handed to candle for good ([`Buf::into_vec`]: a block's output,
//! its input's gradient), which candle owns and frees.
//!
//! Lengths are rounded up to size classes (eight per power of two, so at most 12.5% larger than
//! asked): a length that varies from batch to batch (BERT4Rec's masked positions, a catalog chunk
//! cut to the batch) reuses the same few buffers. The pool keeps at most as many bytes free as
//! were ever in use at once (the largest working set seen), and when it must make room it frees
//! the buffers of the class asked for least recently: so it holds about one step's working set,
//! and the buffers of the last, smaller batch of an epoch or of an evaluation give way to the
//! training step's. [`release`] frees them all (the host calls it when training ends).
//!
//! [`Buf::scratch`] hands out a buffer with arbitrary contents (the previous user's values): the
//! caller must overwrite every element before reading it. Debug builds fill scratch buffers with
//! NaN so that a read before the write shows up in the tests.

use std::{
    cell::Cell,
    collections::HashMap,
    ops::{Deref, DerefMut},
    sync::Mutex,
};

/// Buffers shorter than this (in f32s) are not pooled: the allocator serves them well.
const MIN_POOLED: usize = 4096;

/// Free buffers of one size class, and when the class was last asked for.
#[derive(Default)]
struct Class {
    free: Vec<Vec<f32>>,
    last_asked: u64,
}

#[derive(Default)]
struct Pool {
    classes: HashMap<usize, Class>,
    /// Bytes in free buffers.
    free_bytes: usize,
    /// Bytes in buffers handed out and not yet returned or handed over.
    in_use: usize,
    /// The most bytes ever in use at once: the cap on `free_bytes`.
    peak_in_use: usize,
    /// Counts requests (the clock of `last_asked`).
    requests: u64,
}

impl Pool {
    /// A free buffer of class `class` if there is one; notes the request either way.
    fn take(&mut self, class: usize) -> Option<Vec<f32>> {
        self.requests += 1;
        let entry = self.classes.entry(class).or_default();
        entry.last_asked = self.requests;
        let v = entry.free.pop();
        if v.is_some() {
            self.free_bytes -= class * 4;
        }
        self.in_use += class * 4;
        self.peak_in_use = self.peak_in_use.max(self.in_use);
        v
    }

    /// Takes back a buffer of class `v.len()`, making room by freeing the least recently asked
    /// classes' buffers; frees `v` itself when that is not enough.
    fn give_back(&mut self, v: Vec<f32>) {
        let class = v.len();
        let bytes = class * 4;
        self.in_use = self.in_use.saturating_sub(bytes);
        while self.free_bytes + bytes > self.peak_in_use {
            let oldest = self
                .classes
                .iter()
                .filter(|(&c, cls)| c != class && !cls.free.is_empty())
                .min_by_key(|(_, cls)| cls.last_asked)
                .map(|(&c, _)| c);
            let Some(oldest) = oldest else {
                return;
            };
            if let Some(cls) = self.classes.get_mut(&oldest) {
                if cls.free.pop().is_some() {
                    self.free_bytes -= oldest * 4;
                }
            }
        }
        self.free_bytes += bytes;
        self.classes.entry(class).or_default().free.push(v);
    }
}

static POOL: Mutex<Option<Pool>> = Mutex::new(None);

thread_local! {
    /// Pooled-size buffers this thread had to allocate because the pool had none free.
    static FRESH: Cell<usize> = const { Cell::new(0) };
    /// Pooled-size buffers this thread handed over for good ([`Buf::into_vec`]).
    static ESCAPED: Cell<usize> = const { Cell::new(0) };
}

fn with_pool<R>(f: impl FnOnce(&mut Pool) -> R) -> R {
    let mut guard = POOL.lock().unwrap_or_else(|e| e.into_inner());
    f(guard.get_or_insert_with(Pool::default))
}

/// The size class of a buffer of `len` f32s: `len` itself below the pooled size, else `len`
/// rounded up to a multiple of an eighth of its power of two.
fn class_of(len: usize) -> usize {
    if len < MIN_POOLED {
        return len;
    }
    let step = 1usize << (len.ilog2() - 3);
    len.div_ceil(step) * step
}

/// How many buffers of a pooled size (at least 4,096 f32) this thread has allocated fresh
/// because the pool had none of that class free.
pub fn fresh_allocations_on_this_thread() -> usize {
    FRESH.with(Cell::get)
}

/// How many buffers of a pooled size this thread has handed over for good (to become tensors
/// that candle owns: a block's output, its input's gradient). In a steady-state training step
/// every fresh allocation replaces one of these, and there are no others.
pub fn escaped_on_this_thread() -> usize {
    ESCAPED.with(Cell::get)
}

/// Frees every buffer the pool keeps (those in use are unaffected, and go back to the pool when
/// dropped). Returns the bytes freed.
pub fn release() -> usize {
    with_pool(|p| {
        let bytes = p.free_bytes;
        p.classes.clear();
        p.free_bytes = 0;
        bytes
    })
}

/// The bytes of free buffers the pool keeps now.
pub fn retained_bytes() -> usize {
    with_pool(|p| p.free_bytes)
}

/// An f32 buffer from the pool, returned to it when dropped.
pub struct Buf {
    /// The whole buffer: its size class's length for a pooled one.
    v: Vec<f32>,
    /// The length asked for (what the buffer derefs to).
    len: usize,
}

impl Buf {
    /// A buffer of `len` elements whose contents are arbitrary: the caller overwrites each
    /// element before reading it (debug builds fill it with NaN to catch a read before the write).
    pub fn scratch(len: usize) -> Buf {
        let class = class_of(len);
        let v = if len >= MIN_POOLED {
            with_pool(|p| p.take(class)).unwrap_or_else(|| {
                FRESH.with(|c| c.set(c.get() + 1));
                vec![0f32; class]
            })
        } else {
            vec![0f32; len]
        };
        #[allow(unused_mut)]
        let mut buf = Buf { v, len };
        #[cfg(debug_assertions)]
        buf.v.fill(f32::NAN);
        buf
    }

    /// A buffer of `len` zeros.
    pub fn zeros(len: usize) -> Buf {
        let mut buf = Buf::scratch(len);
        buf.fill(0.0);
        buf
    }

    /// The elements as a `Vec`, which leaves the pool for good (e.g. to become a tensor).
    pub fn into_vec(mut self) -> Vec<f32> {
        let mut v = std::mem::take(&mut self.v);
        if self.len >= MIN_POOLED {
            ESCAPED.with(|c| c.set(c.get() + 1));
            let bytes = v.len() * 4;
            with_pool(|p| p.in_use = p.in_use.saturating_sub(bytes));
        }
        v.truncate(self.len);
        v
    }
}

impl Deref for Buf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.v[..self.len]
    }
}

impl DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.v[..self.len]
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.v);
        if self.len < MIN_POOLED || v.len() != class_of(self.len) || v.capacity() != v.len() {
            return;
        }
        with_pool(|p| p.give_back(v));
    }
}

impl std::fmt::Debug for Buf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Buf({} f32)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The pool is process-wide and tests run in parallel: each test uses size classes of its own.

    #[test]
    fn size_classes_are_within_an_eighth_above_the_length() {
        assert_eq!(class_of(100), 100);
        assert_eq!(class_of(4096), 4096);
        assert_eq!(class_of(4097), 4096 + 512);
        for len in [5000usize, 6216, 409_600, 1_000_003] {
            let c = class_of(len);
            assert!(c >= len && (c - len) * 8 <= len, "{len} -> {c}");
            assert_eq!(class_of(c), c, "a class is its own class");
        }
    }

    #[test]
    fn a_dropped_buffer_is_handed_out_again_for_any_length_of_its_class() {
        let len = 3 << 20;
        let mut a = Buf::scratch(len);
        a[0] = 7.0;
        let ptr = a.as_ptr();
        drop(a);
        let b = Buf::scratch(len - 1000);
        assert_eq!(b.len(), len - 1000);
        assert_eq!(b.as_ptr(), ptr, "the same allocation comes back");
        let v = b.into_vec();
        assert_eq!(v.len(), len - 1000);
        let c = Buf::scratch(len);
        assert_ne!(
            c.as_ptr(),
            v.as_ptr(),
            "a handed-over buffer is not in the pool"
        );
    }

    #[test]
    fn zeros_are_zero_even_when_reused() {
        let len = (5 << 20) + 29;
        let mut a = Buf::scratch(len);
        a.fill(3.0);
        drop(a);
        let z = Buf::zeros(len);
        assert!(z.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn the_pool_keeps_no_more_free_than_was_ever_in_use() {
        let len = 7 << 20;
        let bufs: Vec<Buf> = (0..3).map(|_| Buf::scratch(len)).collect();
        drop(bufs);
        let retained = retained_bytes();
        let peak = with_pool(|p| p.peak_in_use);
        assert!(retained <= peak, "retained {retained} > peak {peak}");
    }

    #[cfg(debug_assertions)]
    #[test]
    fn scratch_is_poisoned_in_debug_builds() {
        let len = (9 << 20) + 53;
        let mut a = Buf::scratch(len);
        a.fill(1.0);
        drop(a);
        assert!(Buf::scratch(len).iter().all(|v| v.is_nan()));
    }
}
