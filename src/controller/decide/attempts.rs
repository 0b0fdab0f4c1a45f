//! Step 2: progress of the current attempt (started → Running; ended → Succeeded, retried
//! or Failed; on a lost or deleted node → ended with `NodeLost`).

use std::collections::{BTreeMap, BTreeSet};

use crate::api::BatchJob;
use crate::api::BatchNode;
use crate::api::batch_job::JobPhase;
use crate::api::batch_node::NodePhase as ApiNodePhase;
use crate::api::common::{JobTemplate, RetryAction};
use crate::api::protocol::AttemptReason;
use crate::scheduler::retry::{self, AttemptOutcome, FailCause, RetryDecision};
use crate::scheduler::{Phase, Seconds};

use super::super::reasons;
use super::super::time::time;
use super::snapshot::{self, effective_template, phase};
use super::{Note, Work, event, object_ref};

/// The retry strategy and backoff of a job's template.
pub(super) fn strategy(t: &JobTemplate) -> (retry::RetryStrategy, Option<retry::Backoff>) {
    let Some(r) = &t.retry_strategy else {
        return (retry::RetryStrategy::default(), None);
    };
    let s = retry::RetryStrategy {
        attempts: r.attempts,
        evaluate_on_exit: r
            .evaluate_on_exit
            .iter()
            .map(|e| retry::EvaluateOnExit {
                on_exit_code: e.on_exit_code.clone(),
                on_reason: e.on_reason.clone(),
                on_status_reason: e.on_status_reason.clone(),
                action: match e.action {
                    RetryAction::Retry => retry::Action::Retry,
                    RetryAction::Exit => retry::Action::Exit,
                },
            })
            .collect(),
    };
    let b = r.backoff.as_ref().map(|b| retry::Backoff {
        base_seconds: Seconds::from(b.initial_delay_seconds),
        max_seconds: Seconds::from(b.max_delay_seconds),
    });
    (s, b)
}

/// Describes an attempt's outcome for humans: `exit code 3 (Error)`.
pub(super) fn describe_outcome(o: &AttemptOutcome<'_>) -> String {
    match (o.exit_code, o.reason) {
        (Some(c), Some(r)) => format!("exit code {c} ({r})"),
        (Some(c), None) => format!("exit code {c}"),
        (None, Some(r)) => r.to_owned(),
        (None, None) => "no exit code".into(),
    }
}

/// What step 2 knows of the nodes.
pub(super) struct NodeFacts<'a, 'b> {
    /// Every node, by name.
    pub(super) nodes: &'b BTreeMap<&'a str, &'a BatchNode>,
    /// Each node's phase after step 1.
    pub(super) phase: &'b BTreeMap<&'a str, ApiNodePhase>,
    /// Nodes whose instance has left its (successfully described) fleet.
    pub(super) departed: &'b BTreeSet<&'a str>,
    /// Compute environments with a fleet (described or failing).
    pub(super) with_fleet: &'b BTreeSet<&'a str>,
}

/// Whether attempt `n` of `job`, bound to `node` and not started, will never start there:
/// the node was observed Draining (or its agent reported a Spot interruption notice), and
/// its agent's last heartbeat says it starts nothing
/// more and does not run the attempt. Such a binding is handed back to the scheduler.
fn refused_by_draining_node(job: &BatchJob, n: u32, node: Option<&BatchNode>) -> bool {
    let Some(st) = node.and_then(|x| x.status.as_ref()) else {
        return false;
    };
    (st.phase == Some(ApiNodePhase::Draining) || st.interruption.is_some())
        && st.accepting_attempts == Some(false)
        && !st.running_attempts.iter().any(|r| {
            r.attempt == n
                && Some(r.name.as_str()) == job.metadata.name.as_deref()
                && Some(r.namespace.as_str()) == job.metadata.namespace.as_deref()
        })
}

