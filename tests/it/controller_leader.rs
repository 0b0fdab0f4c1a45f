//! Two controller replicas with leader election on one Lease: one acts, and when it
//! stops the other takes over.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use crate::support;

use std::collections::HashMap;
use std::time::Duration;

use asg_batch::api::JobPhase;
use asg_batch::controller::{FIELD_MANAGER, LeaderElection};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use support::controller::{LOCAL_WORLD, apply_yaml, start_server, test_config};

fn replica(identity: &str) -> asg_batch::controller::ControllerConfig {
    let mut c = test_config(Duration::from_secs(600));
    c.instance = Some(identity.into());
    c.leader_election = Some(LeaderElection {
        namespace: "default".into(),
        lease_name: "asg-batch-controller".into(),
        identity: identity.into(),
        lease_duration: Duration::from_secs(2),
        renew_interval: Duration::from_millis(300),
    });
    c
}

fn job(name: &str) -> String {
    format!(
        "apiVersion: asgbatch.io/v1alpha1\nkind: BatchJob\nmetadata: {{name: {name}}}\nspec:\n  queue: q\n  process: {{command: [\"true\"]}}\n  resources: {{cpu: \"1\", memory: 1Gi}}\n"
    )
}

async fn holder(client: &kube::Client) -> Option<String> {
    let api: Api<Lease> = Api::namespaced(client.clone(), "default");
    api.get_opt("asg-batch-controller")
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_leads_and_the_other_takes_over_when_it_stops() {
    let mut h = start_server(LOCAL_WORLD).await;
    let a = h.add_controller(replica("a"), HashMap::new());
    let b = h.add_controller(replica("b"), HashMap::new());
    h.register_node("n1", "local", "4", "16Gi").await;
    apply_yaml(&h.client, &job("first")).await;
    let j = h
        .wait_job("first", "Starting", |j| {
            j.status.as_ref().and_then(|s| s.phase) == Some(JobPhase::Starting)
        })
        .await;
    assert_eq!(j.status.and_then(|s| s.attempt), Some(1), "bound once");
    let leader = holder(&h.client).await.expect("a holder");
    assert!(leader == "a" || leader == "b", "{leader}");
    // Only the leader acted: every Event the controller reported comes from it (the real
    // kube-apiserver reports Events of its own in `default`, e.g. its IP allocator's).
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(h.client.clone(), "default");
    // (Events are published after the status writes of a pass: wait for the first.)
    let instances: Vec<Option<String>> = support::eventually_within(
        "an Event",
        Duration::from_secs(30),
        || {
            let events = events.clone();
            async move {
                let items = events
                    .list(&Default::default())
                    .await
                    .expect("events")
                    .items;
                items
                    .into_iter()
                    .filter(|e| e.reporting_controller.as_deref() == Some(FIELD_MANAGER))
                    .map(|e| e.reporting_instance)
                    .collect()
            }
        },
        |items: &Vec<Option<String>>| !items.is_empty(),
    )
    .await;
    assert!(
        instances
            .iter()
            .all(|i| i.as_deref() == Some(leader.as_str())),
        "{instances:?}"
    );

    // The leader stops (releasing the lease); the other replica binds the next job.
    let (stop, other) = if leader == "a" { (a, "b") } else { (b, "a") };
    h.stop_controller(stop).await;
    apply_yaml(&h.client, &job("second")).await;
    h.wait_job("second", "Starting under the new leader", |j| {
        j.status.as_ref().and_then(|s| s.phase) == Some(JobPhase::Starting)
    })
    .await;
    support::eventually_within(
        &format!("the lease moves to {other}"),
        Duration::from_secs(30),
        || holder(&h.client),
        |held| held.as_deref() == Some(other),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_once_its_lease_expires() {
    let mut h = start_server(LOCAL_WORLD).await;
    let a = h.add_controller(replica("a"), HashMap::new());
    // Let "a" take the lease before "b" starts.
    support::eventually_within(
        "a leads",
        Duration::from_secs(30),
        || holder(&h.client),
        |held| held.as_deref() == Some("a"),
    )
    .await;
    h.add_controller(replica("b"), HashMap::new());
    h.register_node("n1", "local", "4", "16Gi").await;
    h.kill_controller(a).await;
    apply_yaml(&h.client, &job("after-crash")).await;
    h.wait_job("after-crash", "Starting under b", |j| {
        j.status.as_ref().and_then(|s| s.phase) == Some(JobPhase::Starting)
    })
    .await;
    assert_eq!(holder(&h.client).await.as_deref(), Some("b"));
}
