//! OpenAPI v3 documents for CRD-backed resources, shaped like the ones
//! kube-apiserver serves at `/openapi/v3/apis/{group}/{version}`, plus the
//! `/openapi/v3` index. kubectl 1.35 reads them for `kubectl explain` (finds
//! the schema whose `x-kubernetes-group-version-kind` matches) and to decide
//! whether the server supports the `fieldValidation` query parameter (it looks
//! for a PATCH operation carrying that GVK and a `fieldValidation` query parameter).

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha512};

const API_VERSION_DESC: &str = "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources";
const KIND_DESC: &str = "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds";
const METADATA_DESC: &str = "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";
const LIST_METADATA_DESC: &str = "Standard list metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds";
const META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1";

/// One entry of the `/openapi/v3` index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenApiIndexEntry {
    /// The path without a leading slash, e.g. `apis/asgbatch.io/v1alpha1` or `api/v1`.
    pub path: String,
    /// [`openapi_v3_hash`] of the document served there.
    pub hash: String,
}

/// The `/openapi/v3` index body:
/// `{"paths": {"apis/asgbatch.io/v1alpha1": {"serverRelativeURL": "/openapi/v3/apis/asgbatch.io/v1alpha1?hash=…"}}}`.
pub fn openapi_v3_index(entries: &[OpenApiIndexEntry]) -> Value {
    let mut paths = Map::new();
    for e in entries {
        paths.insert(
            e.path.clone(),
            json!({ "serverRelativeURL": format!("/openapi/v3/{}?hash={}", e.path, e.hash) }),
        );
    }
    json!({ "paths": Value::Object(paths) })
}

/// The hash kube-apiserver puts in `serverRelativeURL` and the `ETag`:
/// uppercase hex SHA-512 of the bytes served. Serve the document as
/// `serde_json::to_vec(doc)` so the hash matches those bytes.
pub fn openapi_v3_hash(doc: &Value) -> String {
    let bytes = serde_json::to_vec(doc).unwrap_or_default();
    let digest = Sha512::digest(&bytes);
    digest.iter().map(|b| format!("{b:02X}")).collect()
}

/// `asgbatch.io` → `io.asgbatch`.
fn reverse_dns(group: &str) -> String {
    let mut parts: Vec<&str> = group.split('.').collect();
    parts.reverse();
    parts.join(".")
}

