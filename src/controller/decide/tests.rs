//! Unit tests of a whole pass.
use super::*;
use crate::api::batch_job::{ArrayStatus, AttemptStatus, JobPhase};
use crate::api::batch_node::NodeJob;
use crate::api::common::RetryAction;
use crate::api::common::{EvaluateOnExit, RetryBackoff, RetryStrategy};
use crate::api::protocol::AttemptReason;
use crate::cloud::{FleetInstance, Lifecycle};
use crate::controller::decide::snapshot::fixtures::*;
use crate::controller::time::time;
use crate::controller::{
    CONDITION_DISRUPTED, CONDITION_READY, CONDITION_SCALING, CONDITION_VALID, LABEL_ARRAY_PARENT,
};
use crate::scheduler::DEPENDENCY_FAILED;

mod cancel;
mod spot;

const NOW: Seconds = 10_000;

/// A world with one local CE `ce` (4 cpu, 16Gi, max 10), queue `q`, and the given
/// jobs and nodes.
fn world(jobs: Vec<BatchJob>, nodes: Vec<BatchNode>) -> Observed {
    Observed {
        compute_environments: vec![Arc::new(ce("ce", "4", "16Gi", 10))],
        queues: vec![Arc::new(queue("q", &["ce"]))],
        jobs: jobs.into_iter().map(Arc::new).collect(),
        nodes: nodes.into_iter().map(Arc::new).collect(),
        ..Observed::default()
    }
}

fn n1() -> BatchNode {
    node("n1", "ce", "4", "16Gi", NOW)
}

fn run(o: &Observed) -> Decisions {
    decide(o, &DecideConfig::default(), NOW)
}

fn update<'a>(d: &'a Decisions, name: &str) -> &'a JobUpdate {
    d.jobs
        .iter()
        .find(|u| u.name == name)
        .unwrap_or_else(|| panic!("no update for {name}: {:?}", d.jobs))
}

fn status<'a>(d: &'a Decisions, name: &str) -> &'a BatchJobStatus {
    update(d, name).status.as_ref().expect("a status write")
}

/// Applies the decisions as the API server would (status fields the controller
/// owns replaced, the agent's attempt fields kept; labels; children created).
fn apply(o: &mut Observed, d: &Decisions) {
    let mut jobs: Vec<BatchJob> = o.jobs.iter().map(|j| (**j).clone()).collect();
    for c in &d.cancel_children {
        if let Some(j) = jobs
            .iter_mut()
            .find(|j| j.metadata.name.as_deref() == Some(&c.name))
        {
            j.spec.cancel.get_or_insert(c.cancel.clone());
        }
    }
    for u in &d.jobs {
        let Some(j) = jobs
            .iter_mut()
            .find(|j| j.metadata.name.as_deref() == Some(&u.name))
        else {
            continue;
        };
        match &u.label {
            Some(LabelChange::Set(n)) => {
                j.metadata
                    .labels
                    .get_or_insert_with(Default::default)
                    .insert(LABEL_NODE.into(), n.clone());
            }
            Some(LabelChange::Remove) => {
                if let Some(l) = j.metadata.labels.as_mut() {
                    l.remove(LABEL_NODE);
                }
            }
            None => {}
        }
        if let Some(s) = &u.status {
            let old = j.status.clone().unwrap_or_default();
            let mut new = s.clone();
            for a in &mut new.attempts {
                if let Some(prev) = old.attempts.iter().find(|p| p.attempt == a.attempt) {
                    a.started_at = a.started_at.clone().or(prev.started_at.clone());
                    a.stopped_at = a.stopped_at.clone().or(prev.stopped_at.clone());
                    a.exit_code = a.exit_code.or(prev.exit_code);
                    a.reason = a.reason.clone().or(prev.reason.clone());
                    a.status_reason = a.status_reason.clone().or(prev.status_reason.clone());
                    a.log_tail = a.log_tail.clone().or(prev.log_tail.clone());
                }
            }
            j.status = Some(new);
        }
    }
    for c in &d.children {
        let mut j = c.job.clone();
        j.metadata.creation_timestamp = Some(time(NOW));
        j.metadata.generation = Some(1);
        // As the API server gives it.
        j.metadata.uid = j.metadata.name.as_ref().map(|n| format!("uid-{n}"));
        jobs.push(j);
    }
    jobs.retain(|j| {
        !d.delete_jobs
            .iter()
            .any(|x| j.metadata.name.as_deref() == Some(&x.name) && j.metadata.uid == x.uid)
    });
    o.jobs = jobs.into_iter().map(Arc::new).collect();
    let mut nodes: Vec<BatchNode> = o.nodes.iter().map(|n| (**n).clone()).collect();
    for u in &d.nodes {
        if let Some(n) = nodes
            .iter_mut()
            .find(|n| n.metadata.name.as_deref() == Some(&u.name))
        {
            let old = n.status.clone().unwrap_or_default();
            let mut s = u.status.clone();
            s.heartbeat_time = old.heartbeat_time;
            s.protected_from_scale_in = old.protected_from_scale_in;
            s.accepting_attempts = old.accepting_attempts;
            s.running_attempts = old.running_attempts;
            s.interruption = old.interruption;
            n.status = Some(s);
        }
    }
    o.nodes = nodes.into_iter().map(Arc::new).collect();
    // What the loop's PassMemory carries to the next pass.
    o.idle_seen = d.idle.clone();
    for n in &o.nodes {
        let name = n.metadata.name.clone().unwrap_or_default();
        if n.status.as_ref().and_then(|s| s.phase) == Some(ApiNodePhase::Draining) {
            o.draining_seen.entry(name).or_insert(NOW);
        } else {
            o.draining_seen.remove(&name);
        }
    }
    let mut ces: Vec<ComputeEnvironment> = o
        .compute_environments
        .iter()
        .map(|c| (**c).clone())
        .collect();
    for u in &d.compute_environments {
        if let Some(c) = ces
            .iter_mut()
            .find(|c| c.metadata.name.as_deref() == Some(&u.name))
        {
            c.status = Some(u.status.clone());
        }
    }
    o.compute_environments = ces.into_iter().map(Arc::new).collect();
    let mut queues: Vec<JobQueue> = o.queues.iter().map(|q| (**q).clone()).collect();
    for u in &d.queues {
        if let Some(q) = queues
            .iter_mut()
            .find(|q| q.metadata.name.as_deref() == Some(&u.name))
        {
            q.status = Some(u.status.clone());
        }
    }
    o.queues = queues.into_iter().map(Arc::new).collect();
}

/// Applies passes until one changes nothing (at most 5); panics otherwise.
fn settle(o: &mut Observed) {
    for _ in 0..5 {
        let d = run(o);
        if d.jobs.is_empty()
            && d.nodes.is_empty()
            && d.compute_environments.is_empty()
            && d.queues.is_empty()
            && d.children.is_empty()
            && d.cancel_children.is_empty()
            && d.delete_jobs.is_empty()
            && d.fleet.is_empty()
        {
            assert!(d.events.is_empty(), "events without writes: {:?}", d.events);
            return;
        }
        apply(o, &d);
    }
    panic!("no fixpoint after 5 passes: {:?}", run(o).jobs);
}

fn step(o: &mut Observed) {
    let d = run(o);
    apply(o, &d);
}

/// The agent's report on the current attempt of `name`.
fn agent(o: &mut Observed, name: &str, f: impl Fn(&mut AttemptStatus)) {
    let mut jobs: Vec<BatchJob> = o.jobs.iter().map(|j| (**j).clone()).collect();
    if let Some(j) = jobs
        .iter_mut()
        .find(|j| j.metadata.name.as_deref() == Some(name))
        && let Some(s) = j.status.as_mut()
    {
        let n = s.attempt.unwrap_or(0);
        if let Some(a) = s.attempts.iter_mut().find(|a| a.attempt == n) {
            f(a);
        }
    }
    o.jobs = jobs.into_iter().map(Arc::new).collect();
}

fn exited(code: i32) -> impl Fn(&mut AttemptStatus) {
    move |a| {
        a.started_at = a.started_at.clone().or(Some(time(NOW - 10)));
        a.stopped_at = Some(time(NOW - 1));
        a.exit_code = Some(code);
        a.reason = Some(if code == 0 {
            AttemptReason::Completed
        } else {
            AttemptReason::Error
        });
    }
}

/// What an agent reports at `now` in a property test's step: the attempt started, and
/// with `code` also ended with that exit code (an end is reported once).
fn reported_at(now: Seconds, code: Option<i32>) -> impl Fn(&mut AttemptStatus) {
    move |a| {
        a.started_at = a.started_at.clone().or(Some(time(now)));
        if let Some(code) = code {
            if a.stopped_at.is_none() {
                a.stopped_at = Some(time(now));
                a.exit_code = Some(code);
                a.reason = Some(if code == 0 {
                    AttemptReason::Completed
                } else {
                    AttemptReason::Error
                });
            }
        }
    }
}

fn started(a: &mut AttemptStatus) {
    a.started_at = Some(time(NOW - 5));
}

#[test]
fn every_stage_of_a_mixed_world_settles_without_further_writes() {
    let arr = array(job("arr", "1", "1Gi", 3), 2);
    let mut o = world(
        vec![
            job("a", "1", "1Gi", 1),
            depends_on(job("b", "1", "1Gi", 2), "a"),
            arr,
            job("huge", "1", "64Gi", 4),
            with_definition(job("orphan", "1", "1Gi", 5), "missing"),
        ],
        vec![n1()],
    );
    settle(&mut o);
    for j in ["a", "arr-0", "arr-1"] {
        agent(&mut o, j, started);
    }
    settle(&mut o);
    for j in ["a", "arr-0", "arr-1"] {
        agent(&mut o, j, exited(0));
    }
    settle(&mut o);
    agent(&mut o, "b", exited(2));
    settle(&mut o);
    let phases: Vec<(String, Option<JobPhase>)> = o
        .jobs
        .iter()
        .map(|j| {
            (
                j.metadata.name.clone().unwrap_or_default(),
                j.status.as_ref().and_then(|s| s.phase),
            )
        })
        .collect();
    for (name, want) in [
        ("a", JobPhase::Succeeded),
        ("b", JobPhase::Failed),
        ("arr", JobPhase::Succeeded),
        ("huge", JobPhase::Runnable),
        ("orphan", JobPhase::Submitted),
    ] {
        assert!(
            phases.contains(&(name.into(), Some(want))),
            "{name}: {phases:?}"
        );
    }
    let q = o.queues[0].status.clone().unwrap_or_default();
    assert_eq!((q.runnable_jobs, q.running_jobs), (Some(1), Some(0)));
    assert_eq!(q.conditions[0].type_, CONDITION_VALID);
    let n = o.nodes[0].status.clone().unwrap_or_default();
    assert_eq!((n.job_count, n.phase), (Some(0), Some(ApiNodePhase::Ready)));
}

#[test]
fn a_runnable_job_is_bound_by_one_status_write_and_its_node_allocated() {
    let o = world(vec![job("a", "1500m", "2Gi", 1)], vec![n1()]);
    let d = run(&o);
    let u = update(&d, "a");
    assert_eq!(u.label, None, "no label: agents watch status.node");
    assert_eq!(u.binds.as_deref(), Some("n1"));
    let s = status(&d, "a");
    assert_eq!(s.phase, Some(JobPhase::Starting));
    assert_eq!(s.node.as_deref(), Some("n1"));
    assert_eq!(s.attempt, Some(1));
    assert_eq!(
        s.attempts,
        [AttemptStatus {
            attempt: 1,
            node: Some("n1".into()),
            instance_id: Some("n1".into()),
            ..Default::default()
        }]
    );
    assert_eq!(s.observed_generation, Some(1));
    let c = &s.conditions[0];
    assert_eq!(
        (c.type_.as_str(), c.status.as_str(), c.reason.as_str()),
        ("Scheduled", "True", "Bound")
    );
    let n = &d.nodes[0].status;
    assert_eq!(n.allocated, Some(res("1500m", "2Gi")));
    assert_eq!(n.job_count, Some(1));
    assert_eq!(n.jobs[0].name, "a");
    assert_eq!(n.idle_since, None);
    assert!(d.events.iter().any(|e| e.reason == reasons::BOUND));
}

