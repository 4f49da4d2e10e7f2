//! The one contract for reading JSON and YAML that comes from outside the process (request bodies,
//! policy and config files, tool outputs, scenario and fault-model files): a mapping that repeats a
//! key is refused, at any depth, with an error naming the key and where it is. serde would
//! otherwise keep the last value (`{"dry_run": true, …, "dry_run": false}` is a real action).
//!
//! Each reader makes two passes: the first walks the document and only looks at keys; the second
//! is the ordinary typed parse, so every other error is exactly the one the typed parse gives.
//! Objects read back from our own API server (through kube) are not outside input and do not go
//! through here.

use serde::de::{DeserializeOwned, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;

/// Why a document from outside was refused.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// A mapping repeats a key. `path` is where the mapping is (`rules[0].gates`; empty at the top).
    #[error("duplicate key `{key}` {}", where_(path))]
    DuplicateKey { key: String, path: String },
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Yaml(#[from] serde_saphyr::Error),
}

fn where_(path: &str) -> String {
    if path.is_empty() { "at the top level".to_string() } else { format!("in `{path}`") }
}

impl InputError {
    /// The repeated key's full path (`preflight_checks.expected_node_counts`), for a duplicate.
    pub fn duplicate_field(&self) -> Option<String> {
        match self {
            InputError::DuplicateKey { key, path } if path.is_empty() => Some(key.clone()),
            InputError::DuplicateKey { key, path } => Some(format!("{path}.{key}")),
            _ => None,
        }
    }
}

/// Reads JSON text into `T`, refusing duplicate keys.
pub fn from_json_str<T: DeserializeOwned>(text: &str) -> Result<T, InputError> {
    check_json_keys(text.as_bytes())?;
    Ok(serde_json::from_str(text)?)
}

/// Reads JSON bytes into `T`, refusing duplicate keys.
pub fn from_json_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, InputError> {
    check_json_keys(bytes)?;
    Ok(serde_json::from_slice(bytes)?)
}

/// Reads YAML text into `T`, refusing duplicate keys (serde-saphyr's default policy refuses them
/// too; the first pass adds the path, and covers keys of any type).
pub fn from_yaml_str<T: DeserializeOwned>(text: &str) -> Result<T, InputError> {
    check_yaml_keys(text)?;
    Ok(serde_saphyr::from_str(text)?)
}

/// The first pass alone, for readers that run their own typed parse (the policy's path-naming
/// one): `Err` only for a duplicate key; any other problem is left to the typed parse.
pub fn check_json_keys(bytes: &[u8]) -> Result<(), InputError> {
    let found = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let _ = Walk { at: &At::Top, found: &found }.deserialize(&mut de);
    found.into_inner().map_or(Ok(()), Err)
}

/// As [`check_json_keys`], for YAML.
pub fn check_yaml_keys(text: &str) -> Result<(), InputError> {
    let found = RefCell::new(None);
    // Duplicates must reach the walker rather than stop the parser, so it can say where they are.
    let options = serde_saphyr::options! { duplicate_keys: serde_saphyr::options::DuplicateKeyPolicy::PassThrough };
    let _ = serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| Walk { at: &At::Top, found: &found }.deserialize(de));
    found.into_inner().map_or(Ok(()), Err)
}

/// Where the walk is: a chain back to the top, rendered only for the error.
enum At<'p> {
    Top,
    Key(&'p str, &'p At<'p>),
    Index(usize, &'p At<'p>),
}

impl At<'_> {
    /// `rules[0].gates`; empty at the top.
    fn render(&self) -> String {
        match self {
            At::Top => String::new(),
            At::Key(key, parent) => match parent.render() {
                p if p.is_empty() => (*key).to_string(),
                p => format!("{p}.{key}"),
            },
            At::Index(i, parent) => format!("{}[{i}]", parent.render()),
        }
    }
}

/// Walks any value; records the first duplicate key in `found` and stops there.
struct Walk<'a, 'p> {
    at: &'p At<'p>,
    found: &'a RefCell<Option<InputError>>,
}

impl<'de> DeserializeSeed<'de> for Walk<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_any(self)
    }
}

const STOP: &str = "duplicate key";

impl<'de> Visitor<'de> for Walk<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_i128<E>(self, _: i128) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u128<E>(self, _: u128) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_bytes<E>(self, _: &[u8]) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_some<D: Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        self.deserialize(de)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        self.deserialize(de)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0usize;
        loop {
            let here = At::Index(i, self.at);
            if seq.next_element_seed(Walk { at: &here, found: self.found })?.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key_seed(Key)? {
            let Some(key) = key else {
                // A key that is not a scalar (YAML allows them): not compared here; the typed
                // parse (serde-saphyr's default policy) still refuses a repeated one.
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            if !seen.insert(key.clone()) {
                *self.found.borrow_mut() = Some(InputError::DuplicateKey { key, path: self.at.render() });
                return Err(serde::de::Error::custom(STOP));
            }
            let here = At::Key(&key, self.at);
            map.next_value_seed(Walk { at: &here, found: self.found })?;
        }
        Ok(())
    }

    fn visit_enum<A: serde::de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        use serde::de::VariantAccess;
        let (_, variant): (IgnoredAny, _) = data.variant()?;
        variant.newtype_variant_seed(self)
    }
}

