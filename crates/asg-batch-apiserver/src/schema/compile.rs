//! Compiling a CRD version's `openAPIV3Schema` into a structural schema tree,
//! with the checks kube-apiserver makes on a CRD's schema.

use serde_json::{Map, Value};

use super::cel::{self, CompiledRule};
use super::errors::{BadValue, FieldError, FieldErrorKind, go_quote};

/// One node of a compiled structural schema.
#[derive(Debug, Default)]
pub(crate) struct Node {
    pub ty: Option<String>,
    pub format: Option<String>,
    pub nullable: bool,
    pub properties: Vec<(String, Node)>,
    pub additional: Option<Box<Node>>,
    pub items: Option<Box<Node>>,
    pub required: Vec<String>,
    pub enum_values: Option<Vec<Value>>,
    pub maximum: Option<f64>,
    pub exclusive_maximum: bool,
    pub minimum: Option<f64>,
    pub exclusive_minimum: bool,
    pub multiple_of: Option<f64>,
    pub max_length: Option<i64>,
    pub min_length: Option<i64>,
    pub max_items: Option<i64>,
    pub min_items: Option<i64>,
    pub max_properties: Option<i64>,
    pub min_properties: Option<i64>,
    pub pattern: Option<(String, regex::Regex)>,
    pub unique_items: bool,
    pub default: Option<Value>,
    pub preserve_unknown: bool,
    pub int_or_string: bool,
    pub embedded_resource: bool,
    pub list_type: Option<String>,
    pub list_map_keys: Vec<String>,
    pub all_of: Vec<Node>,
    pub any_of: Vec<Node>,
    pub one_of: Vec<Node>,
    pub not: Option<Box<Node>>,
    pub rules: Vec<CompiledRule>,
    /// [`Node::has_rules`], computed once.
    rules_below: std::sync::OnceLock<bool>,
    /// [`Node::has_transition_rules`], computed once.
    transition_rules_below: std::sync::OnceLock<bool>,
}

impl Node {
    /// Whether this node or one below it (properties, additionalProperties, items) has
    /// `x-kubernetes-validations`: kube-apiserver builds no CEL validator otherwise, and so
    /// never reports that rules were not checked.
    pub fn has_rules(&self) -> bool {
        !self.rules.is_empty()
            || self.properties.iter().any(|(_, n)| n.has_rules())
            || self.additional.as_deref().is_some_and(Node::has_rules)
            || self.items.as_deref().is_some_and(Node::has_rules)
    }

    /// [`Node::has_rules`], cached: validation asks it of every node it walks.
    pub fn rules_below(&self) -> bool {
        *self.rules_below.get_or_init(|| self.has_rules())
    }

    /// Whether this node or one below it has a rule referring to `oldSelf` (a transition
    /// rule: the only kind validation ratcheting does not drop on unchanged values).
    pub fn has_transition_rules(&self) -> bool {
        *self.transition_rules_below.get_or_init(|| {
            self.rules.iter().any(|r| r.uses_old_self)
                || self
                    .properties
                    .iter()
                    .any(|(_, n)| n.has_transition_rules())
                || self
                    .additional
                    .as_deref()
                    .is_some_and(Node::has_transition_rules)
                || self
                    .items
                    .as_deref()
                    .is_some_and(Node::has_transition_rules)
        })
    }

    /// The schema of property `name`.
    pub fn property(&self, name: &str) -> Option<&Node> {
        self.properties
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, n)| n)
    }

    /// The schema of the value under key `name` of an object (property or additionalProperties).
    pub fn child(&self, name: &str) -> Option<&Node> {
        self.property(name).or(self.additional.as_deref())
    }

    /// The type name kube-apiserver reports as the bad value of CEL errors.
    pub fn type_name(&self) -> &str {
        match &self.ty {
            Some(t) => t.as_str(),
            None if self.int_or_string => "",
            None => "",
        }
    }
}

const TYPES: [&str; 6] = ["array", "boolean", "integer", "number", "object", "string"];

