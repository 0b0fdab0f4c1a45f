//! PURE helpers for the status fields the controller owns: extracting them from an
//! observed status (so an apply always carries every field the controller owns), setting
//! conditions, and naming scheduler reasons.

use crate::api::batch_job::{AttemptStatus, BatchJobStatus};
use crate::api::batch_node::BatchNodeStatus;
use crate::api::common::Condition;
use crate::api::protocol::AttemptReason;
use crate::scheduler::{Reason, Seconds};

use crate::controller::time::time;

/// The part of a job's status the controller owns (PROTOCOL.md): everything but the
/// agent's attempt progress. Attempts the controller ended itself (`NodeLost`) keep the
/// end fields it wrote.
pub fn owned_job_status(s: Option<&BatchJobStatus>) -> BatchJobStatus {
    let Some(s) = s else {
        return BatchJobStatus::default();
    };
    BatchJobStatus {
        attempts: s.attempts.iter().map(owned_attempt).collect(),
        ..s.clone()
    }
}

fn owned_attempt(a: &AttemptStatus) -> AttemptStatus {
    let ended_by_controller = a.reason == Some(AttemptReason::NodeLost);
    AttemptStatus {
        attempt: a.attempt,
        node: a.node.clone(),
        instance_id: a.instance_id.clone(),
        started_at: None,
        stopped_at: if ended_by_controller {
            a.stopped_at.clone()
        } else {
            None
        },
        exit_code: None,
        reason: if ended_by_controller {
            a.reason.clone()
        } else {
            None
        },
        status_reason: if ended_by_controller {
            a.status_reason.clone()
        } else {
            None
        },
        log_tail: None,
    }
}

/// The part of a node's status the controller owns: all but the agent's heartbeat and
/// scale-in protection.
pub fn owned_node_status(s: Option<&BatchNodeStatus>) -> BatchNodeStatus {
    let Some(s) = s else {
        return BatchNodeStatus::default();
    };
    BatchNodeStatus {
        heartbeat_time: None,
        protected_from_scale_in: None,
        accepting_attempts: None,
        running_attempts: Vec::new(),
        interruption: None,
        log_endpoint: None,
        ..s.clone()
    }
}

/// Sets condition `type_`, keeping its `lastTransitionTime` when its status does not change.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Seconds,
) {
    let status = if status { "True" } else { "False" };
    if let Some(c) = conditions.iter_mut().find(|c| c.type_ == type_) {
        if c.status != status {
            c.last_transition_time = time(now);
        }
        c.status = status.into();
        c.reason = reason.into();
        c.message = message.into();
        c.observed_generation = generation;
    } else {
        conditions.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: generation,
            last_transition_time: time(now),
        });
    }
}

/// A CamelCase reason for a scheduler [`Reason`] (condition and Event reason).
pub fn reason_code(r: &Reason) -> &'static str {
    match r {
        Reason::QueueNotFound { .. } => "QueueNotFound",
        Reason::QueueDisabled { .. } => "QueueDisabled",
        Reason::NoEnabledComputeEnvironment { .. } => "NoEnabledComputeEnvironment",
        Reason::WaitingOnDependency { .. } => "WaitingOnDependency",
        Reason::DependencyNotFound { .. } => "DependencyNotFound",
        Reason::DependencyCycle => "DependencyCycle",
        Reason::Backoff { .. } => "RetryBackoff",
        Reason::TooLarge { .. } => "TooLarge",
        Reason::NoShapeFits { .. } => "NoShapeFits",
        Reason::WaitingForBoot { .. } => "WaitingForCapacity",
        Reason::WaitingForRunningJobs { .. } => "WaitingForRunningJobs",
        Reason::AtMaxInstances { .. } => "AtMaxInstances",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_status_drops_agent_progress_but_keeps_node_lost_ends() {
        let s = BatchJobStatus {
            attempt: Some(2),
            attempts: vec![
                AttemptStatus {
                    attempt: 1,
                    node: Some("n1".into()),
                    started_at: Some(time(5)),
                    stopped_at: Some(time(6)),
                    reason: Some(AttemptReason::NodeLost),
                    ..Default::default()
                },
                AttemptStatus {
                    attempt: 2,
                    node: Some("n2".into()),
                    started_at: Some(time(7)),
                    stopped_at: Some(time(8)),
                    exit_code: Some(1),
                    reason: Some(AttemptReason::Error),
                    log_tail: Some("boom".into()),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let o = owned_job_status(Some(&s));
        assert_eq!(o.attempt, Some(2));
        assert_eq!(o.attempts[0].stopped_at, Some(time(6)));
        assert_eq!(o.attempts[0].started_at, None);
        assert_eq!(
            o.attempts[1],
            AttemptStatus {
                attempt: 2,
                node: Some("n2".into()),
                ..Default::default()
            }
        );
    }

    #[test]
    fn condition_transition_time_moves_only_with_its_status() {
        let mut c = Vec::new();
        set_condition(&mut c, "Scheduled", false, "A", "a", Some(1), 10);
        set_condition(&mut c, "Scheduled", false, "B", "b", Some(1), 20);
        assert_eq!(c[0].last_transition_time, time(10));
        assert_eq!(c[0].reason, "B");
        set_condition(&mut c, "Scheduled", true, "C", "c", Some(1), 30);
        assert_eq!(c[0].last_transition_time, time(30));
        assert_eq!(c.len(), 1);
    }
}
