//! Label selectors (`=`, `==`, `!=`, `in`, `notin`, exists, `!` not exists) and field
//! selectors (`metadata.name`, `metadata.namespace`).

use serde_json::Value;

use super::error::{ApiError, ApiResult};
use super::project::Paths;

/// One label requirement.
#[derive(Debug, Clone, PartialEq)]
enum Req {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector (all requirements must hold).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector(Vec<Req>);

/// Split at commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = vec![];
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 317
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn valid_value(v: &str) -> bool {
    v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl LabelSelector {
    /// Parse the `labelSelector` query parameter.
    pub fn parse(s: &str) -> ApiResult<Self> {
        let bad =
            |why: &str| ApiError::bad_request(format!("unable to parse requirement: {why}: {s:?}"));
        let mut reqs = vec![];
        if s.trim().is_empty() {
            return Ok(LabelSelector(reqs));
        }
        for part in split_top(s) {
            let p = part.trim();
            if p.is_empty() {
                return Err(bad("empty requirement"));
            }
            let req = if let Some(k) = p.strip_prefix('!') {
                Req::NotExists(k.trim().to_string())
            } else if let Some((k, v)) = p.split_once("!=") {
                Req::NotEq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = p.split_once("==") {
                Req::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = p.split_once('=') {
                Req::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, rest)) = split_set_op(p, " notin ") {
                Req::NotIn(k, parse_set(rest).ok_or_else(|| bad("invalid set"))?)
            } else if let Some((k, rest)) = split_set_op(p, " in ") {
                Req::In(k, parse_set(rest).ok_or_else(|| bad("invalid set"))?)
            } else {
                Req::Exists(p.to_string())
            };
            // A value starting with an operator: apimachinery's lexer reads the
            // operator as the next token where it expects the value.
            if let Req::Eq(_, v) | Req::NotEq(_, v) = &req {
                let op = ["==", "!=", "=", "!", "<", ">", "(", ")"]
                    .into_iter()
                    .find(|op| v.starts_with(op));
                if let Some(op) = op {
                    return Err(ApiError::bad_request(format!(
                        "unable to parse requirement: found '{op}', expected: identifier"
                    )));
                }
            }
            let (key, values): (&str, Vec<&str>) = match &req {
                Req::Eq(k, v) | Req::NotEq(k, v) => (k, vec![v.as_str()]),
                Req::In(k, vs) | Req::NotIn(k, vs) => (k, vs.iter().map(String::as_str).collect()),
                Req::Exists(k) | Req::NotExists(k) => (k, vec![]),
            };
            if !valid_key(key) {
                return Err(bad("invalid label key"));
            }
            if values.iter().any(|v| !valid_value(v)) {
                return Err(bad("invalid label value"));
            }
            reqs.push(req);
        }
        Ok(LabelSelector(reqs))
    }

    /// Whether the selector selects everything.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds what [`LabelSelector::matches`] reads of an object to `p`.
    pub fn paths(&self, p: &mut Paths) {
        if !self.0.is_empty() {
            p.add(["metadata", "labels"]);
        }
    }

    /// Whether an object's labels match.
    pub fn matches(&self, obj: &Value) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let labels = obj.get("metadata").and_then(|m| m.get("labels"));
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Req::Eq(k, v) => get(k) == Some(v.as_str()),
            Req::NotEq(k, v) => get(k) != Some(v.as_str()),
            Req::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Req::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
            Req::Exists(k) => get(k).is_some(),
            Req::NotExists(k) => get(k).is_none(),
        })
    }
}

fn split_set_op(p: &str, op: &str) -> Option<(String, String)> {
    let idx = p.find(op)?;
    Some((
        p[..idx].trim().to_string(),
        p[idx + op.len()..].trim().to_string(),
    ))
}

fn parse_set(s: String) -> Option<Vec<String>> {
    let inner = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(
        inner
            .split(',')
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect(),
    )
}

