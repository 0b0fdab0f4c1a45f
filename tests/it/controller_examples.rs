//! The example manifests (`manifests/examples/`) under the controller, with one local
//! node registered: what `asg-batch dev` users see first.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use crate::support;

use std::collections::HashMap;
use std::time::Duration;

use asg_batch::api::{ComputeEnvironment, JobPhase};
use kube::api::Api;
use support::controller::{apply_yaml, start, test_config};

fn examples() -> String {
    let dir = support::repo_root().join("manifests/examples");
    let mut out = String::new();
    for f in [
        "compute-environment-local.yaml",
        "compute-environment-aws.yaml",
        "job-queue.yaml",
        "job-definition.yaml",
    ] {
        out.push_str(&std::fs::read_to_string(dir.join(f)).expect("example"));
        out.push_str("\n---\n");
    }
    out
}

fn is(p: JobPhase) -> impl Fn(&asg_batch::api::BatchJob) -> bool {
    move |j| j.status.as_ref().and_then(|s| s.phase) == Some(p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_examples_schedule_on_a_local_node() {
    let mut h = start(
        &examples(),
        test_config(Duration::from_secs(600)),
        HashMap::new(),
    )
    .await;
    h.register_node("local-local-0", "local", "2", "4Gi").await;
    let dir = support::repo_root().join("manifests/examples");
    for f in ["hello-local.yaml", "nightly-batch.yaml"] {
        apply_yaml(
            &h.client,
            &std::fs::read_to_string(dir.join(f)).expect("example"),
        )
        .await;
    }

    h.wait_job("hello", "Starting", is(JobPhase::Starting))
        .await;
    // nightly-r5 has no fleet here, so its shape is unknown: extract-orders falls back to
    // the queue's second environment, local.
    let e = h
        .wait_job("extract-orders", "Starting", is(JobPhase::Starting))
        .await;
    assert_eq!(
        e.status.and_then(|s| s.node).as_deref(),
        Some("local-local-0")
    );
    let t = h
        .wait_job("transform-orders", "24 children pending", |j| {
            j.status
                .as_ref()
                .and_then(|s| s.array_status.as_ref())
                .is_some_and(|a| a.size == 24 && a.pending == 24)
        })
        .await;
    assert_eq!(t.status.and_then(|s| s.phase), Some(JobPhase::Pending));
    let child = h
        .wait_job(
            "transform-orders-7",
            "waiting on extract",
            is(JobPhase::Pending),
        )
        .await;
    assert_eq!(
        child.status.and_then(|s| s.message).as_deref(),
        Some("waiting on dependency default/extract-orders")
    );
    let report = h
        .wait_job("daily-report", "Pending", is(JobPhase::Pending))
        .await;
    assert_eq!(
        report.status.and_then(|s| s.message).as_deref(),
        Some("waiting on dependency default/load-warehouse")
    );

    let ces: Api<ComputeEnvironment> = Api::all(h.client.clone());
    let ready = support::eventually_within(
        "nightly-r5's Ready condition",
        Duration::from_secs(30),
        || {
            let ces = ces.clone();
            async move {
                let ce = ces.get("nightly-r5").await.expect("nightly-r5");
                ce.status
                    .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready"))
            }
        },
        Option::is_some,
    )
    .await
    .expect("ready");
    assert_eq!(ready.status, "False");
    assert!(
        ready.message.starts_with("instance shape unknown"),
        "{}",
        ready.message
    );
}
