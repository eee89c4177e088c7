//! The host links every static plugin: the registered set is exactly this.

use recblocks_core::ComponentKind;

use crate::util::registry;

#[test]
fn builtin_registry_holds_every_standard_component() {
    let r = registry();
    let names = |k| r.names_of(k);
    assert_eq!(
        names(ComponentKind::ModelPreset),
        ["BERT4RecModel", "SASRecModel"]
    );
    assert_eq!(
        names(ComponentKind::ItemNetBlock),
        ["CatFeaturesItemNet", "IdEmbeddingsItemNet"]
    );
    assert_eq!(
        names(ComponentKind::ItemNetConstructor),
        ["AlbertSumConstructor", "SumOfEmbeddingsConstructor"]
    );
    assert_eq!(
        names(ComponentKind::PositionalEncoding),
        ["LearnableInversePositionalEncoding"]
    );
    assert_eq!(
        names(ComponentKind::TransformerLayers),
        [
            "AlbertLayers",
            "LiGRLayers",
            "PreLNTransformerLayers",
            "SASRecTransformerLayers"
        ]
    );
    assert_eq!(
        names(ComponentKind::Similarity),
        ["DistanceSimilarityModule"]
    );
    assert_eq!(
        names(ComponentKind::NegativeSampler),
        ["CatalogUniformSampler"]
    );
    assert_eq!(
        names(ComponentKind::DataPreparator),
        ["BERT4RecDataPreparator", "SASRecDataPreparator"]
    );
    assert_eq!(names(ComponentKind::Backbone), ["TransformerTorchBackbone"]);
    assert_eq!(
        names(ComponentKind::Objective),
        ["TransformerLightningModule"]
    );
    assert_eq!(names(ComponentKind::ValMask), ["leave_one_out_mask"]);
    assert_eq!(names(ComponentKind::Trainer), ["default_trainer"]);
}

#[test]
fn duplicate_registration_names_both_crates() {
    let mut r = registry();
    let dup = r
        .lookup(ComponentKind::Backbone, "TransformerTorchBackbone")
        .unwrap();
    let e = r.add(dup).err().map(|e| e.to_string()).unwrap_or_default();
    assert_eq!(
        e,
        "duplicate backbone name `TransformerTorchBackbone`: registered by crate \
         `recblocks-rectools` and again by crate `recblocks-rectools`"
    );
}
