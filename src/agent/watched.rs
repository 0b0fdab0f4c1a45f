//! A BatchJob as the agent's watch decodes it: once, straight from the event's JSON into
//! the typed job, without the `managedFields` nobody here reads.
//!
//! kube's [`DeserializeGuard`](kube::core::DeserializeGuard), which the agent used before,
//! parses each object into a generic tree, copies the tree, decodes the typed object from
//! the copy, and decodes `managedFields` (half of a bound job's JSON) only for the agent to
//! drop them: a fifth of `asg-batch dev`'s CPU went into decoding watch events (issue 13).
//! [`WatchedJob`] keeps its behaviour (a job that does not deserialise is kept as its
//! metadata and the error, and one bad job never breaks the watch) at a fraction of the
//! cost: the event's object is taken as raw JSON text (no tree), decoded into the typed
//! job with `managedFields` skipped unparsed, and only when that fails is the text read a
//! second time, for the metadata. (An event serde has to buffer, its `object` before its
//! `type`, goes through one `serde_json::Value` instead: still no copy of it.)

use crate::api::{BatchJob, BatchJobSpec, BatchJobStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::core::error_boundary::InvalidObject;
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A watched BatchJob: the typed job (shared, not copied, by the store and the attempt
/// that runs it), or its metadata and why it does not deserialise.
#[derive(Debug, Clone)]
pub struct WatchedJob(pub Result<Arc<BatchJob>, InvalidObject>);

impl WatchedJob {
    /// Decodes one BatchJob's JSON text. An error when not even its metadata can be read
    /// (then nothing can be stored or reported of it: the event is an error, as with
    /// `DeserializeGuard`).
    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        match serde_json::from_str::<LeanJob>(json) {
            Ok(job) => Ok(Self(Ok(Arc::new(job.into())))),
            Err(error) => {
                let Partial { metadata } = serde_json::from_str(json)?;
                Ok(Self(Err(InvalidObject {
                    error: error.to_string(),
                    metadata,
                })))
            }
        }
    }

    /// [`WatchedJob::from_json`] for an object already parsed.
    fn from_value(value: &serde_json::Value) -> Result<Self, serde_json::Error> {
        match LeanJob::deserialize(value) {
            Ok(job) => Ok(Self(Ok(Arc::new(job.into())))),
            Err(error) => {
                let Partial { metadata } = Partial::deserialize(value)?;
                Ok(Self(Err(InvalidObject {
                    error: error.to_string(),
                    metadata,
                })))
            }
        }
    }

    /// The typed job, when it deserialised.
    pub fn job(&self) -> Option<&Arc<BatchJob>> {
        self.0.as_ref().ok()
    }
}

impl<'de> Deserialize<'de> for WatchedJob {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::api::raw_json::deserialize(d)
    }
}

impl crate::api::raw_json::FromJson for WatchedJob {
    fn from_text(text: &str) -> Result<Self, serde_json::Error> {
        Self::from_json(text)
    }
    fn from_value(value: &serde_json::Value) -> Result<Self, serde_json::Error> {
        Self::from_value(value)
    }
}

impl kube::Resource for WatchedJob {
    type DynamicType = ();
    type Scope = kube::core::NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        BatchJob::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        BatchJob::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        BatchJob::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        BatchJob::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        self.0
            .as_ref()
            .map_or_else(|e| &e.metadata, |j| &j.metadata)
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match &mut self.0 {
            Ok(j) => &mut Arc::make_mut(j).metadata,
            Err(e) => &mut e.metadata,
        }
    }
}

/// BatchJob's wire form, decoded as `BatchJob`'s derived `Deserialize` does, with
/// [`LeanMeta`] for its metadata.
#[derive(Deserialize)]
struct LeanJob {
    metadata: LeanMeta,
    spec: BatchJobSpec,
    status: Option<BatchJobStatus>,
}

impl From<LeanJob> for BatchJob {
    fn from(j: LeanJob) -> Self {
        Self {
            metadata: j.metadata.into(),
            spec: j.spec,
            status: j.status,
        }
    }
}

/// `ObjectMeta` without `managedFields`: an unknown key to serde, skipped unparsed.
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct LeanMeta {
    annotations: Option<BTreeMap<String, String>>,
    creation_timestamp: Option<Time>,
    deletion_grace_period_seconds: Option<i64>,
    deletion_timestamp: Option<Time>,
    finalizers: Option<Vec<String>>,
    generate_name: Option<String>,
    generation: Option<i64>,
    labels: Option<BTreeMap<String, String>>,
    name: Option<String>,
    namespace: Option<String>,
    owner_references: Option<Vec<OwnerReference>>,
    resource_version: Option<String>,
    self_link: Option<String>,
    uid: Option<String>,
}

