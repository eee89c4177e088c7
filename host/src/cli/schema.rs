//! `recblocks schema [--out FILE]`: the JSON Schema (draft 2020-12) of a spec, with every
//! component of this run's registry (built-in and from `--plugin` libraries); see
//! [`recblocks::spec_schema`].

use std::path::PathBuf;

use anyhow::Result;

/// Arguments of `recblocks schema`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Write the schema to this file instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Runs the command.
pub fn run(args: Args) -> Result<()> {
    let registry = super::registry()?;
    let schema = recblocks::spec_schema::spec_schema(&registry);
    let text = serde_json::to_string_pretty(&schema)?;
    match &args.out {
        Some(path) => recblocks::output_file::write_output(path, |w| writeln!(w, "{text}"))
            .map_err(|e| anyhow::anyhow!("writing {}: {}", e.path.display(), e.source))?,
        None => println!("{text}"),
    }
    Ok(())
}
