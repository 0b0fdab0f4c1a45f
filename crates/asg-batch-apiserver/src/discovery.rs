//! Discovery: `/version`, `/api`, `/apis`, per-group and per-version resource lists,
//! and aggregated discovery (`apidiscovery.k8s.io/v2`), which kubectl 1.35 asks for first.

use serde_json::{Value, json};

use super::resources::{Registry, ResourceInfo};

/// Media type of aggregated discovery responses, if the Accept header asks for one.
pub fn aggregated_media_type(accept: &str) -> Option<&'static str> {
    for part in accept.split(',') {
        let p: Vec<&str> = part.split(';').map(str::trim).collect();
        if p.first() == Some(&"application/json")
            && p.contains(&"as=APIGroupDiscoveryList")
            && p.contains(&"g=apidiscovery.k8s.io")
        {
            if p.contains(&"v=v2") {
                return Some(
                    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
                );
            }
            if p.contains(&"v=v2beta1") {
                return Some(
                    "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList",
                );
            }
        }
    }
    None
}

/// `/version`.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "35",
        "emulationMajor": "1",
        "emulationMinor": "35",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "34",
        "gitVersion": "v1.35.0-asgbatch",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": "linux/amd64",
    })
}

/// `/api`.
pub fn core_versions(server_addr: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_addr}],
    })
}

fn api_group(reg: &Registry, group: &str) -> Value {
    let versions = reg.group_versions(group);
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    let preferred = vs.first().cloned().unwrap_or(json!({}));
    json!({"name": group, "versions": vs, "preferredVersion": preferred})
}

/// `/apis`.
pub fn group_list(reg: &Registry) -> Value {
    let groups: Vec<Value> = reg.groups().iter().map(|g| api_group(reg, g)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/{group}`, or None if the group is unknown.
pub fn group(reg: &Registry, group: &str) -> Option<Value> {
    if !reg.groups().iter().any(|g| g == group) {
        return None;
    }
    let mut g = api_group(reg, group);
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    Some(g)
}

/// `/api/v1` or `/apis/{group}/{version}`, or None if unknown.
pub fn resource_list(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let infos = reg.resources_of(group, version);
    if infos.is_empty() {
        return None;
    }
    let mut resources = vec![];
    for i in &infos {
        let mut r = json!({
            "name": i.plural,
            "singularName": i.singular,
            "namespaced": i.namespaced,
            "kind": i.kind,
            "verbs": i.verbs(),
        });
        if !i.short_names.is_empty() {
            r["shortNames"] = json!(i.short_names);
        }
        if !i.categories.is_empty() {
            r["categories"] = json!(i.categories);
        }
        if i.custom {
            r["storageVersionHash"] = json!(storage_hash(i));
        }
        resources.push(r);
        if i.status_subresource {
            resources.push(json!({
                "name": format!("{}/status", i.plural),
                "singularName": "",
                "namespaced": i.namespaced,
                "kind": i.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": resources,
    }))
}

fn storage_hash(i: &ResourceInfo) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in format!("{}/{}/{}", i.group, i.version, i.kind).bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")[..11].to_string()
}

fn discovery_resource(i: &ResourceInfo) -> Value {
    let rk = json!({"group": i.group, "version": i.version, "kind": i.kind});
    let mut r = json!({
        "resource": i.plural,
        "responseKind": rk,
        "scope": if i.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": i.singular,
        "verbs": i.verbs(),
    });
    if !i.short_names.is_empty() {
        r["shortNames"] = json!(i.short_names);
    }
    if !i.categories.is_empty() {
        r["categories"] = json!(i.categories);
    }
    if i.status_subresource {
        r["subresources"] = json!([{
            "subresource": "status",
            "responseKind": rk,
            "verbs": ["get", "patch", "update"],
        }]);
    }
    r
}

/// Aggregated discovery document for `/api` (core) or `/apis` (all named groups).
pub fn aggregated(reg: &Registry, core: bool, media_type: &str) -> Value {
    let api_version = if media_type.contains("v=v2beta1") {
        "apidiscovery.k8s.io/v2beta1"
    } else {
        "apidiscovery.k8s.io/v2"
    };
    let groups: Vec<String> = if core {
        vec![String::new()]
    } else {
        reg.groups()
    };
    let items: Vec<Value> = groups
        .iter()
        .map(|g| {
            let versions: Vec<Value> = reg
                .group_versions(g)
                .iter()
                .map(|v| {
                    json!({
                        "version": v,
                        "freshness": "Current",
                        "resources": reg.resources_of(g, v).iter().map(|i| discovery_resource(i)).collect::<Vec<_>>(),
                    })
                })
                .collect();
            let mut md = json!({"creationTimestamp": null});
            if !g.is_empty() {
                md["name"] = json!(g);
            }
            json!({"metadata": md, "versions": versions})
        })
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": api_version,
        "metadata": {},
        "items": items,
    })
}
