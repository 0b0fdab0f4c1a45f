//! Step 3b: `runnableSince`, and a queue's `jobStateTimeLimitActions` (AWS Batch): a job
//! Runnable for longer than an action's `maxTimeSeconds`, whose `Scheduled` condition now
//! gives the action's reason, is cancelled (Failed, reason `Cancelled`; the message names
//! the action, as AWS Batch's statusReason does). Pure: the time is an input.

use crate::api::JobPhase;
use crate::api::job_queue::{JobStateTimeLimitAction, StuckAction, StuckState};
use crate::controller::CONDITION_SCHEDULED;
use crate::controller::time::time;

use super::cancel::REASON_CANCELLED;
use super::*;

/// After the plan is on the jobs (their `Scheduled` reasons are this pass's).
pub(super) fn time_limits(
    work: &mut BTreeMap<JobId, Work<'_>>,
    queues: &[Arc<JobQueue>],
    now: Seconds,
    events: &mut Vec<Note>,
) {
    let actions: BTreeMap<&str, &[JobStateTimeLimitAction]> = queues
        .iter()
        .filter_map(|q| {
            Some((
                q.metadata.name.as_deref()?,
                q.spec.job_state_time_limit_actions.as_slice(),
            ))
        })
        .collect();
    for w in work.values_mut() {
        let d = &mut w.desired;
        if d.phase != Some(JobPhase::Runnable) || snapshot::is_array_parent(w.job) {
            d.runnable_since = None;
            continue;
        }
        let observed = w.job.status.as_ref();
        let was_runnable = observed.and_then(|s| s.phase) == Some(JobPhase::Runnable);
        let since = match (
            was_runnable,
            observed.and_then(|s| s.runnable_since.as_ref()),
        ) {
            (true, Some(t)) => seconds(t).min(now),
            _ => now,
        };
        d.runnable_since = Some(time(since));
        let Some(actions) = actions.get(w.job.spec.queue.as_str()) else {
            continue;
        };
        let Some(scheduled) = d
            .conditions
            .iter()
            .find(|c| c.type_ == CONDITION_SCHEDULED && c.status == "False")
        else {
            continue;
        };
        let waited = now.saturating_sub(since);
        let Some((i, a)) = actions.iter().enumerate().find(|(_, a)| {
            a.state == StuckState::Runnable
                && a.action == StuckAction::Cancel
                && waited >= Seconds::from(a.max_time_seconds)
                && a.reason
                    .condition_reasons()
                    .contains(&scheduled.reason.as_str())
        }) else {
            continue;
        };
        let msg = format!(
            "Canceled by JobStateTimeLimit action due to reason: {} (jq/{} jobStateTimeLimitActions[{i}]: Runnable for {waited}s, {}: {})",
            a.reason.as_str(),
            w.job.spec.queue,
            scheduled.reason,
            scheduled.message
        );
        d.phase = Some(JobPhase::Failed);
        d.reason = Some(REASON_CANCELLED.to_owned());
        d.message = Some(msg.clone());
        d.not_before = None;
        d.stopped_at = Some(time(now));
        d.runnable_since = None;
        event(events, object_ref(w.job), true, REASON_CANCELLED, msg);
    }
}