/// Where a node sits, for the wording of "type must not be empty".
#[derive(Clone, Copy, PartialEq)]
enum Place {
    Root,
    Property,
    Items,
    AdditionalProperties,
    /// Inside allOf/anyOf/oneOf/not: value validation only.
    Junctor,
}

pub(crate) struct Compiler {
    pub errors: Vec<FieldError>,
}

impl Compiler {
    pub fn compile_root(&mut self, schema: &Value, path: &str) -> Node {
        let node = self.node(schema, path, Place::Root, false);
        if let Some(t) = &node.ty
            && t != "object"
        {
            self.errors.push(FieldError::invalid(
                format!("{path}.type"),
                &Value::from(t.clone()),
                "must be object at the root",
            ));
        }
        node
    }

    fn node(&mut self, schema: &Value, path: &str, place: Place, under_preserve: bool) -> Node {
        let mut n = Node::default();
        let Some(m) = schema.as_object() else {
            self.errors.push(FieldError::invalid(
                path,
                schema,
                "must be a JSON schema object",
            ));
            return n;
        };
        for forbidden in [
            "$ref",
            "$schema",
            "definitions",
            "dependencies",
            "id",
            "patternProperties",
            "additionalItems",
        ] {
            if m.contains_key(forbidden) {
                self.errors.push(FieldError::forbidden(
                    format!("{path}.{forbidden}"),
                    format!("{forbidden} is not supported"),
                ));
            }
        }
        n.preserve_unknown = bool_of(m, "x-kubernetes-preserve-unknown-fields");
        n.int_or_string = bool_of(m, "x-kubernetes-int-or-string");
        n.embedded_resource = bool_of(m, "x-kubernetes-embedded-resource");
        n.nullable = bool_of(m, "nullable");
        n.unique_items = bool_of(m, "uniqueItems");
        match m.get("type") {
            Some(Value::String(t)) if t.is_empty() => {}
            Some(Value::String(t)) => {
                if TYPES.contains(&t.as_str()) {
                    n.ty = Some(t.clone());
                } else {
                    let valid: Vec<String> =
                        TYPES.iter().map(std::string::ToString::to_string).collect();
                    self.errors.push(FieldError::not_supported(
                        format!("{path}.type"),
                        &Value::from(t.clone()),
                        &valid,
                    ));
                }
            }
            Some(other) => self.errors.push(FieldError::invalid(
                format!("{path}.type"),
                other,
                "must be a string",
            )),
            None => {}
        }
        if n.int_or_string && n.ty.is_some() {
            self.errors.push(FieldError::invalid(
                format!("{path}.type"),
                &Value::from(n.ty.clone().unwrap_or_default()),
                "must be empty if x-kubernetes-int-or-string is true",
            ));
        }
        if n.ty.is_none()
            && !n.int_or_string
            && !n.preserve_unknown
            && !under_preserve
            && place != Place::Junctor
        {
            let detail = match place {
                Place::Root => "must not be empty at the root",
                Place::Property => "must not be empty for specified object fields",
                Place::Items => "must not be empty for specified array items",
                _ => "must not be empty",
            };
            self.errors
                .push(FieldError::required(format!("{path}.type"), detail));
        }
        if n.embedded_resource && n.ty.as_deref() != Some("object") && n.ty.is_some() {
            self.errors.push(FieldError::invalid(
                format!("{path}.type"),
                &Value::from(n.ty.clone().unwrap_or_default()),
                "must be object if x-kubernetes-embedded-resource is true",
            ));
        }
        n.format = str_of(m, "format");
        n.maximum = f64_of(m, "maximum");
        n.minimum = f64_of(m, "minimum");
        n.exclusive_maximum = bool_of(m, "exclusiveMaximum");
        n.exclusive_minimum = bool_of(m, "exclusiveMinimum");
        n.multiple_of = f64_of(m, "multipleOf");
        if let Some(mo) = n.multiple_of
            && mo <= 0.0
        {
            self.errors.push(FieldError::invalid(
                format!("{path}.multipleOf"),
                &Value::from(mo),
                "must be greater than zero",
            ));
            n.multiple_of = None;
        }
        n.max_length = i64_of(m, "maxLength");
        n.min_length = i64_of(m, "minLength");
        n.max_items = i64_of(m, "maxItems");
        n.min_items = i64_of(m, "minItems");
        n.max_properties = i64_of(m, "maxProperties");
        n.min_properties = i64_of(m, "minProperties");
        if let Some(p) = str_of(m, "pattern") {
            match regex::Regex::new(&p) {
                Ok(re) => n.pattern = Some((p, re)),
                Err(e) => self.errors.push(FieldError::invalid(
                    format!("{path}.pattern"),
                    &Value::from(p),
                    format!("must be a valid regular expression, but isn't: {e}"),
                )),
            }
        }
        if let Some(e) = m.get("enum") {
            match e {
                Value::Array(a) => n.enum_values = Some(a.clone()),
                other => self.errors.push(FieldError::invalid(
                    format!("{path}.enum"),
                    other,
                    "must be an array",
                )),
            }
        }
        if let Some(r) = m.get("required") {
            match r.as_array() {
                Some(a) => {
                    n.required = a
                        .iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect();
                }
                None => self.errors.push(FieldError::invalid(
                    format!("{path}.required"),
                    r,
                    "must be an array of strings",
                )),
            }
        }
        // Only the node carrying x-kubernetes-preserve-unknown-fields may omit
        // its type; its specified children still need one.
        let child_preserve = under_preserve;
        if let Some(props) = m.get("properties") {
            match props.as_object() {
                Some(p) => {
                    for (k, v) in p {
                        let child = self.node(
                            v,
                            &format!("{path}.properties[{k}]"),
                            if place == Place::Junctor {
                                Place::Junctor
                            } else {
                                Place::Property
                            },
                            child_preserve,
                        );
                        n.properties.push((k.clone(), child));
                    }
                }
                None => self.errors.push(FieldError::invalid(
                    format!("{path}.properties"),
                    props,
                    "must be an object",
                )),
            }
        }
        match m.get("additionalProperties") {
            None => {}
            Some(Value::Bool(true)) => {
                n.additional = Some(Box::new(Node {
                    preserve_unknown: true,
                    ..Node::default()
                }));
            }
            Some(Value::Bool(false)) => self.errors.push(FieldError::forbidden(
                format!("{path}.additionalProperties"),
                "must not be false",
            )),
            Some(v) => {
                if !n.properties.is_empty() {
                    self.errors.push(FieldError::forbidden(
                        format!("{path}.additionalProperties"),
                        "additionalProperties and properties are mutual exclusive",
                    ));
                }
                let child = self.node(
                    v,
                    &format!("{path}.additionalProperties"),
                    if place == Place::Junctor {
                        Place::Junctor
                    } else {
                        Place::AdditionalProperties
                    },
                    child_preserve,
                );
                n.additional = Some(Box::new(child));
            }
        }
        if let Some(items) = m.get("items") {
            if items.is_array() {
                self.errors.push(FieldError::forbidden(
                    format!("{path}.items"),
                    "items must be a schema object and not an array",
                ));
            } else {
                let child = self.node(
                    items,
                    &format!("{path}.items"),
                    if place == Place::Junctor {
                        Place::Junctor
                    } else {
                        Place::Items
                    },
                    child_preserve,
                );
                n.items = Some(Box::new(child));
            }
        } else if n.ty.as_deref() == Some("array") && place != Place::Junctor {
            self.errors.push(FieldError::required(
                format!("{path}.items"),
                "must be specified",
            ));
        }
        for (key, target) in [("allOf", 0), ("anyOf", 1), ("oneOf", 2)] {
            if let Some(list) = m.get(key) {
                let Some(a) = list.as_array() else {
                    self.errors.push(FieldError::invalid(
                        format!("{path}.{key}"),
                        list,
                        "must be an array",
                    ));
                    continue;
                };
                let nodes: Vec<Node> = a
                    .iter()
                    .enumerate()
                    .map(|(i, s)| self.node(s, &format!("{path}.{key}[{i}]"), Place::Junctor, true))
                    .collect();
                match target {
                    0 => n.all_of = nodes,
                    1 => n.any_of = nodes,
                    _ => n.one_of = nodes,
                }
            }
        }
        if let Some(not) = m.get("not") {
            n.not = Some(Box::new(self.node(
                not,
                &format!("{path}.not"),
                Place::Junctor,
                true,
            )));
        }
        if let Some(lt) = m.get("x-kubernetes-list-type") {
            match lt.as_str() {
                Some(s @ ("atomic" | "set" | "map")) => {
                    if n.ty.as_deref() != Some("array") {
                        self.errors.push(FieldError::invalid(
                            format!("{path}.x-kubernetes-list-type"),
                            lt,
                            "must only be used if type is array",
                        ));
                    }
                    n.list_type = Some(s.to_string());
                }
                _ => {
                    let valid: Vec<String> = ["atomic", "set", "map"]
                        .iter()
                        .map(std::string::ToString::to_string)
                        .collect();
                    self.errors.push(FieldError::not_supported(
                        format!("{path}.x-kubernetes-list-type"),
                        lt,
                        &valid,
                    ));
                }
            }
        }
        if let Some(keys) = m.get("x-kubernetes-list-map-keys") {
            n.list_map_keys = keys
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|k| k.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
        }
        if n.list_type.as_deref() == Some("map") {
            if n.list_map_keys.is_empty() {
                self.errors.push(FieldError::required(
                    format!("{path}.x-kubernetes-list-map-keys"),
                    "must not be empty if x-kubernetes-list-type is map",
                ));
            }
            if let Some(items) = &n.items {
                if items.ty.as_deref() != Some("object") {
                    self.errors.push(FieldError::invalid(
                        format!("{path}.items.type"),
                        &Value::from(items.ty.clone().unwrap_or_default()),
                        "must be object if parent array's x-kubernetes-list-type is map",
                    ));
                }
                for k in &n.list_map_keys {
                    if items.property(k).is_none() {
                        self.errors.push(FieldError::invalid(
                            format!("{path}.x-kubernetes-list-map-keys"),
                            &Value::from(n.list_map_keys.clone()),
                            format!("entries must all be names of item properties: {k}"),
                        ));
                    }
                }
            }
        } else if !n.list_map_keys.is_empty() {
            self.errors.push(FieldError::forbidden(
                format!("{path}.x-kubernetes-list-map-keys"),
                "must be empty if x-kubernetes-list-type is not map",
            ));
        }
        if let Some(d) = m.get("default") {
            if place == Place::Junctor {
                self.errors.push(FieldError::forbidden(
                    format!("{path}.default"),
                    "must not be set inside allOf, anyOf, oneOf or not",
                ));
            } else if !d.is_null() {
                // `default: null` is no default (Go decodes it to nil).
                n.default = Some(d.clone());
            }
        }
        if let Some(rules) = m.get("x-kubernetes-validations") {
            match rules.as_array() {
                Some(a) => {
                    for (i, r) in a.iter().enumerate() {
                        let rule_path = format!("{path}.x-kubernetes-validations[{i}]");
                        if let Some(c) = self.rule(r, &rule_path) {
                            let root = place == Place::Root;
                            let checked = cel::check_fields(&c.program, &n, root)
                                .map_err(|e| (format!("{rule_path}.rule"), e))
                                .and_then(|_| match &c.message_expression {
                                    Some(p) => cel::check_fields(p, &n, root).map_err(|e| {
                                        (
                                            format!("{rule_path}.messageExpression"),
                                            format!("messageExpression {e}"),
                                        )
                                    }),
                                    None => Ok(()),
                                });
                            match checked {
                                Ok(()) => n.rules.push(c),
                                Err((field, msg)) => self.errors.push(FieldError::new(
                                    field,
                                    FieldErrorKind::Invalid,
                                    BadValue::Raw(c.shown.clone()),
                                    msg,
                                )),
                            }
                        }
                    }
                }
                None => self.errors.push(FieldError::invalid(
                    format!("{path}.x-kubernetes-validations"),
                    rules,
                    "must be an array",
                )),
            }
        }
        if n.unique_items {
            self.errors.push(FieldError::forbidden(
                format!("{path}.uniqueItems"),
                "uniqueItems cannot be set to true since the runtime complexity becomes quadratic",
            ));
        }
        if let Some(d) = &n.default {
            // A default must itself be valid (kube-apiserver validates defaults
            // against their schema when the CRD is created).
            let name = format!("{path}.default");
            let mut probe = d.clone();
            super::defaults::default(&n, &mut probe);
            self.errors
                .extend(super::validate::validate_value(&n, &probe, &name));
        }
        n
    }

