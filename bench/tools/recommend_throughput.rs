//! Recommend throughput benchmark (issue "Recommend, similar items and the full metric set"):
//! u2i for every user of a synthetic log of N_USERS users over N_ITEMS items (default
//! 100,000 × 50,000, sessions of 20–60 interactions), with an untrained SASRec (d = 64, L = 50):
//! throughput does not depend on the weights. Prints users/s; run it under `/usr/bin/time -v`
//! for peak memory.
//!
//! `cargo run --release -p recblocks --example recommend_throughput [N_USERS N_ITEMS]`

use std::time::Instant;

use recblocks::{
    data::{generate_synthetic, SyntheticConfig},
    recommend::{OnUnsupported, RecommendRequest},
    FitOptions, Model, TrainData,
};

fn main() -> anyhow::Result<()> {
    // The same thread set-up as the binary (RAYON_NUM_THREADS / CANDLE_NUM_THREADS honoured).
    recblocks::threads::configure(None)?;
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let n_users = args.first().copied().unwrap_or(100_000);
    let n_items = args.get(1).copied().unwrap_or(50_000);
    let started = Instant::now();
    let log = generate_synthetic(&SyntheticConfig {
        n_users,
        n_items,
        ..SyntheticConfig::default()
    })?;
    eprintln!(
        "generated {} interactions in {:.1} s",
        log.len(),
        started.elapsed().as_secs_f64()
    );
    let registry = recblocks::builtin_registry()?;
    let spec = recblocks_core::SpecInput::from_json_str(
        r#"{"cls": "SASRecModel", "n_factors": 64, "n_heads": 2, "n_blocks": 2,
            "session_max_len": 50, "recommend_batch_size": 256}"#,
    )
    .and_then(|s| s.resolve(&registry))?;
    let model = Model::fit(
        spec,
        TrainData {
            interactions: &log,
            item_features: None,
        },
        &registry,
        &FitOptions {
            epochs: Some(0),
            seed: None,
            ..FitOptions::default()
        },
    )?;
    let started = Instant::now();
    let out = model.recommend(
        &log,
        &RecommendRequest {
            users: None,
            k: 10,
            filter_viewed: true,
            items_to_recommend: None,
            on_unsupported: OnUnsupported::Raise,
        },
    )?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "recommend: {n_users} users x {} items, k = 10: {:.2} s, {:.0} users/s ({} rows)",
        model.item_ids.len() - model.n_extra_tokens,
        secs,
        n_users as f64 / secs,
        out.rows.len()
    );
    Ok(())
}
