//! The library API: [`Model::fit`] trains a spec on interactions, [`Model::resume`] continues a
//! saved run, [`Model::save`]/[`Model::load`] write and read model directories (see
//! [`crate::artifact`]). Recommending lives in [`crate::recommend`].

use std::collections::BTreeMap;

use candle_core::Tensor;
use recblocks_core::{
    components::{trainer::TrainerSettings, DataPreparator, NegativeSampler, Objective},
    ComponentKind, ModelSpec, Registry, SharedRng,
};

use crate::{
    assembly::{self, AssembledModel},
    data::{Interactions, ItemFeatures},
    error::HostError,
    train::{
        adam::{Adam, AdamConfig},
        fit::{EpochLog, FitOptions, TrainRun, TrainingState},
        observer::NoopObserver,
        prepare::{prepare, PreparedData, ValMask},
        rng_state::RngState,
    },
    Result,
};

/// Offset between the model seed and the data stream's seed.
const DATA_STREAM_OFFSET: u64 = 0xD1B5_4A32_D192_ED03;

/// Training input: interactions and, optionally, categorical item features.
#[derive(Debug, Clone, Copy)]
pub struct TrainData<'a> {
    /// The interaction log.
    pub interactions: &'a Interactions,
    /// Item features for `CatFeaturesItemNet`.
    pub item_features: Option<&'a ItemFeatures>,
}

/// A trained (or loaded) model with its id maps and training state.
pub struct Model {
    /// The assembled network and its parameters.
    pub net: AssembledModel,
    /// Internal item id → external id (extra tokens first).
    pub item_ids: Vec<String>,
    /// Number of extra tokens (PAD, MASK) at the start of `item_ids`.
    pub n_extra_tokens: usize,
    /// Per-epoch log.
    pub train_log: Vec<EpochLog>,
    /// Trainer settings of the run.
    pub settings: TrainerSettings,
    /// Epochs done, random stream states, early stopping.
    pub training: TrainingState,
    /// Spec slot → (component name, crate that provided it).
    pub provenance: BTreeMap<String, (String, String)>,
    pub(crate) preparator: Box<dyn DataPreparator>,
    pub(crate) adam: Option<Adam>,
    pub(crate) best_weights: Option<BTreeMap<String, Tensor>>,
}

/// The parts of a training pipeline built from a spec.
struct Pipeline {
    preparator: Box<dyn DataPreparator>,
    settings: TrainerSettings,
}

fn pipeline(spec: &ModelSpec, registry: &Registry) -> Result<Pipeline> {
    let preparator = assembly::build_data_preparator(spec, registry)?;
    let settings = assembly::build_trainer_settings(spec, registry)?;
    Ok(Pipeline {
        preparator,
        settings,
    })
}

fn prepare_data(
    spec: &ModelSpec,
    registry: &Registry,
    preparator: &dyn DataPreparator,
    interactions: &Interactions,
    data_rng: &SharedRng,
) -> Result<PreparedData> {
    let val_kwargs = ModelSpec::kwargs_value(&spec.get_val_mask_func_kwargs);
    let val_mask = match &spec.get_val_mask_func {
        Some(name) => Some(ValMask {
            func: registry.val_mask(name)?.build,
            kwargs: &val_kwargs,
        }),
        None => None,
    };
    prepare(interactions, spec, preparator, val_mask, data_rng)
}

/// Spec slot → (component name, crate) for every component a spec uses (its
/// [`ModelSpec::slots`], plus the trainer that runs it).
pub fn provenance(
    spec: &ModelSpec,
    registry: &Registry,
) -> Result<BTreeMap<String, (String, String)>> {
    let mut slots: Vec<(String, ComponentKind, String)> = spec
        .slots()
        .into_iter()
        .map(|s| (s.key, s.kind, s.name))
        .collect();
    if spec.get_trainer_func.is_none() {
        slots.push((
            ComponentKind::Trainer.spec_slot().into(),
            ComponentKind::Trainer,
            spec.trainer_name(registry)?,
        ));
    }
    let mut out = BTreeMap::new();
    for (slot, kind, name) in slots {
        let info = registry.lookup(kind, &name)?.info();
        out.insert(slot, (info.name.to_string(), info.crate_name.to_string()));
    }
    Ok(out)
}

