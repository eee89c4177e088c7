//! A built-in, deterministic synthetic interaction log with real sequential structure, on which
//! a sequential model should clearly beat a popularity baseline.
//!
//! How it is made (all randomness from one `ChaCha8Rng` seeded with [`SyntheticConfig::seed`],
//! drawn through its raw `u64` stream so the output does not depend on `rand`'s sampling code):
//!
//! 1. **Items** `i0 .. i{n_items-1}` have a Zipf-like popularity: item `k` has weight
//!    `1 / (k + 1)`, so `i0` is the most popular.
//! 2. **A sparse Markov chain**: every item gets [`N_SUCCESSORS`] distinct preferred successors
//!    (other items, drawn uniformly), followed with probabilities [`SUCCESSOR_WEIGHTS`]
//!    (0.5, 0.3, 0.2).
//! 3. **Users** `u0 .. u{n_users-1}`: each draws a length uniformly in `min_len ..= max_len` and a
//!    first item by popularity, then walks: with probability
//!    [`SyntheticConfig::follow_probability`] (0.8 by default) the next item is one of the
//!    current item's successors, otherwise a fresh item drawn by popularity.
//! 4. **Datetimes**: each user starts at [`START_DATETIME`] plus a uniform offset of up to
//!    [`START_SPREAD_SECONDS`] (30 days) and advances one second per step, so time order is walk
//!    order. Weights are 1.0.
//!
//! Rows come user by user, in walk order. For the next item after `x`, the best guess "the most
//! frequent successor of `x`" is right about `0.8 × 0.5 = 40%` of the time, while "the most
//! popular item" is right a few percent of the time.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::error::DataError;
use super::interactions::{Interactions, InteractionsBuilder};

/// Preferred successors per item.
pub const N_SUCCESSORS: usize = 3;
/// How often each preferred successor is taken when the walk follows the chain.
pub const SUCCESSOR_WEIGHTS: [f64; N_SUCCESSORS] = [0.5, 0.3, 0.2];
/// The earliest possible first datetime (2020-09-13T12:26:40Z), in unix seconds.
pub const START_DATETIME: i64 = 1_600_000_000;
/// Users' first datetimes spread uniformly over this many seconds after [`START_DATETIME`].
pub const START_SPREAD_SECONDS: u64 = 30 * 86_400;

/// The size and seed of a synthetic dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticConfig {
    /// Number of users (at least 1).
    pub n_users: usize,
    /// Number of items (at least `N_SUCCESSORS + 1`).
    pub n_items: usize,
    /// Shortest user history (at least 1).
    pub min_len: usize,
    /// Longest user history (at least `min_len`).
    pub max_len: usize,
    /// Probability of following the chain at each step (in `[0, 1]`).
    pub follow_probability: f64,
    /// Seed of the random stream: the same config gives the same log.
    pub seed: u64,
}

impl Default for SyntheticConfig {
    /// 1000 users, 500 items, histories of 20 to 60 items, follow probability 0.8, seed 42.
    fn default() -> Self {
        SyntheticConfig {
            n_users: 1000,
            n_items: 500,
            min_len: 20,
            max_len: 60,
            follow_probability: 0.8,
            seed: 42,
        }
    }
}

impl SyntheticConfig {
    /// Checks the sizes and the probability.
    pub fn validate(&self) -> Result<(), DataError> {
        let invalid = |name, message: String| Err(DataError::InvalidArgument { name, message });
        if self.n_users == 0 {
            return invalid("n_users", "must be at least 1, got 0".into());
        }
        if self.n_items <= N_SUCCESSORS {
            return invalid(
                "n_items",
                format!(
                    "must be at least {}, got {}",
                    N_SUCCESSORS + 1,
                    self.n_items
                ),
            );
        }
        if self.min_len == 0 || self.min_len > self.max_len {
            return invalid(
                "min_len/max_len",
                format!(
                    "need 1 <= min_len <= max_len, got min_len {} and max_len {}",
                    self.min_len, self.max_len
                ),
            );
        }
        if !(0.0..=1.0).contains(&self.follow_probability) {
            return invalid(
                "follow_probability",
                format!("must be in [0, 1], got {}", self.follow_probability),
            );
        }
        Ok(())
    }
}

