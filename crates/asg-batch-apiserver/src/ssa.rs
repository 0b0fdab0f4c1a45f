//! Field ownership (`metadata.managedFields`, FieldsV1) and server-side apply.
//!
//! A field set is a set of paths; a path is a list of FieldsV1 path elements
//! (`f:name`, `k:{"uid":"..."}`, `v:"value"`). Lists follow the schema's
//! `x-kubernetes-list-type` (atomic by default, `set`, `map` with
//! `x-kubernetes-list-map-keys`); `metadata.ownerReferences` is a map keyed by `uid`
//! and `metadata.finalizers` a set, as in kube-apiserver.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use super::error::{ApiError, ApiResult};

/// A path of FieldsV1 elements.
pub type FPath = Vec<String>;
/// A set of owned paths.
pub type FieldSet = BTreeSet<FPath>;

/// The schema context used to classify lists and maps.
#[derive(Clone, Copy)]
pub struct SchemaCtx<'a> {
    /// The CRD version's openAPIV3Schema (None for built-ins).
    pub root: Option<&'a Value>,
}

#[derive(Debug, Clone, PartialEq)]
enum ListKind {
    Atomic,
    Set,
    Map(Vec<String>),
}

fn list_kind(schema: Option<&Value>, dotted: &str) -> ListKind {
    match dotted {
        ".metadata.ownerReferences" => return ListKind::Map(vec!["uid".into()]),
        ".metadata.finalizers" => return ListKind::Set,
        _ => {}
    }
    let Some(s) = schema else {
        return ListKind::Atomic;
    };
    match s.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") => ListKind::Set,
        Some("map") => ListKind::Map(
            s.get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|k| k.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
        ),
        _ => ListKind::Atomic,
    }
}

fn is_atomic_map(schema: Option<&Value>) -> bool {
    schema
        .and_then(|s| s.get("x-kubernetes-map-type"))
        .and_then(Value::as_str)
        == Some("atomic")
}

fn is_granular_map(schema: Option<&Value>, dotted: &str) -> bool {
    matches!(
        dotted,
        ".metadata.labels" | ".metadata.annotations" | ".data" | ".binaryData" | ".stringData"
    ) || schema
        .and_then(|s| s.get("additionalProperties"))
        .is_some_and(Value::is_object)
}

fn child_schema<'a>(schema: Option<&'a Value>, field: &str) -> Option<&'a Value> {
    let s = schema?;
    s.get("properties")
        .and_then(|p| p.get(field))
        .or_else(|| s.get("additionalProperties").filter(|a| a.is_object()))
}

fn items_schema(schema: Option<&Value>) -> Option<&Value> {
    schema?.get("items")
}

fn key_element(item: &Value, keys: &[String]) -> Option<String> {
    let mut parts = vec![];
    for k in keys {
        let v = item.get(k)?;
        parts.push(format!("{}:{}", Value::String(k.clone()), v));
    }
    Some(format!("k:{{{}}}", parts.join(",")))
}

/// The fields of an object that a manager can own: everything except apiVersion, kind,
/// the server-set parts of metadata, and status (or only status for the subresource).
pub fn fields_of(obj: &Value, ctx: SchemaCtx<'_>, status_only: Option<bool>) -> FieldSet {
    fields_of_with(obj, ctx, status_only, None, None)
}

/// [`fields_of`], and into `extra` the paths an Update also owns because it adds them:
/// every (non-atomic, non-empty) map holding fields and every non-empty set or map list
/// (`"."` in FieldsV1); an Apply owns only what it sets. One walk for both.
///
/// With `unless_in`, the fields (top-level, or of `metadata`) whose value is the same
/// there are left out: what an update compares of two objects is only what differs.
fn fields_of_with(
    obj: &Value,
    ctx: SchemaCtx<'_>,
    status_only: Option<bool>,
    mut extra: Option<&mut FieldSet>,
    unless_in: Option<&Value>,
) -> FieldSet {
    let mut out = FieldSet::new();
    let Some(m) = obj.as_object() else {
        return out;
    };
    let other_md = unless_in.and_then(|o| o.get("metadata"));
    for (k, v) in m {
        if k != "metadata" && unless_in.and_then(|o| o.get(k)) == Some(v) {
            continue;
        }
        match k.as_str() {
            "apiVersion" | "kind" => continue,
            "status" if status_only == Some(false) => continue,
            "metadata" => {
                if status_only == Some(true) {
                    continue;
                }
                if let Some(md) = v.as_object() {
                    for (mk, mv) in md {
                        if matches!(
                            mk.as_str(),
                            "labels" | "annotations" | "finalizers" | "ownerReferences"
                        ) && other_md.and_then(|o| o.get(mk)) != Some(mv)
                        {
                            let mut p = vec!["f:metadata".to_string(), format!("f:{mk}")];
                            let dotted = format!(".metadata.{mk}");
                            walk(mv, None, &mut p, &dotted, extra.as_deref_mut(), &mut out);
                        }
                    }
                }
                continue;
            }
            _ if status_only == Some(true) && k != "status" => continue,
            _ => {}
        }
        let mut p = vec![format!("f:{k}")];
        walk(
            v,
            child_schema(ctx.root, k),
            &mut p,
            &format!(".{k}"),
            extra.as_deref_mut(),
            &mut out,
        );
    }
    out
}

