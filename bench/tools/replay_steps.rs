//! Training-step replay against RecTools: the same weights, batches and optimizer, step by step.
//!
//! `bench/replay/rectools_steps.py` writes RecTools' weights, the batches its dataloader drew
//! (negatives included), the gradients of the first step, each step's loss and the weights after
//! the last step. This example loads the same weights through the RecTools import, takes the same
//! Adam steps on the same batches with recblocks' training loss (`Objective::train_loss`), and
//! prints, per step, both losses; then the largest gradient differences of step 0 and the
//! largest weight differences after the last step. With dropout 0 nothing is random, so any
//! difference beyond f32 rounding is a difference in the maths.
//!
//! With dropout the script writes, for its first batch, the loss and the mean gradient over many
//! masks instead; this example computes both over as many of its own masks and prints how far
//! apart the means are in standard errors (see `bench/replay/README.md`).
//!
//! With `trajectory.json` in DIR (`rectools_steps.py --trajectory`), the steps run with dropout,
//! each side with its own masks: this example trains from RecTools' initial weights on RecTools'
//! batches, prints both sides' mean loss per 100 steps, and writes two model directories,
//! `DIR/recblocks_final` (its weights) and `DIR/rectools_final` (RecTools' final weights), for
//! `recblocks recommend` to score on the same split, and its per-step losses
//! (`DIR/recblocks_losses.json`).
//!
//! `cargo run --release -p recblocks --example replay_steps -- DIR [SEED]` (SEED reseeds the
//! dropout stream).

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use recblocks::{
    model::trainable_vars,
    rectools_import::{from_parts, ids_from_json, rectools_name, RecToolsCheckpoint},
    train::adam::{Adam, AdamConfig},
};
use recblocks_core::{components::Objective, Batch, ModelSpec};
use recblocks_rectools::lightning::TransformerLightningModule;

fn load(path: &std::path::Path) -> anyhow::Result<BTreeMap<String, Tensor>> {
    Ok(candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("reading {}", path.display()))?
        .into_iter()
        .collect())
}

/// The tensors of `all` whose names start with `prefix`, without it.
fn torch_prefixed(all: &BTreeMap<String, Tensor>, prefix: &str) -> BTreeMap<String, Tensor> {
    all.iter()
        .filter_map(|(k, v)| k.strip_prefix(prefix).map(|k| (k.to_string(), v.clone())))
        .collect()
}

/// Prints the eight rows `(relative, absolute, name)` with the largest relative difference.
fn print_largest(title: &str, mut rows: Vec<(f32, f32, String)>) {
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    println!("{title}");
    for (rel, d, name) in rows.iter().take(8) {
        println!("  {rel:>10.3e} {d:>10.3e}  {name}");
    }
}

/// The torch tensor that holds recblocks parameter `name` (q/k/v are thirds of `in_proj_*`).
fn torch_view(torch: &BTreeMap<String, Tensor>, name: &str) -> anyhow::Result<Tensor> {
    let full = format!("torch_model.{}", rectools_name(name));
    let t = torch
        .get(&full)
        .with_context(|| format!("no torch tensor `{full}`"))?;
    for (i, p) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
        if name.contains(p) {
            let d = t.dim(0)? / 3;
            return Ok(t.narrow(0, i * d, d)?);
        }
    }
    Ok(t.clone())
}

fn max_abs(a: &Tensor, b: &Tensor) -> anyhow::Result<(f32, f32)> {
    let a = a.to_dtype(DType::F32)?;
    let b = b.to_dtype(DType::F32)?;
    let diff = (&a - &b)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?;
    let scale = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    Ok((diff, scale))
}

/// The first batch of `batches.safetensors` (`x_0`, `y_0`, `yw_0`, `negatives_0`).
fn batch_at(batches: &BTreeMap<String, Tensor>, step: usize) -> anyhow::Result<Batch> {
    let get = |k: &str| -> anyhow::Result<Tensor> {
        batches
            .get(&format!("{k}_{step}"))
            .cloned()
            .with_context(|| format!("no `{k}_{step}` in batches.safetensors"))
    };
    Ok(Batch {
        x: get("x")?.to_dtype(DType::U32)?,
        y: get("y")?.to_dtype(DType::U32)?,
        yw: get("yw")?.to_dtype(DType::F32)?,
        negatives: match get("negatives") {
            Ok(t) => Some(t.to_dtype(DType::U32)?),
            Err(_) => None,
        },
    })
}

fn mean_and_se(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, (var / n).sqrt())
}

