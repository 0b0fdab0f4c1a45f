//! Validation of an object against a compiled schema: first the OpenAPI
//! keywords (worded as kube-openapi words them, mapped to field errors as
//! apiextensions-apiserver maps them), then list-type invariants, then the CEL
//! rules; with validation ratcheting on update (errors in values unchanged
//! from the old object are dropped, as kube-apiserver does by default).

use serde_json::Value;

use super::cel::{self, OldSelf, Outcome};
use super::compile::Node;
use super::errors::{BadValue, FieldError, FieldErrorKind, go_float, go_quote};

/// A path segment.
#[derive(Clone, Copy, Debug)]
enum Seg<'a> {
    Root,
    Prop(&'a str),
    Key(&'a str),
    Index(usize),
}

/// A path into the object, rendered in two styles only when an error names it: a
/// segment and a borrow of its parent (extending it allocates nothing; validation of a
/// valid object renders none).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Path<'a> {
    parent: Option<&'a Path<'a>>,
    seg: Seg<'a>,
}

impl Default for Path<'_> {
    fn default() -> Self {
        Path {
            parent: None,
            seg: Seg::Root,
        }
    }
}

impl<'a> Path<'a> {
    fn prop<'b>(&'b self, k: &'b str) -> Path<'b> {
        Path {
            parent: Some(self),
            seg: Seg::Prop(k),
        }
    }
    fn key<'b>(&'b self, k: &'b str) -> Path<'b> {
        Path {
            parent: Some(self),
            seg: Seg::Key(k),
        }
    }
    fn index(&self, i: usize) -> Path<'_> {
        Path {
            parent: Some(self),
            seg: Seg::Index(i),
        }
    }
    /// Whether this is the root.
    fn is_root(&self) -> bool {
        self.segments().is_empty()
    }
    /// The segments from the root.
    fn segments(&self) -> Vec<Seg<'a>> {
        let mut segs = vec![];
        let mut cur = Some(self);
        while let Some(p) = cur {
            if !matches!(p.seg, Seg::Root) {
                segs.push(p.seg);
            }
            cur = p.parent;
        }
        segs.reverse();
        segs
    }
    /// kube-openapi's names: `spec.map.key`, `spec.list[0]`; empty at the root.
    fn openapi(&self) -> String {
        let mut s = String::new();
        for seg in self.segments() {
            match seg {
                Seg::Prop(k) | Seg::Key(k) => {
                    if !s.is_empty() {
                        s.push('.');
                    }
                    s.push_str(k);
                }
                Seg::Index(i) => s.push_str(&format!("[{i}]")),
                Seg::Root => {}
            }
        }
        s
    }
    /// apimachinery `field.Path` rendering: `spec.map[key]`, `spec.list[0]`, `<nil>` at the root.
    fn field(&self) -> String {
        let segs = self.segments();
        if segs.is_empty() {
            return "<nil>".into();
        }
        let mut s = String::new();
        for seg in segs {
            match seg {
                Seg::Prop(k) => {
                    if !s.is_empty() {
                        s.push('.');
                    }
                    s.push_str(k);
                }
                Seg::Key(k) => {
                    if s.is_empty() {
                        s.push_str(k);
                    } else {
                        s.push_str(&format!("[{k}]"));
                    }
                }
                Seg::Index(i) => s.push_str(&format!("[{i}]")),
                Seg::Root => {}
            }
        }
        s
    }
    /// The field for an OpenAPI error: `<nil>` at the root, else the kube-openapi name.
    fn openapi_field(&self) -> String {
        if self.is_root() {
            "<nil>".into()
        } else {
            self.openapi()
        }
    }
}

/// A path's two renderings for OpenAPI errors, made on first use (most values have no
/// error).
struct Names<'p, 'a> {
    path: &'p Path<'a>,
    name: std::cell::OnceCell<String>,
    field: std::cell::OnceCell<String>,
}

