//! One object the controller's types cannot read never stops it: the object is
//! reported on itself (a Warning Event) and the rest is scheduled as usual.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use crate::support;

use std::collections::HashMap;
use std::time::Duration;

use asg_batch::api::JobPhase;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use support::controller::{LOCAL_WORLD, apply_yaml, start_server_with, test_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_job_is_reported_and_the_others_still_run() {
    // A BatchJob schema that accepts anything, so a malformed job can be stored (but
    // still declares `status.node`: the real kube-apiserver refuses a selectable field the
    // schema does not have).
    let mut h = start_server_with(LOCAL_WORLD, |crd| {
        if crd.spec.names.kind == "BatchJob" {
            for v in &mut crd.spec.versions {
                if let Some(s) = v.schema.as_mut() {
                    let anything = |properties| JSONSchemaProps {
                        type_: Some("object".into()),
                        x_kubernetes_preserve_unknown_fields: Some(true),
                        properties,
                        ..JSONSchemaProps::default()
                    };
                    let node = JSONSchemaProps {
                        type_: Some("string".into()),
                        ..JSONSchemaProps::default()
                    };
                    let status = anything(Some([("node".to_owned(), node)].into()));
                    s.open_api_v3_schema =
                        Some(anything(Some([("status".to_owned(), status)].into())));
                }
            }
        }
    })
    .await;
    let raw: Api<kube::api::DynamicObject> = Api::namespaced_with(
        h.client.clone(),
        "default",
        &kube::api::ApiResource::erase::<asg_batch::api::BatchJob>(&()),
    );
    raw.patch(
        "garbled",
        &PatchParams::apply("test"),
        &Patch::Apply(json!({
            "apiVersion": "asgbatch.io/v1alpha1",
            "kind": "BatchJob",
            "metadata": {"name": "garbled"},
            "spec": {"queue": 5, "resources": "lots"},
        })),
    )
    .await
    .expect("store a malformed job");
    h.add_controller(test_config(Duration::from_secs(600)), HashMap::new());
    h.register_node("n1", "local", "4", "16Gi").await;
    apply_yaml(
        &h.client,
        "apiVersion: asgbatch.io/v1alpha1\nkind: BatchJob\nmetadata: {name: fine}\nspec:\n  queue: q\n  process: {command: [\"true\"]}\n  resources: {cpu: \"1\", memory: 1Gi}\n",
    )
    .await;
    h.wait_job("fine", "Starting despite a malformed neighbour", |j| {
        j.status.as_ref().and_then(|s| s.phase) == Some(JobPhase::Starting)
    })
    .await;
    let events: Api<Event> = Api::namespaced(h.client.clone(), "default");
    let event = support::eventually_within(
        "an InvalidObject Event about garbled",
        Duration::from_secs(30),
        || {
            let events = events.clone();
            async move {
                let items = events
                    .list(&Default::default())
                    .await
                    .expect("events")
                    .items;
                items.into_iter().find(|e| {
                    e.reason.as_deref() == Some("InvalidObject")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("garbled")
                })
            }
        },
        Option::is_some,
    )
    .await
    .expect("event");
    assert_eq!(event.type_.as_deref(), Some("Warning"));
}
