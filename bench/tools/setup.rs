//! What the training bench tools (`train_step`, `graph_census`) build before they time or count:
//! a spec's model, data preparator, objective and negative sampler on the CPU, over an interaction
//! file or the built-in synthetic data. Included by each tool as a module.

use anyhow::Context;
use candle_core::Device;
use recblocks::{
    assembly,
    data::{generate_synthetic, read_interactions, ColumnNames, ReadOptions, SyntheticConfig},
    train::prepare::{prepare, PreparedData},
};
use recblocks_core::{
    components::{DataPreparator, NegativeSampler, SessionRef},
    Batch, DatasetSchema, ModelSpec, SharedRng,
};
use recblocks_rectools::lightning::TransformerLightningModule;

/// A spec's model and what trains it.
pub struct Setup {
    pub spec: ModelSpec,
    pub preparator: Box<dyn DataPreparator>,
    pub data: PreparedData,
    pub data_rng: SharedRng,
    pub schema: DatasetSchema,
    pub objective: TransformerLightningModule,
    pub sampler: Box<dyn NegativeSampler>,
    pub net: recblocks::assembly::AssembledModel,
}

/// Builds the spec at `spec_path` on the interactions of `csv` (the built-in synthetic data when
/// `None`).
pub fn setup(spec_path: &str, csv: Option<&str>) -> anyhow::Result<Setup> {
    let registry = recblocks::builtin_registry()?;
    let text =
        std::fs::read_to_string(spec_path).with_context(|| format!("reading {spec_path}"))?;
    let spec =
        recblocks_core::SpecInput::from_json_str(&text).and_then(|s| s.resolve(&registry))?;
    let interactions = match csv {
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
    Ok(Setup {
        spec,
        preparator,
        data,
        data_rng,
        schema,
        objective,
        sampler,
        net,
    })
}

impl Setup {
    /// The training batch of `batch_size` sessions from session `start` on (wrapping around).
    pub fn batch(&self, start: usize) -> anyhow::Result<Batch> {
        use recblocks_core::components::Objective;
        let n = self.data.sessions.len().max(1);
        let refs: Vec<SessionRef<'_>> = self
            .data
            .sessions
            .iter()
            .cycle()
            .skip(start % n)
            .take(self.spec.batch_size)
            .map(|s| SessionRef {
                items: &s.items,
                weights: &s.weights,
            })
            .collect();
        Ok(self.preparator.collate_train(
            &refs,
            self.schema.n_items,
            self.objective
                .requires_negatives()
                .then_some(self.sampler.as_ref()),
            &self.data_rng,
            &Device::Cpu,
        )?)
    }
}
