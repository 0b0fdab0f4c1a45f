//! Applying the CRDs and manifest files with server-side apply.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

use futures::{StreamExt, TryStreamExt};

use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, pinned_kind};
use serde_json::Value;

use super::{DevError, FIELD_MANAGER};
use crate::api::crds;

/// One manifest document and where it came from.
#[derive(Debug, Clone)]
pub struct Document {
    /// `file#n` for messages.
    pub origin: String,
    /// The object.
    pub object: Value,
}

impl Document {
    /// Whether this is a BatchJob: dev applies those while the controller runs, and
    /// everything else before it starts.
    pub fn is_batch_job(&self) -> bool {
        self.object["kind"].as_str() == Some("BatchJob")
            && self.object["apiVersion"]
                .as_str()
                .is_some_and(|v| v.starts_with("asgbatch.io/"))
    }

    /// `namespace/name` (a namespaced object without a namespace goes to `default`).
    pub fn key(&self) -> String {
        format!(
            "{}/{}",
            self.object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default"),
            self.object["metadata"]["name"].as_str().unwrap_or_default()
        )
    }
}

/// Splits a multi-document YAML text; empty documents are skipped. Every error names the
/// file and document.
pub fn parse(file: &str, text: &str) -> Result<Vec<Document>, DevError> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let origin = format!("{file} document {}", i + 1);
        let value: Value = serde::Deserialize::deserialize(doc)
            .map_err(|e| DevError::Apply(format!("{origin}: {e}")))?;
        if value.is_null() {
            continue;
        }
        for field in ["apiVersion", "kind"] {
            if !value.get(field).is_some_and(Value::is_string) {
                return Err(DevError::Apply(format!("{origin}: no {field}")));
            }
        }
        if !value
            .pointer("/metadata/name")
            .is_some_and(Value::is_string)
        {
            return Err(DevError::Apply(format!("{origin}: no metadata.name")));
        }
        out.push(Document {
            origin,
            object: value,
        });
    }
    Ok(out)
}

/// Applies every CRD of the project.
pub async fn crds(client: &kube::Client) -> Result<(), DevError> {
    let mut kinds = HashMap::new();
    for crd in crds::all() {
        let object = serde_json::to_value(&crd)
            .map_err(|e| DevError::Apply(format!("CRD {:?}: {e}", crd.metadata.name)))?;
        let d = Document {
            origin: format!("CRD {}", crd.metadata.name.clone().unwrap_or_default()),
            object,
        };
        kind(client, &mut kinds, &d).await?;
        apply(client, &kinds, &d).await?;
    }
    Ok(())
}

/// Applies `documents`, up to `parallel` at a time (in order when `parallel` is 1, or
/// when an object appears twice: a later document must win); returns how many. The first
/// error stops it and names the document.
pub async fn documents(
    client: &kube::Client,
    documents: &[Document],
    parallel: usize,
) -> Result<usize, DevError> {
    // Discovery once per kind, not once per document.
    let mut kinds = HashMap::new();
    for d in documents {
        kind(client, &mut kinds, d).await?;
    }
    let mut objects = HashSet::new();
    let repeated = !documents.iter().all(|d| {
        objects.insert((
            d.object["apiVersion"].as_str(),
            d.object["kind"].as_str(),
            d.key(),
        ))
    });
    let parallel = if repeated { 1 } else { parallel.max(1) };
    let kinds = &kinds;
    futures::stream::iter(documents)
        .map(|d| async move { apply(client, kinds, d).await })
        .buffer_unordered(parallel)
        .try_for_each(|()| async { Ok(()) })
        .await?;
    Ok(documents.len())
}

type Kinds = HashMap<GroupVersionKind, (ApiResource, ApiCapabilities)>;

fn gvk(d: &Document) -> GroupVersionKind {
    let api_version = d.object["apiVersion"].as_str().unwrap_or_default();
    let kind = d.object["kind"].as_str().unwrap_or_default();
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    GroupVersionKind::gvk(group, version, kind)
}

/// Looks up a document's kind (once per kind).
async fn kind(client: &kube::Client, kinds: &mut Kinds, d: &Document) -> Result<(), DevError> {
    let gvk = gvk(d);
    if let Entry::Vacant(e) = kinds.entry(gvk) {
        let found = pinned_kind(client, e.key()).await.map_err(|err| {
            DevError::Apply(format!(
                "{}: {} {}: {err}",
                d.origin,
                d.object["apiVersion"].as_str().unwrap_or_default(),
                d.object["kind"].as_str().unwrap_or_default()
            ))
        })?;
        e.insert(found);
    }
    Ok(())
}

async fn apply(client: &kube::Client, kinds: &Kinds, d: &Document) -> Result<(), DevError> {
    let kind = d.object["kind"].as_str().unwrap_or_default();
    let name = d.object["metadata"]["name"].as_str().unwrap_or_default();
    let Some((resource, caps)) = kinds.get(&gvk(d)) else {
        return Err(DevError::Apply(format!(
            "{}: {kind}: kind not looked up",
            d.origin
        )));
    };
    let api: Api<DynamicObject> = if caps.scope == kube::discovery::Scope::Namespaced {
        let ns = d.object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default");
        Api::namespaced_with(client.clone(), ns, resource)
    } else {
        Api::all_with(client.clone(), resource)
    };
    let failed =
        |e: &dyn std::fmt::Display| DevError::Apply(format!("{}: {kind} {name}: {e}", d.origin));
    // The reply (the whole object) is not decoded: nothing here reads it.
    let request = kube::core::Request::new(api.resource_url())
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&d.object),
        )
        .map_err(|e| failed(&e))?;
    client.request_text(request).await.map_err(|e| failed(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_parses() {
        let docs = parse("dev-demo.yaml", super::super::DEMO).expect("demo");
        let kinds: Vec<&str> = docs
            .iter()
            .map(|d| d.object["kind"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(
            kinds,
            [
                "ComputeEnvironment",
                "JobQueue",
                "BatchJob",
                "BatchJob",
                "BatchJob",
                "BatchJob"
            ]
        );
    }

    #[test]
    fn bad_documents_are_named() {
        let e = parse("a.yaml", "kind: X\nmetadata: {name: x}\n").expect_err("no apiVersion");
        assert_eq!(e.to_string(), "a.yaml document 1: no apiVersion");
        let e = parse("a.yaml", "---\n---\napiVersion: v1\nkind: X\n").expect_err("no name");
        assert!(e.to_string().contains("no metadata.name"), "{e}");
        let e = parse("a.yaml", "a: [").expect_err("bad yaml");
        assert!(e.to_string().starts_with("a.yaml document 1:"), "{e}");
    }
}