impl<'p, 'a> Names<'p, 'a> {
    fn new(path: &'p Path<'a>) -> Self {
        Names {
            path,
            name: std::cell::OnceCell::new(),
            field: std::cell::OnceCell::new(),
        }
    }
    /// kube-openapi's name ([`Path::openapi`]).
    fn name(&self) -> &str {
        self.name.get_or_init(|| self.path.openapi())
    }
    /// The error's field ([`Path::openapi_field`]).
    fn field(&self) -> String {
        self.field.get_or_init(|| self.path.openapi_field()).clone()
    }
}

/// An error with whether validation ratcheting may drop it.
struct Collected {
    err: FieldError,
    ratchetable: bool,
}

struct Ctx {
    out: Vec<Collected>,
}

impl Ctx {
    fn push(&mut self, err: FieldError, ratchetable: bool) {
        self.out.push(Collected { err, ratchetable });
    }
}

/// Validates `obj` (and correlates it with `old` on update).
pub(crate) fn validate(root: &Node, obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut ctx = Ctx { out: Vec::new() };
    openapi(root, obj, old, &Path::default(), &mut ctx, true);
    list_types(root, obj, old, &Path::default(), &mut ctx);
    let mut errors: Vec<FieldError> = ctx
        .out
        .drain(..)
        .filter(|c| !c.ratchetable)
        .map(|c| c.err)
        .collect();
    let blocking = errors.iter().any(|e| {
        matches!(
            e.kind,
            FieldErrorKind::NotSupported
                | FieldErrorKind::Required
                | FieldErrorKind::TooLong
                | FieldErrorKind::TooMany
                | FieldErrorKind::TypeInvalid
        )
    });
    if blocking && root.has_rules() {
        errors.push(FieldError::invalid(
            "<nil>",
            &Value::Null,
            "some validation rules were not checked because the object was invalid; correct the existing errors to complete validation",
        ));
    } else if !blocking {
        cel_walk(root, obj, old, &Path::default(), &mut ctx, true, false);
        errors.extend(ctx.out.drain(..).filter(|c| !c.ratchetable).map(|c| c.err));
    }
    errors
}

/// Validates a standalone value (e.g. a schema's `default`) against `node`'s
/// OpenAPI keywords, naming errors under `name`.
pub(crate) fn validate_value(node: &Node, v: &Value, name: &str) -> Vec<FieldError> {
    let mut ctx = Ctx { out: Vec::new() };
    openapi(node, v, None, &path_from_name(name), &mut ctx, false);
    ctx.out.into_iter().map(|c| c.err).collect()
}

/// The JSON type name kube-openapi infers for a value.
fn data_type(v: &Value) -> &'static str {
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

fn type_matches(ty: &str, v: &Value) -> bool {
    match (ty, v) {
        ("object", Value::Object(_)) => true,
        ("array", Value::Array(_)) => true,
        ("string", Value::String(_)) => true,
        ("boolean", Value::Bool(_)) => true,
        ("number", Value::Number(_)) => true,
        ("integer", Value::Number(n)) => {
            n.is_i64()
                || n.is_u64()
                || n.as_f64()
                    .is_some_and(|f| f.fract() == 0.0 && f.is_finite())
        }
        _ => false,
    }
}

fn type_error(name: &str, field: String, ty: &str, v: &Value) -> FieldError {
    let dt = data_type(v);
    FieldError::type_invalid(
        field,
        &Value::from(dt),
        format!("{name} in body must be of type {ty}: {}", go_quote(dt)),
    )
}

