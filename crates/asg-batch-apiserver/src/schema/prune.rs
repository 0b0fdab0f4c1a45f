//! Structural pruning: dropping fields the schema does not specify, as
//! apiextensions-apiserver's `structuralpruning.PruneWithOptions` does, and
//! `metadata` of the root pruned to ObjectMeta's fields.

use serde_json::Value;

use super::compile::Node;

/// ObjectMeta's JSON fields (`metav1.ObjectMeta`).
const OBJECT_META_FIELDS: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

/// Prunes `obj` (the whole custom resource) and returns the pruned paths
/// (`spec.foo`, `spec.list[0].bar`, `metadata.foo`), sorted.
pub(crate) fn prune_root(root: &Node, obj: &mut Value) -> Vec<String> {
    let mut pruned = Vec::new();
    if let Value::Object(m) = obj {
        if let Some(Value::Object(meta)) = m.get_mut("metadata") {
            let unknown: Vec<String> = meta
                .keys()
                .filter(|k| !OBJECT_META_FIELDS.contains(&k.as_str()))
                .cloned()
                .collect();
            for k in unknown {
                meta.remove(&k);
                pruned.push(format!("metadata.{k}"));
            }
        }
        let keys: Vec<String> = m.keys().cloned().collect();
        for k in keys {
            if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            prune_key(root, m, &k, "", &mut pruned);
        }
    }
    pruned.sort();
    pruned
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

fn prune_key(
    node: &Node,
    m: &mut serde_json::Map<String, Value>,
    k: &str,
    parent: &str,
    pruned: &mut Vec<String>,
) {
    let path = join(parent, k);
    let child = node.property(k).or(node.additional.as_deref());
    match child {
        Some(c) => {
            if let Some(v) = m.get_mut(k) {
                prune(c, v, &path, pruned);
            }
        }
        None if node.preserve_unknown => {}
        None => {
            m.remove(k);
            pruned.push(path);
        }
    }
}

/// Prunes a value at `path` against `node`.
fn prune(node: &Node, v: &mut Value, path: &str, pruned: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            let embedded = node.embedded_resource;
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                if embedded && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                prune_key(node, m, &k, path, pruned);
            }
        }
        Value::Array(a) => {
            if let Some(items) = &node.items {
                for (i, x) in a.iter_mut().enumerate() {
                    prune(items, x, &format!("{path}[{i}]"), pruned);
                }
            }
        }
        _ => {}
    }
}
