//! `spec.cancel` and the queues' `jobStateTimeLimitActions` over whole passes.
use super::*;
use crate::api::batch_job::CancelRequest;
use crate::api::job_queue::{JobStateTimeLimitAction, StuckAction, StuckReason, StuckState};

fn cancelled(mut j: BatchJob, message: &str) -> BatchJob {
    j.spec.cancel = Some(CancelRequest {
        message: Some(message.into()),
    });
    j
}

/// Sets `spec.cancel` on job `name` of `o`, as `asg-batch cancel` does.
fn cancel(o: &mut Observed, name: &str, message: &str) {
    o.jobs = o
        .jobs
        .iter()
        .map(|j| {
            if j.metadata.name.as_deref() == Some(name) {
                Arc::new(cancelled((**j).clone(), message))
            } else {
                j.clone()
            }
        })
        .collect();
}

fn job_status(o: &Observed, name: &str) -> BatchJobStatus {
    o.jobs
        .iter()
        .find(|j| j.metadata.name.as_deref() == Some(name))
        .and_then(|j| j.status.clone())
        .unwrap_or_default()
}

fn killed(a: &mut AttemptStatus) {
    a.stopped_at = Some(time(NOW - 1));
    a.exit_code = Some(137);
    a.reason = Some(AttemptReason::Cancelled);
    a.status_reason = Some("Job attempt terminated: the job was cancelled (spec.cancel)".into());
}

#[test]
fn a_job_cancelled_before_it_is_bound_fails_and_is_never_bound() {
    let o = world(
        vec![cancelled(job("a", "1", "1Gi", 1), "wrong input")],
        vec![n1()],
    );
    let d = run(&o);
    assert!(d.plan.bindings.is_empty(), "{:?}", d.plan.bindings);
    let u = update(&d, "a");
    assert_eq!(u.label, None);
    let s = status(&d, "a");
    assert_eq!(s.phase, Some(JobPhase::Failed));
    assert_eq!(s.reason.as_deref(), Some("Cancelled"));
    assert_eq!(s.message.as_deref(), Some("wrong input"));
    assert_eq!(s.stopped_at, Some(time(NOW)));
    assert!(s.attempts.is_empty());
    assert!(d.events.iter().any(|e| e.reason == REASON_CANCELLED));
    let mut o = o;
    settle(&mut o);
}

#[test]
fn a_binding_not_started_is_withdrawn() {
    let mut o = world(vec![job("a", "1", "1Gi", 1)], vec![n1()]);
    step(&mut o);
    assert_eq!(job_status(&o, "a").phase, Some(JobPhase::Starting));
    cancel(&mut o, "a", "not needed");
    let d = run(&o);
    // One status write, guarded by the resourceVersion it was decided on: an agent that
    // reported startedAt meanwhile makes it conflict.
    assert_eq!(update(&d, "a").label, None);
    assert!(update(&d, "a").resource_version.is_some());
    let s = status(&d, "a");
    assert_eq!(
        (s.phase, s.node.as_deref(), s.attempt),
        (Some(JobPhase::Failed), None, None)
    );
    assert!(s.attempts.is_empty(), "a withdrawn binding is no attempt");
    assert_eq!(s.reason.as_deref(), Some("Cancelled"));
    assert_eq!(s.message.as_deref(), Some("not needed"));
    assert!(d.plan.bindings.is_empty());
    apply(&mut o, &d);
    settle(&mut o);
}

#[test]
fn a_binding_on_a_lost_node_is_not_withdrawn_before_the_fence() {
    let mut o = world(vec![job("a", "1", "1Gi", 1)], vec![n1()]);
    step(&mut o);
    cancel(&mut o, "a", "stop");
    // n1 silent past the lost-node timeout: it may still start the attempt.
    let later = NOW + DEFAULT_LOST_NODE_TIMEOUT + 1;
    let mut lost = o.clone();
    lost.heartbeats_seen.insert("n1".into(), NOW);
    let d = decide(&lost, &DecideConfig::default(), later);
    let s = status(&d, "a");
    assert_eq!(s.phase, Some(JobPhase::Starting), "{s:?}");
    assert_eq!(s.node.as_deref(), Some("n1"));
}

