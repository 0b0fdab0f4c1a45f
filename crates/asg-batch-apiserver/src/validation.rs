//! Thin adapter between the server and the CRD schema engine (`super::schema`).

use serde_json::Value;

use super::error::{ApiError, Cause};
use super::schema::{FieldError, StructuralSchema};

/// A compiled CRD version schema.
#[derive(Debug)]
pub struct CompiledSchema {
    inner: StructuralSchema,
}

fn to_cause(e: &FieldError) -> Cause {
    Cause::new(e.kind.reason(), e.field.clone(), e.error_body())
}

impl CompiledSchema {
    /// Whether the schema has any CEL rule (`x-kubernetes-validations`).
    pub fn has_rules(&self) -> bool {
        self.inner.has_rules()
    }

    /// Compile an `openAPIV3Schema`; errors name fields under the default schema path.
    pub fn compile(schema: &Value) -> Result<Self, Vec<Cause>> {
        StructuralSchema::compile(schema)
            .map(|inner| CompiledSchema { inner })
            .map_err(|es| es.iter().map(to_cause).collect())
    }

    /// Compile, naming errors under `path` (e.g. `spec.versions[0].schema.openAPIV3Schema`).
    pub fn compile_at(schema: &Value, path: &str) -> Result<Self, Vec<Cause>> {
        StructuralSchema::compile_at(schema, path)
            .map(|inner| CompiledSchema { inner })
            .map_err(|es| es.iter().map(to_cause).collect())
    }

    /// Remove fields the schema does not know; returns their paths (`spec.foo`).
    pub fn prune(&self, obj: &mut Value) -> Vec<String> {
        self.inner.prune(obj)
    }

    /// Apply `default` values.
    pub fn apply_defaults(&self, obj: &mut Value) {
        self.inner.apply_defaults(obj);
    }

    /// Validate `obj` (schema keywords and CEL rules); `old` on update.
    pub fn validate(&self, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
        self.inner.validate(obj, old).iter().map(to_cause).collect()
    }
}

/// The 422 error for validation causes.
pub fn invalid(group: &str, kind: &str, name: &str, causes: Vec<Cause>) -> ApiError {
    ApiError::invalid(group, kind, name, causes)
}

/// The 400 message for unknown fields under `fieldValidation=Strict`.
pub fn strict_message(kind: &str, version: &str, pruned: &[String]) -> String {
    super::schema::strict_decoding_message(kind, version, pruned)
}

/// The warning for one unknown field under `fieldValidation=Warn`.
pub fn unknown_field_warning(path: &str) -> String {
    super::schema::unknown_field_warning(path)
}

/// The `/openapi/v3/apis/{group}/{version}` document for the CRDs of one group version.
pub fn openapi_group_version(group: &str, version: &str, crds: &[Value]) -> Value {
    super::schema::openapi_v3_group_version(group, version, crds)
}

/// Hash of an OpenAPI document as served.
pub fn openapi_hash(doc: &Value) -> String {
    super::schema::openapi_v3_hash(doc)
}