    fn rule(&mut self, r: &Value, path: &str) -> Option<CompiledRule> {
        let Some(m) = r.as_object() else {
            self.errors
                .push(FieldError::invalid(path, r, "must be an object"));
            return None;
        };
        let rule = str_of(m, "rule").unwrap_or_default();
        let message = str_of(m, "message").unwrap_or_default();
        let message_expression = str_of(m, "messageExpression").unwrap_or_default();
        let reason = str_of(m, "reason");
        let field_path = str_of(m, "fieldPath");
        let optional_old_self = m.get("optionalOldSelf").and_then(Value::as_bool);
        let shown_text = format!(
            "apiextensions.ValidationRule{{Rule:{}, Message:{}, MessageExpression:{}, Reason:{}, FieldPath:{}, OptionalOldSelf:{}}}",
            go_quote(&rule),
            go_quote(&message),
            go_quote(&message_expression),
            match &reason {
                Some(r) => format!("(*apiextensions.FieldValueErrorReason)({})", go_quote(r)),
                None => "(*apiextensions.FieldValueErrorReason)(nil)".into(),
            },
            go_quote(field_path.as_deref().unwrap_or("")),
            match optional_old_self {
                Some(b) => format!("(*bool)({b})"),
                None => "(*bool)(nil)".into(),
            }
        );
        let shown = BadValue::Raw(shown_text.clone());
        let mut ok = true;
        if rule.trim().is_empty() {
            self.errors
                .push(FieldError::required(format!("{path}.rule"), ""));
            return None;
        }
        if message.trim().is_empty() && !message.is_empty() {
            self.errors.push(FieldError::required(
                format!("{path}.message"),
                "message must be non-empty if specified",
            ));
            ok = false;
        }
        if message.contains('\n') {
            self.errors.push(FieldError::invalid(
                format!("{path}.message"),
                &Value::from(message.clone()),
                "message must not contain line breaks",
            ));
            ok = false;
        }
        if let Some(rs) = &reason {
            let valid = [
                "FieldValueInvalid",
                "FieldValueForbidden",
                "FieldValueRequired",
                "FieldValueDuplicate",
            ];
            if !valid.contains(&rs.as_str()) {
                let valid: Vec<String> =
                    valid.iter().map(std::string::ToString::to_string).collect();
                self.errors.push(FieldError::not_supported(
                    format!("{path}.reason"),
                    &Value::from(rs.clone()),
                    &valid,
                ));
                ok = false;
            }
        }
        let normalized_field_path = match &field_path {
            Some(fp) => match normalize_field_path(fp) {
                Ok(p) => Some(p),
                Err(e) => {
                    self.errors.push(FieldError::invalid(
                        format!("{path}.fieldPath"),
                        &Value::from(fp.clone()),
                        e,
                    ));
                    ok = false;
                    None
                }
            },
            None => None,
        };
        let program = match cel::compile_expression_with_depth(&rule) {
            Ok(p) => Some(p),
            Err(e) => {
                self.errors.push(FieldError::new(
                    format!("{path}.rule"),
                    FieldErrorKind::Invalid,
                    shown.clone(),
                    e,
                ));
                None
            }
        };
        let uses_old_self = program.as_ref().map(|c| c.uses_old_self).unwrap_or(false);
        if optional_old_self.is_some() && !uses_old_self && program.is_some() {
            self.errors.push(FieldError::invalid(
                format!("{path}.optionalOldSelf"),
                &Value::from(optional_old_self.unwrap_or(false)),
                "may not be set if oldSelf is not used in rule",
            ));
            ok = false;
        }
        let message_expression_program = if message_expression.trim().is_empty() {
            None
        } else {
            match cel::compile_expression_with_depth(&message_expression) {
                Ok(p) => Some(p),
                Err(e) => {
                    self.errors.push(FieldError::new(
                        format!("{path}.messageExpression"),
                        FieldErrorKind::Invalid,
                        shown,
                        format!("messageExpression {e}"),
                    ));
                    ok = false;
                    None
                }
            }
        };
        let compiled = program?;
        let (program, rule_depth) = (compiled.program, compiled.depth);
        if !ok {
            return None;
        }
        let message_depth = message_expression_program.as_ref().map_or(0, |c| c.depth);
        let fields = cel::selected_fields(
            &std::iter::once(program.expression())
                .chain(
                    message_expression_program
                        .as_ref()
                        .map(|c| c.program.expression()),
                )
                .collect::<Vec<_>>(),
        );
        Some(CompiledRule {
            rule,
            program,
            message: message.trim().to_string(),
            message_expression: message_expression_program.map(|c| c.program),
            depth: rule_depth.max(message_depth),
            field_path: normalized_field_path,
            reason,
            uses_old_self,
            optional_old_self: optional_old_self.unwrap_or(false),
            shown: shown_text,
            fields,
        })
    }
}

