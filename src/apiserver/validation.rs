//! Thin adapter between the server and the CRD schema engine.
//!
//! TEMPORARY STAND-IN: until branch `schema` (`src/apiserver/schema/`) is merged, this
//! file carries a minimal local engine (pruning, defaults, `required` and `type` checks).
//! It is replaced by calls to `schema::StructuralSchema` on merge.

use serde_json::{Map, Value};

use super::error::{ApiError, Cause};

/// A compiled CRD version schema.
#[derive(Debug)]
pub struct CompiledSchema {
    schema: Value,
}

impl CompiledSchema {
    /// Compile an `openAPIV3Schema`; errors are CRD validation causes.
    pub fn compile(schema: &Value) -> Result<Self, Vec<Cause>> {
        if !schema.is_object() {
            return Err(vec![Cause::new(
                "FieldValueRequired",
                "spec.versions[0].schema.openAPIV3Schema",
                "Required value: schemas are required",
            )]);
        }
        Ok(CompiledSchema {
            schema: schema.clone(),
        })
    }

    /// Remove fields the schema does not know; returns their paths (`.spec.foo`).
    pub fn prune(&self, obj: &mut Value) -> Vec<String> {
        let mut removed = vec![];
        if let Value::Object(map) = obj {
            for (k, v) in map.iter_mut() {
                if k == "metadata" || k == "apiVersion" || k == "kind" {
                    continue;
                }
                if let Some(sub) = self.schema.pointer(&format!("/properties/{k}")) {
                    prune_rec(sub, v, &format!(".{k}"), &mut removed);
                }
            }
            let props = self.schema.get("properties").and_then(Value::as_object);
            let unknown: Vec<String> = map
                .keys()
                .filter(|k| {
                    !matches!(k.as_str(), "metadata" | "apiVersion" | "kind")
                        && !props.is_some_and(|p| p.contains_key(*k))
                })
                .cloned()
                .collect();
            if self.schema.get("x-kubernetes-preserve-unknown-fields") != Some(&Value::Bool(true))
            {
                for k in unknown {
                    map.remove(&k);
                    removed.push(format!(".{k}"));
                }
            }
        }
        removed
    }

    /// Apply `default` values.
    pub fn apply_defaults(&self, obj: &mut Value) {
        defaults_rec(&self.schema, obj);
    }

    /// Validate `obj` (required + type).
    pub fn validate(&self, obj: &Value, _old: Option<&Value>) -> Vec<Cause> {
        let mut errs = vec![];
        if let Value::Object(map) = obj {
            let props = self.schema.get("properties").and_then(Value::as_object);
            for (k, v) in map {
                if k == "metadata" || k == "apiVersion" || k == "kind" {
                    continue;
                }
                if let Some(sub) = props.and_then(|p| p.get(k)) {
                    validate_rec(sub, v, k, &mut errs);
                }
            }
            check_required(&self.schema, map, "", &mut errs);
        }
        errs
    }
}

/// The 422 error for validation causes.
pub fn invalid(group: &str, kind: &str, name: &str, causes: Vec<Cause>) -> ApiError {
    ApiError::invalid(group, kind, name, causes)
}

/// The `/openapi/v3/apis/{group}/{version}` document for the CRDs of one group version.
pub fn openapi_group_version(group: &str, version: &str, crds: &[Value]) -> Value {
    super::openapi::fallback_group_version(group, version, crds)
}

fn prune_rec(schema: &Value, v: &mut Value, path: &str, removed: &mut Vec<String>) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match v {
        Value::Object(map) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                let keys: Vec<String> = map.keys().cloned().collect();
                for k in keys {
                    if let Some(sub) = props.get(&k) {
                        if let Some(child) = map.get_mut(&k) {
                            prune_rec(sub, child, &format!("{path}.{k}"), removed);
                        }
                    } else {
                        map.remove(&k);
                        removed.push(format!("{path}.{k}"));
                    }
                }
            } else if let Some(ap) = schema.get("additionalProperties").filter(|a| a.is_object())
            {
                for (k, child) in map.iter_mut() {
                    prune_rec(ap, child, &format!("{path}.{k}"), removed);
                }
            }
        }
        Value::Array(items) => {
            if let Some(sub) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune_rec(sub, item, &format!("{path}[{i}]"), removed);
                }
            }
        }
        _ => {}
    }
}

fn defaults_rec(schema: &Value, v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, sub) in props {
                    if !map.contains_key(k) {
                        if let Some(d) = sub.get("default") {
                            map.insert(k.clone(), d.clone());
                        }
                    }
                    if let Some(child) = map.get_mut(k) {
                        defaults_rec(sub, child);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(sub) = schema.get("items") {
                for item in items {
                    defaults_rec(sub, item);
                }
            }
        }
        _ => {}
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn validate_rec(schema: &Value, v: &Value, path: &str, errs: &mut Vec<Cause>) {
    if v.is_null() && schema.get("nullable") == Some(&Value::Bool(true)) {
        return;
    }
    if let Some(t) = schema.get("type").and_then(Value::as_str) {
        let actual = type_name(v);
        let ok = t == actual || (t == "number" && actual == "integer");
        let int_or_string = schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
        if !ok && !int_or_string {
            errs.push(Cause::new(
                "FieldValueTypeInvalid",
                path,
                format!("Invalid value: \"{actual}\": {path} in body must be of type {t}: \"{actual}\""),
            ));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(v) {
            let list: Vec<String> = allowed.iter().map(|a| a.to_string()).collect();
            errs.push(Cause::new(
                "FieldValueNotSupported",
                path,
                format!("Unsupported value: {v}: supported values: {}", list.join(", ")),
            ));
        }
    }
    match v {
        Value::Object(map) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, child) in map {
                    if let Some(sub) = props.get(k) {
                        validate_rec(sub, child, &format!("{path}.{k}"), errs);
                    }
                }
            }
            check_required(schema, map, path, errs);
        }
        Value::Array(items) => {
            if let Some(sub) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    validate_rec(sub, item, &format!("{path}[{i}]"), errs);
                }
            }
        }
        _ => {}
    }
}

fn check_required(schema: &Value, map: &Map<String, Value>, path: &str, errs: &mut Vec<Cause>) {
    for r in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(r) = r.as_str() {
            if !map.contains_key(r) {
                let field = if path.is_empty() {
                    r.to_string()
                } else {
                    format!("{path}.{r}")
                };
                errs.push(Cause::new("FieldValueRequired", field, "Required value"));
            }
        }
    }
}
