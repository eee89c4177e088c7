//! `recblocks fit SPEC [--data FILE] --out DIR [--epochs N] [--seed N] [--resume] [--quiet]`.

use std::{path::PathBuf, time::Instant};

use anyhow::{bail, Context, Result};
use recblocks::{FitOptions, Model, TrainData};

use super::{data_args::DataArgs, progress::TerminalProgress};

/// Arguments of `recblocks fit`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The spec (a RecTools-style JSON config).
    pub spec: PathBuf,
    /// Data options.
    #[command(flatten)]
    pub data: DataArgs,
    /// Model directory to write (a previous model there is replaced atomically; files recblocks
    /// did not write are kept).
    #[arg(long)]
    pub out: PathBuf,
    /// Also write into a non-empty directory that is not a recblocks model (its files are kept).
    #[arg(long)]
    pub force: bool,
    /// Number of epochs (overrides the spec; with --resume, the total to reach).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Seed of every random stream (overrides the spec's `seed`).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Continue the run saved in --out from its optimizer state.
    #[arg(long)]
    pub resume: bool,
    /// No progress bar or per-epoch lines.
    #[arg(long)]
    pub quiet: bool,
    /// Train on `cpu` (default) or `cuda[:N]` (a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: recblocks::device::DeviceSpec,
    /// Record one training step as a CUDA graph after two warm-up steps and replay it for every
    /// full batch (with `--device cuda`; docs/gpu.md).
    #[arg(long)]
    pub cuda_graph: bool,
}

/// Runs the command.
pub fn run(args: Args) -> Result<()> {
    if args.cuda_graph && args.device == recblocks::device::DeviceSpec::Cpu {
        bail!("--cuda-graph records CUDA graphs: it needs --device cuda");
    }
    let registry = super::registry()?;
    let interactions = args.data.interactions(args.quiet)?;
    let features = args.data.item_features(args.quiet)?;
    let data = TrainData {
        interactions: &interactions,
        item_features: features.as_ref(),
    };
    let observer = TerminalProgress::for_fit(args.quiet);
    let opts = FitOptions {
        epochs: args.epochs,
        seed: args.seed,
        device: args.device,
        observer,
        cuda_graph: args.cuda_graph,
    };
    let started = Instant::now();
    let model = if args.resume {
        if args.seed.is_some() {
            bail!("--seed cannot change on --resume: the run continues with its saved seed");
        }
        if args.device != recblocks::device::DeviceSpec::Cpu {
            bail!("--resume continues on the CPU, where saved models load; drop --device");
        }
        let mut model = Model::load(&args.out, &registry)
            .with_context(|| format!("loading {} to resume", args.out.display()))?;
        let spec = super::read_spec(&args.spec, &registry)?;
        let mut saved = model.net.spec.clone();
        saved.epochs = spec.epochs;
        saved.seed = spec.seed.or(saved.seed);
        if saved != spec {
            bail!(
                "{} differs from the spec saved in {} (only `epochs` may change on --resume)",
                args.spec.display(),
                args.out.display()
            );
        }
        let opts = FitOptions {
            epochs: args.epochs.or(Some(spec.epochs)),
            ..opts
        };
        let result = model.resume(data, &registry, &opts);
        finish(model, result, &args)?
    } else {
        let spec = super::read_spec(&args.spec, &registry)?;
        let model = Model::fit(spec, data, &registry, &opts).with_context(|| {
            format!("training failed; {} was left as it was", args.out.display())
        })?;
        finish(model, Ok(()), &args)?
    };
    if !args.quiet {
        let last = model.train_log.last();
        let mut line = format!(
            "saved {} ({} parameters, {} epochs, {:.1} s)",
            args.out.display(),
            model.n_params(),
            model.training.epochs_done,
            started.elapsed().as_secs_f64()
        );
        if let Some(e) = last {
            line.push_str(&format!("; final train_loss {:.5}", e.train_loss));
            if let (Some(r), Some(n)) = (e.val_recall, e.val_ndcg) {
                let k = model.settings.val_k;
                line.push_str(&format!(", val recall@{k} {r:.4}, val ndcg@{k} {n:.4}"));
            }
        }
        println!("{line}");
    }
    Ok(())
}

/// Saves the model; when training failed part-way, saves nothing over a good model and reports
/// the training error.
fn finish(model: Model, result: recblocks::Result<()>, args: &Args) -> Result<Model> {
    match result {
        Ok(()) => {
            model
                .save_to(&args.out, args.force)
                .with_context(|| format!("saving {}", args.out.display()))?;
            Ok(model)
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!(
            "training failed; {} was left as it was",
            args.out.display()
        ))),
    }
}
