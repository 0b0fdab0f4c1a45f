//! Structural defaulting as apiextensions-apiserver does it
//! (`structuraldefaulting.PruneNonNullableNullsWithoutDefaults` then `Default`).

use serde_json::Value;

use super::compile::Node;

/// Drops `null`s of non-nullable fields that have no default.
pub(crate) fn prune_nulls(node: &Node, v: &mut Value) {
    match v {
        Value::Object(m) => {
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                let Some(child) = node.child(&k) else {
                    continue;
                };
                let drop = m.get(&k).is_some_and(Value::is_null)
                    && !child.nullable
                    && child.default.is_none();
                if drop {
                    m.remove(&k);
                } else if let Some(x) = m.get_mut(&k) {
                    prune_nulls(child, x);
                }
            }
        }
        Value::Array(a) => {
            if let Some(items) = &node.items {
                for x in a.iter_mut() {
                    prune_nulls(items, x);
                }
            }
        }
        _ => {}
    }
}

fn non_nullable_null(x: &Value, s: &Node) -> bool {
    x.is_null() && !s.nullable
}

/// Applies defaults of properties of objects that exist; a non-nullable
/// `null` with a default gets the default.
pub(crate) fn default(node: &Node, v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, prop) in &node.properties {
                let Some(d) = &prop.default else { continue };
                let missing = match m.get(k) {
                    None => true,
                    Some(x) => non_nullable_null(x, prop),
                };
                if missing {
                    m.insert(k.clone(), d.clone());
                }
            }
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                if let Some(prop) = node.property(&k) {
                    if let Some(x) = m.get_mut(&k) {
                        default(prop, x);
                    }
                } else if let Some(add) = &node.additional {
                    if let Some(x) = m.get_mut(&k) {
                        if non_nullable_null(x, add)
                            && let Some(d) = &add.default
                        {
                            *x = d.clone();
                        }
                        default(add, x);
                    }
                }
            }
        }
        Value::Array(a) => {
            if let Some(items) = &node.items {
                for x in a.iter_mut() {
                    if non_nullable_null(x, items)
                        && let Some(d) = &items.default
                    {
                        *x = d.clone();
                    }
                    default(items, x);
                }
            }
        }
        _ => {}
    }
}
