//! PURE: duration estimates from the custom resources, and the queue position and
//! estimated start the controller writes on Runnable jobs.
//!
//! - A JobDefinition's history is the durations of the last
//!   [`HISTORY_WINDOW`](crate::scheduler::estimate::HISTORY_WINDOW) successful attempts of
//!   the jobs pinned to it (`status.definition.name`), newest by `stoppedAt`, summarised
//!   robustly ([`History`]: median, p90). It is kept in the definition's
//!   `status.durations` ([`kept`], [`definition_updates`]: written in batches), so it
//!   outlives the jobs (retention deletes them).
//! - A job's estimate: `spec.expectedDurationSeconds`, else its definition's median,
//!   else its timeout ([`crate::scheduler::estimate::resolve`]).
//! - `status.queuePosition`, `status.estimatedStartTime` and `status.estimatedDuration`
//!   are set from the scheduler's [`QueueEstimate`] while a job is Runnable, rewritten
//!   only when they move materially ([`forecast::material_change`]) or when the status
//!   is written anyway, and cleared when it leaves Runnable.

use std::collections::{BTreeMap, BTreeSet};

use crate::api::JobDefinition;
use crate::api::batch_job::{BatchJob, BatchJobStatus, DurationEstimate, JobPhase};
use crate::api::job_definition::DurationHistory;
use crate::scheduler::estimate::{self, Estimate, History};
use crate::scheduler::forecast;
use crate::scheduler::{QueueEstimate, Seconds};

use super::decide::DefinitionUpdate;
use super::time::{seconds, time};

/// Definition histories by `(namespace, definition name)`.
pub type Histories = BTreeMap<(String, String), History>;

/// A status is rewritten once this many successful attempts are not in it yet (or
/// sooner: see [`definition_updates`]).
pub const WRITE_BATCH: usize = 10;

/// A definition's duration history as the controller keeps it: the samples in its
/// `status.durations`, then the successful attempts of jobs pinned to it that stopped
/// after its `observedAt` (oldest first, ties by job name).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Kept {
    /// The last [`HISTORY_WINDOW`](estimate::HISTORY_WINDOW) durations, oldest first.
    pub samples: Vec<Seconds>,
    /// When the newest of them stopped.
    pub observed_at: Option<Seconds>,
    /// The jobs whose attempts are not in the status yet (namespace, name).
    pub pending: Vec<(String, String)>,
    /// What the status holds now (`None`: nothing, or the definition does not exist).
    pub written: Option<DurationHistory>,
    /// The definition exists (its status can be written).
    pub exists: bool,
}

impl Kept {
    /// The robust summary of the samples.
    pub fn history(&self) -> Option<History> {
        History::of(&self.samples)
    }

    /// The status this history is written as.
    pub fn status(&self) -> Option<DurationHistory> {
        let h = self.history()?;
        Some(DurationHistory {
            samples: self.samples.clone(),
            median_seconds: h.median,
            p90_seconds: h.p90,
            observed_at: self.observed_at.map(time),
        })
    }
}

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

/// The kept history of every JobDefinition that has one: its status, then the succeeded
/// jobs among `jobs` that stopped after it (a definition that no longer exists keeps the
/// jobs' alone).
pub fn kept(
    jobs: &[&BatchJob],
    definitions: &[&JobDefinition],
) -> BTreeMap<(String, String), Kept> {
    let mut out: BTreeMap<(String, String), Kept> = BTreeMap::new();
    for d in definitions {
        let key = (
            d.metadata.namespace.clone().unwrap_or_default(),
            d.metadata.name.clone().unwrap_or_default(),
        );
        let written = d.status.as_ref().and_then(|s| s.durations.clone());
        out.insert(
            key,
            Kept {
                samples: written
                    .as_ref()
                    .map(|w| w.samples.clone())
                    .unwrap_or_default(),
                observed_at: written
                    .as_ref()
                    .and_then(|w| w.observed_at.as_ref())
                    .map(seconds),
                pending: Vec::new(),
                written,
                exists: true,
            },
        );
    }
    // Per definition: (stopped at, job name, duration) of each succeeded job not kept yet.
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
        let key = (ns, def);
        if out
            .get(&key)
            .and_then(|k| k.observed_at)
            .is_some_and(|at| stopped <= at)
        {
            continue;
        }
        let name = j.metadata.name.clone().unwrap_or_default();
        by_def
            .entry(key)
            .or_default()
            .push((stopped, name, duration));
    }
    for (key, mut runs) in by_def {
        // Oldest first, ties by name: deterministic.
        runs.sort();
        let k = out.entry(key.clone()).or_default();
        for (stopped, name, duration) in runs {
            k.samples.push(duration);
            k.observed_at = Some(k.observed_at.map_or(stopped, |a| a.max(stopped)));
            k.pending.push((key.0.clone(), name));
        }
        let excess = k.samples.len().saturating_sub(estimate::HISTORY_WINDOW);
        k.samples.drain(..excess);
    }
    out.retain(|_, k| !k.samples.is_empty());
    out
}

/// The history of every JobDefinition that has one (see [`kept`]).
pub fn histories(kept: &BTreeMap<(String, String), Kept>) -> Histories {
    kept.iter()
        .filter_map(|(key, k)| Some((key.clone(), k.history()?)))
        .collect()
}

