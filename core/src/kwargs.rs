//! Decoding a component's kwargs (a JSON object, or `null` for none) into its typed struct.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{error::CoreError, kind::ComponentKind, Result};

/// Decodes `kwargs` into `T`. `null` means "no kwargs" and gives `T::default()`. `T` should use
/// `#[serde(default, deny_unknown_fields)]` so unknown fields are rejected with their name and the
/// list of expected fields.
pub fn decode_kwargs<T: DeserializeOwned + Default>(
    kind: ComponentKind,
    component: &str,
    kwargs: &Value,
) -> Result<T> {
    match kwargs {
        Value::Null => Ok(T::default()),
        Value::Object(_) => {
            serde_json::from_value(kwargs.clone()).map_err(|e| CoreError::BadKwargs {
                kind,
                component: component.to_string(),
                message: e.to_string(),
            })
        }
        other => Err(CoreError::BadKwargs {
            kind,
            component: component.to_string(),
            message: format!("expected a JSON object or null, found `{other}`"),
        }),
    }
}

/// The default kwargs of a component as a JSON value (for `recblocks components`).
pub fn default_kwargs_json<T: serde::Serialize + Default>() -> Value {
    serde_json::to_value(T::default()).unwrap_or(Value::Null)
}

/// Kwargs for components that take none: rejects any field.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoKwargs {}
