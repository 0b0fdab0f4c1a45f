//! The controller with an `aws` compute environment against a real moto server: the
//! Auto Scaling Group's desired capacity follows demand, idle instances are drained and
//! terminated, and a missing group shows up in the environment's status.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use crate::support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use asg_batch::api::{ComputeEnvironment, JobPhase};
use asg_batch::cloud::Fleet;
use asg_batch::cloud::aws::AwsFleet;
use kube::api::Api;
use support::controller::{apply_yaml, start, test_config};

const WORLD: &str = r#"
apiVersion: asgbatch.io/v1alpha1
kind: ComputeEnvironment
metadata: {name: cloud}
spec:
  aws: {autoScalingGroupName: batch, region: us-east-1}
  minInstances: 0
  maxInstances: 5
  scaleInAfterIdleSeconds: 0
---
apiVersion: asgbatch.io/v1alpha1
kind: JobQueue
metadata: {name: q}
spec:
  computeEnvironments: [cloud]
"#;

fn job(name: &str) -> String {
    format!(
        r#"
apiVersion: asgbatch.io/v1alpha1
kind: BatchJob
metadata: {{name: {name}}}
spec:
  queue: q
  process: {{command: ["true"]}}
  resources: {{cpu: "3", memory: 2Gi}}
"#
    )
}

