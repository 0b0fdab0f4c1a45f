//! Server-side printing: `meta.k8s.io/v1` Table responses for `kubectl get`.

use serde_json::{Value, json};

use super::meta::{age_secs, human_duration};
use super::resources::{PrinterColumn, ResourceInfo};

/// Whether the Accept header asks for a Table.
pub fn wants_table(accept: &str) -> bool {
    accept.split(',').any(|part| {
        let p: Vec<&str> = part.split(';').map(str::trim).collect();
        p.first() == Some(&"application/json")
            && p.contains(&"as=Table")
            && p.contains(&"g=meta.k8s.io")
    })
}

/// Whether the Accept header asks for `PartialObjectMetadata` (kube-rs `get_metadata`,
/// `list_metadata`, `metadata_watcher`; client-go's metadata client).
pub fn wants_partial_metadata(accept: &str) -> bool {
    accept.split(',').any(|part| {
        let p: Vec<&str> = part.split(';').map(str::trim).collect();
        p.first() == Some(&"application/json")
            && (p.contains(&"as=PartialObjectMetadata")
                || p.contains(&"as=PartialObjectMetadataList"))
            && p.contains(&"g=meta.k8s.io")
    })
}

/// The `meta.k8s.io/v1` PartialObjectMetadata of an object.
pub fn partial_metadata(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
    })
}

/// Evaluate a simple JSONPath (`.a.b`, `.a[0].b`, `.a[?(@.type=="Ready")].status`,
/// optionally wrapped in `{}`).
pub fn json_path<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let p = path.trim();
    let p = p
        .strip_prefix('{')
        .and_then(|x| x.strip_suffix('}'))
        .unwrap_or(p);
    let p = p.strip_prefix('$').unwrap_or(p);
    let mut cur = obj;
    let mut rest = p;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let field = &r[..end];
            if !field.is_empty() {
                cur = cur.get(field)?;
            }
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = find_bracket_end(r)?;
            let inner = &r[..end];
            rest = &r[end + 1..];
            if let Some(filter) = inner.strip_prefix("?(").and_then(|f| f.strip_suffix(')')) {
                let (lhs, rhs) = filter.split_once("==")?;
                let key = lhs.trim().strip_prefix("@.")?;
                let want = rhs.trim().trim_matches(|c| c == '"' || c == '\'');
                cur = cur.as_array()?.iter().find(|it| {
                    json_path(it, &format!(".{key}")).is_some_and(|v| match v {
                        Value::String(s) => s == want,
                        Value::Number(n) => n.to_string() == want,
                        Value::Bool(b) => b.to_string() == want,
                        _ => false,
                    })
                })?;
            } else if let Ok(i) = inner.trim().parse::<i64>() {
                let a = cur.as_array()?;
                let idx = if i < 0 {
                    i64::try_from(a.len()).ok()? + i
                } else {
                    i
                };
                cur = a.get(usize::try_from(idx).ok()?)?;
            } else {
                let key = inner.trim().trim_matches(|c| c == '"' || c == '\'');
                cur = cur.get(key)?;
            }
        } else {
            return None;
        }
    }
    Some(cur)
}

fn find_bracket_end(s: &str) -> Option<usize> {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '[' | '(' => depth += 1,
            ')' => depth -= 1,
            ']' if depth == 0 => return Some(i),
            ']' => depth -= 1,
            _ => {}
        }
    }
    None
}

fn cell(col: &PrinterColumn, obj: &Value) -> Value {
    let Some(v) = json_path(obj, &col.json_path) else {
        return Value::Null;
    };
    match col.type_.as_str() {
        "date" => match v.as_str().and_then(age_secs) {
            Some(s) => json!(human_duration(s)),
            None => json!("<unknown>"),
        },
        "integer" => v
            .as_i64()
            .map(|i| json!(i))
            .unwrap_or_else(|| json!(v.to_string())),
        "number" => v
            .as_f64()
            .map(|f| json!(f))
            .unwrap_or_else(|| json!(v.to_string())),
        "boolean" => v
            .as_bool()
            .map(|b| json!(b))
            .unwrap_or_else(|| json!(v.to_string())),
        _ => match v {
            Value::String(s) => json!(s),
            Value::Array(_) | Value::Object(_) => json!(v.to_string()),
            other => json!(other.to_string()),
        },
    }
}

fn age_of(obj: &Value) -> Value {
    obj.pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .and_then(age_secs)
        .map(|s| json!(human_duration(s)))
        .unwrap_or_else(|| json!("<unknown>"))
}