impl From<LeanMeta> for ObjectMeta {
    fn from(m: LeanMeta) -> Self {
        Self {
            annotations: m.annotations,
            creation_timestamp: m.creation_timestamp,
            deletion_grace_period_seconds: m.deletion_grace_period_seconds,
            deletion_timestamp: m.deletion_timestamp,
            finalizers: m.finalizers,
            generate_name: m.generate_name,
            generation: m.generation,
            labels: m.labels,
            managed_fields: None,
            name: m.name,
            namespace: m.namespace,
            owner_references: m.owner_references,
            resource_version: m.resource_version,
            self_link: m.self_link,
            uid: m.uid,
        }
    }
}

/// The metadata of a job that does not deserialise (kube's `PartialObjectMeta`: absent
/// metadata reads as empty).
#[derive(Deserialize)]
struct Partial {
    #[serde(default)]
    metadata: ObjectMeta,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use kube::core::DeserializeGuard;
    use kube::core::WatchEvent;
    use serde_json::json;

    /// A job bound to a node as the agent's watch sends it: managed fields and all.
    fn bound_job() -> serde_json::Value {
        json!({
            "apiVersion": "asgbatch.io/v1alpha1", "kind": "BatchJob",
            "metadata": {
                "creationTimestamp": "2026-12-01T05:54:38Z", "generation": 1,
                "labels": {"team": "a"}, "annotations": {"note": "x"},
                "finalizers": ["asgbatch.io/logs"],
                "ownerReferences": [{"apiVersion": "asgbatch.io/v1alpha1", "kind": "BatchJob",
                                      "name": "parent", "uid": "p-1", "controller": true}],
                "managedFields": [
                    {"apiVersion": "asgbatch.io/v1alpha1", "fieldsType": "FieldsV1",
                     "fieldsV1": {"f:spec": {"f:process": {"f:command": {}}, "f:queue": {}}},
                     "manager": "asg-batch-dev", "operation": "Apply", "time": "2026-12-01T05:54:38Z"},
                    {"apiVersion": "asgbatch.io/v1alpha1", "fieldsType": "FieldsV1",
                     "fieldsV1": {"f:status": {"f:attempts": {"k:{\"attempt\":1}": {".": {}, "f:attempt": {}}}}},
                     "manager": "asg-batch-agent-attempt-1", "operation": "Apply",
                     "subresource": "status", "time": "2026-12-01T05:54:39Z"}
                ],
                "name": "j-0", "namespace": "default", "resourceVersion": "26",
                "uid": "9cae9885-522f-4957-8f1c-f3266333f96f"
            },
            "spec": {"process": {"command": ["sh", "-c", "sleep 30"]}, "queue": "bench",
                     "resources": {"cpu": "100m", "memory": "16Mi"}},
            "status": {
                "attempt": 1,
                "attempts": [{"attempt": 1, "instanceId": "i-1", "node": "n1",
                              "startedAt": "2026-12-01T05:54:38Z"}],
                "conditions": [{"lastTransitionTime": "2026-12-01T05:54:38Z",
                                "message": "attempt 1 bound to node n1", "observedGeneration": 1,
                                "reason": "Bound", "status": "True", "type": "Scheduled"}],
                "node": "n1", "observedGeneration": 1, "phase": "Running",
                "startedAt": "2026-12-01T05:54:38Z",
                "template": {"process": {"command": ["sh", "-c", "sleep 30"]},
                             "resources": {"cpu": "100m", "memory": "16Mi"}}
            }
        })
    }

    /// What kube's guard makes of `v`, with `managedFields` dropped (as the agent did).
    fn guarded(v: &serde_json::Value) -> Result<BatchJob, Box<InvalidObject>> {
        let g: DeserializeGuard<BatchJob> = serde_json::from_value(v.clone()).unwrap();
        g.0.map(|mut j| {
            j.metadata.managed_fields = None;
            j
        })
        .map_err(Box::new)
    }

    /// The two jobs are the same object (`BatchJob` has no `PartialEq`: compared as JSON).
    fn same(a: &BatchJob, b: &BatchJob) -> bool {
        serde_json::to_value(a).unwrap() == serde_json::to_value(b).unwrap()
    }

