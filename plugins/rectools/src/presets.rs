//! Model presets: the full default configs of RecTools' `SASRecModel` and `BERT4RecModel`
//! (`SASRecModelConfig`, `BERT4RecModelConfig`; docs/rectools.md §1.1 and §4), with component types
//! given by their canonical recblocks names (RecTools' class names).

use recblocks_core::{
    components::ModelPreset,
    serde_json::{json, Map, Value},
};

/// The keys and defaults shared by every transformer model (`TransformerModelConfig`).
fn base_defaults() -> Map<String, Value> {
    let v = json!({
        "cls": null,
        "verbose": 0,
        "data_preparator_type": null,
        "n_blocks": 2,
        "n_heads": 4,
        "n_factors": 256,
        "use_pos_emb": true,
        "use_causal_attn": false,
        "use_key_padding_mask": false,
        "dropout_rate": 0.2,
        "session_max_len": 100,
        "dataloader_num_workers": 0,
        "batch_size": 128,
        "loss": "softmax",
        "n_negatives": 1,
        "gbce_t": 0.2,
        "lr": 0.001,
        "epochs": 3,
        "deterministic": false,
        "recommend_batch_size": 256,
        "recommend_torch_device": null,
        "train_min_user_interactions": 2,
        "item_net_block_types": ["IdEmbeddingsItemNet", "CatFeaturesItemNet"],
        "item_net_constructor_type": "SumOfEmbeddingsConstructor",
        "pos_encoding_type": "LearnableInversePositionalEncoding",
        "transformer_layers_type": "PreLNTransformerLayers",
        "lightning_module_type": "TransformerLightningModule",
        "negative_sampler_type": "CatalogUniformSampler",
        "similarity_module_type": "DistanceSimilarityModule",
        "backbone_type": "TransformerTorchBackbone",
        "get_val_mask_func": null,
        "get_trainer_func": null,
        "get_val_mask_func_kwargs": null,
        "get_trainer_func_kwargs": null,
        "data_preparator_kwargs": null,
        "transformer_layers_kwargs": null,
        "item_net_constructor_kwargs": null,
        "pos_encoding_kwargs": null,
        "lightning_module_kwargs": null,
        "negative_sampler_kwargs": null,
        "similarity_module_kwargs": null,
        "backbone_kwargs": null
    });
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// `SASRecModel` defaults: SASRec data preparator and layers, causal attention, no key padding
/// mask.
pub fn sasrec_defaults() -> Map<String, Value> {
    let mut m = base_defaults();
    m.insert("cls".into(), json!("SASRecModel"));
    m.insert("data_preparator_type".into(), json!("SASRecDataPreparator"));
    m.insert(
        "transformer_layers_type".into(),
        json!("SASRecTransformerLayers"),
    );
    m.insert("use_causal_attn".into(), json!(true));
    m.insert("use_key_padding_mask".into(), json!(false));
    m
}

/// `BERT4RecModel` defaults: BERT4Rec data preparator, pre-LN layers, key padding mask, no
/// causal attention, and `mask_prob` 0.15.
pub fn bert4rec_defaults() -> Map<String, Value> {
    let mut m = base_defaults();
    m.insert("cls".into(), json!("BERT4RecModel"));
    m.insert(
        "data_preparator_type".into(),
        json!("BERT4RecDataPreparator"),
    );
    m.insert(
        "transformer_layers_type".into(),
        json!("PreLNTransformerLayers"),
    );
    m.insert("use_causal_attn".into(), json!(false));
    m.insert("use_key_padding_mask".into(), json!(true));
    m.insert("mask_prob".into(), json!(0.15));
    m
}

/// The trainer both models run when `get_trainer_func` is null (RecTools: a default Lightning
/// `Trainer`).
const DEFAULT_TRAINER: &str = crate::trainer::NAME;

fn sasrec_preset() -> ModelPreset {
    ModelPreset {
        defaults: sasrec_defaults(),
        default_trainer: DEFAULT_TRAINER,
    }
}

fn bert4rec_preset() -> ModelPreset {
    ModelPreset {
        defaults: bert4rec_defaults(),
        default_trainer: DEFAULT_TRAINER,
    }
}

recblocks_core::register! {
    ModelPresetRegistration {
        name: "SASRecModel",
        aliases: ["rectools.models.SASRecModel", "rectools.models.sasrec.SASRecModel", "rectools.models.nn.transformers.sasrec.SASRecModel"],
        summary: "SASRec (Kang & McAuley, 2018): causal self-attention over the session, next-item targets",
        build: sasrec_preset,
    }
}

recblocks_core::register! {
    ModelPresetRegistration {
        name: "BERT4RecModel",
        aliases: ["rectools.models.BERT4RecModel", "rectools.models.bert4rec.BERT4RecModel", "rectools.models.nn.transformers.bert4rec.BERT4RecModel"],
        summary: "BERT4Rec (Sun et al., 2019): bidirectional self-attention trained on masked items",
        build: bert4rec_preset,
    }
}