fn col(name: &str, type_: &str, format: &str, desc: &str, priority: i64) -> PrinterColumn {
    PrinterColumn {
        name: name.into(),
        type_: type_.into(),
        format: format.into(),
        description: desc.into(),
        priority,
        json_path: String::new(),
    }
}

/// The columns of a resource (Name first).
fn columns(info: &ResourceInfo) -> Vec<PrinterColumn> {
    let name = col(
        "Name",
        "string",
        "name",
        "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
        0,
    );
    let age = || {
        let mut c = col(
            "Age",
            "date",
            "",
            "CreationTimestamp is a timestamp representing the server time when this object was created.",
            0,
        );
        c.json_path = ".metadata.creationTimestamp".into();
        c
    };
    let mut cols = vec![name];
    if info.custom {
        if info.printer_columns.is_empty() {
            cols.push(age());
        } else {
            // kube-apiserver describes a column without a description by its path.
            cols.extend(info.printer_columns.iter().cloned().map(|mut c| {
                if c.description.is_empty() {
                    c.description = format!(
                        "Custom resource definition column (in JSONPath format): {}",
                        c.json_path
                    );
                }
                c
            }));
        }
        return cols;
    }
    let mut with = |n: &str, t: &str, p: &str| {
        let mut c = col(n, t, "", "", 0);
        c.json_path = p.into();
        cols.push(c);
    };
    match (info.group.as_str(), info.plural.as_str()) {
        ("", "namespaces") => with("Status", "string", ".status.phase"),
        ("", "secrets") => with("Type", "string", ".type"),
        ("coordination.k8s.io", "leases") => with("Holder", "string", ".spec.holderIdentity"),
        ("apiextensions.k8s.io", _) => {
            let mut c = col("Created At", "date", "date-time", "", 0);
            c.json_path = ".metadata.creationTimestamp".into();
            cols.push(c);
            return cols;
        }
        _ => {}
    }
    cols.push(age());
    cols
}

fn cells(info: &ResourceInfo, cols: &[PrinterColumn], obj: &Value) -> Vec<Value> {
    cols.iter()
        .enumerate()
        .map(|(i, c)| {
            if i == 0 {
                return json!(obj.pointer("/metadata/name").cloned().unwrap_or(json!("")));
            }
            // built-in computed cells
            match (info.group.as_str(), info.plural.as_str(), c.name.as_str()) {
                ("", "configmaps" | "secrets", "Data") => {
                    let n = ["data", "binaryData"]
                        .iter()
                        .filter_map(|f| obj.get(*f).and_then(Value::as_object))
                        .map(serde_json::Map::len)
                        .sum::<usize>();
                    json!(n)
                }
                ("apiextensions.k8s.io", _, "Created At") => obj
                    .pointer("/metadata/creationTimestamp")
                    .cloned()
                    .unwrap_or(Value::Null),
                _ if c.json_path == ".metadata.creationTimestamp" && c.type_ == "date" => {
                    age_of(obj)
                }
                _ => cell(c, obj),
            }
        })
        .collect()
}

/// A Table of `objs`; `include_object` is `None`, `Object` or `Metadata` (default).
pub fn table(info: &ResourceInfo, objs: &[&Value], list_meta: Value, include: &str) -> Value {
    let mut cols = columns(info);
    if !info.custom && matches!(info.plural.as_str(), "configmaps" | "secrets") {
        let idx = cols.len() - 1;
        cols.insert(idx, col("Data", "string", "", "", 0));
    }
    let rows: Vec<Value> = objs
        .iter()
        .map(|o| {
            let mut row = json!({"cells": cells(info, &cols, o)});
            match include {
                "None" => {}
                "Object" => row["object"] = (*o).clone(),
                _ => row["object"] = partial_metadata(o),
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": cols.iter().map(|c| json!({
            // CRD columns keep their type; built-in printers call Age a string.
            "name": c.name, "type": if c.type_ == "date" && !info.custom { "string" } else { c.type_.as_str() },
            "format": c.format, "description": c.description, "priority": c.priority,
        })).collect::<Vec<_>>(),
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn paths() {
        let o = json!({"status": {"conditions": [{"type": "A", "status": "False"}, {"type": "Ready", "status": "True"}]}, "spec": {"l": [1, 2]}});
        assert_eq!(
            json_path(&o, ".status.conditions[?(@.type==\"Ready\")].status"),
            Some(&json!("True"))
        );
        assert_eq!(json_path(&o, ".spec.l[1]"), Some(&json!(2)));
        assert_eq!(json_path(&o, ".spec.missing"), None);
        assert!(wants_table(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
        ));
        assert!(!wants_table("application/json"));
    }
}