    #[test]
    fn a_job_decodes_as_kubes_guard_decodes_it_without_its_managed_fields() {
        let v = bound_job();
        let mine = WatchedJob::from_json(&v.to_string()).unwrap();
        let job = mine.job().expect("a valid job");
        assert!(same(job, &guarded(&v).unwrap()));
        assert_eq!(job.metadata.managed_fields, None);
        assert_eq!(
            job.metadata.labels,
            Some([("team".into(), "a".into())].into())
        );
        assert_eq!(
            job.metadata.owner_references.as_ref().map(Vec::len),
            Some(1)
        );
        // Without status, and with explicit nulls, as the derived decode reads them.
        let mut bare = v.clone();
        bare.as_object_mut().unwrap().remove("status");
        bare["metadata"]["labels"] = serde_json::Value::Null;
        let mine = WatchedJob::from_json(&bare.to_string()).unwrap();
        assert!(same(mine.job().unwrap(), &guarded(&bare).unwrap()));
    }

    #[test]
    fn a_job_that_does_not_deserialise_keeps_its_metadata_and_the_error() {
        let mut v = bound_job();
        v["spec"]["queue"] = json!(5);
        v["spec"]["resources"] = json!("lots");
        let mine = WatchedJob::from_json(&v.to_string()).unwrap();
        let invalid = mine.0.as_ref().expect_err("invalid");
        let theirs = guarded(&v).expect_err("invalid for kube too");
        assert_eq!(invalid.metadata.uid, theirs.metadata.uid);
        assert_eq!(invalid.metadata.name.as_deref(), Some("j-0"));
        assert_eq!(invalid.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(invalid.metadata.resource_version.as_deref(), Some("26"));
        assert!(
            invalid.error.contains("queue") || invalid.error.contains("invalid type"),
            "the error says what is wrong: {}",
            invalid.error
        );
        // No metadata to key it by: the event itself is an error, as with kube's guard.
        let garbage = json!({"metadata": "no", "spec": 1});
        assert!(WatchedJob::from_json(&garbage.to_string()).is_err());
        assert!(serde_json::from_value::<DeserializeGuard<BatchJob>>(garbage).is_err());
    }

    #[test]
    fn watch_events_and_lists_decode_through_kubes_types() {
        let v = bound_job();
        // The kube-apiserver and the embedded server both write the type first (Go's
        // `WatchEvent` field order; `store.rs`), so serde hands the object over unbuffered.
        let line = format!(r#"{{"type":"MODIFIED","object":{v}}}"#);
        let event: WatchEvent<WatchedJob> = serde_json::from_str(&line).unwrap();
        let WatchEvent::Modified(job) = event else {
            panic!("not a modification");
        };
        assert!(same(job.job().unwrap(), &guarded(&v).unwrap()));
        // The object first (serde_json's map orders keys; the embedded server writes some
        // events so): serde buffers it, and it still decodes the same.
        let line = json!({"type": "MODIFIED", "object": v}).to_string();
        assert!(line.starts_with(r#"{"object""#), "{line}");
        let event: WatchEvent<WatchedJob> = serde_json::from_str(&line).unwrap();
        let WatchEvent::Modified(job) = event else {
            panic!("not a modification");
        };
        assert!(same(job.job().unwrap(), &guarded(&v).unwrap()));
        let mut bad = v.clone();
        bad["spec"]["queue"] = json!(5);
        let line = json!({"type": "ADDED", "object": bad}).to_string();
        let event: WatchEvent<WatchedJob> = serde_json::from_str(&line).unwrap();
        let WatchEvent::Added(job) = event else {
            panic!("not an addition");
        };
        assert!(job.job().is_none());
        assert_eq!(
            kube::Resource::meta(&job).uid,
            v["metadata"]["uid"].as_str().map(String::from)
        );
        // A deserializer that hands over the object's own entries.
        let entries = v.as_object().unwrap().clone();
        let job = WatchedJob::deserialize(serde::de::IntoDeserializer::into_deserializer(entries))
            .unwrap();
        assert!(same(job.job().unwrap(), &guarded(&v).unwrap()));
        let list = json!({"apiVersion": "asgbatch.io/v1alpha1", "kind": "BatchJobList",
                          "metadata": {"resourceVersion": "30"}, "items": [v, bad]})
        .to_string();
        let list: kube::core::ObjectList<WatchedJob> = serde_json::from_str(&list).unwrap();
        assert!(list.items[0].job().is_some());
        assert!(list.items[1].job().is_none());
        assert_eq!(
            kube::Resource::meta(&list.items[1]).name.as_deref(),
            Some("j-0")
        );
    }
}
