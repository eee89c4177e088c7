//! The JSON Schema (draft 2020-12) of a model spec, built from a [`Registry`], so that it names
//! the components of loaded plugins too (`recblocks schema`).
//!
//! It mirrors what spec resolution (`recblocks_core::resolve`) accepts, as far as a schema can:
//!
//! - the top-level keys are those of the model presets' full default configs (RecTools'
//!   `SASRecModelConfig`, `BERT4RecModelConfig`) plus the extension keys
//!   ([`recblocks_core::spec::EXTENSION_KEYS`]); any other key is rejected
//!   (`additionalProperties: false`), and a key that only some classes accept (`mask_prob`) is
//!   rejected for the others. Types and defaults come from the presets' default values;
//! - each component slot (`*_type`, `item_net_block_types`, `get_*_func`, `cls`) takes a
//!   registered name of its kind: a canonical name, an alias, or a dotted path ending in a
//!   canonical name (`__main__.AlbertLayers`);
//! - each `*_kwargs` slot is checked against the kwargs of the component its type slot names (or,
//!   when the type slot is absent, the class's default component): one property per default
//!   kwarg, typed by its default value, and no other (a misspelt kwarg fails).
//!
//! Per-component kwargs schemas live in `$defs` under [`kwargs_def_name`].

use serde_json::{json, Map, Value};

use recblocks_core::{
    components::ModelPreset, registry::Registered, spec::EXTENSION_KEYS, ComponentKind, Registry,
};

/// The JSON Schema dialect of [`spec_schema`].
pub const DRAFT_2020_12: &str = "https://json-schema.org/draft/2020-12/schema";

/// The `pattern` prefix of a dotted path (one or more Python identifiers, each followed by `.`).
const DOTTED_PREFIX: &str = r"^([A-Za-z_][A-Za-z0-9_]*\.)+";

/// The spec key holding the kwargs of a component kind (`transformer_layers_type` →
/// `transformer_layers_kwargs`, `get_trainer_func` → `get_trainer_func_kwargs`); `None` for the
/// kinds without one (`cls`, `item_net_block_types`).
pub fn kwargs_slot(kind: ComponentKind) -> Option<String> {
    let slot = kind.spec_slot();
    if let Some(stem) = slot.strip_suffix("_type") {
        Some(format!("{stem}_kwargs"))
    } else if slot.ends_with("_func") {
        Some(format!("{slot}_kwargs"))
    } else {
        None
    }
}

