//! `recblocks import-rectools CHECKPOINT --out MODEL_DIR`: a RecTools Lightning checkpoint
//! (SASRecModel / BERT4RecModel, saved by its trainer) becomes a recblocks model directory that
//! `recommend` and `similar` serve without Python.

use std::path::PathBuf;

use anyhow::{Context, Result};
use recblocks::rectools_import::import_checkpoint;

/// Arguments of `recblocks import-rectools`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The RecTools Lightning checkpoint (`.ckpt`, e.g. `trainer.save_checkpoint(path)` or a
    /// `ModelCheckpoint` callback's file).
    pub checkpoint: PathBuf,
    /// The model directory to write (as `fit --out`).
    #[arg(long)]
    pub out: PathBuf,
    /// Also write into a non-empty directory that is not a recblocks model (its files are kept).
    #[arg(long)]
    pub force: bool,
}

/// Runs the command.
pub fn run(args: Args) -> Result<()> {
    let registry = super::registry()?;
    let imported = import_checkpoint(&args.checkpoint, &registry).context("import-rectools")?;
    for w in &imported.warnings {
        tracing::warn!("{w}");
    }
    let model = imported.model;
    model
        .save_to(&args.out, args.force)
        .with_context(|| format!("writing the model directory {}", args.out.display()))?;
    eprintln!(
        "imported {} ({} parameters, {} items) into {}",
        model.net.spec.cls,
        model.n_params(),
        model.item_ids.len() - model.n_extra_tokens,
        args.out.display()
    );
    Ok(())
}