/// A job an older controller labelled `asgbatch.io/node` keeps the label while it is bound
/// (an old agent still watching the label keeps its attempt during an upgrade) and loses
/// it, guarded like every job write, when it leaves the node; the new controller never
/// labels.
#[test]
fn a_legacy_node_label_stays_while_bound_and_goes_when_the_attempt_ends() {
    let mut o = world(vec![job("a", "1", "1Gi", 1)], vec![n1()]);
    let d = run(&o);
    apply(&mut o, &d);
    for j in &mut o.jobs {
        Arc::make_mut(j)
            .metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(LABEL_NODE.into(), "n1".into());
    }
    assert!(
        run(&o).jobs.is_empty(),
        "kept while bound: {:?}",
        run(&o).jobs
    );
    agent(&mut o, "a", exited(0));
    let d = run(&o);
    let u = update(&d, "a");
    assert_eq!(u.label, Some(LabelChange::Remove));
    assert!(
        u.resource_version.is_some(),
        "guarded by the observed version"
    );
    assert_eq!(status(&d, "a").phase, Some(JobPhase::Succeeded));
    apply(&mut o, &d);
    assert!(run(&o).jobs.is_empty());
}

#[test]
fn the_whole_life_of_a_job_and_nothing_more_once_settled() {
    let mut o = world(vec![job("a", "1", "1Gi", 1)], vec![n1()]);
    let d = run(&o);
    apply(&mut o, &d);
    assert!(
        run(&o).jobs.is_empty(),
        "bound job is stable: {:?}",
        run(&o).jobs
    );
    agent(&mut o, "a", started);
    let d = run(&o);
    let s = status(&d, "a");
    assert_eq!(s.phase, Some(JobPhase::Running));
    assert_eq!(s.started_at, Some(time(NOW - 5)));
    assert!(update(&d, "a").label.is_none());
    assert_eq!(update(&d, "a").binds, None, "already bound there");
    apply(&mut o, &d);
    assert!(run(&o).jobs.is_empty());
    agent(&mut o, "a", exited(0));
    let d = run(&o);
    let u = update(&d, "a");
    assert_eq!(u.label, None, "one status write ends it");
    let s = status(&d, "a");
    assert_eq!(s.phase, Some(JobPhase::Succeeded));
    assert_eq!(s.node, None);
    assert_eq!(s.stopped_at, Some(time(NOW - 1)));
    assert_eq!(s.reason.as_deref(), Some("Completed"));
    assert_eq!(d.nodes[0].status.job_count, Some(0));
    assert_eq!(d.nodes[0].status.idle_since, Some(time(NOW)));
    apply(&mut o, &d);
    let again = run(&o);
    assert!(
        again.jobs.is_empty() && again.nodes.is_empty(),
        "{:?}",
        again.jobs
    );
}

fn retrying(j: BatchJob, attempts: u32, backoff: Option<u32>) -> BatchJob {
    let mut j = j;
    j.spec.template.retry_strategy = Some(RetryStrategy {
        attempts,
        evaluate_on_exit: vec![
            EvaluateOnExit {
                on_exit_code: Some("3".into()),
                on_reason: None,
                on_status_reason: None,
                action: RetryAction::Retry,
            },
            EvaluateOnExit {
                on_exit_code: Some("2*".into()),
                on_reason: None,
                on_status_reason: None,
                action: RetryAction::Exit,
            },
        ],
        backoff: backoff.map(|b| RetryBackoff {
            initial_delay_seconds: b,
            max_delay_seconds: 3600,
        }),
    });
    j
}

#[test]
fn a_retry_rule_runs_the_job_again_until_attempts_are_used() {
    let mut o = world(vec![retrying(job("r", "1", "1Gi", 1), 2, None)], vec![n1()]);
    let d = run(&o);
    apply(&mut o, &d);
    agent(&mut o, "r", exited(3));
    // The attempt ends, the job is retried and, without backoff, bound again at once.
    let d = run(&o);
    let s = status(&d, "r");
    assert_eq!(s.phase, Some(JobPhase::Starting));
    assert_eq!(s.attempt, Some(2));
    assert_eq!(s.attempts.len(), 2);
    assert_eq!(update(&d, "r").label, None);
    assert_eq!(update(&d, "r").binds, None, "still bound to n1");
    assert!(d.events.iter().any(|e| e.reason == reasons::RETRYING));
    apply(&mut o, &d);
    agent(&mut o, "r", exited(3));
    let d = run(&o);
    let s = status(&d, "r");
    assert_eq!(s.phase, Some(JobPhase::Failed));
    assert_eq!(s.reason.as_deref(), Some("Error"));
    assert_eq!(
        s.message.as_deref(),
        Some("attempt 2 failed on node n1: exit code 3 (Error); all 2 attempts used")
    );
    assert_eq!(update(&d, "r").label, None);
    assert_eq!(status(&d, "r").node, None, "out of n1's watch");
}

#[test]
fn backoff_leaves_the_job_runnable_with_not_before_and_no_label() {
    let mut o = world(
        vec![retrying(job("r", "1", "1Gi", 1), 3, Some(60))],
        vec![n1()],
    );
    let d = run(&o);
    apply(&mut o, &d);
    agent(&mut o, "r", exited(3));
    let d = run(&o);
    let s = status(&d, "r");
    assert_eq!(s.phase, Some(JobPhase::Runnable));
    assert_eq!(s.not_before, Some(time(NOW + 60)));
    assert_eq!(s.node, None);
    assert!(
        s.message
            .as_deref()
            .unwrap_or_default()
            .starts_with("retry backoff: runnable again at")
    );
    assert_eq!(update(&d, "r").label, None);
    assert_eq!(status(&d, "r").node, None, "out of the node's watch");
    apply(&mut o, &d);
    assert!(run(&o).jobs.is_empty(), "stable while backing off");
    let later = decide(&o, &DecideConfig::default(), NOW + 60);
    assert_eq!(
        later.jobs[0].status.as_ref().and_then(|s| s.attempt),
        Some(2)
    );
}

#[test]
fn an_exit_rule_fails_at_once() {
    let mut o = world(vec![retrying(job("r", "1", "1Gi", 1), 5, None)], vec![n1()]);
    let d = run(&o);
    apply(&mut o, &d);
    agent(&mut o, "r", exited(21));
    let s = status(&run(&o), "r").clone();
    assert_eq!(s.phase, Some(JobPhase::Failed));
    assert!(
        s.message
            .unwrap_or_default()
            .ends_with("evaluateOnExit[1] says EXIT")
    );
}

/// `o` at `now`: every node but `silent` heartbeats now (seen by the controller now).
fn at(o: &Observed, now: Seconds, silent: &[&str]) -> Decisions {
    let mut o = o.clone();
    for n in &o.nodes {
        let name = n.metadata.name.clone().unwrap_or_default();
        if !silent.contains(&name.as_str()) {
            o.heartbeats_seen.insert(name, now);
        }
    }
    decide(&o, &DecideConfig::default(), now)
}

/// Removes node `name` from `o` (its BatchNode was deleted).
fn delete_node(o: &mut Observed, name: &str) {
    o.nodes.retain(|n| n.metadata.name.as_deref() != Some(name));
}

#[test]
fn a_lost_node_without_a_fleet_keeps_its_attempts_until_its_batchnode_is_deleted() {
    let mut o = world(vec![retrying(job("r", "1", "1Gi", 1), 2, None)], vec![n1()]);
    o.heartbeats_seen.insert("n1".into(), NOW);
    step(&mut o);
    agent(&mut o, "r", started);
    step(&mut o);
    // n1 stops heartbeating; a fresh node n2 registers.
    let mut n2 = node("n2", "ce", "4", "16Gi", NOW + 400);
    n2.metadata.creation_timestamp = Some(time(NOW + 400));
    o.nodes.push(Arc::new(n2));
    let later = NOW + DEFAULT_LOST_NODE_TIMEOUT + 100;
    let d = at(&o, later, &["n1"]);
    let lost = d.nodes.iter().find(|n| n.name == "n1").expect("n1 update");
    assert_eq!(lost.status.phase, Some(ApiNodePhase::Lost));
    assert!(
        d.events
            .iter()
            .any(|e| e.reason == reasons::NODE_LOST && e.warning)
    );
    // Nothing confirms that n1 stopped running the attempt: it is not retried.
    let s = status(&d, "r");
    assert_eq!(s.attempts[0].stopped_at, None);
    assert_eq!(
        (s.phase, s.node.as_deref()),
        (Some(JobPhase::Running), Some("n1"))
    );
    assert!(
        s.message
            .as_deref()
            .unwrap_or_default()
            .contains("retried once the BatchNode is deleted"),
        "{:?}",
        s.message
    );
    assert!(d.fleet.is_empty());
    // The operator deletes the BatchNode: the attempt ends NodeLost and is retried on n2.
    delete_node(&mut o, "n1");
    let d = at(&o, later, &[]);
    let s = status(&d, "r");
    assert_eq!(s.attempts[0].reason, Some(AttemptReason::NodeLost));
    assert_eq!(
        (s.phase, s.node.as_deref(), s.attempt),
        (Some(JobPhase::Starting), Some("n2"), Some(2))
    );
    assert_eq!(update(&d, "r").binds.as_deref(), Some("n2"));
}

#[test]
fn a_lost_nodes_instance_is_fenced_before_its_attempts_are_retried() {
    let mut o = aws_world(
        vec![retrying(job("r", "1", "1Gi", 1), 2, None)],
        vec![n1()],
        1,
        &["n1"],
    );
    o.heartbeats_seen.insert("n1".into(), NOW);
    step(&mut o);
    agent(&mut o, "r", started);
    step(&mut o);
    let later = NOW + DEFAULT_LOST_NODE_TIMEOUT + 1;
    // Pass 1: declared Lost; no fence yet (the declaration must land first).
    let d = at(&o, later, &["n1"]);
    assert_eq!(d.nodes[0].status.phase, Some(ApiNodePhase::Lost));
    assert!(
        d.fleet
            .iter()
            .all(|a| !matches!(a, FleetAction::Fence { .. })),
        "{:?}",
        d.fleet
    );
    apply(&mut o, &d);
    // Pass 2: observed Lost, still silent, still holding the attempt: fenced.
    let d = at(&o, later + 1, &["n1"]);
    assert_eq!(
        d.fleet.first(),
        Some(&FleetAction::Fence {
            compute_environment: "ce".into(),
            node: "n1".into(),
            instance_id: "n1".into()
        })
    );
    assert!(d.events.iter().any(|e| e.reason == reasons::FENCED_NODE));
    assert!(
        d.jobs.iter().all(|u| u
            .status
            .as_ref()
            .is_none_or(|s| s.attempts[0].stopped_at.is_none())),
        "not retried before the fence is confirmed"
    );
    // A fence already made is not repeated at once.
    let mut fenced = o.clone();
    fenced.fenced.insert("n1".into(), later + 1);
    let d = at(&fenced, later + 2, &["n1"]);
    assert!(
        d.fleet
            .iter()
            .all(|a| !matches!(a, FleetAction::Fence { .. }))
    );
    // The fleet no longer lists the instance: the attempt ends NodeLost, retried.
    if let Some(f) = o.fleets.get_mut("ce") {
        f.instances.clear();
    }
    let d = at(&o, later + 3, &["n1"]);
    let s = status(&d, "r");
    assert_eq!(s.attempts[0].reason, Some(AttemptReason::NodeLost));
    assert_eq!(s.phase, Some(JobPhase::Runnable));
}

#[test]
fn no_node_is_lost_across_a_gap_in_the_controllers_view() {
    let mut o = world(vec![], vec![n1()]);
    o.heartbeats_seen.insert("n1".into(), NOW);
    let later = NOW + DEFAULT_LOST_NODE_TIMEOUT + 100;
    // The watch failed 50 s ago: grace counts from then.
    o.view_gap = Some(later - 50);
    let d = at(&o, later, &["n1"]);
    assert!(
        d.nodes
            .iter()
            .all(|n| n.status.phase != Some(ApiNodePhase::Lost)),
        "{:?}",
        d.nodes
    );
    o.view_gap = Some(NOW);
    let d = at(&o, later, &["n1"]);
    assert_eq!(d.nodes[0].status.phase, Some(ApiNodePhase::Lost));
}