/// Generates the synthetic log described in this module's documentation.
pub fn generate(config: &SyntheticConfig) -> Result<Interactions, DataError> {
    config.validate()?;
    let mut rng = Stream(ChaCha8Rng::seed_from_u64(config.seed));
    let n_items = config.n_items;

    let popularity: Vec<f64> = (0..n_items)
        .scan(0.0, |total, k| {
            *total += 1.0 / (k as f64 + 1.0);
            Some(*total)
        })
        .collect();
    let successors: Vec<[usize; N_SUCCESSORS]> = (0..n_items)
        .map(|item| {
            let mut chosen = [item; N_SUCCESSORS];
            for slot in 0..N_SUCCESSORS {
                let mut next = rng.below(n_items);
                while next == item || chosen[..slot].contains(&next) {
                    next = rng.below(n_items);
                }
                chosen[slot] = next;
            }
            chosen
        })
        .collect();

    let item_names: Vec<String> = (0..n_items).map(|k| format!("i{k}")).collect();
    let mut builder = InteractionsBuilder::new();
    for user in 0..config.n_users {
        let user_name = format!("u{user}");
        let len = config.min_len + rng.below(config.max_len - config.min_len + 1);
        let start = START_DATETIME + rng.below_u64(START_SPREAD_SECONDS) as i64;
        let mut item = rng.weighted(&popularity);
        for step in 0..len {
            if step > 0 {
                item = if rng.unit() < config.follow_probability {
                    successors[item][rng.pick(&SUCCESSOR_WEIGHTS)]
                } else {
                    rng.weighted(&popularity)
                };
            }
            builder.push(&user_name, &item_names[item], 1.0, start + step as i64)?;
        }
    }
    Ok(builder.finish())
}

/// Draws from the raw `u64` stream only, so results are fixed by the ChaCha8 stream alone.
struct Stream(ChaCha8Rng);

impl Stream {
    /// Uniform in `0..n` (`n > 0`), by the multiply-shift method.
    fn below_u64(&mut self, n: u64) -> u64 {
        ((u128::from(self.0.next_u64()) * u128::from(n)) >> 64) as u64
    }