#[test]
fn a_running_job_is_terminated_by_its_agent_and_not_retried() {
    let mut o = world(vec![retrying(job("a", "1", "1Gi", 1), 3, None)], vec![n1()]);
    step(&mut o);
    agent(&mut o, "a", started);
    settle(&mut o);
    assert_eq!(job_status(&o, "a").phase, Some(JobPhase::Running));
    cancel(&mut o, "a", "superseded");
    let d = run(&o);
    let s = status(&d, "a");
    assert_eq!(s.phase, Some(JobPhase::Running), "the agent stops it");
    assert_eq!(s.node.as_deref(), Some("n1"));
    assert_eq!(
        s.message.as_deref(),
        Some("terminating attempt 1 on node n1: superseded")
    );
    assert!(update(&d, "a").label.is_none());
    assert!(d.events.iter().any(|e| e.reason == "TerminatingJob"));
    assert!(d.cancel_children.is_empty(), "its own spec says so already");
    apply(&mut o, &d);
    settle(&mut o);
    agent(&mut o, "a", killed);
    let d = run(&o);
    let s = status(&d, "a");
    assert_eq!(s.phase, Some(JobPhase::Failed));
    assert_eq!(s.reason.as_deref(), Some("Terminated"));
    assert_eq!(s.message.as_deref(), Some("superseded"));
    assert_eq!(s.attempt, Some(1));
    assert_eq!(s.stopped_at, Some(time(NOW)));
    assert_eq!(
        (update(&d, "a").label.as_ref(), s.node.as_deref()),
        (None, None)
    );
    assert!(
        !d.events
            .iter()
            .any(|e| e.reason == reasons::RETRYING || e.reason == reasons::FAILED),
        "{:?}",
        d.events
    );
    assert!(d.events.iter().any(|e| e.reason == REASON_TERMINATED));
    apply(&mut o, &d);
    settle(&mut o);
    assert_eq!(job_status(&o, "a").attempt, Some(1), "never retried");
}

#[test]
fn an_attempt_that_succeeded_before_it_was_stopped_leaves_the_job_succeeded() {
    let mut o = world(vec![job("a", "1", "1Gi", 1)], vec![n1()]);
    step(&mut o);
    agent(&mut o, "a", started);
    settle(&mut o);
    cancel(&mut o, "a", "too late");
    settle(&mut o);
    agent(&mut o, "a", exited(0));
    settle(&mut o);
    let s = job_status(&o, "a");
    assert_eq!(s.phase, Some(JobPhase::Succeeded));
    assert_eq!(s.reason.as_deref(), Some("Completed"));
}

#[test]
fn a_finished_job_keeps_its_record_when_cancelled() {
    let mut o = world(vec![job("a", "1", "1Gi", 1)], vec![n1()]);
    step(&mut o);
    agent(&mut o, "a", exited(2));
    settle(&mut o);
    let before = job_status(&o, "a");
    assert_eq!(before.phase, Some(JobPhase::Failed));
    cancel(&mut o, "a", "after the fact");
    assert!(run(&o).jobs.is_empty());
}

#[test]
fn dependents_of_a_cancelled_job_fail() {
    let mut o = world(
        vec![
            cancelled(job("a", "1", "1Gi", 1), "no"),
            depends_on(job("b", "1", "1Gi", 2), "a"),
        ],
        vec![n1()],
    );
    settle(&mut o);
    let b = job_status(&o, "b");
    assert_eq!(b.phase, Some(JobPhase::Failed));
    assert_eq!(b.reason.as_deref(), Some(DEPENDENCY_FAILED));
}