#[test]
fn many_silent_nodes_at_once_are_a_disruption_not_lost_nodes() {
    let nodes: Vec<BatchNode> = ["a", "b", "c"]
        .iter()
        .map(|n| node(n, "ce", "4", "16Gi", NOW))
        .collect();
    let mut o = aws_world(vec![job("j", "1", "1Gi", 1)], nodes, 3, &["a", "b", "c"]);
    for n in ["a", "b", "c"] {
        o.heartbeats_seen.insert(n.into(), NOW);
    }
    let later = NOW + DEFAULT_LOST_NODE_TIMEOUT + 1;
    // Two of three (67% > 55%) silent: disruption, nobody Lost, no new work for them.
    let d = at(&o, later, &["a", "b"]);
    assert!(
        d.nodes
            .iter()
            .all(|n| n.status.phase != Some(ApiNodePhase::Lost)),
        "{:?}",
        d.nodes
    );
    let ce = &d.compute_environments[0].status;
    let c = ce
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_DISRUPTED)
        .expect("Disrupted condition");
    assert_eq!(c.status, "True");
    assert!(
        c.message.starts_with("2 of 3 nodes silent"),
        "{}",
        c.message
    );
    assert!(d.events.iter().any(|e| e.reason == reasons::DISRUPTION));
    assert_eq!(
        status(&d, "j").node.as_deref(),
        Some("c"),
        "only the live node gets work"
    );
    let a = d.nodes.iter().find(|n| n.name == "a").expect("a");
    let ready = a
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_READY)
        .expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "NotHeartbeating")
    );
    assert!(
        d.fleet
            .iter()
            .all(|f| matches!(f, FleetAction::SetDesired { .. }))
    );
    // One of three silent: it is Lost.
    let d = at(&o, later, &["a"]);
    let a = d.nodes.iter().find(|n| n.name == "a").expect("a");
    assert_eq!(a.status.phase, Some(ApiNodePhase::Lost));
    // Heartbeats come back after a disruption: it ends, with an Event.
    let d = at(&o, later, &["a", "b"]);
    apply(&mut o, &d);
    let d = at(&o, later + 5, &[]);
    let c = d.compute_environments[0]
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_DISRUPTED)
        .expect("Disrupted condition");
    assert_eq!(c.status, "False");
    assert!(
        d.events
            .iter()
            .any(|e| e.reason == reasons::DISRUPTION_ENDED)
    );
}

#[test]
fn the_pass_in_which_a_nodes_last_job_ends_does_not_count_it_idle() {
    // The issue's trace: a node registered long ago runs jobs without a break; the
    // pass that sees its last job end must not find it idle since its registration.
    let mut n = node("n1", "ce", "4", "16Gi", NOW);
    n.metadata.creation_timestamp = Some(time(0));
    let mut o = aws_world(vec![job("m29", "1", "1Gi", 1)], vec![n], 1, &["n1"]);
    let mut ce = (*o.compute_environments[0]).clone();
    ce.spec.scale_in_after_idle_seconds = 10;
    o.compute_environments = vec![Arc::new(ce)];
    step(&mut o);
    assert!(!o.idle_seen.contains_key("n1"), "holding a job: not idle");
    agent(&mut o, "m29", started);
    step(&mut o);
    agent(&mut o, "m29", exited(0));
    let d = run(&o);
    assert_eq!(status(&d, "m29").phase, Some(JobPhase::Succeeded));
    assert!(
        d.plan.drain.is_empty(),
        "drained in the pass its last job ended"
    );
    let n = d.nodes.iter().find(|n| n.name == "n1").expect("n1");
    assert_eq!(n.status.idle_since, Some(time(NOW)));
    apply(&mut o, &d);
    // Still within scaleInAfterIdleSeconds: not drained.
    let d = at(&o, NOW + 9, &[]);
    assert!(d.plan.drain.is_empty());
    // After it: drained (a later pass terminates it once its agent lets it go).
    let d = at(&o, NOW + 10, &[]);
    assert_eq!(d.plan.drain, ["n1"]);
    assert!(
        d.fleet
            .iter()
            .all(|a| !matches!(a, FleetAction::Terminate { .. }))
    );
}

/// A Draining node `i-abc` in an aws world, its agent reporting `accepting` and
/// `running`, its instance `protected`.
fn drained(accepting: Option<bool>, running: Vec<NodeJob>, protected: bool) -> Observed {
    let mut n = node("i-abc", "ce", "4", "16Gi", NOW);
    if let Some(s) = n.status.as_mut() {
        s.phase = Some(ApiNodePhase::Draining);
        s.accepting_attempts = accepting;
        s.running_attempts = running;
    }
    let mut o = aws_world(vec![], vec![n], 1, &["i-abc"]);
    o.draining_seen.insert("i-abc".into(), NOW - 20);
    o.idle_seen.insert("i-abc".into(), 0);
    if let Some(f) = o.fleets.get_mut("ce") {
        f.instances[0].protected_from_scale_in = protected;
    }
    o
}

#[test]
fn a_drained_idle_node_is_terminated_before_desired_is_lowered() {
    let d = run(&drained(Some(false), vec![], false));
    assert_eq!(
        d.fleet,
        [FleetAction::Terminate {
            compute_environment: "ce".into(),
            node: "i-abc".into(),
            instance_id: "i-abc".into()
        }]
    );
    assert_eq!(d.compute_environments[0].status.desired_capacity, Some(0));
}

#[test]
fn a_drained_node_is_not_terminated_until_its_agent_lets_it_go() {
    let job = NodeJob {
        namespace: "default".into(),
        name: "late".into(),
        attempt: 1,
    };
    for (why, o) in [
        (
            "agent has not seen the drain",
            drained(Some(true), vec![], false),
        ),
        ("agent never reported", drained(None, vec![], false)),
        (
            "agent still runs an attempt",
            drained(Some(false), vec![job], false),
        ),
        (
            "instance still protected from scale-in",
            drained(Some(false), vec![], true),
        ),
    ] {
        let d = run(&o);
        assert!(
            d.fleet
                .iter()
                .all(|a| !matches!(a, FleetAction::Terminate { .. })),
            "{why}: {:?}",
            d.fleet
        );
        assert_eq!(
            d.compute_environments[0].status.desired_capacity,
            Some(1),
            "{why}: desired capacity keeps the instance"
        );
    }
}

#[test]
fn a_binding_the_draining_node_did_not_start_is_handed_back() {
    // Bound to n1 (stale view), then n1 was drained; its agent saw the drain and
    // reports it starts nothing more and does not run the attempt.
    let mut o = aws_world(vec![job("j", "1", "1Gi", 1)], vec![n1()], 2, &["n1", "n2"]);
    o.heartbeats_seen.insert("n1".into(), NOW);
    step(&mut o);
    assert_eq!(
        o.jobs[0].status.as_ref().and_then(|s| s.node.as_deref()),
        Some("n1")
    );
    let mut n = (*o.nodes[0]).clone();
    if let Some(s) = n.status.as_mut() {
        s.phase = Some(ApiNodePhase::Draining);
        s.accepting_attempts = Some(true);
    }
    o.nodes = vec![Arc::new(n.clone())];
    // Not yet acknowledged by the agent: the binding stays.
    let d = run(&o);
    assert!(d.jobs.iter().all(|u| {
        u.status
            .as_ref()
            .is_none_or(|s| s.node.as_deref() == Some("n1"))
    }));
    if let Some(s) = n.status.as_mut() {
        s.accepting_attempts = Some(false);
    }
    o.nodes = vec![Arc::new(n)];
    let d = run(&o);
    let s = status(&d, "j");
    assert_eq!(
        (s.phase, s.node.as_deref(), s.attempt),
        (Some(JobPhase::Runnable), None, None)
    );
    assert!(
        s.attempts.is_empty(),
        "a binding never started is no attempt"
    );
    assert_eq!(update(&d, "j").label, None);
    assert_eq!(status(&d, "j").node, None, "out of the node's watch");
    assert!(d.events.iter().any(|e| e.reason == reasons::HANDED_BACK));
}

#[test]
fn dependents_wait_and_fail_with_their_dependency() {
    let mut o = world(
        vec![
            job("a", "1", "1Gi", 1),
            depends_on(job("b", "1", "1Gi", 2), "a"),
        ],
        vec![n1()],
    );
    let d = run(&o);
    assert_eq!(status(&d, "b").phase, Some(JobPhase::Pending));
    assert_eq!(
        status(&d, "b").message.as_deref(),
        Some("waiting on dependency default/a")
    );
    apply(&mut o, &d);
    agent(&mut o, "a", exited(1));
    let d = run(&o);
    assert_eq!(status(&d, "a").phase, Some(JobPhase::Failed));
    let b = status(&d, "b");
    assert_eq!(b.phase, Some(JobPhase::Failed));
    assert_eq!(b.reason.as_deref(), Some(DEPENDENCY_FAILED));
    assert_eq!(b.message.as_deref(), Some("dependency default/a failed"));
}

#[test]
fn a_dependent_is_released_when_its_dependency_succeeds() {
    let mut o = world(
        vec![
            job("a", "1", "1Gi", 1),
            depends_on(job("b", "1", "1Gi", 2), "a"),
        ],
        vec![n1()],
    );
    step(&mut o);
    agent(&mut o, "a", exited(0));
    let d = run(&o);
    assert_eq!(status(&d, "b").phase, Some(JobPhase::Starting));
}

#[test]
fn an_array_job_gets_children_and_counts_them() {
    let mut o = world(vec![array(job("arr", "1", "1Gi", 1), 3)], vec![n1()]);
    let d = run(&o);
    let names: Vec<_> = d
        .children
        .iter()
        .filter_map(|c| c.job.metadata.name.clone())
        .collect();
    assert_eq!(names, ["arr-0", "arr-1", "arr-2"]);
    let c = &d.children[1].job;
    assert_eq!(c.spec.array_index, Some(1));
    assert!(c.spec.array_properties.is_none());
    assert_eq!(
        c.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_ARRAY_PARENT))
            .map(String::as_str),
        Some("arr")
    );
    let owner = &c.metadata.owner_references.as_ref().expect("owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("BatchJob", "arr", Some(true))
    );
    assert_eq!(
        status(&d, "arr").array_status.as_ref().map(|a| a.pending),
        Some(3)
    );
    apply(&mut o, &d);
    // Children are scheduled; the parent is not.
    let d = run(&o);
    assert!(d.plan.bindings.iter().all(|b| b.job.0 != "default/arr"));
    assert_eq!(d.plan.bindings.len(), 3);
    let a = status(&d, "arr");
    assert_eq!(a.array_status.as_ref().map(|a| a.starting), Some(3));
    assert_eq!(a.phase, Some(JobPhase::Running));
    apply(&mut o, &d);
    for c in ["arr-0", "arr-1", "arr-2"] {
        agent(&mut o, c, exited(0));
    }
    let d = run(&o);
    let a = status(&d, "arr");
    assert_eq!(a.phase, Some(JobPhase::Succeeded));
    assert_eq!(a.array_status.as_ref().map(|a| a.succeeded), Some(3));
}

/// Children `from..to` of `parent`, in the given phase (as an earlier pass left them).
fn children_in(parent: &BatchJob, from: u32, to: u32, p: JobPhase) -> Vec<BatchJob> {
    (from..to)
        .map(|i| {
            let mut c = child(parent, i);
            c.status = Some(BatchJobStatus {
                phase: Some(p),
                ..BatchJobStatus::default()
            });
            c
        })
        .collect()
}

fn created(d: &Decisions) -> Vec<u32> {
    d.children
        .iter()
        .filter_map(|c| c.job.spec.array_index)
        .collect()
}

