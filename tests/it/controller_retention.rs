//! Retention (`ttlSecondsAfterFinished` on a BatchJob, `jobTtlSecondsAfterFinished` on its
//! JobQueue): the example `manifests/examples/retention.yaml` under the controller, the test
//! playing the agent. A finished job is deleted once its TTL has passed, never before; an
//! array parent goes with its children; a queue without a default keeps its jobs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use crate::support;

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use asg_batch::api::{BatchJob, JobPhase, JobQueue};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use support::controller::{Harness, apply_yaml, start, test_config};

fn examples() -> String {
    let dir = support::repo_root().join("manifests/examples");
    let mut out = String::new();
    for f in [
        "compute-environment-local.yaml",
        "job-queue.yaml",
        "retention.yaml",
    ] {
        out.push_str(&std::fs::read_to_string(dir.join(f)).expect("example"));
        out.push_str("\n---\n");
    }
    out
}

fn unix_now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

/// Plays the agent: attempt 1 of `job` starts and succeeds once it is bound.
async fn run_to_success(h: &Harness, job: &str) -> BatchJob {
    h.wait_job(job, "Starting", |j| {
        j.status.as_ref().and_then(|s| s.phase) == Some(JobPhase::Starting)
    })
    .await;
    h.agent_started(job, 1).await;
    h.agent_exited(job, 1, 0).await;
    h.wait_job(job, "Succeeded", |j| {
        j.status.as_ref().and_then(|s| s.phase) == Some(JobPhase::Succeeded)
    })
    .await
}

/// When the job finished, as its status says (Unix seconds).
fn stopped_at(j: &BatchJob) -> i64 {
    j.status
        .as_ref()
        .and_then(|s| s.stopped_at.as_ref())
        .expect("stoppedAt of a finished job")
        .0
        .as_second()
}

/// Polls until none of `names` exists; returns when that was first seen (Unix seconds).
async fn wait_deleted(h: &Harness, names: &[&str]) -> i64 {
    let api = h.jobs();
    support::eventually(
        &format!("{names:?} deleted"),
        || async {
            let mut left = Vec::new();
            for n in names {
                if api.get_opt(n).await.expect("get job").is_some() {
                    left.push((*n).to_owned());
                }
            }
            left
        },
        Vec::is_empty,
    )
    .await;
    unix_now()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_are_deleted_after_their_ttl_and_an_array_with_its_children() {
    let mut h = start(
        &examples(),
        test_config(Duration::from_secs(600)),
        HashMap::new(),
    )
    .await;
    h.register_node("local-local-0", "local", "2", "4Gi").await;
    // The queue's default, shortened for the test, for a job that sets none; and a job
    // of a queue without a default, which is kept.
    let queues: Api<JobQueue> = Api::all(h.client.clone());
    queues
        .patch(
            "nightly-reports",
            &PatchParams::apply("test-retention").force(),
            &Patch::Apply(json!({
                "apiVersion": "asgbatch.io/v1alpha1",
                "kind": "JobQueue",
                "metadata": {"name": "nightly-reports"},
                "spec": {"jobTtlSecondsAfterFinished": 3},
            })),
        )
        .await
        .expect("shorten the queue's default");
    let job = |name: &str, queue: &str| {
        format!(
            "apiVersion: asgbatch.io/v1alpha1\nkind: BatchJob\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  queue: {queue}\n  process:\n    command: [\"true\"]\n  resources:\n    cpu: 100m\n    memory: 16Mi\n"
        )
    };
    apply_yaml(&h.client, &job("queue-default", "nightly-reports")).await;
    apply_yaml(&h.client, &job("kept", "adhoc")).await;

    let kept = run_to_success(&h, "kept").await;
    let report = run_to_success(&h, "daily-digest").await;
    let plain = run_to_success(&h, "queue-default").await;
    let mut children_stopped = 0;
    for i in 0..3 {
        let c = run_to_success(&h, &format!("report-tiles-{i}")).await;
        children_stopped = children_stopped.max(stopped_at(&c));
    }
    let tiles = h
        .wait_job("report-tiles", "Succeeded", |j| {
            j.status.as_ref().and_then(|s| s.phase) == Some(JobPhase::Succeeded)
        })
        .await;
    // The children finished before the parent and carry its TTL: they stay while it does.
    assert!(stopped_at(&tiles) >= children_stopped);

    let gone = wait_deleted(&h, &["queue-default"]).await;
    assert!(
        gone >= stopped_at(&plain) + 3,
        "deleted at {gone}, before the queue's 3 s after {}",
        stopped_at(&plain)
    );
    let gone = wait_deleted(&h, &["daily-digest"]).await;
    assert!(
        gone >= stopped_at(&report) + 5,
        "deleted at {gone}, before its 5 s after {}",
        stopped_at(&report)
    );
    let gone = wait_deleted(
        &h,
        &[
            "report-tiles",
            "report-tiles-0",
            "report-tiles-1",
            "report-tiles-2",
        ],
    )
    .await;
    assert!(gone >= stopped_at(&tiles) + 5);
    // Finished before the others were deleted, in a queue without a default: kept.
    let still = h.jobs().get_opt("kept").await.expect("get kept");
    assert_eq!(
        still.map(|j| j.metadata.uid),
        Some(kept.metadata.uid),
        "a job without a TTL is kept"
    );
}