/// A parsed field selector. `metadata.name` and `metadata.namespace` work on every
/// resource; further fields are those a resource declares (CRD `selectableFields`, and
/// the built-ins' fields kube-apiserver supports, e.g. `involvedObject.name` on Events).
#[derive(Debug, Clone, Default)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    /// Parse the `fieldSelector` query parameter, allowing `extra` fields besides
    /// `metadata.name` and `metadata.namespace`.
    pub fn parse(s: &str, extra: &[String]) -> ApiResult<Self> {
        let mut out = vec![];
        if s.trim().is_empty() {
            return Ok(FieldSelector(out));
        }
        for part in s.split(',') {
            let p = part.trim();
            let (field, eq, value) = if let Some((f, v)) = p.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = p.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = p.split_once('=') {
                (f, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{s}'; can't understand '{p}'"
                )));
            };
            let field = field.trim();
            if field != "metadata.name"
                && field != "metadata.namespace"
                && !extra.iter().any(|e| e == field)
            {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
            out.push((field.to_string(), eq, value.trim().to_string()));
        }
        Ok(FieldSelector(out))
    }

    /// Adds what [`FieldSelector::matches`] reads of an object to `p`.
    pub fn paths(&self, p: &mut Paths) {
        for (f, _, _) in &self.0 {
            p.add(f.split('.'));
        }
    }

    /// Whether an object matches (absent fields compare as the empty string).
    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(f, eq, v)| {
            let mut cur = Some(obj);
            for part in f.split('.') {
                cur = cur.and_then(|c| c.get(part));
            }
            let same = match cur {
                None | Some(Value::Null) => v.is_empty(),
                Some(Value::String(s)) => s == v,
                Some(other) => {
                    let json = other.to_string();
                    json == *v
                }
            };
            same == *eq
        })
    }

    /// Whether the selector selects everything.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_ops() {
        let o = json!({"metadata": {"labels": {"app": "a", "tier": "x"}}});
        for (sel, want) in [
            ("app=a", true),
            ("app==a", true),
            ("app!=a", false),
            ("app in (a,b)", true),
            ("app notin (a,b)", false),
            ("tier", true),
            ("!tier", false),
            ("!missing", true),
            ("app=a,tier in (y)", false),
            ("missing notin (a)", true),
        ] {
            assert_eq!(
                LabelSelector::parse(sel).unwrap().matches(&o),
                want,
                "{sel}"
            );
        }
        assert!(LabelSelector::parse("a in b").is_err());
        assert!(LabelSelector::parse("a=b c").is_err());
    }

    #[test]
    fn field_ops() {
        let o = json!({"metadata": {"name": "n", "namespace": "d"}});
        assert!(
            FieldSelector::parse("metadata.name=n", &[])
                .unwrap()
                .matches(&o)
        );
        assert!(
            !FieldSelector::parse("metadata.namespace!=d", &[])
                .unwrap()
                .matches(&o)
        );
        assert!(FieldSelector::parse("spec.x=1", &[]).is_err());
        let extra = vec!["spec.x".to_string()];
        assert!(FieldSelector::parse("spec.x=", &extra).unwrap().matches(&o));
        // selectable fields of other types compare as their JSON; null as ""
        let fields = vec![
            "spec.n".to_string(),
            "spec.b".to_string(),
            "status.node".to_string(),
        ];
        let o = json!({"spec": {"n": 3, "b": true}, "status": {"node": null}});
        for (sel, want) in [
            ("spec.n=3", true),
            ("spec.n!=3", false),
            ("spec.n=4", false),
            ("spec.b=true", true),
            ("status.node=", true),
            ("status.node!=", false),
            ("status.node=a", false),
            ("status.node!=a", true),
        ] {
            assert_eq!(
                FieldSelector::parse(sel, &fields).unwrap().matches(&o),
                want,
                "{sel}"
            );
        }
        assert!(
            LabelSelector::parse("").unwrap().matches(&o),
            "an empty selector selects all"
        );
    }
}