#[test]
fn a_large_array_creates_its_children_in_batches_as_earlier_ones_are_bound() {
    let size = 2_500;
    let mut o = world(vec![array(job("arr", "1", "1Gi", 1), size)], vec![n1()]);
    // The first pass creates the first ARRAY_CHILDREN_WAITING children, not all.
    let d = run(&o);
    assert_eq!(created(&d), (0..1_000).collect::<Vec<_>>());
    let a = status(&d, "arr");
    assert_eq!(
        a.array_status.as_ref().map(|a| (a.size, a.pending)),
        Some((size, size)),
        "children not created yet count as pending"
    );
    assert!(
        d.events
            .iter()
            .any(|e| e.reason == reasons::CHILDREN_CREATED
                && e.note == "creating 1000 array children (1500 more as these are bound)")
    );
    apply(&mut o, &d);
    // The next pass binds four (a 4-cpu node) and creates four more in their place.
    let d = run(&o);
    assert_eq!(d.plan.bindings.len(), 4);
    assert_eq!(created(&d), [1_000, 1_001, 1_002, 1_003]);
    let a = status(&d, "arr").array_status.clone().unwrap_or_default();
    assert_eq!(
        (a.pending, a.runnable, a.starting),
        (1_500, 996, 4),
        "every child counted once, created or not"
    );
    apply(&mut o, &d);
    // Nothing bound, nothing to create: the window is full. A controller restarted here
    // (decide keeps nothing between passes) creates exactly the same nothing.
    let d = run(&o);
    assert!(d.children.is_empty(), "{:?}", created(&d));
    // The last children are created once the earlier ones are gone through.
    let parent = array(job("arr", "1", "1Gi", 1), size);
    let mut jobs = vec![parent.clone()];
    jobs.extend(children_in(&parent, 0, 1_900, JobPhase::Succeeded));
    jobs.extend(children_in(&parent, 1_900, 2_000, JobPhase::Runnable));
    let d = run(&world(jobs, vec![n1()]));
    assert_eq!(created(&d), (2_000..2_500).collect::<Vec<_>>());
}

#[test]
fn a_job_depending_on_an_array_waits_for_the_children_not_created_yet() {
    let parent = array(job("arr", "1", "1Gi", 1), 1_002);
    let mut jobs = vec![
        parent.clone(),
        depends_on(job("after", "1", "1Gi", 2), "arr"),
    ];
    // Every child created so far succeeded; two are still to be created.
    jobs.extend(children_in(&parent, 0, 1_000, JobPhase::Succeeded));
    let d = run(&world(jobs, vec![n1()]));
    assert_eq!(created(&d), [1_000, 1_001]);
    let s = status(&d, "after");
    assert_eq!(s.phase, Some(JobPhase::Pending));
    assert_eq!(
        s.message.as_deref(),
        Some("waiting on dependency default/arr")
    );
    assert!(d.plan.bindings.iter().all(|b| b.job.0 != "default/after"));
}

#[test]
fn a_cancelled_array_creates_no_more_children_and_counts_them_failed() {
    let mut o = world(vec![array(job("arr", "1", "1Gi", 1), 1_500)], vec![n1()]);
    step(&mut o);
    let mut jobs: Vec<BatchJob> = o.jobs.iter().map(|j| (**j).clone()).collect();
    if let Some(p) = jobs
        .iter_mut()
        .find(|j| j.metadata.name.as_deref() == Some("arr"))
    {
        p.spec.cancel = Some(crate::api::batch_job::CancelRequest {
            message: Some("wrong input".into()),
        });
    }
    o.jobs = jobs.into_iter().map(Arc::new).collect();
    let d = run(&o);
    assert!(d.children.is_empty(), "{:?}", created(&d));
    let p = status(&d, "arr");
    assert_eq!(p.phase, Some(JobPhase::Failed));
    apply(&mut o, &d);
    settle(&mut o);
    assert!(run(&o).children.is_empty());
    let p = o
        .jobs
        .iter()
        .find(|j| j.metadata.name.as_deref() == Some("arr"))
        .and_then(|j| j.status.clone())
        .unwrap_or_default();
    let a = p.array_status.unwrap_or_default();
    assert_eq!(
        (a.size, a.failed, a.pending, a.runnable),
        (1_500, 1_500, 0, 0)
    );
}

#[test]
fn an_array_fails_when_a_child_fails() {
    let mut o = world(vec![array(job("arr", "1", "1Gi", 1), 2)], vec![n1()]);
    step(&mut o);
    step(&mut o);
    agent(&mut o, "arr-1", exited(1));
    // One child failed, the other still runs: the parent waits for it (AWS Batch).
    let d = run(&o);
    let a = status(&d, "arr");
    assert_eq!(a.phase, Some(JobPhase::Running));
    assert_eq!(
        a.message.as_deref(),
        Some("2 children: 0 pending, 0 runnable, 1 starting, 0 running, 0 succeeded, 1 failed")
    );
    assert_eq!(
        a.array_status.as_ref().map(|a| (a.failed, a.starting)),
        Some((1, 1))
    );
    apply(&mut o, &d);
    agent(&mut o, "arr-0", exited(0));
    let d = run(&o);
    let a = status(&d, "arr");
    assert_eq!(a.phase, Some(JobPhase::Failed));
    assert_eq!(
        a.message.as_deref(),
        Some("1 of 2 array children failed, the first default/arr-1")
    );
}

#[test]
fn a_too_large_job_says_why_in_its_message_and_condition() {
    let d = run(&world(vec![job("big", "1", "64Gi", 1)], vec![n1()]));
    let s = status(&d, "big");
    assert_eq!(s.phase, Some(JobPhase::Runnable));
    assert_eq!(
        s.message.as_deref(),
        Some("needs 64Gi memory, largest instance of ce/ce has 16Gi")
    );
    assert_eq!(s.conditions[0].reason, "TooLarge");
    assert_eq!(s.conditions[0].status, "False");
}

#[test]
fn a_missing_definition_is_a_clear_reason() {
    let d = run(&world(
        vec![with_definition(job("x", "1", "1Gi", 1), "nope")],
        vec![n1()],
    ));
    let s = status(&d, "x");
    assert_eq!(s.phase, Some(JobPhase::Submitted));
    assert_eq!(
        s.message.as_deref(),
        Some("job definition default/nope not found")
    );
    assert_eq!(s.conditions[0].reason, reasons::INVALID_JOB);
    assert!(d.events.iter().any(|e| e.reason == reasons::INVALID_JOB));
}

fn aws_world(
    jobs: Vec<BatchJob>,
    nodes: Vec<BatchNode>,
    desired: u32,
    instances: &[&str],
) -> Observed {
    let mut o = world(jobs, nodes);
    o.fleets.insert(
        "ce".into(),
        FleetState {
            desired,
            min: 0,
            max: 10,
            instance_type: Some("c5.xlarge".into()),
            instances: instances
                .iter()
                .map(|i| FleetInstance {
                    instance_id: (*i).into(),
                    lifecycle: Lifecycle::InService,
                    protected_from_scale_in: false,
                    instance_type: None,
                    launched_at: None,
                })
                .collect(),
        },
    );
    o
}

#[test]
fn demand_sets_the_desired_capacity_of_a_fleet() {
    let jobs = (0..5)
        .map(|i| job(&format!("j{i}"), "2", "4Gi", i))
        .collect();
    let d = run(&aws_world(jobs, vec![], 0, &[]));
    assert_eq!(
        d.fleet,
        [FleetAction::SetDesired {
            compute_environment: "ce".into(),
            desired: 3,
            from: 0
        }]
    );
    assert_eq!(d.compute_environments[0].status.desired_capacity, Some(3));
    let scaling = d.compute_environments[0]
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_SCALING)
        .expect("Scaling");
    assert_eq!(
        (scaling.status.as_str(), scaling.message.as_str()),
        ("True", "0 instance(s) booting, 3 more needed")
    );
    assert!(d.events.iter().any(|e| e.reason == reasons::SCALED));
    // Instances booting (no BatchNode yet) count: nothing more to ask for.
    let jobs = (0..5)
        .map(|i| job(&format!("j{i}"), "2", "4Gi", i))
        .collect();
    let d = run(&aws_world(jobs, vec![], 3, &["i-1", "i-2", "i-3"]));
    assert!(d.fleet.is_empty(), "{:?}", d.fleet);
}

#[test]
fn an_idle_node_is_drained_after_its_idle_time_where_a_fleet_can_terminate_it() {
    let n = n1();
    let mut o = aws_world(vec![], vec![n.clone()], 1, &["n1"]);
    o.idle_seen.insert("n1".into(), NOW - 300);
    let d = run(&o);
    assert_eq!(d.nodes[0].status.phase, Some(ApiNodePhase::Draining));
    assert_eq!(d.nodes[0].status.idle_since, Some(time(NOW - 300)));
    assert!(d.events.iter().any(|e| e.reason == reasons::DRAINING));
    // A node this controller has not yet seen idle is idle since now, whatever its age.
    let d = run(&aws_world(vec![], vec![n.clone()], 1, &["n1"]));
    assert_eq!(d.nodes[0].status.phase, Some(ApiNodePhase::Ready));
    // Without a fleet nothing could terminate it: it stays Ready for jobs.
    let mut o = world(vec![], vec![n]);
    o.idle_seen.insert("n1".into(), NOW - 300);
    let d = run(&o);
    assert_eq!(d.nodes[0].status.phase, Some(ApiNodePhase::Ready));
}

#[test]
fn a_fleet_error_is_a_condition_and_an_event() {
    let mut o = world(vec![job("waits", "1", "1Gi", 1)], vec![]);
    o.fleet_errors.insert(
        "ce".into(),
        FleetProblem::other("DescribeAutoScalingGroups: not found: nope"),
    );
    let d = run(&o);
    let c = d.compute_environments[0]
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_READY)
        .expect("Ready");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", reasons::FLEET_ERROR)
    );
    assert!(
        d.events
            .iter()
            .any(|e| e.reason == reasons::FLEET_ERROR && e.warning)
    );
    // A job waiting for instances says the fleet cannot give them, not that they boot.
    assert_eq!(
        status(&d, "waits").message.as_deref(),
        Some("ce/ce cannot launch instances: DescribeAutoScalingGroups: not found: nope")
    );
}

#[test]
fn an_access_denied_fleet_call_is_a_condition_and_an_event_naming_the_permission() {
    let mut o = world(vec![job("waits", "1", "1Gi", 1)], vec![]);
    let denied = crate::cloud::CloudError::from_aws_code(
        "SetDesiredCapacity",
        Some("AccessDenied"),
        "User: arn:aws:iam::1:user/c is not authorized to perform: autoscaling:SetDesiredCapacity"
            .into(),
    );
    o.fleet_errors
        .insert("ce".into(), FleetProblem::from_cloud(&denied));
    let d = run(&o);
    let c = d.compute_environments[0]
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_READY)
        .expect("Ready");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", reasons::ACCESS_DENIED)
    );
    assert!(
        c.message
            .contains("missing IAM permission autoscaling:SetDesiredCapacity"),
        "{}",
        c.message
    );
    assert!(d.events.iter().any(|e| e.reason == reasons::ACCESS_DENIED
        && e.warning
        && e.note.contains("autoscaling:SetDesiredCapacity")));
}

mod invariants {
    use super::*;
    use proptest::prelude::*;

    /// One step of the world: a controller pass, or an agent reporting on a job.
    #[derive(Debug, Clone)]
    enum Step {
        Pass,
        Start(usize),
        Exit(usize, i32),
        /// Time moves on this many seconds (backoff, lost nodes).
        Wait(u64),
        /// Node `i` stops heartbeating from now on.
        Silence(usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => Just(Step::Pass),
            2 => (0..6usize).prop_map(Step::Start),
            2 => (0..6usize, prop_oneof![Just(0), Just(1), Just(3)]).prop_map(|(j, c)| Step::Exit(j, c)),
            1 => (1..120u64).prop_map(Step::Wait),
            1 => (0..2usize).prop_map(Step::Silence),
        ]
    }

