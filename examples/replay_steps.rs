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
//! `cargo run --release -p recblocks --example replay_steps -- DIR`

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

fn main() -> anyhow::Result<()> {
    recblocks::threads::configure(None)?;
    let Some(dir) = std::env::args().nth(1).map(std::path::PathBuf::from) else {
        bail!("usage: replay_steps DIR (written by bench/replay/rectools_steps.py)");
    };
    let registry = recblocks::builtin_registry()?;
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
    let parts = RecToolsCheckpoint {
        model_config: config["model_config"].clone(),
        dataset_schema: config["dataset_schema"].clone(),
        item_external_ids: ids_from_json(&config["item_external_ids"])
            .map_err(anyhow::Error::msg)?,
        state_dict: load(&dir.join("weights.safetensors"))?
            .into_iter()
            .collect(),
    };
    let model = from_parts("replay", parts, &registry)?.model;
    let spec: &ModelSpec = &model.net.spec;
    if spec.dropout_rate != 0.0 {
        bail!("the replay needs dropout_rate 0");
    }
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
    let vars = trainable_vars(&model.net);
    let mut adam = Adam::new(vars.clone(), AdamConfig::rectools(spec.lr))?;
    let batches = load(&dir.join("batches.safetensors"))?;
    let torch_losses: Vec<f64> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("losses.json"))?)?;
    let torch_grads = load(&dir.join("grads.safetensors"))?;
    let backbone = model.net.backbone.as_ref();
    println!(
        "{:>5} {:>12} {:>12} {:>10}",
        "step", "recblocks", "rectools", "diff"
    );
    for (step, want) in torch_losses.iter().enumerate() {
        let get = |k: &str| -> anyhow::Result<Tensor> {
            batches
                .get(&format!("{k}_{step}"))
                .cloned()
                .with_context(|| format!("no `{k}_{step}` in batches.safetensors"))
        };
        let batch = Batch {
            x: get("x")?.to_dtype(DType::U32)?,
            y: get("y")?.to_dtype(DType::U32)?,
            yw: get("yw")?.to_dtype(DType::F32)?,
            negatives: match get("negatives") {
                Ok(t) => Some(t.to_dtype(DType::U32)?),
                Err(_) => None,
            },
        };
        let loss = objective.train_loss(backbone, &batch)?;
        let got = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let grads = loss.backward()?;
        if step == 0 {
            let mut rows = Vec::new();
            for (name, var) in &vars {
                let Some(g) = grads.get(var.as_tensor()) else {
                    rows.push((f32::INFINITY, 0.0, format!("{name} (no gradient)")));
                    continue;
                };
                let (d, s) = max_abs(g, &torch_view(&torch_grads, name)?)?;
                rows.push((d / s.max(1e-12), d, name.clone()));
            }
            rows.sort_by(|a, b| b.0.total_cmp(&a.0));
            println!("step 0 gradients, largest relative differences (max|diff| / max|torch|):");
            for (rel, d, name) in rows.iter().take(8) {
                println!("  {rel:>10.3e} {d:>10.3e}  {name}");
            }
        }
        adam.step(&grads)?;
        println!("{step:>5} {got:>12.6} {want:>12.6} {:>10.2e}", got - want);
    }
    let fin = load(&dir.join("final.safetensors"))?;
    let mut rows = Vec::new();
    for (name, var) in &vars {
        let (d, s) = max_abs(var.as_tensor(), &torch_view(&fin, name)?)?;
        rows.push((d / s.max(1e-12), d, name.clone()));
    }
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    println!("weights after the last step, largest relative differences:");
    for (rel, d, name) in rows.iter().take(8) {
        println!("  {rel:>10.3e} {d:>10.3e}  {name}");
    }
    Ok(())
}
