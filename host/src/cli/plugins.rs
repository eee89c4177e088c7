//! `recblocks plugins list` and `recblocks plugins check PATH`.

use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    path::PathBuf,
};

use anyhow::{bail, Result};
use recblocks::loader::{self as plugins, guard, LoadedPlugin};
use recblocks_conformance::{check_component, Outcome};
use recblocks_core::Registry;

/// The `plugins` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Show the loaded plugins (`--plugin`, RECBLOCKS_PLUGINS) with their components.
    List,
    /// Load a plugin and run the conformance suite on each of its components (a statically
    /// linked copy of the same crates is set aside for the check).
    Check {
        /// The plugin library.
        path: PathBuf,
    },
}

/// Runs a `plugins` subcommand.
pub fn run(command: Command) -> Result<()> {
    match command {
        Command::List => {
            let loaded = plugins::loaded_plugins();
            if loaded.is_empty() {
                println!("no plugins loaded (use --plugin PATH or RECBLOCKS_PLUGINS)");
            }
            for plugin in &loaded {
                print_plugin(plugin);
            }
            Ok(())
        }
        Command::Check { path } => check(&path),
    }
}

fn print_plugin(plugin: &LoadedPlugin) {
    println!(
        "{} {} ({})",
        plugin.name,
        plugin.version,
        plugin.path.display()
    );
    for reg in &plugin.components {
        let info = reg.info();
        println!(
            "  {}  {}  [{}]  {}",
            reg.kind(),
            info.name,
            info.crate_name,
            info.summary
        );
    }
}

/// Loads the plugin at `path` and runs the conformance suite on its components; fails when a
/// check fails.
pub fn check(path: &std::path::Path) -> Result<()> {
    let plugin = plugins::load_plugin(path)?;
    // Check the library's own components: the registry of this run minus whatever the crates the
    // plugin provides registered already (a statically linked copy, or the same file given with
    // --plugin), plus the library's entries.
    let base = super::registry()?;
    let mut registry = Registry::from_registrations(
        base.all()
            .into_iter()
            .filter(|r| !plugin.provides.iter().any(|c| c == r.info().crate_name)),
    )?;
    plugins::add_components(&mut registry, &plugin.path, &plugin.components)?;
    print_plugin(&plugin);
    let mut failed = 0usize;
    for reg in &plugin.components {
        // The plugin's components are guarded (a panic in them is an error naming the library);
        // a panic that escapes anyway (a re-raised one, or one in the suite) fails the component
        // instead of ending the check.
        let checked = catch_unwind(AssertUnwindSafe(|| {
            check_component(&registry, reg.kind(), reg.info().name).map_err(|e| e.to_string())
        }))
        .unwrap_or_else(|payload| Err(format!("panicked: {}", guard::panic_text(&*payload))));
        let report = match checked {
            Ok(report) => report,
            Err(e) => {
                failed += 1;
                println!("{} `{}`: FAILED: {e}", reg.kind(), reg.info().name);
                continue;
            }
        };
        for result in &report.results {
            let status = match &result.outcome {
                Outcome::Pass => "ok".to_string(),
                Outcome::Skipped(why) => format!("skipped ({why})"),
                Outcome::Fail(why) => {
                    failed += 1;
                    format!("FAILED: {why}")
                }
            };
            println!(
                "{} `{}` {}: {status}",
                reg.kind(),
                reg.info().name,
                result.check
            );
        }
    }
    if failed > 0 {
        bail!(
            "{failed} conformance check(s) failed for plugin {}",
            path.display()
        );
    }
    println!("all conformance checks passed");
    Ok(())
}
