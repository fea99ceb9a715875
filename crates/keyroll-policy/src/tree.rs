//! The policy file as a tree of values that each know where they are in the text, so that every
//! error (an unknown field, a wrong type, a bad value) can name its line and column, and so that
//! checking can go on after the first error instead of stopping where serde would.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

/// A TOML value with the byte range it was read from.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    /// Bytes of the text this value was read from.
    pub span: Range<usize>,
    /// The value.
    pub value: Value,
}

/// A key of a table, with where it was written.
#[derive(Debug, Clone)]
pub(crate) struct Key {
    /// The key's name.
    pub name: String,
    /// Bytes of the key in the text.
    pub span: Range<usize>,
}

/// A TOML value whose parts are [`Node`]s.
#[derive(Debug, Clone)]
pub(crate) enum Value {
    String(String),
    // Numbers are never valid in a policy; only their kind is named in the error.
    Integer,
    Float,
    Boolean(bool),
    Datetime,
    Array(Vec<Node>),
    Table(Vec<(Key, Node)>),
}

impl Value {
    /// What kind of value this is, in words for an error message.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::String(_) => "a string",
            Value::Integer => "an integer",
            Value::Float => "a float",
            Value::Boolean(_) => "a boolean",
            Value::Datetime => "a date-time",
            Value::Array(_) => "an array",
            Value::Table(_) => "a table",
        }
    }
}

/// A table's entries, in written order.
pub(crate) type Entries = Vec<(Key, Node)>;

/// A TOML syntax error: toml's message and where, when it knows.
pub(crate) type SyntaxError = (String, Option<Range<usize>>);

/// Parses `text` into a tree; a syntax error comes back with toml's message and byte range.
pub(crate) fn parse(text: &str) -> Result<Entries, SyntaxError> {
    let root: BTreeMap<Spanned<String>, Spanned<Raw>> =
        toml::from_str(text).map_err(|e| (e.message().to_owned(), e.span()))?;
    let mut entries: Vec<(Key, Node)> = root.into_iter().map(|(k, v)| (key(k), node(v))).collect();
    entries.sort_by_key(|(k, _)| k.span.start);
    Ok(entries)
}

fn key(k: Spanned<String>) -> Key {
    let span = k.span();
    Key {
        name: k.into_inner(),
        span,
    }
}

fn node(v: Spanned<Raw>) -> Node {
    let span = v.span();
    let value = match v.into_inner() {
        Raw::String(s) => Value::String(s),
        Raw::Integer => Value::Integer,
        Raw::Float => Value::Float,
        Raw::Boolean(b) => Value::Boolean(b),
        Raw::Datetime => Value::Datetime,
        Raw::Array(items) => Value::Array(items.into_iter().map(node).collect()),
        Raw::Table(entries) => {
            let mut entries: Vec<(Key, Node)> = entries
                .into_iter()
                .map(|(k, v)| (key(k), node(v)))
                .collect();
            // Written order, so that errors come out in the order a reader meets them.
            entries.sort_by_key(|(k, _)| k.span.start);
            Value::Table(entries)
        }
    };
    Node { span, value }
}

/// What serde hands over, before spans are unwrapped.
enum Raw {
    String(String),
    Integer,
    Float,
    Boolean(bool),
    Datetime,
    Array(Vec<Spanned<Raw>>),
    Table(Vec<(Spanned<String>, Spanned<Raw>)>),
}

/// toml hands a date-time over as a map with this one key.
const DATETIME_FIELD: &str = "$__toml_private_datetime";

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Raw, D::Error> {
        d.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw::Boolean(v))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Raw, E> {
        Ok(Raw::Integer)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Raw, E> {
        Ok(Raw::Integer)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Raw, E> {
        Ok(Raw::Float)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Raw, E> {
        Ok(Raw::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Raw>>()? {
            items.push(item);
        }
        Ok(Raw::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut entries = Vec::new();
        while let Some(k) = map.next_key::<KeyOrDatetime>()? {
            match k {
                KeyOrDatetime::Datetime => {
                    // The value is the date-time's text; nothing in a policy is a date-time.
                    map.next_value::<de::IgnoredAny>()?;
                    return Ok(Raw::Datetime);
                }
                KeyOrDatetime::Key(k) => entries.push((k, map.next_value::<Spanned<Raw>>()?)),
            }
        }
        Ok(Raw::Table(entries))
    }
}

/// A table key, or the marker toml uses for a date-time value.
enum KeyOrDatetime {
    Key(Spanned<String>),
    Datetime,
}

impl<'de> Deserialize<'de> for KeyOrDatetime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<KeyOrDatetime, D::Error> {
        // A date-time's marker key cannot be read as a spanned key, and a real key never has
        // this name (it is not a valid bare key, and nobody quotes it).
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyOrDatetime;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyOrDatetime, E> {
                if v == DATETIME_FIELD {
                    Ok(KeyOrDatetime::Datetime)
                } else {
                    Err(E::custom("a key without its position"))
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<KeyOrDatetime, A::Error> {
                Spanned::<String>::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(KeyOrDatetime::Key)
            }
        }
        d.deserialize_struct(
            SPANNED_NAME,
            &[SPANNED_START, SPANNED_END, SPANNED_VALUE],
            V,
        )
    }
}

// serde_spanned's private protocol (stable across 0.6): asking for this struct is how a
// deserializer is told to hand over the span with the value.
const SPANNED_NAME: &str = "$__serde_spanned_private_Spanned";
const SPANNED_START: &str = "$__serde_spanned_private_start";
const SPANNED_END: &str = "$__serde_spanned_private_end";
const SPANNED_VALUE: &str = "$__serde_spanned_private_value";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_of_keys_and_values() {
        let text = "a = 1\n[t]\nb = \"x\"\nd = 1979-05-27\n[[arr]]\nc = [true]\n";
        let root = parse(text).unwrap();
        let names: Vec<&str> = root.iter().map(|(k, _)| k.name.as_str()).collect();
        assert_eq!(names, ["a", "t", "arr"]);
        let (k, v) = &root[0];
        assert_eq!(&text[k.span.clone()], "a");
        assert_eq!(&text[v.span.clone()], "1");
        let Value::Table(t) = &root[1].1.value else {
            panic!()
        };
        assert_eq!(&text[t[0].0.span.clone()], "b");
        assert_eq!(&text[t[0].1.span.clone()], "\"x\"");
        assert!(matches!(t[1].1.value, Value::Datetime));
        let Value::Array(arr) = &root[2].1.value else {
            panic!()
        };
        let Value::Table(t) = &arr[0].value else {
            panic!()
        };
        assert_eq!(&text[t[0].0.span.clone()], "c");
    }
}
