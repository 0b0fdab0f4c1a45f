//! API errors rendered as `meta.k8s.io/v1` `Status` objects, with kube-apiserver's
//! reasons, codes and message wording.

use serde_json::{Value, json};

/// An error returned by an API request; always rendered as a `kind: Status` body.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// Machine-readable reason (`NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, ...).
    pub reason: &'static str,
    /// Human-readable message, worded like kube-apiserver's.
    pub message: String,
    /// `details` of the Status, if any.
    pub details: Option<Value>,
}

/// Identifies an object in error messages: resource (plural), group, name.
#[derive(Debug, Clone, Copy)]
pub struct ObjRef<'a> {
    /// Plural resource name, e.g. `batchjobs`.
    pub plural: &'a str,
    /// API group (`""` for core).
    pub group: &'a str,
    /// Object name.
    pub name: &'a str,
}

impl ObjRef<'_> {
    /// `batchjobs.asgbatch.io` or `configmaps` for the core group.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
    fn details(&self) -> Value {
        let mut d = json!({"name": self.name, "kind": self.plural});
        if !self.group.is_empty() {
            d["group"] = json!(self.group);
        }
        d
    }
}

impl ApiError {
    /// A plain error without details.
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// 404 `<resource> "<name>" not found`.
    pub fn not_found(r: ObjRef<'_>) -> Self {
        ApiError {
            code: 404,
            reason: "NotFound",
            message: format!("{} \"{}\" not found", r.qualified(), r.name),
            details: Some(r.details()),
        }
    }

    /// 404 for a path that names no known resource.
    pub fn path_not_found() -> Self {
        ApiError {
            code: 404,
            reason: "NotFound",
            message: "the server could not find the requested resource".into(),
            details: Some(json!({})),
        }
    }

    /// 409 `<resource> "<name>" already exists`.
    pub fn already_exists(r: ObjRef<'_>) -> Self {
        ApiError {
            code: 409,
            reason: "AlreadyExists",
            message: format!("{} \"{}\" already exists", r.qualified(), r.name),
            details: Some(r.details()),
        }
    }

    /// 409 Conflict for a stale resourceVersion.
    pub fn conflict_modified(r: ObjRef<'_>) -> Self {
        Self::conflict(
            r,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 409 `Operation cannot be fulfilled on <resource> "<name>": <why>`.
    pub fn conflict(r: ObjRef<'_>, why: &str) -> Self {
        ApiError {
            code: 409,
            reason: "Conflict",
            message: format!(
                "Operation cannot be fulfilled on {} \"{}\": {}",
                r.qualified(),
                r.name,
                why
            ),
            details: Some(r.details()),
        }
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_allowed() -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
    }

    /// 410 Expired for a resourceVersion older than the retained history.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 413 RequestEntityTooLarge.
    pub fn too_large() -> Self {
        Self::new(413, "RequestEntityTooLarge", "the request is too large")
    }

    /// 415 UnsupportedMediaType.
    pub fn unsupported_media_type(got: &str, accepted: &[&str]) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: {} (got {got:?})",
                accepted.join(", ")
            ),
        )
    }

    /// 406 NotAcceptable.
    pub fn not_acceptable() -> Self {
        Self::new(
            406,
            "NotAcceptable",
            "only the following media types are accepted: application/json, application/yaml, application/json;as=Table;v=v1;g=meta.k8s.io",
        )
    }

    /// 500 InternalError.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {}", message.into()),
        )
    }

    /// These details' `kind` is `r`'s resource (plural) rather than the Kind, as in
    /// kube-apiserver's errors from the registry.
    pub fn with_details_kind(mut self, r: ObjRef<'_>) -> Self {
        if let Some(d) = self.details.as_mut() {
            d["kind"] = json!(r.plural);
        }
        self
    }

    /// 422 Invalid with causes. `kind` is the Kind (e.g. `BatchJob`).
    pub fn invalid(group: &str, kind: &str, name: &str, causes: Vec<Cause>) -> Self {
        let qualified = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        let mut texts: Vec<String> = vec![];
        for t in causes.iter().map(Cause::text) {
            if !texts.contains(&t) {
                texts.push(t);
            }
        }
        let body = if texts.len() == 1 {
            texts[0].clone()
        } else {
            format!("[{}]", texts.join(", "))
        };
        let mut details = json!({
            "kind": kind,
            "causes": causes.iter().map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field})).collect::<Vec<_>>(),
        });
        if !group.is_empty() {
            details["group"] = json!(group);
        }
        // Go's omitempty: an empty name is not shown.
        if !name.is_empty() {
            details["name"] = json!(name);
        }
        ApiError {
            code: 422,
            reason: "Invalid",
            message: format!("{qualified} \"{name}\" is invalid: {body}"),
            details: Some(details),
        }
    }

    /// Build from a full Status body (as produced by the schema engine's `invalid_status`).
    pub fn from_status(status: &Value) -> Self {
        let code = status
            .get("code")
            .and_then(Value::as_u64)
            .and_then(|c| u16::try_from(c).ok())
            .unwrap_or(422);
        let reason = match status.get("reason").and_then(Value::as_str) {
            Some("Invalid") | None => "Invalid",
            Some("BadRequest") => "BadRequest",
            Some(_) => "Invalid",
        };
        ApiError {
            code,
            reason,
            message: status
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("invalid object")
                .to_string(),
            details: status.get("details").cloned(),
        }
    }

    /// The `kind: Status` body.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        // Go's omitempty: kube-apiserver's bare 500s carry no reason.
        if self.reason.is_empty() {
            if let Some(m) = s.as_object_mut() {
                m.remove("reason");
            }
        }
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

/// One cause of a 422 Invalid error.
#[derive(Debug, Clone)]
pub struct Cause {
    /// `FieldValueRequired`, `FieldValueInvalid`, `FieldValueNotSupported`, ...
    pub reason: String,
    /// Cause message, e.g. `Required value`.
    pub message: String,
    /// Field path, e.g. `spec.queue`.
    pub field: String,
}

impl Cause {
    /// A cause.
    pub fn new(reason: &str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Cause {
            reason: reason.to_string(),
            field: field.into(),
            message: message.into(),
        }
    }
    /// `field: message` as printed in the Status message.
    pub fn text(&self) -> String {
        if self.field.is_empty() {
            self.message.clone()
        } else {
            format!("{}: {}", self.field, self.message)
        }
    }
}

/// Result alias for API operations.
pub type ApiResult<T> = Result<T, ApiError>;
