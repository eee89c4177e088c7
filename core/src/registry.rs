//! The string-keyed component registry.
//!
//! Each kind has one registration struct: const data (canonical name, aliases, summary, crate,
//! default kwargs) plus a plain `fn` pointer, collected with `inventory`. [`Registry`] is built once
//! from those lists (and later extended with the entries of run-time plugins); it rejects
//! duplicate names when it is built, not at lookup, and resolves a name given as RecTools' class
//! name, an alias (RecTools' dotted path), or any dotted path ending in a registered class name
//! (`__main__.AlbertLayers`, as RecTools exports a notebook class).

use std::{
    collections::{BTreeMap, HashMap},
    sync::OnceLock,
};

use serde_json::Value;

use crate::{
    components::{
        backbone::BuildBackbone,
        data_preparator::BuildDataPreparator,
        item_net::{BuildItemNetBlock, BuildItemNetConstructor},
        model_preset::BuildModelPreset,
        negative_sampler::BuildNegativeSampler,
        objective::BuildObjective,
        pos_encoding::BuildPositionalEncoding,
        similarity::BuildSimilarity,
        trainer::BuildTrainer,
        transformer_layers::BuildTransformerLayers,
        val_mask::BuildValMask,
    },
    error::CoreError,
    kind::ComponentKind,
    Result,
};

/// What every registration says about its component.
#[derive(Debug)]
pub struct ComponentInfo {
    /// Canonical name (RecTools' class name for the standard components).
    pub name: &'static str,
    /// Other accepted names (RecTools' dotted paths).
    pub aliases: &'static [&'static str],
    /// One line saying what the component does.
    pub summary: &'static str,
    /// The crate that registers it (`env!("CARGO_PKG_NAME")`).
    pub crate_name: &'static str,
    /// Its kwargs with their defaults, as JSON (`{}` when it takes none).
    pub default_kwargs: fn() -> Value,
}

