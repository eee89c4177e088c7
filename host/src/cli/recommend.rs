//! `recblocks recommend MODEL_DIR --data HISTORY [--users FILE] [-k 10] [--no-filter-viewed]
//! [--items FILE] [--on-unsupported raise|warn|ignore] [--out FILE]`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use recblocks::{
    output::{read_id_list, RecoTable},
    recommend::{OnUnsupported, RecommendRequest},
    Model,
};

use super::data_args::{read_log, DataArgs};

/// Arguments of `recblocks recommend`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A model directory written by `fit`.
    pub model: PathBuf,
    /// Users' interaction history (same formats and column flags as `fit`).
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
    #[arg(long, value_enum, default_value_t = OnUnsupported::Raise)]
    pub on_unsupported: OnUnsupported,
    /// Output file (CSV, or Parquet by extension); stdout when absent.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs the command.
pub fn run(args: Args) -> Result<()> {
    let registry = super::registry()?;
    let model = Model::load(&args.model, &registry)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let Some(path) = &args.data.data else {
        anyhow::bail!("recommend needs the users' history: pass --data FILE");
    };
    let history = read_log(path, &args.data.columns(), args.data.skip_bad_rows, false)?;
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
            on_unsupported: args.on_unsupported,
        },
    )?;
    let table = RecoTable::from_u2i(&out.rows);
    match &args.out {
        Some(p) => table.write_file(p)?,
        None => table.write_csv(std::io::stdout().lock())?,
    }
    Ok(())
}
