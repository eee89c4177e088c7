//! A RecTools config loads unchanged and resolves to RecTools' defaults; a user's mistakes give
//! messages that say where, what was found and what was expected (pinned in full).

use crate::util::registry;

/// `SASRecModel().get_config(simple_types=True)` (docs/rectools.md §4).
const RECTOOLS_SASREC_DEFAULT: &str = r#"{
  "cls": "SASRecModel",
  "verbose": 0,
  "data_preparator_type": "rectools.models.nn.transformers.sasrec.SASRecDataPreparator",
  "n_blocks": 2, "n_heads": 4, "n_factors": 256,
  "use_pos_emb": true, "use_causal_attn": true, "use_key_padding_mask": false,
  "dropout_rate": 0.2, "session_max_len": 100, "dataloader_num_workers": 0, "batch_size": 128,
  "loss": "softmax", "n_negatives": 1, "gbce_t": 0.2, "lr": 0.001, "epochs": 3,
  "deterministic": false, "recommend_batch_size": 256, "recommend_torch_device": null,
  "train_min_user_interactions": 2,
  "item_net_block_types": ["rectools.models.nn.item_net.IdEmbeddingsItemNet",
                           "rectools.models.nn.item_net.CatFeaturesItemNet"],
  "item_net_constructor_type": "rectools.models.nn.item_net.SumOfEmbeddingsConstructor",
  "pos_encoding_type": "rectools.models.nn.transformers.net_blocks.LearnableInversePositionalEncoding",
  "transformer_layers_type": "rectools.models.nn.transformers.sasrec.SASRecTransformerLayers",
  "lightning_module_type": "rectools.models.nn.transformers.lightning.TransformerLightningModule",
  "negative_sampler_type": "rectools.models.nn.transformers.negative_sampler.CatalogUniformSampler",
  "similarity_module_type": "rectools.models.nn.transformers.similarity.DistanceSimilarityModule",
  "backbone_type": "rectools.models.nn.transformers.torch_backbone.TransformerTorchBackbone",
  "get_val_mask_func": null, "get_trainer_func": null,
  "get_val_mask_func_kwargs": null, "get_trainer_func_kwargs": null,
  "data_preparator_kwargs": null, "transformer_layers_kwargs": null,
  "item_net_constructor_kwargs": null, "pos_encoding_kwargs": null,
  "lightning_module_kwargs": null, "negative_sampler_kwargs": null,
  "similarity_module_kwargs": null, "backbone_kwargs": null
}"#;

fn bert4rec_default() -> String {
    RECTOOLS_SASREC_DEFAULT
        .replace("\"SASRecModel\"", "\"BERT4RecModel\"")
        .replace(
            "transformers.sasrec.SASRecDataPreparator",
            "transformers.bert4rec.BERT4RecDataPreparator",
        )
        .replace(
            "transformers.sasrec.SASRecTransformerLayers",
            "transformers.net_blocks.PreLNTransformerLayers",
        )
        .replace("\"use_causal_attn\": true", "\"use_causal_attn\": false")
        .replace(
            "\"use_key_padding_mask\": false",
            "\"use_key_padding_mask\": true",
        )
        .replace(
            "\"backbone_kwargs\": null",
            "\"backbone_kwargs\": null, \"mask_prob\": 0.15",
        )
}

