//! Saving and restoring a seeded random stream (for `fit --resume`): ChaCha8's seed, stream and
//! word position identify its state exactly.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use recblocks_core::SharedRng;
use serde::{Deserialize, Serialize};

/// A serialisable ChaCha8 state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RngState {
    /// The 32-byte seed, hex.
    pub seed: String,
    /// The stream number.
    pub stream: u64,
    /// The word position, as a decimal string (u128 does not fit JSON numbers).
    pub word_pos: String,
}

impl RngState {
    /// The state of `rng` now.
    pub fn capture(rng: &SharedRng) -> Self {
        let state = rng.state();
        RngState {
            seed: state
                .get_seed()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            stream: state.get_stream(),
            word_pos: state.get_word_pos().to_string(),
        }
    }

    /// Puts `rng` back into this state.
    pub fn restore(&self, rng: &SharedRng) -> Result<(), String> {
        if self.seed.len() != 64 {
            return Err(format!(
                "rng seed must be 64 hex digits, found {:?}",
                self.seed
            ));
        }
        let mut seed = [0u8; 32];
        for (i, b) in seed.iter_mut().enumerate() {
            *b = u8::from_str_radix(&self.seed[2 * i..2 * i + 2], 16)
                .map_err(|e| format!("rng seed is not hex: {e}"))?;
        }
        let word_pos: u128 = self
            .word_pos
            .parse()
            .map_err(|e| format!("rng word_pos {:?} is not a number: {e}", self.word_pos))?;
        let mut state = ChaCha8Rng::from_seed(seed);
        state.set_stream(self.stream);
        state.set_word_pos(word_pos);
        rng.restore(state);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn restored_stream_continues_identically() {
        let a = SharedRng::new(5);
        let _: u64 = a.lock().random();
        let saved = RngState::capture(&a);
        let next: Vec<u32> = (0..4).map(|_| a.lock().random()).collect();
        let b = SharedRng::new(999);
        saved.restore(&b).unwrap_or_default();
        let again: Vec<u32> = (0..4).map(|_| b.lock().random()).collect();
        assert_eq!(next, again);
    }
}
