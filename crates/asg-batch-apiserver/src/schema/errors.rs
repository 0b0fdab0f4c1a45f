//! Field errors and Status bodies worded exactly as kube-apiserver words them
//! (`k8s.io/apimachinery/pkg/util/validation/field` and `pkg/api/errors`).

use serde_json::{Value, json};

/// The kind of a field error (`field.ErrorType` in apimachinery).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldErrorKind {
    /// `Invalid value`, reason `FieldValueInvalid`.
    Invalid,
    /// `Required value`, reason `FieldValueRequired`.
    Required,
    /// `Unsupported value`, reason `FieldValueNotSupported`.
    NotSupported,
    /// `Too long`, reason `FieldValueTooLong`.
    TooLong,
    /// `Too many`, reason `FieldValueTooMany`.
    TooMany,
    /// `Duplicate value`, reason `FieldValueDuplicate`.
    Duplicate,
    /// `Forbidden`, reason `FieldValueForbidden`.
    Forbidden,
    /// `Invalid value` with a type message, reason `FieldValueTypeInvalid`.
    TypeInvalid,
    /// `Internal error`, reason `InternalError`.
    Internal,
}

impl FieldErrorKind {
    /// The wording apimachinery's `ErrorType.String()` gives.
    pub fn as_str(&self) -> &'static str {
        match self {
            FieldErrorKind::Invalid | FieldErrorKind::TypeInvalid => "Invalid value",
            FieldErrorKind::Required => "Required value",
            FieldErrorKind::NotSupported => "Unsupported value",
            FieldErrorKind::TooLong => "Too long",
            FieldErrorKind::TooMany => "Too many",
            FieldErrorKind::Duplicate => "Duplicate value",
            FieldErrorKind::Forbidden => "Forbidden",
            FieldErrorKind::Internal => "Internal error",
        }
    }

    /// The Status cause `reason` (`metav1.CauseType`).
    pub fn reason(&self) -> &'static str {
        match self {
            FieldErrorKind::Invalid => "FieldValueInvalid",
            FieldErrorKind::Required => "FieldValueRequired",
            FieldErrorKind::NotSupported => "FieldValueNotSupported",
            FieldErrorKind::TooLong => "FieldValueTooLong",
            FieldErrorKind::TooMany => "FieldValueTooMany",
            FieldErrorKind::Duplicate => "FieldValueDuplicate",
            FieldErrorKind::Forbidden => "FieldValueForbidden",
            FieldErrorKind::TypeInvalid => "FieldValueTypeInvalid",
            FieldErrorKind::Internal => "InternalError",
        }
    }
}

/// The bad value an error shows, as Go's `%v`/`%q` would print it.
#[derive(Debug, Clone, PartialEq)]
pub enum BadValue {
    /// Not shown (`omitValue`, Required, Forbidden, TooLong).
    Omitted,
    /// A JSON value, printed like the Go value it decodes to.
    Json(Value),
    /// A value already rendered (e.g. a Go struct literal).
    Raw(String),
}

/// One cause of an Invalid (422) Status, as kube-apiserver builds it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", self.to_string_k8s())]
pub struct FieldError {
    /// The field path, e.g. `spec.retryStrategy.attempts`; `<nil>` for the object root.
    pub field: String,
    /// What kind of error this is.
    pub kind: FieldErrorKind,
    /// The detail, e.g. `spec.x in body should be less than or equal to 10`.
    pub message: String,
    /// The bad value shown after the kind.
    pub value: BadValue,
}

impl FieldError {
    /// Builds an error of any kind.
    pub fn new(
        field: impl Into<String>,
        kind: FieldErrorKind,
        value: BadValue,
        message: impl Into<String>,
    ) -> Self {
        FieldError {
            field: field.into(),
            kind,
            message: message.into(),
            value,
        }
    }

    /// `field.Invalid(path, value, detail)`.
    pub fn invalid(field: impl Into<String>, value: &Value, message: impl Into<String>) -> Self {
        Self::new(
            field,
            FieldErrorKind::Invalid,
            BadValue::Json(value.clone()),
            message,
        )
    }

    /// `field.Required(path, detail)`.
    pub fn required(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(field, FieldErrorKind::Required, BadValue::Omitted, message)
    }