/// Like structured-merge-diff's `ToFieldSet`: leaves, atomic values, list items, empty
/// maps and the (map) values of granular maps, whose keys are not declared fields; the
/// containers an Update adds into `extra` (see [`fields_of_with`]).
fn walk(
    v: &Value,
    schema: Option<&Value>,
    path: &mut FPath,
    dotted: &str,
    mut extra: Option<&mut FieldSet>,
    out: &mut FieldSet,
) {
    match v {
        Value::Object(m) if !is_atomic_map(schema) => {
            if m.is_empty() {
                out.insert(path.clone());
            } else if let Some(x) = extra.as_deref_mut() {
                x.insert(path.clone());
            }
            let granular = is_granular_map(schema, dotted);
            for (k, child) in m {
                path.push(format!("f:{k}"));
                if granular {
                    out.insert(path.clone());
                }
                walk(
                    child,
                    child_schema(schema, k),
                    path,
                    &format!("{dotted}.{k}"),
                    extra.as_deref_mut(),
                    out,
                );
                path.pop();
            }
        }
        Value::Array(items) => match list_kind(schema, dotted) {
            ListKind::Atomic => {
                out.insert(path.clone());
            }
            ListKind::Set => {
                if let Some(x) = extra.filter(|_| !items.is_empty()) {
                    x.insert(path.clone());
                }
                for it in items {
                    path.push(format!("v:{it}"));
                    out.insert(path.clone());
                    path.pop();
                }
            }
            ListKind::Map(keys) => {
                if let Some(x) = extra.as_deref_mut().filter(|_| !items.is_empty()) {
                    x.insert(path.clone());
                }
                let isch = items_schema(schema);
                for it in items {
                    let Some(ke) = key_element(it, &keys) else {
                        continue;
                    };
                    path.push(ke);
                    out.insert(path.clone());
                    if let Some(m) = it.as_object() {
                        for (k, child) in m {
                            path.push(format!("f:{k}"));
                            walk(
                                child,
                                child_schema(isch, k),
                                path,
                                &format!("{dotted}[].{k}"),
                                extra.as_deref_mut(),
                                out,
                            );
                            path.pop();
                        }
                    }
                    path.pop();
                }
            }
        },
        _ => {
            out.insert(path.clone());
        }
    }
}

/// structured-merge-diff's "duplicate entries for key" errors: list-map items with the
/// same key (`.status.attempts: duplicate entries for key [attempt=3]`).
pub fn duplicate_keys(obj: &Value, ctx: SchemaCtx<'_>) -> Vec<String> {
    // `dotted`: a buffer extended for each child and cut back (nothing allocated per
    // field).
    fn go(v: &Value, schema: Option<&Value>, dotted: &mut String, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, c) in m {
                    if dotted.is_empty() && k == "metadata" {
                        continue;
                    }
                    let len = dotted.len();
                    dotted.push('.');
                    dotted.push_str(k);
                    go(c, child_schema(schema, k), dotted, out);
                    dotted.truncate(len);
                }
            }
            Value::Array(items) => {
                if let ListKind::Map(keys) = list_kind(schema, dotted) {
                    let mut sorted = keys.clone();
                    sorted.sort();
                    let mut seen = std::collections::HashSet::new();
                    for it in items {
                        let k = sorted
                            .iter()
                            .map(|k| format!("{k}={}", it.get(k).unwrap_or(&Value::Null)))
                            .collect::<Vec<_>>()
                            .join(",");
                        let line = format!("{dotted}: duplicate entries for key [{k}]");
                        if !seen.insert(k) && !out.contains(&line) {
                            out.push(line);
                        }
                    }
                }
                let isch = items_schema(schema);
                let len = dotted.len();
                dotted.push_str("[]");
                for it in items {
                    go(it, isch, dotted, out);
                }
                dotted.truncate(len);
            }
            _ => {}
        }
    }
    let mut out = vec![];
    go(obj, ctx.root, &mut String::new(), &mut out);
    out
}

/// The value at a path, if present.
pub fn value_at<'a, S: AsRef<str>>(obj: &'a Value, path: &[S]) -> Option<&'a Value> {
    path.iter().try_fold(obj, |cur, el| step(cur, el.as_ref()))
}

/// The child of `cur` that the FieldsV1 path element `el` names, if present.
fn step<'a>(cur: &'a Value, el: &str) -> Option<&'a Value> {
    if let Some(f) = el.strip_prefix("f:") {
        cur.get(f)
    } else if let Some(k) = el.strip_prefix("k:") {
        let keys: Map<String, Value> = serde_json::from_str(k).ok()?;
        cur.as_array()?
            .iter()
            .find(|it| keys.iter().all(|(kk, kv)| it.get(kk) == Some(kv)))
    } else if let Some(vs) = el.strip_prefix("v:") {
        let want: Value = serde_json::from_str(vs).ok()?;
        cur.as_array()?.iter().find(|it| **it == want)
    } else {
        None
    }
}

