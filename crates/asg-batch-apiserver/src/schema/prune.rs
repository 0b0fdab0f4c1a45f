//! Structural pruning: dropping fields the schema does not specify, as
//! apiextensions-apiserver's `structuralpruning.PruneWithOptions` does, and
//! `metadata` of the root pruned to ObjectMeta's fields.

use std::fmt::Write as _;

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
        let mut path = String::new();
        prune_map(root, m, false, true, &mut path, &mut pruned);
    }
    pruned.sort();
    pruned
}

/// Prunes the fields of an object at `path` (a buffer: extended for each child and cut
/// back, so nothing is allocated unless a field goes); `root` skips `apiVersion`, `kind`
/// and `metadata` (handled above), `embedded` skips them as an embedded resource's.
fn prune_map(
    node: &Node,
    m: &mut serde_json::Map<String, Value>,
    embedded: bool,
    root: bool,
    path: &mut String,
    pruned: &mut Vec<String>,
) {
    let mut gone: Vec<String> = Vec::new();
    for (k, v) in m.iter_mut() {
        if (root || embedded) && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        let len = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(k);
        match node.property(k).or(node.additional.as_deref()) {
            Some(c) => prune(c, v, path, pruned),
            None if node.preserve_unknown => {}
            None => {
                gone.push(k.clone());
                pruned.push(path.clone());
            }
        }
        path.truncate(len);
    }
    for k in gone {
        m.remove(&k);
    }
}

/// Prunes a value at `path` against `node`.
fn prune(node: &Node, v: &mut Value, path: &mut String, pruned: &mut Vec<String>) {
    match v {
        Value::Object(m) => prune_map(node, m, node.embedded_resource, false, path, pruned),
        Value::Array(a) => {
            if let Some(items) = &node.items {
                for (i, x) in a.iter_mut().enumerate() {
                    let len = path.len();
                    // (writing to a String cannot fail)
                    let _ = write!(path, "[{i}]");
                    prune(items, x, path, pruned);
                    path.truncate(len);
                }
            }
        }
        _ => {}
    }
}
