//! `recblocks generate [--users N] [--items M] [--len L [--max-len L2]] [--follow P] [--seed S]
//! --out FILE.csv`: writes the built-in synthetic log ([`recblocks::data::synthetic`]) at any
//! size, as a `user_id,item_id,weight,datetime` CSV (datetimes in unix seconds) that `fit`,
//! `evaluate` and the RecTools comparison script (`bench/rectools/run_rectools.py`) read.
//!
//! The same flags give the same file, byte for byte.

use std::path::PathBuf;

use anyhow::{Context, Result};
use recblocks::data::{generate_synthetic, write_interactions_csv, SyntheticConfig};

/// Arguments of `recblocks generate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Number of users.
    #[arg(long, default_value_t = SyntheticConfig::default().n_users)]
    pub users: usize,
    /// Number of items in the catalog (at least 4; the rarest may never occur).
    #[arg(long, default_value_t = SyntheticConfig::default().n_items)]
    pub items: usize,
    /// History length of every user (or the shortest one, with `--max-len`). Default: 20 to 60
    /// interactions, as the built-in dataset.
    #[arg(long)]
    pub len: Option<usize>,
    /// Longest history: lengths are drawn uniformly in `len ..= max-len` (default: `len`).
    #[arg(long, requires = "len")]
    pub max_len: Option<usize>,
    /// Probability of following the item chain at each step (sequential signal), in [0, 1].
    #[arg(long, default_value_t = SyntheticConfig::default().follow_probability)]
    pub follow: f64,
    /// Seed of the random stream.
    #[arg(long, default_value_t = SyntheticConfig::default().seed)]
    pub seed: u64,
    /// The CSV file to write (replaced atomically).
    #[arg(long)]
    pub out: PathBuf,
    /// No summary on stderr.
    #[arg(long)]
    pub quiet: bool,
}

impl Args {
    /// The generator configuration these flags describe.
    pub fn config(&self) -> SyntheticConfig {
        let defaults = SyntheticConfig::default();
        let (min_len, max_len) = match self.len {
            Some(len) => (len, self.max_len.unwrap_or(len)),
            None => (defaults.min_len, defaults.max_len),
        };
        SyntheticConfig {
            n_users: self.users,
            n_items: self.items,
            min_len,
            max_len,
            follow_probability: self.follow,
            seed: self.seed,
        }
    }
}

/// Runs the command.
pub fn run(args: Args) -> Result<()> {
    let config = args.config();
    let started = std::time::Instant::now();
    let log = generate_synthetic(&config).context("generating the synthetic log")?;
    write_interactions_csv(&args.out, &log)
        .with_context(|| format!("writing {}", args.out.display()))?;
    if !args.quiet {
        eprintln!(
            "wrote {}: {} interactions, {} users, {} distinct items (of {}), lengths {}..={}, \
             seed {} ({:.1} s)",
            args.out.display(),
            log.len(),
            log.n_users(),
            log.n_items(),
            config.n_items,
            config.min_len,
            config.max_len,
            config.seed,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