/// kube-openapi + apiextensions' mapping to field errors.
fn openapi(node: &Node, v: &Value, old: Option<&Value>, path: &Path, ctx: &mut Ctx, is_root: bool) {
    let unchanged = old.is_some_and(|o| o == v);
    // Ratcheting drops every error of an unchanged value, and everything below it is
    // unchanged too: nothing to check (the spec, on a status update).
    if unchanged {
        return;
    }
    let names = Names::new(path);
    let mut errs: Vec<FieldError> = Vec::new();
    // type
    if v.is_null() {
        if let Some(ty) = &node.ty
            && !node.nullable
        {
            errs.push(type_error(names.name(), names.field(), ty, v));
        }
        for e in errs {
            ctx.push(e, unchanged);
        }
        return;
    }
    if node.int_or_string && !matches!(v, Value::String(_)) && !type_matches("integer", v) {
        errs.push(FieldError::invalid(
            names.field(),
            &Value::from(""),
            format!(
                "{name} in body must validate at least one schema (anyOf)",
                name = names.name()
            ),
        ));
        errs.push(type_error(names.name(), names.field(), "integer", v));
        for e in errs {
            ctx.push(e, unchanged);
        }
        return;
    }
    if let Some(ty) = &node.ty
        && !type_matches(ty, v)
    {
        errs.push(type_error(names.name(), names.field(), ty, v));
        enum_check(node, v, &names, &mut errs);
        for e in errs {
            ctx.push(e, unchanged);
        }
        return;
    }
    // junctors
    junctors(node, v, &names, &mut errs);
    match v {
        Value::String(s) => {
            let len = i64::try_from(s.chars().count()).unwrap_or(i64::MAX);
            if let Some(max) = node.max_length
                && len > max
            {
                errs.push(FieldError::too_long(names.field(), max));
            }
            if let Some(min) = node.min_length
                && len < min
            {
                errs.push(FieldError::invalid(
                    names.field(),
                    v,
                    format!(
                        "{name} in body should be at least {min} chars long",
                        name = names.name()
                    ),
                ));
            }
            if let Some((p, re)) = &node.pattern
                && !re.is_match(s)
            {
                errs.push(FieldError::invalid(
                    names.field(),
                    v,
                    format!("{name} in body should match '{p}'", name = names.name()),
                ));
            }
            if let Some(f) = &node.format
                && !super::formats::valid(f, s)
            {
                errs.push(FieldError::type_invalid(
                    names.field(),
                    v,
                    format!(
                        "{name} in body must be of type {f}: {}",
                        go_quote(s),
                        name = names.name()
                    ),
                ));
            }
        }
        Value::Number(n) => numbers(node, n, v, &names, &mut errs),
        Value::Array(a) => {
            let size = i64::try_from(a.len()).unwrap_or(i64::MAX);
            if let Some(min) = node.min_items
                && size < min
            {
                errs.push(FieldError::invalid(
                    names.field(),
                    &Value::from(size),
                    format!(
                        "{name} in body should have at least {min} items",
                        name = names.name()
                    ),
                ));
            }
            if let Some(max) = node.max_items
                && size > max
            {
                errs.push(FieldError::too_many(names.field(), size, max));
            }
            if node.unique_items && has_duplicates(a) {
                errs.push(FieldError::invalid(
                    names.field(),
                    v,
                    format!(
                        "{name} in body shouldn't contain duplicates",
                        name = names.name()
                    ),
                ));
            }
        }
        _ => {}
    }
    enum_check(node, v, &names, &mut errs);
    if let Value::Object(m) = v {
        let size = i64::try_from(m.len()).unwrap_or(i64::MAX);
        if let Some(max) = node.max_properties
            && size > max
        {
            errs.push(FieldError::too_many(names.field(), size, max));
        }
        if let Some(min) = node.min_properties
            && size < min
        {
            errs.push(FieldError::invalid(
                names.field(),
                &Value::from(size),
                format!(
                    "{name} in body should have at least {min} properties",
                    name = names.name()
                ),
            ));
        }
        for r in &node.required {
            if !m.contains_key(r) {
                errs.push(FieldError::required(path.prop(r).openapi(), ""));
            }
        }
    }
    for e in errs {
        ctx.push(e, unchanged);
    }
    // children
    match v {
        Value::Object(m) => {
            let old_m = old.and_then(Value::as_object);
            // properties in schema order, then additional keys in object order
            for (k, child) in &node.properties {
                if let Some(cv) = m.get(k) {
                    if is_root && k == "metadata" {
                        // kube-apiserver applies only name/generateName constraints here.
                        for field in ["name", "generateName"] {
                            if let (Some(fs), Some(fv)) = (child.property(field), cv.get(field)) {
                                let o = old_m.and_then(|o| o.get(k)).and_then(|o| o.get(field));
                                openapi(fs, fv, o, &path.prop(k).prop(field), ctx, false);
                            }
                        }
                        continue;
                    }
                    openapi(
                        child,
                        cv,
                        old_m.and_then(|o| o.get(k)),
                        &path.prop(k),
                        ctx,
                        false,
                    );
                }
            }
            if let Some(add) = &node.additional {
                for (k, cv) in m {
                    if node.property(k).is_none() {
                        openapi(
                            add,
                            cv,
                            old_m.and_then(|o| o.get(k)),
                            &path.prop(k),
                            ctx,
                            false,
                        );
                    }
                }
            }
        }
        Value::Array(a) => {
            if let Some(items) = &node.items {
                for (i, cv) in a.iter().enumerate() {
                    let o = if unchanged {
                        old.and_then(|o| o.get(i))
                    } else {
                        correlate_item(node, cv, old)
                    };
                    openapi(items, cv, o, &path.index(i), ctx, false);
                }
            }
        }
        _ => {}
    }
}

