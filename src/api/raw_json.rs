//! Decoding a watched object from its raw JSON text: the controller's reflector stores
//! ([`Checked`](crate::controller::run::Checked)) and the agent's
//! ([`WatchedJob`](crate::agent::watched::WatchedJob)) both read events this way.
//!
//! Asked for a newtype struct named [`RAW_VALUE`] (serde_json's `RawValue`, feature
//! `raw_value`), serde_json hands over the value's text instead of parsing it: the typed
//! object is decoded from that text once, with no generic tree and no copy (kube's
//! `DeserializeGuard` parses each object into a tree, copies it and decodes the copy).
//! Any other deserializer (serde's buffer of a watch event whose `object` came before its
//! `type`; or serde_json, were the name to change) hands over the value itself, decoded
//! then from one `serde_json::Value`: slower, same result.

use std::marker::PhantomData;

use serde::de::{DeserializeSeed, Error as _, MapAccess, Visitor};

/// serde_json's name for a raw JSON value.
pub const RAW_VALUE: &str = "$serde_json::private::RawValue";

/// An object decoded from its JSON, as text or as a value tree.
pub trait FromJson: Sized {
    /// From the object's JSON text.
    fn from_text(text: &str) -> Result<Self, serde_json::Error>;
    /// From the object already parsed (read in place, not copied).
    fn from_value(value: &serde_json::Value) -> Result<Self, serde_json::Error>;
}

/// `T` from `d`: from the value's text where serde_json holds it, else from a tree.
pub fn deserialize<'de, D: serde::Deserializer<'de>, T: FromJson>(d: D) -> Result<T, D::Error> {
    d.deserialize_newtype_struct(RAW_VALUE, Raw(PhantomData))
}

struct Raw<T>(PhantomData<T>);

impl<'de, T: FromJson> Visitor<'de> for Raw<T> {
    type Value = T;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a Kubernetes object")
    }

    /// serde_json: one entry, the token and the object's text. Otherwise the object's own
    /// entries.
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        let mut object = serde_json::Map::new();
        if let Some(key) = map.next_key::<String>()? {
            if key == RAW_VALUE {
                return map.next_value_seed(self);
            }
            object.insert(key, map.next_value()?);
        }
        while let Some((key, value)) = map.next_entry()? {
            object.insert(key, value);
        }
        T::from_value(&serde_json::Value::Object(object)).map_err(A::Error::custom)
    }

    fn visit_newtype_struct<D: serde::Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        let value = <serde_json::Value as serde::Deserialize>::deserialize(d)?;
        T::from_value(&value).map_err(D::Error::custom)
    }

    /// The text serde_json holds (borrowed: no copy).
    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<T, E> {
        T::from_text(text).map_err(E::custom)
    }
}

/// The token's value: the object's text.
impl<'de, T: FromJson> DeserializeSeed<'de> for Raw<T> {
    type Value = T;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        d.deserialize_str(self)
    }
}
