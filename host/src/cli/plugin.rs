//! `recblocks plugin new NAME [--path DIR]`, `recblocks plugin build [DIR] [--debug] [--check]`
//! and `recblocks install --root DIR`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use recblocks::sdk::{
    build::{build_plugin, plugin_dir, BuildRequest},
    install::install as install_to,
    scaffold::new_plugin,
    Sdk,
};

/// The `plugin` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Make a standalone plugin crate (its own Cargo workspace): one example component, a spec
    /// and a README. As made, it builds and passes `plugin build --check`.
    New {
        /// The plugin's crate name (`my-layers`); its library is `lib<name with _>.so`.
        name: String,
        /// The directory to make (default: `./NAME`); it must not exist or be empty.
        #[arg(long)]
        path: Option<PathBuf>,
    },
    /// Build the plugin crate in DIR (default: the working directory) against this binary's
    /// recblocks-core, into DIR/target. Prints the library's path as the last line of stdout.
    Build {
        /// The plugin crate's directory.
        dir: Option<PathBuf>,
        /// Build with the dev profile instead of release.
        #[arg(long)]
        debug: bool,
        /// Then load the library and run the conformance suite on its components
        /// (`plugins check`).
        #[arg(long)]
        check: bool,
    },
}

/// Runs a `plugin` subcommand.
pub fn run(command: Command) -> Result<()> {
    match command {
        Command::New { name, path } => {
            let dir = path.unwrap_or_else(|| PathBuf::from(&name));
            let made = new_plugin(&name, &dir)?;
            eprintln!(
                "made plugin `{}` with component `{}` in {}",
                made.crate_name,
                made.component,
                made.dir.display()
            );
            for file in &made.files {
                println!("{}", made.dir.join(file).display());
            }
            Ok(())
        }
        Command::Build { dir, debug, check } => {
            let sdk = Sdk::of_current_exe()?;
            let dir = plugin_dir(dir.as_deref())?;
            let built = build_plugin(
                &sdk,
                &BuildRequest {
                    dir: dir.clone(),
                    release: !debug,
                },
            )
            .with_context(|| format!("building the plugin in {}", dir.display()))?;
            eprintln!(
                "built {} in {:.1} s against {}",
                built.library.display(),
                built.took.as_secs_f64(),
                sdk.core.display()
            );
            if check {
                super::plugins::check(&built.library)?;
            }
            println!("{}", built.library.display());
            Ok(())
        }
    }
}

/// `recblocks install`.
#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// The install root: the binary goes to ROOT/bin, core, libstd and the plugin SDK to
    /// ROOT/lib/recblocks-<version>.
    #[arg(long)]
    root: PathBuf,
}

/// Runs `recblocks install`.
pub fn install(args: InstallArgs) -> Result<()> {
    let installed = install_to(&args.root)
        .with_context(|| format!("installing recblocks under {}", args.root.display()))?;
    eprintln!(
        "installed {} files ({:.1} MB); the SDK is in {}",
        installed.files,
        installed.bytes as f64 / 1e6,
        installed.lib_dir.display()
    );
    println!("{}", installed.binary.display());
    Ok(())
}
