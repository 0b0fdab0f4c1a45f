//! Authentication by bearer token and `admissionregistration.k8s.io/v1`
//! ValidatingAdmissionPolicy enforcement, with the schema module's CEL engine.
//!
//! Tokens come from a file in kube-apiserver's `--token-auth-file` format (CSV:
//! `token,user,uid,"group1,group2"`); a request without a token is the loopback
//! administrator, as before ([`UserInfo::loopback`]); an unknown token is 401.
//!
//! Every CREATE and UPDATE (main resource and `/status`) is checked against the stored
//! policies that a binding names: `matchConstraints.resourceRules` and
//! `excludeResourceRules` (groups, versions, operations, resources with `/subresource`
//! and `*` forms, scope), the binding's own `matchResources` rules, `matchConditions`,
//! `variables` (evaluated in order, each seeing the earlier ones), `validations` with
//! `message`, `messageExpression` and `reason`, `failurePolicy`, and the binding's
//! `validationActions` (`Deny` refuses; `Warn` adds a warning; `Audit` is ignored).
//! A denial is worded as kube-apiserver words it. Not supported: `paramKind`/`paramRef`
//! (such a policy is skipped, logged), `namespaceSelector`/`objectSelector` (ignored),
//! `auditAnnotations`, DELETE and CONNECT, the `authorizer` and `namespaceObject`
//! variables, type checking (`status.typeChecking`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use cel::objects::{Key, Map};
use serde_json::{Value, json};

use super::error::{ApiError, ApiResult};
use super::resources::ResourceInfo;
use super::schema::cel::{self as engine, ADMISSION_VARIABLES};

/// Who makes a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// User name.
    pub username: String,
    /// User uid (may be empty).
    pub uid: String,
    /// Groups, `system:authenticated` included.
    pub groups: Vec<String>,
}

impl UserInfo {
    /// The user of a request without credentials: this server's loopback administrator.
    pub fn loopback() -> Self {
        UserInfo {
            username: "system:admin".into(),
            uid: String::new(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
        }
    }
}

/// Bearer tokens and their users.
#[derive(Debug, Clone, Default)]
pub struct Tokens(HashMap<String, Arc<UserInfo>>);

/// A token file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// Reading the file failed.
    #[error("cannot read token file {path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A line is not `token,user,uid[,groups]`.
    #[error("token file {path}, line {line}: {why}")]
    Line {
        /// The file.
        path: std::path::PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        why: String,
    },
}

/// Splits one CSV line (double-quoted fields, `""` for a quote inside one).
fn csv_fields(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', true) => quoted = false,
            ('"', false) if cur.is_empty() && !was_quoted => {
                quoted = true;
                was_quoted = true;
            }
            (',', false) => {
                out.push(std::mem::take(&mut cur));
                was_quoted = false;
            }
            (c, _) => cur.push(c),
        }
    }
    if quoted {
        return Err("unterminated quoted field".into());
    }
    out.push(cur);
    Ok(out)
}

impl Tokens {
    /// Reads a `--token-auth-file` (kube-apiserver's format: `token,user,uid` and an
    /// optional quoted, comma-separated group list; blank lines and `#` comments skipped).
    pub fn read(path: &Path) -> Result<Tokens, TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|(line, why)| TokenFileError::Line {
            path: path.to_path_buf(),
            line,
            why,
        })
    }

    /// Parses the text of a token file; errors carry the 1-based line.
    pub fn parse(text: &str) -> Result<Tokens, (usize, String)> {
        let mut map = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let f = csv_fields(line).map_err(|e| (i + 1, e))?;
            if f.len() < 3 {
                return Err((i + 1, "want token,user,uid[,\"group1,group2\"]".into()));
            }
            if f[0].is_empty() || f[1].is_empty() {
                return Err((i + 1, "empty token or user name".into()));
            }
            let mut groups: Vec<String> = f
                .get(3)
                .map(|g| {
                    g.split(',')
                        .map(str::trim)
                        .filter(|g| !g.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            groups.push("system:authenticated".into());
            map.insert(
                f[0].clone(),
                Arc::new(UserInfo {
                    username: f[1].clone(),
                    uid: f[2].clone(),
                    groups,
                }),
            );
        }
        Ok(Tokens(map))
    }

    /// The user of a request's `Authorization` header value: none given is the
    /// loopback administrator; a bearer token this file does not hold is 401.
    pub fn authenticate(&self, authorization: Option<&str>) -> ApiResult<Arc<UserInfo>> {
        let Some(value) = authorization.map(str::trim).filter(|v| !v.is_empty()) else {
            return Ok(Arc::new(UserInfo::loopback()));
        };
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim);
        match token.and_then(|t| self.0.get(t)) {
            Some(u) => Ok(u.clone()),
            None => Err(ApiError::new(401, "Unauthorized", "Unauthorized")),
        }
    }
}

