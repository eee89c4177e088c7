//! The rules of a training step that is recorded once and replayed: on a CUDA device, the whole
//! step (forward, backward, Adam) captured as one CUDA graph, as `torch.cuda.graph` does for
//! PyTorch.
//!
//! A replay runs the recorded kernels again on the same device addresses with no host work in
//! between, so a step that is to be captured must
//! - read its inputs from buffers that stay where they are (the host copies each batch into them
//!   before a replay),
//! - have the same shapes every time (no shape that depends on the data, such as "the positions
//!   with a target"),
//! - never read device values back on the host, nor copy data up other than constants,
//! - take its per-step values (dropout keys, Adam's step coefficients) from device memory that
//!   the host writes before each replay.
//!
//! Components learn that a step must follow these rules from [`static_shapes`]: a component that
//! reads data to the host or gives data-dependent shapes keeps its usual path outside such a step
//! and takes a fixed-shape path inside it (the objective scores every position, padding with
//! weight 0, instead of selecting the positions with a target; the backbone leaves its input-id
//! check to the host, which checks each batch before copying it up).
//!
//! Dropout keys go through a [`KeyTape`]: outside a tape, each dropout draws its key from its
//! stream; a counting tape lets them draw and notes which stream each draw came from; a slot tape
//! (during a capture) hands each dropout the device address of a key instead, which the host
//! fills before every replay by drawing from the noted streams in the same order; a given tape
//! hands out keys drawn beforehand (the CPU form of a replay, used to test the bookkeeping). A
//! replayed step therefore draws exactly the masks the step would have drawn uncaptured.

use std::cell::{Cell, RefCell};

use rand::Rng;

use crate::context::SharedRng;

thread_local! {
    static STATIC_SHAPES: Cell<usize> = const { Cell::new(0) };
    static TAPE: RefCell<Option<KeyTape>> = const { RefCell::new(None) };
}

/// Whether the current step is one that may be captured: components must then keep shapes fixed
/// and not read device values on the host (see the module documentation).
pub fn static_shapes() -> bool {
    STATIC_SHAPES.with(|s| s.get() > 0)
}

/// Marks the current thread's work as a step that may be captured until dropped.
#[must_use = "the step is static only while the guard lives"]
pub struct StaticShapes(());

impl StaticShapes {
    /// Enters a static-shapes step (nested entries are allowed).
    pub fn enter() -> Self {
        STATIC_SHAPES.with(|s| s.set(s.get() + 1));
        StaticShapes(())
    }
}

impl Drop for StaticShapes {
    fn drop(&mut self) {
        STATIC_SHAPES.with(|s| s.set(s.get().saturating_sub(1)));
    }
}

/// The next key of `rng`: the one draw a dropout makes per mask.
pub(crate) fn next_key(rng: &SharedRng) -> u64 {
    rng.lock().random::<u64>()
}

/// One key from each of `streams`, in order: the keys an uncaptured step would draw, for the
/// streams a counting tape noted.
pub fn draw_keys(streams: &[SharedRng]) -> Vec<u64> {
    streams.iter().map(next_key).collect()
}

/// Where the dropout keys of a step come from (see the module documentation).
#[derive(Debug)]
pub struct KeyTape {
    mode: TapeMode,
    /// A dropout that needed a key value where only a slot could be given (a mask drawn on the
    /// host during a capture); reported by [`KeyTape::finish`].
    misuse: Option<String>,
}

#[derive(Debug)]
enum TapeMode {
    Counting {
        streams: Vec<SharedRng>,
    },
    Slots {
        base: u64,
        capacity: usize,
        used: usize,
    },
    Given {
        keys: Vec<u64>,
        used: usize,
    },
}

/// What a dropout gets from the current tape.
pub(crate) enum TapedKey {
    /// A key value.
    Value(u64),
    /// The device address of the key.
    Slot(u64),
}

impl KeyTape {
    /// Dropouts draw from their streams as usual; the tape notes the stream of every draw.
    pub fn counting() -> Self {
        Self::with(TapeMode::Counting {
            streams: Vec::new(),
        })
    }

    /// Dropouts get the device addresses `base + 8·i` (u64 keys), in order; the step must draw
    /// exactly `capacity` keys (the count its warm-up drew). No stream is drawn from.
    pub fn slots(base: u64, capacity: usize) -> Self {
        Self::with(TapeMode::Slots {
            base,
            capacity,
            used: 0,
        })
    }

    /// Dropouts get `keys` in order.
    pub fn given(keys: Vec<u64>) -> Self {
        Self::with(TapeMode::Given { keys, used: 0 })
    }

    fn with(mode: TapeMode) -> Self {
        KeyTape { mode, misuse: None }
    }

    /// Runs `f` with this tape serving the current thread's dropouts; returns its result and the
    /// tape.
    pub fn run<T>(self, f: impl FnOnce() -> T) -> (T, KeyTape) {
        let previous = TAPE.with(|t| t.borrow_mut().replace(self));
        let out = f();
        let tape = TAPE.with(|t| std::mem::replace(&mut *t.borrow_mut(), previous));
        // The tape was put there above and only `take_key` touches it, without removing it.
        let tape = tape.unwrap_or_else(KeyTape::counting);
        (out, tape)
    }

    /// How many keys were taken.
    pub fn used(&self) -> usize {
        match &self.mode {
            TapeMode::Counting { streams } => streams.len(),
            TapeMode::Slots { used, .. } | TapeMode::Given { used, .. } => *used,
        }
    }

