//! Validation of manifests against the CRDs generated from the Rust types, the way an API
//! server would: the OpenAPI schema with a JSON-schema validator, then the CEL rules.

use asg_batch::api::crds;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// The schema of one kind, ready to validate.
pub struct KindSchema {
    openapi: Value,
    validator: jsonschema::Validator,
}

/// Schemas of every kind, by `kind`.
pub struct SchemaSet {
    kinds: BTreeMap<String, KindSchema>,
}

/// Rewrites OpenAPI v3 (`nullable`) into JSON Schema (`type: [T, "null"]`).
fn to_json_schema(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if map.get("nullable") == Some(&Value::Bool(true)) {
                if let Some(Value::String(t)) = map.get("type").cloned() {
                    map.insert("type".into(), serde_json::json!([t, "null"]));
                }
            }
            for child in map.values_mut() {
                to_json_schema(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(to_json_schema),
        _ => {}
    }
}

/// `/spec/dependsOn/0/jobName` → `spec.dependsOn[0].jobName`
fn pointer_to_field(pointer: &str) -> String {
    let mut out = String::new();
    for seg in pointer.split('/').filter(|s| !s.is_empty()) {
        if seg.chars().all(|c| c.is_ascii_digit()) {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(seg);
        }
    }
    out
}

impl SchemaSet {
    /// Builds the set from `asg_batch::api::crds::all()`.
    pub fn from_code() -> Self {
        let mut kinds = BTreeMap::new();
        for crd in crds::all() {
            let version = &crd.spec.versions[0];
            let openapi = serde_json::to_value(
                version
                    .schema
                    .as_ref()
                    .and_then(|s| s.open_api_v3_schema.as_ref())
                    .expect("every CRD has a schema"),
            )
            .expect("schema serialises");
            let mut json_schema = openapi.clone();
            to_json_schema(&mut json_schema);
            let validator =
                jsonschema::validator_for(&json_schema).expect("CRD schema is a valid JSON schema");
            kinds.insert(
                crd.spec.names.kind.clone(),
                KindSchema { openapi, validator },
            );
        }
        Self { kinds }
    }

    /// Validates one object; returns `field: message` lines, empty when valid.
    pub fn validate(&self, obj: &Value) -> Vec<String> {
        let Some(kind) = obj.get("kind").and_then(Value::as_str) else {
            return vec!["kind: Required value".into()];
        };
        let Some(schema) = self.kinds.get(kind) else {
            return vec![format!("kind: Unsupported value: {kind:?}")];
        };
        let mut errors: Vec<String> = schema
            .validator
            .iter_errors(obj)
            .map(|e| format!("{}: {}", pointer_to_field(e.instance_path().as_str()), e))
            .collect();
        if errors.is_empty() {
            if let Err(cel) = kube_cel::validate(&schema.openapi, obj, None) {
                errors.extend(cel.iter().map(std::string::ToString::to_string));
            }
        }
        errors
    }
}

/// Every YAML document in `path`, as JSON values.
pub fn read_documents(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            let v = serde_yaml::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("parse {}: {e}", path.display()));
            serde_json::to_value(v).expect("YAML to JSON")
        })
        .filter(|v| !v.is_null())
        .collect()
}

use serde::Deserialize;

/// `*.yaml` files directly in `dir`, sorted.
pub fn yaml_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}
