//! Python objects decoded by candle's pickle reader → JSON values.
//!
//! Handles what RecTools' Lightning `hyper_parameters` hold: dicts, lists, tuples, strings,
//! numbers, booleans, `None`, and 1-D numpy arrays (`item_external_ids`: object, integer or
//! unicode dtype). Anything else is an error naming the Python class and where it was found.

use candle_core::pickle::Object;
use serde_json::{Map, Number, Value};

/// Converts `obj` (found at `path`, for messages) to JSON.
pub fn to_json(obj: &Object, path: &str) -> Result<Value, String> {
    Ok(match obj {
        Object::None => Value::Null,
        Object::Bool(b) => Value::Bool(*b),
        Object::Int(i) => Value::from(*i),
        Object::Long(i) => Value::from(*i),
        Object::Float(f) => Number::from_f64(*f)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        Object::Unicode(s) => Value::String(s.clone()),
        Object::Tuple(items) | Object::List(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, o)| to_json(o, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        Object::Dict(entries) => {
            let mut map = Map::new();
            for (k, v) in entries {
                let key = match k {
                    Object::Unicode(s) => s.clone(),
                    Object::Int(i) => i.to_string(),
                    Object::Long(i) => i.to_string(),
                    other => {
                        return Err(format!(
                            "{path}: dict key {} is not a string",
                            describe(other)
                        ))
                    }
                };
                let value = to_json(v, &format!("{path}.{key}"))?;
                map.insert(key, value);
            }
            Value::Object(map)
        }
        Object::Build { callable, args } => match numpy_array(callable, args) {
            Some(r) => r.map_err(|m| format!("{path}: {m}"))?,
            None => {
                return Err(format!(
                    "{path}: unsupported Python object {}",
                    describe(obj)
                ))
            }
        },
        other => {
            return Err(format!(
                "{path}: unsupported Python object {}",
                describe(other)
            ))
        }
    })
}

/// A short description of a Python object: its class when it has one.
pub fn describe(obj: &Object) -> String {
    match obj {
        Object::Class {
            module_name,
            class_name,
        } => format!("`{module_name}.{class_name}`"),
        Object::Reduce { callable, .. } | Object::Build { callable, .. } => describe(callable),
        Object::PersistentLoad(_) => "a tensor".into(),
        Object::Dict(_) => "a dict".into(),
        Object::List(_) => "a list".into(),
        Object::Tuple(_) => "a tuple".into(),
        Object::Unicode(s) => format!("the string {s:?}"),
        other => format!("{other:?}"),
    }
}

fn class_of(obj: &Object) -> Option<(&str, &str)> {
    match obj {
        Object::Class {
            module_name,
            class_name,
        } => Some((module_name, class_name)),
        _ => None,
    }
}

/// `numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')` + `BUILD (version, shape, dtype,
/// fortran, data)`; `None` when `callable` is not that.
fn numpy_array(callable: &Object, state: &Object) -> Option<Result<Value, String>> {
    let Object::Reduce { callable: f, .. } = callable else {
        return None;
    };
    let (module, name) = class_of(f)?;
    if !module.starts_with("numpy") || name != "_reconstruct" {
        return None;
    }
    Some(decode_numpy_state(state))
}

fn decode_numpy_state(state: &Object) -> Result<Value, String> {
    let Object::Tuple(parts) = state else {
        return Err("numpy array state is not a tuple".into());
    };
    let [_, shape, dtype, _, data] = parts.as_slice() else {
        return Err(format!(
            "numpy array state has {} parts, expected 5",
            parts.len()
        ));
    };
    let shape = match shape {
        Object::Tuple(s) => s.clone(),
        _ => return Err("numpy array shape is not a tuple".into()),
    };
    if shape.len() != 1 {
        return Err(format!(
            "numpy array has {} dimensions, expected a 1-D array",
            shape.len()
        ));
    }
    let kind = numpy_dtype(dtype)?;
    match (kind.as_str(), data) {
        (k, Object::List(items)) if k.starts_with('O') => items
            .iter()
            .enumerate()
            .map(|(i, o)| to_json(o, &format!("[{i}]")))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        (k, raw) => {
            let bytes = latin1_bytes(raw)
                .ok_or_else(|| format!("numpy array of dtype {k} has data {}", describe(raw)))?;
            decode_raw(k, &bytes)
        }
    }
}

/// The dtype string (`O8`, `i8`, `U5`, ...) of a pickled `numpy.dtype`.
fn numpy_dtype(obj: &Object) -> Result<String, String> {
    let inner = match obj {
        Object::Build { callable, .. } => callable.as_ref(),
        other => other,
    };
    if let Object::Reduce { args, .. } = inner {
        if let Object::Tuple(a) = args.as_ref() {
            if let Some(Object::Unicode(s)) = a.first() {
                return Ok(s.clone());
            }
        }
    }
    Err(format!("unreadable numpy dtype {}", describe(obj)))
}

/// Bytes pickled with protocol 2: `_codecs.encode(str, 'latin1')`.
fn latin1_bytes(obj: &Object) -> Option<Vec<u8>> {
    let Object::Reduce { callable, args } = obj else {
        return None;
    };
    let (_, name) = class_of(callable)?;
    let Object::Tuple(a) = args.as_ref() else {
        return None;
    };
    match (name, a.first()) {
        ("encode", Some(Object::Unicode(s))) => {
            s.chars().map(|c| u8::try_from(c as u32).ok()).collect()
        }
        _ => None,
    }
}

fn decode_raw(kind: &str, bytes: &[u8]) -> Result<Value, String> {
    let width: usize = kind
        .get(1..)
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| format!("unsupported numpy dtype {kind}"))?;
    match kind.chars().next() {
        Some('i') if width == 8 => Ok(Value::Array(
            bytes
                .chunks_exact(8)
                .map(|c| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(c);
                    Value::from(i64::from_le_bytes(b))
                })
                .collect(),
        )),
        Some('U') if width > 0 => Ok(Value::Array(
            bytes
                .chunks_exact(4 * width)
                .map(|c| {
                    let s: String = c
                        .chunks_exact(4)
                        .filter_map(|u| {
                            char::from_u32(u32::from_le_bytes([u[0], u[1], u[2], u[3]]))
                        })
                        .filter(|&ch| ch != '\0')
                        .collect();
                    Value::String(s)
                })
                .collect(),
        )),
        _ => Err(format!(
            "unsupported numpy dtype {kind} (expected object, int64 or unicode)"
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn class(m: &str, c: &str) -> Object {
        Object::Class {
            module_name: m.into(),
            class_name: c.into(),
        }
    }

    /// `np.array(...)` as pickled with protocol 2, with dtype `dtype` and data `data`.
    fn ndarray(dtype: &str, n: i32, data: Object) -> Object {
        let dtype = Object::Build {
            callable: Box::new(Object::Reduce {
                callable: Box::new(class("numpy", "dtype")),
                args: Box::new(Object::Tuple(vec![
                    Object::Unicode(dtype.into()),
                    Object::Bool(false),
                    Object::Bool(true),
                ])),
            }),
            args: Box::new(Object::Tuple(vec![Object::Int(3)])),
        };
        Object::Build {
            callable: Box::new(Object::Reduce {
                callable: Box::new(class("numpy.core.multiarray", "_reconstruct")),
                args: Box::new(Object::Tuple(vec![])),
            }),
            args: Box::new(Object::Tuple(vec![
                Object::Int(1),
                Object::Tuple(vec![Object::Int(n)]),
                dtype,
                Object::Bool(false),
                data,
            ])),
        }
    }

    fn latin1(bytes: &[u8]) -> Object {
        Object::Reduce {
            callable: Box::new(class("_codecs", "encode")),
            args: Box::new(Object::Tuple(vec![
                Object::Unicode(bytes.iter().map(|&b| b as char).collect()),
                Object::Unicode("latin1".into()),
            ])),
        }
    }

    #[test]
    fn numpy_arrays_of_objects_ints_and_strings() {
        let obj = ndarray(
            "O8",
            2,
            Object::List(vec![Object::Unicode("PAD".into()), Object::Int(7)]),
        );
        assert_eq!(to_json(&obj, "x").unwrap(), serde_json::json!(["PAD", 7]));
        let mut raw = 300i64.to_le_bytes().to_vec();
        raw.extend((-1i64).to_le_bytes());
        let obj = ndarray("i8", 2, latin1(&raw));
        assert_eq!(to_json(&obj, "x").unwrap(), serde_json::json!([300, -1]));
        let raw: Vec<u8> = ['a', 'é', '\0', 'b', 'c', 'd']
            .iter()
            .flat_map(|&c| (c as u32).to_le_bytes())
            .collect();
        let obj = ndarray("U3", 2, latin1(&raw));
        assert_eq!(
            to_json(&obj, "x").unwrap(),
            serde_json::json!(["aé", "bcd"])
        );
        let err = to_json(&ndarray("f4", 1, latin1(&[0; 4])), "ids").unwrap_err();
        assert!(err.contains("ids") && err.contains("f4"), "{err}");
    }

    #[test]
    fn unsupported_objects_are_named_with_their_path() {
        let obj = Object::Dict(vec![(
            Object::Unicode("a".into()),
            Object::Reduce {
                callable: Box::new(class("builtins", "set")),
                args: Box::new(Object::Tuple(vec![])),
            },
        )]);
        let err = to_json(&obj, "hp").unwrap_err();
        assert_eq!(err, "hp.a: unsupported Python object `builtins.set`");
    }
}
