//! Resolution: a [`SpecInput`] (what the user wrote) becomes a [`ModelSpec`] through the
//! registry. The class's model preset gives the full default config (keys outside it are
//! rejected, like pydantic's `extra="forbid"`, with the closest key suggested); the merged object
//! is decoded into the typed spec; every component slot ([`ModelSpec::slots`]) is mapped to its
//! canonical registered name; and model-wide settings are checked.

use serde_json::Value;

use crate::{
    error::CoreError,
    kind::ComponentKind,
    registry::Registry,
    spec::{closest_key, ModelSpec, SpecInput, EXTENSION_KEYS},
    Result,
};

impl SpecInput {
    /// Checks the keys against the defaults of the spec's `cls`, fills them in, decodes the
    /// types and resolves every component name.
    pub fn resolve(self, registry: &Registry) -> Result<ModelSpec> {
        let Some(cls) = self.cls() else {
            return Err(CoreError::Spec(format!(
                "key `cls` is missing: name the model class, one of {}",
                registry.names_of(ComponentKind::ModelPreset).join(", ")
            )));
        };
        check_conflicts(&self.keys)?;
        let preset = registry.model_preset(cls)?;
        let mut merged = (preset.build)().defaults;
        for (key, v) in self.keys {
            if !merged.contains_key(&key) && !EXTENSION_KEYS.contains(&key.as_str()) {
                let mut known: Vec<String> = merged.keys().cloned().collect();
                known.extend(EXTENSION_KEYS.iter().map(|s| s.to_string()));
                let hint = closest_key(&key, &known)
                    .map(|k| format!(" (did you mean `{k}`?)"))
                    .unwrap_or_default();
                return Err(CoreError::Spec(format!(
                    "unknown key `{}` for {}{hint}; accepted keys: {}",
                    cut(&key),
                    preset.info.name,
                    known.join(", ")
                )));
            }
            merged.insert(key, v);
        }
        merged.insert("cls".into(), Value::String(preset.info.name.to_string()));
        let mut spec: ModelSpec =
            serde_path_to_error::deserialize(Value::Object(merged)).map_err(|e| {
                CoreError::Spec(format!(
                    "key `{}`: {}",
                    e.path(),
                    cut(&e.inner().to_string())
                ))
            })?;
        spec.resolve_names(registry)?;
        Ok(spec)
    }
}

/// A text as quoted in a message: at most 200 characters, then its length (a 200 MB value in a
/// spec is not echoed whole).
fn cut(text: &str) -> String {
    match text.char_indices().nth(200) {
        Some((at, _)) => format!("{}… ({} characters)", &text[..at], text.chars().count()),
        None => text.to_string(),
    }
}

/// Settings given twice with different values: the model's `epochs` and `seed` against the
/// trainer kwargs' `max_epochs` and `seed` (which would silently win).
fn check_conflicts(keys: &serde_json::Map<String, Value>) -> Result<()> {
    let Some(Value::Object(trainer)) = keys.get("get_trainer_func_kwargs") else {
        return Ok(());
    };
    for (model_key, trainer_key) in [("epochs", "max_epochs"), ("seed", "seed")] {
        let (Some(a), Some(b)) = (keys.get(model_key), trainer.get(trainer_key)) else {
            continue;
        };
        if !a.is_null() && !b.is_null() && a != b {
            return Err(CoreError::Spec(format!(
                "`{model_key}` is {a} but `get_trainer_func_kwargs.{trainer_key}` is {b}: give \
                 one of them, or the same value in both"
            )));
        }
    }
    Ok(())
}

impl ModelSpec {
    /// Maps every component type name to its canonical registered name, failing on unknown
    /// names, then checks model-wide settings (for a spec read back from a model directory).
    pub fn resolve_names(&mut self, registry: &Registry) -> Result<()> {
        for (kind, _, name) in self.slot_names() {
            *name = registry.canonical_name(kind, name)?.to_string();
        }
        self.resolve_block_kwargs(registry)?;
        self.check()
    }

    /// Keys `item_net_block_kwargs` by canonical block names, each of which must be one of
    /// `item_net_block_types` (already canonical), and each value an object or null.
    fn resolve_block_kwargs(&mut self, registry: &Registry) -> Result<()> {
        let given = std::mem::take(&mut self.item_net_block_kwargs);
        for (name, kwargs) in given {
            let canonical = registry
                .canonical_name(ComponentKind::ItemNetBlock, &name)
                .map_err(|e| {
                    CoreError::Spec(format!("key `item_net_block_kwargs.{}`: {e}", cut(&name)))
                })?
                .to_string();
            if !self.item_net_block_types.contains(&canonical) {
                return Err(CoreError::Spec(format!(
                    "key `item_net_block_kwargs.{}`: `{canonical}` is not one of item_net_block_types [{}]",
                    cut(&name),
                    self.item_net_block_types.join(", ")
                )));
            }
            if !(kwargs.is_object() || kwargs.is_null()) {
                return Err(CoreError::Spec(format!(
                    "key `item_net_block_kwargs.{}`: expected an object of kwargs or null, found {}",
                    cut(&name),
                    cut(&kwargs.to_string())
                )));
            }
            if self
                .item_net_block_kwargs
                .insert(canonical.clone(), kwargs)
                .is_some()
            {
                return Err(CoreError::Spec(format!(
                    "key `item_net_block_kwargs`: kwargs for `{canonical}` are given twice (under two of its names)"
                )));
            }
        }
        Ok(())
    }

    /// The trainer that runs this spec: `get_trainer_func`, or when it is null the default
    /// trainer of the spec's model preset.
    pub fn trainer_name(&self, registry: &Registry) -> Result<String> {
        match &self.get_trainer_func {
            Some(name) => Ok(name.clone()),
            None => Ok((registry.model_preset(&self.cls)?.build)()
                .default_trainer
                .to_string()),
        }
    }
}