    fn check(o: &Observed) {
        let mut used: BTreeMap<String, u64> = BTreeMap::new();
        for j in &o.jobs {
            let s = j.status.clone().unwrap_or_default();
            let placed = matches!(s.phase, Some(JobPhase::Starting | JobPhase::Running));
            let label = j
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_NODE))
                .cloned();
            assert_eq!(label, None, "no job is labelled: agents watch status.node");
            if placed {
                assert!(s.node.is_some(), "a placed job names its node: {s:?}");
                let open: Vec<_> = s
                    .attempts
                    .iter()
                    .filter(|a| a.stopped_at.is_none())
                    .collect();
                assert!(
                    open.len() <= 1,
                    "at most one attempt at a time: {:?}",
                    s.attempts
                );
                assert_eq!(open.first().map(|a| a.attempt), s.attempt);
                *used.entry(s.node.clone().unwrap_or_default()).or_default() += 1000;
            } else {
                assert_eq!(
                    s.node, None,
                    "only placed jobs are in a node's watch: {s:?}"
                );
            }
            let tries = j
                .spec
                .template
                .retry_strategy
                .as_ref()
                .map_or(1, |r| r.attempts);
            assert!(
                s.attempt.unwrap_or(0) <= tries,
                "never more attempts than allowed"
            );
        }
        for (node, cpu) in used {
            assert!(cpu <= 2000, "node {node} over its 2 cpu: {cpu}m");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn no_job_runs_twice_and_no_node_is_overcommitted(steps in proptest::collection::vec(step(), 1..60)) {
            let jobs: Vec<BatchJob> = (0..6)
                .map(|i| retrying(job(&format!("j{i}"), "1", "1Gi", i), 3, if i % 2 == 0 { Some(30) } else { None }))
                .collect();
            let mut o = world(jobs, vec![
                node("n1", "ce", "2", "8Gi", NOW),
                node("n2", "ce", "2", "8Gi", NOW),
            ]);
            let mut now = NOW;
            let mut silent = [false, false];
            for s in steps {
                match s {
                    Step::Pass => {
                        // Live nodes heartbeat.
                        let mut nodes: Vec<BatchNode> = o.nodes.iter().map(|n| (**n).clone()).collect();
                        for (i, n) in nodes.iter_mut().enumerate() {
                            if !silent[i] && let Some(st) = n.status.as_mut() {
                                st.heartbeat_time = Some(time(now));
                            }
                        }
                        o.nodes = nodes.into_iter().map(Arc::new).collect();
                        let d = decide(&o, &DecideConfig::default(), now);
                        apply(&mut o, &d);
                        check(&o);
                    }
                    Step::Start(j) | Step::Exit(j, _) => {
                        let name = format!("j{j}");
                        let placed = o.jobs.iter().any(|x| {
                            x.metadata.name.as_deref() == Some(name.as_str())
                                && x.status.as_ref().is_some_and(|s| {
                                    matches!(s.phase, Some(JobPhase::Starting | JobPhase::Running))
                                        && s.node.as_deref().is_some_and(|n| !silent[usize::from(n == "n2")])
                                })
                        });
                        if placed {
                            let code = if let Step::Exit(_, code) = s { Some(code) } else { None };
                            agent(&mut o, &name, reported_at(now, code));
                        }
                    }
                    Step::Wait(secs) => now += secs,
                    Step::Silence(i) => silent[i] = true,
                }
            }
        }
    }
}

#[test]
fn a_job_depending_on_a_new_array_waits_for_it_rather_than_missing_it() {
    let o = world(
        vec![
            array(job("arr", "1", "1Gi", 1), 2),
            depends_on(job("after", "1", "1Gi", 2), "arr"),
            depends_on(job("orphan", "1", "1Gi", 3), "nowhere"),
        ],
        vec![n1()],
    );
    // The first pass creates the children: the parent exists, so "after" waits on it.
    let d = run(&o);
    assert_eq!(d.children.len(), 2);
    assert_eq!(
        status(&d, "after").message.as_deref(),
        Some("waiting on dependency default/arr")
    );
    // A dependency on a job that does not exist is still reported as missing.
    assert_eq!(
        status(&d, "orphan").message.as_deref(),
        Some("dependency default/nowhere not found")
    );
}

#[test]
fn an_attempt_that_starts_and_ends_between_two_passes_still_dates_the_job() {
    let mut o = world(vec![job("quick", "1", "1Gi", 1)], vec![n1()]);
    let d = run(&o);
    assert_eq!(status(&d, "quick").phase, Some(JobPhase::Starting));
    apply(&mut o, &d);
    // The agent's two reports land before the controller's next pass.
    agent(&mut o, "quick", exited(0));
    let d = run(&o);
    let s = status(&d, "quick");
    assert_eq!(s.phase, Some(JobPhase::Succeeded));
    assert_eq!(s.started_at, Some(time(NOW - 10)));
    assert_eq!(s.stopped_at, Some(time(NOW - 1)));
}

#[test]
fn a_node_whose_instance_left_the_fleet_gets_no_job_and_goes_once_its_agent_is_quiet() {
    // i-old was terminated (the group no longer lists it) but its agent still heartbeats,
    // and registered its node again; i-new is in service.
    let old = node("i-old", "ce", "4", "16Gi", NOW);
    let new = node("i-new", "ce", "4", "16Gi", NOW);
    let jobs = vec![job("a", "1", "1Gi", 1), job("b", "1", "1Gi", 2)];
    let d = run(&aws_world(
        jobs,
        vec![old.clone(), new.clone()],
        1,
        &["i-new"],
    ));
    assert!(
        d.plan.bindings.iter().all(|b| b.node == "i-new"),
        "{:?}",
        d.plan.bindings
    );
    assert_eq!(d.plan.bindings.len(), 2);
    let phase_of = |d: &Decisions, n: &str| {
        d.nodes
            .iter()
            .find(|u| u.name == n)
            .and_then(|u| u.status.phase)
    };
    assert_eq!(phase_of(&d, "i-old"), Some(ApiNodePhase::Draining));
    // It is not capacity: no terminate of it, and desired stays at the one live instance.
    assert!(
        d.fleet
            .iter()
            .all(|a| !matches!(a, FleetAction::Terminate { .. })),
        "{:?}",
        d.fleet
    );
    assert!(d.delete_nodes.is_empty(), "its agent is still up");
    // Its agent goes quiet: the node is Lost, and deleted.
    let mut quiet = old;
    if let Some(s) = quiet.status.as_mut() {
        s.heartbeat_time = Some(time(NOW - 600));
    }
    let d = run(&aws_world(vec![], vec![quiet, new], 1, &["i-new"]));
    assert_eq!(d.delete_nodes, ["i-old"]);
    assert!(d.fleet.is_empty(), "{:?}", d.fleet);
}

#[test]
fn liveness_follows_heartbeat_changes_on_the_controllers_clock_not_the_agents() {
    // The agent's clock is an hour behind: its heartbeatTime looks stale...
    let mut n = n1();
    if let Some(s) = n.status.as_mut() {
        s.heartbeat_time = Some(time(NOW - 3600));
    }
    let mut o = world(vec![], vec![n]);
    // ...but this controller saw the value change 5 s ago: the node is alive.
    o.heartbeats_seen.insert("n1".into(), NOW - 5);
    let phase = |d: &Decisions| {
        d.nodes
            .iter()
            .find(|u| u.name == "n1")
            .and_then(|u| u.status.phase)
    };
    assert_eq!(phase(&run(&o)), Some(ApiNodePhase::Ready));
    // A value unchanged for longer than the timeout is Lost, whatever it says.
    o.heartbeats_seen
        .insert("n1".into(), NOW - DEFAULT_LOST_NODE_TIMEOUT - 1);
    assert_eq!(phase(&run(&o)), Some(ApiNodePhase::Lost));
}

/// Random timelines of job ends, bindings, agent heartbeats, silences and failed writes
/// against a fleet, with agents modelled as the real one behaves (the gate, the
/// protection after idle polls). Ground truth is what the agents ran, not the status:
/// no instance is terminated while its agent runs an attempt, within the idle window
/// after one ended, or while protected (except a fence of a Lost node); and no job runs
/// two attempts at once, counting attempts still running on fenced or silent nodes.
mod scale_in_timelines {
    use super::*;
    use proptest::prelude::*;

    const IDLE_AFTER: u64 = 10;
    const NODES: [&str; 3] = ["i-a", "i-b", "i-c"];

    #[derive(Debug, Clone)]
    enum Step {
        /// A controller pass; `false`: its node status writes fail (so its fleet calls are
        /// dropped, as the loop does).
        Pass(bool),
        /// Every live agent heartbeats.
        Heartbeat,
        Start(usize),
        Exit(usize),
        Wait(u64),
        /// Node `i`'s agent can no longer reach the API server (its work goes on).
        Silence(usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => Just(Step::Pass(true)),
            1 => Just(Step::Pass(false)),
            3 => Just(Step::Heartbeat),
            3 => (0..6usize).prop_map(Step::Start),
            3 => (0..6usize).prop_map(Step::Exit),
            2 => (1..40u64).prop_map(Step::Wait),
            1 => Just(Step::Wait(400)),
            1 => (0..3usize).prop_map(Step::Silence),
        ]
    }

    /// The truth of one instance and its agent.
    #[derive(Debug, Default, Clone)]
    struct Agent {
        /// Attempts running here: (job, attempt) → started at.
        running: BTreeMap<(String, u32), Seconds>,
        /// When an attempt last ended here.
        last_end: Option<Seconds>,
        draining: bool,
        protected: bool,
        idle_polls: u32,
        silent: bool,
        terminated: bool,
    }

    /// Every live agent heartbeats at `now`: what it runs, whether it accepts work; it
    /// reads its node's phase back and lifts its protection after 3 idle polls.
    fn beat(o: &mut Observed, agents: &mut BTreeMap<&str, Agent>, now: Seconds) {
        let mut nodes: Vec<BatchNode> = o.nodes.iter().map(|n| (**n).clone()).collect();
        for n in &mut nodes {
            let name = n.metadata.name.clone().unwrap_or_default();
            let Some(a) = agents.get_mut(name.as_str()) else {
                continue;
            };
            if a.silent || a.terminated {
                continue;
            }
            let st = n.status.get_or_insert_with(Default::default);
            st.heartbeat_time = Some(time(now));
            st.accepting_attempts = Some(!a.draining);
            st.running_attempts = a
                .running
                .keys()
                .map(|(j, k)| NodeJob {
                    namespace: "default".into(),
                    name: j.clone(),
                    attempt: *k,
                })
                .collect();
            // The answer carries the phase.
            a.draining = st.phase == Some(ApiNodePhase::Draining);
            // Protection: lifted only after 3 idle polls.
            if a.running.is_empty() {
                a.idle_polls += 1;
                if a.idle_polls >= 3 {
                    a.protected = false;
                }
            } else {
                a.idle_polls = 0;
            }
            o.heartbeats_seen.insert(name, now);
        }
        o.nodes = nodes.into_iter().map(Arc::new).collect();
    }

