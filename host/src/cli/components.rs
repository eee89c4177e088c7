//! `recblocks components [--kind KIND] [--json]`: every registered component.

use anyhow::{bail, Result};
use recblocks_core::ComponentKind;
use serde_json::json;

/// Arguments of `recblocks components`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this kind (e.g. `transformer_layers`, or the spec slot `transformer_layers_type`).
    #[arg(long)]
    kind: Option<String>,
    /// Print one JSON array instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs the command.
pub fn run(args: Args) -> Result<()> {
    let registry = super::registry()?;
    let kinds: Vec<ComponentKind> = match &args.kind {
        None => ComponentKind::ALL.to_vec(),
        Some(k) => match ComponentKind::parse(k) {
            Some(kind) => vec![kind],
            None => bail!(
                "unknown kind `{k}`; kinds: {}",
                ComponentKind::ALL.map(|k| k.as_str()).join(", ")
            ),
        },
    };
    let mut rows = Vec::new();
    for kind in kinds {
        for reg in registry.of_kind(kind) {
            let info = reg.info();
            rows.push(json!({
                "kind": kind.as_str(),
                "spec_slot": kind.spec_slot(),
                "name": info.name,
                "aliases": info.aliases,
                "crate": info.crate_name,
                "summary": info.summary,
                "kwargs": (info.default_kwargs)(),
            }));
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let mut current = String::new();
    for row in &rows {
        let kind = row["kind"].as_str().unwrap_or_default();
        if kind != current {
            println!(
                "{kind} ({}):",
                row["spec_slot"].as_str().unwrap_or_default()
            );
            current = kind.to_string();
        }
        println!(
            "  {}  [{}]  {}",
            row["name"].as_str().unwrap_or_default(),
            row["crate"].as_str().unwrap_or_default(),
            row["summary"].as_str().unwrap_or_default()
        );
        let kwargs = &row["kwargs"];
        if kwargs.as_object().is_some_and(|m| !m.is_empty()) {
            println!("      kwargs: {kwargs}");
        }
        if let Some(aliases) = row["aliases"].as_array().filter(|a| !a.is_empty()) {
            let names: Vec<&str> = aliases.iter().filter_map(|a| a.as_str()).collect();
            println!("      aliases: {}", names.join(", "));
        }
    }
    Ok(())
}