fn remove_at(obj: &mut Value, path: &[String]) {
    let Some((last, parent_path)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for el in parent_path {
        let next = if let Some(f) = el.strip_prefix("f:") {
            cur.get_mut(f)
        } else if let Some(k) = el.strip_prefix("k:") {
            let Ok(keys) = serde_json::from_str::<Map<String, Value>>(k) else {
                return;
            };
            cur.as_array_mut().and_then(|a| {
                a.iter_mut()
                    .find(|it| keys.iter().all(|(kk, kv)| it.get(kk) == Some(kv)))
            })
        } else {
            None
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let Some(f) = last.strip_prefix("f:") {
        if let Some(m) = cur.as_object_mut() {
            m.remove(f);
        }
    } else if let Some(k) = last.strip_prefix("k:") {
        if let (Ok(keys), Some(a)) = (
            serde_json::from_str::<Map<String, Value>>(k),
            cur.as_array_mut(),
        ) {
            a.retain(|it| !keys.iter().all(|(kk, kv)| it.get(kk) == Some(kv)));
        }
    } else if let Some(vs) = last.strip_prefix("v:") {
        if let (Ok(want), Some(a)) = (serde_json::from_str::<Value>(vs), cur.as_array_mut()) {
            a.retain(|it| *it != want);
        }
    }
}

/// Render a path like kube-apiserver does in conflict messages: `.spec.containers[name="x"].image`.
pub fn path_string(path: &[String]) -> String {
    let mut s = String::new();
    for el in path {
        if let Some(f) = el.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = el.strip_prefix("k:") {
            let keys: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            let parts: Vec<String> = keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
            s.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(v) = el.strip_prefix("v:") {
            s.push_str(&format!("[={v}]"));
        }
    }
    s
}

/// Encode a field set as a FieldsV1 object (built in place: a path element is copied
/// once, when its node is made; a member with children gets `"."`).
pub fn to_fields_v1(set: &FieldSet) -> Value {
    fn node<'a>(
        root: &'a mut Map<String, Value>,
        path: &[String],
    ) -> Option<&'a mut Map<String, Value>> {
        let mut m = root;
        for el in path {
            if !m.contains_key(el.as_str()) {
                m.insert(el.clone(), Value::Object(Map::new()));
            }
            m = m.get_mut(el.as_str())?.as_object_mut()?;
        }
        Some(m)
    }
    let mut root = Map::new();
    for p in set {
        node(&mut root, p);
    }
    for p in set {
        if let Some(m) = node(&mut root, p) {
            if !m.is_empty() {
                m.insert(".".into(), json!({}));
            }
        }
    }
    Value::Object(root)
}

/// Decode a FieldsV1 object.
pub fn from_fields_v1(v: &Value) -> FieldSet {
    fn dec(v: &Value, prefix: &mut FPath, out: &mut FieldSet) {
        let Some(m) = v.as_object() else {
            return;
        };
        if m.is_empty() && !prefix.is_empty() {
            out.insert(prefix.clone());
        }
        for (k, c) in m {
            if k == "." {
                out.insert(prefix.clone());
                continue;
            }
            prefix.push(k.clone());
            dec(c, prefix, out);
            prefix.pop();
        }
    }
    let mut out = FieldSet::new();
    dec(v, &mut vec![], &mut out);
    out
}

/// One managedFields entry.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Manager name.
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    /// apiVersion the fields refer to.
    pub api_version: String,
    /// RFC 3339 time of the last change.
    pub time: String,
    /// Subresource (`""` or `status`).
    pub subresource: String,
    /// Owned fields.
    pub fields: FieldSet,
}

impl Entry {
    fn to_json(&self) -> Value {
        let mut v = json!({
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "time": self.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": to_fields_v1(&self.fields),
        });
        if !self.subresource.is_empty() {
            v["subresource"] = json!(self.subresource);
        }
        v
    }
}

/// Parse `metadata.managedFields` of an object.
pub fn entries_of(obj: &Value) -> Vec<Entry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(entry_of).collect())
        .unwrap_or_default()
}

/// Parse one managedFields entry.
fn entry_of(e: &Value) -> Entry {
    Entry {
        fields: from_fields_v1(&e["fieldsV1"]),
        ..entry_head(e)
    }
}

/// One managedFields entry but its fields (left empty).
fn entry_head(e: &Value) -> Entry {
    Entry {
        manager: e["manager"].as_str().unwrap_or_default().to_string(),
        operation: e["operation"].as_str().unwrap_or("Update").to_string(),
        api_version: e["apiVersion"].as_str().unwrap_or_default().to_string(),
        time: e["time"].as_str().unwrap_or_default().to_string(),
        subresource: e["subresource"].as_str().unwrap_or_default().to_string(),
        fields: FieldSet::new(),
    }
}

/// Write entries into `metadata.managedFields` (dropping empty ones).
pub fn set_entries(obj: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(Entry::to_json)
        .collect();
    set_entry_values(obj, list);
}

/// Write encoded, non-empty entries into `metadata.managedFields` in kube-apiserver's
/// order: operation, time (to the second), manager, apiVersion, subresource.
fn set_entry_values(obj: &mut Value, mut list: Vec<Value>) {
    fn key(e: &Value) -> (&str, &str, &str, &str, &str) {
        let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or_default();
        let time = s("time");
        (
            s("operation"),
            time.get(..19).unwrap_or(time),
            s("manager"),
            s("apiVersion"),
            s("subresource"),
        )
    }
    list.sort_by(|p, q| key(p).cmp(&key(q)));
    if let Some(md) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            md.remove("managedFields");
        } else {
            md.insert("managedFields".into(), Value::Array(list));
        }
    }
}

/// Who is writing, for field ownership.
#[derive(Debug, Clone)]
pub struct Writer<'a> {
    /// Manager name.
    pub manager: &'a str,
    /// apiVersion of the request.
    pub api_version: &'a str,
    /// `""` or `status`.
    pub subresource: &'a str,
    /// Current time (RFC 3339).
    pub now: &'a str,
}

impl Writer<'_> {
    /// A managedFields entry of this writer for `operation` owning `fields`.
    fn entry(&self, operation: &str, fields: FieldSet) -> Entry {
        Entry {
            manager: self.manager.to_string(),
            operation: operation.into(),
            api_version: self.api_version.to_string(),
            time: self.now.to_string(),
            subresource: self.subresource.to_string(),
            fields,
        }
    }
}

fn status_filter(subresource: &str) -> Option<bool> {
    if subresource == "status" {
        Some(true)
    } else {
        None
    }
}

