//! Step 3: the scheduler's plan onto the jobs (bindings, phase changes, dependency
//! failures, why each waiting job is not running) and invalid jobs' reasons.

use std::collections::BTreeMap;

use crate::api::BatchNode;
use crate::api::batch_job::{AttemptStatus, JobPhase};
use crate::scheduler::{DEPENDENCY_FAILED, JobId, Plan, Reason, Seconds};

use super::super::time::time;
use super::super::{CONDITION_SCHEDULED, reasons};
use super::snapshot::{self, api_phase, phase};
use super::status::{owned_job_status, reason_code, set_condition};
use super::{Note, Work, event, object_ref};
use crate::controller::estimates;
use crate::scheduler::estimate::Estimate;
use crate::scheduler::forecast;

/// Step 3: the plan onto the jobs' desired status (`definitions`: to resolve the
/// template a binding pins).
#[allow(clippy::too_many_arguments)] // the pass's own inputs, each read here
pub(super) fn apply_plan(
    plan: &Plan,
    built: &snapshot::Built,
    definitions: &snapshot::Definitions<'_>,
    work: &mut BTreeMap<JobId, Work<'_>>,
    nodes: &BTreeMap<&str, &BatchNode>,
    fleet_errors: &BTreeMap<String, super::FleetProblem>,
    now: Seconds,
    events: &mut Vec<Note>,
) {
    for c in &plan.phase_changes {
        if let Some(w) = work.get_mut(&c.job) {
            w.desired.phase = Some(api_phase(c.to));
        }
    }
    for f in &plan.dependency_failures {
        if let Some(w) = work.get_mut(&f.job) {
            let d = &mut w.desired;
            d.phase = Some(JobPhase::Failed);
            d.reason = Some(DEPENDENCY_FAILED.into());
            d.message = Some(format!("dependency {} failed", f.dependency));
            d.stopped_at = Some(time(now));
            d.not_before = None;
            let generation = w.job.metadata.generation;
            set_condition(
                &mut d.conditions,
                CONDITION_SCHEDULED,
                false,
                DEPENDENCY_FAILED,
                &format!("dependency {} failed", f.dependency),
                generation,
                now,
            );
            event(
                events,
                object_ref(w.job),
                true,
                reasons::FAILED,
                format!("dependency {} failed", f.dependency),
            );
        }
    }
    for b in &plan.bindings {
        let Some(w) = work.get_mut(&b.job) else {
            continue;
        };
        let generation = w.job.metadata.generation;
        let d = &mut w.desired;
        let n = d.attempt.unwrap_or(0) + 1;
        d.phase = Some(JobPhase::Starting);
        d.node = Some(b.node.clone());
        d.attempt = Some(n);
        // The first binding pins the template the scheduler sized this job by (resolved
        // only now: a waiting job's template is never built).
        if d.template.is_none()
            && let Ok((template, definition)) = snapshot::resolve_template(w.job, definitions)
        {
            d.template = Some(template);
            d.definition = definition;
        }
        d.not_before = None;
        d.reason = None;
        d.attempts.retain(|a| a.attempt != n);
        d.attempts.push(AttemptStatus {
            attempt: n,
            node: Some(b.node.clone()),
            instance_id: nodes
                .get(b.node.as_str())
                .map(|x| x.spec.instance_id.clone()),
            ..AttemptStatus::default()
        });
        let msg = format!("attempt {n} bound to node {}", b.node);
        d.message = Some(msg.clone());
        set_condition(
            &mut d.conditions,
            CONDITION_SCHEDULED,
            true,
            reasons::BOUND,
            &msg,
            generation,
            now,
        );
        event(events, object_ref(w.job), false, reasons::BOUND, msg);
    }
    // The reasons of the jobs being decided, looked up from the smaller side (a
    // remembered backlog has reasons but is not in `work`); in id order either way.
    let reasons: Vec<(&JobId, &Reason)> = if work.len() < plan.unplaced.len() {
        work.keys()
            .filter_map(|id| plan.unplaced.get_key_value(id))
            .collect()
    } else {
        plan.unplaced.iter().collect()
    };
    for (id, reason) in reasons {
        // An array parent is known to the scheduler only through its children: in the
        // pass that creates them, a job depending on it is waiting, not missing it.
        let waiting_on;
        let reason = match reason {
            Reason::DependencyNotFound { dependency } if work.contains_key(dependency) => {
                waiting_on = Reason::WaitingOnDependency {
                    dependency: dependency.clone(),
                };
                &waiting_on
            }
            other => other,
        };
        let Some(w) = work.get_mut(id) else {
            continue;
        };
        let generation = w.job.metadata.generation;
        let d = &mut w.desired;
        let msg = match reason {
            Reason::Backoff { .. } => match &d.not_before {
                Some(t) => format!("retry backoff: runnable again at {}", t.0),
                None => reason.to_string(),
            },
            // Waiting for instances a fleet that fails cannot give: say so, not "booting".
            Reason::WaitingForBoot {
                compute_environment,
                ..
            } if fleet_errors.contains_key(compute_environment) => format!(
                "ce/{compute_environment} cannot launch instances: {}",
                fleet_errors
                    .get(compute_environment)
                    .map_or("", |p| p.message.as_str())
            ),
            other => other.to_string(),
        };
        d.message = Some(msg.clone());
        set_condition(
            &mut d.conditions,
            CONDITION_SCHEDULED,
            false,
            reason_code(reason),
            &msg,
            generation,
            now,
        );
    }
    queue_fields(plan, built, work, now);
    for (id, why) in &built.invalid_jobs {
        let Some(w) = work.get_mut(id) else {
            continue;
        };
        let generation = w.job.metadata.generation;
        let d = &mut w.desired;
        let p = phase(d.phase);
        if p.is_placed() || p.is_terminal() {
            continue;
        }
        d.phase.get_or_insert(JobPhase::Submitted);
        if d.message.as_deref() != Some(why.as_str()) {
            event(
                events,
                object_ref(w.job),
                true,
                reasons::INVALID_JOB,
                why.clone(),
            );
        }
        d.message = Some(why.clone());
        set_condition(
            &mut d.conditions,
            CONDITION_SCHEDULED,
            false,
            reasons::INVALID_JOB,
            why,
            generation,
            now,
        );
    }
}

/// Queue position, estimated start and duration on every Runnable job the scheduler
/// forecast; cleared on every other job.
fn queue_fields(
    plan: &Plan,
    built: &snapshot::Built,
    work: &mut BTreeMap<JobId, Work<'_>>,
    now: Seconds,
) {
    for (id, w) in work.iter_mut() {
        let Some(q) = plan.queue.get(id) else {
            estimates::clear_queue_fields(&mut w.desired);
            continue;
        };
        let estimate = built
            .snapshot
            .jobs
            .get(id)
            .map_or(Estimate::DEFAULT, forecast::estimate_of);
        let writing = w.desired != owned_job_status(w.job.status.as_ref());
        estimates::set_queue_fields(
            &mut w.desired,
            w.job.status.as_ref(),
            q,
            estimate,
            writing,
            now,
        );
    }
}
