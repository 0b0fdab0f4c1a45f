//! PURE: duration estimates from the custom resources, and the queue position and
//! estimated start the controller writes on Runnable jobs.
//!
//! - A JobDefinition's history is the durations of the last
//!   [`HISTORY_WINDOW`](crate::scheduler::estimate::HISTORY_WINDOW) successful attempts of
//!   the jobs pinned to it (`status.definition.name`), newest by `stoppedAt`, summarised
//!   robustly ([`History`]: median, p90).
//! - A job's estimate: `spec.expectedDurationSeconds`, else its definition's median,
//!   else its timeout ([`crate::scheduler::estimate::resolve`]).
//! - `status.queuePosition`, `status.estimatedStartTime` and `status.estimatedDuration`
//!   are set from the scheduler's [`QueueEstimate`] while a job is Runnable, rewritten
//!   only when they move materially ([`forecast::material_change`]) or when the status
//!   is written anyway, and cleared when it leaves Runnable.

use std::collections::BTreeMap;

use crate::api::batch_job::{BatchJob, BatchJobStatus, DurationEstimate, JobPhase};
use crate::scheduler::estimate::{self, Estimate, History};
use crate::scheduler::forecast;
use crate::scheduler::{QueueEstimate, Seconds};

use super::time::{seconds, time};

/// Definition histories by `(namespace, definition name)`.
pub type Histories = BTreeMap<(String, String), History>;

/// The duration of a Succeeded job's last attempt, and when it stopped.
fn succeeded_attempt(job: &BatchJob) -> Option<(Seconds, Seconds)> {
    let st = job.status.as_ref()?;
    if st.phase != Some(JobPhase::Succeeded) {
        return None;
    }
    let last = st.attempts.iter().max_by_key(|a| a.attempt)?;
    let start = seconds(last.started_at.as_ref()?);
    let stop = seconds(last.stopped_at.as_ref()?);
    Some((stop.saturating_sub(start), stop))
}

/// The history of every JobDefinition that has succeeded jobs among `jobs`.
pub fn histories(jobs: &[&BatchJob]) -> Histories {
    // Per definition: (stopped at, job name, duration) of each succeeded job.
    type Runs = Vec<(Seconds, String, Seconds)>;
    let mut by_def: BTreeMap<(String, String), Runs> = BTreeMap::new();
    for j in jobs {
        let Some(def) = j
            .status
            .as_ref()
            .and_then(|s| s.definition.as_ref())
            .map(|d| d.name.clone())
        else {
            continue;
        };
        let Some((duration, stopped)) = succeeded_attempt(j) else {
            continue;
        };
        let ns = j.metadata.namespace.clone().unwrap_or_default();
        let name = j.metadata.name.clone().unwrap_or_default();
        by_def
            .entry((ns, def))
            .or_default()
            .push((stopped, name, duration));
    }
    by_def
        .into_iter()
        .filter_map(|(k, mut v)| {
            // Oldest first, ties by name: deterministic.
            v.sort();
            let durations: Vec<Seconds> = v.into_iter().map(|(_, _, d)| d).collect();
            Some((k, History::of(&durations)?))
        })
        .collect()
}

/// The estimate of a job (see the module documentation); `None` when nothing is known.
pub fn job_estimate(
    job: &BatchJob,
    definition: Option<&str>,
    timeout: Option<u32>,
    histories: &Histories,
) -> Option<Estimate> {
    let ns = job.metadata.namespace.clone().unwrap_or_default();
    let history = definition.and_then(|d| histories.get(&(ns, d.to_owned())));
    estimate::resolve(
        job.spec.expected_duration_seconds.map(Seconds::from),
        history,
        timeout.map(Seconds::from),
    )
}