impl Model {
    /// Trains `spec` on `data` (the README's `recblocks fit`).
    pub fn fit(
        mut spec: ModelSpec,
        data: TrainData<'_>,
        registry: &Registry,
        opts: &FitOptions,
    ) -> Result<Model> {
        if let Some(seed) = opts.seed {
            spec.seed = Some(seed);
        }
        if let Some(epochs) = opts.epochs {
            spec.epochs = epochs;
        }
        let Pipeline {
            preparator,
            mut settings,
        } = pipeline(&spec, registry)?;
        if settings.seed != spec.seed_or_default() {
            spec.seed = Some(settings.seed);
        }
        if let Some(epochs) = opts.epochs {
            settings.epochs = epochs;
        }
        if settings.epochs == 0 {
            return Err(HostError::Other(
                "epochs is 0: fit would save an untrained model; set `epochs` (or \
                 get_trainer_func_kwargs.max_epochs, or --epochs) to at least 1"
                    .into(),
            ));
        }
        let seed = spec.seed_or_default();
        let data_rng = SharedRng::new(seed ^ DATA_STREAM_OFFSET);
        let prepared = prepare_data(
            &spec,
            registry,
            preparator.as_ref(),
            data.interactions,
            &data_rng,
        )?;
        let mut schema = recblocks_core::DatasetSchema {
            n_items: prepared.item_ids.len(),
            item_extra_tokens: prepared.item_ids[..prepared.n_extra_tokens].to_vec(),
            cat_features: None,
        };
        if let Some(features) = data.item_features {
            let cat = features.to_cat_feature_schema(&prepared.item_ids, prepared.n_extra_tokens);
            if cat.n_values() > 0 {
                schema.cat_features = Some(cat);
            }
        }
        // The estimate is of host memory: a model trained on a GPU is bounded by the GPU's.
        if opts.device == crate::device::DeviceSpec::Cpu {
            crate::memory::check(&spec, schema.n_items, true)?;
        }
        let device = opts.device.open()?;
        let net = assembly::assemble(&spec, &schema, registry, &device)?;
        let adam = Adam::new(trainable_vars(&net), AdamConfig::rectools(spec.lr))?;
        let training = TrainingState {
            epochs_done: 0,
            adam_step: 0,
            model_rng: RngState::capture(&net.rng),
            data_rng: RngState::capture(&data_rng),
            early_stopping: None,
            stopped_early: false,
            captured_steps: 0,
        };
        let mut model = Model {
            provenance: provenance(&spec, registry)?,
            item_ids: prepared.item_ids.clone(),
            n_extra_tokens: prepared.n_extra_tokens,
            net,
            train_log: Vec::new(),
            settings,
            training,
            preparator,
            adam: Some(adam),
            best_weights: None,
        };
        model.train(&prepared, registry, &data_rng, opts)?;
        Ok(model)
    }

    /// Continues training a saved model on the same data until `opts.epochs` (or the spec's
    /// epochs) are done in total; gives the same weights as an uninterrupted run.
    pub fn resume(
        &mut self,
        data: TrainData<'_>,
        registry: &Registry,
        opts: &FitOptions,
    ) -> Result<()> {
        if self.adam.is_none() {
            return Err(HostError::Other(
                "this model directory has no optimizer state, so it cannot be resumed".into(),
            ));
        }
        if let Some(epochs) = opts.epochs {
            self.net.spec.epochs = epochs;
            self.settings.epochs = epochs;
        }
        let spec = self.net.spec.clone();
        let data_rng = SharedRng::new(spec.seed_or_default() ^ DATA_STREAM_OFFSET);
        let prepared = prepare_data(
            &spec,
            registry,
            self.preparator.as_ref(),
            data.interactions,
            &data_rng,
        )?;
        if prepared.item_ids != self.item_ids {
            return Err(HostError::TrainingData(
                "--resume needs the data the model was trained on: its item id map differs".into(),
            ));
        }
        self.training
            .data_rng
            .restore(&data_rng)
            .map_err(HostError::Other)?;
        self.training
            .model_rng
            .restore(&self.net.rng)
            .map_err(HostError::Other)?;
        self.train(&prepared, registry, &data_rng, opts)
    }

    fn train(
        &mut self,
        prepared: &PreparedData,
        registry: &Registry,
        data_rng: &SharedRng,
        opts: &FitOptions,
    ) -> Result<()> {
        if prepared
            .sessions
            .iter()
            .all(|s| s.weights.iter().all(|&w| w == 0.0))
        {
            return Err(HostError::TrainingData(format!(
                "every training interaction has weight 0 ({} sessions), so there is nothing to \
                 train on: each target's loss is multiplied by its interaction's weight; give \
                 some interactions a positive weight, or leave out the weight column (every \
                 weight is then 1)",
                prepared.sessions.len()
            )));
        }
        let spec = self.net.spec.clone();
        let objective: Box<dyn Objective> =
            assembly::build_objective(&spec, &self.net.schema, registry)?;
        let sampler: Option<Box<dyn NegativeSampler>> = if objective.requires_negatives() {
            Some(assembly::build_negative_sampler(&spec, registry)?)
        } else {
            None
        };
        let Some(adam) = self.adam.as_mut() else {
            return Err(HostError::Other("no optimizer state".into()));
        };
        let mut run = TrainRun {
            model: &self.net,
            data: prepared,
            preparator: self.preparator.as_ref(),
            objective: objective.as_ref(),
            sampler: sampler.as_deref(),
            settings: &self.settings,
            adam,
            data_rng,
            log: &mut self.train_log,
            state: &mut self.training,
            best_weights: &mut self.best_weights,
            observer: opts.active_observer().unwrap_or(&NoopObserver),
            cuda_graph: opts.cuda_graph,
        };
        let outcome = run.run();
        // The fused blocks' buffers, kept for the next step, are not needed once training ends.
        recblocks_core::nn::workspace::release();
        self.training.model_rng = RngState::capture(&self.net.rng);
        self.training.data_rng = RngState::capture(data_rng);
        outcome
    }

    /// Total number of trainable parameters.
    pub fn n_params(&self) -> usize {
        self.net.n_params()
    }

    /// External id → internal id of every real item.
    pub fn item_index(&self) -> std::collections::HashMap<&str, u32> {
        self.item_ids
            .iter()
            .enumerate()
            .skip(self.n_extra_tokens)
            .map(|(i, id)| (id.as_str(), i as u32))
            .collect()
    }
}

/// The model's variables by name.
pub fn trainable_vars(net: &AssembledModel) -> BTreeMap<String, candle_core::Var> {
    let data = net.varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    data.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}