/// The `status.durations` writes of a pass: a definition's status is written when it has
/// attempts not in it yet and
/// - it holds no history yet, or
/// - [`WRITE_BATCH`] attempts are not in it, or
/// - its median or p90 would move by more than a tenth, or
/// - a job whose attempt is not in it is deleted in this pass (`deleted`: namespace,
///   name), so that no attempt is lost to retention.
///
/// So at high throughput a definition is written about once per [`WRITE_BATCH`]
/// finished jobs, not once per job.
pub fn definition_updates(
    kept: &BTreeMap<(String, String), Kept>,
    deleted: &BTreeSet<(String, String)>,
) -> Vec<DefinitionUpdate> {
    let moved = |old: u64, new: u64| old.abs_diff(new).saturating_mul(10) > old;
    kept.iter()
        .filter(|(_, k)| k.exists && !k.pending.is_empty())
        .filter_map(|((namespace, name), k)| {
            let status = k.status()?;
            let write = match &k.written {
                None => true,
                Some(w) => {
                    k.pending.len() >= WRITE_BATCH
                        || moved(w.median_seconds, status.median_seconds)
                        || moved(w.p90_seconds, status.p90_seconds)
                        || k.pending.iter().any(|p| deleted.contains(p))
                }
            };
            write.then(|| DefinitionUpdate {
                namespace: namespace.clone(),
                name: name.clone(),
                durations: status,
            })
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
    if writing || moved(written, q, now) {
        desired.queue_position = Some(q.position);
        desired.estimated_start_time = q.estimated_start.map(time);
        desired.estimated_duration = Some(DurationEstimate {
            seconds: estimate.seconds,
            source: estimate.source.as_str().to_owned(),
        });
    }
}

/// Whether the queue fields written in `written` move materially with `q`.
fn moved(written: Option<&BatchJobStatus>, q: &QueueEstimate, now: Seconds) -> bool {
    let old = written.and_then(|w| {
        Some((
            w.queue_position?,
            w.estimated_start_time.as_ref().map(seconds),
        ))
    });
    forecast::material_change(old, (q.position, q.estimated_start), now)
}

/// Whether a job's queue fields stay as `written` holds them when its status is not
/// written otherwise: [`set_queue_fields`] with `q` (the job was forecast) or
/// [`clear_queue_fields`] (it was not) would change nothing.
pub fn queue_fields_stay(
    written: Option<&BatchJobStatus>,
    q: Option<&QueueEstimate>,
    now: Seconds,
) -> bool {
    match q {
        Some(q) => !moved(written, q, now),
        None => written.is_none_or(|w| {
            w.queue_position.is_none()
                && w.estimated_start_time.is_none()
                && w.estimated_duration.is_none()
        }),
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
    use crate::api::job_definition::JobDefinitionStatus;
    use crate::controller::decide::snapshot::fixtures::{definition, job, with_status};
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
        let h = histories(&kept(&[&a, &b, &c, &other], &[]));
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
    fn the_definition_keeps_its_history_and_is_written_in_batches() {
        let key = ("default".to_string(), "render".to_string());
        let mut def = definition("render", "1", "1Gi");
        let a = succeeded("a", "render", 1000, 1100);
        let none = BTreeSet::new();
        // The first attempt is written at once.
        let k = kept(&[&a], &[&def]);
        let u = definition_updates(&k, &none);
        assert_eq!(u.len(), 1);
        assert_eq!(
            (
                u[0].durations.samples.clone(),
                u[0].durations.median_seconds
            ),
            (vec![100], 100)
        );
        assert_eq!(u[0].durations.observed_at.as_ref().map(seconds), Some(1100));
        def.status = Some(JobDefinitionStatus {
            observed_generation: None,
            durations: Some(u[0].durations.clone()),
        });
        // Written: the job adds nothing more, and the history outlives it.
        assert!(definition_updates(&kept(&[&a], &[&def]), &none).is_empty());
        let k = kept(&[], &[&def]);
        assert_eq!(histories(&k)[&key].median, 100);
        // One more like it: kept for the estimate, not written (the median stays).
        let b = succeeded("b", "render", 2000, 2105);
        let k = kept(&[&a, &b], &[&def]);
        assert_eq!(k[&key].samples, [100, 105]);
        assert!(definition_updates(&k, &none).is_empty());
        // Unless its job is deleted in this pass, or the median moves by more than a
        // tenth, or a batch of them is waiting.
        let deleted = BTreeSet::from([("default".to_string(), "b".to_string())]);
        assert_eq!(definition_updates(&k, &deleted).len(), 1);
        let slow = succeeded("s", "render", 3000, 3500);
        let slower = succeeded("t", "render", 4000, 4500);
        let k = kept(&[&slow, &slower], &[&def]);
        assert_eq!(k[&key].history().map(|h| h.median), Some(500));
        assert_eq!(definition_updates(&k, &none).len(), 1);
        let batch: Vec<BatchJob> = (0..WRITE_BATCH as u64)
            .map(|i| succeeded(&format!("j{i}"), "render", 5000 + i, 5100 + i))
            .collect();
        let refs: Vec<&BatchJob> = batch.iter().collect();
        let k = kept(&refs, &[&def]);
        let u = definition_updates(&k, &none);
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].durations.samples.len(), 1 + WRITE_BATCH);
        // A job that stopped before observedAt is in the status already.
        let old = succeeded("old", "render", 0, 1000);
        assert!(kept(&[&old], &[&def])[&key].pending.is_empty());
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