    /// `field.Forbidden(path, detail)`.
    pub fn forbidden(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(field, FieldErrorKind::Forbidden, BadValue::Omitted, message)
    }

    /// `field.NotSupported(path, value, validValues)`.
    pub fn not_supported(field: impl Into<String>, value: &Value, valid: &[String]) -> Self {
        let detail = if valid.is_empty() {
            String::new()
        } else {
            let quoted: Vec<String> = valid.iter().map(|v| go_quote(v)).collect();
            format!("supported values: {}", quoted.join(", "))
        };
        Self::new(
            field,
            FieldErrorKind::NotSupported,
            BadValue::Json(value.clone()),
            detail,
        )
    }

    /// `field.TooLong(path, value, max)` (1.32+ wording).
    pub fn too_long(field: impl Into<String>, max: i64) -> Self {
        let msg = if max >= 0 {
            format!(
                "may not be more than {max} {}",
                if max == 1 { "byte" } else { "bytes" }
            )
        } else {
            "value is too long".to_string()
        };
        Self::new(field, FieldErrorKind::TooLong, BadValue::Omitted, msg)
    }

    /// `field.TooMany(path, actual, max)`.
    pub fn too_many(field: impl Into<String>, actual: i64, max: i64) -> Self {
        let msg = if max >= 0 {
            format!(
                "must have at most {max} {}",
                if max == 1 { "item" } else { "items" }
            )
        } else {
            "has too many items".to_string()
        };
        let value = if actual >= 0 {
            BadValue::Json(Value::from(actual))
        } else {
            BadValue::Omitted
        };
        Self::new(field, FieldErrorKind::TooMany, value, msg)
    }

    /// `field.Duplicate(path, value)`.
    pub fn duplicate(field: impl Into<String>, value: &Value) -> Self {
        Self::new(
            field,
            FieldErrorKind::Duplicate,
            BadValue::Json(value.clone()),
            "",
        )
    }

    /// `field.TypeInvalid(path, value, detail)`.
    pub fn type_invalid(
        field: impl Into<String>,
        value: &Value,
        message: impl Into<String>,
    ) -> Self {
        Self::new(
            field,
            FieldErrorKind::TypeInvalid,
            BadValue::Json(value.clone()),
            message,
        )
    }

    /// The part after `field: ` (apimachinery's `ErrorBody()`).
    pub fn error_body(&self) -> String {
        let mut s = match self.kind {
            FieldErrorKind::Required
            | FieldErrorKind::Forbidden
            | FieldErrorKind::TooLong
            | FieldErrorKind::Internal => self.kind.as_str().to_string(),
            _ => match &self.value {
                BadValue::Omitted => self.kind.as_str().to_string(),
                BadValue::Raw(r) => format!("{}: {r}", self.kind.as_str()),
                BadValue::Json(v) => format!("{}: {}", self.kind.as_str(), go_value(v)),
            },
        };
        if !self.message.is_empty() {
            s.push_str(": ");
            s.push_str(&self.message);
        }
        s
    }

    /// kube-apiserver's wording, e.g.
    /// `spec.retryStrategy.attempts: Invalid value: 11: spec.retryStrategy.attempts in body should be less than or equal to 10`.
    pub fn to_string_k8s(&self) -> String {
        format!("{}: {}", self.field, self.error_body())
    }

    /// The Status `details.causes[]` entry.
    pub fn cause(&self) -> Value {
        json!({
            "reason": self.kind.reason(),
            "message": self.error_body(),
            "field": self.field,
        })
    }
}