fn enum_check(node: &Node, v: &Value, names: &Names<'_, '_>, errs: &mut Vec<FieldError>) {
    if let Some(values) = &node.enum_values
        && !values.iter().any(|e| json_eq(e, v))
    {
        let shown: Vec<String> = values
            .iter()
            .map(|e| match e {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect();
        errs.push(FieldError::not_supported(names.field(), v, &shown));
    }
}

/// JSON equality treating 1 and 1.0 as equal.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn has_duplicates(a: &[Value]) -> bool {
    for (i, x) in a.iter().enumerate() {
        if a[..i].iter().any(|y| json_eq(x, y)) {
            return true;
        }
    }
    false
}

fn junctors(node: &Node, v: &Value, names: &Names<'_, '_>, errs: &mut Vec<FieldError>) {
    if node.any_of.is_empty()
        && node.one_of.is_empty()
        && node.all_of.is_empty()
        && node.not.is_none()
    {
        return;
    }
    let name = names.name();
    let field = names.field();
    let run = |n: &Node| {
        let mut c = Ctx { out: Vec::new() };
        openapi(n, v, None, &path_from_name(name), &mut c, false);
        c.out.into_iter().map(|c| c.err).collect::<Vec<_>>()
    };
    let composite = |msg: String| FieldError::invalid(field.clone(), &Value::from(""), msg);
    // kube-openapi's order: anyOf, oneOf, allOf, not.
    if !node.any_of.is_empty() {
        let results: Vec<Vec<FieldError>> = node.any_of.iter().map(run).collect();
        if results.iter().all(|r| !r.is_empty()) {
            errs.push(composite(format!(
                "{name} in body must validate at least one schema (anyOf)"
            )));
            if let Some(best) = results.into_iter().next() {
                errs.extend(best);
            }
        }
    }
    if !node.one_of.is_empty() {
        let results: Vec<Vec<FieldError>> = node.one_of.iter().map(run).collect();
        let valid = results.iter().filter(|r| r.is_empty()).count();
        if valid != 1 {
            let extra = if valid == 0 {
                "Found none valid".to_string()
            } else {
                format!("Found {valid} valid alternatives")
            };
            errs.push(composite(format!(
                "{name} in body must validate one and only one schema (oneOf). {extra}"
            )));
            if valid == 0
                && let Some(best) = results.into_iter().next()
            {
                errs.extend(best);
            }
        }
    }
    if !node.all_of.is_empty() {
        let mut validated = 0;
        for n in &node.all_of {
            let r = run(n);
            if r.is_empty() {
                validated += 1;
            }
            errs.extend(r);
        }
        if validated != node.all_of.len() {
            let extra = if validated == 0 {
                ". None validated"
            } else {
                ""
            };
            errs.push(composite(format!(
                "{name} in body must validate all the schemas (allOf){extra}"
            )));
        }
    }
    if let Some(not) = &node.not
        && run(not).is_empty()
    {
        errs.push(composite(format!(
            "{name} in body must not validate the schema provided"
        )));
    }
}

fn path_from_name(name: &str) -> Path<'_> {
    if name.is_empty() {
        Path::default()
    } else {
        Path {
            parent: None,
            seg: Seg::Prop(name),
        }
    }
}