/// Record an Update operation by `w` that turned `old` into `new` (either may be absent
/// for creates). Writes the result into `new.metadata.managedFields`.
///
/// The entries this update takes nothing from (most of them: a status update touches
/// none of the spec's owners) are written back as they were stored (moved out of `new`,
/// which holds them when it is a copy of `old`'s), not decoded and encoded again
/// ([`keeps_all`]).
pub fn record_update(old: Option<&Value>, new: &mut Value, ctx: SchemaCtx<'_>, w: &Writer<'_>) {
    let filter = status_filter(w.subresource);
    // Only the fields that differ are compared: in the others nothing changes hands.
    let old_set = old
        .map(|o| fields_of_with(o, ctx, filter, None, Some(new)))
        .unwrap_or_default();
    // The maps this update adds are its own too (structured-merge-diff's Compare
    // reports them added).
    let mut containers = FieldSet::new();
    let new_set = fields_of_with(new, ctx, filter, Some(&mut containers), old);
    let changed: FieldSet = new_set
        .iter()
        .filter(|p| old.and_then(|o| value_at(o, p)) != value_at(new, p))
        .chain(
            containers
                .difference(&new_set)
                .filter(|p| old.and_then(|o| value_at(o, p)).is_none()),
        )
        .cloned()
        .collect();
    let removed: FieldSet = old_set.difference(&new_set).cloned().collect();
    let stored: &[Value] = old
        .and_then(|o| o.pointer("/metadata/managedFields"))
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice);
    // A client may not rewrite managedFields through an update; if it sent its own,
    // kube-apiserver would take them, but the common case is echoing them back (or a
    // copy of the old object carrying them): then they are moved out and kept as they
    // are where nothing changes them.
    let sent = new
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .and_then(|md| md.remove("managedFields"));
    let cleared = sent
        .as_ref()
        .and_then(Value::as_array)
        .is_some_and(Vec::is_empty);
    let mut reusable: Vec<Value> = match sent {
        Some(Value::Array(a)) if a.as_slice() == stored => a,
        _ => vec![],
    };
    let stored = if cleared { &[] } else { stored };
    // `fields_of(new, None)`, made when a path is first found absent (rarely: a removed
    // field).
    let mut all_new: Option<FieldSet> = None;
    let mut all_new_has = |p: &FPath| -> bool {
        all_new
            .get_or_insert_with(|| fields_of(new, ctx, None))
            .contains(p)
    };
    let is_writer = |e: &Value| {
        let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or_default();
        s("manager") == w.manager
            && e.get("operation")
                .and_then(Value::as_str)
                .unwrap_or("Update")
                == "Update"
            && s("subresource") == w.subresource
            && s("apiVersion") == w.api_version
    };
    // Each stored entry in its order, kept as stored (`Ok`) or decoded (`Err`); then a
    // new one for this writer.
    let mut list: Vec<Result<Value, Entry>> = Vec::with_capacity(stored.len() + 1);
    for (i, raw) in stored.iter().enumerate() {
        let extended = !changed.is_empty() && is_writer(raw);
        if !extended && !reusable.is_empty() && keeps_all(&raw["fieldsV1"], new, &removed, &changed)
        {
            list.push(Ok(std::mem::take(&mut reusable[i])));
            continue;
        }
        let mut e = entry_of(raw);
        e.fields
            .retain(|p| !removed.contains(p) && !changed.contains(p));
        // drop ownership of paths that disappeared
        e.fields
            .retain(|p| value_at(new, p).is_some() || all_new_has(p));
        list.push(Err(e));
    }
    if !changed.is_empty() {
        match list.iter_mut().find_map(|e| match e {
            Err(e)
                if e.manager == w.manager
                    && e.operation == "Update"
                    && e.subresource == w.subresource
                    && e.api_version == w.api_version =>
            {
                Some(e)
            }
            _ => None,
        }) {
            Some(e) => {
                e.fields.extend(changed);
                e.time = w.now.to_string();
            }
            None => list.push(Err(w.entry("Update", changed))),
        }
    }
    let list = list
        .into_iter()
        .filter_map(|e| match e {
            Ok(v) => Some(v),
            Err(e) => (!e.fields.is_empty()).then(|| e.to_json()),
        })
        .collect();
    set_entry_values(new, list);
}

/// Whether an update keeps every field of the stored FieldsV1 `fv1` with its owner: none
/// is `removed` or `changed`, and each is still in `new` (then the entry is written back
/// as it is). Walks the encoding with the object; nothing is decoded. False for an
/// encoding that owns nothing (such entries are dropped).
fn keeps_all(fv1: &Value, new: &Value, removed: &FieldSet, changed: &FieldSet) -> bool {
    fn hit(set: &FieldSet, path: &[&str]) -> bool {
        if set.len() <= 16 {
            set.iter()
                .any(|p| p.iter().map(String::as_str).eq(path.iter().copied()))
        } else {
            set.contains(&path.iter().map(|s| (*s).to_string()).collect::<FPath>())
        }
    }
    fn go<'a>(
        node: &'a Map<String, Value>,
        at: Option<&Value>,
        path: &mut Vec<&'a str>,
        sets: [&FieldSet; 2],
        members: &mut usize,
    ) -> bool {
        // A member of the set: `"."`, or a leaf (an empty object below the root).
        let member = |path: &[&str], at: Option<&Value>, members: &mut usize| {
            *members += 1;
            at.is_some() && !sets.iter().any(|s| hit(s, path))
        };
        for (k, child) in node {
            if k == "." {
                if path.is_empty() || !member(path, at, members) {
                    return false;
                }
                continue;
            }
            let Some(child) = child.as_object() else {
                return false;
            };
            path.push(k);
            let next = at.and_then(|v| step(v, k));
            let ok = if child.is_empty() {
                member(path, next, members)
            } else {
                go(child, next, path, sets, members)
            };
            path.pop();
            if !ok {
                return false;
            }
        }
        true
    }
    let Some(root) = fv1.as_object() else {
        return false;
    };
    let mut members = 0;
    go(
        root,
        Some(new),
        &mut vec![],
        [removed, changed],
        &mut members,
    ) && members > 0
}

