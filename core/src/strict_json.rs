//! JSON parsing that refuses a key given twice in one object. JSON allows it and serde_json keeps
//! the last value silently, so `{"epochs": 5, ..., "epochs": 50}` would train for 50 epochs with
//! nobody told; specs are parsed with this instead.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Parses `text` as JSON, failing on a duplicate key in any object (the error names the key and
/// where the second one is).
pub fn from_str(text: &str) -> serde_json::Result<Value> {
    serde_json::from_str::<Strict>(text).map(|s| s.0)
}

/// A JSON value parsed without duplicate keys.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Strict, E> {
        Ok(Strict(Value::Bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Strict, E> {
        Ok(Strict(Value::Number(v.into())))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Strict, E> {
        Ok(Strict(Value::Number(v.into())))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Strict, E> {
        Number::from_f64(v)
            .map(|n| Strict(Value::Number(n)))
            .ok_or_else(|| E::custom(format!("{v} is not a finite number")))
    }

    fn visit_str<E>(self, v: &str) -> Result<Strict, E> {
        Ok(Strict(Value::String(v.to_string())))
    }

    fn visit_string<E>(self, v: String) -> Result<Strict, E> {
        Ok(Strict(Value::String(v)))
    }

    fn visit_unit<E>(self) -> Result<Strict, E> {
        Ok(Strict(Value::Null))
    }

    fn visit_none<E>(self) -> Result<Strict, E> {
        Ok(Strict(Value::Null))
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Strict, D::Error> {
        Strict::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Strict(Value::Array(out)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!(
                    "key `{key}` appears twice in one object; JSON readers keep only one of them, \
                     so give it once"
                )));
            }
            let Strict(value) = map.next_value()?;
            out.insert(key, value);
        }
        Ok(Strict(Value::Object(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_serde_json_without_duplicates() {
        let text = r#"{"a": 1, "b": [true, null, -2, 0.5, "x"], "c": {"d": 18446744073709551615}}"#;
        let strict = from_str(text).map_err(|e| e.to_string());
        let plain: Result<Value, String> = serde_json::from_str(text).map_err(|e| e.to_string());
        assert_eq!(strict, plain);
    }

    #[test]
    fn a_duplicate_key_is_an_error_naming_it_and_where() {
        let err = from_str("{\n  \"epochs\": 5,\n  \"epochs\": 50\n}")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("key `epochs` appears twice"), "{err}");
        assert!(err.contains("line 3"), "{err}");
        let nested = from_str(r#"{"kw": {"a": 1, "b": 2, "a": 3}}"#)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(nested.contains("key `a` appears twice"), "{nested}");
        // The same key in two different objects is fine.
        assert!(from_str(r#"{"x": {"a": 1}, "y": {"a": 2}}"#).is_ok());
    }
}
