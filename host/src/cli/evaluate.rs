//! `recblocks evaluate SPEC [--data FILE] [--split last|time:DATE|time:FRACTION] [-k 10]
//! [--metrics LIST] [--baseline popular] [--json] [--out DIR]`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use recblocks::{
    evaluate::{evaluate, EvalOptions, SplitKind},
    metrics::parse_metrics,
    FitOptions, TrainData,
};

use super::{data_args::DataArgs, progress::TerminalProgress};

/// Arguments of `recblocks evaluate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The spec (a RecTools-style JSON config).
    pub spec: PathBuf,
    /// Data options.
    #[command(flatten)]
    pub data: DataArgs,
    /// `last` (leave-last-out per user), `time:DATE` (ISO-8601 or unix seconds) or
    /// `time:FRACTION` (the latest fraction of interactions is the test period).
    #[arg(long, default_value = "last")]
    pub split: String,
    /// Recommendations per user (and the default @k of the metrics).
    #[arg(short, long, default_value_t = 10)]
    pub k: usize,
    /// Metrics, comma-separated (recall, precision, hitrate, ndcg, ndcg_rectools, map, mrr,
    /// coverage, avg_rec_pop, serendipity; `@k` optional). Default: recall, ndcg, mrr.
    #[arg(long)]
    pub metrics: Option<String>,
    /// Add a baseline computed on the same split (`popular`).
    #[arg(long)]
    pub baseline: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Save the fitted model (and `evaluation.json`) to this directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Number of epochs (overrides the spec).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Seed of every random stream.
    #[arg(long)]
    pub seed: Option<u64>,
    /// No progress output.
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
    let spec = super::read_spec(&args.spec, &registry)?;
    let quiet = args.quiet || args.json;
    let interactions = args.data.interactions(quiet)?;
    let features = args.data.item_features(quiet)?;
    let split = SplitKind::parse(&args.split).map_err(anyhow::Error::msg)?;
    let metric_list = args
        .metrics
        .clone()
        .unwrap_or_else(|| "recall,ndcg,mrr".into());
    let metric_list: Vec<String> = metric_list
        .split(',')
        .map(|m| {
            let m = m.trim();
            if m.contains('@') {
                m.to_string()
            } else {
                format!("{m}@{}", args.k)
            }
        })
        .collect();
    let metrics = parse_metrics(&metric_list.join(","))?;
    let baseline_popular = match args.baseline.as_deref() {
        None => false,
        Some("popular") => true,
        Some(other) => bail!("unknown baseline `{other}`; known: popular"),
    };
    let observer = TerminalProgress::for_fit(quiet);
    let opts = EvalOptions {
        split,
        k: args.k,
        metrics,
        baseline_popular,
        fit: FitOptions {
            epochs: args.epochs,
            seed: args.seed,
            device: args.device,
            observer,
            cuda_graph: args.cuda_graph,
        },
    };
    let data = TrainData {
        interactions: &interactions,
        item_features: features.as_ref(),
    };
    let (report, model) = evaluate(spec, data, &registry, &opts)?;
    if let Some(out) = &args.out {
        model
            .save(out)
            .with_context(|| format!("saving {}", out.display()))?;
        let text = serde_json::to_string_pretty(&report)?;
        let path = out.join("evaluation.json");
        recblocks::output_file::write_output(&path, |w| writeln!(w, "{text}"))
            .map_err(|e| anyhow::anyhow!("writing {}: {}", e.path.display(), e.source))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{} on {} test users ({} train / {} test interactions), {} parameters",
        report.spec.cls,
        report.n_test_users,
        report.n_train_interactions,
        report.n_test_interactions,
        report.n_params
    );
    let header = if report.baseline_popular.is_some() {
        format!("{:<16} {:>10} {:>10}", "metric", "model", "popular")
    } else {
        format!("{:<16} {:>10}", "metric", "model")
    };
    println!("{header}");
    for (name, value) in &report.metrics {
        match report.baseline_popular.as_ref().and_then(|b| b.get(name)) {
            Some(b) => println!("{name:<16} {value:>10.4} {b:>10.4}"),
            None => println!("{name:<16} {value:>10.4}"),
        }
    }
    let median = recblocks::train::fit::median(&report.epoch_seconds).unwrap_or(0.0);
    println!(
        "fit {:.1} s ({} epochs, median {:.2} s/epoch), recommend {:.2} s",
        report.fit_seconds,
        report.epoch_seconds.len(),
        median,
        report.recommend_seconds
    );
    Ok(())
}
