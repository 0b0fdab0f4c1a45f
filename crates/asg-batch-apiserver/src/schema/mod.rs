//! The CRD schema engine of the embedded API server: a pure, self-contained
//! implementation of what kube-apiserver does with a CRD version's
//! `schema.openAPIV3Schema`.
//!
//! Order of use for a create/update of a custom resource (as kube-apiserver):
//! 1. [`StructuralSchema::prune`] on the decoded body — the returned paths drive
//!    `fieldValidation`: `Strict` → 400 BadRequest with
//!    [`strict_decoding_message`]; `Warn` (kubectl's default is Strict, the
//!    server default is Warn) → one `Warning: 299 - "<msg>"` header per path
//!    with [`unknown_field_warning`]; `Ignore` → nothing.
//! 2. [`StructuralSchema::apply_defaults`] (also on objects read back from storage).
//! 3. [`StructuralSchema::validate`] with the old object on update (`None` on
//!    create); a non-empty result → 422 with [`invalid_status`]. Metadata
//!    (name format, labels…) is not validated here: append those errors first.
//!
//! [`openapi_v3_group_version`] and [`openapi_v3_index`] build the OpenAPI v3
//! documents `kubectl explain` and kubectl's field-validation probe read.
//!
//! # What is supported
//! - Schema keywords: `type`, `nullable`, `required`, `properties`,
//!   `additionalProperties` (schema or `true`), `items`, `enum`,
//!   `maximum`/`minimum` with `exclusiveMaximum`/`exclusiveMinimum`,
//!   `multipleOf`, `maxLength`/`minLength`, `pattern` (Rust `regex`, close to
//!   Go's RE2), `maxItems`/`minItems`, `maxProperties`/`minProperties`,
//!   `format` (date-time, date, byte, uuid/uuid3/4/5, ipv4, ipv6, cidr,
//!   hostname, email, mac; others pass as in Kubernetes), `default`,
//!   `allOf`/`anyOf`/`oneOf`/`not` (value validations only),
//!   `x-kubernetes-int-or-string`, `x-kubernetes-preserve-unknown-fields`,
//!   `x-kubernetes-embedded-resource`, `x-kubernetes-list-type`
//!   (atomic/set/map) with `x-kubernetes-list-map-keys`,
//!   `x-kubernetes-validations` (`rule`, `message`, `messageExpression`,
//!   `fieldPath`, `reason`, `optionalOldSelf`).
//! - CRD compile checks: missing/unknown `type`, non-object root,
//!   `$ref`/`definitions`/... forbidden, `uniqueItems: true` forbidden,
//!   properties with additionalProperties, invalid `pattern`, list-type
//!   consistency, defaults that do not validate, CEL rules that do not parse,
//!   call an unsupported function or select an undefined field.
//! - Validation ratcheting on update (errors in values equal to the
//!   correlated old value are dropped, not for transition rules), and CEL
//!   skipped after a blocking error, as kube-apiserver does.
//! - CEL: see the `cel` module: stdlib + macros, strings/lists/math
//!   extensions, optionals, Kubernetes quantity, regex, lists and sets
//!   libraries.
//!
//! # Not supported
//! - CEL `timestamp`/`duration` (so `format: date-time`/`duration` values are
//!   plain strings in CEL), `url`, `ip`, `cidr`, `semver`, `format.*`,
//!   authorizer; rules using them are refused when the CRD is created. No CEL
//!   cost estimation or runtime budget; no full CEL type-checking beyond field
//!   names.
//! - Conversion between versions (one schema per served version).
//!
//! Paths: errors on the object root use the field `<nil>`, like apimachinery.

pub(crate) mod cel;
mod compile;
mod defaults;
mod errors;
mod formats;
mod openapi;
mod prune;
mod quantity;
mod validate;

pub use errors::{
    BadValue, FieldError, FieldErrorKind, go_quote, invalid_status, strict_decoding_message,
    unknown_field_warning,
};

pub use openapi::{OpenApiIndexEntry, openapi_v3_group_version, openapi_v3_hash, openapi_v3_index};
pub use quantity::Quantity;

use compile::{Compiler, Node};

/// The path kube-apiserver names a v1 CRD's schema with when reporting
/// schema errors for the first version; use
/// [`StructuralSchema::compile_at`] to name another.
pub const DEFAULT_SCHEMA_PATH: &str = "spec.validation.openAPIV3Schema";

/// Compiled from a CRD version's `schema.openAPIV3Schema`.
#[derive(Debug)]
pub struct StructuralSchema {
    root: Node,
}

impl StructuralSchema {
    /// Compiles the schema, including every `x-kubernetes-validations` CEL
    /// rule. Errors are field errors under [`DEFAULT_SCHEMA_PATH`].
    pub fn compile(openapi_v3_schema: &serde_json::Value) -> Result<Self, Vec<FieldError>> {
        Self::compile_at(openapi_v3_schema, DEFAULT_SCHEMA_PATH)
    }

    /// Like [`StructuralSchema::compile`], naming errors under `path`
    /// (e.g. `spec.versions[0].schema.openAPIV3Schema`).
    pub fn compile_at(
        openapi_v3_schema: &serde_json::Value,
        path: &str,
    ) -> Result<Self, Vec<FieldError>> {
        let mut c = Compiler { errors: Vec::new() };
        let root = c.compile_root(openapi_v3_schema, path);
        if c.errors.is_empty() {
            Ok(StructuralSchema { root })
        } else {
            Err(c.errors)
        }
    }

    /// Removes fields not in the schema and returns their paths, sorted,
    /// without a leading dot (`spec.foo`, `spec.list[0].bar`, `metadata.foo`):
    /// exactly the text kube-apiserver puts in `unknown field "spec.foo"`.
    /// `apiVersion`, `kind` are kept; root `metadata` is pruned to ObjectMeta's fields.
    pub fn prune(&self, obj: &mut serde_json::Value) -> Vec<String> {
        prune::prune_root(&self.root, obj)
    }

    /// Applies `default`s, after dropping `null`s of non-nullable fields that
    /// have no default.
    pub fn apply_defaults(&self, obj: &mut serde_json::Value) {
        defaults::prune_nulls(&self.root, obj);
        defaults::default(&self.root, obj);
    }

    /// Whether the schema has any CEL rule (`x-kubernetes-validations`).
    pub fn has_rules(&self) -> bool {
        self.root.has_rules()
    }

    /// Validates `obj` (schema keywords, list types, CEL rules); `old` is the
    /// stored object on update (transition rules, ratcheting).
    pub fn validate(
        &self,
        obj: &serde_json::Value,
        old: Option<&serde_json::Value>,
    ) -> Vec<FieldError> {
        validate::validate(&self.root, obj, old)
    }
}

#[cfg(test)]
mod tests;