fn numbers(
    node: &Node,
    n: &serde_json::Number,
    v: &Value,
    names: &Names<'_, '_>,
    errs: &mut Vec<FieldError>,
) {
    let is_int = n.is_i64() || n.is_u64();
    let f = n.as_f64().unwrap_or(0.0);
    let bound = |b: f64| {
        if is_int {
            format!("{}", b as i64)
        } else {
            go_float(b)
        }
    };
    if let Some(max) = node.maximum {
        let (bad, word) = if node.exclusive_maximum {
            (f >= max, "less than")
        } else {
            (f > max, "less than or equal to")
        };
        if bad {
            errs.push(FieldError::invalid(
                names.field(),
                v,
                format!(
                    "{name} in body should be {word} {}",
                    bound(max),
                    name = names.name()
                ),
            ));
        }
    }
    if let Some(min) = node.minimum {
        let (bad, word) = if node.exclusive_minimum {
            (f <= min, "greater than")
        } else {
            (f < min, "greater than or equal to")
        };
        if bad {
            errs.push(FieldError::invalid(
                names.field(),
                v,
                format!(
                    "{name} in body should be {word} {}",
                    bound(min),
                    name = names.name()
                ),
            ));
        }
    }
    if let Some(m) = node.multiple_of {
        let q = f / m;
        if (q - q.round()).abs() > 1e-9 {
            errs.push(FieldError::invalid(
                names.field(),
                v,
                format!(
                    "{name} in body should be a multiple of {}",
                    bound(m),
                    name = names.name()
                ),
            ));
        }
    }
}

/// The old element correlated with `item` of a list: only `x-kubernetes-list-type: map` correlates.
fn correlate_item<'a>(list: &Node, item: &Value, old: Option<&'a Value>) -> Option<&'a Value> {
    if list.list_type.as_deref() != Some("map") || list.list_map_keys.is_empty() {
        return None;
    }
    let old = old?.as_array()?;
    let keys = |x: &Value| -> Vec<Option<Value>> {
        list.list_map_keys
            .iter()
            .map(|k| x.get(k).cloned())
            .collect()
    };
    let want = keys(item);
    old.iter().find(|o| keys(o) == want)
}

/// `x-kubernetes-list-type` set/map uniqueness (apiextensions `listtype` validation).
fn list_types(node: &Node, v: &Value, old: Option<&Value>, path: &Path, ctx: &mut Ctx) {
    let unchanged = old.is_some_and(|o| o == v);
    // As in `openapi`: every error in an unchanged value is ratcheted away.
    if unchanged {
        return;
    }
    match v {
        Value::Array(a) => {
            match node.list_type.as_deref() {
                Some("set") => {
                    let mut seen = std::collections::HashSet::new();
                    for (i, x) in a.iter().enumerate() {
                        if !seen.insert(canonical(x)) {
                            ctx.push(FieldError::duplicate(path.index(i).field(), x), unchanged);
                        }
                    }
                }
                Some("map") => {
                    let mut seen = std::collections::HashSet::new();
                    for (i, x) in a.iter().enumerate() {
                        let mut shown = serde_json::Map::new();
                        for k in &node.list_map_keys {
                            if let Some(val) = x.get(k) {
                                shown.insert(k.clone(), val.clone());
                            }
                        }
                        let shown = Value::Object(shown);
                        if !seen.insert(canonical(&shown)) {
                            ctx.push(
                                FieldError::duplicate(path.index(i).field(), &shown),
                                unchanged,
                            );
                        }
                    }
                }
                _ => {}
            }
            if let Some(items) = &node.items {
                for (i, x) in a.iter().enumerate() {
                    let o = if unchanged {
                        old.and_then(|o| o.get(i))
                    } else {
                        correlate_item(node, x, old)
                    };
                    list_types(items, x, o, &path.index(i), ctx);
                }
            }
        }
        Value::Object(m) => {
            let old_m = old.and_then(Value::as_object);
            for (k, x) in m {
                if let Some(p) = node.property(k) {
                    list_types(p, x, old_m.and_then(|o| o.get(k)), &path.prop(k), ctx);
                } else if let Some(add) = &node.additional {
                    list_types(add, x, old_m.and_then(|o| o.get(k)), &path.key(k), ctx);
                }
            }
        }
        _ => {}
    }
}