/// Normalizes a rule's `fieldPath` (`.spec.foo`, `.a['b'].c`, `.list[0]`) into
/// the child path kube-apiserver appends (`spec.foo`, `a.b.c`, `list[0]`).
fn normalize_field_path(fp: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = fp;
    if rest.is_empty() {
        return Err("fieldPath must be non-empty".into());
    }
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let name = &r[..end];
            if name.is_empty() {
                return Err("fieldPath must be a valid path: empty field name".into());
            }
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(name);
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix("['") {
            let end = r
                .find("']")
                .ok_or("fieldPath must be a valid path: unclosed [")?;
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&r[..end]);
            rest = &r[end + 2..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r
                .find(']')
                .ok_or("fieldPath must be a valid path: unclosed [")?;
            let idx = &r[..end];
            if idx.is_empty() || !idx.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!(
                    "fieldPath must be a valid path: invalid index {idx:?}"
                ));
            }
            out.push('[');
            out.push_str(idx);
            out.push(']');
            rest = &r[end + 1..];
        } else {
            return Err("fieldPath must be a valid path: expected [ or . or EOF".into());
        }
    }
    Ok(out)
}

fn bool_of(m: &Map<String, Value>, k: &str) -> bool {
    m.get(k).and_then(Value::as_bool).unwrap_or(false)
}

fn str_of(m: &Map<String, Value>, k: &str) -> Option<String> {
    m.get(k).and_then(Value::as_str).map(String::from)
}

fn f64_of(m: &Map<String, Value>, k: &str) -> Option<f64> {
    m.get(k).and_then(Value::as_f64)
}

fn i64_of(m: &Map<String, Value>, k: &str) -> Option<i64> {
    m.get(k)
        .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_paths_normalize() {
        assert_eq!(normalize_field_path(".spec.foo").as_deref(), Ok("spec.foo"));
        assert_eq!(
            normalize_field_path(".a['b.c'].d").as_deref(),
            Ok("a.b.c.d")
        );
        assert_eq!(
            normalize_field_path(".list[0].x").as_deref(),
            Ok("list[0].x")
        );
        assert!(normalize_field_path("foo").is_err());
        assert!(normalize_field_path(".a[x]").is_err());
        assert!(normalize_field_path("").is_err());
    }
}