/// Sets the queue fields of a Runnable job's desired status from the scheduler's
/// estimate. `written` is what its status holds now; `writing` whether the status is
/// written in this pass anyway (then the fresh values go along at no cost).
pub fn set_queue_fields(
    desired: &mut BatchJobStatus,
    written: Option<&BatchJobStatus>,
    q: &QueueEstimate,
    estimate: Estimate,
    writing: bool,
    now: Seconds,
) {
    let old = written.and_then(|w| {
        Some((
            w.queue_position?,
            w.estimated_start_time.as_ref().map(seconds),
        ))
    });
    let new = (q.position, q.estimated_start);
    if writing || forecast::material_change(old, new, now) {
        desired.queue_position = Some(q.position);
        desired.estimated_start_time = q.estimated_start.map(time);
        desired.estimated_duration = Some(DurationEstimate {
            seconds: estimate.seconds,
            source: estimate.source.as_str().to_owned(),
        });
    }
}

/// Clears the queue fields of a job that is not Runnable (or not forecast).
pub fn clear_queue_fields(desired: &mut BatchJobStatus) {
    desired.queue_position = None;
    desired.estimated_start_time = None;
    desired.estimated_duration = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::batch_job::{AttemptStatus, PinnedDefinition};
    use crate::controller::decide::snapshot::fixtures::{job, with_status};
    use crate::scheduler::estimate::EstimateSource;

    fn succeeded(name: &str, def: &str, start: u64, stop: u64) -> BatchJob {
        with_status(
            job(name, "1", "1Gi", 0),
            BatchJobStatus {
                phase: Some(JobPhase::Succeeded),
                definition: Some(PinnedDefinition {
                    name: def.into(),
                    uid: None,
                    generation: None,
                }),
                attempts: vec![AttemptStatus {
                    attempt: 1,
                    started_at: Some(time(start)),
                    stopped_at: Some(time(stop)),
                    ..Default::default()
                }],
                ..Default::default()
            },
        )
    }

    #[test]
    fn history_comes_from_succeeded_jobs_of_the_definition() {
        let a = succeeded("a", "render", 1000, 1100);
        let b = succeeded("b", "render", 2000, 2120);
        let c = succeeded("c", "render", 3000, 3090);
        let other = succeeded("d", "train", 0, 9000);
        let h = histories(&[&a, &b, &c, &other]);
        let render = &h[&("default".to_string(), "render".to_string())];
        assert_eq!((render.count, render.median, render.p90), (3, 100, 120));
        // A job naming the definition with no expected duration plans with the median.
        let mut waiting = job("w", "1", "1Gi", 0);
        assert_eq!(
            job_estimate(&waiting, Some("render"), Some(600), &h),
            Some(Estimate {
                seconds: 100,
                source: EstimateSource::History
            })
        );
        waiting.spec.expected_duration_seconds = Some(30);
        assert_eq!(
            job_estimate(&waiting, Some("render"), Some(600), &h).map(|e| e.source),
            Some(EstimateSource::Expected)
        );
        assert_eq!(
            job_estimate(&job("x", "1", "1Gi", 0), Some("none"), Some(600), &h).map(|e| e.source),
            Some(EstimateSource::Timeout)
        );
    }

    #[test]
    fn queue_fields_are_rewritten_only_when_they_move_materially() {
        let est = Estimate {
            seconds: 60,
            source: EstimateSource::Expected,
        };
        let mut d = BatchJobStatus::default();
        let q = |position, at| QueueEstimate {
            position,
            estimated_start: Some(at),
        };
        set_queue_fields(&mut d, None, &q(40, 1000), est, false, 100);
        assert_eq!(d.queue_position, Some(40));
        let written = d.clone();
        let mut next = written.clone();
        set_queue_fields(&mut next, Some(&written), &q(39, 1010), est, false, 110);
        assert_eq!(next, written, "a small move is not written");
        set_queue_fields(&mut next, Some(&written), &q(39, 1010), est, true, 110);
        assert_eq!(
            next.queue_position,
            Some(39),
            "but goes along with another write"
        );
        clear_queue_fields(&mut next);
        assert_eq!(next.estimated_start_time, None);
    }
}
