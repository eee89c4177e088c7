//! How big a training step's autograd graph is: its nodes (parameters among them), and the
//! elements of the gradient buffers candle's backward pass zero-fills (every node but the loss
//! gets one, then an add for each gradient handed to it). On a GPU every node is at least one
//! kernel launch forward and a memset and an add backward, so this counts, on any machine, what a
//! step asks of the device.
//!
//! Builds the model of a spec on an interaction file (or the built-in synthetic data), then runs
//! the forward pass and candle's backward pass of the same batch twice, in the same process:
//! without a parameter-gradient scope (every gradient routed through candle's graph) and under
//! one (`nn::ParamGradScope`, as `recblocks fit` trains: nodes that hold their parameters write
//! their gradients to the scope, and on a GPU the SASRec and pre-LN blocks are one node each).
//! Prints both counts and their ratio. Run it with `RECBLOCKS_BLOCKS=nodes` to count the graph a
//! GPU builds (the model composed from the device ops and block nodes, each in its CPU form);
//! without, it counts the CPU's (fused blocks). The loss's own device path (the chunked catalog
//! loss) has no CPU form, so its part of the count is the CPU's.
//!
//! `RECBLOCKS_BLOCKS=nodes cargo run --release -p recblocks --example graph_census -- SPEC [CSV]`

use anyhow::{bail, Context};
use candle_core::{Device, Tensor};
use recblocks::{
    assembly,
    data::{generate_synthetic, read_interactions, ColumnNames, ReadOptions, SyntheticConfig},
    train::prepare::prepare,
};
use recblocks_core::{
    components::{Objective, SessionRef},
    nn::ParamGradScope,
    DatasetSchema, ModelSpec, SharedRng,
};
use recblocks_rectools::lightning::TransformerLightningModule;

/// Graph nodes, the parameters among them, and the elements of the gradient buffers candle's
/// backward pass zero-fills.
struct Census {
    nodes: usize,
    params: usize,
    elements: usize,
}

/// The census of `loss`'s graph; then candle's backward pass over it (which must succeed). Every
/// node but the loss gets a zero-filled gradient buffer of its own shape from the first node that
/// hands it a gradient, and an add for each (candle's `GradStore::or_insert`, then `add`).
fn census(loss: &Tensor) -> anyhow::Result<Census> {
    let nodes = loss.sorted_nodes();
    let census = Census {
        nodes: nodes.len(),
        params: nodes.iter().filter(|t| t.is_variable()).count(),
        elements: nodes
            .iter()
            .filter(|t| t.id() != loss.id())
            .map(|t| t.elem_count())
            .sum(),
    };
    loss.backward()?;
    Ok(census)
}

fn main() -> anyhow::Result<()> {
    recblocks::threads::configure(None)?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(spec_path) = args.first() else {
        bail!("usage: graph_census SPEC [CSV]");
    };
    let registry = recblocks::builtin_registry()?;
    let text =
        std::fs::read_to_string(spec_path).with_context(|| format!("reading {spec_path}"))?;
    let spec =
        recblocks_core::SpecInput::from_json_str(&text).and_then(|s| s.resolve(&registry))?;
    let interactions = match args.get(1) {
        Some(p) => {
            read_interactions(p.as_ref(), &ColumnNames::default(), &ReadOptions::default())?.0
        }
        None => generate_synthetic(&SyntheticConfig::default())?,
    };
    let preparator = assembly::build_data_preparator(&spec, &registry)?;
    let data_rng = SharedRng::new(1);
    let data = prepare(&interactions, &spec, preparator.as_ref(), None, &data_rng)?;
    let schema = DatasetSchema {
        n_items: data.item_ids.len(),
        item_extra_tokens: data.item_ids[..data.n_extra_tokens].to_vec(),
        cat_features: None,
    };
    let objective = TransformerLightningModule::from_spec(
        &spec,
        &schema,
        &ModelSpec::kwargs_value(&spec.lightning_module_kwargs),
    )?;
    let sampler = assembly::build_negative_sampler(&spec, &registry)?;
    let net = assembly::assemble(&spec, &schema, &registry, &Device::Cpu)?;
    let refs: Vec<SessionRef<'_>> = data
        .sessions
        .iter()
        .take(spec.batch_size)
        .map(|s| SessionRef {
            items: &s.items,
            weights: &s.weights,
        })
        .collect();
    let batch = preparator.collate_train(
        &refs,
        schema.n_items,
        objective.requires_negatives().then_some(sampler.as_ref()),
        &data_rng,
        &Device::Cpu,
    )?;
    let mode = std::env::var("RECBLOCKS_BLOCKS").unwrap_or_else(|_| "fused".into());
    println!(
        "{spec_path}: batch of {} sessions, {} items, {} params, RECBLOCKS_BLOCKS={mode}",
        refs.len(),
        schema.n_items,
        net.n_params()
    );
    let routed = census(&objective.train_loss(net.backbone.as_ref(), &batch)?)?;
    let written = {
        let _scope = ParamGradScope::enter();
        let loss = objective.train_loss(net.backbone.as_ref(), &batch)?;
        // candle's own backward pass: what it zero-fills (the scope's gradients are not needed).
        census(&loss)?
    };
    println!(
        "{:<38} {:>12} {:>18} {:>26}",
        "one training step", "graph nodes", "parameter nodes", "zero-filled grad elements"
    );
    for (name, c) in [
        ("candle's routing (no scope)", &routed),
        ("under fit's parameter-gradient scope", &written),
    ] {
        println!(
            "{name:<38} {:>12} {:>18} {:>26}",
            c.nodes, c.params, c.elements
        );
    }
    let ratio = |a: usize, b: usize| a as f64 / b.max(1) as f64;
    println!(
        "ratio scope/no scope: graph nodes {:.2}, zero-filled elements {:.2}",
        ratio(written.nodes, routed.nodes),
        ratio(written.elements, routed.elements)
    );
    Ok(())
}
