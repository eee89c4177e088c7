//! `recblocks recommend MODEL_DIR [--data HISTORY] [--users FILE] [-k 10] [--no-filter-viewed]
//! [--items FILE] [--on-unsupported raise|warn|ignore] [--out FILE]`. Without `--data`, the
//! users' history is the built-in synthetic dataset, as for `fit`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use recblocks::{
    output::{read_id_list, RecoTable},
    recommend::{OnUnsupported, RecommendRequest},
    Model,
};

use super::data_args::DataArgs;

/// Arguments of `recblocks recommend`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A model directory written by `fit`.
    pub model: PathBuf,
    /// Users' interaction history (same formats and column flags as `fit`; without --data, the
    /// built-in synthetic dataset).
    #[command(flatten)]
    pub data: DataArgs,
    /// Users to recommend for, one id per line (default: every user of the history).
    #[arg(long)]
    pub users: Option<PathBuf>,
    /// Recommendations per user.
    #[arg(short, long, default_value_t = 10)]
    pub k: usize,
    /// Also recommend items the user has already interacted with.
    #[arg(long)]
    pub no_filter_viewed: bool,
    /// Only recommend these items (one id per line).
    #[arg(long)]
    pub items: Option<PathBuf>,
    /// Users without any item the model knows: fail, warn and skip, or skip.
    #[arg(long, value_enum, default_value_t = OnUnsupportedArg::Raise)]
    pub on_unsupported: OnUnsupportedArg,
    /// Output file (CSV, or Parquet by extension); stdout when absent.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The values of `--on-unsupported`, each mapped to a [`OnUnsupported`] policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnUnsupportedArg {
    /// Fail, naming how many and a few of them.
    Raise,
    /// Skip them with a warning.
    Warn,
    /// Skip them silently.
    Ignore,
}

impl From<OnUnsupportedArg> for OnUnsupported {
    fn from(arg: OnUnsupportedArg) -> Self {
        match arg {
            OnUnsupportedArg::Raise => OnUnsupported::Raise,
            OnUnsupportedArg::Warn => OnUnsupported::Warn,
            OnUnsupportedArg::Ignore => OnUnsupported::Ignore,
        }
    }
}

/// Runs the command.
pub fn run(args: Args) -> Result<()> {
    let registry = super::registry()?;
    let model = Model::load(&args.model, &registry)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let history = args.data.interactions(false)?;
    let users = args
        .users
        .as_ref()
        .map(|p| read_id_list(p, "user_id"))
        .transpose()?;
    let items = args
        .items
        .as_ref()
        .map(|p| read_id_list(p, "item_id"))
        .transpose()?;
    let out = model.recommend(
        &history,
        &RecommendRequest {
            users: users.as_deref(),
            k: args.k,
            filter_viewed: !args.no_filter_viewed,
            items_to_recommend: items.as_deref(),
            on_unsupported: args.on_unsupported.into(),
        },
    )?;
    let table = RecoTable::from_u2i(&out.rows);
    match &args.out {
        Some(p) => table.write_file(p)?,
        None => table.write_csv(std::io::stdout().lock())?,
    }
    Ok(())
}