#[test]
fn cancelling_an_array_parent_cancels_waiting_children_and_marks_running_ones() {
    // Two children of 3 cpu on a 4-cpu node: one runs, one waits.
    let mut o = world(vec![array(job("arr", "3", "1Gi", 1), 2)], vec![n1()]);
    step(&mut o);
    step(&mut o);
    agent(&mut o, "arr-0", started);
    settle(&mut o);
    assert_eq!(job_status(&o, "arr-0").phase, Some(JobPhase::Running));
    assert_eq!(job_status(&o, "arr-1").phase, Some(JobPhase::Runnable));
    cancel(&mut o, "arr", "bad settings");
    let d = run(&o);
    let p = status(&d, "arr");
    assert_eq!(p.phase, Some(JobPhase::Failed));
    assert_eq!(p.reason.as_deref(), Some("Cancelled"));
    assert_eq!(p.message.as_deref(), Some("bad settings"));
    let w = status(&d, "arr-1");
    assert_eq!(w.phase, Some(JobPhase::Failed));
    assert_eq!(w.reason.as_deref(), Some("Cancelled"));
    assert_eq!(
        w.message.as_deref(),
        Some("array parent default/arr cancelled: bad settings")
    );
    assert_eq!(
        d.cancel_children,
        [CancelChild {
            namespace: "default".into(),
            name: "arr-0".into(),
            cancel: CancelRequest {
                message: Some("array parent default/arr cancelled: bad settings".into())
            },
        }]
    );
    assert!(d.children.is_empty());
    apply(&mut o, &d);
    settle(&mut o);
    agent(&mut o, "arr-0", killed);
    settle(&mut o);
    let c = job_status(&o, "arr-0");
    assert_eq!(c.phase, Some(JobPhase::Failed));
    assert_eq!(c.reason.as_deref(), Some("Terminated"));
    let p = job_status(&o, "arr");
    assert_eq!(p.reason.as_deref(), Some("Cancelled"), "the record stays");
    assert_eq!(p.message.as_deref(), Some("bad settings"));
    assert_eq!(p.array_status.as_ref().map(|a| a.failed), Some(2));
}

fn stuck_queue(reason: StuckReason, max: u32) -> JobQueue {
    let mut q = queue("q", &["ce"]);
    q.spec.job_state_time_limit_actions = vec![JobStateTimeLimitAction {
        reason,
        state: StuckState::Runnable,
        max_time_seconds: max,
        action: StuckAction::Cancel,
    }];
    q
}

#[test]
fn a_job_runnable_for_a_matching_reason_past_the_limit_is_cancelled() {
    let mut o = world(vec![job("huge", "1", "64Gi", 1)], vec![n1()]);
    o.queues = vec![Arc::new(stuck_queue(
        StuckReason::JobResourceRequirement,
        600,
    ))];
    step(&mut o);
    let s = job_status(&o, "huge");
    assert_eq!(s.phase, Some(JobPhase::Runnable));
    assert_eq!(s.runnable_since, Some(time(NOW)));
    // Not yet: 599 s.
    let d = decide(&o, &DecideConfig::default(), NOW + 599);
    assert!(
        d.jobs.iter().all(|u| u
            .status
            .as_ref()
            .is_none_or(|s| s.phase == Some(JobPhase::Runnable))),
        "{:?}",
        d.jobs
    );
    let d = decide(&o, &DecideConfig::default(), NOW + 600);
    let s = status(&d, "huge");
    assert_eq!(s.phase, Some(JobPhase::Failed));
    assert_eq!(s.reason.as_deref(), Some("Cancelled"));
    assert_eq!(s.runnable_since, None);
    assert_eq!(s.stopped_at, Some(time(NOW + 600)));
    assert_eq!(
        s.message.as_deref(),
        Some(
            "Canceled by JobStateTimeLimit action due to reason: MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT (jq/q jobStateTimeLimitActions[0]: Runnable for 600s, TooLarge: needs 64Gi memory, largest instance of ce/ce has 16Gi)"
        )
    );
}

#[test]
fn a_time_limit_for_another_reason_leaves_the_job_alone() {
    let mut o = world(vec![job("huge", "1", "64Gi", 1)], vec![n1()]);
    o.queues = vec![Arc::new(stuck_queue(StuckReason::AtMaxInstances, 1))];
    step(&mut o);
    let d = decide(&o, &DecideConfig::default(), NOW + 100_000);
    assert!(d.jobs.is_empty(), "{:?}", d.jobs);
}

#[test]
fn runnable_since_counts_from_the_last_time_the_job_became_runnable() {
    let mut o = world(vec![job("a", "1", "1Gi", 1)], vec![]);
    step(&mut o);
    assert_eq!(job_status(&o, "a").runnable_since, Some(time(NOW)));
    // Stays Runnable: the time stays.
    let d = decide(&o, &DecideConfig::default(), NOW + 50);
    assert!(
        d.jobs.iter().all(|u| u
            .status
            .as_ref()
            .is_none_or(|s| s.runnable_since == Some(time(NOW)))),
        "{:?}",
        d.jobs
    );
    // Bound: cleared.
    o.nodes = vec![Arc::new(n1())];
    let d = run(&o);
    assert_eq!(status(&d, "a").runnable_since, None);
}
