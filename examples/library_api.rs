//! Using recblocks as a library: read a spec, train it on interactions, save the model, load it
//! back and recommend.
//!
//! Run with `cargo run --release -p recblocks --example library_api`.

use recblocks::{
    data::{generate_synthetic, SyntheticConfig},
    recommend::{OnUnsupported, RecommendRequest},
    FitOptions, Model, TrainData,
};

fn main() -> anyhow::Result<()> {
    let registry = recblocks::builtin_registry()?;
    let spec = recblocks_core::SpecInput::from_json_str(
        r#"{"cls": "SASRecModel", "n_factors": 32, "n_heads": 2, "session_max_len": 20,
            "epochs": 3, "seed": 7}"#,
    )
    .and_then(|s| s.resolve(&registry))?;
    // Any `Interactions` works here: `recblocks::data::read_interactions` reads CSV or Parquet.
    let interactions = generate_synthetic(&SyntheticConfig::default())?;
    let data = TrainData {
        interactions: &interactions,
        item_features: None,
    };
    let model = Model::fit(spec, data, &registry, &FitOptions::default())?;

    let dir = std::env::temp_dir().join("recblocks-library-api-example");
    model.save(&dir)?;
    let model = Model::load(&dir, &registry)?;

    let users = vec![interactions.user_ids[0].clone()];
    let reco = model.recommend(
        &interactions,
        &RecommendRequest {
            users: Some(&users),
            k: 5,
            filter_viewed: true,
            items_to_recommend: None,
            on_unsupported: OnUnsupported::Raise,
        },
    )?;
    for r in &reco.rows {
        println!("{}\t{}\t{:.4}\t{}", r.user_id, r.item_id, r.score, r.rank);
    }
    Ok(())
}