/// A key identifying a JSON value for duplicate detection (objects have
/// sorted keys; numbers compare by their f64 value).
fn canonical(v: &Value) -> String {
    match v {
        Value::Number(n) => format!("n:{}", n.as_f64().unwrap_or(0.0)),
        Value::Array(a) => {
            let parts: Vec<String> = a.iter().map(canonical).collect();
            format!("[{}]", parts.join(","))
        }
        Value::Object(m) => {
            let mut parts: Vec<String> = m
                .iter()
                .map(|(k, x)| format!("{}:{}", go_quote(k), canonical(x)))
                .collect();
            parts.sort();
            format!("{{{}}}", parts.join(","))
        }
        other => other.to_string(),
    }
}

/// Converts a JSON value to CEL following the schema (numbers are doubles).
fn to_cel_typed(node: Option<&Node>, v: &Value) -> ::cel::Value {
    use std::collections::HashMap;
    use std::sync::Arc;
    match v {
        Value::Array(a) => {
            let items = node.and_then(|n| n.items.as_deref());
            ::cel::Value::List(Arc::new(a.iter().map(|x| to_cel_typed(items, x)).collect()))
        }
        Value::Object(m) => {
            let map: HashMap<::cel::objects::Key, ::cel::Value> = m
                .iter()
                .map(|(k, x)| {
                    (
                        ::cel::objects::Key::String(Arc::new(k.clone())),
                        to_cel_typed(node.and_then(|n| n.child(k)), x),
                    )
                })
                .collect();
            ::cel::Value::Map(::cel::objects::Map { map: Arc::new(map) })
        }
        other => cel::to_cel(
            other,
            node.is_some_and(|n| n.ty.as_deref() == Some("number")),
        ),
    }
}

/// The fields of `self` that `rules` read (see [`cel::selected_fields`]); `None`: the
/// whole value.
fn fields_read<'r>(rules: impl Iterator<Item = &'r cel::CompiledRule>) -> Option<Vec<&'r str>> {
    let mut out: Vec<&str> = Vec::new();
    for r in rules {
        out.extend(r.fields.as_ref()?.iter().map(String::as_str));
    }
    out.sort_unstable();
    out.dedup();
    Some(out)
}

/// The value `self` is bound to; at the root, metadata keeps only name and generateName.
/// With `fields`, an object keeps only those fields (what the rules evaluated read).
fn self_value(node: &Node, v: &Value, is_root: bool, fields: Option<&[&str]>) -> ::cel::Value {
    use std::sync::Arc;
    let Value::Object(m) = v else {
        return to_cel_typed(Some(node), v);
    };
    if !is_root && fields.is_none() {
        return to_cel_typed(Some(node), v);
    }
    let entry = |(k, x): (&String, &Value)| {
        let value = match x {
            Value::Object(meta) if is_root && k == "metadata" => {
                let kept: serde_json::Map<String, Value> = ["name", "generateName"]
                    .into_iter()
                    .filter_map(|n| meta.get_key_value(n))
                    .map(|(n, x)| (n.clone(), x.clone()))
                    .collect();
                to_cel_typed(node.child(k), &Value::Object(kept))
            }
            x => to_cel_typed(node.child(k), x),
        };
        (::cel::objects::Key::String(Arc::new(k.clone())), value)
    };
    let map: std::collections::HashMap<::cel::objects::Key, ::cel::Value> = match fields {
        Some(f) => f
            .iter()
            .filter_map(|k| m.get_key_value(*k))
            .map(entry)
            .collect(),
        None => m.iter().map(entry).collect(),
    };
    ::cel::Value::Map(::cel::objects::Map { map: Arc::new(map) })
}

