//! The `recblocks` command-line tool: a thin layer over the `recblocks` library.

use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    cli::malloc_tuning::reexec_with_malloc_tuning();
    let args = cli::Cli::parse();
    cli::init_tracing(&args);
    // A plugin component's panic that cannot become an error where it happens (in a method
    // without a `Result`) is raised again naming the library, kind and component: report it as
    // an error. The panic hook has already printed where it happened.
    let outcome = std::panic::catch_unwind(|| cli::run(args)).unwrap_or_else(|payload| {
        Err(anyhow::anyhow!(
            "{}",
            recblocks::loader::guard::panic_text(&*payload)
        ))
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output went away (`recblocks recommend ... | head`): stop quietly,
        // as ripgrep and the coreutils do.
        Err(e) if cli::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", cli::render_error(&e));
            ExitCode::FAILURE
        }
    }
}