/// One write, as admission sees it.
pub(crate) struct Attributes<'a> {
    pub info: &'a ResourceInfo,
    /// `CREATE` or `UPDATE`.
    pub operation: &'static str,
    /// `""` or `status`.
    pub subresource: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub object: &'a Value,
    pub old: Option<&'a Value>,
    pub user: &'a UserInfo,
    pub dry_run: bool,
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Whether one `NamedRuleWithOperations` matches.
fn rule_matches(rule: &Value, a: &Attributes<'_>) -> bool {
    let any = |list: Vec<&str>, want: &str| list.iter().any(|x| *x == "*" || *x == want);
    let resource_ok = strs(&rule["resources"]).iter().any(|r| {
        let (res, sub) = r.split_once('/').unwrap_or((r, ""));
        let res_ok = res == "*" || res == a.info.plural;
        let sub_ok = if r.contains('/') {
            sub == "*" || sub == a.subresource
        } else {
            // `*` alone matches resources, not subresources (kube-apiserver's rule).
            a.subresource.is_empty()
        };
        res_ok && sub_ok
    });
    let scope_ok = match rule["scope"].as_str().unwrap_or("*") {
        "Cluster" => !a.info.namespaced,
        "Namespaced" => a.info.namespaced,
        _ => true,
    };
    let names = strs(&rule["resourceNames"]);
    any(strs(&rule["apiGroups"]), &a.info.group)
        && any(strs(&rule["apiVersions"]), &a.info.version)
        && any(strs(&rule["operations"]), a.operation)
        && resource_ok
        && scope_ok
        && (names.is_empty() || names.contains(&a.name))
}

/// Whether `MatchResources` selects the request.
fn resources_match(m: &Value, a: &Attributes<'_>) -> bool {
    let included = m["resourceRules"]
        .as_array()
        .is_some_and(|rules| rules.iter().any(|r| rule_matches(r, a)));
    let excluded = m["excludeResourceRules"]
        .as_array()
        .is_some_and(|rules| rules.iter().any(|r| rule_matches(r, a)));
    included && !excluded
}

fn cel_map(pairs: Vec<(String, cel::Value)>) -> cel::Value {
    let map: HashMap<Key, cel::Value> = pairs
        .into_iter()
        .map(|(k, v)| (Key::String(Arc::new(k)), v))
        .collect();
    cel::Value::Map(Map { map: Arc::new(map) })
}

/// The `request` variable (`admission.k8s.io/v1` AdmissionRequest, the fields asked of it).
fn request_value(a: &Attributes<'_>) -> Value {
    let gvr = json!({"group": a.info.group, "version": a.info.version, "resource": a.info.plural});
    let gvk = json!({"group": a.info.group, "version": a.info.version, "kind": a.info.kind});
    let mut r = json!({
        "kind": gvk, "requestKind": gvk,
        "resource": gvr, "requestResource": gvr,
        "name": a.name,
        "operation": a.operation,
        "userInfo": {"username": a.user.username, "groups": a.user.groups},
        "dryRun": a.dry_run,
    });
    // kube-apiserver leaves empty strings out.
    if !a.subresource.is_empty() {
        r["subResource"] = json!(a.subresource);
        r["requestSubResource"] = json!(a.subresource);
    }
    if !a.namespace.is_empty() {
        r["namespace"] = json!(a.namespace);
    }
    if !a.user.uid.is_empty() {
        r["userInfo"]["uid"] = json!(a.user.uid);
    }
    r
}