async fn wait_desired(fleet: &AwsFleet, want: u32) {
    support::eventually(
        &format!("desired capacity {want}"),
        || async { fleet.describe().await.expect("describe").desired },
        |d| *d == want,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn desired_capacity_follows_demand_and_idle_instances_are_terminated() {
    let moto = support::moto::MotoServer::start();
    let config = moto.sdk_config().await;
    support::moto::create_group(&config, "batch", 5, 0).await;
    let fleet = Arc::new(AwsFleet::new(&config, "batch"));
    let fleets: HashMap<String, Arc<dyn Fleet>> =
        HashMap::from([("cloud".to_string(), fleet.clone() as Arc<dyn Fleet>)]);
    let mut h = start(WORLD, test_config(Duration::from_secs(5)), fleets).await;
    for n in ["a", "b", "c"] {
        apply_yaml(&h.client, &job(n)).await;
    }

    // Three 3-cpu jobs on 4-cpu c5.xlarge instances (shape looked up from the group).
    wait_desired(&fleet, 3).await;
    let ces: Api<ComputeEnvironment> = Api::all(h.client.clone());
    let ce = ces.get("cloud").await.expect("ce");
    let st = ce.status.unwrap_or_default();
    let shape = st.instance_shape.expect("shape in status");
    assert_eq!(shape.instance_type.as_deref(), Some("c5.xlarge"));
    assert_eq!(
        (
            shape.resources.cpu.0.as_str(),
            shape.resources.memory.0.as_str()
        ),
        ("4", "8Gi")
    );
    let j = h.jobs().get("a").await.expect("a");
    assert_eq!(
        j.status.and_then(|s| s.message).as_deref(),
        Some("waiting for 3 instances to boot in ce/cloud")
    );

    // The instances' agents register; the jobs are bound and run.
    let ids: Vec<String> = fleet
        .describe()
        .await
        .expect("describe")
        .live_instances()
        .map(|i| i.instance_id.clone())
        .collect();
    assert_eq!(ids.len(), 3);
    for id in &ids {
        h.register_node(&id.to_ascii_lowercase(), "cloud", "4", "8Gi")
            .await;
    }
    for n in ["a", "b", "c"] {
        h.wait_job(n, "Starting", |j| {
            j.status.as_ref().and_then(|s| s.phase) == Some(JobPhase::Starting)
        })
        .await;
        h.agent_started(n, 1).await;
        h.agent_exited(n, 1, 0).await;
    }
    for n in ["a", "b", "c"] {
        h.wait_job(n, "Succeeded", |j| {
            j.status.as_ref().and_then(|s| s.phase) == Some(JobPhase::Succeeded)
        })
        .await;
    }

    // Idle (scaleInAfterIdleSeconds: 0): drained, terminated, desired back to 0.
    wait_desired(&fleet, 0).await;
    // A terminated instance's agent may still run a little while: its node stays, Draining
    // (no job goes there), until the agent goes quiet; then it is deleted.
    let start_wait = Instant::now();
    loop {
        let nodes = h
            .nodes()
            .list(&Default::default())
            .await
            .expect("nodes")
            .items;
        if nodes.iter().all(|n| {
            n.status.as_ref().and_then(|s| s.phase)
                == Some(asg_batch::api::batch_node::NodePhase::Draining)
        }) {
            break;
        }
        assert!(
            start_wait.elapsed() < Duration::from_secs(30),
            "nodes of terminated instances are Draining"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The terminated instances' agents go quiet.
    for id in &ids {
        h.stop_heartbeat(&id.to_ascii_lowercase());
    }
    let start_wait = Instant::now();
    while !h
        .nodes()
        .list(&Default::default())
        .await
        .expect("nodes")
        .items
        .is_empty()
    {
        assert!(
            start_wait.elapsed() < Duration::from_secs(30),
            "BatchNodes of terminated instances are deleted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_group_is_reported_on_the_compute_environment() {
    let moto = support::moto::MotoServer::start();
    let config = moto.sdk_config().await;
    let fleet: Arc<dyn Fleet> = Arc::new(AwsFleet::new(&config, "batch"));
    let h = start(
        WORLD,
        test_config(Duration::from_secs(600)),
        HashMap::from([("cloud".to_string(), fleet)]),
    )
    .await;
    let ces: Api<ComputeEnvironment> = Api::all(h.client.clone());
    let start_wait = Instant::now();
    let cond = loop {
        let ce = ces.get("cloud").await.expect("ce");
        if let Some(c) = ce
            .status
            .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready"))
        {
            break c;
        }
        assert!(
            start_wait.elapsed() < Duration::from_secs(30),
            "no Ready condition"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_str()),
        ("False", "FleetError")
    );
    assert!(cond.message.contains("not found"), "{}", cond.message);
    // The Warning Event is published after the status write of the same pass.
    use k8s_openapi::api::events::v1::Event;
    let events: Api<Event> = Api::namespaced(h.client.clone(), "default");
    let start_wait = Instant::now();
    loop {
        let items = events
            .list(&Default::default())
            .await
            .expect("events")
            .items;
        if items.iter().any(|e| {
            e.reason.as_deref() == Some("FleetError")
                && e.type_.as_deref() == Some("Warning")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("cloud")
        }) {
            break;
        }
        assert!(
            start_wait.elapsed() < Duration::from_secs(30),
            "a Warning Event on the compute environment"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Seconds since the epoch of a Kubernetes time.
fn secs(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> i64 {
    t.0.as_second()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_registration_after_its_launch_is_the_observed_boot_time() {
    const BOOT: i64 = 4;
    let moto = support::moto::MotoServer::start();
    let config = moto.sdk_config().await;
    support::moto::create_group(&config, "batch", 5, 0).await;
    let fleet = Arc::new(AwsFleet::new(&config, "batch").reading_launch_times());
    let fleets: HashMap<String, Arc<dyn Fleet>> =
        HashMap::from([("cloud".to_string(), fleet.clone() as Arc<dyn Fleet>)]);
    let mut h = start(WORLD, test_config(Duration::from_secs(5)), fleets).await;
    apply_yaml(&h.client, &job("a")).await;
    wait_desired(&fleet, 1).await;
    let state = fleet.describe().await.expect("describe");
    let instance = state.live_instances().next().expect("an instance").clone();
    let launched = instance.launched_at.expect("EC2 LaunchTime read");

    // Its agent registers BOOT seconds (at least) after the launch.
    let registration = launched + jiff::SignedDuration::from_secs(BOOT);
    support::wait_until_async(
        "the instance to have booted",
        Duration::from_secs(60),
        || jiff::Timestamp::now() >= registration,
    )
    .await;
    let node = instance.instance_id.to_ascii_lowercase();
    h.register_node(&node, "cloud", "4", "8Gi").await;
    let created = h
        .nodes()
        .get(&node)
        .await
        .expect("node")
        .metadata
        .creation_timestamp
        .expect("creationTimestamp");
    let want = u32::try_from(created.0.duration_since(launched).as_secs()).expect("after launch");
    assert!(i64::from(want) >= BOOT);

    // The compute environment shows it (one sample: its own median).
    let ces: Api<ComputeEnvironment> = Api::all(h.client.clone());
    support::eventually(
        "status.observedBootSeconds",
        || async {
            ces.get("cloud")
                .await
                .expect("ce")
                .status
                .unwrap_or_default()
                .observed_boot_seconds
        },
        std::option::Option::is_some,
    )
    .await;
    let observed = ces
        .get("cloud")
        .await
        .expect("ce")
        .status
        .unwrap_or_default()
        .observed_boot_seconds;
    assert_eq!(
        observed,
        Some(want),
        "launch {launched} → node created {}",
        created.0
    );

    // A job that needs another instance expects it in the observed boot time, not in the
    // default 120 s of an aws fleet (a holds the first instance: started, still running).
    h.wait_job("a", "Starting", |j| {
        j.status.as_ref().and_then(|s| s.phase) == Some(JobPhase::Starting)
    })
    .await;
    h.agent_started("a", 1).await;
    apply_yaml(&h.client, &job("b")).await;
    let b = h
        .wait_job("b", "an estimated start", |j| {
            j.status
                .as_ref()
                .is_some_and(|s| s.estimated_start_time.is_some())
        })
        .await;
    let submitted = secs(b.metadata.creation_timestamp.as_ref().expect("created"));
    let eta = secs(
        b.status
            .as_ref()
            .and_then(|s| s.estimated_start_time.as_ref())
            .expect("eta"),
    );
    assert!(
        eta >= submitted + i64::from(want) && eta < submitted + 120,
        "b submitted at {submitted}, expected to start at {eta}, boot observed {want} s"
    );
}
