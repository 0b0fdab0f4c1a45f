//! Object semantics independent of HTTP: create, get, list, update (main resource and
//! `/status`), patch, server-side apply, delete with finalizers and propagation.

use std::sync::{Arc, RwLock};

use serde_json::{Value, json};

use super::crd::{self, CRD_KEY};
use super::error::{ApiError, ApiResult, Cause, ObjRef};
use super::meta::{
    finalizers_of, is_deleting, meta_field, metadata_mut, name_of, namespace_of, new_uid,
    now_rfc3339, random_suffix, remove_meta, rv_of, set_meta, uid_of, validate_labels,
    validate_name,
};
use super::patch::{self, PatchType};
use super::project::Paths;
use super::resources::{Registry, ResourceInfo, from_crd};
use super::selectors::{FieldSelector, LabelSelector};
use super::ssa::{self, SchemaCtx, Writer};
use super::store::{Obj, Packed, State, Store};

/// Storage key of namespaces.
pub const NS_KEY: &str = "/namespaces";
/// Storage key of ValidatingAdmissionPolicies.
const VAP_KEY: &str = "admissionregistration.k8s.io/validatingadmissionpolicies";
/// Storage key of ValidatingAdmissionPolicyBindings.
const VAPB_KEY: &str = "admissionregistration.k8s.io/validatingadmissionpolicybindings";

/// `fieldValidation` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    /// Drop unknown fields silently.
    Ignore,
    /// Drop unknown fields with a warning (kube-apiserver's default).
    #[default]
    Warn,
    /// Refuse unknown fields with 400.
    Strict,
}

/// Options of a write.
#[derive(Debug, Clone, Default)]
pub struct WriteOpts {
    /// `dryRun=All`.
    pub dry_run: bool,
    /// Field manager (from `fieldManager` or the User-Agent).
    pub manager: String,
    /// Whether `fieldManager` was given explicitly.
    pub manager_explicit: bool,
    /// `fieldValidation`.
    pub field_validation: FieldValidation,
    /// `force` (server-side apply).
    pub force: bool,
    /// Who writes (checked against ValidatingAdmissionPolicies); `None` is the loopback
    /// administrator.
    pub user: Option<Arc<super::admission::UserInfo>>,
}

/// `DeleteOptions`.
#[derive(Debug, Clone, Default)]
pub struct DeleteOpts {
    /// `Orphan`, `Background` or `Foreground`.
    pub propagation: Option<String>,
    /// Precondition on uid.
    pub uid: Option<String>,
    /// Precondition on resourceVersion.
    pub resource_version: Option<String>,
    /// `dryRun=All`.
    pub dry_run: bool,
}

/// List parameters.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Label selector.
    pub labels: LabelSelector,
    /// Field selector.
    pub fields: FieldSelector,
    /// Page size.
    pub limit: Option<usize>,
    /// Continue token.
    pub cont: Option<String>,
    /// `resourceVersion=N&resourceVersionMatch=Exact`: the state at N.
    pub exact: Option<u64>,
}

/// A response body.
#[derive(Debug)]
pub enum Body {
    /// A JSON value.
    Json(Value),
    /// A stored object's JSON, which is already the object as served (see
    /// [`served_prefix`]): sent as stored, not copied and serialised again.
    Stored(Packed),
}

/// `{"apiVersion":"<served>","kind":"<Kind>",`: the JSON of a stored object of `info`
/// that starts with it is the object as served at `info`'s version. (A stored object
/// is a sorted JSON object, so top-level `apiVersion` and `kind` are its first two keys
/// unless a key sorts between them; then, or at another version, it is not used as is.)
pub fn served_prefix(info: &ResourceInfo) -> Vec<u8> {
    format!(
        "{{\"apiVersion\":{},\"kind\":{},",
        Value::String(info.api_version()),
        Value::String(info.kind.clone())
    )
    .into_bytes()
}

/// The result of a write.
#[derive(Debug)]
pub struct Outcome {
    /// Response body.
    pub body: Body,
    /// HTTP status.
    pub code: u16,
    /// `Warning` headers.
    pub warnings: Vec<String>,
}