/// With dropout: the mean training-mode loss of the first batch over as many masks as RecTools
/// drew, and the eval-mode loss, against `dropout_losses.json`.
fn dropout_check(
    dir: &std::path::Path,
    net: &recblocks::AssembledModel,
    objective: &TransformerLightningModule,
) -> anyhow::Result<()> {
    #[derive(serde::Deserialize)]
    struct Draws {
        train: Vec<f64>,
        eval: Vec<f64>,
    }
    let draws: Draws =
        serde_json::from_str(&std::fs::read_to_string(dir.join("dropout_losses.json"))?)?;
    let batch = batch_at(&load(&dir.join("batches.safetensors"))?, 0)?;
    let backbone = net.backbone.as_ref();
    let scalar = |t: Tensor| -> anyhow::Result<f64> { Ok(t.to_dtype(DType::F64)?.to_scalar()?) };
    let ours: Vec<f64> = (0..draws.train.len())
        .map(|_| scalar(objective.train_loss(backbone, &batch)?))
        .collect::<anyhow::Result<_>>()?;
    let eval = {
        // RecTools' order of operations, without dropout: every position's candidate logits.
        let candidates = match &batch.negatives {
            Some(n) => Some(Tensor::cat(&[&batch.y.unsqueeze(2)?, n], 2)?),
            None => None,
        };
        let logits =
            (backbone.logits(&batch.x, candidates.as_ref(), false)? / objective.logits_t())?;
        scalar(objective.loss_from_logits(&logits, &batch.y, &batch.yw)?)?
    };
    let (m, se) = mean_and_se(&ours);
    let (tm, tse) = mean_and_se(&draws.train);
    println!("{:<28} {:>12} {:>12}", "", "recblocks", "rectools");
    println!(
        "{:<28} {eval:>12.5} {:>12.5}",
        "eval-mode loss", draws.eval[0]
    );
    println!(
        "{:<28} {m:>12.5} {tm:>12.5}",
        format!("train-mode loss, {} masks", ours.len())
    );
    println!("{:<28} {se:>12.5} {tse:>12.5}", "  standard error");
    println!(
        "difference of the means: {:.5} ({:.1} standard errors)",
        m - tm,
        (m - tm) / (se * se + tse * tse).sqrt()
    );

    // Mean gradient over as many masks, per parameter, against RecTools' mean and standard error:
    // z = (mean_rb − mean_rt) / √(se_rb² + se_rt²) per element; with equal distributions about
    // 0.3% of the elements have |z| > 3.
    let torch = load(&dir.join("dropout_grads.safetensors"))?;
    let (torch_mean, torch_se) = (
        torch_prefixed(&torch, "mean."),
        torch_prefixed(&torch, "se."),
    );
    let vars = trainable_vars(net);
    let n = draws.train.len();
    let mut sum: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut sum2: BTreeMap<String, Tensor> = BTreeMap::new();
    for _ in 0..n {
        let grads = objective.train_loss(backbone, &batch)?.backward()?;
        for (name, var) in &vars {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let g = g.to_dtype(DType::F64)?;
            let s2 = g.sqr()?;
            let (s, q) = match (sum.remove(name), sum2.remove(name)) {
                (Some(s), Some(q)) => ((s + g)?, (q + s2)?),
                _ => (g, s2),
            };
            sum.insert(name.clone(), s);
            sum2.insert(name.clone(), q);
        }
    }
    println!(
        "gradient over {n} masks: share of elements with |z| > 3, relative difference of the \
         means' norms and of the standard errors' norms"
    );
    let nf = n as f64;
    for (name, s) in &sum {
        let mean = (s / nf)?;
        let var = ((&sum2[name] / nf)? - mean.sqr()?)?.relu()? * (nf / (nf - 1.0).max(1.0));
        let se = (var? / nf)?.sqrt()?;
        let tmean = torch_view(&torch_mean, name)?.to_dtype(DType::F64)?;
        let tse = torch_view(&torch_se, name)?.to_dtype(DType::F64)?;
        let denom = ((se.sqr()? + tse.sqr()?)? + 1e-30)?.sqrt()?;
        let z = ((&mean - &tmean)? / denom)?.abs()?;
        let share = z
            .gt(3.0)?
            .to_dtype(DType::F64)?
            .mean_all()?
            .to_scalar::<f64>()?;
        let norm =
            |t: &Tensor| -> anyhow::Result<f64> { Ok(t.sqr()?.sum_all()?.sqrt()?.to_scalar()?) };
        let torch_norm = norm(&tmean)?;
        let rel = (norm(&mean)? - torch_norm) / torch_norm.max(1e-30);
        // The spread of the gradient over masks: the norm of the standard errors, relative.
        let torch_spread = norm(&tse)?;
        let spread = (norm(&se)? - torch_spread) / torch_spread.max(1e-30);
        println!(
            "  {:>7.2}% {rel:>+9.4} {spread:>+9.4}  {name}",
            share * 100.0
        );
    }
    Ok(())
}

