//! The trampolines that stand in for a plugin's build fns.
//!
//! A registration's `build` is a plain `fn` pointer and cannot carry which plugin component it
//! stands for, so each kind has a table of [`SLOTS`] slots and one trampoline per slot (an
//! instance of a generic fn over the slot number). Guarding a registration takes the next free
//! slot of its kind, records there the component's origin and its own registration, and returns a
//! registration whose `build` is that slot's trampoline.

use std::sync::{Mutex, MutexGuard};

use recblocks_core::{
    components::{
        backbone::{BackboneParts, BuildBackbone},
        data_preparator::BuildDataPreparator,
        item_net::{BuildItemNetBlock, BuildItemNetConstructor},
        model_preset::{BuildModelPreset, ModelPreset},
        negative_sampler::BuildNegativeSampler,
        objective::BuildObjective,
        pos_encoding::BuildPositionalEncoding,
        similarity::BuildSimilarity,
        trainer::{BuildTrainer, TrainerSettings},
        transformer_layers::BuildTransformerLayers,
        val_mask::{BuildValMask, InteractionsView},
        Backbone, DataPreparator, ItemNetBlock, ItemNetConstructor, NegativeSampler, Objective,
        PositionalEncoding, Similarity, TransformerLayers,
    },
    registry::{
        BackboneRegistration, ComponentInfo, DataPreparatorRegistration, ItemNetBlockRegistration,
        ItemNetConstructorRegistration, ModelPresetRegistration, NegativeSamplerRegistration,
        ObjectiveRegistration, PositionalEncodingRegistration, Registered, SimilarityRegistration,
        TrainerRegistration, TransformerLayersRegistration, ValMaskRegistration,
    },
    serde_json::Value,
    BuildContext, ComponentKind, CoreError, DatasetSchema, ModelSpec, Result, SharedRng,
};

use super::{objects::Guarded, Origin};

/// How many plugin components of one kind a process can load.
pub const SLOTS: usize = 32;

/// The slots of one kind: the origin and the plugin's own registration of each guarded component.
struct Table<R: 'static>(Mutex<Vec<(Origin, &'static R)>>);

impl<R: 'static> Table<R> {
    const fn new() -> Self {
        Table(Mutex::new(Vec::new()))
    }

    fn lock(&self) -> MutexGuard<'_, Vec<(Origin, &'static R)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the next free slot; `None` when all are taken.
    fn push(&self, origin: Origin, reg: &'static R) -> Option<usize> {
        let mut slots = self.lock();
        if slots.len() >= SLOTS {
            return None;
        }
        slots.push((origin, reg));
        Some(slots.len() - 1)
    }

    fn get(&self, slot: usize) -> Result<(Origin, &'static R)> {
        self.lock().get(slot).cloned().ok_or_else(|| {
            CoreError::Other(format!(
                "plugin guard: slot {slot} has no component (a host bug)"
            ))
        })
    }
}

/// `[f::<0>, f::<1>, ..., f::<SLOTS - 1>]`.
macro_rules! slots {
    ($f:ident) => {
        [
            $f::<0>, $f::<1>, $f::<2>, $f::<3>, $f::<4>, $f::<5>, $f::<6>, $f::<7>, $f::<8>,
            $f::<9>, $f::<10>, $f::<11>, $f::<12>, $f::<13>, $f::<14>, $f::<15>, $f::<16>,
            $f::<17>, $f::<18>, $f::<19>, $f::<20>, $f::<21>, $f::<22>, $f::<23>, $f::<24>,
            $f::<25>, $f::<26>, $f::<27>, $f::<28>, $f::<29>, $f::<30>, $f::<31>,
        ]
    };
}

fn copy_info(info: &ComponentInfo) -> ComponentInfo {
    ComponentInfo {
        name: info.name,
        aliases: info.aliases,
        summary: info.summary,
        crate_name: info.crate_name,
        default_kwargs: info.default_kwargs,
    }
}

macro_rules! kinds {
    ($($variant:ident: $reg:ident, $build:ty, $table:ident, $fns:ident, $trampoline:ident;)*) => {
        $(
            static $table: Table<$reg> = Table::new();
            const $fns: [$build; SLOTS] = slots!($trampoline);
        )*

        /// The guarded stand-in of `reg`; `Err(kind)` when the kind's slots are all taken.
        pub(super) fn guard(origin: Origin, reg: Registered) -> Result<Registered, ComponentKind> {
            let kind = reg.kind();
            Ok(match reg {
                $(
                    Registered::$variant(r) => {
                        let slot = $table.push(origin, r).ok_or(kind)?;
                        let guarded: &'static $reg = Box::leak(Box::new($reg {
                            info: copy_info(&r.info),
                            build: $fns[slot],
                        }));
                        Registered::$variant(guarded)
                    }
                )*
            })
        }
    };
}