fn print_manager(e: &Entry) -> String {
    if e.operation == "Update" {
        format!("\"{}\" using {}", e.manager, e.api_version)
    } else {
        format!("\"{}\"", e.manager)
    }
}

/// Server-side apply of `applied` by `w` onto `live` (None when creating). Returns the
/// new object with managedFields set. Conflicts give 409 unless `force`.
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    ctx: SchemaCtx<'_>,
    w: &Writer<'_>,
    force: bool,
) -> ApiResult<Value> {
    let filter = if w.subresource == "status" {
        Some(true)
    } else {
        Some(false)
    };
    let applied_set = fields_of(applied, ctx, filter);
    let Some(live) = live else {
        let mut new = applied.clone();
        if w.subresource != "status" {
            if let Some(m) = new.as_object_mut() {
                m.remove("status");
            }
        }
        let entries = vec![w.entry("Apply", applied_set)];
        set_entries(&mut new, &entries);
        return Ok(new);
    };
    // The stored entries are read in place (`Fv1`): only this manager's, and those a
    // forced apply takes fields from, are decoded.
    let stored: &[Value] = live
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice);
    let heads: Vec<Entry> = stored.iter().map(entry_head).collect();
    let fv1 = |i: usize| Fv1(&stored[i]["fieldsV1"]);
    let is_me = |e: &Entry| {
        e.manager == w.manager && e.operation == "Apply" && e.subresource == w.subresource
    };
    // conflicts on leaves whose value would change
    let mut conflicts: Vec<(usize, FPath)> = vec![];
    for (i, e) in heads.iter().enumerate() {
        if is_me(e) {
            continue;
        }
        let theirs = fv1(i);
        for p in applied_set.iter().filter(|p| theirs.owns(p)) {
            let Some(av) = value_at(applied, p) else {
                continue;
            };
            if p.last()
                .is_some_and(|l| l.starts_with("k:") || l.starts_with("v:"))
            {
                continue;
            }
            if av.is_object() && av.as_object().is_some_and(|m| !m.is_empty()) {
                continue;
            }
            if value_at(live, p) != Some(av) {
                conflicts.push((i, p.clone()));
            }
        }
    }
    // Entries whose fields a forced apply took (decoded, re-encoded); the others are
    // written back as they were stored, not decoded and encoded again.
    let mut taken: Vec<Option<FieldSet>> = vec![None; heads.len()];
    if !conflicts.is_empty() {
        if !force {
            return Err(conflict_error(&heads, &conflicts));
        }
        for (i, p) in &conflicts {
            taken[*i]
                .get_or_insert_with(|| from_fields_v1(&stored[*i]["fieldsV1"]))
                .remove(p);
        }
    }
    let mut new = live.clone();
    // fields this manager applied before and no longer applies, owned by nobody else
    let prev: FieldSet = heads
        .iter()
        .position(is_me)
        .map(|i| from_fields_v1(&stored[i]["fieldsV1"]))
        .unwrap_or_default();
    let others = || {
        (0..heads.len())
            .filter(|i| !is_me(&heads[*i]))
            .map(|i| match &taken[i] {
                Some(f) => Owned::Decoded(f),
                None => Owned::Stored(fv1(i)),
            })
    };
    let mut to_remove: Vec<&FPath> = prev
        .iter()
        .filter(|p| !applied_set.contains(*p) && !others().any(|f| f.owns(p)))
        .collect();
    to_remove.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in to_remove {
        // containers still holding owned children stay
        let still_owned = owns_below(&applied_set, p) || others().any(|set| set.owns_below(p));
        if !still_owned {
            remove_at(&mut new, p);
            // like structured-merge-diff, do not leave an emptied list or map behind
            let mut parent = &p[..p.len().saturating_sub(1)];
            while parent.len() > 1 {
                let empty = match value_at(&new, parent) {
                    Some(Value::Array(a)) => a.is_empty(),
                    Some(Value::Object(m)) => m.is_empty(),
                    _ => false,
                };
                if !empty || applied_set.contains(parent) {
                    break;
                }
                remove_at(&mut new, parent);
                parent = &parent[..parent.len() - 1];
            }
        }
    }
    // merge applied into new
    let mut body = applied.clone();
    if let Some(m) = body.as_object_mut() {
        m.remove("apiVersion");
        m.remove("kind");
        if w.subresource == "status" {
            m.retain(|k, _| k == "status");
        } else {
            m.remove("status");
        }
        if let Some(md) = m.get_mut("metadata").and_then(Value::as_object_mut) {
            md.retain(|k, _| {
                matches!(
                    k.as_str(),
                    "labels" | "annotations" | "finalizers" | "ownerReferences"
                )
            });
        }
    }
    merge_into(&mut new, &body, ctx.root, "");
    // record ownership: the stored entries of the others as they were (moved out of the
    // copy of `live`), re-encoded only where a forced apply took fields from them
    let mut kept: Vec<Value> = match new
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .and_then(|md| md.remove("managedFields"))
    {
        Some(Value::Array(a)) if a.len() == heads.len() => a,
        _ => vec![Value::Null; heads.len()],
    };
    let mut list: Vec<Value> = Vec::with_capacity(heads.len() + 1);
    for (i, (e, raw)) in heads.iter().zip(kept.iter_mut()).enumerate() {
        if is_me(e) {
            continue;
        }
        match &taken[i] {
            Some(fields) if fields.is_empty() => {}
            Some(fields) => list.push(
                Entry {
                    fields: fields.clone(),
                    ..e.clone()
                }
                .to_json(),
            ),
            None if !fv1(i).owns_any() => {}
            None if raw.is_null() => list.push(entry_of(&stored[i]).to_json()),
            None => list.push(std::mem::take(raw)),
        }
    }
    let mine = w.entry("Apply", applied_set);
    if !mine.fields.is_empty() {
        list.push(mine.to_json());
    }
    set_entry_values(&mut new, list);
    Ok(new)
}