/// kube-apiserver's whole 422 Status body for `kind` `name` with these errors
/// (`apierrors.NewInvalid`).
pub fn invalid_status(group: &str, kind: &str, name: &str, errors: &[FieldError]) -> Value {
    let qualified = if group.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}.{group}")
    };
    let aggregate = match errors.len() {
        0 => String::new(),
        1 => errors[0].to_string_k8s(),
        _ => {
            let all: Vec<String> = dedup_messages(errors);
            if all.len() == 1 {
                all[0].clone()
            } else {
                format!("[{}]", all.join(", "))
            }
        }
    };
    let message = if aggregate.is_empty() {
        format!("{qualified} {} is invalid", go_quote(name))
    } else {
        format!("{qualified} {} is invalid: {aggregate}", go_quote(name))
    };
    let causes: Vec<Value> = errors.iter().map(FieldError::cause).collect();
    let mut details = serde_json::Map::new();
    if !name.is_empty() {
        details.insert("name".into(), Value::from(name));
    }
    details.insert("group".into(), Value::from(group));
    details.insert("kind".into(), Value::from(kind));
    details.insert("causes".into(), Value::Array(causes));
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "Invalid",
        "details": Value::Object(details),
        "code": 422,
    })
}

/// `utilerrors.NewAggregate` drops repeated messages (it builds a set while printing).
fn dedup_messages(errors: &[FieldError]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for e in errors {
        let m = e.to_string_k8s();
        if seen.insert(m.clone()) {
            out.push(m);
        }
    }
    out
}

/// The message of a Strict field validation failure on create/update
/// (400 BadRequest): `BatchJob in version "v1alpha1" cannot be handled as a BatchJob: strict decoding error: unknown field "spec.foo"`.
pub fn strict_decoding_message(kind: &str, version: &str, pruned: &[String]) -> String {
    let fields: Vec<String> = pruned.iter().map(|p| unknown_field_warning(p)).collect();
    format!(
        "{kind} in version {} cannot be handled as a {kind}: strict decoding error: {}",
        go_quote(version),
        fields.join(", ")
    )
}

/// The warning (or strict error item) for one pruned path: `unknown field "spec.foo"`.
pub fn unknown_field_warning(path: &str) -> String {
    format!("unknown field {}", go_quote(path.trim_start_matches('.')))
}

