//! Patch types: JSON merge patch (RFC 7386), JSON patch (RFC 6902, including `test`),
//! and strategic merge patch for the built-in kinds kubectl sends it for.

use serde_json::{Map, Value};

use super::error::{ApiError, ApiResult};

/// The patch type, from the request Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/merge-patch+json`
    Merge,
    /// `application/json-patch+json`
    Json,
    /// `application/strategic-merge-patch+json`
    Strategic,
    /// `application/apply-patch+yaml`
    Apply,
}

impl PatchType {
    /// Parse the media type (parameters ignored).
    pub fn from_content_type(ct: &str) -> Option<Self> {
        match ct.split(';').next().unwrap_or("").trim() {
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/json-patch+json" => Some(PatchType::Json),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/apply-patch+yaml" => Some(PatchType::Apply),
            _ => None,
        }
    }
    /// The accepted media types (for 415 messages).
    pub const ACCEPTED: &'static [&'static str] = &[
        "application/json-patch+json",
        "application/merge-patch+json",
        "application/apply-patch+yaml",
        "application/strategic-merge-patch+json",
    ];
}

/// Apply an RFC 7386 merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) -> ApiResult<()> {
    if !patch.is_object() {
        return Err(ApiError::bad_request(
            "error decoding patch: merge patch must be a JSON object",
        ));
    }
    json_patch::merge(target, patch);
    Ok(())
}

/// Apply an RFC 6902 JSON patch.
pub fn json_patch(target: &mut Value, patch: &Value) -> ApiResult<()> {
    let ops: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    json_patch::patch(target, &ops).map_err(|e| {
        // kube-apiserver reports failed tests and missing paths as 422 Invalid.
        ApiError::new(
            422,
            "Invalid",
            format!("the server rejected our request due to an error in our request: {e}"),
        )
    })
}

/// Merge keys of list fields in the built-in kinds' strategic merge patch metadata.
fn merge_key(path: &str) -> Option<&'static str> {
    match path {
        ".metadata.ownerReferences" => Some("uid"),
        _ => None,
    }
}

/// Primitive list fields merged as sets.
fn is_merge_set(path: &str) -> bool {
    path == ".metadata.finalizers"
}

/// Apply a strategic merge patch (built-in kinds).
pub fn strategic_merge_patch(target: &mut Value, patch: &Value) -> ApiResult<()> {
    if !patch.is_object() {
        return Err(ApiError::bad_request(
            "error decoding patch: strategic merge patch must be a JSON object",
        ));
    }
    smp_map(target, patch, "")
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

fn smp_map(target: &mut Value, patch: &Value, path: &str) -> ApiResult<()> {
    let Some(pm) = patch.as_object() else {
        *target = patch.clone();
        return Ok(());
    };
    match pm.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            *target = strip_directives(patch);
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Object(Map::new());
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unknown patch type {other:?} in strategic merge patch at {path}"
            )));
        }
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Some(tm) = target.as_object_mut() else {
        return Ok(());
    };
    if let Some(retain) = pm.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = retain.iter().filter_map(Value::as_str).collect();
        tm.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (k, v) in pm {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(del)) = (tm.get_mut(field), v.as_array()) {
                list.retain(|x| !del.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        let child_path = format!("{path}.{k}");
        if v.is_null() {
            tm.remove(k);
            continue;
        }
        match (tm.get_mut(k), v) {
            (Some(Value::Array(cur)), Value::Array(items)) => {
                if let Some(key) = merge_key(&child_path) {
                    merge_keyed_list(cur, items, key);
                } else if is_merge_set(&child_path) {
                    for it in items {
                        if !cur.contains(it) {
                            cur.push(it.clone());
                        }
                    }
                } else {
                    *cur = items.iter().map(strip_directives).collect();
                }
            }
            (Some(cur @ Value::Object(_)), Value::Object(_)) => {
                smp_map(cur, v, &child_path)?;
            }
            _ => {
                if v.get("$patch").and_then(Value::as_str) == Some("delete") {
                    tm.remove(k);
                } else {
                    tm.insert(k.clone(), strip_directives(v));
                }
            }
        }
    }
    Ok(())
}

fn merge_keyed_list(cur: &mut Vec<Value>, items: &[Value], key: &str) {
    for it in items {
        let id = it.get(key);
        let pos = cur.iter().position(|c| id.is_some() && c.get(key) == id);
        let delete = it.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                cur.remove(i);
            }
            (Some(i), false) => {
                // errors cannot occur for object/object merges
                let _ = smp_map(&mut cur[i], it, "");
            }
            (None, false) => cur.push(strip_directives(it)),
            (None, true) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn smp_directives() {
        let mut t = json!({"metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x"],
            "ownerReferences": [{"uid": "u1", "name": "o1"}]}, "data": {"k": "v"}});
        strategic_merge_patch(
            &mut t,
            &json!({"metadata": {"labels": {"a": null, "c": "3"}, "finalizers": ["y"],
                "ownerReferences": [{"uid": "u2", "name": "o2"}, {"uid": "u1", "$patch": "delete"}]},
                "data": {"$patch": "replace", "n": "m"}}),
        )
        .unwrap();
        assert_eq!(
            t,
            json!({"metadata": {"labels": {"b": "2", "c": "3"}, "finalizers": ["x", "y"],
                "ownerReferences": [{"uid": "u2", "name": "o2"}]}, "data": {"n": "m"}})
        );
    }

    #[test]
    fn json_patch_test_op() {
        let mut t = json!({"a": 1});
        assert!(json_patch(&mut t, &json!([{"op": "test", "path": "/a", "value": 2}])).is_err());
        json_patch(&mut t, &json!([{"op": "test", "path": "/a", "value": 1}, {"op": "replace", "path": "/a", "value": 3}])).unwrap();
        assert_eq!(t, json!({"a": 3}));
    }
}