kinds! {
    ModelPreset: ModelPresetRegistration, BuildModelPreset, PRESETS, PRESET_FNS, preset;
    ItemNetBlock: ItemNetBlockRegistration, BuildItemNetBlock, BLOCKS, BLOCK_FNS, block;
    ItemNetConstructor: ItemNetConstructorRegistration, BuildItemNetConstructor, CONSTRUCTORS, CONSTRUCTOR_FNS, constructor;
    PositionalEncoding: PositionalEncodingRegistration, BuildPositionalEncoding, POSITIONS, POSITION_FNS, positions;
    TransformerLayers: TransformerLayersRegistration, BuildTransformerLayers, LAYERS, LAYER_FNS, layers;
    Similarity: SimilarityRegistration, BuildSimilarity, SIMILARITIES, SIMILARITY_FNS, similarity;
    NegativeSampler: NegativeSamplerRegistration, BuildNegativeSampler, SAMPLERS, SAMPLER_FNS, sampler;
    DataPreparator: DataPreparatorRegistration, BuildDataPreparator, PREPARATORS, PREPARATOR_FNS, preparator;
    Backbone: BackboneRegistration, BuildBackbone, BACKBONES, BACKBONE_FNS, backbone;
    Objective: ObjectiveRegistration, BuildObjective, OBJECTIVES, OBJECTIVE_FNS, objective;
    ValMask: ValMaskRegistration, BuildValMask, VAL_MASKS, VAL_MASK_FNS, val_mask;
    Trainer: TrainerRegistration, BuildTrainer, TRAINERS, TRAINER_FNS, trainer;
}

fn preset<const N: usize>() -> ModelPreset {
    // A preset's build cannot return an error: a panic in it is raised again naming the
    // component (`Origin::call_plain`), and so is a missing slot, which cannot happen (the slot
    // is filled before its trampoline is handed out).
    match PRESETS.get(N) {
        Ok((o, r)) => o.call_plain("build", r.build),
        Err(e) => std::panic::resume_unwind(Box::new(super::PluginPanic(e.to_string()))),
    }
}

fn block<const N: usize>(
    ctx: &BuildContext<'_>,
    kwargs: &Value,
) -> Result<Option<Box<dyn ItemNetBlock>>> {
    let (o, r) = BLOCKS.get(N)?;
    let built = o.call("build", || (r.build)(ctx, kwargs))?;
    Ok(built.map(|inner| Box::new(Guarded::new(o, inner)) as Box<dyn ItemNetBlock>))
}

fn constructor<const N: usize>(
    ctx: &BuildContext<'_>,
    block_types: &[String],
    kwargs: &Value,
) -> Result<Box<dyn ItemNetConstructor>> {
    let (o, r) = CONSTRUCTORS.get(N)?;
    let inner = o.call("build", || (r.build)(ctx, block_types, kwargs))?;
    Ok(Box::new(Guarded::new(o, inner)))
}

fn positions<const N: usize>(
    ctx: &BuildContext<'_>,
    kwargs: &Value,
) -> Result<Box<dyn PositionalEncoding>> {
    let (o, r) = POSITIONS.get(N)?;
    let inner = o.call("build", || (r.build)(ctx, kwargs))?;
    Ok(Box::new(Guarded::new(o, inner)))
}

fn layers<const N: usize>(
    ctx: &BuildContext<'_>,
    kwargs: &Value,
) -> Result<Box<dyn TransformerLayers>> {
    let (o, r) = LAYERS.get(N)?;
    let inner = o.call("build", || (r.build)(ctx, kwargs))?;
    Ok(Box::new(Guarded::new(o, inner)))
}

fn similarity<const N: usize>(
    ctx: &BuildContext<'_>,
    kwargs: &Value,
) -> Result<Box<dyn Similarity>> {
    let (o, r) = SIMILARITIES.get(N)?;
    let inner = o.call("build", || (r.build)(ctx, kwargs))?;
    Ok(Box::new(Guarded::new(o, inner)))
}

fn sampler<const N: usize>(spec: &ModelSpec, kwargs: &Value) -> Result<Box<dyn NegativeSampler>> {
    let (o, r) = SAMPLERS.get(N)?;
    let inner = o.call("build", || (r.build)(spec, kwargs))?;
    Ok(Box::new(Guarded::new(o, inner)))
}

fn preparator<const N: usize>(spec: &ModelSpec, kwargs: &Value) -> Result<Box<dyn DataPreparator>> {
    let (o, r) = PREPARATORS.get(N)?;
    let inner = o.call("build", || (r.build)(spec, kwargs))?;
    Ok(Box::new(Guarded::new(o, inner)))
}

fn backbone<const N: usize>(
    ctx: &BuildContext<'_>,
    parts: BackboneParts,
    kwargs: &Value,
) -> Result<Box<dyn Backbone>> {
    let (o, r) = BACKBONES.get(N)?;
    let inner = o.call("build", || (r.build)(ctx, parts, kwargs))?;
    Ok(Box::new(Guarded::new(o, inner)))
}

fn objective<const N: usize>(
    spec: &ModelSpec,
    schema: &DatasetSchema,
    kwargs: &Value,
) -> Result<Box<dyn Objective>> {
    let (o, r) = OBJECTIVES.get(N)?;
    let inner = o.call("build", || (r.build)(spec, schema, kwargs))?;
    Ok(Box::new(Guarded::new(o, inner)))
}

fn val_mask<const N: usize>(
    view: &InteractionsView<'_>,
    kwargs: &Value,
    rng: &SharedRng,
) -> Result<Vec<bool>> {
    let (o, r) = VAL_MASKS.get(N)?;
    o.call("build", || (r.build)(view, kwargs, rng))
}

fn trainer<const N: usize>(spec: &ModelSpec, kwargs: &Value) -> Result<TrainerSettings> {
    let (o, r) = TRAINERS.get(N)?;
    o.call("build", || (r.build)(spec, kwargs))
}
