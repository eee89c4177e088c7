//! Command-line arguments and dispatch. Each subcommand lives in its own file.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

mod components;
mod data_args;
mod evaluate;
mod fit;
mod generate;
mod import_rectools;
pub mod malloc_tuning;
mod plugin;
mod plugins;
mod progress;
mod recommend;
mod schema;
mod similar;
mod validate;

/// Transformer sequential recommenders assembled from JSON specs.
#[derive(Debug, Parser)]
#[command(name = "recblocks", version, about, long_about = None)]
pub struct Cli {
    /// CPU threads for matmuls, fused kernels and ranking (default: RAYON_NUM_THREADS, else all
    /// cores). candle's element-wise pool follows CANDLE_NUM_THREADS (default 1).
    #[arg(long, global = true, value_name = "N")]
    pub threads: Option<usize>,
    /// Load a plugin library (repeatable); also read from RECBLOCKS_PLUGINS (`:`-separated).
    /// Only the files named are loaded. A plugin runs with your rights: load only trusted files.
    #[arg(long = "plugin", value_name = "PATH", global = true)]
    pub plugins: Vec<std::path::PathBuf>,
    /// The most memory a model may need (e.g. 8G, 512M); default: the memory the system reports
    /// available. A spec or model estimated to need more is refused before anything is
    /// allocated.
    #[arg(long, global = true, value_name = "SIZE", value_parser = recblocks::memory::parse_size)]
    pub max_memory: Option<u64>,
    /// Refuse a model whose plugin components come from another build of the plugin (another
    /// version or library hash) than the one loaded, instead of warning.
    #[arg(long, global = true)]
    pub strict: bool,
    /// Subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List every registered component with kind, aliases, crate, summary and kwargs.
    Components(components::Args),
    /// Print the JSON Schema (draft 2020-12) of a spec, with the components of loaded plugins.
    Schema(schema::Args),
    /// Assemble a spec without data and print the resolved spec and parameter counts.
    Validate(validate::Args),
    /// Train a spec on an interaction log (or the built-in dataset) and save the model.
    Fit(fit::Args),
    /// Split a log, fit on the train part, and report top-k metrics on the test part.
    Evaluate(evaluate::Args),
    /// Write a synthetic interaction log of any size (users, items, history length) as CSV.
    Generate(generate::Args),
    /// Top-k items for users from their history (u2i); without --data, the history of the
    /// built-in dataset.
    Recommend(recommend::Args),
    /// Top-k most similar items for items (i2i, cosine).
    Similar(similar::Args),
    /// Convert a RecTools Lightning checkpoint into a model directory.
    ImportRectools(import_rectools::Args),
    /// List loaded plugins, or run the conformance suite on a plugin's components.
    #[command(subcommand)]
    Plugins(plugins::Command),
    /// Make a new plugin crate, or build one against this binary's recblocks-core.
    #[command(subcommand)]
    Plugin(plugin::Command),
    /// Install this binary with its core, libstd and plugin SDK under a directory (relocatable:
    /// it needs nothing of the checkout that built it).
    Install(plugin::InstallArgs),
}

/// Logs go to stderr; `RUST_LOG` adjusts the level.
pub fn init_tracing(_args: &Cli) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .try_init();
}

/// Runs a parsed command line.
/// The error and its causes as one line, `outer: cause: cause`, leaving out a cause whose text
/// the message before it already includes (typed errors print their source in their own message,
/// so anyhow's `{:#}` would print it twice).
pub fn render_error(error: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if parts.last().is_some_and(|last| last.contains(&text)) {
            continue;
        }
        parts.push(text);
    }
    parts.join(": ")
}

/// Whether the error comes from writing to a pipe whose reader has closed it.
pub fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        let io = cause.downcast_ref::<std::io::Error>().or_else(|| {
            cause
                .downcast_ref::<csv::Error>()
                .and_then(|e| match e.kind() {
                    csv::ErrorKind::Io(io) => Some(io),
                    _ => None,
                })
        });
        io.is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

pub fn run(cli: Cli) -> Result<()> {
    if let Some(bytes) = cli.max_memory {
        recblocks::memory::set_limit(bytes);
    }
    let threads = recblocks::threads::configure(cli.threads)?;
    if let Some(asked) = threads.capped_from {
        eprintln!(
            "warning: {asked} threads asked for; using {} (4 per available core)",
            threads.rayon
        );
    }
    tracing::debug!(?threads, "thread pools");
    recblocks::loader::provenance::set_strict(cli.strict);
    let env = std::env::var(recblocks::loader::PLUGINS_ENV).ok();
    let paths = recblocks::loader::plugin_paths(env.as_deref(), &cli.plugins);
    let (registry, _) = recblocks::registry::registry_with_plugins(&paths)?;
    let _ = REGISTRY.set(registry);
    match cli.command {
        Command::Components(a) => components::run(a),
        Command::Schema(a) => schema::run(a),
        Command::Validate(a) => validate::run(a),
        Command::Fit(a) => fit::run(a),
        Command::Evaluate(a) => evaluate::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Recommend(a) => recommend::run(a),
        Command::Similar(a) => similar::run(a),
        Command::ImportRectools(a) => import_rectools::run(a),
        Command::Plugins(c) => plugins::run(c),
        Command::Plugin(c) => plugin::run(c),
        Command::Install(a) => plugin::install(a),
    }
}

/// The registry built by [`run`]: built-in components plus those of the loaded plugins.
static REGISTRY: std::sync::OnceLock<recblocks_core::Registry> = std::sync::OnceLock::new();

/// The registry of every component this run knows: built-in and from loaded plugins.
pub fn registry() -> Result<recblocks_core::Registry> {
    match REGISTRY.get() {
        Some(r) => Ok(r.clone()),
        None => Ok(recblocks::builtin_registry()?),
    }
}

/// Reads and resolves a spec file.
pub fn read_spec(
    path: &std::path::Path,
    registry: &recblocks_core::Registry,
) -> Result<recblocks_core::ModelSpec> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read spec {}", path.display()))?;
    recblocks_core::SpecInput::from_json_str(&text)
        .and_then(|s| s.resolve(registry))
        .with_context(|| format!("in spec {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_already_in_the_message_is_printed_once() {
        let io = std::io::Error::other("No space left on device");
        let typed = recblocks::error::HostError::io("/tmp/model/weights.safetensors", io);
        let error = anyhow::Error::new(typed).context("saving the model");
        assert_eq!(
            render_error(&error),
            "saving the model: /tmp/model/weights.safetensors: No space left on device"
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(render_error(&plain), "outer: inner");
    }
}