/// Whether `set` holds a path below `p` (the sorted set's paths starting with `p` follow
/// it).
fn owns_below(set: &FieldSet, p: &FPath) -> bool {
    set.range::<FPath, _>((std::ops::Bound::Excluded(p), std::ops::Bound::Unbounded))
        .next()
        .is_some_and(|q| q.starts_with(p))
}

/// A stored FieldsV1 encoding, queried in place (not decoded into a [`FieldSet`]).
#[derive(Clone, Copy)]
struct Fv1<'a>(&'a Value);

impl<'a> Fv1<'a> {
    /// The node of path `p`.
    fn node(self, p: &[String]) -> Option<&'a Map<String, Value>> {
        p.iter()
            .try_fold(self.0.as_object()?, |m, el| m.get(el.as_str())?.as_object())
    }

    /// Whether the set holds `p` (a leaf, or a node with `"."`).
    fn owns(self, p: &[String]) -> bool {
        !p.is_empty()
            && self
                .node(p)
                .is_some_and(|m| m.is_empty() || m.contains_key("."))
    }

    /// Whether the set holds a path below `p` (every child of a node holds one).
    fn owns_below(self, p: &[String]) -> bool {
        self.node(p).is_some_and(|m| m.keys().any(|k| k != "."))
    }

    /// Whether the set holds any path.
    fn owns_any(self) -> bool {
        self.0.as_object().is_some_and(|m| !m.is_empty())
    }
}

/// The fields of another manager in an apply: as stored, or decoded when a forced apply
/// took some of them.
enum Owned<'a> {
    Stored(Fv1<'a>),
    Decoded(&'a FieldSet),
}

impl Owned<'_> {
    fn owns(&self, p: &FPath) -> bool {
        match self {
            Owned::Stored(f) => f.owns(p),
            Owned::Decoded(s) => s.contains(p),
        }
    }

    fn owns_below(&self, p: &FPath) -> bool {
        match self {
            Owned::Stored(f) => f.owns_below(p),
            Owned::Decoded(s) => owns_below(s, p),
        }
    }
}

fn merge_into(target: &mut Value, src: &Value, schema: Option<&Value>, dotted: &str) {
    match (target.as_object_mut(), src) {
        (Some(tm), Value::Object(sm)) if !is_atomic_map(schema) => {
            for (k, sv) in sm {
                let cs = if dotted.is_empty() && k == "metadata" {
                    None
                } else {
                    child_schema(schema, k)
                };
                let cd = format!("{dotted}.{k}");
                match tm.get_mut(k) {
                    Some(tv) if !sv.is_null() => merge_into(tv, sv, cs, &cd),
                    _ => {
                        tm.insert(k.clone(), sv.clone());
                    }
                }
            }
        }
        _ => match (target.as_array_mut(), src, list_kind(schema, dotted)) {
            (Some(ta), Value::Array(sa), ListKind::Set) => {
                for it in sa {
                    if !ta.contains(it) {
                        ta.push(it.clone());
                    }
                }
            }
            (Some(ta), Value::Array(sa), ListKind::Map(keys)) => {
                let isch = items_schema(schema);
                for it in sa {
                    let pos = ta.iter().position(|t| {
                        keys.iter()
                            .all(|k| t.get(k).is_some() && t.get(k) == it.get(k))
                    });
                    match pos {
                        Some(i) => merge_into(&mut ta[i], it, isch, &format!("{dotted}[]")),
                        None => ta.push(it.clone()),
                    }
                }
            }
            _ => *target = src.clone(),
        },
    }
}

