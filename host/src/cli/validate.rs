//! `recblocks validate SPEC --n-items N [--json]`: assemble a spec without data and print the
//! resolved spec and the parameter count of each component and in total.

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::Device;
use recblocks::assembly;
use serde_json::json;

/// Arguments of `recblocks validate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The spec (a RecTools-style JSON config).
    spec: PathBuf,
    /// Number of real items in the catalog (PAD, and MASK for BERT4Rec, are added).
    #[arg(long)]
    n_items: usize,
    /// Print one JSON object with keys `spec`, `components` and `n_params`.
    #[arg(long)]
    json: bool,
}

/// Runs the command.
pub fn run(args: Args) -> Result<()> {
    let registry = super::registry()?;
    let spec = super::read_spec(&args.spec, &registry)?;
    let schema = assembly::schema_for(&spec, &registry, args.n_items)?;
    recblocks::memory::check(&spec, schema.n_items, true)?;
    let model = assembly::assemble(&spec, &schema, &registry, &Device::Cpu)
        .with_context(|| format!("assembling {}", args.spec.display()))?;
    // Everything else `fit` builds before it reads data: the objective (loss name and values),
    // the negative sampler it needs, and the trainer settings.
    let objective = assembly::build_objective(&spec, &schema, &registry)
        .with_context(|| format!("building the training objective of {}", args.spec.display()))?;
    if objective.requires_negatives() {
        assembly::build_negative_sampler(&spec, &registry)
            .with_context(|| format!("building the negative sampler of {}", args.spec.display()))?;
    }
    assembly::build_trainer_settings(&spec, &registry)
        .with_context(|| format!("building the trainer settings of {}", args.spec.display()))?;
    let counts = model.param_counts();
    let total = model.n_params();
    if args.json {
        let out = json!({"spec": spec, "components": counts, "n_params": total});
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("{}", spec.to_json_pretty());
    println!();
    println!(
        "catalog: {} items + {} extra tokens ({}) = {} embedding rows",
        args.n_items,
        schema.n_extra_tokens(),
        schema.item_extra_tokens.join(", "),
        schema.n_items
    );
    println!("parameters:");
    for (slot, n) in &counts {
        println!("  {slot:<22} {n:>12}");
    }
    println!("  {:<22} {total:>12}", "total");
    Ok(())
}
