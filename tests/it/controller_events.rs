//! The controller's Events (`asg_batch::controller::recorder::Recorder`) as the API server
//! stores them, on the embedded server and the real kube-apiserver: a repeat within the
//! series window is a series on the first Event, a different note a new Event, and a
//! repeat of an Event that was deleted meanwhile a new Event again.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use crate::support;

use asg_batch::controller::recorder::Recorder;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::events::{Event as Published, EventType, Reporter};
use support::kube::ServerUnderTest;

fn retrying(note: &str) -> Published {
    Published {
        type_: EventType::Warning,
        reason: "Retrying".into(),
        note: Some(note.into()),
        action: "Retry".into(),
        secondary: None,
    }
}

/// The Events about `job`, oldest first, as (note, series count).
async fn events_about(api: &Api<Event>, job: &str) -> Vec<(String, Option<i32>, String)> {
    let mut events: Vec<Event> = api
        .list(&ListParams::default().fields(&format!("regarding.name={job}")))
        .await
        .expect("list events")
        .items;
    events.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
    events
        .into_iter()
        .map(|e| {
            (
                e.note.unwrap_or_default(),
                e.series.map(|s| s.count),
                e.metadata.name.unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_event_is_a_series_and_a_deleted_one_starts_again() {
    let server = ServerUnderTest::start().await;
    let client = server.client();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "asg-batch-controller".into(),
            instance: Some("test".into()),
        },
    );
    let job = format!("flaky-{}", std::process::id());
    let regarding = ObjectReference {
        api_version: Some("asgbatch.io/v1alpha1".into()),
        kind: Some("BatchJob".into()),
        name: Some(job.clone()),
        namespace: Some("default".into()),
        uid: Some("0b4c1d2e-0000-4000-8000-000000000001".into()),
        ..ObjectReference::default()
    };
    let api: Api<Event> = Api::namespaced(client.clone(), "default");

    recorder
        .publish(&retrying("attempt 1 failed"), &regarding)
        .await
        .expect("first");
    recorder
        .publish(&retrying("attempt 1 failed"), &regarding)
        .await
        .expect("repeat");
    recorder
        .publish(&retrying("attempt 2 failed"), &regarding)
        .await
        .expect("another note");
    let events = events_about(&api, &job).await;
    let seen: Vec<_> = events.iter().map(|(n, c, _)| (n.as_str(), *c)).collect();
    assert_eq!(
        seen,
        [("attempt 1 failed", Some(2)), ("attempt 2 failed", None)],
        "a repeat is a series on the first Event, another note a new Event"
    );

    // The first Event is deleted (by a user, or the API server's event TTL); its repeat
    // is published as a new Event, not lost.
    api.delete(&events[0].2, &DeleteParams::default())
        .await
        .expect("delete");
    recorder
        .publish(&retrying("attempt 1 failed"), &regarding)
        .await
        .expect("the repeat of a deleted Event is published");
    let seen: Vec<_> = events_about(&api, &job)
        .await
        .into_iter()
        .map(|(n, c, _)| (n, c))
        .collect();
    assert_eq!(
        seen,
        [
            ("attempt 2 failed".to_string(), None),
            ("attempt 1 failed".to_string(), None)
        ],
        "a new Event for the repeat"
    );
}