    fn job_status(o: &Observed, name: &str) -> BatchJobStatus {
        o.jobs
            .iter()
            .find(|j| j.metadata.name.as_deref() == Some(name))
            .and_then(|j| j.status.clone())
            .unwrap_or_default()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn no_busy_recently_busy_or_protected_instance_is_terminated_and_no_job_runs_twice(
            steps in proptest::collection::vec(step(), 1..80)
        ) {
            let jobs: Vec<BatchJob> = (0..6)
                .map(|i| retrying(job(&format!("j{i}"), "1", "1Gi", i), 3, None))
                .collect();
            let nodes: Vec<BatchNode> = NODES.iter().map(|n| node(n, "ce", "2", "8Gi", NOW)).collect();
            let mut o = aws_world(jobs, nodes, 3, &NODES);
            let mut ce = (*o.compute_environments[0]).clone();
            ce.spec.scale_in_after_idle_seconds = IDLE_AFTER as u32;
            o.compute_environments = vec![Arc::new(ce)];
            let mut agents: BTreeMap<&str, Agent> = NODES.iter().map(|n| (*n, Agent::default())).collect();
            let mut now = NOW;
            for n in NODES {
                o.heartbeats_seen.insert(n.into(), now);
            }
            for s in steps {
                match s {
                    Step::Heartbeat => beat(&mut o, &mut agents, now),
                    Step::Start(j) => {
                        let name = format!("j{j}");
                        let st = job_status(&o, &name);
                        let (Some(node), Some(k)) = (st.node.clone(), st.attempt) else { continue };
                        if st.phase != Some(JobPhase::Starting) { continue; }
                        let Some(a) = agents.get_mut(node.as_str()) else { continue };
                        if a.silent || a.terminated || a.draining || a.running.contains_key(&(name.clone(), k)) { continue; }
                        if st.attempts.iter().any(|x| x.attempt == k && x.started_at.is_some()) { continue; }
                        // The agent protects before it starts.
                        a.protected = true;
                        a.idle_polls = 0;
                        a.running.insert((name.clone(), k), now);
                        agent(&mut o, &name, move |x| x.started_at = Some(time(now)));
                    }
                    Step::Exit(j) => {
                        let name = format!("j{j}");
                        for a in agents.values_mut() {
                            if a.silent || a.terminated { continue; }
                            let keys: Vec<(String, u32)> = a.running.keys().filter(|(n, _)| *n == name).cloned().collect();
                            for key in keys {
                                a.running.remove(&key);
                                a.last_end = Some(now);
                                let k = key.1;
                                agent(&mut o, &name, move |x| if x.attempt == k && x.stopped_at.is_none() {
                                    x.stopped_at = Some(time(now));
                                    x.exit_code = Some(0);
                                    x.reason = Some(AttemptReason::Completed);
                                });
                            }
                        }
                    }
                    Step::Wait(secs) => {
                        // Agents heartbeat every few seconds while time passes.
                        now += secs;
                        beat(&mut o, &mut agents, now);
                    }
                    Step::Silence(i) => {
                        if let Some(a) = agents.get_mut(NODES[i]) { a.silent = true; }
                    }
                    Step::Pass(writes_land) => {
                        let d = decide(&o, &DecideConfig::default(), now);
                        let mut landed = d.clone();
                        if !writes_land {
                            landed.nodes.clear();
                            landed.fleet.clear();
                        }
                        for f in &landed.fleet {
                            let (node, fence) = match f {
                                FleetAction::Terminate { node, .. } => (node, false),
                                FleetAction::Fence { node, .. } => (node, true),
                                FleetAction::SetDesired { .. } => continue,
                            };
                            let Some(a) = agents.get_mut(node.as_str()) else { continue };
                            if fence {
                                prop_assert!(a.silent, "{node} fenced while its agent is heard");
                            } else if a.silent {
                                // A Lost node's instance, idle in the controller's view:
                                // terminated like a fence (protection does not bind it).
                                prop_assert!(a.running.is_empty(), "lost {node} terminated while running {:?}", a.running);
                            } else {
                                prop_assert!(a.running.is_empty(), "{node} terminated while running {:?}", a.running);
                                prop_assert!(!a.protected, "{node} terminated while protected");
                                prop_assert!(
                                    a.last_end.is_none_or(|e| now.saturating_sub(e) >= IDLE_AFTER),
                                    "{node} terminated {}s after its last attempt ended",
                                    now.saturating_sub(a.last_end.unwrap_or(0))
                                );
                            }
                            // The instance is gone, and with it whatever ran there.
                            a.terminated = true;
                            a.running.clear();
                            if let Some(fl) = o.fleets.get_mut("ce") {
                                fl.instances.retain(|i| i.instance_id != *node);
                            }
                        }
                        if let Some(fl) = o.fleets.get_mut("ce") {
                            for i in &mut fl.instances {
                                i.protected_from_scale_in = agents.get(i.instance_id.as_str()).is_some_and(|a| a.protected);
                            }
                        }
                        apply(&mut o, &landed);
                        o.idle_seen = d.idle.clone();
                        for (node, _) in landed.fleet.iter().filter_map(|f| match f {
                            FleetAction::Fence { node, .. } => Some((node.clone(), ())),
                            _ => None,
                        }) {
                            o.fenced.insert(node, now);
                        }
                    }
                }
                // Ground truth: no job runs two attempts at once.
                let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
                for a in agents.values() {
                    for (j, _) in a.running.keys() {
                        *seen.entry(j.as_str()).or_default() += 1;
                    }
                }
                for (j, count) in seen {
                    prop_assert!(count <= 1, "{j} runs {count} attempts at once");
                }
            }
        }
    }
}

#[test]
fn a_bound_job_keeps_the_template_it_was_pinned_to_when_its_definition_changes_or_goes() {
    let mut def = definition("etl", "1", "1Gi");
    def.metadata.uid = Some("def-uid".into());
    def.metadata.generation = Some(4);
    def.spec.template.retry_strategy = Some(RetryStrategy {
        attempts: 3,
        evaluate_on_exit: vec![],
        backoff: None,
    });
    let mut o = world(
        vec![with_definition(job("j", "1", "1Gi", 1), "etl")],
        vec![n1()],
    );
    o.definitions = vec![Arc::new(def.clone())];
    step(&mut o);
    let s = o.jobs[0].status.clone().unwrap_or_default();
    assert_eq!(s.phase, Some(JobPhase::Starting));
    let pinned = s
        .template
        .clone()
        .expect("template pinned at the first binding");
    assert_eq!(
        pinned.resources.as_ref().map(|r| r.cpu.0.as_str()),
        Some("1")
    );
    assert_eq!(
        s.definition,
        Some(crate::api::batch_job::PinnedDefinition {
            name: "etl".into(),
            uid: Some("def-uid".into()),
            generation: Some(4),
        })
    );
    // The definition is edited to need 8 cpu and no retries: the bound job is still sized
    // by its pinned template (the node keeps 1 cpu allocated, not 8 or nothing).
    let mut edited = def.clone();
    edited.metadata.generation = Some(5);
    edited.spec.template.resources = Some(res("8", "1Gi"));
    edited.spec.template.retry_strategy = None;
    o.definitions = vec![Arc::new(edited)];
    agent(&mut o, "j", started);
    let d = run(&o);
    assert_eq!(status(&d, "j").template, Some(pinned.clone()));
    assert!(
        d.nodes
            .iter()
            .all(|n| n.status.allocated.as_ref().is_none_or(|a| a.cpu.0 == "1"))
    );
    apply(&mut o, &d);
    // ...and then deleted: the failed attempt is still retried by the pinned strategy.
    o.definitions.clear();
    agent(&mut o, "j", exited(1));
    let d = run(&o);
    let s = status(&d, "j");
    assert_eq!(s.phase, Some(JobPhase::Starting), "{:?}", s.message);
    assert_eq!(s.attempt, Some(2));
    assert_eq!(s.template, Some(pinned));
}

fn finished(name: &str, stopped: Seconds, ttl: Option<u32>) -> BatchJob {
    let mut j = with_status(
        job(name, "1", "1Gi", 0),
        BatchJobStatus {
            phase: Some(JobPhase::Succeeded),
            stopped_at: Some(time(stopped)),
            ..Default::default()
        },
    );
    j.spec.ttl_seconds_after_finished = ttl;
    j
}

#[test]
fn finished_jobs_are_deleted_after_their_ttl_an_array_parent_with_its_children() {
    let mut o = world(vec![], vec![]);
    let mut q = queue("q", &["ce"]);
    q.spec.job_ttl_seconds_after_finished = Some(600);
    o.queues = vec![Arc::new(q)];
    let parent = |name: &str, stopped: Seconds, ttl: u32| {
        let mut p = array(finished(name, stopped, Some(ttl)), 2);
        if let Some(s) = p.status.as_mut() {
            s.array_status = Some(ArrayStatus {
                size: 2,
                succeeded: 2,
                ..ArrayStatus::default()
            });
        }
        p
    };
    // Children carry their parent's spec, TTL included, and finished long ago: they go
    // only with their parent.
    let expired = parent("arr", NOW - 100, 60);
    let young = parent("young-arr", NOW - 100, 1000);
    let kids = |p: &BatchJob| -> Vec<BatchJob> {
        (0..2)
            .map(|i| {
                let mut c = child(p, i);
                c.status = Some(BatchJobStatus {
                    phase: Some(JobPhase::Succeeded),
                    stopped_at: Some(time(NOW - 5000)),
                    ..Default::default()
                });
                c
            })
            .collect()
    };
    let mut orphan = finished("gone-0", NOW - 5000, None);
    orphan.spec.array_index = Some(0);
    orphan.metadata.labels = Some(BTreeMap::from([(
        LABEL_ARRAY_PARENT.to_string(),
        "gone".to_string(),
    )]));
    let mut running = with_status(
        job("running", "1", "1Gi", 0),
        BatchJobStatus {
            phase: Some(JobPhase::Running),
            node: Some("n1".into()),
            ..Default::default()
        },
    );
    running.spec.ttl_seconds_after_finished = Some(0);
    let mut jobs = vec![
        // The queue's default (600 s): one past it, one not yet.
        finished("old", NOW - 601, None),
        finished("recent", NOW - 599, None),
        // The job's own TTL wins over the queue's.
        finished("own", NOW - 11, Some(10)),
        finished("own-long", NOW - 700, Some(3600)),
        running,
        orphan,
    ];
    jobs.extend(kids(&expired));
    jobs.extend(kids(&young));
    jobs.push(expired);
    jobs.push(young);
    o.jobs = jobs.into_iter().map(Arc::new).collect();
    o.nodes = vec![Arc::new(n1())];

    let d = run(&o);
    let deleted: Vec<(&str, bool)> = d
        .delete_jobs
        .iter()
        .map(|x| (x.name.as_str(), x.array_parent))
        .collect();
    assert_eq!(
        deleted,
        [
            ("arr-0", false),
            ("arr-1", false),
            ("gone-0", false),
            ("old", false),
            ("own", false),
            ("arr", true),
        ]
    );
    assert_eq!(d.delete_jobs[0].uid.as_deref(), Some("uid-arr-0"));
    assert!(
        d.jobs
            .iter()
            .all(|u| !deleted.iter().any(|(n, _)| *n == u.name)),
        "no write to a job being deleted: {:?}",
        d.jobs
    );
    settle(&mut o);
    let mut left: Vec<String> = o
        .jobs
        .iter()
        .filter_map(|j| j.metadata.name.clone())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            "own-long",
            "recent",
            "running",
            "young-arr",
            "young-arr-0",
            "young-arr-1"
        ]
    );
}

/// What a controller remembers of settled waiting jobs ([`Settled`]) changes no decision:
/// over random histories (submissions, deletions, agents' reports, time passing, nodes
/// coming and going, every write bumping the object's resourceVersion as the API server
/// does), a pass with the memory decides exactly what a first pass would.
///
/// With parking ([`crate::scheduler::park`]: later members of a backlog class nothing
/// can take are left out of the snapshot between full passes) the check is relaxed in
/// one place only, the queue fields: a member left out keeps its written position and
/// estimated start until the next full pass, and here, where a class keeps only its
/// first [`DecideConfig::parked_kept`] (0–2) members in the snapshot instead of the
/// forecast's 1,000, the other waiting jobs' estimated starts are projected without
/// the members left out. So job writes are compared without those fields (a write of
/// them alone is left out on both sides), the plan's positions must still be equal
/// for every job it positions (first-in first-out counts the members left out), and
/// its reasons equal for every job it gives one; everything else is compared whole.
mod settled_memory {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Step {
        Pass,
        Start(usize),
        Exit(usize, i32),
        Wait(u64),
        /// A new job of this many cpu (8: larger than any instance).
        Submit(u32),
        /// A new job depending on job `i`.
        Depend(usize),
        Delete(usize),
        AddNode,
        RemoveNode,
        /// A new array job of this many children (created by the passes, with a
        /// window of 2 waiting children).
        Array(u32),
        /// A user cancels job `i` (spec.cancel).
        Cancel(usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            5 => Just(Step::Pass),
            1 => (1..6u32).prop_map(Step::Array),
            1 => (0..12usize).prop_map(Step::Cancel),
            2 => (0..12usize).prop_map(Step::Start),
            2 => (0..12usize, prop_oneof![Just(0), Just(1)]).prop_map(|(j, c)| Step::Exit(j, c)),
            1 => (1..400u64).prop_map(Step::Wait),
            2 => prop_oneof![Just(1u32), Just(2), Just(8)].prop_map(Step::Submit),
            1 => (0..12usize).prop_map(Step::Depend),
            1 => (0..12usize).prop_map(Step::Delete),
            1 => Just(Step::AddNode),
            1 => Just(Step::RemoveNode),
        ]
    }