/// Go's `strconv.Quote`.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => {
                let n = c as u32;
                if n < 0x10000 {
                    out.push_str(&format!("\\u{n:04x}"));
                } else {
                    out.push_str(&format!("\\U{n:08x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Go's `%v` of a float64 (`strconv.FormatFloat(f, 'g', -1, 64)`).
pub fn go_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    if f == 0.0 {
        return if f.is_sign_negative() {
            "-0".into()
        } else {
            "0".into()
        };
    }
    // Shortest round-trip digits via Rust's `{:e}`.
    let e = format!("{f:e}");
    let Some((mant, exp)) = e.split_once('e') else {
        return e;
    };
    let exp: i32 = exp.parse().unwrap_or(0);
    let neg = mant.starts_with('-');
    let digits: String = mant.chars().filter(char::is_ascii_digit).collect();
    let sign = if neg { "-" } else { "" };
    if !(-4..6).contains(&exp) {
        // %e form with at least two exponent digits.
        let mut m = String::new();
        m.push_str(&digits[..1]);
        if digits.len() > 1 {
            m.push('.');
            m.push_str(&digits[1..]);
        }
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{m}e{esign}{:02}", exp.abs())
    } else if exp < 0 {
        format!(
            "{sign}0.{}{}",
            "0".repeat(usize::try_from(-exp - 1).unwrap_or(0)),
            digits
        )
    } else {
        let point = usize::try_from(exp + 1).unwrap_or(0);
        if digits.len() <= point {
            format!("{sign}{}{}", digits, "0".repeat(point - digits.len()))
        } else {
            format!("{sign}{}.{}", &digits[..point], &digits[point..])
        }
    }
}

/// Prints a JSON value the way apimachinery's `ErrorBody` (1.35) prints the Go value
/// it decodes to: numbers and booleans plainly, strings quoted, anything else
/// (`null`, objects, arrays) as `json.Marshal` writes it (compact, keys sorted, `<`,
/// `>` and `&` escaped).
pub fn go_value(v: &Value) -> String {
    match v {
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => go_number(n),
        Value::String(s) => go_quote(s),
        other => go_json(other),
    }
}

fn go_number(n: &serde_json::Number) -> String {
    if let Some(i) = n.as_i64() {
        i.to_string()
    } else if let Some(u) = n.as_u64() {
        u.to_string()
    } else {
        go_float(n.as_f64().unwrap_or(0.0))
    }
}

/// Go's `json.Marshal` of a decoded JSON value: map keys sorted (serde_json's maps
/// are sorted already) and HTML characters escaped. `<`, `>` and `&` only occur
/// inside strings in JSON text, so replacing them everywhere is exact.
fn go_json(v: &Value) -> String {
    serde_json::to_string(v)
        .unwrap_or_default()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_float_matches_strconv() {
        assert_eq!(go_float(10.0), "10");
        assert_eq!(go_float(1.5), "1.5");
        assert_eq!(go_float(1e6), "1e+06");
        assert_eq!(go_float(123456.0), "123456");
        assert_eq!(go_float(1234567.0), "1.234567e+06");
        assert_eq!(go_float(0.0001), "0.0001");
        assert_eq!(go_float(0.00001), "1e-05");
        assert_eq!(go_float(-2.5), "-2.5");
    }

    #[test]
    fn wording_matches_apimachinery() {
        let e = FieldError::invalid(
            "spec.retryStrategy.attempts",
            &json!(11),
            "spec.retryStrategy.attempts in body should be less than or equal to 10",
        );
        assert_eq!(
            e.to_string_k8s(),
            "spec.retryStrategy.attempts: Invalid value: 11: spec.retryStrategy.attempts in body should be less than or equal to 10"
        );
        assert_eq!(
            FieldError::required("spec.image", "").to_string_k8s(),
            "spec.image: Required value"
        );
        assert_eq!(
            FieldError::invalid(
                "spec",
                &json!("object"),
                "minInstances must be <= maxInstances"
            )
            .to_string_k8s(),
            "spec: Invalid value: \"object\": minInstances must be <= maxInstances"
        );
        assert_eq!(
            FieldError::not_supported(
                "spec.state",
                &json!("Foo"),
                &["Enabled".into(), "Disabled".into()]
            )
            .to_string_k8s(),
            "spec.state: Unsupported value: \"Foo\": supported values: \"Enabled\", \"Disabled\""
        );
        assert_eq!(
            FieldError::too_many("spec.dependsOn", 21, 20).to_string_k8s(),
            "spec.dependsOn: Too many: 21: must have at most 20 items"
        );
        assert_eq!(
            FieldError::too_long("spec.name", 5).to_string_k8s(),
            "spec.name: Too long: may not be more than 5 bytes"
        );
        assert_eq!(
            FieldError::duplicate("spec.tags[1]", &json!("a")).to_string_k8s(),
            "spec.tags[1]: Duplicate value: \"a\""
        );
        assert_eq!(
            FieldError::invalid("<nil>", &Value::Null, "x").to_string_k8s(),
            "<nil>: Invalid value: null: x"
        );
        assert_eq!(
            FieldError::duplicate("spec.env[1]", &json!({"name": "<a&b>"})).to_string_k8s(),
            "spec.env[1]: Duplicate value: {\"name\":\"\\u003ca\\u0026b\\u003e\"}"
        );
    }

    #[test]
    fn status_body() {
        let one = [FieldError::required("spec.image", "")];
        let s = invalid_status("asgbatch.io", "BatchJob", "x", &one);
        assert_eq!(
            s["message"],
            "BatchJob.asgbatch.io \"x\" is invalid: spec.image: Required value"
        );
        assert_eq!(s["code"], 422);
        assert_eq!(s["reason"], "Invalid");
        assert_eq!(s["details"]["causes"][0]["reason"], "FieldValueRequired");
        assert_eq!(s["details"]["causes"][0]["message"], "Required value");
        assert_eq!(s["details"]["causes"][0]["field"], "spec.image");
        let two = [
            FieldError::required("spec.image", ""),
            FieldError::required("spec.queue", ""),
        ];
        let s = invalid_status("asgbatch.io", "BatchJob", "x", &two);
        assert_eq!(
            s["message"],
            "BatchJob.asgbatch.io \"x\" is invalid: [spec.image: Required value, spec.queue: Required value]"
        );
    }

    #[test]
    fn strict_message() {
        assert_eq!(
            strict_decoding_message("BatchJob", "v1alpha1", &["spec.foo".into()]),
            "BatchJob in version \"v1alpha1\" cannot be handled as a BatchJob: strict decoding error: unknown field \"spec.foo\""
        );
    }
}
