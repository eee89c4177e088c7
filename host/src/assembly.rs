//! Model assembly: spec + registry + dataset schema → a model whose parameters live in one
//! `VarMap` under stable, readable names (RecTools' state_dict names without `torch_model.`).
//!
//! Ports RecTools' `TransformerModelBase._init_torch_model` / `_construct_item_net`: each `*_type`
//! slot is looked up in the registry and built with its kwargs, under the prefixes `item_model`,
//! `pos_encoding_layer`, `transformer_layers`, `similarity_module`; the backbone wraps them.

use std::collections::BTreeMap;

use candle_core::Device;
use candle_nn::VarMap;
use recblocks_core::{
    components::{
        Backbone, BackboneParts, DataPreparator, NegativeSampler, Objective, TrainerSettings,
    },
    BuildContext, ComponentKind, CoreError, DatasetSchema, ModelSpec, ParamStore, Registry,
    SharedRng,
};

/// Parameter-name prefix of each spec slot.
pub const SLOT_PREFIXES: [(&str, &str); 4] = [
    ("item_net_constructor", "item_model"),
    ("pos_encoding", "pos_encoding_layer"),
    ("transformer_layers", "transformer_layers"),
    ("similarity_module", "similarity_module"),
];

/// A built model: the backbone and the variables it reads.
pub struct AssembledModel {
    /// The resolved spec it was built from.
    pub spec: ModelSpec,
    /// The catalog facts it was built for.
    pub schema: DatasetSchema,
    /// Every trainable parameter, by name.
    pub varmap: VarMap,
    /// Item net → positional encoding → layers → similarity.
    pub backbone: Box<dyn Backbone>,
    /// The model's random stream (dropout etc.).
    pub rng: SharedRng,
    /// Where the parameters live.
    pub device: Device,
}

impl AssembledModel {
    /// Parameter count of each slot (by name prefix) plus `backbone` for the rest.
    pub fn param_counts(&self) -> BTreeMap<String, usize> {
        let mut counts: BTreeMap<String, usize> = SLOT_PREFIXES
            .iter()
            .map(|(slot, _)| (slot.to_string(), 0))
            .collect();
        counts.insert("backbone".into(), 0);
        let data = self.varmap.data().lock().unwrap_or_else(|e| e.into_inner());
        for (name, var) in data.iter() {
            let first = name.split('.').next().unwrap_or("");
            let slot = SLOT_PREFIXES
                .iter()
                .find(|(_, prefix)| *prefix == first)
                .map(|(slot, _)| *slot)
                .unwrap_or("backbone");
            *counts.entry(slot.to_string()).or_default() += var.elem_count();
        }
        counts
    }

    /// Total number of trainable parameters.
    pub fn n_params(&self) -> usize {
        self.param_counts().values().sum()
    }

    /// Parameter names, sorted.
    pub fn param_names(&self) -> Vec<String> {
        let data = self.varmap.data().lock().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<String> = data.keys().cloned().collect();
        names.sort();
        names
    }
}

/// Builds the spec's data preparator (it decides the extra tokens, hence `n_items`).
pub fn build_data_preparator(
    spec: &ModelSpec,
    registry: &Registry,
) -> Result<Box<dyn DataPreparator>, CoreError> {
    let reg = registry.data_preparator(&spec.data_preparator_type)?;
    (reg.build)(spec, &ModelSpec::kwargs_value(&spec.data_preparator_kwargs))
}

/// Builds the spec's training objective.
pub fn build_objective(
    spec: &ModelSpec,
    schema: &DatasetSchema,
    registry: &Registry,
) -> Result<Box<dyn Objective>, CoreError> {
    let reg = registry.objective(&spec.lightning_module_type)?;
    (reg.build)(
        spec,
        schema,
        &ModelSpec::kwargs_value(&spec.lightning_module_kwargs),
    )
}

/// Builds the spec's negative sampler.
pub fn build_negative_sampler(
    spec: &ModelSpec,
    registry: &Registry,
) -> Result<Box<dyn NegativeSampler>, CoreError> {
    let reg = registry.negative_sampler(&spec.negative_sampler_type)?;
    (reg.build)(
        spec,
        &ModelSpec::kwargs_value(&spec.negative_sampler_kwargs),
    )
}

/// Builds the trainer settings of the spec's trainer (`get_trainer_func`, or the preset's default
/// trainer) from `get_trainer_func_kwargs`.
pub fn build_trainer_settings(
    spec: &ModelSpec,
    registry: &Registry,
) -> Result<TrainerSettings, CoreError> {
    let name = spec.trainer_name(registry)?;
    (registry.trainer(&name)?.build)(
        spec,
        &ModelSpec::kwargs_value(&spec.get_trainer_func_kwargs),
    )
}

/// The schema of a catalog of `n_real_items` items without features, with the extra tokens of
/// the spec's data preparator.
pub fn schema_for(
    spec: &ModelSpec,
    registry: &Registry,
    n_real_items: usize,
) -> Result<DatasetSchema, CoreError> {
    let prep = build_data_preparator(spec, registry)?;
    let tokens = prep.item_extra_tokens();
    let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    Ok(DatasetSchema::new(n_real_items, &refs))
}

/// Builds the model of `spec` for `schema`; parameters are initialised from the spec's seed.
pub fn assemble(
    spec: &ModelSpec,
    schema: &DatasetSchema,
    registry: &Registry,
    device: &Device,
) -> Result<AssembledModel, CoreError> {
    let seed = spec.seed_or_default();
    let varmap = VarMap::new();
    let vb = ParamStore::new(varmap.clone(), seed).into_var_builder(device);
    // The random stream for dropout etc. is separate from the init stream.
    let rng = SharedRng::new(seed.wrapping_add(0x9E37_79B9_7F4A_7C15));
    let ctx = BuildContext {
        spec,
        n_factors: spec.n_factors,
        schema,
        vb,
        rng: rng.clone(),
        registry,
    };
    let kw = ModelSpec::kwargs_value;

    let item_net_reg = registry.item_net_constructor(&spec.item_net_constructor_type)?;
    let item_net = (item_net_reg.build)(
        &ctx.pp("item_model"),
        &spec.item_net_block_types,
        &kw(&spec.item_net_constructor_kwargs),
    )?;
    if item_net.out_dim() != spec.n_factors {
        return Err(CoreError::invalid(
            ComponentKind::ItemNetConstructor,
            item_net_reg.info.name,
            format!(
                "produces item embeddings of width {}, but the model's n_factors is {}",
                item_net.out_dim(),
                spec.n_factors
            ),
        ));
    }
    let pos_encoding = (registry.positional_encoding(&spec.pos_encoding_type)?.build)(
        &ctx.pp("pos_encoding_layer"),
        &kw(&spec.pos_encoding_kwargs),
    )?;
    let transformer_layers = (registry
        .transformer_layers(&spec.transformer_layers_type)?
        .build)(
        &ctx.pp("transformer_layers"),
        &kw(&spec.transformer_layers_kwargs),
    )?;
    let similarity = (registry.similarity(&spec.similarity_module_type)?.build)(
        &ctx.pp("similarity_module"),
        &kw(&spec.similarity_module_kwargs),
    )?;
    let parts = BackboneParts {
        item_net,
        pos_encoding,
        transformer_layers,
        similarity,
    };
    let backbone =
        (registry.backbone(&spec.backbone_type)?.build)(&ctx, parts, &kw(&spec.backbone_kwargs))?;
    Ok(AssembledModel {
        spec: spec.clone(),
        schema: schema.clone(),
        varmap,
        backbone,
        rng,
        device: device.clone(),
    })
}