fn compile(source: &str) -> Result<engine::Compiled, String> {
    engine::compile_with_variables(source, ADMISSION_VARIABLES)
}

/// What one policy decided.
enum Verdict {
    Allow,
    /// Denied: the message after "denied request: ", and the validation's reason.
    Deny(String, &'static str),
}

fn status_reason(reason: Option<&str>) -> (&'static str, u16) {
    match reason {
        Some("Forbidden") => ("Forbidden", 403),
        Some("Unauthorized") => ("Unauthorized", 401),
        Some("RequestEntityTooLarge") => ("RequestEntityTooLarge", 413),
        _ => ("Invalid", 422),
    }
}

/// Evaluates one policy against the request.
fn evaluate_policy(policy: &Value, a: &Attributes<'_>) -> Verdict {
    let spec = &policy["spec"];
    let fail_closed = spec["failurePolicy"].as_str() != Some("Ignore");
    let error = |msg: String| {
        if fail_closed {
            Verdict::Deny(msg, "Invalid")
        } else {
            Verdict::Allow
        }
    };
    let object = engine::to_cel(a.object, false);
    let old = a.old.map_or(cel::Value::Null, |o| engine::to_cel(o, false));
    let request = engine::to_cel(&request_value(a), false);
    let mut variables: Vec<(String, cel::Value)> = Vec::new();
    // Variables whose evaluation failed: the error surfaces where one is used.
    let mut failed: Vec<(String, String)> = Vec::new();
    let run = |source: &str, variables: &[(String, cel::Value)]| -> Result<cel::Value, String> {
        let c = compile(source)?;
        let vars = [
            ("object", object.clone()),
            ("oldObject", old.clone()),
            ("request", request.clone()),
            ("variables", cel_map(variables.to_vec())),
        ];
        engine::evaluate_program(&c.program, c.depth, &vars)
    };
    let uses_failed = |source: &str, failed: &[(String, String)]| {
        failed
            .iter()
            .find(|(name, _)| source.contains(&format!("variables.{name}")))
            .map(|(_, e)| e.clone())
    };
    for m in spec["matchConditions"].as_array().into_iter().flatten() {
        let expr = m["expression"].as_str().unwrap_or_default();
        match run(expr, &variables) {
            Ok(cel::Value::Bool(true)) => {}
            Ok(cel::Value::Bool(false)) => return Verdict::Allow,
            Ok(other) => {
                return error(format!(
                    "matchCondition '{}' evaluated to {} instead of a bool",
                    m["name"].as_str().unwrap_or_default(),
                    other.type_of()
                ));
            }
            Err(e) => {
                return error(format!(
                    "failed to evaluate matchCondition '{}': {e}",
                    m["name"].as_str().unwrap_or_default()
                ));
            }
        }
    }
    for v in spec["variables"].as_array().into_iter().flatten() {
        let name = v["name"].as_str().unwrap_or_default().to_string();
        let expr = v["expression"].as_str().unwrap_or_default();
        if let Some(e) = uses_failed(expr, &failed) {
            failed.push((name, e));
            continue;
        }
        match run(expr, &variables) {
            Ok(value) => variables.push((name, value)),
            Err(e) => failed.push((name, e)),
        }
    }
    for v in spec["validations"].as_array().into_iter().flatten() {
        let expr = v["expression"].as_str().unwrap_or_default();
        let result = match uses_failed(expr, &failed) {
            Some(e) => Err(e),
            None => run(expr, &variables),
        };
        let (reason, _) = status_reason(v["reason"].as_str());
        match result {
            Ok(cel::Value::Bool(true)) => {}
            Ok(cel::Value::Bool(false)) => {
                let from_expression =
                    v["messageExpression"]
                        .as_str()
                        .and_then(|m| match run(m, &variables) {
                            Ok(cel::Value::String(s))
                                if !s.trim().is_empty() && !s.contains('\n') =>
                            {
                                Some(s.to_string())
                            }
                            _ => None,
                        });
                let message = from_expression
                    .or_else(|| {
                        v["message"]
                            .as_str()
                            .filter(|m| !m.trim().is_empty())
                            .map(str::to_string)
                    })
                    .unwrap_or_else(|| format!("failed expression: {}", expr.trim()));
                return Verdict::Deny(message, reason);
            }
            Ok(other) => {
                return error(format!(
                    "expression '{}' resulted in error: expected a bool, got {}",
                    expr.trim(),
                    other.type_of()
                ));
            }
            Err(e) => {
                return error(format!(
                    "expression '{}' resulted in error: {e}",
                    expr.trim()
                ));
            }
        }
    }
    Verdict::Allow
}

/// Checks a write against `policies` and their `bindings` (both as stored). Returns the
/// warnings of `Warn` bindings, or the denial of the first `Deny` binding whose policy
/// refuses the request.
pub(crate) fn validate(
    policies: &[Value],
    bindings: &[Value],
    a: &Attributes<'_>,
) -> ApiResult<Vec<String>> {
    let mut warnings = Vec::new();
    for policy in policies {
        let pname = policy["metadata"]["name"].as_str().unwrap_or_default();
        let spec = &policy["spec"];
        if !resources_match(&spec["matchConstraints"], a) {
            continue;
        }
        if spec.get("paramKind").is_some_and(|p| !p.is_null()) {
            tracing::warn!(
                policy = pname,
                "ValidatingAdmissionPolicy with paramKind is not supported here; skipped"
            );
            continue;
        }
        let mut verdict = None;
        for binding in bindings
            .iter()
            .filter(|b| b["spec"]["policyName"].as_str() == Some(pname))
        {
            let bspec = &binding["spec"];
            if bspec
                .get("matchResources")
                .is_some_and(|m| m.get("resourceRules").is_some() && !resources_match(m, a))
            {
                continue;
            }
            let bname = binding["metadata"]["name"].as_str().unwrap_or_default();
            let v = verdict.get_or_insert_with(|| evaluate_policy(policy, a));
            let Verdict::Deny(message, reason) = v else {
                continue;
            };
            let text = format!(
                "ValidatingAdmissionPolicy '{pname}' with binding '{bname}' denied request: {message}"
            );
            let actions = strs(&bspec["validationActions"]);
            if actions.contains(&"Deny") {
                let (reason, code) = status_reason(Some(reason));
                let qualified = if a.info.group.is_empty() {
                    a.info.plural.clone()
                } else {
                    format!("{}.{}", a.info.plural, a.info.group)
                };
                let mut details =
                    json!({"name": a.name, "kind": a.info.plural, "causes": [{"message": text}]});
                if !a.info.group.is_empty() {
                    details["group"] = json!(a.info.group);
                }
                return Err(ApiError {
                    code,
                    reason,
                    message: format!("{qualified} \"{}\" is forbidden: {text}", a.name),
                    details: Some(details),
                });
            }
            if actions.contains(&"Warn") {
                warnings.push(text);
            }
        }
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_as_kube_apiserver_reads_them() {
        let t = Tokens::parse(
            "# nodes\nt-a,asg-batch:node:a,uid-a,\"asg-batch:nodes,team\"\n\nt-b,bob,2\n",
        )
        .expect("parse");
        let a = t.authenticate(Some("Bearer t-a")).expect("a");
        assert_eq!(a.username, "asg-batch:node:a");
        assert_eq!(a.uid, "uid-a");
        assert_eq!(
            a.groups,
            ["asg-batch:nodes", "team", "system:authenticated"]
        );
        let b = t.authenticate(Some("Bearer t-b")).expect("b");
        assert_eq!(b.groups, ["system:authenticated"]);
        assert_eq!(
            t.authenticate(None).expect("loopback").username,
            "system:admin"
        );
        let e = t.authenticate(Some("Bearer nope")).expect_err("unknown");
        assert_eq!((e.code, e.reason), (401, "Unauthorized"));
        assert_eq!(Tokens::parse("x,y\n").err().map(|e| e.0), Some(1));
        assert_eq!(
            Tokens::parse("a,b,c\n\"x,y,z\n").err().map(|e| e.0),
            Some(2)
        );
    }
}
