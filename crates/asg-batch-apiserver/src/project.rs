//! Reading a few fields of a stored object's JSON without parsing the rest: what a
//! selector needs of each object a selector list goes through (the agents list their
//! node's BatchJobs with `fieldSelector=status.node=N`, out of every job there is).
//!
//! [`Paths::project`] returns an object holding only the given paths (each taken whole
//! where it ends); everything else is skipped by the JSON reader without being built, so
//! a selector matches the projection exactly as it matches the whole object.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// A set of paths into a JSON object (a trie of keys).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Paths {
    /// The value here is taken whole.
    whole: bool,
    children: Vec<(String, Paths)>,
}

impl Paths {
    /// Adds the path of keys `path` (taken whole where it ends).
    pub fn add<'a>(&mut self, path: impl IntoIterator<Item = &'a str>) {
        let mut path = path.into_iter();
        if self.whole {
            return;
        }
        let Some(first) = path.next() else {
            self.whole = true;
            self.children.clear();
            return;
        };
        let i = match self.children.iter().position(|(k, _)| k == first) {
            Some(i) => i,
            None => {
                self.children.push((first.to_string(), Paths::default()));
                self.children.len() - 1
            }
        };
        self.children[i].1.add(path);
    }

    /// Whether no path was added.
    pub fn is_empty(&self) -> bool {
        !self.whole && self.children.is_empty()
    }

    /// The object `json` holding only these paths (`None` when `json` is not JSON). A
    /// path through something that is not an object ends in `null` there.
    pub fn project(&self, json: &[u8]) -> Option<Value> {
        let mut de = serde_json::Deserializer::from_slice(json);
        let v = self.deserialize(&mut de).ok()?;
        de.end().ok()?;
        Some(v)
    }
}

impl<'de> DeserializeSeed<'de> for &Paths {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        if self.whole {
            return Value::deserialize(d);
        }
        d.deserialize_any(Project(self))
    }
}

struct Project<'a>(&'a Paths);

impl<'de> Visitor<'de> for Project<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(Key(k)) = m.next_key()? {
            match self.0.children.iter().find(|(c, _)| *c == k) {
                Some((_, p)) => {
                    let v = m.next_value_seed(p)?;
                    out.insert(k.into_owned(), v);
                }
                None => {
                    m.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(out))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Value, A::Error> {
        while s.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_str<E>(self, _: &str) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
}

/// An object key, borrowed from the JSON unless it has escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_string())))
            }
            fn visit_string<E>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn paths(ps: &[&str]) -> Paths {
        let mut p = Paths::default();
        for s in ps {
            p.add(s.split('.'));
        }
        p
    }

    #[test]
    fn only_the_paths_are_kept_each_whole() {
        let o = json!({
            "apiVersion": "v1", "kind": "X",
            "metadata": {"name": "n", "labels": {"a": "b", "c\"d": "e"}, "uid": "u"},
            "spec": {"x": [1, 2, {"y": 3}], "z": {"w": null}},
            "status": {"node": "n1", "n": 3.5, "list": [{"node": "no"}]},
        });
        let bytes = serde_json::to_vec(&o).unwrap();
        let p = paths(&[
            "metadata.labels",
            "status.node",
            "spec.x.y",
            "status.list.node",
        ]);
        assert_eq!(
            p.project(&bytes).unwrap(),
            json!({
                "metadata": {"labels": {"a": "b", "c\"d": "e"}},
                "spec": {"x": null},
                "status": {"node": "n1", "list": null},
            })
        );
        assert_eq!(
            paths(&["status"]).project(&bytes).unwrap()["status"],
            o["status"]
        );
        assert_eq!(paths(&["missing.path"]).project(&bytes).unwrap(), json!({}));
        // a key with escapes is still found
        let e = br#"{"sta\u0074us":{"node":"x"}}"#;
        assert_eq!(
            paths(&["status.node"]).project(e).unwrap(),
            json!({"status": {"node": "x"}})
        );
        assert!(paths(&["a"]).project(b"{\"a\":1} x").is_none());
        assert!(paths(&["a"]).project(b"{\"a\":").is_none());
    }
}
