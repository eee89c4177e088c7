//! Where a training step's time goes, and the fused loss against RecTools' order of operations.
//!
//! Builds the model of a spec on an interaction file (or the built-in synthetic data), then runs
//! training steps alternating two loss paths on the same batches: `reference` (logits at every
//! position, candle's composed `log_softmax`) and `fused` (target positions only, the fused
//! catalog cross-entropy that `fit` uses). Prints, per path, the median seconds of the forward
//! (loss), the backward and the Adam step, and the ratio fused/reference.
//!
//! `cargo run --release -p recblocks --example train_step -- SPEC [CSV] [STEPS]`

use std::time::Instant;

use anyhow::{bail, Context};
use recblocks::{
    model::trainable_vars,
    train::adam::{Adam, AdamConfig},
};
use recblocks_core::components::Objective;

#[path = "setup.rs"]
mod setup;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() -> anyhow::Result<()> {
    // The same thread set-up as the binary (RAYON_NUM_THREADS / CANDLE_NUM_THREADS honoured).
    recblocks::threads::configure(None)?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(spec_path) = args.first() else {
        bail!("usage: train_step SPEC [CSV] [STEPS]");
    };
    let steps: usize = match args.get(2) {
        Some(s) => s.parse().context("STEPS must be a number")?,
        None => 6,
    };
    let setup = setup::setup(spec_path, args.get(1).map(String::as_str))?;
    let setup::Setup {
        spec,
        schema,
        objective,
        net,
        data,
        ..
    } = &setup;
    let mut adam = Adam::new(trainable_vars(net), AdamConfig::rectools(spec.lr))?;
    println!(
        "{} sessions, {} items (with extra tokens), batch {}, {} params, {} rayon threads",
        data.sessions.len(),
        schema.n_items,
        spec.batch_size,
        net.n_params(),
        rayon::current_num_threads()
    );

    let mut times: [[Vec<f64>; 3]; 2] = Default::default();
    for step in 0..2 * steps + 2 {
        let batch = setup.batch(step / 2 * spec.batch_size)?;
        let fused = step % 2 == 1;
        let t0 = Instant::now();
        let loss = if fused {
            objective.train_loss(net.backbone.as_ref(), &batch)?
        } else {
            objective.reference_train_loss(net.backbone.as_ref(), &batch)?
        };
        let t1 = Instant::now();
        let grads = loss.backward()?;
        let t2 = Instant::now();
        adam.step(&grads)?;
        let t3 = Instant::now();
        if step >= 2 {
            let row = &mut times[usize::from(fused)];
            row[0].push((t1 - t0).as_secs_f64());
            row[1].push((t2 - t1).as_secs_f64());
            row[2].push((t3 - t2).as_secs_f64());
        }
    }
    let summary = |t: &[Vec<f64>; 3]| -> [f64; 4] {
        let [f, b, a] = [
            median(t[0].clone()),
            median(t[1].clone()),
            median(t[2].clone()),
        ];
        [f, b, a, f + b + a]
    };
    let r = summary(&times[0]);
    let f = summary(&times[1]);
    println!("median seconds per step over {steps} steps each (alternating):");
    println!(
        "{:<10} {:>9} {:>9} {:>9} {:>9}",
        "path", "forward", "backward", "adam", "total"
    );
    for (name, v) in [("reference", r), ("fused", f)] {
        println!(
            "{name:<10} {:>9.4} {:>9.4} {:>9.4} {:>9.4}",
            v[0], v[1], v[2], v[3]
        );
    }
    println!(
        "ratio fused/reference: forward {:.2}, backward {:.2}, total {:.2}",
        f[0] / r[0],
        f[1] / r[1],
        f[3] / r[3]
    );
    Ok(())
}