/// The server's shared state: store + registry.
#[derive(Debug)]
pub struct Core {
    /// The object store.
    pub store: Store,
    registry: RwLock<Arc<Registry>>,
    /// Wakes the garbage collector.
    pub gc_wake: tokio::sync::Notify,
    /// Set to true when the server shuts down (ends watches).
    pub shutdown: tokio::sync::watch::Sender<bool>,
    /// For each served resource (storage key), the resourceVersion it has been served
    /// since: a watch from an older resourceVersion gets 410 Expired, as kube-apiserver's
    /// watch cache answers one older than the revision it was initialised at.
    served_since: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

/// A failed delete precondition: kube-apiserver's storage names the Kind, not the
/// resource (`Operation cannot be fulfilled on BatchJob.asgbatch.io "x": ...`).
fn precondition_failed(info: &ResourceInfo, name: &str, why: &str) -> ApiError {
    let qualified = if info.group.is_empty() {
        info.kind.clone()
    } else {
        format!("{}.{}", info.kind, info.group)
    };
    let mut details = json!({"name": name, "kind": info.kind});
    if !info.group.is_empty() {
        details["group"] = json!(info.group);
    }
    ApiError {
        code: 409,
        reason: "Conflict",
        message: format!("Operation cannot be fulfilled on {qualified} \"{name}\": {why}"),
        details: Some(details),
    }
}

fn objref<'a>(info: &'a ResourceInfo, name: &'a str) -> ObjRef<'a> {
    ObjRef {
        plural: &info.plural,
        group: &info.group,
        name,
    }
}

/// Makes the top-level fields of `c` for which `keep` holds those of `from` (as many
/// as it has, and no other), copying only the values that differ (a `c` that is not an
/// object becomes one).
fn take_fields(c: &mut Value, from: &serde_json::Map<String, Value>, keep: impl Fn(&str) -> bool) {
    let Some(m) = c.as_object_mut() else {
        *c = Value::Object(
            from.iter()
                .filter(|(k, _)| keep(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        );
        return;
    };
    m.retain(|k, _| !keep(k) || from.contains_key(k));
    for (k, v) in from.iter().filter(|(k, _)| keep(k)) {
        match m.get_mut(k) {
            Some(x) if x == v => {}
            Some(x) => *x = v.clone(),
            None => {
                m.insert(k.clone(), v.clone());
            }
        }
    }
}

/// Whether two objects are equal but for the top-level keys in `skip` (compared in
/// place: no copy of either object).
fn equal_except(a: &Value, b: &Value, skip: &[&str]) -> bool {
    match (a.as_object(), b.as_object()) {
        (Some(a), Some(b)) => {
            let keep = |(k, _): &(&String, &Value)| !skip.contains(&k.as_str());
            a.iter().filter(keep).eq(b.iter().filter(keep))
        }
        _ => a == b,
    }
}

/// Whether the spec part (all but metadata, and status when `drop_status`) is the same.
fn same_spec(a: &Value, b: &Value, drop_status: bool) -> bool {
    if drop_status {
        equal_except(a, b, &["metadata", "status"])
    } else {
        equal_except(a, b, &["metadata"])
    }
}

/// Whether two objects are the same but for resourceVersion and managedFields times
/// (no-op detection), compared in place.
fn same_but_rv(a: &Value, b: &Value) -> bool {
    if !equal_except(a, b, &["metadata"]) {
        return false;
    }
    let (ma, mb) = (a.get("metadata"), b.get("metadata"));
    let (Some(ma), Some(mb)) = (ma, mb) else {
        return ma == mb;
    };
    if !equal_except(ma, mb, &["resourceVersion", "managedFields"]) {
        return false;
    }
    match (ma.get("managedFields"), mb.get("managedFields")) {
        (Some(Value::Array(fa)), Some(Value::Array(fb))) => {
            fa.len() == fb.len()
                && fa
                    .iter()
                    .zip(fb)
                    .all(|(x, y)| equal_except(x, y, &["time"]))
        }
        (x, y) => x == y,
    }
}

/// The document of an apply patch: YAML, of which JSON is a part. Clients (kube-rs,
/// client-go) send JSON, which is read as JSON (a fraction of the cost of a YAML parse,
/// the same `Value`: both keep the last of a repeated key); anything else is YAML.
fn apply_document(body: &[u8]) -> ApiResult<Value> {
    if body.trim_ascii_start().starts_with(b"{") {
        if let Ok(v) = serde_json::from_slice::<Value>(body) {
            return Ok(v);
        }
    }
    serde_yaml::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
}

fn ensure_object(body: Value) -> ApiResult<Value> {
    match &body {
        Value::Object(m) => {
            if let Some(md) = m.get("metadata") {
                if !md.is_object() && !md.is_null() {
                    return Err(ApiError::bad_request(
                        "metadata: expected an object (json: cannot unmarshal into Go struct field of type v1.ObjectMeta)",
                    ));
                }
            }
            Ok(body)
        }
        _ => Err(ApiError::bad_request(
            "the body of the request must be a JSON or YAML object",
        )),
    }
}

/// Registry derived from the CRDs currently in the store.
pub fn registry_from_state(st: &State) -> Registry {
    let customs = st
        .list(CRD_KEY, None, None)
        .iter()
        .flat_map(|c| from_crd(c))
        .collect();
    Registry::new(customs)
}

impl Core {
    /// A core over a store; seeds `default` and `kube-system` namespaces.
    pub fn new(store: Store) -> Self {
        let reg = store.read(registry_from_state);
        let core = Core {
            store,
            registry: RwLock::new(Arc::new(reg)),
            gc_wake: tokio::sync::Notify::new(),
            shutdown: tokio::sync::watch::Sender::new(false),
            served_since: Default::default(),
        };
        let now = now_rfc3339();
        let _ = core.store.write(|st| {
            for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
                if st.get(NS_KEY, "", ns).is_none() {
                    st.put(
                        NS_KEY,
                        json!({"apiVersion": "v1", "kind": "Namespace",
                            "metadata": {"name": ns, "uid": new_uid(), "creationTimestamp": now,
                                "labels": {"kubernetes.io/metadata.name": ns}},
                            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}),
                    );
                }
            }
            Ok(())
        });
        let reg = core.registry();
        core.store.read(|st| core.note_served(&reg, st.rv()));
        core
    }

    /// Records when each resource of `reg` began to be served (`rv`, the current
    /// resourceVersion, for those new to it) and forgets those no longer served.
    fn note_served(&self, reg: &Registry, rv: u64) {
        let keys: std::collections::HashSet<String> = reg.all().map(|i| i.storage_key()).collect();
        let mut m = self
            .served_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.retain(|k, _| keys.contains(k));
        for k in keys {
            m.entry(k).or_insert(rv);
        }
    }

    /// The resourceVersion the resource `key` has been served since (see
    /// [`Core::note_served`]); 0 when unknown.
    pub fn served_since(&self, key: &str) -> u64 {
        self.served_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    /// The current registry.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Rebuild the registry from the stored CRDs.
    pub fn refresh_registry(&self) {
        let (reg, rv) = self.store.read(|st| (registry_from_state(st), st.rv()));
        self.note_served(&reg, rv);
        *self
            .registry
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(reg);
    }

    fn rebuild_registry(&self, st: &State) {
        let reg = registry_from_state(st);
        self.note_served(&reg, st.rv());
        *self
            .registry
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(reg);
    }

    /// All CRD objects.
    pub fn crds(&self) -> Vec<Value> {
        self.store.read(|st| {
            st.list(CRD_KEY, None, None)
                .iter()
                .map(|c| (**c).clone())
                .collect()
        })
    }

    /// The object as served at `info`'s version.
    pub fn present(info: &ResourceInfo, obj: &Value) -> Value {
        let mut o = obj.clone();
        if let Some(m) = o.as_object_mut() {
            m.insert("apiVersion".into(), json!(info.api_version()));
            m.insert("kind".into(), json!(info.kind));
        }
        o
    }

    /// GET one object.
    pub fn get(&self, info: &ResourceInfo, ns: &str, name: &str) -> ApiResult<Value> {
        self.store
            .read(|st| st.get(&info.storage_key(), ns, name))
            .map(|o| Self::present(info, &o))
            .ok_or_else(|| ApiError::not_found(objref(info, name)))
    }

    /// LIST: returns (items, list metadata). With `raw`, an object stored as served
    /// ([`served_prefix`]) is returned as its stored JSON ([`Body::Stored`]: not parsed,
    /// copied and serialised again — a relist of 10,000 jobs is mostly that); otherwise,
    /// and for every other object, presented ([`Body::Json`]).
    pub fn list(
        &self,
        info: &ResourceInfo,
        ns: Option<&str>,
        q: &ListQuery,
        raw: bool,
    ) -> ApiResult<(Vec<Body>, Value)> {
        let key = info.storage_key();
        let (start_rv, after) = match &q.cont {
            Some(c) if !c.is_empty() => {
                let bad = || {
                    ApiError::bad_request(format!(
                        "continue key is not valid: invalid continue token {c:?}"
                    ))
                };
                let (rv, rest) = c.split_once(':').ok_or_else(bad)?;
                let rv: u64 = rv.parse().map_err(|_| bad())?;
                let (n, nm) = rest.split_once('/').ok_or_else(bad)?;
                (Some(rv), Some((n.to_string(), nm.to_string())))
            }
            _ => (None, None),
        };
        let take = q.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
        let plain = q.labels.is_empty() && q.fields.is_empty();
        // Read under the lock, parse after it. Without selectors only the page is
        // taken (and parsed) and the rest counted: a paginated list stays linear.
        let (objs, total, rv) = match (q.exact, &after) {
            (Some(at), None) => {
                let objs = self.store.read(|st| st.list_at(&key, ns, at));
                let objs = objs.ok_or_else(|| {
                    ApiError::expired("The resourceVersion for the provided list is too old.")
                })?;
                (objs, None, at)
            }
            _ if plain => {
                let (objs, total, rv) = self.store.read(|st| {
                    let (objs, total) = st.page_packed(&key, ns, after.as_ref(), take);
                    (objs, total, st.rv())
                });
                (objs, Some(total), rv)
            }
            _ => {
                let (objs, rv) = self
                    .store
                    .read(|st| (st.list_packed(&key, ns, after.as_ref()), st.rv()));
                (objs, None, rv)
            }
        };
        let rv = start_rv.unwrap_or(rv);
        let mut meta = json!({"resourceVersion": rv.to_string()});
        let prefix = served_prefix(info);
        let item = |p: &Packed| -> Body {
            if raw && p.bytes().starts_with(&prefix) {
                Body::Stored(p.clone())
            } else {
                Body::Json(Self::present(info, &p.unpack()))
            }
        };
        let (page, total): (Vec<Body>, usize) = if plain {
            let page = objs.iter().take(take).map(item).collect();
            (page, total.unwrap_or(objs.len()))
        } else {
            // What the selectors read of each object, not the whole object: most are
            // not selected (an agent's jobs among all jobs).
            let mut paths = Paths::default();
            q.labels.paths(&mut paths);
            q.fields.paths(&mut paths);
            let matching: Vec<&Packed> = objs
                .iter()
                .filter(|p| {
                    let o = paths
                        .project(p.bytes())
                        .unwrap_or_else(|| (*p.unpack()).clone());
                    q.labels.matches(&o) && q.fields.matches(&o)
                })
                .collect();
            let page = matching.iter().take(take).map(|p| item(p)).collect();
            (page, matching.len())
        };
        if total > page.len() {
            let last = match page.last() {
                Some(Body::Json(v)) => Some((namespace_of(v).to_string(), name_of(v).to_string())),
                Some(Body::Stored(p)) => {
                    let v = p.unpack();
                    Some((namespace_of(&v).to_string(), name_of(&v).to_string()))
                }
                None => None,
            };
            if let Some((n, nm)) = last {
                meta["continue"] = json!(format!("{rv}:{n}/{nm}"));
                meta["remainingItemCount"] = json!(total - page.len());
            }
        }
        Ok((page, meta))
    }

    fn writer<'a>(
        info: &'a ResourceInfo,
        o: &'a WriteOpts,
        sub: &'a str,
        now: &'a str,
        api_version: &'a str,
    ) -> Writer<'a> {
        let _ = info;
        Writer {
            manager: &o.manager,
            api_version,
            subresource: sub,
            now,
        }
    }

    fn prepare_body(info: &ResourceInfo, body: Value) -> ApiResult<Value> {
        let mut obj = ensure_object(body)?;
        if let Some(k) = obj.get("kind").and_then(Value::as_str) {
            if !k.is_empty() && k != info.kind {
                return Err(ApiError::bad_request(format!(
                    "the kind in the data ({k}) does not match the expected kind ({})",
                    info.kind
                )));
            }
        }
        if let Some(av) = obj.get("apiVersion").and_then(Value::as_str) {
            let group_of = |s: &str| {
                s.rsplit_once('/')
                    .map(|(g, _)| g.to_string())
                    .unwrap_or_default()
            };
            if !av.is_empty() && group_of(av) != info.group {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({av}) does not match the expected API version ({})",
                    info.api_version()
                )));
            }
        }
        if let Some(m) = obj.as_object_mut() {
            m.insert("apiVersion".into(), json!(info.api_version()));
            m.insert("kind".into(), json!(info.kind));
        }
        metadata_mut(&mut obj);
        Ok(obj)
    }

    /// Pruning, defaulting, schema + metadata validation, kind-specific hooks.
    fn admit(
        info: &ResourceInfo,
        obj: &mut Value,
        old: Option<&Value>,
        o: &WriteOpts,
        warnings: &mut Vec<String>,
    ) -> ApiResult<()> {
        let name = name_of(obj).to_string();
        // Go's omitempty: empty label, annotation, finalizer and ownerReference
        // collections are not stored.
        if let Some(md) = metadata_mut(obj) {
            md.retain(|k, v| {
                !(matches!(
                    k.as_str(),
                    "labels" | "annotations" | "finalizers" | "ownerReferences"
                ) && (v.as_object().is_some_and(serde_json::Map::is_empty)
                    || v.as_array().is_some_and(std::vec::Vec::is_empty)
                    || v.is_null()))
            });
        }
        if let Some(schema) = &info.schema {
            let unknown = schema.prune(obj);
            if !unknown.is_empty() {
                match o.field_validation {
                    FieldValidation::Strict => {
                        return Err(ApiError::bad_request(super::validation::strict_message(
                            &info.kind,
                            &info.version,
                            &unknown,
                        )));
                    }
                    FieldValidation::Warn => warnings.extend(
                        unknown
                            .iter()
                            .map(|p| super::validation::unknown_field_warning(p)),
                    ),
                    FieldValidation::Ignore => {}
                }
            }
            schema.apply_defaults(obj);
        }
        let mut causes = validate_labels(obj);
        if let Some(schema) = &info.schema {
            causes.extend(schema.validate(obj, old));
        }
        if info.storage_key() == CRD_KEY {
            causes.extend(crd::validate(obj));
        }
        if !causes.is_empty() {
            return Err(super::validation::invalid(
                &info.group,
                &info.kind,
                &name,
                causes,
            ));
        }
        Ok(())
    }

    /// The stored ValidatingAdmissionPolicies and their bindings, applied to a CREATE or
    /// UPDATE by `o.user` ([`super::admission`]).
    #[allow(clippy::too_many_arguments)]
    fn admission(
        &self,
        st: &State,
        info: &ResourceInfo,
        operation: &'static str,
        sub: &str,
        obj: &Value,
        old: Option<&Value>,
        o: &WriteOpts,
        warnings: &mut Vec<String>,
    ) -> ApiResult<()> {
        let policies = st.list(VAP_KEY, None, None);
        if policies.is_empty() {
            return Ok(());
        }
        let policies: Vec<Value> = policies.iter().map(|p| (**p).clone()).collect();
        let bindings: Vec<Value> = st
            .list(VAPB_KEY, None, None)
            .iter()
            .map(|b| (**b).clone())
            .collect();
        let loopback;
        let user = match &o.user {
            Some(u) => u.as_ref(),
            None => {
                loopback = super::admission::UserInfo::loopback();
                &loopback
            }
        };
        let a = super::admission::Attributes {
            info,
            operation,
            subresource: sub,
            namespace: namespace_of(obj),
            name: name_of(obj),
            object: obj,
            old,
            user,
            dry_run: o.dry_run,
        };
        warnings.extend(super::admission::validate(&policies, &bindings, &a)?);
        Ok(())
    }

    fn kind_hooks(info: &ResourceInfo, obj: &mut Value, now: &str) {
        if info.storage_key() == CRD_KEY {
            crd::set_status(obj, now);
        }
        if info.storage_key() == NS_KEY {
            if obj.pointer("/spec/finalizers").is_none() {
                obj["spec"] = json!({"finalizers": ["kubernetes"]});
            }
            let phase = if is_deleting(obj) {
                "Terminating"
            } else {
                "Active"
            };
            obj["status"] = json!({"phase": phase});
            let name = name_of(obj).to_string();
            if let Some(md) = metadata_mut(obj) {
                let labels = md.entry("labels").or_insert_with(|| json!({}));
                if let Some(l) = labels.as_object_mut() {
                    l.insert("kubernetes.io/metadata.name".into(), json!(name));
                }
            }
        }
    }

    /// Prepare a new object for insertion (everything but the store checks).
    fn prepare_create(
        info: &ResourceInfo,
        ns: &str,
        mut obj: Value,
        o: &WriteOpts,
        mf_preset: bool,
        warnings: &mut Vec<String>,
    ) -> ApiResult<Value> {
        let now = now_rfc3339();
        if info.namespaced {
            let bns = namespace_of(&obj);
            if !bns.is_empty() && bns != ns {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            set_meta(&mut obj, "namespace", json!(ns));
        } else {
            remove_meta(&mut obj, "namespace");
        }
        let mut name = name_of(&obj).to_string();
        if name.is_empty() {
            let gn = obj
                .pointer("/metadata/generateName")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if gn.is_empty() {
                let mut causes = vec![Cause::new(
                    "FieldValueRequired",
                    "metadata.name",
                    "Required value: name or generateName is required",
                )];
                // A Required error blocks the CRD's CEL rules, as kube-apiserver says
                // (when there are any).
                if info.schema.as_ref().is_some_and(|s| s.has_rules()) {
                    causes.push(Cause::new(
                        "FieldValueInvalid",
                        "<nil>",
                        "Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation",
                    ));
                }
                return Err(ApiError::invalid(&info.group, &info.kind, "", causes));
            }
            name = format!("{gn}{}", random_suffix());
            set_meta(&mut obj, "name", json!(name));
        }
        if let Some(c) = validate_name(&name, info.storage_key() == NS_KEY) {
            return Err(ApiError::invalid(&info.group, &info.kind, &name, vec![c]));
        }
        set_meta(&mut obj, "uid", json!(new_uid()));
        set_meta(&mut obj, "creationTimestamp", json!(now));
        for k in [
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "resourceVersion",
            "selfLink",
        ] {
            remove_meta(&mut obj, k);
        }
        if info.has_generation() {
            set_meta(&mut obj, "generation", json!(1));
        } else {
            remove_meta(&mut obj, "generation");
        }
        if info.status_subresource && info.custom {
            if let Some(m) = obj.as_object_mut() {
                m.remove("status");
            }
        }
        Self::admit(info, &mut obj, None, o, warnings)?;
        Self::kind_hooks(info, &mut obj, &now);
        if !mf_preset {
            let api_version = info.api_version();
            let w = Self::writer(info, o, "", &now, &api_version);
            let schema = info.raw_schema.as_deref();
            remove_meta(&mut obj, "managedFields");
            ssa::record_update(None, &mut obj, SchemaCtx { root: schema }, &w);
        }
        Ok(obj)
    }

    fn insert_new(
        &self,
        st: &mut State,
        info: &ResourceInfo,
        obj: Value,
        o: &WriteOpts,
        warnings: &mut Vec<String>,
    ) -> ApiResult<Body> {
        let dry_run = o.dry_run;
        let ns = namespace_of(&obj).to_string();
        let name = name_of(&obj).to_string();
        if info.namespaced {
            match st.get(NS_KEY, "", &ns) {
                None => {
                    return Err(ApiError::not_found(ObjRef {
                        plural: "namespaces",
                        group: "",
                        name: &ns,
                    }));
                }
                Some(n) if is_deleting(&n) => {
                    return Err(ApiError {
                        code: 403,
                        reason: "Forbidden",
                        message: format!(
                            "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                            objref(info, &name).qualified()
                        ),
                        details: Some(
                            json!({"name": name, "group": info.group, "kind": info.plural}),
                        ),
                    });
                }
                _ => {}
            }
        }
        let key = info.storage_key();
        if st.contains(&key, &ns, &name) {
            return Err(ApiError::already_exists(objref(info, &name)));
        }
        self.admission(st, info, "CREATE", "", &obj, None, o, warnings)?;
        if dry_run {
            return Ok(Body::Json(Self::present(info, &obj)));
        }
        let stored = st.put(&key, obj);
        if key == CRD_KEY {
            self.rebuild_registry(st);
        }
        Ok(Self::served(info, st, &key, &stored))
    }

    /// The response body for `obj`, as stored under `key`: its stored JSON when that is
    /// the object as served, else the object presented at `info`'s version.
    fn served(info: &ResourceInfo, st: &State, key: &str, obj: &Value) -> Body {
        match st.packed(key, namespace_of(obj), name_of(obj)) {
            Some(p) if p.bytes().starts_with(&served_prefix(info)) && rv_of(obj) > 0 => {
                Body::Stored(p)
            }
            _ => Body::Json(Self::present(info, obj)),
        }
    }

    /// POST: create.
    pub fn create(
        &self,
        info: &ResourceInfo,
        ns: &str,
        body: Value,
        o: &WriteOpts,
    ) -> ApiResult<Outcome> {
        let mut warnings = vec![];
        let obj = Self::prepare_body(info, body)?;
        let obj = Self::prepare_create(info, ns, obj, o, false, &mut warnings)?;
        let body = self
            .store
            .write(|st| self.insert_new(st, info, obj, o, &mut warnings))?;
        Ok(Outcome {
            body,
            code: 201,
            warnings,
        })
    }

    /// PUT: update the main resource or `/status`.
    pub fn update(
        &self,
        info: &ResourceInfo,
        ns: &str,
        name: &str,
        sub: &str,
        body: Value,
        o: &WriteOpts,
    ) -> ApiResult<Outcome> {
        let new = Self::prepare_body(info, body)?;
        let bname = name_of(&new);
        if !bname.is_empty() && bname != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({bname}) does not match the name on the URL ({name})"
            )));
        }
        let bns = namespace_of(&new);
        if info.namespaced && !bns.is_empty() && bns != ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let mut warnings = vec![];
        let body = self.store.write(|st| {
            let old = st
                .get(&info.storage_key(), ns, name)
                .ok_or_else(|| ApiError::not_found(objref(info, name)))?;
            // Custom resources allow no unconditional update (the CRD strategy's
            // AllowUnconditionalUpdate is false).
            if info.custom && rv_of(&new) == 0 {
                let r = objref(info, name);
                return Err(ApiError::invalid(
                    &info.group,
                    &info.plural,
                    name,
                    vec![Cause::new(
                        "FieldValueInvalid",
                        "metadata.resourceVersion",
                        "Invalid value: 0: must be specified for an update",
                    )],
                )
                .with_details_kind(r));
            }
            self.commit_update(st, info, &old, new, sub, false, o, &mut warnings)
        })?;
        Ok(Outcome {
            body,
            code: 200,
            warnings,
        })
    }

    /// PATCH (all patch types, including server-side apply).
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &self,
        info: &ResourceInfo,
        ns: &str,
        name: &str,
        sub: &str,
        pt: PatchType,
        body: &[u8],
        o: &WriteOpts,
    ) -> ApiResult<Outcome> {
        let patch_doc: Value = match pt {
            PatchType::Apply => apply_document(body)?,
            _ => serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?,
        };
        if pt == PatchType::Strategic && info.custom {
            return Err(ApiError::unsupported_media_type(
                "application/strategic-merge-patch+json",
                &[
                    "application/json-patch+json",
                    "application/merge-patch+json",
                    "application/apply-patch+yaml",
                ],
            ));
        }
        let mut warnings = vec![];
        if pt == PatchType::Apply {
            if !o.manager_explicit {
                return Err(ApiError::invalid(
                    "meta.k8s.io",
                    "PatchOptions",
                    "",
                    vec![Cause::new(
                        "FieldValueRequired",
                        "fieldManager",
                        "Required value: is required for apply patch",
                    )],
                ));
            }
            let mut applied = ensure_object(patch_doc)?;
            if applied
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty()
            {
                let av = applied
                    .get("apiVersion")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                // Go's schema.GroupVersionKind String(): "group/version, Kind=".
                let gv = if av.contains('/') {
                    av.to_string()
                } else {
                    format!("/{av}")
                };
                return Err(ApiError::bad_request(format!(
                    "invalid object type: {gv}, Kind="
                )));
            }
            // What structured-merge-diff refuses to type (kube-apiserver: 500, whatever
            // fieldValidation says): fields the schema does not declare, duplicate keys.
            let mut untyped: Vec<String> = vec![];
            // Pruned in place: when nothing is pruned it is unchanged, else refused here.
            if let Some(schema) = &info.schema {
                untyped.extend(
                    schema
                        .prune(&mut applied)
                        .iter()
                        .map(|p| format!(".{p}: field not declared in schema")),
                );
            }
            untyped.extend(ssa::duplicate_keys(
                &applied,
                SchemaCtx {
                    root: info.raw_schema.as_deref(),
                },
            ));
            if !untyped.is_empty() {
                let errs = if untyped.len() == 1 {
                    untyped.remove(0)
                } else {
                    format!("errors:\n  {}", untyped.join("\n  "))
                };
                return Err(ApiError::new(
                    500,
                    "",
                    format!(
                        "failed to create typed patch object ({}/{}; {}, Kind={}): {errs}",
                        namespace_of(&applied),
                        name_of(&applied),
                        applied["apiVersion"].as_str().unwrap_or_default(),
                        applied["kind"].as_str().unwrap_or_default(),
                    ),
                ));
            }
            let applied = Self::prepare_body(info, applied)?;
            let aname = name_of(&applied);
            if !aname.is_empty() && aname != name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({aname}) does not match the name on the URL ({name})"
                )));
            }
            let mut applied = applied;
            set_meta(&mut applied, "name", json!(name));
            let now = now_rfc3339();
            let api_version = info.api_version();
            let schema = info.raw_schema.as_deref();
            let body = self.store.write(|st| {
                let old = st.get(&info.storage_key(), ns, name);
                let w = Self::writer(info, o, sub, &now, &api_version);
                match old {
                    None => {
                        if sub == "status" {
                            return Err(ApiError::not_found(objref(info, name)));
                        }
                        let obj =
                            ssa::apply(None, &applied, SchemaCtx { root: schema }, &w, o.force)?;
                        let obj = Self::prepare_create(info, ns, obj, o, true, &mut warnings)?;
                        self.insert_new(st, info, obj, o, &mut warnings)
                            .map(|b| (b, 201))
                    }
                    Some(old) => {
                        // a resourceVersion in the applied configuration is a precondition
                        let arv = applied
                            .pointer("/metadata/resourceVersion")
                            .and_then(Value::as_str)
                            .unwrap_or("");
                        if !arv.is_empty() && arv != rv_of(&old).to_string() {
                            return Err(ApiError::conflict_modified(objref(info, name)));
                        }
                        // (The applied configuration has no unknown field: it was
                        // refused above if it had one, so none is owned.)
                        let new = ssa::apply(
                            Some(&old),
                            &applied,
                            SchemaCtx { root: schema },
                            &w,
                            o.force,
                        )?;
                        self.commit_update(st, info, &old, new, sub, true, o, &mut warnings)
                            .map(|b| (b, 200))
                    }
                }
            })?;
            return Ok(Outcome {
                body: body.0,
                code: body.1,
                warnings,
            });
        }
        let body = self.store.write(|st| {
            let old = st
                .get(&info.storage_key(), ns, name)
                .ok_or_else(|| ApiError::not_found(objref(info, name)))?;
            let mut doc = Self::present(info, &old);
            match pt {
                PatchType::Merge => patch::merge_patch(&mut doc, &patch_doc)?,
                PatchType::Json => patch::json_patch(&mut doc, &patch_doc)?,
                PatchType::Strategic => patch::strategic_merge_patch(&mut doc, &patch_doc)?,
                PatchType::Apply => {}
            }
            let doc = ensure_object(doc)?;
            if name_of(&doc) != name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({}) does not match the name on the URL ({name})",
                    name_of(&doc)
                )));
            }
            // A patch without resourceVersion applies to the current object.
            let mut doc = doc;
            if doc
                .pointer("/metadata/resourceVersion")
                .is_none_or(Value::is_null)
            {
                set_meta(&mut doc, "resourceVersion", json!(rv_of(&old).to_string()));
            }
            self.commit_update(st, info, &old, doc, sub, false, o, &mut warnings)
        })?;
        Ok(Outcome {
            body,
            code: 200,
            warnings,
        })
    }

    /// The shared update path for PUT, PATCH and apply. `mf_preset`: managedFields in
    /// `new` were computed by server-side apply.
    #[allow(clippy::too_many_arguments)]
    fn commit_update(
        &self,
        st: &mut State,
        info: &ResourceInfo,
        old: &Obj,
        new: Value,
        sub: &str,
        mf_preset: bool,
        o: &WriteOpts,
        warnings: &mut Vec<String>,
    ) -> ApiResult<Body> {
        let name = name_of(old).to_string();
        if sub == "status" && !info.status_subresource {
            return Err(ApiError::path_not_found());
        }
        let req_rv = meta_field(&new, "resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if !req_rv.is_empty() && req_rv != rv_of(old).to_string() {
            return Err(ApiError::conflict_modified(objref(info, &name)));
        }
        let now = now_rfc3339();
        let old_v: &Value = old;
        let mut cand = if sub == "status" && mf_preset {
            // Server-side apply of `/status` built `new` from `old` changing only the
            // status and managedFields: it is the candidate as it is.
            new
        } else if sub == "status" {
            // The old object but its status, with the new status: `new` (usually the
            // old object patched) with the fields that differ from the old object's put
            // back (compared, not copied: most are the same).
            let mut c = new;
            let status = c.as_object_mut().and_then(|m| m.remove("status"));
            match old_v.as_object() {
                Some(om) => take_fields(&mut c, om, |k| k != "status"),
                None => c = old_v.clone(),
            }
            if let (Some(m), Some(s)) = (c.as_object_mut(), status) {
                m.insert("status".into(), s);
            }
            c
        } else {
            let mut c = new;
            if info.status_subresource {
                if let Some(m) = c.as_object_mut() {
                    match old_v.get("status") {
                        // (usually the same: then not copied)
                        Some(s) if m.get("status") == Some(s) => {}
                        Some(s) => {
                            m.insert("status".into(), s.clone());
                        }
                        None => {
                            m.remove("status");
                        }
                    }
                }
            }
            c
        };
        if let Some(m) = cand.as_object_mut() {
            m.insert("apiVersion".into(), old_v["apiVersion"].clone());
            m.insert("kind".into(), json!(info.kind));
        }
        for k in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ] {
            match meta_field(old_v, k) {
                Some(v) => set_meta(&mut cand, k, v.clone()),
                None => remove_meta(&mut cand, k),
            }
        }
        if is_deleting(old_v) {
            let before = finalizers_of(old_v);
            let added: Vec<String> = finalizers_of(&cand)
                .into_iter()
                .filter(|f| !before.contains(f))
                .collect();
            if !added.is_empty() {
                // kube-apiserver validates the metadata update twice (generic and CRD
                // strategy), so custom resources get the cause twice.
                let times = if info.custom { 2 } else { 1 };
                return Err(ApiError::invalid(
                    &info.group,
                    &info.kind,
                    &name,
                    vec![
                        Cause::new(
                            "FieldValueForbidden",
                            "metadata.finalizers",
                            format!(
                                "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{{{}}}",
                                added
                                    .iter()
                                    .map(|f| format!("{f:?}"))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        );
                        times
                    ],
                ));
            }
        }
        Self::admit(info, &mut cand, Some(old_v), o, warnings)?;
        Self::kind_hooks(info, &mut cand, &now);
        if info.has_generation() {
            let drop_status = info.status_subresource;
            if !same_spec(&cand, old_v, drop_status) {
                let g = old_v
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                set_meta(&mut cand, "generation", json!(g + 1));
            }
        }
        if !mf_preset {
            let api_version = info.api_version();
            let w = Self::writer(info, o, sub, &now, &api_version);
            let schema = info.raw_schema.as_deref();
            ssa::record_update(Some(old_v), &mut cand, SchemaCtx { root: schema }, &w);
        }
        self.admission(st, info, "UPDATE", sub, &cand, Some(old_v), o, warnings)?;
        let key = info.storage_key();
        if same_but_rv(&cand, old_v) {
            return Ok(Self::served(info, st, &key, old_v));
        }
        let ns = namespace_of(old_v).to_string();
        if o.dry_run {
            return Ok(Body::Json(Self::present(info, &cand)));
        }
        if is_deleting(&cand) && finalizers_of(&cand).is_empty() && key != NS_KEY {
            // The DELETED event carries the object as last stored (kube-apiserver
            // deletes it from etcd as it was); the response is the update's result.
            let gone = st.remove(&key, &ns, &name, None);
            if key == CRD_KEY {
                self.rebuild_registry(st);
            }
            self.gc_wake.notify_one();
            return Ok(Body::Json(
                gone.map(|g| {
                    let mut c = cand;
                    set_meta(&mut c, "resourceVersion", json!(rv_of(&g).to_string()));
                    Self::present(info, &c)
                })
                .unwrap_or_default(),
            ));
        }
        let stored = st.replace(&key, cand, old);
        if key == CRD_KEY {
            self.rebuild_registry(st);
        }
        if is_deleting(&stored) || meta_field(&stored, "ownerReferences").is_some() {
            self.gc_wake.notify_one();
        }
        Ok(Self::served(info, st, &key, &stored))
    }

    /// DELETE one object. Returns the body and whether it is gone.
    pub fn delete(
        &self,
        info: &ResourceInfo,
        ns: &str,
        name: &str,
        d: &DeleteOpts,
    ) -> ApiResult<Outcome> {
        if info.storage_key() == NS_KEY && matches!(name, "default" | "kube-system" | "kube-public")
        {
            return Err(ApiError {
                code: 403,
                reason: "Forbidden",
                message: format!(
                    "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
                ),
                details: Some(json!({"name": name, "kind": "namespaces"})),
            });
        }
        let (obj, gone) = self.store.write(|st| {
            let old = st
                .get(&info.storage_key(), ns, name)
                .ok_or_else(|| ApiError::not_found(objref(info, name)))?;
            if let Some(u) = &d.uid {
                if u != uid_of(&old) {
                    return Err(precondition_failed(
                        info,
                        name,
                        &format!(
                            "the UID in the precondition ({u}) does not match the UID in record ({}). The object might have been modified",
                            uid_of(&old)
                        ),
                    ));
                }
            }
            if let Some(rv) = &d.resource_version {
                if *rv != rv_of(&old).to_string() {
                    return Err(precondition_failed(
                        info,
                        name,
                        &format!(
                            "the ResourceVersion in the precondition ({rv}) does not match the ResourceVersion in record ({}). The object might have been modified",
                            rv_of(&old)
                        ),
                    ));
                }
            }
            Ok(self.delete_in(st, info, &old, d.propagation.as_deref(), d.dry_run))
        })?;
        self.gc_wake.notify_one();
        let body = if gone {
            json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": {"name": name, "group": info.group, "kind": info.plural, "uid": uid_of(&obj)},
            })
        } else {
            Self::present(info, &obj)
        };
        Ok(Outcome {
            body: Body::Json(body),
            code: 200,
            warnings: vec![],
        })
    }

    /// Delete inside a write: finalizers → deletionTimestamp, else remove. Returns the
    /// resulting object and whether it is gone.
    pub fn delete_in(
        &self,
        st: &mut State,
        info: &ResourceInfo,
        old: &Obj,
        propagation: Option<&str>,
        dry_run: bool,
    ) -> (Value, bool) {
        let key = info.storage_key();
        let mut obj: Value = (**old).clone();
        let mut fins = finalizers_of(&obj);
        let want = match propagation {
            Some("Orphan") => Some("orphan"),
            Some("Foreground") => Some("foregroundDeletion"),
            _ => None,
        };
        if let Some(f) = want {
            if !fins.iter().any(|x| x == f) && !is_deleting(&obj) {
                fins.push(f.to_string());
            }
        }
        let ns_with_content = key == NS_KEY;
        if fins.is_empty() && !ns_with_content {
            if dry_run {
                return (obj, true);
            }
            let ns = namespace_of(&obj).to_string();
            let name = name_of(&obj).to_string();
            let gone = st.remove(&key, &ns, &name, None);
            if key == CRD_KEY {
                self.rebuild_registry(st);
            }
            return (gone.map(|g| (*g).clone()).unwrap_or(obj), true);
        }
        let was = obj.clone();
        if !is_deleting(&obj) {
            set_meta(&mut obj, "deletionTimestamp", json!(now_rfc3339()));
            set_meta(&mut obj, "deletionGracePeriodSeconds", json!(0));
            if info.has_generation() {
                let g = obj
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                set_meta(&mut obj, "generation", json!(g + 1));
            }
        }
        if !fins.is_empty() {
            set_meta(&mut obj, "finalizers", json!(fins));
        }
        if key == NS_KEY {
            obj["status"] = json!({"phase": "Terminating"});
        }
        if key == CRD_KEY {
            crd::set_status(&mut obj, &now_rfc3339());
        }
        if dry_run || obj == was {
            return (obj, false);
        }
        let stored = st.put(&key, obj);
        ((*stored).clone(), false)
    }

    /// DELETE on a collection (with selectors).
    pub fn delete_collection(
        &self,
        info: &ResourceInfo,
        ns: Option<&str>,
        q: &ListQuery,
        d: &DeleteOpts,
    ) -> ApiResult<Value> {
        let key = info.storage_key();
        let items = self.store.write(|st| {
            let objs: Vec<Obj> = st
                .list(&key, ns, None)
                .into_iter()
                .filter(|o| q.labels.matches(o) && q.fields.matches(o))
                .collect();
            let mut out = vec![];
            for o in objs {
                let (v, _) = self.delete_in(st, info, &o, d.propagation.as_deref(), d.dry_run);
                out.push(Self::present(info, &v));
            }
            Ok(out)
        })?;
        self.gc_wake.notify_one();
        let rv = self.store.read(State::rv);
        Ok(json!({
            "kind": info.list_kind, "apiVersion": info.api_version(),
            "metadata": {"resourceVersion": rv.to_string()}, "items": items,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_write_takes_every_other_field_from_the_old_object() {
        let old = json!({"apiVersion": "v1", "kind": "K", "metadata": {"name": "a", "labels": {"x": "1"}},
                         "spec": {"n": 1, "deep": {"k": [1, 2]}}, "old": true, "status": {"p": "A"}});
        let mut c = json!({"apiVersion": "v1", "kind": "K", "metadata": {"name": "a", "labels": {"x": "2"}},
                           "spec": {"n": 1, "deep": {"k": [1, 2]}}, "added": 1, "status": {"p": "B"}});
        let from = old.as_object().expect("object");
        take_fields(&mut c, from, |k| k != "status");
        assert_eq!(
            c,
            json!({"apiVersion": "v1", "kind": "K", "metadata": {"name": "a", "labels": {"x": "1"}},
                   "spec": {"n": 1, "deep": {"k": [1, 2]}}, "old": true, "status": {"p": "B"}})
        );
        let mut not_object = json!([1]);
        take_fields(&mut not_object, from, |k| k == "spec");
        assert_eq!(not_object, json!({"spec": {"n": 1, "deep": {"k": [1, 2]}}}));
    }

    #[test]
    fn an_apply_document_reads_the_same_as_json_and_as_yaml() {
        let json = br#" {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
            "data": {"a": "x\u00e9\n", "a": "last", "n": "1"}, "list": [1, 2.5, -3, 1e3, true, null]}"#;
        let v = apply_document(json).expect("JSON");
        assert_eq!(
            v["data"],
            json!({"a": "last", "n": "1"}),
            "the last of a repeated key"
        );
        assert_eq!(v, serde_yaml::from_slice::<Value>(json).expect("YAML"));
        let yaml = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  a: last\n  n: \"1\"\n";
        let y = apply_document(yaml).expect("YAML");
        assert_eq!((&y["metadata"], &y["data"]), (&v["metadata"], &v["data"]));
        // YAML's own flow syntax, which JSON does not read
        assert_eq!(apply_document(b"{a: 1}").expect("flow"), json!({"a": 1}));
        let err = apply_document(b"{\"a\": [").expect_err("neither");
        assert!(
            err.message.starts_with("error decoding YAML: "),
            "{}",
            err.message
        );
    }
}