fn cel_walk(
    node: &Node,
    v: &Value,
    old: Option<&Value>,
    path: &Path,
    ctx: &mut Ctx,
    is_root: bool,
    parent_unchanged: bool,
) {
    // Nothing to evaluate here or below (most of a status, say): no walk.
    if v.is_null() || !node.rules_below() {
        return;
    }
    let old = old.filter(|o| !o.is_null());
    let equal = old.is_some_and(|o| o == v);
    // Inside an unchanged value everything is unchanged (ratcheting), even
    // where old and new cannot be correlated (atomic lists).
    let unchanged = parent_unchanged || equal;
    // Ratcheting drops every error of a rule without oldSelf on an unchanged value: such
    // rules are not evaluated there at all (the spec, on a status update), nor is a
    // subtree without transition rules walked.
    if unchanged && !node.has_transition_rules() {
        return;
    }
    let evaluated = |r: &&cel::CompiledRule| r.uses_old_self || !unchanged;
    if node.rules.iter().any(|r| evaluated(&r)) {
        // Only the fields the rules evaluated here read are converted (the spec's
        // transition rule on `cancel`, on a status write: none of the spec).
        let fields = fields_read(node.rules.iter().filter(evaluated));
        let this = self_value(node, v, is_root, fields.as_deref());
        // An equal old value converts to the same CEL value: converted once.
        let old_cel = match old {
            Some(_) if equal => Some(this.clone()),
            o => o.map(|o| self_value(node, o, is_root, fields.as_deref())),
        };
        for rule in &node.rules {
            let binding = if !rule.uses_old_self {
                OldSelf::None
            } else if rule.optional_old_self {
                OldSelf::Optional(old_cel.as_ref())
            } else {
                match &old_cel {
                    Some(o) => OldSelf::Value(o),
                    None => continue,
                }
            };
            let ratchet = unchanged && !rule.uses_old_self;
            if ratchet {
                continue;
            }
            let ty = Value::from(node.type_name());
            match cel::evaluate(rule, &this, binding) {
                Outcome::Pass => {}
                Outcome::Error(msg) => {
                    ctx.push(FieldError::invalid(path.field(), &ty, msg), ratchet);
                }
                Outcome::Fail(msg) => {
                    let field = match &rule.field_path {
                        Some(fp) if path.is_root() => fp.clone(),
                        Some(fp) if fp.starts_with('[') => format!("{}{fp}", path.field()),
                        Some(fp) => format!("{}.{fp}", path.field()),
                        None => path.field(),
                    };
                    // 1.35 shows the value a rule failed on, omitted for objects and
                    // arrays (`field.OmitValueType{}`).
                    let shown = if v.is_object() || v.is_array() {
                        BadValue::Omitted
                    } else {
                        BadValue::Json(v.clone())
                    };
                    let err = match rule.reason.as_deref() {
                        Some("FieldValueForbidden") => FieldError::forbidden(field, msg),
                        Some("FieldValueRequired") => FieldError::required(field, msg),
                        Some("FieldValueDuplicate") => {
                            FieldError::new(field, FieldErrorKind::Duplicate, shown, "")
                        }
                        _ => FieldError::new(field, FieldErrorKind::Invalid, shown, msg),
                    };
                    ctx.push(err, ratchet);
                }
            }
        }
    }
    match v {
        Value::Object(m) => {
            let old_m = old.and_then(Value::as_object);
            for (k, x) in m {
                if is_root && k == "metadata" {
                    continue;
                }
                if let Some(p) = node.property(k) {
                    cel_walk(
                        p,
                        x,
                        old_m.and_then(|o| o.get(k)),
                        &path.prop(k),
                        ctx,
                        false,
                        unchanged,
                    );
                } else if let Some(add) = &node.additional {
                    cel_walk(
                        add,
                        x,
                        old_m.and_then(|o| o.get(k)),
                        &path.key(k),
                        ctx,
                        false,
                        unchanged,
                    );
                }
            }
        }
        Value::Array(a) => {
            if let Some(items) = &node.items {
                for (i, x) in a.iter().enumerate() {
                    cel_walk(
                        items,
                        x,
                        correlate_item(node, x, old),
                        &path.index(i),
                        ctx,
                        false,
                        unchanged,
                    );
                }
            }
        }
        _ => {}
    }
}
