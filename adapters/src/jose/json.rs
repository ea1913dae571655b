//! Strict JSON for everything that decides whom to trust (token headers and payloads, JWKS and
//! discovery documents): a member name twice in one object, at any depth, is refused, because
//! serde_json (like many parsers) would silently keep the last one, and two parsers disagreeing
//! on a claim or a key is how tokens get forged. serde_json's nesting limit (128) still applies.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// One JSON value with unique member names at every depth, and nothing after it.
pub fn strict_from_slice(bytes: &[u8]) -> Result<Value, String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let Strict(value) = Strict::deserialize(&mut de).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(value)
}

/// A strict JSON object (see [`strict_from_slice`]).
pub fn unique_object(bytes: &[u8]) -> Option<Map<String, Value>> {
    match strict_from_slice(bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
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
            .ok_or_else(|| de::Error::custom("a number JSON cannot hold"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Strict, E> {
        Ok(Strict(Value::String(v.to_owned())))
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

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Strict(Value::Array(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Strict, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            if map.contains_key(&key) {
                return Err(de::Error::custom("duplicate member"));
            }
            let Strict(value) = access.next_value()?;
            map.insert(key, value);
        }
        Ok(Strict(Value::Object(map)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_members_are_refused_at_every_depth() {
        assert!(strict_from_slice(br#"{"a":1,"a":2}"#).is_err());
        assert!(strict_from_slice(br#"{"keys":[{"n":"x","n":"y"}]}"#).is_err());
        assert!(strict_from_slice(br#"[{"b":{"c":1,"c":1}}]"#).is_err());
        let v =
            strict_from_slice(br#"{"keys":[{"n":"x","e":"y"}],"k":[1,-2,3.5,true,null]}"#).unwrap();
        assert_eq!(v["keys"][0]["e"], "y");
        assert_eq!(v["k"][2], 3.5);
    }

    #[test]
    fn trailing_data_and_deep_nesting_are_refused() {
        assert!(strict_from_slice(br#"{"a":1} x"#).is_err());
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(strict_from_slice(deep.as_bytes()).is_err());
        assert!(unique_object(b"[1]").is_none());
        assert!(unique_object(br#"{"a":1}"#).is_some());
    }
}