/// Step 2 for one job.
pub(super) fn progress(
    w: &mut Work<'_>,
    defs: &snapshot::Definitions<'_>,
    facts: &NodeFacts<'_, '_>,
    now: Seconds,
    events: &mut Vec<Note>,
) {
    let (nodes, node_phase) = (facts.nodes, facts.phase);
    let d = &mut w.desired;
    let p = phase(d.phase);
    if !p.is_placed() {
        return;
    }
    let (Some(n), Some(node)) = (d.attempt, d.node.clone()) else {
        return;
    };
    let Some(observed) = w
        .job
        .status
        .as_ref()
        .and_then(|s| s.attempts.iter().find(|a| a.attempt == n))
        .cloned()
    else {
        return;
    };
    let last_heartbeat = || {
        nodes
            .get(node.as_str())
            .and_then(|n| n.status.as_ref())
            .and_then(|s| s.heartbeat_time.as_ref())
            .map(|t| format!(" (last heartbeat {})", t.0))
            .unwrap_or_default()
    };
    // Fence, then retry: an attempt on a Lost node ends only once the node can no longer
    // run it (its instance left the fleet, or the BatchNode was deleted).
    let lost = match node_phase.get(node.as_str()) {
        None => Some(format!("node {node} was deleted")),
        Some(ApiNodePhase::Lost) if facts.departed.contains(node.as_str()) => Some(format!(
            "node {node} stopped heartbeating{} and its instance is gone",
            last_heartbeat()
        )),
        Some(ApiNodePhase::Lost) if observed.stopped_at.is_none() => {
            let with_fleet = nodes.get(node.as_str()).is_some_and(|x| {
                facts
                    .with_fleet
                    .contains(x.spec.compute_environment.as_str())
            });
            d.message = Some(if with_fleet {
                format!(
                    "attempt {n}: node {node} stopped heartbeating{}; retried once its instance is fenced",
                    last_heartbeat()
                )
            } else {
                format!(
                    "attempt {n}: node {node} stopped heartbeating{}; retried once the BatchNode is deleted (delete it when its instance is known to be gone)",
                    last_heartbeat()
                )
            });
            return;
        }
        Some(_) => None,
    };
    let regarding = object_ref(w.job);
    if p == Phase::Starting
        && observed.started_at.is_none()
        && observed.stopped_at.is_none()
        && lost.is_none()
        && refused_by_draining_node(w.job, n, nodes.get(node.as_str()).copied())
    {
        // Handed back: never started, so it does not count as an attempt.
        d.phase = Some(JobPhase::Runnable);
        d.node = None;
        d.attempts.retain(|a| a.attempt != n);
        d.attempt = n.checked_sub(1).filter(|k| *k > 0);
        d.message = Some(format!(
            "attempt {n} handed back: node {node} is draining and did not start it"
        ));
        event(
            events,
            regarding,
            false,
            reasons::HANDED_BACK,
            format!("attempt {n} handed back: node {node} is draining and did not start it"),
        );
        return;
    }
    let (stopped_at, exit_code, reason, status_reason) = if observed.stopped_at.is_some() {
        (
            observed.stopped_at.clone(),
            observed.exit_code,
            observed.reason.clone(),
            observed.status_reason.clone(),
        )
    } else if let Some(why) = lost {
        // The controller ends the attempt itself (and owns these fields from now on).
        if let Some(a) = d.attempts.iter_mut().find(|a| a.attempt == n) {
            a.stopped_at = Some(time(now));
            a.reason = Some(AttemptReason::NodeLost);
            a.status_reason = Some(why.clone());
        }
        event(
            events,
            regarding.clone(),
            true,
            reasons::NODE_LOST,
            format!("attempt {n}: {why}"),
        );
        (
            Some(time(now)),
            None,
            Some(AttemptReason::NodeLost),
            Some(why),
        )
    } else {
        if p == Phase::Starting
            && let Some(started) = &observed.started_at
        {
            d.phase = Some(JobPhase::Running);
            d.started_at = d.started_at.clone().or_else(|| Some(started.clone()));
            d.message = Some(format!("attempt {n} running on node {node}"));
            event(
                events,
                regarding,
                false,
                reasons::STARTED,
                format!("attempt {n} started on node {node}"),
            );
        }
        return;
    };

    // The attempt ended (it may have started and ended between two passes).
    if d.started_at.is_none() {
        d.started_at = observed.started_at.clone();
    }
    let outcome = AttemptOutcome {
        exit_code,
        reason: reason.as_ref().map(AttemptReason::as_str),
        status_reason: status_reason.as_deref(),
    };
    let what = describe_outcome(&outcome);
    d.node = None;
    d.not_before = None;
    if exit_code == Some(0)
        && reason
            .as_ref()
            .is_none_or(|r| *r == AttemptReason::Completed)
    {
        d.phase = Some(JobPhase::Succeeded);
        d.reason = Some(
            reason
                .as_ref()
                .unwrap_or(&AttemptReason::Completed)
                .to_string(),
        );
        d.message = Some(format!("attempt {n} succeeded on node {node}: {what}"));
        d.stopped_at = stopped_at.or_else(|| Some(time(now)));
        event(
            events,
            regarding,
            false,
            reasons::SUCCEEDED,
            format!("attempt {n} on node {node}: {what}"),
        );
        return;
    }
    // The pinned template (a deleted or edited definition changes nothing); a job bound
    // before templates were pinned falls back to resolving it now.
    let template = effective_template(w.job, defs).unwrap_or_else(|_| w.job.spec.template.clone());
    let (s, backoff) = strategy(&template);
    d.reason = Some(reason.as_ref().unwrap_or(&AttemptReason::Error).to_string());
    match retry::decide(&s, n, &outcome, backoff.as_ref(), now) {
        RetryDecision::Retry { runnable_at, .. } => {
            d.phase = Some(JobPhase::Runnable);
            let when = if runnable_at > now {
                d.not_before = Some(time(runnable_at));
                format!(" after a backoff until {}", time(runnable_at).0)
            } else {
                String::new()
            };
            d.message = Some(format!(
                "attempt {n} of {} failed on node {node}: {what}; retrying{when}",
                s.attempts
            ));
            event(
                events,
                regarding,
                true,
                reasons::RETRYING,
                format!(
                    "attempt {n} of {} failed: {what}; retrying{when}",
                    s.attempts
                ),
            );
        }
        RetryDecision::Fail(cause) => {
            let why = match cause {
                FailCause::ExitRule { rule } => {
                    format!("evaluateOnExit[{rule}] says EXIT")
                }
                FailCause::TimedOut => "timed-out attempts are not retried".to_owned(),
                FailCause::AttemptsExhausted { attempts } => {
                    format!("all {attempts} attempts used")
                }
            };
            d.phase = Some(JobPhase::Failed);
            d.stopped_at = stopped_at.or_else(|| Some(time(now)));
            d.message = Some(format!("attempt {n} failed on node {node}: {what}; {why}"));
            event(
                events,
                regarding,
                true,
                reasons::FAILED,
                format!("attempt {n}: {what}; {why}"),
            );
        }
    }
}
