//! Duration estimates, cost-aware scale-out and estimated start times under the
//! controller, with the example `manifests/examples/cost-aware.yaml`: a job of a queue with
//! `maxWaitSeconds` waits for running work instead of an instance, and its status says
//! where it stands in its queue and when it will start.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use crate::support;

use std::collections::HashMap;
use std::time::Duration;

use asg_batch::api::{BatchJob, JobPhase};
use support::controller::{start, test_config};

fn example() -> String {
    std::fs::read_to_string(support::repo_root().join("manifests/examples/cost-aware.yaml"))
        .expect("example")
}

fn is(p: JobPhase) -> impl Fn(&BatchJob) -> bool {
    move |j| j.status.as_ref().and_then(|s| s.phase) == Some(p)
}

fn secs(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> i64 {
    t.0.as_second()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_job_knows_its_position_and_start_and_waits_for_running_work() {
    let mut h = start(
        &example(),
        test_config(Duration::from_secs(600)),
        HashMap::new(),
    )
    .await;
    h.register_node("local-qc-0", "qc", "1", "2Gi").await;

    // The assembly (600 s expected) takes the one cpu; the agent starts it.
    h.wait_job("qc-assembly", "Starting", is(JobPhase::Starting))
        .await;
    h.agent_started("qc-assembly", 1).await;
    let a = h
        .wait_job("qc-assembly", "Running", is(JobPhase::Running))
        .await;
    let a_start = secs(
        a.status
            .as_ref()
            .and_then(|s| s.started_at.as_ref())
            .unwrap(),
    );

    // The sample waits behind it: first in its queue, expected to start when the
    // assembly's 600 s are up, planned with its own 60 s, and no instance is bought for
    // it (its queue may wait fifteen minutes).
    let s = h
        .wait_job("qc-sample", "a queue position and estimated start", |j| {
            j.status
                .as_ref()
                .is_some_and(|s| s.queue_position == Some(1) && s.estimated_start_time.is_some())
        })
        .await;
    let st = s.status.unwrap();
    assert_eq!(st.phase, Some(JobPhase::Runnable));
    let eta = secs(st.estimated_start_time.as_ref().unwrap());
    assert!(
        (eta - (a_start + 600)).abs() <= 5,
        "estimated start {eta}, assembly started at {a_start}"
    );
    let d = st.estimated_duration.unwrap();
    assert_eq!((d.seconds, d.source.as_str()), (60, "Expected"));
    assert!(
        st.message
            .as_deref()
            .is_some_and(|m| m.starts_with("waiting for running jobs to finish in ce/qc")),
        "{:?}",
        st.message
    );
    let reason = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Scheduled")
        .map(|c| c.reason.clone());
    assert_eq!(reason.as_deref(), Some("WaitingForRunningJobs"));

    // The assembly ends: the sample is bound, and its queue fields are gone.
    h.agent_exited("qc-assembly", 1, 0).await;
    let s = h
        .wait_job("qc-sample", "Starting", is(JobPhase::Starting))
        .await;
    let st = s.status.unwrap();
    assert_eq!(st.queue_position, None);
    assert_eq!(st.estimated_start_time, None);
    assert_eq!(st.node.as_deref(), Some("local-qc-0"));
}

/// The example's compute environment, queue and definition, without its jobs.
fn example_world() -> String {
    example()
        .split("\n---\n")
        .filter(|doc| !doc.contains("kind: BatchJob"))
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// The agent's report of attempt 1 of `job`: started at `started`, and stopped at
/// `stopped` with exit code 0 when given (Unix seconds).
async fn report(h: &support::controller::Harness, job: &str, started: i64, stopped: Option<i64>) {
    use kube::api::{Patch, PatchParams};
    let at = |s: i64| jiff::Timestamp::from_second(s).unwrap().to_string();
    let mut attempt = serde_json::json!({"attempt": 1, "startedAt": at(started)});
    if let Some(s) = stopped {
        attempt["stoppedAt"] = at(s).into();
        attempt["exitCode"] = 0.into();
        attempt["reason"] = "Completed".into();
    }
    let body = serde_json::json!({
        "apiVersion": "asgbatch.io/v1alpha1",
        "kind": "BatchJob",
        "status": {"attempts": [attempt]},
    });
    h.jobs()
        .patch_status(
            job,
            &PatchParams::apply(&asg_batch::api::protocol::attempt_manager(1)),
            &Patch::Apply(&body),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_definitions_duration_history_outlives_its_jobs() {
    use asg_batch::api::JobDefinition;
    use kube::Api;

    let mut h = start(
        &example_world(),
        test_config(Duration::from_secs(600)),
        HashMap::new(),
    )
    .await;
    h.register_node("local-qc-0", "qc", "1", "2Gi").await;
    let job = |name: &str, extra: &str| {
        format!(
            "apiVersion: asgbatch.io/v1alpha1\nkind: BatchJob\nmetadata:\n  name: {name}\nspec:\n  queue: qc\n  definitionRef:\n    name: qc-check\n{extra}"
        )
    };

    // A job of the definition runs 42 s and succeeds; retention deletes it at once.
    support::controller::apply_yaml(&h.client, &job("check-1", "  ttlSecondsAfterFinished: 0\n"))
        .await;
    h.wait_job("check-1", "Starting", is(JobPhase::Starting))
        .await;
    let stopped = jiff::Timestamp::now().as_second();
    report(&h, "check-1", stopped - 42, None).await;
    h.wait_job("check-1", "Running", is(JobPhase::Running))
        .await;
    report(&h, "check-1", stopped - 42, Some(stopped)).await;

    // Its duration is kept in the definition's status.
    let defs: Api<JobDefinition> = Api::default_namespaced(h.client.clone());
    let d = support::eventually(
        "qc-check's status.durations",
        || async { defs.get("qc-check").await.ok() },
        |d| {
            d.as_ref()
                .and_then(|d| d.status.as_ref())
                .and_then(|s| s.durations.as_ref())
                .is_some()
        },
    )
    .await
    .unwrap();
    let kept = d.status.unwrap().durations.unwrap();
    assert_eq!(
        (kept.samples, kept.median_seconds, kept.p90_seconds),
        (vec![42], 42, 42)
    );
    assert_eq!(kept.observed_at.map(|t| t.0.as_second()), Some(stopped));
    let jobs = h.jobs();
    support::eventually(
        "check-1 deleted by retention",
        || async { jobs.get_opt("check-1").await.unwrap() },
        Option::is_none,
    )
    .await;

    // With the job gone, a new job of the definition waiting behind a running one is
    // planned with the kept median.
    support::controller::apply_yaml(
        &h.client,
        &job("blocker", "  expectedDurationSeconds: 600\n"),
    )
    .await;
    h.wait_job("blocker", "Starting", is(JobPhase::Starting))
        .await;
    h.agent_started("blocker", 1).await;
    h.wait_job("blocker", "Running", is(JobPhase::Running))
        .await;
    support::controller::apply_yaml(&h.client, &job("check-2", "")).await;
    let w = h
        .wait_job("check-2", "an estimated duration", |j| {
            j.status
                .as_ref()
                .is_some_and(|s| s.estimated_duration.is_some())
        })
        .await;
    let e = w.status.unwrap().estimated_duration.unwrap();
    assert_eq!((e.seconds, e.source.as_str()), (42, "History"));
}