    /// A job as the API server holds it: a uid and a resourceVersion.
    fn stored(name: &str, cpu: &str, rv: u64) -> BatchJob {
        let mut j = retrying(job(name, cpu, "1Gi", 1), 2, Some(30));
        // Some are deleted a while after they finish.
        if rv % 2 == 0 {
            j.spec.ttl_seconds_after_finished = Some(300);
        }
        j.metadata.uid = Some(format!("uid-{name}"));
        j.metadata.resource_version = Some(rv.to_string());
        j
    }

    /// Gives every job that changed since `before` a new resourceVersion.
    fn bump(o: &mut Observed, before: &[Arc<BatchJob>], rv: &mut u64) {
        for j in &mut o.jobs {
            let same = before
                .iter()
                .any(|b| b.metadata == j.metadata && b.spec == j.spec && b.status == j.status);
            if !same {
                *rv += 1;
                Arc::make_mut(j).metadata.resource_version = Some(rv.to_string());
            }
        }
    }

    fn node_at(i: usize, now: Seconds) -> Arc<BatchNode> {
        Arc::new(node(&format!("n{i}"), "ce", "2", "8Gi", now))
    }

    /// `a` and `b` decide the same (whether each was a full pass aside).
    fn same(a: &Decisions, b: &Decisions) {
        let text = |d: &Decisions| {
            let mut d = d.clone();
            d.full_pass = false;
            format!("{d:?}")
        };
        assert_eq!(text(a), text(b));
    }

    /// `fresh` (a first pass) and `parked` (a pass with memory that may park) decide the
    /// same, queue fields aside (see the module documentation).
    fn same_but_parked(o: &Observed, fresh: &Decisions, parked: &Decisions) {
        let observed = |name: &str| {
            let j = o
                .jobs
                .iter()
                .find(|j| j.metadata.name.as_deref() == Some(name));
            let mut s = status::owned_job_status(j.and_then(|j| j.status.as_ref()));
            crate::controller::estimates::clear_queue_fields(&mut s);
            s
        };
        let strip = |d: &Decisions| {
            let mut d = d.clone();
            d.jobs = d
                .jobs
                .into_iter()
                .filter_map(|mut u| {
                    if let Some(s) = u.status.as_mut() {
                        crate::controller::estimates::clear_queue_fields(s);
                        let mut current = observed(&u.name);
                        current.observed_generation = s.observed_generation;
                        if *s == current {
                            u.status = None;
                        }
                    }
                    (u.status.is_some() || u.label.is_some()).then_some(u)
                })
                .collect();
            d.plan.unplaced.clear();
            d.plan.queue.clear();
            d.parked_classes = 0;
            d.parked_jobs = 0;
            d.carry = carry::CarryChanges::default();
            d
        };
        same(&strip(fresh), &strip(parked));
        for (id, q) in &parked.plan.queue {
            assert_eq!(
                fresh.plan.queue.get(id).map(|f| f.position),
                Some(q.position),
                "position of {id}"
            );
        }
        for (id, r) in &parked.plan.unplaced {
            assert_eq!(fresh.plan.unplaced.get(id), Some(r), "reason of {id}");
        }
        assert_eq!(
            fresh.plan.unplaced.len(),
            parked.plan.unplaced.len() + parked.parked_jobs,
            "only the jobs left out have no reason"
        );
        assert_eq!(
            fresh.plan.queue.len(),
            parked.plan.queue.len() + parked.parked_jobs,
            "only the jobs left out have no position"
        );
    }

    /// After `pass` (a full pass or a refresh), every waiting job's queue position, as
    /// it writes it or as observed, is the one `fresh` (a first pass) gives it, up to a
    /// move that is not material ([`crate::scheduler::forecast::material_change`]).
    fn positions_refreshed(o: &Observed, fresh: &Decisions, pass: &Decisions, now: Seconds) {
        for (id, q) in &fresh.plan.queue {
            let (ns, name) = id.0.split_once('/').unwrap_or_default();
            let written = pass
                .jobs
                .iter()
                .find(|u| u.namespace == ns && u.name == name)
                .and_then(|u| u.status.as_ref())
                .or_else(|| {
                    o.jobs
                        .iter()
                        .find(|j| j.metadata.name.as_deref() == Some(name))
                        .and_then(|j| j.status.as_ref())
                })
                .and_then(|s| s.queue_position);
            assert!(
                !crate::scheduler::forecast::material_change(
                    written.map(|p| (p, None)),
                    (q.position, None),
                    now
                ),
                "{id}: position {written:?} after the pass, {} in a full pass; in pass plan {:?}; parked {} classes {}; written {:?}",
                q.position,
                pass.plan.queue.get(id),
                pass.parked_jobs,
                pass.parked_classes,
                pass.jobs
                    .iter()
                    .find(|u| u.name == name)
                    .map(|u| u.status.as_ref().map(|s| s.queue_position))
            );
        }
    }

    /// Queues of the parking world: `q` on `ce` (2 cpu, max 2, 1–3 nodes: at and below
    /// its maximum), `r` on `small` (2 cpu, max 1, one node: always at its maximum), `s`
    /// on both (two environments: a class of it never parks unless too large).
    const QUEUES: [&str; 3] = ["q", "r", "s"];

    fn parking_step() -> impl Strategy<Value = (Step, usize, u64)> {
        (step(), 0..3usize, 0..3u64)
    }

    /// Plays `steps` (each with a queue index and a creation time for the job it
    /// submits) on a world of six stored jobs and one environment `ce` (2 cpu, max 2):
    /// `place` gives a new job its queue and creation time, `set_up` adjusts the world,
    /// `fleet(nodes, now)` is its nodes (1–3 of `ce`), and `pass` checks each pass and
    /// returns the decisions then applied. The world of both property tests below.
    fn play(
        steps: Vec<(Step, usize, u64)>,
        place: impl Fn(BatchJob, usize, u64) -> BatchJob,
        set_up: impl FnOnce(&mut Observed),
        fleet: impl Fn(usize, Seconds) -> Vec<Arc<BatchNode>>,
        mut pass: impl FnMut(&Observed, Seconds) -> Decisions,
    ) {
        let mut rv = 100;
        let jobs: Vec<BatchJob> = (0..6u64)
            .map(|i| place(stored(&format!("j{i}"), "1", i), (i % 3) as usize, 1))
            .collect();
        let mut o = world(jobs, vec![]);
        o.compute_environments = vec![Arc::new(ce("ce", "2", "8Gi", 2))];
        set_up(&mut o);
        let mut nodes = 1;
        let mut now = NOW;
        o.nodes = fleet(nodes, now);
        let mut next = 6;
        for (s, queue_index, created) in steps {
            let before = o.jobs.clone();
            let name = |i: usize| {
                before
                    .get(i % before.len().max(1))
                    .and_then(|j| j.metadata.name.clone())
            };
            match s {
                Step::Pass => {
                    o.nodes = fleet(nodes, now);
                    let d = pass(&o, now);
                    apply(&mut o, &d);
                }
                Step::Array(size) => {
                    o.jobs
                        .push(Arc::new(array(stored(&format!("j{next}"), "1", 0), size)));
                    next += 1;
                }
                Step::Cancel(i) => {
                    let Some(name) = name(i) else { continue };
                    if let Some(j) = o
                        .jobs
                        .iter_mut()
                        .find(|j| j.metadata.name.as_deref() == Some(name.as_str()))
                    {
                        Arc::make_mut(j).spec.cancel = Some(crate::api::batch_job::CancelRequest {
                            message: Some("proptest".into()),
                        });
                    }
                }
                Step::Start(i) | Step::Exit(i, _) => {
                    let Some(name) = name(i) else { continue };
                    let code = if let Step::Exit(_, code) = s {
                        Some(code)
                    } else {
                        None
                    };
                    agent(&mut o, &name, reported_at(now, code));
                }
                Step::Wait(secs) => now += secs,
                Step::Submit(cpu) => {
                    let j = stored(&format!("j{next}"), &cpu.to_string(), 0);
                    o.jobs.push(Arc::new(place(j, queue_index, created)));
                    next += 1;
                }
                Step::Depend(i) => {
                    let Some(on) = name(i) else { continue };
                    let j = depends_on(stored(&format!("j{next}"), "1", 0), &on);
                    o.jobs.push(Arc::new(place(j, queue_index, created)));
                    next += 1;
                }
                Step::Delete(i) => {
                    let Some(name) = name(i) else { continue };
                    o.jobs
                        .retain(|j| j.metadata.name.as_deref() != Some(name.as_str()));
                }
                Step::AddNode => nodes = (nodes + 1).min(3),
                Step::RemoveNode => nodes = nodes.saturating_sub(1),
            }
            bump(&mut o, &before, &mut rv);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// [`settled_memory_changes_no_decision`] in a world whose backlogs park: three
        /// queues over two environments, jobs of 1, 2 and 8 cpu (8: larger than every
        /// instance), submitted at mixed times (a new job may come before older waiting
        /// ones in its queue), full passes every 100 s, classes keeping 0–2 members.
        #[test]
        fn parked_backlogs_change_no_decision(
            steps in proptest::collection::vec(parking_step(), 1..80),
            parked_kept in 0..3usize,
        ) {
            let place = |mut j: BatchJob, queue_index: usize, created: u64| {
                j.spec.queue = QUEUES[queue_index].to_owned();
                j.metadata.creation_timestamp = Some(time(created));
                j
            };
            let set_up = |o: &mut Observed| {
                o.compute_environments.push(Arc::new(ce("small", "2", "8Gi", 1)));
                o.queues = vec![
                    Arc::new(queue("q", &["ce"])),
                    Arc::new(queue("r", &["small"])),
                    Arc::new(queue("s", &["ce", "small"])),
                ];
            };
            let fleet = |nodes: usize, now: Seconds| {
                let mut v: Vec<Arc<BatchNode>> = (0..nodes).map(|i| node_at(i, now)).collect();
                v.push(Arc::new(node("m0", "small", "2", "8Gi", now)));
                v
            };
            let mut settled = Settled::default();
            let config = DecideConfig {
                array_children_waiting: 2,
                full_pass_interval: 100,
                parked_kept,
                ..DecideConfig::default()
            };
            // And with the parked jobs carried between passes, as the controller's
            // loop runs them: through a job index that hands a pass only the jobs it
            // does not carry.
            let mut carrying = Settled::default();
            let mut index = carry::JobIndex::default();
            let carried = DecideConfig { carry_parked: true, ..config };
            play(steps, place, set_up, fleet, |o, now| {
                // In the index's order (events come in the order of the jobs).
                let mut o = o.clone();
                o.jobs.sort_by_key(|j| carry::index_key(j));
                let o = &o;
                let fresh = decide(o, &config, now);
                let remembered = decide_with(o, &config, now, &mut settled);
                same_but_parked(o, &fresh, &remembered);
                index.sync(&o.jobs);
                let with_carry = index.decide(&mut o.clone(), &carried, now, &mut carrying);
                same_but_parked(o, &fresh, &with_carry);
                if with_carry.full_pass {
                    positions_refreshed(o, &fresh, &with_carry, now);
                }
                assert_eq!(index.carried(), carrying.carried(), "the index and the memory carry the same jobs");
                fresh
            });
        }

        #[test]
        fn settled_memory_changes_no_decision(steps in proptest::collection::vec(step(), 1..80)) {
            let steps = steps.into_iter().map(|s| (s, 0, 0)).collect();
            let fleet = |nodes: usize, now: Seconds| (0..nodes).map(|i| node_at(i, now)).collect();
            let mut settled = Settled::default();
            let config = DecideConfig { array_children_waiting: 2, ..DecideConfig::default() };
            play(steps, |j, _, _| j, |_| {}, fleet, |o, now| {
                let fresh = decide(o, &config, now);
                let remembered = decide_with(o, &config, now, &mut settled);
                same(&fresh, &remembered);
                fresh
            });
        }
    }

    #[test]
    fn a_settled_backlog_is_remembered_and_decided_the_same() {
        // One 2-cpu node, at the environment's maximum: one job runs, the rest wait.
        let mut rv = 100;
        let mut o = one_node_backlog();
        let mut settled = Settled::default();
        let config = DecideConfig::default();
        for pass in 0..4 {
            let before = o.jobs.clone();
            let fresh = decide(&o, &config, NOW);
            let remembered = decide_with(&o, &config, NOW, &mut settled);
            same(&fresh, &remembered);
            if pass >= 2 {
                assert!(fresh.jobs.is_empty(), "settled: {:?}", fresh.jobs);
            }
            apply(&mut o, &fresh);
            bump(&mut o, &before, &mut rv);
        }
        assert_eq!(settled.len(), 19, "every waiting job is remembered");
        // A new job that fits nowhere joins the backlog; the one running ends and the
        // next is bound: the memory decides as a first pass does.
        let before = o.jobs.clone();
        o.jobs.push(Arc::new(stored("w20", "2", 0)));
        let running = o
            .jobs
            .iter()
            .find(|j| j.status.as_ref().and_then(|s| s.node.as_ref()).is_some())
            .and_then(|j| j.metadata.name.clone())
            .expect("one job runs");
        agent(&mut o, &running, exited(0));
        bump(&mut o, &before, &mut rv);
        let fresh = decide(&o, &config, NOW);
        let remembered = decide_with(&o, &config, NOW, &mut settled);
        same(&fresh, &remembered);
        assert_eq!(fresh.plan.bindings.len(), 1, "{:?}", fresh.plan);
        // A deleted job is forgotten; the rest stay remembered.
        let before = o.jobs.clone();
        apply(&mut o, &fresh);
        o.jobs.retain(|j| j.metadata.name.as_deref() != Some("w19"));
        bump(&mut o, &before, &mut rv);
        for _ in 0..3 {
            let before = o.jobs.clone();
            let fresh = decide(&o, &config, NOW);
            same(&fresh, &decide_with(&o, &config, NOW, &mut settled));
            apply(&mut o, &fresh);
            bump(&mut o, &before, &mut rv);
        }
        // Every job but the running one: 18 waiting and the finished one.
        let running = o
            .jobs
            .iter()
            .filter(|j| j.status.as_ref().and_then(|s| s.node.as_ref()).is_some())
            .count();
        assert_eq!((settled.len(), o.jobs.len() - running), (19, 19));
    }

    #[test]
    fn a_refresh_writes_the_positions_a_full_pass_writes_and_keeps_the_rest_carried() {
        // Jobs of 4 cpu in an environment of 2-cpu instances: never placed, no
        // estimated start; 20 of them wait, carried beyond their queue's first 2. The
        // controller's loop: the carrying passes' writes are what the world gets.
        let mut rv = 100;
        let mut o = world(
            (0..20)
                .map(|i| stored(&format!("w{i:02}"), "4", i))
                .collect(),
            vec![node("n0", "ce", "2", "8Gi", NOW)],
        );
        o.compute_environments = vec![Arc::new(ce("ce", "2", "8Gi", 1))];
        let config = DecideConfig {
            full_pass_interval: 100,
            parked_kept: 2,
            carry_parked: true,
            ..DecideConfig::default()
        };
        let mut settled = Settled::default();
        let mut index = carry::JobIndex::default();
        let mut pass = |o: &mut Observed, now: Seconds| {
            index.sync(&o.jobs);
            let before = o.jobs.clone();
            let d = index.decide(&mut o.clone(), &config, now, &mut settled);
            apply(o, &d);
            bump(o, &before, &mut rv);
            (d, index.carried())
        };
        for _ in 0..4 {
            pass(&mut o, NOW);
        }
        let position = |o: &Observed, name: &str| {
            o.jobs
                .iter()
                .find(|j| j.metadata.name.as_deref() == Some(name))
                .and_then(|j| j.status.as_ref()?.queue_position)
        };
        assert_eq!(
            (position(&o, "w00"), position(&o, "w19")),
            (Some(1), Some(20))
        );
        let (d, carried) = pass(&mut o, NOW);
        assert_eq!((d.parked_jobs, carried), (18, 18));
        // Three jobs submitted as early, whose names come first: they go ahead of the
        // backlog, which moves back by three; the passes that park leave the carried
        // jobs' positions as written.
        for (i, name) in ["a0", "a1", "a2"].into_iter().enumerate() {
            o.jobs.push(Arc::new(stored(name, "4", 10_000 + i as u64)));
        }
        for _ in 0..3 {
            let (d, _) = pass(&mut o, NOW + 1);
            assert!(!d.full_pass);
        }
        // The new jobs and the first of the backlog came into those passes' snapshots
        // (the queue's first parked jobs) and were written (a0..a2, w00..w03: 1..7);
        // w04.. kept theirs (5..20, now 8..23).
        let positions = |o: &Observed, names: &[&str]| -> Vec<Option<u32>> {
            names.iter().map(|n| position(o, n)).collect()
        };
        assert_eq!(
            positions(&o, &["a0", "a2", "w00", "w03", "w04", "w05", "w19"]),
            [1, 3, 4, 7, 5, 6, 20].map(Some),
            "not refreshed yet"
        );
        // The refresh writes what a full pass writes: the positions that moved
        // materially (w04: 5 → 8, the first five positions are exact; w05..w19 moved
        // by less than a factor of 4), and nothing else; the others stay carried.
        let later = NOW + 101;
        let fresh = decide(&o, &config, later);
        let (d, carried) = pass(&mut o, later);
        assert!(d.full_pass, "a refresh");
        let written = |d: &Decisions| -> Vec<(String, Option<u32>)> {
            d.jobs
                .iter()
                .map(|u| {
                    (
                        u.name.clone(),
                        u.status.as_ref().and_then(|s| s.queue_position),
                    )
                })
                .collect()
        };
        assert_eq!(written(&d), written(&fresh));
        assert_eq!(d.jobs, fresh.jobs);
        let names: Vec<String> = written(&d).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["w04"]);
        assert_eq!(position(&o, "w04"), Some(8));
        assert_eq!(carried, 20, "the rest stay carried: {carried}");
        // The written ones are decided again, and carried again once settled.
        for _ in 0..3 {
            pass(&mut o, later + 1);
        }
        let (d, carried) = pass(&mut o, later + 1);
        assert!(d.jobs.is_empty(), "{:?}", d.jobs);
        assert_eq!((d.parked_jobs, carried), (21, 21));
    }