macro_rules! registrations {
    ($($(#[$doc:meta])* $reg:ident => $variant:ident, $kind:ident, $build:ty, $getter:ident;)*) => {
        $(
            $(#[$doc])*
            pub struct $reg {
                /// Name, aliases, summary, crate and default kwargs.
                pub info: ComponentInfo,
                /// Builds the component.
                pub build: $build,
            }
            inventory::collect!($reg);
        )*

        /// A registration of any kind, as stored in the [`Registry`].
        #[derive(Clone, Copy)]
        pub enum Registered {
            $(
                #[allow(missing_docs)]
                $variant(&'static $reg),
            )*
        }

        impl Registered {
            /// The registration's kind.
            pub fn kind(&self) -> ComponentKind {
                match self { $(Registered::$variant(_) => ComponentKind::$kind,)* }
            }
            /// The registration's info.
            pub fn info(&self) -> &'static ComponentInfo {
                match self { $(Registered::$variant(r) => &r.info,)* }
            }
            /// Whether both are the very same registration entry (same static, same library).
            pub fn same_entry(&self, other: &Registered) -> bool {
                std::ptr::eq(self.info(), other.info())
            }
        }

        /// Every registration that `inventory` collected in this binary or library image (for
        /// the plugin loader and `export_plugin!`; use [`Registry::from_inventory`]).
        #[doc(hidden)]
        pub fn inventory_registrations() -> Vec<Registered> {
            let mut all = Vec::new();
            $( all.extend(inventory::iter::<$reg>.into_iter().map(Registered::$variant)); )*
            all
        }

        impl Registry {
            $(
                /// Looks up a registration of this kind by name, alias or dotted path.
                pub fn $getter(&self, name: &str) -> Result<&'static $reg> {
                    match self.lookup(ComponentKind::$kind, name)? {
                        Registered::$variant(r) => Ok(r),
                        _ => Err(CoreError::Other(format!(
                            "registry holds a {} entry `{name}` of the wrong kind", ComponentKind::$kind
                        ))),
                    }
                }
            )*
        }
    };
}

registrations! {
    /// Registration of a model preset (`cls`); `build` returns the class's full default config.
    ModelPresetRegistration => ModelPreset, ModelPreset, BuildModelPreset, model_preset;
    /// Registration of an item net block (`item_net_block_types`).
    ItemNetBlockRegistration => ItemNetBlock, ItemNetBlock, BuildItemNetBlock, item_net_block;
    /// Registration of an item net constructor (`item_net_constructor_type`).
    ItemNetConstructorRegistration => ItemNetConstructor, ItemNetConstructor, BuildItemNetConstructor, item_net_constructor;
    /// Registration of a positional encoding (`pos_encoding_type`).
    PositionalEncodingRegistration => PositionalEncoding, PositionalEncoding, BuildPositionalEncoding, positional_encoding;
    /// Registration of a transformer layer stack (`transformer_layers_type`).
    TransformerLayersRegistration => TransformerLayers, TransformerLayers, BuildTransformerLayers, transformer_layers;
    /// Registration of a similarity module (`similarity_module_type`).
    SimilarityRegistration => Similarity, Similarity, BuildSimilarity, similarity;
    /// Registration of a negative sampler (`negative_sampler_type`).
    NegativeSamplerRegistration => NegativeSampler, NegativeSampler, BuildNegativeSampler, negative_sampler;
    /// Registration of a data preparator (`data_preparator_type`).
    DataPreparatorRegistration => DataPreparator, DataPreparator, BuildDataPreparator, data_preparator;
    /// Registration of a backbone (`backbone_type`).
    BackboneRegistration => Backbone, Backbone, BuildBackbone, backbone;
    /// Registration of a training objective (`lightning_module_type`).
    ObjectiveRegistration => Objective, Objective, BuildObjective, objective;
    /// Registration of a validation mask function (`get_val_mask_func`).
    ValMaskRegistration => ValMask, ValMask, BuildValMask, val_mask;
    /// Registration of a trainer settings factory (`get_trainer_func`).
    TrainerRegistration => Trainer, Trainer, BuildTrainer, trainer;
}

static STATIC_REGISTRATIONS: OnceLock<Vec<Registered>> = OnceLock::new();

/// The registrations linked into the program itself, snapshotted on first call. Host and run-time
/// plugins share one core, so a loaded plugin's `inventory` entries join the same list; the plugin
/// loader takes this snapshot before it loads anything, which keeps plugin entries out of it.
#[doc(hidden)]
pub fn static_registrations() -> &'static [Registered] {
    STATIC_REGISTRATIONS.get_or_init(inventory_registrations)
}

/// All registered components, by kind and name.
#[derive(Default, Clone)]
pub struct Registry {
    by_kind: BTreeMap<ComponentKind, Vec<Registered>>,
    names: HashMap<(ComponentKind, String), Registered>,
}

impl Registry {
    /// An empty registry.
    pub fn empty() -> Self {
        Registry::default()
    }

    /// A registry of the statically linked registrations ([`static_registrations`]). Fails on
    /// duplicates.
    pub fn from_inventory() -> Result<Self> {
        Registry::from_registrations(static_registrations().iter().copied())
    }

    /// A registry of the given registrations. Fails on duplicates.
    pub fn from_registrations(regs: impl IntoIterator<Item = Registered>) -> Result<Self> {
        let mut r = Registry::empty();
        for reg in regs {
            r.add(reg)?;
        }
        Ok(r)
    }

    /// Adds one registration; its name and aliases must be new for its kind.
    pub fn add(&mut self, reg: Registered) -> Result<()> {
        let kind = reg.kind();
        let info = reg.info();
        for name in std::iter::once(&info.name).chain(info.aliases.iter()) {
            if let Some(existing) = self.names.get(&(kind, name.to_string())) {
                return Err(CoreError::DuplicateRegistration {
                    kind,
                    name: name.to_string(),
                    first_crate: existing.info().crate_name.to_string(),
                    second_crate: info.crate_name.to_string(),
                });
            }
        }
        for name in std::iter::once(&info.name).chain(info.aliases.iter()) {
            self.names.insert((kind, name.to_string()), reg);
        }
        let list = self.by_kind.entry(kind).or_default();
        list.push(reg);
        list.sort_by_key(|r| r.info().name);
        Ok(())
    }

    /// Checks that none of `regs` clashes with this registry (or with each other), then adds them
    /// all; on error nothing is added.
    pub fn add_all(&mut self, regs: &[Registered]) -> Result<()> {
        let mut trial = self.clone();
        for reg in regs {
            trial.add(*reg)?;
        }
        *self = trial;
        Ok(())
    }

    /// Looks up a registration by canonical name, alias, or a dotted path whose last segment is a
    /// canonical name.
    pub fn lookup(&self, kind: ComponentKind, name: &str) -> Result<Registered> {
        if let Some(r) = self.names.get(&(kind, name.to_string())) {
            return Ok(*r);
        }
        if let Some((_, last)) = name.rsplit_once('.') {
            if let Some(r) = self.names.get(&(kind, last.to_string())) {
                if r.info().name == last {
                    return Ok(*r);
                }
            }
        }
        let known = self.names_of(kind);
        Err(CoreError::UnknownComponent {
            kind,
            name: name.to_string(),
            suggestion: closest(name, &known),
            known,
        })
    }

    /// The canonical name a name resolves to.
    pub fn canonical_name(&self, kind: ComponentKind, name: &str) -> Result<&'static str> {
        Ok(self.lookup(kind, name)?.info().name)
    }

    /// The canonical names registered for `kind`, sorted.
    pub fn names_of(&self, kind: ComponentKind) -> Vec<String> {
        self.by_kind
            .get(&kind)
            .map(|v| v.iter().map(|r| r.info().name.to_string()).collect())
            .unwrap_or_default()
    }

    /// Every registration, by kind (in [`ComponentKind::ALL`] order) then name.
    pub fn all(&self) -> Vec<Registered> {
        self.by_kind.values().flatten().copied().collect()
    }

    /// The registrations of one kind, sorted by name.
    pub fn of_kind(&self, kind: ComponentKind) -> Vec<Registered> {
        self.by_kind.get(&kind).cloned().unwrap_or_default()
    }
}

/// The known name closest to `name` (case-insensitive edit distance), if it is close enough to be
/// a plausible typo.
fn closest(name: &str, known: &[String]) -> Option<String> {
    let short = name.rsplit('.').next().unwrap_or(name).to_lowercase();
    known
        .iter()
        .map(|k| (strsim::levenshtein(&short, &k.to_lowercase()), k))
        .filter(|(d, k)| *d <= (k.len() / 3).max(3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_finds_typos_and_ignores_unrelated_names() {
        let known = vec![
            "SASRecTransformerLayers".to_string(),
            "LiGRLayers".to_string(),
        ];
        assert_eq!(
            closest("SasRecTransformerLayer", &known).as_deref(),
            Some("SASRecTransformerLayers")
        );
        assert_eq!(closest("LigrLayers", &known).as_deref(), Some("LiGRLayers"));
        assert_eq!(closest("Completely", &known), None);
    }
}