fn conflict_error(entries: &[Entry], conflicts: &[(usize, FPath)]) -> ApiError {
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|(i, p)| {
            json!({
                "reason": "FieldManagerConflict",
                "message": format!("conflict with {}", print_manager(&entries[*i])),
                "field": path_string(p),
            })
        })
        .collect();
    let message = if conflicts.len() == 1 {
        let (i, p) = &conflicts[0];
        format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            print_manager(&entries[*i]),
            path_string(p)
        )
    } else {
        let mut by: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (i, p) in conflicts {
            by.entry(print_manager(&entries[*i]))
                .or_default()
                .push(path_string(p));
        }
        let mut lines = vec![];
        for (m, paths) in by {
            lines.push(format!("conflicts with {m}:"));
            for p in paths {
                lines.push(format!("- {p}"));
            }
        }
        format!(
            "Apply failed with {} conflicts: {}",
            conflicts.len(),
            lines.join("\n")
        )
    };
    ApiError {
        code: 409,
        reason: "Conflict",
        message,
        details: Some(json!({"causes": causes})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w<'a>(m: &'a str) -> Writer<'a> {
        Writer {
            manager: m,
            api_version: "x/v1",
            subresource: "",
            now: "2026-01-01T00:00:00Z",
        }
    }

    #[test]
    fn duplicate_list_map_keys_are_named_by_their_path_at_any_depth() {
        let schema = json!({"type": "object", "properties": {
            "spec": {"type": "object", "properties": {"groups": {"type": "array", "items": {
                "type": "object", "properties": {"ports": {
                    "type": "array", "x-kubernetes-list-type": "map",
                    "x-kubernetes-list-map-keys": ["port", "name"],
                    "items": {"type": "object"}}}}}}},
            "status": {"type": "object", "properties": {"attempts": {
                "type": "array", "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["attempt"], "items": {"type": "object"}}}}}});
        let obj = json!({
            "metadata": {"ownerReferences": [{"uid": "u"}, {"uid": "u"}]},
            "spec": {"groups": [{"ports": [{"port": 1, "name": "a"}]},
                                {"ports": [{"port": 1, "name": "a"}, {"name": "a", "port": 1}, {"port": 2, "name": "a"}]}]},
            "status": {"attempts": [{"attempt": 3}, {"attempt": 3}, {"attempt": 3}]}});
        assert_eq!(
            duplicate_keys(
                &obj,
                SchemaCtx {
                    root: Some(&schema)
                }
            ),
            vec![
                ".spec.groups[].ports: duplicate entries for key [name=\"a\",port=1]",
                ".status.attempts: duplicate entries for key [attempt=3]",
            ]
        );
        assert!(
            duplicate_keys(
                &json!({"spec": {"groups": []}}),
                SchemaCtx {
                    root: Some(&schema)
                }
            )
            .is_empty()
        );
    }

    #[test]
    fn a_member_with_children_is_encoded_with_a_dot() {
        let set: FieldSet = [
            vec!["f:spec"],
            vec!["f:spec", "f:x"],
            vec!["f:spec", "f:l", "k:{\"name\":\"a\"}"],
            vec!["f:spec", "f:l", "k:{\"name\":\"a\"}", "f:v"],
            vec!["f:metadata", "f:labels", "f:a"],
        ]
        .into_iter()
        .map(|p| p.into_iter().map(str::to_string).collect())
        .collect();
        let enc = to_fields_v1(&set);
        assert_eq!(
            enc,
            json!({"f:metadata": {"f:labels": {"f:a": {}}},
                   "f:spec": {".": {}, "f:x": {}, "f:l": {"k:{\"name\":\"a\"}": {".": {}, "f:v": {}}}}})
        );
        assert_eq!(from_fields_v1(&enc), set);
        assert_eq!(to_fields_v1(&FieldSet::new()), json!({}));
    }

    #[test]
    fn fields_roundtrip() {
        let o = json!({"metadata": {"labels": {"a": "b"}, "finalizers": ["f"]}, "spec": {"x": 1, "l": [1, 2]}});
        let s = fields_of(&o, SchemaCtx { root: None }, None);
        let enc = to_fields_v1(&s);
        assert_eq!(
            enc,
            json!({"f:metadata": {"f:labels": {"f:a": {}}, "f:finalizers": {"v:\"f\"": {}}}, "f:spec": {"f:x": {}, "f:l": {}}})
        );
        assert_eq!(from_fields_v1(&enc), s);
    }

    #[test]
    fn an_apply_keeps_the_entries_it_does_not_change_and_reencodes_those_a_force_takes_from() {
        let ctx = SchemaCtx { root: None };
        let at = |m: &'static str, now: &'static str| Writer { now, ..w(m) };
        let a = apply(
            None,
            &json!({"metadata": {"name": "o"}, "spec": {"x": 1, "y": 1}}),
            ctx,
            &w("a"),
            false,
        )
        .unwrap();
        // "c" owns z through an update
        let mut c = a.clone();
        c["spec"]["z"] = json!(1);
        record_update(Some(&a), &mut c, ctx, &at("c", "2026-01-01T00:00:01Z"));
        let entry = |o: &Value, m: &str| {
            o["metadata"]["managedFields"]
                .as_array()
                .and_then(|l| l.iter().find(|e| e["manager"] == m))
                .cloned()
                .unwrap()
        };
        let c_entry = entry(&c, "c");
        // b forces x: a's entry loses x, c's is as it was, b's is new
        let b = apply(
            Some(&c),
            &json!({"metadata": {"name": "o"}, "spec": {"x": 2}}),
            ctx,
            &at("b", "2026-01-01T00:00:02Z"),
            true,
        )
        .unwrap();
        assert_eq!(b["spec"], json!({"x": 2, "y": 1, "z": 1}));
        assert_eq!(entry(&b, "c"), c_entry);
        assert_eq!(entry(&b, "a")["fieldsV1"], json!({"f:spec": {"f:y": {}}}));
        assert_eq!(entry(&b, "b")["fieldsV1"], json!({"f:spec": {"f:x": {}}}));
        // kube-apiserver's order: Apply before Update, then by time
        let order: Vec<&str> = b["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["manager"].as_str().unwrap())
            .collect();
        assert_eq!(order, ["a", "b", "c"]);
        // a re-applies only y: it keeps y, x stays b's
        let a2 = apply(
            Some(&b),
            &json!({"metadata": {"name": "o"}, "spec": {"y": 1}}),
            ctx,
            &at("a", "2026-01-01T00:00:03Z"),
            false,
        )
        .unwrap();
        assert_eq!(a2["spec"], json!({"x": 2, "y": 1, "z": 1}));
        assert_eq!(entry(&a2, "b"), entry(&b, "b"));
        assert_eq!(entry(&a2, "c"), c_entry);
    }

    #[test]
    fn an_update_keeps_the_entries_it_takes_nothing_from_and_takes_the_fields_it_changes() {
        let ctx = SchemaCtx { root: None };
        let by = |m: &'static str, sub: &'static str, now: &'static str| Writer {
            subresource: sub,
            now,
            ..w(m)
        };
        let entry = |o: &Value, m: &str| {
            o["metadata"]["managedFields"]
                .as_array()
                .and_then(|l| l.iter().find(|e| e["manager"] == m))
                .cloned()
        };
        let mut a = json!({"metadata": {"name": "o", "labels": {"k": "1", "l": "1"}},
                           "spec": {"x": 1, "y": {"z": 1}}});
        record_update(None, &mut a, ctx, &by("ctl", "", "2026-01-01T00:00:00Z"));
        let ctl = entry(&a, "ctl").unwrap();
        assert_eq!(
            ctl["fieldsV1"],
            json!({"f:metadata": {"f:labels": {".": {}, "f:k": {}, "f:l": {}}},
                   "f:spec": {".": {}, "f:x": {}, "f:y": {".": {}, "f:z": {}}}})
        );
        // a status update: the spec's owner as it was, the status's new
        let mut b = a.clone();
        b["status"] = json!({"phase": "Running"});
        record_update(
            Some(&a),
            &mut b,
            ctx,
            &by("agent", "status", "2026-01-01T00:00:01Z"),
        );
        assert_eq!(entry(&b, "ctl").unwrap(), ctl);
        let agent = entry(&b, "agent").unwrap();
        assert_eq!(agent["subresource"], "status");
        assert_eq!(
            agent["fieldsV1"],
            json!({"f:status": {".": {}, "f:phase": {}}})
        );
        // the same status again: nothing changes hands, the entry keeps its time
        let mut b2 = b.clone();
        record_update(
            Some(&b),
            &mut b2,
            ctx,
            &by("agent", "status", "2026-01-01T00:00:09Z"),
        );
        assert_eq!(
            b2["metadata"]["managedFields"],
            b["metadata"]["managedFields"]
        );
        // a label changed and one removed: their owner loses them, the others are kept
        let mut c = b.clone();
        c["metadata"]["labels"] = json!({"k": "2"});
        record_update(
            Some(&b),
            &mut c,
            ctx,
            &by("lab", "", "2026-01-01T00:00:02Z"),
        );
        assert_eq!(
            entry(&c, "ctl").unwrap()["fieldsV1"],
            json!({"f:metadata": {"f:labels": {}},
                   "f:spec": {".": {}, "f:x": {}, "f:y": {".": {}, "f:z": {}}}})
        );
        assert_eq!(entry(&c, "ctl").unwrap()["time"], ctl["time"]);
        assert_eq!(entry(&c, "agent").unwrap(), agent);
        assert_eq!(
            entry(&c, "lab").unwrap()["fieldsV1"],
            json!({"f:metadata": {"f:labels": {"f:k": {}}}})
        );
        // a map emptied: its owner no longer owns it or what it held, its writer does
        let mut d = c.clone();
        d["spec"]["y"] = json!({});
        record_update(Some(&c), &mut d, ctx, &by("ed", "", "2026-01-01T00:00:03Z"));
        assert_eq!(
            entry(&d, "ctl").unwrap()["fieldsV1"],
            json!({"f:metadata": {"f:labels": {}}, "f:spec": {".": {}, "f:x": {}}})
        );
        assert_eq!(
            entry(&d, "ed").unwrap()["fieldsV1"],
            json!({"f:spec": {"f:y": {}}})
        );
        // managedFields sent as written by another client are not taken; an empty list
        // clears them
        let mut e = d.clone();
        e["metadata"]["managedFields"] = json!([{"manager": "forged", "operation": "Update",
            "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:x": {}}}}]);
        record_update(Some(&d), &mut e, ctx, &by("ed", "", "2026-01-01T00:00:04Z"));
        assert_eq!(
            e["metadata"]["managedFields"],
            d["metadata"]["managedFields"]
        );
        let mut f = d.clone();
        f["metadata"]["managedFields"] = json!([]);
        f["spec"]["x"] = json!(2);
        record_update(Some(&d), &mut f, ctx, &by("ed", "", "2026-01-01T00:00:05Z"));
        let managers: Vec<&str> = f["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["manager"].as_str().unwrap())
            .collect();
        assert_eq!(managers, ["ed"]);
    }

    #[test]
    fn apply_conflict_and_force() {
        let ctx = SchemaCtx { root: None };
        let a = apply(
            None,
            &json!({"metadata": {"name": "o"}, "spec": {"x": 1, "y": 1}}),
            ctx,
            &w("a"),
            false,
        )
        .unwrap();
        let err = apply(
            Some(&a),
            &json!({"metadata": {"name": "o"}, "spec": {"x": 2}}),
            ctx,
            &w("b"),
            false,
        )
        .unwrap_err();
        assert_eq!(err.code, 409);
        assert_eq!(
            err.message,
            "Apply failed with 1 conflict: conflict with \"a\": .spec.x"
        );
        // same value: shared ownership, no conflict
        let b = apply(
            Some(&a),
            &json!({"metadata": {"name": "o"}, "spec": {"x": 1}}),
            ctx,
            &w("b"),
            false,
        )
        .unwrap();
        // a stops applying y and x: y removed, x stays (b owns it)
        let c = apply(
            Some(&b),
            &json!({"metadata": {"name": "o"}, "spec": {}}),
            ctx,
            &w("a"),
            false,
        )
        .unwrap();
        assert_eq!(c["spec"], json!({"x": 1}));
        let d = apply(
            Some(&c),
            &json!({"metadata": {"name": "o"}, "spec": {"x": 5}}),
            ctx,
            &w("a"),
            true,
        )
        .unwrap();
        assert_eq!(d["spec"]["x"], 5);
    }
}