    /// One 2-cpu node, at its environment's maximum, and 20 jobs of 2 cpu: one runs,
    /// 19 wait.
    fn one_node_backlog() -> Observed {
        let mut o = world(
            (0..20)
                .map(|i| stored(&format!("w{i:02}"), "2", i))
                .collect(),
            vec![node("n0", "ce", "2", "8Gi", NOW)],
        );
        o.compute_environments = vec![Arc::new(ce("ce", "2", "8Gi", 1))];
        o
    }

    #[test]
    fn a_parked_backlog_is_left_out_until_a_member_could_run() {
        // One 2-cpu node, at the environment's maximum: one job runs, 19 wait. Classes
        // keep their first 2 members; full passes every 100 s.
        let mut rv = 100;
        let mut o = one_node_backlog();
        let mut settled = Settled::default();
        let config = DecideConfig {
            full_pass_interval: 100,
            parked_kept: 2,
            ..DecideConfig::default()
        };
        let mut left_out = Vec::new();
        for _ in 0..4 {
            let before = o.jobs.clone();
            let fresh = decide(&o, &config, NOW);
            let remembered = decide_with(&o, &config, NOW, &mut settled);
            same_but_parked(&o, &fresh, &remembered);
            left_out.push(remembered.parked_jobs);
            apply(&mut o, &fresh);
            bump(&mut o, &before, &mut rv);
        }
        // Once settled, the 19 waiting jobs are one class: its first 2 stay, 17 are
        // left out; the memory still holds them all.
        assert_eq!(left_out.last(), Some(&17), "{left_out:?}");
        assert_eq!(settled.len(), 19);
        // The running job ends: the node is free, the class no longer parks, and the
        // next job is bound as a first pass binds it.
        let before = o.jobs.clone();
        let running = o
            .jobs
            .iter()
            .find(|j| j.status.as_ref().and_then(|s| s.node.as_ref()).is_some())
            .and_then(|j| j.metadata.name.clone())
            .expect("one job runs");
        agent(&mut o, &running, exited(0));
        bump(&mut o, &before, &mut rv);
        let fresh = decide(&o, &config, NOW);
        let remembered = decide_with(&o, &config, NOW, &mut settled);
        same(&fresh, &remembered);
        assert_eq!(remembered.parked_jobs, 0);
        assert_eq!(fresh.plan.bindings.len(), 1, "{:?}", fresh.plan);
        // After the interval, a full pass: nothing left out, the same decisions.
        let before = o.jobs.clone();
        apply(&mut o, &fresh);
        bump(&mut o, &before, &mut rv);
        let later = NOW + 100;
        let _ = decide_with(&o, &config, NOW + 1, &mut settled);
        let fresh = decide(&o, &config, later);
        let remembered = decide_with(&o, &config, later, &mut settled);
        assert_eq!(remembered.parked_jobs, 0, "a full pass");
        same(&fresh, &remembered);
    }

    #[test]
    fn a_carried_backlog_is_not_handed_to_passes_and_is_carried_again_after_a_refresh() {
        // The world above, run as the controller's loop runs it: through a job index,
        // the parked jobs carried.
        let mut rv = 100;
        let mut o = one_node_backlog();
        let mut settled = Settled::default();
        let config = DecideConfig {
            full_pass_interval: 100,
            parked_kept: 2,
            carry_parked: true,
            ..DecideConfig::default()
        };
        let mut index = carry::JobIndex::default();
        let mut pass = |o: &Observed, now: Seconds| {
            index.sync(&o.jobs);
            let mut handed = o.clone();
            let d = index.decide(&mut handed, &config, now, &mut settled);
            (d, handed.jobs.len(), index.carried())
        };
        for _ in 0..4 {
            let before = o.jobs.clone();
            let fresh = decide(&o, &config, NOW);
            let (remembered, _, _) = pass(&o, NOW);
            same_but_parked(&o, &fresh, &remembered);
            apply(&mut o, &fresh);
            bump(&mut o, &before, &mut rv);
        }
        // Settled: 17 carried, only the running job and the class's first 2 handed to
        // a pass, which changes nothing.
        let (d, handed, carried) = pass(&o, NOW);
        assert_eq!((d.parked_jobs, handed, carried), (17, 3, 17));
        assert!(d.jobs.is_empty() && d.carry.parked.is_empty() && d.carry.unparked.is_empty());
        // After the interval, a refresh. These jobs wait behind a running one and have
        // an estimated start, which a refresh cannot confirm without planning them when
        // classes keep fewer than the forecast projects: it plans them (as a full
        // pass), writes nothing (nothing moved), and hands them back to the index.
        let later = NOW + 100;
        let fresh = decide(&o, &config, later);
        let (d, handed, carried) = pass(&o, later);
        assert!(d.full_pass, "a refresh");
        same_but_parked(&o, &fresh, &d);
        positions_refreshed(&o, &fresh, &d, later);
        assert!(d.jobs.is_empty(), "{:?}", d.jobs);
        assert_eq!((d.parked_jobs, d.carry.unparked.len()), (0, 17));
        assert_eq!((handed, carried), (3, 0));
        // The pass after it carries them again.
        let (d, handed, carried) = pass(&o, later + 1);
        assert_eq!((d.parked_jobs, handed, carried), (17, 20, 17));
        let (d, handed, carried) = pass(&o, later + 1);
        assert_eq!((d.parked_jobs, handed, carried), (17, 3, 17));
        // One of them is cancelled: its new object is handed to the next pass, which
        // decides it as a first pass does.
        let before = o.jobs.clone();
        let last = o
            .jobs
            .iter_mut()
            .find(|j| j.metadata.name.as_deref() == Some("w19"))
            .expect("w19");
        Arc::make_mut(last).spec.cancel = Some(Default::default());
        bump(&mut o, &before, &mut rv);
        let fresh = decide(&o, &config, later + 2);
        let (d, handed, carried) = pass(&o, later + 2);
        same_but_parked(&o, &fresh, &d);
        assert_eq!((handed, carried), (4, 16));
        assert!(
            d.jobs.iter().any(|u| u.name == "w19"),
            "the cancel is decided"
        );
    }
}