    fn below(&mut self, n: usize) -> usize {
        self.below_u64(n as u64) as usize
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.0.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// An index drawn by the cumulative weights `cumulative` (increasing, last = total).
    fn weighted(&mut self, cumulative: &[f64]) -> usize {
        let total = cumulative.last().copied().unwrap_or(0.0);
        let u = self.unit() * total;
        cumulative
            .partition_point(|&c| c <= u)
            .min(cumulative.len().saturating_sub(1))
    }

    /// An index drawn by the (not cumulative) weights `weights`, which sum to 1.
    fn pick(&mut self, weights: &[f64]) -> usize {
        let mut u = self.unit();
        for (i, &w) in weights.iter().enumerate() {
            if u < w {
                return i;
            }
            u -= w;
        }
        weights.len().saturating_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::split::leave_last_out;
    use std::collections::HashMap;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn small(seed: u64) -> SyntheticConfig {
        SyntheticConfig {
            n_users: 50,
            n_items: 40,
            min_len: 3,
            max_len: 8,
            seed,
            ..SyntheticConfig::default()
        }
    }

    #[test]
    fn same_seed_same_log_other_seed_other_log() -> TestResult {
        assert_eq!(generate(&small(7))?, generate(&small(7))?);
        assert_ne!(generate(&small(7))?, generate(&small(8))?);
        Ok(())
    }

    #[test]
    fn shape_of_the_log() -> TestResult {
        let log = generate(&small(1))?;
        assert!(log.check().is_ok());
        assert_eq!(log.n_users(), 50);
        assert!(log.n_items() <= 40);
        assert!(log.weights.iter().all(|&w| w == 1.0));
        // Rows come user by user; each history has 3..=8 rows one second apart, starting in
        // the 30-day window.
        let mut row = 0;
        for user in 0..50u32 {
            let start = row;
            while row < log.len() && log.users[row] == user {
                row += 1;
            }
            let len = row - start;
            assert!((3..=8).contains(&len), "user {user} has {len} rows");
            let first = log.datetimes[start];
            assert!(
                (START_DATETIME..START_DATETIME + START_SPREAD_SECONDS as i64).contains(&first)
            );
            for (step, &t) in log.datetimes[start..row].iter().enumerate() {
                assert_eq!(t, first + step as i64);
            }
        }
        assert_eq!(row, log.len());
        assert_eq!(log.user_ids[0], "u0");
        Ok(())
    }

    #[test]
    fn invalid_configs_are_rejected() {
        let bad = [
            SyntheticConfig {
                n_users: 0,
                ..small(1)
            },
            SyntheticConfig {
                n_items: 3,
                ..small(1)
            },
            SyntheticConfig {
                min_len: 0,
                ..small(1)
            },
            SyntheticConfig {
                min_len: 9,
                max_len: 8,
                ..small(1)
            },
            SyntheticConfig {
                follow_probability: 1.5,
                ..small(1)
            },
            SyntheticConfig {
                follow_probability: f64::NAN,
                ..small(1)
            },
        ];
        for config in bad {
            assert!(
                matches!(generate(&config), Err(DataError::InvalidArgument { .. })),
                "{config:?}"
            );
        }
    }

    /// The default dataset has sequential structure: on a leave-last-out split, "the most
    /// frequent successor (in train) of the user's last train item" predicts the held-out item
    /// far better than "the most popular train item".
    #[test]
    fn successor_oracle_beats_popularity_by_a_wide_margin() -> TestResult {
        let log = generate(&SyntheticConfig::default())?;
        let split = leave_last_out(&log);
        let train = &split.train;

        // Rows of one user are contiguous and in time order in the generated log, and stay so.
        let mut last_item: HashMap<u32, u32> = HashMap::new();
        let mut transitions: HashMap<(u32, u32), usize> = HashMap::new();
        let mut counts: HashMap<u32, usize> = HashMap::new();
        for row in 0..train.len() {
            let (user, item) = (train.users[row], train.items[row]);
            if let Some(&prev) = last_item.get(&user) {
                *transitions.entry((prev, item)).or_default() += 1;
            }
            last_item.insert(user, item);
            *counts.entry(item).or_default() += 1;
        }
        let mut best_next: HashMap<u32, (usize, u32)> = HashMap::new();
        for (&(prev, next), &n) in &transitions {
            let best = best_next.entry(prev).or_insert((0, u32::MAX));
            if (n, std::cmp::Reverse(next)) > (best.0, std::cmp::Reverse(best.1)) {
                *best = (n, next);
            }
        }
        let most_popular = counts
            .iter()
            .max_by_key(|&(&item, &n)| (n, std::cmp::Reverse(item)))
            .map(|(&item, _)| item)
            .ok_or("empty train")?;

        let (mut oracle_hits, mut popular_hits) = (0usize, 0usize);
        for row in 0..split.test.len() {
            let (user, target) = (split.test.users[row], split.test.items[row]);
            let guess = last_item.get(&user).and_then(|prev| best_next.get(prev));
            oracle_hits += usize::from(guess.map(|g| g.1) == Some(target));
            popular_hits += usize::from(most_popular == target);
        }
        let n = split.test.len() as f64;
        let (oracle, popular) = (oracle_hits as f64 / n, popular_hits as f64 / n);
        assert_eq!(split.test.len(), 1000);
        assert!(oracle > 0.3, "oracle hit rate {oracle}");
        assert!(popular < 0.1, "popularity hit rate {popular}");
        assert!(
            oracle > 4.0 * popular,
            "oracle {oracle} vs popularity {popular}"
        );
        Ok(())
    }
}
