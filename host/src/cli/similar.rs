//! `recblocks similar MODEL_DIR [--items FILE] [-k 10] [--out FILE]`: i2i by cosine over item
//! embeddings, the item itself excluded.

use std::path::PathBuf;

use anyhow::{Context, Result};
use recblocks::{
    output::{read_id_list, RecoTable},
    Model,
};

/// Arguments of `recblocks similar`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A model directory written by `fit`.
    pub model: PathBuf,
    /// Items to find similar items for, one id per line (default: every item).
    #[arg(long)]
    pub items: Option<PathBuf>,
    /// Similar items per item.
    #[arg(short, long, default_value_t = 10)]
    pub k: usize,
    /// Output file (CSV, or Parquet by extension); stdout when absent.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs the command.
pub fn run(args: Args) -> Result<()> {
    let registry = super::registry()?;
    let model = Model::load(&args.model, &registry)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let items = args
        .items
        .as_ref()
        .map(|p| read_id_list(p, "item_id"))
        .transpose()?;
    let (rows, unknown) = model.similar(items.as_deref(), args.k, None)?;
    if !unknown.is_empty() {
        let examples: Vec<&str> = unknown.iter().take(5).map(String::as_str).collect();
        eprintln!(
            "warning: {} item(s) are unknown to the model and were skipped (e.g. {})",
            unknown.len(),
            examples.join(", ")
        );
    }
    let table = RecoTable::from_i2i(&rows);
    match &args.out {
        Some(p) => table.write_file(p)?,
        None => table.write_csv(std::io::stdout().lock())?,
    }
    Ok(())
}
