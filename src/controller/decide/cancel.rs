//! Step 2b: cancel and terminate (`spec.cancel`, AWS Batch's CancelJob and TerminateJob).
//!
//! A job with `spec.cancel`, or an array child whose parent has it, that has not ended:
//! - not bound (Submitted, Pending, Runnable): Failed now, reason `Cancelled`;
//! - bound but not started, on a node that is not Lost: the binding is withdrawn (label
//!   removed, `node` cleared, the attempt entry dropped: it never counted), Failed with
//!   reason `Cancelled`. The agent stops anything it started meanwhile (the job left its
//!   watch), and its report is refused (the attempt is no longer current);
//! - started: the agent on its node sees `spec.cancel` and stops the attempt; when the
//!   attempt's end is reported (or it ends with `NodeLost`), the job is Failed with reason
//!   `Terminated` instead of being retried. An attempt that succeeded on its own before it
//!   was stopped leaves the job Succeeded.
//!
//! The message is the request's. Dependents then fail with `DependencyFailed` (the
//! scheduler). An array parent is Failed at once and its children are cancelled through
//! their parent; a running child gets `spec.cancel` written ([`Decisions::cancel_children`])
//! so that its agent sees it.

use crate::api::JobPhase;
use crate::api::batch_job::CancelRequest;
use crate::controller::time::time;
use crate::scheduler::Phase;

use super::*;

/// Job status reason: cancelled before it started.
pub const REASON_CANCELLED: &str = "Cancelled";
/// Job status reason: stopped while running.
pub const REASON_TERMINATED: &str = "Terminated";
/// Event reason: a running attempt is being stopped on request.
pub const EVENT_TERMINATING: &str = "TerminatingJob";

/// An array child to mark cancelled (`spec.cancel`), because its parent was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelChild {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// What to write.
    pub cancel: CancelRequest,
}

/// The cancel request that applies to each job: its own, or its array parent's (with the
/// parent named in the message).
pub(super) fn requests(jobs: &[&Arc<BatchJob>]) -> BTreeMap<JobId, CancelRequest> {
    let own: BTreeMap<JobId, &CancelRequest> = jobs
        .iter()
        .filter_map(|j| {
            let c = j.spec.cancel.as_ref()?;
            Some((job_id(j), c))
        })
        .collect();
    // Nothing asks for a cancel: no child needs looking at (no id built per job).
    if own.is_empty() {
        return BTreeMap::new();
    }
    let mut out: BTreeMap<JobId, CancelRequest> = own
        .iter()
        .map(|(id, c)| (id.clone(), (*c).clone()))
        .collect();
    for j in jobs {
        let Some(child) = snapshot::array_child(j) else {
            continue;
        };
        let id = job_id(j);
        if out.contains_key(&id) {
            continue;
        }
        if let Some(parent) = own.get(&child.parent) {
            let why = parent.message.as_deref().unwrap_or("cancelled on request");
            out.insert(
                id,
                CancelRequest {
                    message: Some(format!("array parent {} cancelled: {why}", child.parent)),
                },
            );
        }
    }
    out
}

fn message(c: &CancelRequest, started: bool) -> String {
    match (&c.message, started) {
        (Some(m), _) => m.clone(),
        (None, false) => "cancelled on request (spec.cancel)".into(),
        (None, true) => "terminated on request (spec.cancel)".into(),
    }
}

/// Step 2b for every job with a request; after [`super::attempts::progress`], before the
/// schedule (so a cancelled job is never bound).
pub(super) fn cancel(
    work: &mut BTreeMap<JobId, Work<'_>>,
    requests: &BTreeMap<JobId, CancelRequest>,
    facts: &NodeFacts<'_, '_>,
    now: Seconds,
    out: &mut Decisions,
) {
    for (id, req) in requests {
        let Some(w) = work.get_mut(id) else {
            continue;
        };
        let observed = w.job.status.as_ref();
        let observed_phase = phase(observed.and_then(|s| s.phase));
        if observed_phase.is_terminal() {
            // Ended before: the record stays as it is.
            continue;
        }
        let regarding = object_ref(w.job);
        let uid = w.job.metadata.uid.clone();
        if snapshot::is_array_parent(w.job) {
            fail(&mut w.desired, REASON_CANCELLED, message(req, false), now);
            event(
                &mut out.events,
                regarding,
                true,
                REASON_CANCELLED,
                message(req, false),
            );
            continue;
        }
        let n = observed.and_then(|s| s.attempt);
        let current = observed.and_then(|s| s.attempts.iter().find(|a| Some(a.attempt) == n));
        let started = current.is_some_and(|a| a.started_at.is_some());
        let ended = current.is_some_and(|a| a.stopped_at.is_some());
        let d = &mut w.desired;
        let desired_phase = phase(d.phase);
        if desired_phase.is_placed() {
            let node = d.node.clone().unwrap_or_default();
            let node_lost = facts.phase.get(node.as_str()) == Some(&ApiNodePhase::Lost);
            if desired_phase == Phase::Starting && !started && !ended && !node_lost {
                // Withdraw the binding: it never started, so it never counted.
                if let Some(n) = n {
                    d.attempts.retain(|a| a.attempt != n);
                    d.attempt = n.checked_sub(1).filter(|k| *k > 0);
                }
                d.node = None;
                fail(d, REASON_CANCELLED, message(req, false), now);
                event(
                    &mut out.events,
                    regarding,
                    true,
                    REASON_CANCELLED,
                    format!("binding to node {node} withdrawn: {}", message(req, false)),
                );
                continue;
            }
            // Running (or on a Lost node): its agent stops it; the end decides.
            let msg = format!(
                "terminating attempt {} on node {node}: {}",
                n.unwrap_or(0),
                message(req, true)
            );
            if observed.and_then(|s| s.message.as_deref()) != Some(msg.as_str()) {
                event(
                    &mut out.events,
                    regarding,
                    false,
                    EVENT_TERMINATING,
                    msg.clone(),
                );
            }
            d.message = Some(msg);
            if w.job.spec.cancel.is_none()
                && let (Some(namespace), Some(name)) = (
                    w.job.metadata.namespace.clone(),
                    w.job.metadata.name.clone(),
                )
            {
                out.cancel_children.push(CancelChild {
                    namespace,
                    name,
                    cancel: req.clone(),
                });
            }
            continue;
        }
        if desired_phase == Phase::Succeeded {
            // It finished on its own before it could be stopped.
            continue;
        }
        // Not bound, or its attempt ended in this pass (progress decided a retry or a
        // failure, or handed it back): never retried.
        let stopped_running = observed_phase.is_placed() && started;
        let reason = if stopped_running {
            REASON_TERMINATED
        } else {
            REASON_CANCELLED
        };
        // The retry or failure progress announced is superseded by this ending.
        out.events.retain(|e| {
            !(e.regarding.uid == uid
                && (e.reason == reasons::RETRYING || e.reason == reasons::FAILED))
        });
        let msg = message(req, stopped_running);
        let stopped = d.stopped_at.clone();
        fail(d, reason, msg.clone(), now);
        if stopped.is_some() {
            d.stopped_at = stopped;
        }
        let what = match (stopped_running, n) {
            (true, Some(n)) => format!("attempt {n} stopped: {msg}"),
            _ => msg,
        };
        event(&mut out.events, regarding, true, reason, what);
    }
}

fn fail(d: &mut BatchJobStatus, reason: &str, message: String, now: Seconds) {
    d.phase = Some(JobPhase::Failed);
    d.reason = Some(reason.to_owned());
    d.message = Some(message);
    d.not_before = None;
    d.stopped_at = Some(time(now));
}