/// `asgbatch.io` → `AsgbatchIo`.
fn camel(s: &str) -> String {
    s.split(['.', '-'])
        .map(|p| {
            let mut c = p.chars();
            match c.next() {
                Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// The object schema of a custom resource as kube-apiserver publishes it.
fn resource_schema(schema: &Value, group: &str, version: &str, kind: &str) -> Value {
    let mut s = match schema {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    s.insert("type".into(), Value::from("object"));
    let mut props = match s.remove("properties") {
        Some(Value::Object(p)) => p,
        _ => Map::new(),
    };
    let mut api_version = props
        .remove("apiVersion")
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default();
    api_version.entry("type").or_insert(Value::from("string"));
    api_version
        .entry("description")
        .or_insert(Value::from(API_VERSION_DESC));
    let mut kind_prop = props
        .remove("kind")
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default();
    kind_prop.entry("type").or_insert(Value::from("string"));
    kind_prop
        .entry("description")
        .or_insert(Value::from(KIND_DESC));
    props.remove("metadata");
    let mut ordered = Map::new();
    ordered.insert("apiVersion".into(), Value::Object(api_version));
    ordered.insert("kind".into(), Value::Object(kind_prop));
    ordered.insert(
        "metadata".into(),
        json!({
            "description": METADATA_DESC,
            "allOf": [schema_ref(&format!("{META}.ObjectMeta"))],
        }),
    );
    for (k, v) in props {
        ordered.insert(k, v);
    }
    s.insert("properties".into(), Value::Object(ordered));
    s.insert(
        "x-kubernetes-group-version-kind".into(),
        json!([{ "group": group, "kind": kind, "version": version }]),
    );
    Value::Object(s)
}

fn list_schema(
    item: &str,
    group: &str,
    version: &str,
    list_kind: &str,
    kind: &str,
    plural: &str,
) -> Value {
    json!({
        "description": format!("{list_kind} is a list of {kind}"),
        "type": "object",
        "required": ["items"],
        "properties": {
            "apiVersion": { "type": "string", "description": API_VERSION_DESC },
            "items": {
                "description": format!("List of {plural}. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md"),
                "type": "array",
                "items": schema_ref(item),
            },
            "kind": { "type": "string", "description": KIND_DESC },
            "metadata": {
                "description": LIST_METADATA_DESC,
                "allOf": [schema_ref(&format!("{META}.ListMeta"))],
            },
        },
        "x-kubernetes-group-version-kind": [{ "group": group, "kind": list_kind, "version": version }],
    })
}

fn param(name: &str, location: &str, description: &str, ty: &str, required: bool) -> Value {
    let mut p = json!({
        "name": name,
        "in": location,
        "description": description,
        "schema": { "type": ty, "uniqueItems": true },
    });
    if required && let Some(m) = p.as_object_mut() {
        m.insert("required".into(), Value::Bool(true));
    }
    p
}

fn p_dry_run() -> Value {
    param(
        "dryRun",
        "query",
        "When present, indicates that modifications should not be persisted. An invalid or unrecognized dryRun directive will result in an error response and no further processing of the request. Valid values are: - All: all dry run stages will be processed",
        "string",
        false,
    )
}
fn p_field_manager() -> Value {
    param(
        "fieldManager",
        "query",
        "fieldManager is a name associated with the actor or entity that is making these changes. The value must be less than or 128 characters long, and only contain printable characters, as defined by https://golang.org/pkg/unicode/#IsPrint.",
        "string",
        false,
    )
}
fn p_field_validation() -> Value {
    param(
        "fieldValidation",
        "query",
        "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) containing unknown or duplicate fields. Valid values are: - Ignore: This will ignore any unknown fields that are silently dropped from the object, and will ignore all but the last duplicate field that the decoder encounters. This is the default behavior prior to v1.23. - Warn: This will send a warning via the standard warning response header for each unknown field that is dropped from the object, and for each duplicate field that is encountered. The request will still succeed if there are no other errors, and will only persist the last of any duplicate fields. This is the default in v1.23+ - Strict: This will fail the request with a BadRequest error if any unknown fields would be dropped from the object, or if any duplicate fields are present. The error returned from the server will contain all unknown and duplicate fields encountered.",
        "string",
        false,
    )
}
fn p_force() -> Value {
    param(
        "force",
        "query",
        "Force is going to \"force\" Apply requests. It means user will re-acquire conflicting fields owned by other people. Force flag must be unset for non-apply patch requests.",
        "boolean",
        false,
    )
}
fn p_pretty() -> Value {
    param(
        "pretty",
        "query",
        "If 'true', then the output is pretty printed. Defaults to 'false' unless the user-agent indicates a browser or command-line HTTP tool (curl and wget).",
        "string",
        false,
    )
}
fn p_name(kind: &str) -> Value {
    param(
        "name",
        "path",
        &format!("name of the {kind}"),
        "string",
        true,
    )
}
fn p_namespace() -> Value {
    param(
        "namespace",
        "path",
        "object name and auth scope, such as for teams and projects",
        "string",
        true,
    )
}
fn list_params() -> Vec<Value> {
    [
        ("allowWatchBookmarks", "boolean", "allowWatchBookmarks requests watch events with type \"BOOKMARK\"."),
        ("continue", "string", "The continue option should be set when retrieving more results from the server."),
        ("fieldSelector", "string", "A selector to restrict the list of returned objects by their fields. Defaults to everything."),
        ("labelSelector", "string", "A selector to restrict the list of returned objects by their labels. Defaults to everything."),
        ("limit", "integer", "limit is a maximum number of responses to return for a list call."),
        ("resourceVersion", "string", "resourceVersion sets a constraint on what resource versions a request may be served from."),
        ("resourceVersionMatch", "string", "resourceVersionMatch determines how resourceVersion is applied to list calls."),
        ("sendInitialEvents", "boolean", "`sendInitialEvents=true` may be set together with `watch=true`."),
        ("timeoutSeconds", "integer", "Timeout for the list/watch call."),
        ("watch", "boolean", "Watch for changes to the described resources and return them as a stream of add, update, and remove notifications."),
    ]
    .iter()
    .map(|(n, t, d)| param(n, "query", d, t, false))
    .collect()
}

fn content(schema: Value) -> Value {
    json!({
        "application/json": { "schema": schema.clone() },
        "application/yaml": { "schema": schema },
    })
}

fn responses(codes: &[&str], schema: &Value) -> Value {
    let mut r = Map::new();
    for c in codes {
        let desc = match *c {
            "200" => "OK",
            "201" => "Created",
            "202" => "Accepted",
            _ => "OK",
        };
        r.insert(
            (*c).into(),
            json!({ "description": desc, "content": content(schema.clone()) }),
        );
    }
    r.insert("401".into(), json!({ "description": "Unauthorized" }));
    Value::Object(r)
}

struct Res<'a> {
    group: &'a str,
    version: &'a str,
    kind: &'a str,
    list_kind: String,
    plural: &'a str,
    namespaced: bool,
    item: String,
    list: String,
}

impl Res<'_> {
    fn gvk(&self, kind: &str) -> Value {
        json!({ "group": self.group, "version": self.version, "kind": kind })
    }
    fn op_id(&self, verb: &str, kind: &str, suffix: &str) -> String {
        format!(
            "{verb}{}{}{}{kind}{suffix}",
            camel(self.group),
            camel(self.version),
            if self.namespaced { "Namespaced" } else { "" }
        )
    }
    fn tag(&self) -> String {
        format!("{}_{}", lower_first(&camel(self.group)), self.version)
    }
    #[allow(clippy::too_many_arguments)]
    fn op(
        &self,
        verb: &str,
        action: &str,
        desc: &str,
        params: Vec<Value>,
        body: Option<Value>,
        resp: Value,
        kind: &str,
        suffix: &str,
    ) -> Value {
        let mut o = json!({
            "tags": [self.tag()],
            "description": desc,
            "operationId": self.op_id(verb, kind, suffix),
            "parameters": params,
            "responses": resp,
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": self.gvk(self.kind),
        });
        if let (Some(b), Some(m)) = (body, o.as_object_mut()) {
            m.insert("requestBody".into(), b);
        }
        o
    }
}

/// The read, replace and patch operations of one object path (the object itself, or its
/// `/status` with `suffix` "Status"); `what` completes "read {what} {kind}".
fn read_replace_patch(
    r: &Res<'_>,
    what: &str,
    suffix: &str,
    put_body: &Value,
    item_ref: &Value,
    patch_body: &Value,
) -> Map<String, Value> {
    let mut ops = Map::new();
    ops.insert(
        "get".into(),
        r.op(
            "read",
            "get",
            &format!("read {what} {}", r.kind),
            vec![],
            None,
            responses(&["200"], item_ref),
            r.kind,
            suffix,
        ),
    );
    ops.insert(
        "put".into(),
        r.op(
            "replace",
            "put",
            &format!("replace {what} {}", r.kind),
            vec![p_dry_run(), p_field_manager(), p_field_validation()],
            Some(put_body.clone()),
            responses(&["200", "201"], item_ref),
            r.kind,
            suffix,
        ),
    );
    ops.insert(
        "patch".into(),
        r.op(
            "patch",
            "patch",
            &format!("partially update {what} {}", r.kind),
            vec![
                p_dry_run(),
                p_field_manager(),
                p_field_validation(),
                p_force(),
            ],
            Some(patch_body.clone()),
            responses(&["200", "201"], item_ref),
            r.kind,
            suffix,
        ),
    );
    ops
}

fn add_paths(paths: &mut Map<String, Value>, r: &Res<'_>, status: bool) {
    let base = format!("/apis/{}/{}", r.group, r.version);
    let collection = if r.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}", r.plural)
    } else {
        format!("{base}/{}", r.plural)
    };
    let item_ref = schema_ref(&r.item);
    let list_ref = schema_ref(&r.list);
    let status_ref = schema_ref(&format!("{META}.Status"));
    let body =
        |s: &Value| json!({ "content": { "*/*": { "schema": s.clone() } }, "required": true });
    let patch_body = json!({
        "content": {
            "application/apply-patch+yaml": { "schema": schema_ref(&format!("{META}.Patch")) },
            "application/json-patch+json": { "schema": schema_ref(&format!("{META}.Patch")) },
            "application/merge-patch+json": { "schema": schema_ref(&format!("{META}.Patch")) },
        },
        "required": true,
    });
    let mut scope_params = vec![];
    if r.namespaced {
        scope_params.push(p_namespace());
    }
    scope_params.push(p_pretty());
    // collection
    let mut col = Map::new();
    col.insert(
        "get".into(),
        r.op(
            "list",
            "list",
            &format!("list objects of kind {}", r.kind),
            list_params(),
            None,
            responses(&["200"], &list_ref),
            r.kind,
            "",
        ),
    );
    col.insert(
        "post".into(),
        r.op(
            "create",
            "post",
            &format!("create a {}", r.kind),
            vec![p_dry_run(), p_field_manager(), p_field_validation()],
            Some(body(&item_ref)),
            responses(&["200", "201", "202"], &item_ref),
            r.kind,
            "",
        ),
    );
    col.insert(
        "delete".into(),
        r.op(
            "deletecollection",
            "deletecollection",
            &format!("delete collection of {}", r.kind),
            list_params(),
            Some(body(&schema_ref(&format!("{META}.DeleteOptions")))),
            responses(&["200"], &status_ref),
            r.kind,
            "",
        ),
    );
    col.insert("parameters".into(), Value::Array(scope_params.clone()));
    paths.insert(collection.clone(), Value::Object(col));
    // item
    let mut item_params = vec![p_name(r.kind)];
    item_params.extend(scope_params.clone());
    let mut it = read_replace_patch(
        r,
        "the specified",
        "",
        &body(&item_ref),
        &item_ref,
        &patch_body,
    );
    it.insert(
        "delete".into(),
        r.op(
            "delete",
            "delete",
            &format!("delete a {}", r.kind),
            vec![p_dry_run()],
            Some(body(&schema_ref(&format!("{META}.DeleteOptions")))),
            responses(&["200", "202"], &status_ref),
            r.kind,
            "",
        ),
    );
    it.insert("parameters".into(), Value::Array(item_params.clone()));
    paths.insert(format!("{collection}/{{name}}"), Value::Object(it));
    if status {
        let mut st = read_replace_patch(
            r,
            "status of the specified",
            "Status",
            &body(&item_ref),
            &item_ref,
            &patch_body,
        );
        st.insert("parameters".into(), Value::Array(item_params));
        paths.insert(format!("{collection}/{{name}}/status"), Value::Object(st));
    }
    if r.namespaced {
        let mut all = Map::new();
        all.insert(
            "get".into(),
            r.op(
                "list",
                "list",
                &format!("list objects of kind {}", r.kind),
                list_params(),
                None,
                responses(&["200"], &list_ref),
                r.kind,
                "ForAllNamespaces",
            ),
        );
        all.insert("parameters".into(), Value::Array(vec![p_pretty()]));
        if let Some(op) = all.get_mut("get").and_then(Value::as_object_mut) {
            op.insert(
                "operationId".into(),
                Value::from(format!(
                    "list{}{}{}ForAllNamespaces",
                    camel(r.group),
                    camel(r.version),
                    r.kind
                )),
            );
        }
        paths.insert(format!("{base}/{}", r.plural), Value::Object(all));
    }
}

/// The Kubernetes meta types a CRD document references (ObjectMeta, ListMeta,
/// Status, DeleteOptions, Patch and what they reference), with their descriptions.
fn meta_schemas() -> Map<String, Value> {
    static CACHE: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    CACHE.get_or_init(build_meta_schemas).clone()
}

fn build_meta_schemas() -> Map<String, Value> {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
    let mut g = schemars::generate::SchemaSettings::openapi3().into_generator();
    let _ = g.subschema_for::<meta::ObjectMeta>();
    let _ = g.subschema_for::<meta::ListMeta>();
    let _ = g.subschema_for::<meta::Status>();
    let _ = g.subschema_for::<meta::DeleteOptions>();
    let mut defs = g.take_definitions(true);
    defs.insert(
        format!("{META}.Patch"),
        json!({ "description": "Patch is provided to give a concrete name and type to the Kubernetes PATCH request body.", "type": "object" }),
    );
    defs
}

/// The document kube-apiserver serves at `/openapi/v3/apis/{group}/{version}`
/// for the CRDs (full `CustomResourceDefinition` objects as JSON) that serve
/// `group`/`version`.
pub fn openapi_v3_group_version(group: &str, version: &str, crds: &[Value]) -> Value {
    let mut schemas = Map::new();
    let mut paths = Map::new();
    for crd in crds {
        let spec = &crd["spec"];
        if spec["group"].as_str() != Some(group) {
            continue;
        }
        let Some(ver) = spec["versions"]
            .as_array()
            .and_then(|vs| vs.iter().find(|v| v["name"].as_str() == Some(version)))
        else {
            continue;
        };
        if ver["served"].as_bool() == Some(false) {
            continue;
        }
        let Some(kind) = spec["names"]["kind"].as_str() else {
            continue;
        };
        let Some(plural) = spec["names"]["plural"].as_str() else {
            continue;
        };
        let list_kind = spec["names"]["listKind"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| format!("{kind}List"));
        let prefix = format!("{}.{version}", reverse_dns(group));
        let r = Res {
            group,
            version,
            kind,
            list_kind: list_kind.clone(),
            plural,
            namespaced: spec["scope"].as_str() != Some("Cluster"),
            item: format!("{prefix}.{kind}"),
            list: format!("{prefix}.{list_kind}"),
        };
        let schema = &ver["schema"]["openAPIV3Schema"];
        schemas.insert(
            r.item.clone(),
            resource_schema(schema, group, version, kind),
        );
        schemas.insert(
            r.list.clone(),
            list_schema(&r.item, group, version, &r.list_kind, kind, plural),
        );
        add_paths(&mut paths, &r, ver["subresources"]["status"].is_object());
    }
    for (k, v) in meta_schemas() {
        schemas.entry(k).or_insert(v);
    }
    json!({
        "openapi": "3.0.0",
        "info": { "title": "Kubernetes CRD Swagger", "version": "v0.1.0" },
        "paths": Value::Object(paths),
        "components": { "schemas": Value::Object(schemas) },
    })
}