/// A mapping key as text; `None` for a key that is a sequence or mapping.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Option<String>;
    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Option<String>, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Option<String>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a mapping key")
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(v.to_string()))
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Some(v.to_string()))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(v.to_string()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(v.to_string()))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Self::Value, E> {
        Ok(Some(v.to_string()))
    }
    fn visit_u128<E>(self, v: u128) -> Result<Self::Value, E> {
        Ok(Some(v.to_string()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Some(v.to_string()))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Some("null".to_string()))
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Some("null".to_string()))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Self::Value, E> {
        Ok(Some(String::from_utf8_lossy(v).into_owned()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::Value;

    fn dup(e: InputError) -> (String, String) {
        match e {
            InputError::DuplicateKey { key, path } => (key, path),
            other => panic!("not a duplicate-key error: {other}"),
        }
    }

    #[test]
    fn a_json_object_that_repeats_dry_run_is_refused_naming_the_key() {
        let e = from_json_str::<Value>(r#"{"dry_run": true, "type": "cordon_nodepool", "dry_run": false}"#).unwrap_err();
        assert_eq!(e.duplicate_field().as_deref(), Some("dry_run"));
        assert_eq!(e.to_string(), "duplicate key `dry_run` at the top level");
    }

    #[test]
    fn a_duplicate_deep_inside_json_is_refused_with_its_path() {
        let e = from_json_slice::<Value>(br#"{"a": [{"b": {"c": 1, "c": 2}}]}"#).unwrap_err();
        assert_eq!(e.duplicate_field().as_deref(), Some("a[0].b.c"));
        assert_eq!(dup(e), ("c".to_string(), "a[0].b".to_string()));
    }

    #[test]
    fn json_without_duplicates_parses_and_other_errors_are_the_typed_parsers_own() {
        #[derive(Deserialize, Debug, PartialEq)]
        struct S {
            n: u32,
        }
        assert_eq!(from_json_str::<S>(r#"{"n": 3}"#).unwrap(), S { n: 3 });
        let ours = from_json_str::<S>(r#"{"n": "three"}"#).unwrap_err().to_string();
        let theirs = serde_json::from_str::<S>(r#"{"n": "three"}"#).unwrap_err().to_string();
        assert_eq!(ours, theirs);
        let ours = from_json_str::<S>("{not json").unwrap_err().to_string();
        assert_eq!(ours, serde_json::from_str::<S>("{not json").unwrap_err().to_string());
        // The same key in sibling objects is not a duplicate.
        assert!(from_json_str::<Value>(r#"[{"a": 1}, {"a": 2}]"#).is_ok());
        assert!(from_json_str::<Value>(r#"{"x": {"a": 1}, "y": {"a": 2}}"#).is_ok());
    }

    #[test]
    fn json_nested_past_the_recursion_limit_is_an_error_not_a_stack_overflow() {
        let deep = "[".repeat(100_000);
        assert!(from_json_str::<Value>(&deep).is_err());
    }

    #[test]
    fn yaml_nested_deeply_is_an_error_not_a_stack_overflow() {
        for deep in ["[".repeat(100_000), "{a: ".repeat(100_000), "- ".repeat(100_000)] {
            assert!(from_yaml_str::<Value>(&deep).is_err());
        }
    }

    #[test]
    fn a_yaml_mapping_that_repeats_a_key_is_refused_with_its_path() {
        let e = from_yaml_str::<Value>("rules:\n- name: a\n  step: reboot\n  step: reimage\n").unwrap_err();
        assert_eq!(e.duplicate_field().as_deref(), Some("rules[0].step"));
        let e = from_yaml_str::<Value>("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(e.to_string(), "duplicate key `a` at the top level");
    }

    #[test]
    fn serde_saphyr_alone_already_refuses_duplicates_by_default_but_without_the_path() {
        // Proves the second line of defence: the typed parse with default options.
        let e = serde_saphyr::from_str::<Value>("a: 1\na: 2\n").unwrap_err();
        assert!(e.to_string().contains("duplicate mapping key: a"), "{e}");
        // Integer keys equal by value (0xB and 11) are caught by serde-saphyr's own pass.
        assert!(from_yaml_str::<Value>("0xB: a\n11: b\n").is_err());
    }

    #[test]
    fn yaml_merge_keys_that_are_overridden_are_not_duplicates() {
        let text = "base: &b {x: 1, y: 2}\nthing:\n  <<: *b\n  x: 3\n";
        let v: Value = from_yaml_str(text).unwrap();
        assert_eq!(v["thing"]["x"], 3);
    }

    #[test]
    fn yaml_errors_other_than_duplicates_are_serde_saphyrs_own() {
        let ours = from_yaml_str::<Value>("a: [1, 2").unwrap_err().to_string();
        let theirs = serde_saphyr::from_str::<Value>("a: [1, 2").unwrap_err().to_string();
        assert_eq!(ours, theirs);
    }
}
