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