/// The `$defs` key of a component's kwargs schema: `<kind>.<name>`
/// (`transformer_layers.AlbertLayers`), any character other than ASCII letters, digits, `_`, `-`
/// and `.` replaced by `_`.
pub fn kwargs_def_name(kind: ComponentKind, name: &str) -> String {
    format!("{}.{name}", kind.as_str())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// One model preset: its registration and full default config.
struct Preset {
    reg: Registered,
    preset: ModelPreset,
}

/// Builds the JSON Schema (draft 2020-12) of a spec for every component in `registry`.
pub fn spec_schema(registry: &Registry) -> Value {
    let presets: Vec<Preset> = registry
        .of_kind(ComponentKind::ModelPreset)
        .into_iter()
        .filter_map(|reg| match reg {
            Registered::ModelPreset(p) => Some(Preset {
                reg,
                preset: (p.build)(),
            }),
            _ => None,
        })
        .collect();
    let mut keys: Vec<String> = Vec::new();
    for p in &presets {
        for key in p.preset.defaults.keys() {
            if !keys.contains(key) {
                keys.push(key.clone());
            }
        }
    }
    let mut properties = Map::new();
    for key in &keys {
        properties.insert(key.clone(), key_schema(registry, &presets, key));
    }
    for key in EXTENSION_KEYS {
        properties
            .entry(key.to_string())
            .or_insert_with(|| extension_schema(key));
    }
    let mut all_of: Vec<Value> = presets
        .iter()
        .map(|p| class_branch(p, &presets, &keys))
        .collect();
    let mut defs = Map::new();
    for kind in ComponentKind::ALL {
        let Some(slot) = kwargs_slot(kind).filter(|s| keys.contains(s)) else {
            continue;
        };
        for reg in registry.of_kind(kind) {
            let def = kwargs_def_name(kind, reg.info().name);
            defs.insert(def.clone(), kwargs_schema(reg));
            all_of.push(json!({
                "if": {
                    "properties": {kind.spec_slot(): names_schema(&[reg])},
                    "required": [kind.spec_slot()],
                },
                "then": {"properties": {slot.as_str(): {"$ref": format!("#/$defs/{def}")}}},
            }));
        }
        for p in &presets {
            all_of.extend(default_component_branches(registry, p, kind, &slot));
        }
    }
    json!({
        "$schema": DRAFT_2020_12,
        "title": "recblocks model spec",
        "description": "A RecTools get_config()-style model spec, as `recblocks fit` reads it. \
                        Generated by `recblocks schema` from the registered components.",
        "type": "object",
        "properties": properties,
        "required": ["cls"],
        "additionalProperties": false,
        "allOf": all_of,
        "$defs": defs,
    })
}

/// The schema of one top-level key.
fn key_schema(registry: &Registry, presets: &[Preset], key: &str) -> Value {
    let defaults: Vec<&Value> = presets
        .iter()
        .filter_map(|p| p.preset.defaults.get(key))
        .collect();
    let any_null = defaults.iter().any(|v| v.is_null());
    let kind = ComponentKind::ALL
        .into_iter()
        .find(|k| k.spec_slot() == key);
    let mut schema = match kind {
        Some(kind) => {
            let names = names_schema(&registry.of_kind(kind));
            let names = if kind == ComponentKind::ItemNetBlock {
                json!({"type": "array", "items": names})
            } else {
                names
            };
            if any_null {
                json!({"anyOf": [{"type": "null"}, names]})
            } else {
                names
            }
        }
        None if ComponentKind::ALL
            .into_iter()
            .any(|k| kwargs_slot(k).as_deref() == Some(key)) =>
        {
            json!({"type": ["object", "null"]})
        }
        None => typed_by(&defaults),
    };
    let same_default = defaults
        .first()
        .filter(|first| defaults.len() == presets.len() && defaults.iter().all(|v| v == *first));
    if let (Some(default), Value::Object(m)) = (same_default, &mut schema) {
        if key != "cls" {
            m.insert("default".into(), (*default).clone());
        }
    }
    schema
}

/// The schema of a key recblocks accepts beyond RecTools' config.
fn extension_schema(key: &str) -> Value {
    match key {
        "seed" => json!({
            "type": "integer",
            "minimum": 0,
            "description": "recblocks extension: the seed of every random stream",
        }),
        "item_net_block_kwargs" => json!({
            "type": "object",
            "additionalProperties": {"type": ["object", "null"]},
            "description": "recblocks extension: kwargs of item net blocks, by block type (a name of item_net_block_types)",
        }),
        _ => json!({"description": "recblocks extension"}),
    }
}

/// Per class: the keys of other classes that this class rejects, and this class's defaults of
/// the keys whose defaults differ between classes.
fn class_branch(p: &Preset, presets: &[Preset], keys: &[String]) -> Value {
    let mut then = Map::new();
    for key in keys {
        match p.preset.defaults.get(key) {
            None => {
                then.insert(key.clone(), Value::Bool(false));
            }
            Some(v)
                if key != "cls"
                    && presets
                        .iter()
                        .any(|o| o.preset.defaults.get(key) != Some(v)) =>
            {
                then.insert(key.clone(), json!({"default": v}));
            }
            Some(_) => {}
        }
    }
    json!({
        "if": {"properties": {"cls": names_schema(&[p.reg])}, "required": ["cls"]},
        "then": {"properties": then},
    })
}

/// Branches checking `slot` (the kwargs of `kind`) against the component that class `p` uses
/// when the spec does not name one: the class's default for the type slot, and for the trainer
/// (also when `get_trainer_func` is null) the class's default trainer.
fn default_component_branches(
    registry: &Registry,
    p: &Preset,
    kind: ComponentKind,
    slot: &str,
) -> Vec<Value> {
    let type_slot = kind.spec_slot();
    let cls = names_schema(&[p.reg]);
    let def_of = |name: &str| {
        registry
            .lookup(kind, name)
            .ok()
            .map(|r| format!("#/$defs/{}", kwargs_def_name(kind, r.info().name)))
    };
    let default_trainer = (kind == ComponentKind::Trainer)
        .then(|| def_of(p.preset.default_trainer))
        .flatten();
    let absent = match p.preset.defaults.get(type_slot) {
        Some(Value::String(name)) => def_of(name),
        Some(Value::Null) | None => default_trainer.clone(),
        Some(_) => None,
    };
    let mut out = Vec::new();
    if let Some(def) = absent {
        out.push(json!({
            "if": {
                "properties": {"cls": cls},
                "required": ["cls"],
                "not": {"required": [type_slot]},
            },
            "then": {"properties": {slot: {"$ref": def}}},
        }));
    }
    if let Some(def) = default_trainer {
        out.push(json!({
            "if": {
                "properties": {"cls": cls, type_slot: {"type": "null"}},
                "required": ["cls", type_slot],
            },
            "then": {"properties": {slot: {"$ref": def}}},
        }));
    }
    out
}

/// A component's kwargs: one property per default kwarg, typed by its default value; no other.
fn kwargs_schema(reg: Registered) -> Value {
    let info = reg.info();
    let mut properties = Map::new();
    if let Value::Object(defaults) = (info.default_kwargs)() {
        for (key, default) in defaults {
            let mut schema = typed_by(&[&default]);
            if let Value::Object(m) = &mut schema {
                m.insert("default".into(), default);
            }
            properties.insert(key, schema);
        }
    }
    json!({
        "title": format!("{} kwargs", info.name),
        "description": info.summary,
        "type": ["object", "null"],
        "properties": properties,
        "additionalProperties": false,
    })
}

/// A type constraint from default values: the types of the non-null ones (`integer` and
/// `number` together are `number`), plus `null` if one is null; no constraint when all are null.
fn typed_by(defaults: &[&Value]) -> Value {
    let mut types: Vec<&str> = Vec::new();
    for v in defaults {
        let t = match v {
            Value::Null => continue,
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        if !types.contains(&t) {
            types.push(t);
        }
    }
    if types.contains(&"number") {
        types.retain(|t| *t != "integer");
    }
    if types.is_empty() {
        return json!({});
    }
    if defaults.iter().any(|v| v.is_null()) {
        types.push("null");
    }
    match types.as_slice() {
        [one] => json!({"type": one}),
        many => json!({"type": many}),
    }
}

/// The names a registry accepts for these components: canonical names and aliases, or a dotted
/// path ending in a canonical name. `false` (nothing) when there are none.
fn names_schema(regs: &[Registered]) -> Value {
    if regs.is_empty() {
        return Value::Bool(false);
    }
    let mut names: Vec<&str> = Vec::new();
    let mut canonical: Vec<String> = Vec::new();
    for reg in regs {
        let info = reg.info();
        names.push(info.name);
        names.extend(info.aliases.iter().copied());
        canonical.push(regex_escape(info.name));
    }
    json!({"anyOf": [
        {"enum": names},
        {"type": "string", "pattern": format!("{DOTTED_PREFIX}({})$", canonical.join("|"))},
    ]})
}

/// `name` with the characters special in a regular expression escaped.
fn regex_escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if r"\.+*?()|[]{}^$-/".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kwargs_slots_follow_the_type_slots() {
        let slot = |k| kwargs_slot(k);
        assert_eq!(
            slot(ComponentKind::TransformerLayers).as_deref(),
            Some("transformer_layers_kwargs")
        );
        assert_eq!(
            slot(ComponentKind::Trainer).as_deref(),
            Some("get_trainer_func_kwargs")
        );
        assert_eq!(
            slot(ComponentKind::ValMask).as_deref(),
            Some("get_val_mask_func_kwargs")
        );
        assert_eq!(slot(ComponentKind::ItemNetBlock), None);
        assert_eq!(slot(ComponentKind::ModelPreset), None);
    }

    #[test]
    fn types_come_from_defaults() {
        let (i, f, n, s) = (json!(2), json!(0.5), json!(null), json!("x"));
        assert_eq!(typed_by(&[&i]), json!({"type": "integer"}));
        assert_eq!(typed_by(&[&i, &f]), json!({"type": "number"}));
        assert_eq!(typed_by(&[&n, &s]), json!({"type": ["string", "null"]}));
        assert_eq!(typed_by(&[&n]), json!({}));
    }

    #[test]
    fn def_names_are_safe_json_pointer_segments() {
        assert_eq!(
            kwargs_def_name(ComponentKind::Similarity, "a/b~c d"),
            "similarity.a_b_c_d"
        );
    }
}
