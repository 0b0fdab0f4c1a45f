//! Object metadata helpers: names, timestamps, generation, uids.

use serde_json::Value;

use super::error::Cause;

/// Now as RFC 3339 with second precision, as Kubernetes writes `metav1.Time`.
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// A new object uid.
pub fn new_uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// `generateName` suffix: 5 characters from kube-apiserver's alphabet.
pub fn random_suffix() -> String {
    const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let u = uuid::Uuid::new_v4();
    u.as_bytes()
        .iter()
        .take(5)
        .map(|b| ALPHA[(*b as usize) % ALPHA.len()] as char)
        .collect()
}

/// `metadata.<field>`.
pub fn meta_field<'a>(v: &'a Value, field: &str) -> Option<&'a Value> {
    v.get("metadata").and_then(|m| m.get(field))
}

/// `metadata.name` (empty if absent).
pub fn name_of(obj: &Value) -> &str {
    meta_field(obj, "name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// `metadata.namespace` (empty if absent).
pub fn namespace_of(obj: &Value) -> &str {
    meta_field(obj, "namespace")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// `metadata.uid`.
pub fn uid_of(obj: &Value) -> &str {
    meta_field(obj, "uid").and_then(Value::as_str).unwrap_or("")
}

/// `metadata.resourceVersion` as a number (0 if absent or malformed).
pub fn rv_of(obj: &Value) -> u64 {
    meta_field(obj, "resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// `metadata.finalizers`.
pub fn finalizers_of(obj: &Value) -> Vec<String> {
    meta_field(obj, "finalizers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `metadata.deletionTimestamp` is set.
pub fn is_deleting(obj: &Value) -> bool {
    meta_field(obj, "deletionTimestamp").is_some_and(|v| !v.is_null())
}

/// `metadata` as a mutable map, creating it; `None` only if `obj` is not an object.
pub fn metadata_mut(obj: &mut Value) -> Option<&mut serde_json::Map<String, Value>> {
    let root = obj.as_object_mut()?;
    let md = root
        .entry("metadata")
        .or_insert_with(|| Value::Object(Default::default()));
    if !md.is_object() {
        *md = Value::Object(Default::default());
    }
    md.as_object_mut()
}

/// Set one metadata field (no-op on a non-object).
pub fn set_meta(obj: &mut Value, key: &str, v: Value) {
    if let Some(md) = metadata_mut(obj) {
        md.insert(key.to_string(), v);
    }
}

/// Remove one metadata field.
pub fn remove_meta(obj: &mut Value, key: &str) {
    if let Some(md) = metadata_mut(obj) {
        md.remove(key);
    }
}

const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Validate an object name (DNS-1123 subdomain, or label for namespaces).
pub fn validate_name(name: &str, label_only: bool) -> Option<Cause> {
    let ok = if label_only {
        is_label(name)
    } else {
        name.len() <= 253 && name.split('.').all(is_label)
    };
    if ok {
        return None;
    }
    let msg = if label_only {
        DNS1123_LABEL_MSG
    } else {
        DNS1123_SUBDOMAIN_MSG
    };
    Some(Cause::new(
        "FieldValueInvalid",
        "metadata.name",
        format!("Invalid value: \"{name}\": {msg}"),
    ))
}

/// Validate label keys and values.
pub fn validate_labels(obj: &Value) -> Vec<Cause> {
    let mut out = vec![];
    if let Some(labels) = meta_field(obj, "labels") {
        let Some(m) = labels.as_object() else {
            return vec![Cause::new(
                "FieldValueInvalid",
                "metadata.labels",
                "Invalid value: labels must be a map of strings",
            )];
        };
        for (k, v) in m {
            let Some(v) = v.as_str() else {
                out.push(Cause::new(
                    "FieldValueInvalid",
                    format!("metadata.labels.{k}"),
                    "Invalid value: label values must be strings",
                ));
                continue;
            };
            let value_ok = v.len() <= 63
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                && (v.is_empty()
                    || (v.as_bytes()[0].is_ascii_alphanumeric()
                        && v.as_bytes()[v.len() - 1].is_ascii_alphanumeric()));
            if !value_ok {
                out.push(Cause::new(
                    "FieldValueInvalid",
                    "metadata.labels",
                    format!("Invalid value: \"{v}\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"),
                ));
            }
        }
    }
    out
}

/// Human duration as Kubernetes prints ages (`5m`, `3h2m`, `4d`).
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    if secs < 0 {
        return "0s".into();
    }
    if secs < 120 {
        return format!("{secs}s");
    }
    let minutes = secs / 60;
    if minutes < 10 {
        let s = secs % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = secs / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{}h", hours / 24, h)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{}d", hours / 24 / 365, dy)
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// Seconds since an RFC 3339 timestamp.
pub fn age_secs(ts: &str) -> Option<i64> {
    let t: jiff::Timestamp = ts.parse().ok()?;
    Some(jiff::Timestamp::now().as_second() - t.as_second())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn names() {
        assert!(validate_name("a-b.c", false).is_none());
        assert!(validate_name("A", false).is_some());
        assert!(validate_name("a.b", true).is_some());
    }
    #[test]
    fn durations() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(300), "5m");
        assert_eq!(human_duration(3 * 3600 + 120), "3h2m");
        assert_eq!(human_duration(4 * 86400), "4d");
    }
}
