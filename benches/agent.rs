//! The node agent's decode of one watch event (issue 13): a BatchJob bound to a node, as
//! the watch sends it (managed fields of the user's apply, the controller and the agent
//! included), decoded by kube's `DeserializeGuard` (what the agent used) and by
//! [`WatchedJob`] (what it uses now). Each agent decodes about three such events per job it
//! runs (bound, reported, unbound).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a failed set-up is a failed run

use std::hint::black_box;

use asg_batch::agent::watched::WatchedJob;
use asg_batch::api::BatchJob;
use criterion::{Criterion, criterion_group, criterion_main};
use kube::core::{DeserializeGuard, WatchEvent};
use serde_json::json;

/// One MODIFIED event of a running job, written as API servers write it (type first).
fn event_line() -> String {
    let job = json!({
        "apiVersion": "asgbatch.io/v1alpha1", "kind": "BatchJob",
        "metadata": {
            "creationTimestamp": "2026-12-01T05:54:38Z", "generation": 1,
            "managedFields": [
                {"apiVersion": "asgbatch.io/v1alpha1", "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:spec": {"f:process": {"f:command": {}}, "f:queue": {},
                              "f:resources": {"f:cpu": {}, "f:memory": {}}}},
                 "manager": "asg-batch-dev", "operation": "Apply", "time": "2026-12-01T05:54:38Z"},
                {"apiVersion": "asgbatch.io/v1alpha1", "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:status": {"f:attempts": {"k:{\"attempt\":1}": {".": {}, "f:attempt": {}, "f:startedAt": {}}}}},
                 "manager": "asg-batch-agent-attempt-1", "operation": "Apply",
                 "subresource": "status", "time": "2026-12-01T05:54:39Z"},
                {"apiVersion": "asgbatch.io/v1alpha1", "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:status": {"f:attempt": {}, "f:attempts": {"k:{\"attempt\":1}": {".": {}, "f:attempt": {}, "f:instanceId": {}, "f:node": {}}},
                              "f:conditions": {}, "f:message": {}, "f:node": {}, "f:observedGeneration": {},
                              "f:phase": {}, "f:startedAt": {},
                              "f:template": {"f:process": {"f:command": {}}, "f:resources": {"f:cpu": {}, "f:memory": {}}}}},
                 "manager": "asg-batch-controller", "operation": "Apply",
                 "subresource": "status", "time": "2026-12-01T05:54:39Z"}
            ],
            "name": "j-0", "namespace": "default", "resourceVersion": "26",
            "uid": "9cae9885-522f-4957-8f1c-f3266333f96f"
        },
        "spec": {"process": {"command": ["sh", "-c", "sleep 30"]}, "queue": "bench",
                 "resources": {"cpu": "100m", "memory": "16Mi"}},
        "status": {
            "attempt": 1,
            "attempts": [{"attempt": 1, "instanceId": "local-bench-0001", "node": "local-bench-0001",
                          "startedAt": "2026-12-01T05:54:38Z"}],
            "conditions": [{"lastTransitionTime": "2026-12-01T05:54:38Z",
                            "message": "attempt 1 bound to node local-bench-0001", "observedGeneration": 1,
                            "reason": "Bound", "status": "True", "type": "Scheduled"}],
            "message": "attempt 1 running on node local-bench-0001", "node": "local-bench-0001",
            "observedGeneration": 1, "phase": "Running", "startedAt": "2026-12-01T05:54:38Z",
            "template": {"process": {"command": ["sh", "-c", "sleep 30"]},
                         "resources": {"cpu": "100m", "memory": "16Mi"}}
        }
    });
    format!(r#"{{"type":"MODIFIED","object":{job}}}"#)
}

fn decode(c: &mut Criterion) {
    let line = event_line();
    println!("one watch event: {} bytes", line.len());
    c.bench_function("agent_watch_event/kube_deserialize_guard", |b| {
        b.iter(|| {
            let e: WatchEvent<DeserializeGuard<BatchJob>> =
                serde_json::from_str(black_box(&line)).expect("decodes");
            // What the agent's watch then did: drop the managed fields.
            if let WatchEvent::Modified(mut g) = e {
                if let Ok(j) = &mut g.0 {
                    j.metadata.managed_fields = None;
                }
                black_box(g);
            }
        });
    });
    c.bench_function("agent_watch_event/watched_job", |b| {
        b.iter(|| {
            let e: WatchEvent<WatchedJob> =
                serde_json::from_str(black_box(&line)).expect("decodes");
            black_box(e);
        });
    });
}

criterion_group!(benches, decode);
criterion_main!(benches);
