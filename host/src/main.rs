//! The `recblocks` command-line tool: a thin layer over the `recblocks` library.

use std::process::ExitCode;

use clap::Parser;

mod cli;

/// mimalloc keeps freed tensor buffers for reuse; glibc's malloc returns each large buffer to the
/// OS and page-faults it back on the next step (a fifth of a training step, measured).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::init_tracing(&args);
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
