//! OpenAPI v3 documents: the `/openapi/v3` index and one document per group version,
//! used by `kubectl explain` and kubectl's field-validation support check.

use serde_json::{Map, Value, json};

use super::resources::{Registry, ResourceInfo};

/// Hash of a document as served, used as the `?hash=` of the index's URLs.
pub fn hash(doc: &Value) -> String {
    super::validation::openapi_hash(doc)
}

/// Path key of a group version in the index: `api/v1` or `apis/g/v`.
pub fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: the index of group-version documents with content hashes.
pub fn index(reg: &Registry, crds: &[Value]) -> Value {
    let mut paths = Map::new();
    let mut gvs: Vec<(String, String)> = vec![(String::new(), "v1".into())];
    for g in reg.groups() {
        for v in reg.group_versions(&g) {
            gvs.push((g.clone(), v));
        }
    }
    for (g, v) in gvs {
        let doc = document(reg, &g, &v, crds);
        let p = gv_path(&g, &v);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", hash(&doc))}),
        );
    }
    json!({ "paths": paths })
}

fn schema_name(info: &ResourceInfo) -> String {
    if info.group.is_empty() {
        return format!("io.k8s.api.core.{}.{}", info.version, info.kind);
    }
    let rev: Vec<&str> = info.group.split('.').rev().collect();
    format!("{}.{}.{}", rev.join("."), info.version, info.kind)
}

fn op(info: &ResourceInfo, verb: &str, action: &str) -> Value {
    let mut params = vec![
        json!({"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}}),
        json!({"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}}),
    ];
    if matches!(verb, "post" | "put" | "patch") {
        params.push(json!({"name": "fieldValidation", "in": "query", "description": "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) containing unknown or duplicate fields. Valid values are: - Ignore - Warn - Strict", "schema": {"type": "string", "uniqueItems": true}}));
    }
    if verb == "patch" {
        params.push(json!({"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": true}}));
    }
    json!({
        "description": format!("{action} the specified {}", info.kind),
        "operationId": format!("{verb}{}", info.kind),
        "parameters": params,
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{}", schema_name(info))}}}}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": info.group, "version": info.version, "kind": info.kind},
    })
}

/// Paths of a resource: collection (post) and item (get, put, patch, delete).
fn resource_paths(info: &ResourceInfo, paths: &mut Map<String, Value>) {
    let prefix = if info.group.is_empty() {
        format!("/api/{}", info.version)
    } else {
        format!("/apis/{}/{}", info.group, info.version)
    };
    let coll = if info.namespaced {
        format!("{prefix}/namespaces/{{namespace}}/{}", info.plural)
    } else {
        format!("{prefix}/{}", info.plural)
    };
    paths.insert(
        coll.clone(),
        json!({"get": op(info, "get", "list"), "post": op(info, "post", "post")}),
    );
    let item = json!({
        "get": op(info, "get", "get"),
        "put": op(info, "put", "put"),
        "patch": op(info, "patch", "patch"),
        "delete": op(info, "delete", "delete"),
    });
    paths.insert(format!("{coll}/{{name}}"), item.clone());
    if info.status_subresource {
        paths.insert(format!("{coll}/{{name}}/status"), item);
    }
}

fn object_meta_schema() -> Value {
    json!({
        "description": "ObjectMeta is metadata that all persisted resources must have, which includes all objects users must create.",
        "type": "object",
        "properties": {
            "name": {"type": "string", "description": "Name must be unique within a namespace."},
            "generateName": {"type": "string", "description": "GenerateName is an optional prefix, used by the server, to generate a unique name ONLY IF the Name field has not been provided."},
            "namespace": {"type": "string", "description": "Namespace defines the space within which each name must be unique."},
            "uid": {"type": "string", "description": "UID is the unique in time and space value for this object."},
            "resourceVersion": {"type": "string", "description": "An opaque value that represents the internal version of this object."},
            "generation": {"type": "integer", "format": "int64", "description": "A sequence number representing a specific generation of the desired state."},
            "creationTimestamp": {"type": "string", "format": "date-time", "description": "CreationTimestamp is a timestamp representing the server time when this object was created."},
            "deletionTimestamp": {"type": "string", "format": "date-time", "description": "DeletionTimestamp is RFC 3339 date and time at which this resource will be deleted."},
            "labels": {"type": "object", "additionalProperties": {"type": "string", "default": ""}, "description": "Map of string keys and values that can be used to organize and categorize (scope and select) objects."},
            "annotations": {"type": "object", "additionalProperties": {"type": "string", "default": ""}, "description": "Annotations is an unstructured key value map stored with a resource."},
            "finalizers": {"type": "array", "items": {"type": "string", "default": ""}, "x-kubernetes-list-type": "set", "description": "Must be empty before the object is deleted from the registry."},
            "ownerReferences": {"type": "array", "items": {"type": "object"}, "x-kubernetes-list-map-keys": ["uid"], "x-kubernetes-list-type": "map", "description": "List of objects depended by this object."},
            "managedFields": {"type": "array", "items": {"type": "object"}, "description": "ManagedFields maps workflow-id and version to the set of fields that are managed by that workflow."}
        }
    })
}

/// The document for one group version. CRD groups come from the CRDs' schemas;
/// built-in kinds get a permissive object schema.
pub fn group_version(reg: &Registry, group: &str, version: &str, crds: &[Value]) -> Value {
    let infos = reg.resources_of(group, version);
    let mut paths = Map::new();
    let mut schemas = Map::new();
    schemas.insert(
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta".into(),
        object_meta_schema(),
    );
    for info in &infos {
        resource_paths(info, &mut paths);
        let mut s = if info.custom {
            crd_schema(crds, info).unwrap_or_else(|| json!({"type": "object"}))
        } else {
            json!({
                "type": "object",
                "description": format!("{} (built-in kind served by the asg-batch embedded API server).", info.kind),
                "properties": {
                    "apiVersion": {"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."},
                    "kind": {"type": "string", "description": "Kind is a string value representing the REST resource this object represents."},
                },
                "x-kubernetes-preserve-unknown-fields": true,
            })
        };
        if let Some(m) = s.as_object_mut() {
            let props = m.entry("properties").or_insert_with(|| json!({}));
            if let Some(p) = props.as_object_mut() {
                p.insert(
                    "metadata".into(),
                    json!({"allOf": [{"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}], "default": {}, "description": "Standard object's metadata."}),
                );
            }
            m.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([{"group": info.group, "version": info.version, "kind": info.kind}]),
            );
        }
        schemas.insert(schema_name(info), s);
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.35.0-asgbatch"},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

fn crd_schema(crds: &[Value], info: &ResourceInfo) -> Option<Value> {
    let crd = crds.iter().find(|c| {
        c.pointer("/spec/group").and_then(Value::as_str) == Some(info.group.as_str())
            && c.pointer("/spec/names/plural").and_then(Value::as_str) == Some(info.plural.as_str())
    })?;
    crd.pointer("/spec/versions")?
        .as_array()?
        .iter()
        .find(|v| v["name"].as_str() == Some(info.version.as_str()))?
        .pointer("/schema/openAPIV3Schema")
        .cloned()
}

/// The document served for a group version: the schema engine's for CRD groups,
/// [`group_version`] for built-in groups.
pub fn document(reg: &Registry, group: &str, version: &str, crds: &[Value]) -> Value {
    if reg.resources_of(group, version).iter().any(|i| i.custom) {
        super::validation::openapi_group_version(group, version, crds)
    } else {
        group_version(reg, group, version, crds)
    }
}