fn err(json: &str) -> String {
    match recblocks_core::SpecInput::from_json_str(json).and_then(|s| s.resolve(&registry())) {
        Ok(_) => panic!("expected an error for {json}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn rectools_sasrec_default_config_loads_unchanged_and_equals_the_defaults() {
    let r = registry();
    let exported = recblocks_core::SpecInput::from_json_str(RECTOOLS_SASREC_DEFAULT)
        .and_then(|s| s.resolve(&r))
        .unwrap();
    let minimal = recblocks_core::SpecInput::from_json_str(r#"{"cls": "SASRecModel"}"#)
        .and_then(|s| s.resolve(&r))
        .unwrap();
    assert_eq!(exported, minimal);
    assert_eq!(exported.transformer_layers_type, "SASRecTransformerLayers");
    assert_eq!(exported.data_preparator_type, "SASRecDataPreparator");
    assert_eq!(
        exported.item_net_block_types,
        vec!["IdEmbeddingsItemNet", "CatFeaturesItemNet"]
    );
    assert!(exported.use_causal_attn && !exported.use_key_padding_mask);
    assert_eq!(
        (exported.n_factors, exported.n_heads, exported.n_blocks),
        (256, 4, 2)
    );
    assert_eq!(
        (
            exported.session_max_len,
            exported.batch_size,
            exported.epochs
        ),
        (100, 128, 3)
    );
    assert_eq!(exported.mask_prob, None);
}

#[test]
fn rectools_bert4rec_default_config_loads_unchanged_and_equals_the_defaults() {
    let r = registry();
    let exported = recblocks_core::SpecInput::from_json_str(&bert4rec_default())
        .and_then(|s| s.resolve(&r))
        .unwrap();
    let minimal =
        recblocks_core::SpecInput::from_json_str(r#"{"cls": "rectools.models.BERT4RecModel"}"#)
            .and_then(|s| s.resolve(&r))
            .unwrap();
    assert_eq!(exported, minimal);
    assert_eq!(exported.cls, "BERT4RecModel");
    assert_eq!(exported.transformer_layers_type, "PreLNTransformerLayers");
    assert!(!exported.use_causal_attn && exported.use_key_padding_mask);
    assert_eq!(exported.mask_prob, Some(0.15));
}

#[test]
fn notebook_class_paths_resolve_by_their_class_name() {
    let r = registry();
    let s = recblocks_core::SpecInput::from_json_str(
        r#"{"cls": "SASRecModel", "transformer_layers_type": "__main__.PreLNTransformerLayers"}"#,
    )
    .and_then(|s| s.resolve(&r))
    .unwrap();
    assert_eq!(s.transformer_layers_type, "PreLNTransformerLayers");
}

#[test]
fn unknown_type_lists_known_names_and_the_closest() {
    let msg = err(r#"{"cls": "SASRecModel", "transformer_layers_type": "SASRecTransformerLayer"}"#);
    assert!(
        msg.starts_with(
            "unknown transformer_layers `SASRecTransformerLayer` (did you mean `SASRecTransformerLayers`?); \
             known transformer_layers names: "
        ),
        "{msg}"
    );
    for name in [
        "LiGRLayers",
        "PreLNTransformerLayers",
        "SASRecTransformerLayers",
    ] {
        assert!(msg.contains(name), "{msg}");
    }
}

#[test]
fn unknown_model_class_lists_the_classes() {
    assert_eq!(
        err(r#"{"cls": "GRU4RecModel"}"#),
        "unknown model `GRU4RecModel` (did you mean `BERT4RecModel`?); known model names: \
         BERT4RecModel, SASRecModel"
    );
}

#[test]
fn unknown_top_level_key_is_rejected_with_a_hint() {
    let msg = err(r#"{"cls": "SASRecModel", "n_factor": 64}"#);
    assert!(
        msg.starts_with("spec: unknown key `n_factor` for SASRecModel (did you mean `n_factors`?); accepted keys: "),
        "{msg}"
    );
}

#[test]
fn mask_prob_is_bert4rec_only() {
    let msg = err(r#"{"cls": "SASRecModel", "mask_prob": 0.2}"#);
    assert!(
        msg.starts_with("spec: unknown key `mask_prob` for SASRecModel"),
        "{msg}"
    );
}

#[test]
fn ill_typed_key_names_the_key_and_the_expected_type() {
    assert_eq!(
        err(r#"{"cls": "SASRecModel", "n_factors": "64"}"#),
        "spec: key `n_factors`: invalid type: string \"64\", expected usize"
    );
}

#[test]
fn bad_json_says_where() {
    assert_eq!(
        err("{\"cls\": \"SASRecModel\",\n \"n_factors\": }"),
        "spec: not valid JSON (line 2, column 15): expected value at line 2 column 15"
    );
}

#[test]
fn a_key_given_twice_is_refused_with_where() {
    let msg = err("{\"cls\": \"SASRecModel\", \"epochs\": 5,\n \"epochs\": 50}");
    assert!(msg.contains("key `epochs` appears twice"), "{msg}");
    assert!(msg.contains("line 2"), "{msg}");
    let msg = err(
        r#"{"cls": "SASRecModel", "similarity_module_kwargs": {"distance": "dot", "distance": "cosine"}}"#,
    );
    assert!(msg.contains("key `distance` appears twice"), "{msg}");
}

#[test]
fn epochs_or_seeds_given_twice_with_different_values_are_refused_naming_both() {
    let msg = err(
        r#"{"cls": "SASRecModel", "epochs": 5, "get_trainer_func_kwargs": {"max_epochs": 50}}"#,
    );
    assert!(msg.contains("`epochs` is 5"), "{msg}");
    assert!(
        msg.contains("`get_trainer_func_kwargs.max_epochs` is 50"),
        "{msg}"
    );
    let msg = err(r#"{"cls": "SASRecModel", "seed": 1, "get_trainer_func_kwargs": {"seed": 2}}"#);
    assert!(msg.contains("`seed` is 1"), "{msg}");
    // The same value twice, or one of them alone, is fine.
    let r = registry();
    for ok in [
        r#"{"cls": "SASRecModel", "epochs": 5, "get_trainer_func_kwargs": {"max_epochs": 5}}"#,
        r#"{"cls": "SASRecModel", "get_trainer_func_kwargs": {"max_epochs": 50}}"#,
    ] {
        assert!(
            recblocks_core::SpecInput::from_json_str(ok)
                .and_then(|s| s.resolve(&r))
                .is_ok(),
            "{ok}"
        );
    }
}

#[test]
fn a_huge_value_or_key_is_cut_in_the_message() {
    let huge = "x".repeat(1_000_000);
    let msg = err(&format!(
        r#"{{"cls": "SASRecModel", "n_factors": "{huge}"}}"#
    ));
    assert!(msg.contains("key `n_factors`"), "{}", &msg[..300]);
    assert!(msg.contains("characters)"), "{}", &msg[..300]);
    assert!(msg.len() < 1_000, "{} bytes", msg.len());
    let msg = err(&format!(r#"{{"cls": "SASRecModel", "{huge}": 1}}"#));
    assert!(msg.contains("(1000000 characters)"), "{}", &msg[..300]);
    assert!(msg.len() < 3_000, "{} bytes", msg.len());
}

#[test]
fn missing_cls_names_the_classes() {
    assert_eq!(
        err(r#"{"n_factors": 64}"#),
        "spec: key `cls` is missing: name the model class, one of BERT4RecModel, SASRecModel"
    );
}

#[test]
fn unknown_kwarg_names_component_field_and_expected_fields() {
    let r = registry();
    let spec = recblocks_core::SpecInput::from_json_str(r#"{"cls": "BERT4RecModel", "n_factors": 16, "transformer_layers_kwargs": {"ff_factor_multiplier": 2}}"#).and_then(|s| s.resolve(&r))
    .unwrap();
    let schema = recblocks::assembly::schema_for(&spec, &r, 10).unwrap();
    let e = recblocks::assemble(&spec, &schema, &r, &candle_core::Device::Cpu)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert_eq!(
        e,
        "bad kwargs for transformer_layers `PreLNTransformerLayers`: unknown field \
         `ff_factor_multiplier`, expected `ff_factors_multiplier`"
    );
}

#[test]
fn n_factors_must_divide_into_heads() {
    assert_eq!(
        err(r#"{"cls": "SASRecModel", "n_factors": 10, "n_heads": 4}"#),
        "spec: n_factors (10) must be a positive multiple of n_heads (4)"
    );
}

#[test]
fn item_net_blocks_get_their_kwargs_from_item_net_block_kwargs() {
    let registry = registry();
    let assemble = |json: &str| {
        let spec = recblocks_core::SpecInput::from_json_str(json)
            .and_then(|s| s.resolve(&registry))
            .map_err(|e| e.to_string())?;
        let schema =
            recblocks::assembly::schema_for(&spec, &registry, 30).map_err(|e| e.to_string())?;
        recblocks::assembly::assemble(&spec, &schema, &registry, &candle_core::Device::Cpu)
            .map(|_| spec)
            .map_err(|e| e.to_string())
    };
    // Given under RecTools' dotted path, keyed by the canonical name once resolved; `{}` and
    // `null` are no kwargs.
    let spec = assemble(
        r#"{"cls": "SASRecModel", "n_factors": 8, "n_heads": 2,
            "item_net_block_kwargs": {"rectools.models.nn.item_net.IdEmbeddingsItemNet": {}}}"#,
    )
    .unwrap();
    assert_eq!(
        spec.item_net_block_kwargs.keys().collect::<Vec<_>>(),
        ["IdEmbeddingsItemNet"]
    );
    // The block receives them: IdEmbeddingsItemNet takes none and rejects one, naming it.
    let msg = assemble(
        r#"{"cls": "SASRecModel", "n_factors": 8, "n_heads": 2,
            "item_net_block_kwargs": {"IdEmbeddingsItemNet": {"padding_idx": 0}}}"#,
    )
    .unwrap_err();
    assert!(
        msg.contains("item_net_block `IdEmbeddingsItemNet`") && msg.contains("padding_idx"),
        "{msg}"
    );
    // Kwargs for a block the spec does not use, or not an object.
    let msg = err(
        r#"{"cls": "SASRecModel", "item_net_block_types": ["IdEmbeddingsItemNet"],
        "item_net_block_kwargs": {"CatFeaturesItemNet": {}}}"#,
    );
    assert_eq!(
        msg,
        "spec: key `item_net_block_kwargs.CatFeaturesItemNet`: `CatFeaturesItemNet` is not one of \
         item_net_block_types [IdEmbeddingsItemNet]"
    );
    let msg = err(r#"{"cls": "SASRecModel", "item_net_block_kwargs": {"IdEmbeddingsItemNet": 3}}"#);
    assert!(
        msg.contains("expected an object of kwargs or null, found 3"),
        "{msg}"
    );
}
