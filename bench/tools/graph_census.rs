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

use anyhow::bail;
use candle_core::Tensor;
use recblocks_core::{components::Objective, nn::ParamGradScope};

#[path = "setup.rs"]
mod setup;

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
    let setup = setup::setup(spec_path, args.get(1).map(String::as_str))?;
    let setup::Setup {
        schema,
        objective,
        net,
        ..
    } = &setup;
    let batch = setup.batch(0)?;
    let mode = std::env::var("RECBLOCKS_BLOCKS").unwrap_or_else(|_| "fused".into());
    println!(
        "{spec_path}: batch of {} sessions, {} items, {} params, RECBLOCKS_BLOCKS={mode}",
        batch.x.dim(0)?,
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