    /// The streams a counting tape saw drawn from, in order (empty for the other tapes).
    pub fn streams(&self) -> &[SharedRng] {
        match &self.mode {
            TapeMode::Counting { streams } => streams,
            _ => &[],
        }
    }

    /// Checks that the step used the tape as it must: as many keys as a slot tape was made for,
    /// every given key taken exactly, and no mask drawn on the host under a slot tape.
    pub fn finish(&self) -> Result<(), String> {
        if let Some(m) = &self.misuse {
            return Err(m.clone());
        }
        match &self.mode {
            TapeMode::Slots { capacity, used, .. } if used != capacity => Err(format!(
                "the captured step drew {used} dropout masks where its warm-up drew {capacity}"
            )),
            TapeMode::Given { keys, used } if *used != keys.len() => Err(format!(
                "the step drew {used} dropout masks; {} keys were drawn for it",
                keys.len()
            )),
            _ => Ok(()),
        }
    }

    fn take(&mut self, rng: &SharedRng, need_value: bool) -> TapedKey {
        match &mut self.mode {
            TapeMode::Counting { streams } => {
                streams.push(rng.clone());
                TapedKey::Value(next_key(rng))
            }
            TapeMode::Slots {
                base,
                capacity,
                used,
            } => {
                let i = *used;
                *used += 1;
                if need_value && self.misuse.is_none() {
                    self.misuse = Some(
                        "a dropout drew its mask on the host during a captured step (only device \
                         masks can be replayed)"
                            .into(),
                    );
                }
                // Past the capacity the address is never read: `finish` fails the capture.
                let i = i.min(capacity.saturating_sub(1));
                TapedKey::Slot(*base + 8 * i as u64)
            }
            TapeMode::Given { keys, used } => {
                let key = keys.get(*used).copied();
                *used += 1;
                TapedKey::Value(key.unwrap_or_else(|| next_key(rng)))
            }
        }
    }
}

/// The key of the next mask drawn from `rng`: from the current tape if one is running, else a
/// fresh draw. `need_value`: the caller computes the mask on the host and cannot use a slot.
pub(crate) fn take_key(rng: &SharedRng, need_value: bool) -> TapedKey {
    TAPE.with(|t| match t.borrow_mut().as_mut() {
        Some(tape) => tape.take(rng, need_value),
        None => TapedKey::Value(next_key(rng)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One key value from each stream in turn, as dropouts computing their masks on the host take
    /// them (0 for a slot, which these tapes never give).
    fn key_values(streams: &[&SharedRng]) -> Vec<u64> {
        streams
            .iter()
            .map(|r| match take_key(r, true) {
                TapedKey::Value(k) => k,
                TapedKey::Slot(_) => 0,
            })
            .collect()
    }

    #[test]
    fn a_counting_tape_notes_the_streams_and_given_keys_replay_them() {
        let (a, b) = (SharedRng::new(1), SharedRng::new(2));
        let order = [&a, &b, &a];
        // Uncaptured: three draws.
        let plain: Vec<u64> = order.iter().map(|r| next_key(r)).collect();
        // The same streams again from the same seeds, through a counting tape.
        let (a2, b2) = (SharedRng::new(1), SharedRng::new(2));
        let order2 = [&a2, &b2, &a2];
        let (counted, tape) = KeyTape::counting().run(|| key_values(&order2));
        assert_eq!(counted, plain);
        assert_eq!(tape.used(), 3);
        assert!(tape.finish().is_ok());
        // The next step's keys drawn ahead from the noted streams equal an uncaptured step's.
        let ahead = draw_keys(tape.streams());
        let next_plain: Vec<u64> = order.iter().map(|r| next_key(r)).collect();
        assert_eq!(ahead, next_plain);
        // A given tape hands them out in order, and checks they were all taken.
        let (got, given) = KeyTape::given(ahead.clone()).run(|| key_values(&order2));
        assert_eq!(got, ahead);
        assert!(given.finish().is_ok());
        let (_, short) = KeyTape::given(ahead).run(|| take_key(&a2, true));
        assert!(short.finish().is_err());
    }

    #[test]
    fn a_slot_tape_hands_out_addresses_and_reports_host_masks_and_overflow() {
        let rng = SharedRng::new(3);
        let before = rng.state();
        let (slots, tape) = KeyTape::slots(0x1000, 2).run(|| {
            (0..2)
                .map(|_| match take_key(&rng, false) {
                    TapedKey::Slot(a) => a,
                    TapedKey::Value(_) => 0,
                })
                .collect::<Vec<_>>()
        });
        assert_eq!(slots, vec![0x1000, 0x1008]);
        assert!(tape.finish().is_ok());
        // No stream was drawn from.
        assert_eq!(rng.state(), before);
        let (_, over) = KeyTape::slots(0x1000, 1).run(|| {
            take_key(&rng, false);
            take_key(&rng, false)
        });
        assert!(over
            .finish()
            .is_err_and(|e| e.contains("drew 2 dropout masks where")));
        let (_, under) = KeyTape::slots(0x1000, 2).run(|| take_key(&rng, false));
        assert!(under
            .finish()
            .is_err_and(|e| e.contains("drew 1 dropout masks where")));
        let (_, host) = KeyTape::slots(0x1000, 4).run(|| take_key(&rng, true));
        assert!(host.finish().is_err_and(|e| e.contains("on the host")));
    }

    #[test]
    fn static_shapes_nests_and_ends_with_its_guard() {
        assert!(!static_shapes());
        {
            let _a = StaticShapes::enter();
            let _b = StaticShapes::enter();
            assert!(static_shapes());
        }
        assert!(!static_shapes());
    }
}