/// The model of `config.json` (the RecTools import format) with the weights of `weights`.
fn import_weights(
    config: &serde_json::Value,
    weights: &std::path::Path,
    registry: &recblocks_core::Registry,
) -> anyhow::Result<recblocks::Model> {
    let parts = RecToolsCheckpoint {
        model_config: config["model_config"].clone(),
        dataset_schema: config["dataset_schema"].clone(),
        item_external_ids: ids_from_json(&config["item_external_ids"])
            .map_err(anyhow::Error::msg)?,
        state_dict: load(weights)?.into_iter().collect(),
    };
    Ok(from_parts("replay", parts, registry)?.model)
}

fn main() -> anyhow::Result<()> {
    recblocks::threads::configure(None)?;
    let Some(dir) = std::env::args().nth(1).map(std::path::PathBuf::from) else {
        bail!("usage: replay_steps DIR (written by bench/replay/rectools_steps.py)");
    };
    let registry = recblocks::builtin_registry()?;
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
    let model = import_weights(&config, &dir.join("weights.safetensors"), &registry)?;
    let spec: &ModelSpec = &model.net.spec;
    let schema = recblocks_core::DatasetSchema {
        n_items: model.item_ids.len(),
        item_extra_tokens: model.item_ids[..model.n_extra_tokens].to_vec(),
        cat_features: None,
    };
    let objective = TransformerLightningModule::from_spec(
        spec,
        &schema,
        &ModelSpec::kwargs_value(&spec.lightning_module_kwargs),
    )?;
    if let Some(seed) = std::env::args().nth(2) {
        // A different dropout stream for the same replay (`replay_steps DIR SEED`).
        model
            .net
            .rng
            .reseed(seed.parse().context("SEED must be an unsigned integer")?);
    }
    let trajectory = dir.join("trajectory.json").exists();
    if spec.dropout_rate != 0.0 && !trajectory {
        return dropout_check(&dir, &model.net, &objective);
    }
    let vars = trainable_vars(&model.net);
    let mut adam = Adam::new(vars.clone(), AdamConfig::rectools(spec.lr))?;
    let batches = load(&dir.join("batches.safetensors"))?;
    let torch_losses: Vec<f64> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("losses.json"))?)?;
    let torch_grads = load(&dir.join("grads.safetensors"))?;
    let backbone = model.net.backbone.as_ref();
    let mut ours: Vec<f64> = Vec::new();
    println!(
        "{:>5} {:>12} {:>12} {:>10}",
        "step", "recblocks", "rectools", "diff"
    );
    for (step, want) in torch_losses.iter().enumerate() {
        let batch = batch_at(&batches, step)?;
        let loss = objective.train_loss(backbone, &batch)?;
        let got = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let grads = loss.backward()?;
        if step == 0 && !trajectory {
            let mut rows = Vec::new();
            for (name, var) in &vars {
                let Some(g) = grads.get(var.as_tensor()) else {
                    rows.push((f32::INFINITY, 0.0, format!("{name} (no gradient)")));
                    continue;
                };
                let (d, s) = max_abs(g, &torch_view(&torch_grads, name)?)?;
                rows.push((d / s.max(1e-12), d, name.clone()));
            }
            print_largest(
                "step 0 gradients, largest relative differences (max|diff| / max|torch|):",
                rows,
            );
        }
        adam.step(&grads)?;
        ours.push(got);
        if trajectory {
            // Each side's own masks: compare means over windows of 100 steps.
            if (step + 1) % 100 == 0 || step + 1 == torch_losses.len() {
                let from = step / 100 * 100;
                let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
                let (a, b) = (mean(&ours[from..]), mean(&torch_losses[from..=step]));
                println!(
                    "{:>5} {a:>12.6} {b:>12.6} {:>10.2e}  (mean of {} steps)",
                    step + 1,
                    a - b,
                    step + 1 - from
                );
            }
        } else {
            println!("{step:>5} {got:>12.6} {want:>12.6} {:>10.2e}", got - want);
        }
    }
    if trajectory {
        std::fs::write(
            dir.join("recblocks_losses.json"),
            serde_json::to_string(&ours)?,
        )?;
        model
            .save(&dir.join("recblocks_final"))
            .context("writing recblocks_final")?;
        import_weights(&config, &dir.join("final.safetensors"), &registry)?
            .save(&dir.join("rectools_final"))
            .context("writing rectools_final")?;
        println!(
            "wrote {0}/recblocks_final and {0}/rectools_final",
            dir.display()
        );
        return Ok(());
    }
    let fin = load(&dir.join("final.safetensors"))?;
    let mut rows = Vec::new();
    for (name, var) in &vars {
        let (d, s) = max_abs(var.as_tensor(), &torch_view(&fin, name)?)?;
        rows.push((d / s.max(1e-12), d, name.clone()));
    }
    print_largest(
        "weights after the last step, largest relative differences:",
        rows,
    );
    Ok(())
}
