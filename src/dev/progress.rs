//! Prints each job's progress as the controller and the agents move it.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use futures::TryStreamExt;
use kube::Api;
use kube::api::ObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use serde::Deserialize;

use super::DevError;
use crate::api::batch_job::{BatchJob, BatchJobStatus, JobPhase};

/// A BatchJob as dev's progress reads it: its name and status. The spec and the
/// metadata's `managedFields` (a tree per writer: the largest part of a job's metadata)
/// are skipped as they arrive, not decoded — dev follows every job of the cluster.
#[derive(Debug, Clone, Deserialize)]
struct Progress {
    #[serde(deserialize_with = "light_meta")]
    metadata: ObjectMeta,
    #[serde(default)]
    status: Option<BatchJobStatus>,
}

/// The metadata the watch needs: names, and the resourceVersion it resumes from.
fn light_meta<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Light {
        name: Option<String>,
        namespace: Option<String>,
        uid: Option<String>,
        resource_version: Option<String>,
    }
    let l = Light::deserialize(d)?;
    Ok(ObjectMeta {
        name: l.name,
        namespace: l.namespace,
        uid: l.uid,
        resource_version: l.resource_version,
        ..ObjectMeta::default()
    })
}

impl kube::Resource for Progress {
    type DynamicType = ();
    type Scope = <BatchJob as kube::Resource>::Scope;

    fn kind(dt: &()) -> std::borrow::Cow<'_, str> {
        BatchJob::kind(dt)
    }
    fn group(dt: &()) -> std::borrow::Cow<'_, str> {
        BatchJob::group(dt)
    }
    fn version(dt: &()) -> std::borrow::Cow<'_, str> {
        BatchJob::version(dt)
    }
    fn plural(dt: &()) -> std::borrow::Cow<'_, str> {
        BatchJob::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Every job's phase, and how many are not finished and how many failed, kept as
/// changes arrive (judging "all done" by walking every job on each change made a run of
/// n jobs cost O(n²)). The jobs dev applied are awaited too: the run is not done before each was seen.
#[derive(Debug, Default)]
struct Tally {
    phases: BTreeMap<String, Option<JobPhase>>,
    unfinished: usize,
    failed: usize,
    /// Jobs seen deleted (a TTL may remove one before dev has applied them all).
    gone: HashSet<String>,
    /// Applied jobs not seen yet; `None` while dev is still applying.
    awaiting: Option<BTreeSet<String>>,
}

impl Tally {
    fn count(&mut self, phase: Option<JobPhase>, by: isize) {
        let add = |n: &mut usize| *n = n.saturating_add_signed(by);
        if !phase.is_some_and(JobPhase::is_terminal) {
            add(&mut self.unfinished);
        }
        if phase == Some(JobPhase::Failed) {
            add(&mut self.failed);
        }
    }

    /// A job's phase now.
    fn set(&mut self, key: String, phase: Option<JobPhase>) {
        if let Some(a) = self.awaiting.as_mut() {
            a.remove(&key);
        }
        let before = self.phases.insert(key, phase);
        if let Some(b) = before {
            self.count(b, -1);
        }
        self.count(phase, 1);
    }

    /// A job was deleted.
    fn remove(&mut self, key: &str) {
        if let Some(b) = self.phases.remove(key) {
            self.count(b, -1);
        }
        if let Some(a) = self.awaiting.as_mut() {
            a.remove(key);
        }
        self.gone.insert(key.to_owned());
    }

    /// dev has applied these jobs.
    fn applied(&mut self, keys: BTreeSet<String>) {
        self.awaiting = Some(
            keys.into_iter()
                .filter(|k| !self.phases.contains_key(k) && !self.gone.contains(k))
                .collect(),
        );
    }

    /// `(jobs, failed)` once every job applied was seen, and there are jobs and every
    /// one has finished.
    fn done(&self) -> Option<(usize, usize)> {
        (self.awaiting.as_ref().is_some_and(BTreeSet::is_empty)
            && !self.phases.is_empty()
            && self.unfinished == 0)
            .then_some((self.phases.len(), self.failed))
    }
}

/// What was last printed for a job.
type Seen = String;

/// One line describing a job's new state, or `None` when it would repeat the last one.
fn line(
    key: &str,
    status: Option<&BatchJobStatus>,
    before: Option<&Seen>,
) -> Option<(String, Seen)> {
    let status = status?;
    let phase = status.phase?;
    let mut text = format!("{key}: {phase:?}");
    let last = status.attempts.iter().max_by_key(|a| a.attempt);
    match Some(phase) {
        Some(JobPhase::Starting | JobPhase::Running) => {
            if let Some(node) = &status.node {
                text.push_str(&format!(" on {node}"));
            }
            if let Some(n) = status.attempt.filter(|n| *n > 1) {
                text.push_str(&format!(" (attempt {n})"));
            }
        }
        Some(JobPhase::Succeeded | JobPhase::Failed) => {
            if let Some(a) = last {
                if let Some(code) = a.exit_code {
                    text.push_str(&format!(", exit code {code}"));
                }
                if status.attempts.len() > 1 {
                    text.push_str(&format!(", {} attempts", status.attempts.len()));
                }
                if let Some(out) = a
                    .log_tail
                    .as_deref()
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                {
                    let last_line = out.lines().last().unwrap_or_default();
                    text.push_str(&format!(", output: {last_line}"));
                }
            }
            if phase == JobPhase::Failed
                && let Some(r) = &status.reason
            {
                text.push_str(&format!(", reason {r}"));
            }
        }
        _ => {}
    }
    // A waiting job's place in its queue and when the scheduler expects it to start.
    if phase == JobPhase::Runnable
        && let Some(pos) = status.queue_position
    {
        text.push_str(&format!(" (#{pos} in its queue"));
        if let Some(t) = &status.estimated_start_time {
            text.push_str(&format!(", starts about {}", t.0.strftime("%H:%M:%S")));
        }
        text.push(')');
    }
    // Starting/Running lines already say where; a success needs no explanation.
    if let Some(m) = &status.message
        && !matches!(
            phase,
            JobPhase::Succeeded | JobPhase::Starting | JobPhase::Running
        )
    {
        text.push_str(&format!(" — {m}"));
    }
    if before == Some(&text) {
        return None;
    }
    Some((text.clone(), text))
}

/// Follows every BatchJob and prints changes; with `exit_when_done`, returns once every
/// job has finished (an error when any failed). Otherwise runs until the watch ends.
/// `applied` gives the keys (`namespace/name`) of the jobs dev applied once it has
/// applied them all: the run is not done before each of them has been seen.
pub async fn follow(
    client: kube::Client,
    exit_when_done: bool,
    mut applied: tokio::sync::oneshot::Receiver<BTreeSet<String>>,
) -> Result<(), DevError> {
    let api: Api<Progress> = Api::all(client);
    let mut seen: BTreeMap<String, Seen> = BTreeMap::new();
    let mut tally = Tally::default();
    let mut listed = false;
    let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    // Whether `applied` is still to come (a closed channel means applying failed, and
    // dev says so).
    let mut applying = true;
    loop {
        let event = tokio::select! {
            e = stream.try_next() => match e.map_err(|e| DevError::Apply(e.to_string()))? {
                Some(e) => Some(e),
                None => return Ok(()),
            },
            keys = &mut applied, if applying => {
                applying = false;
                if let Ok(keys) = keys {
                    tally.applied(keys);
                }
                None
            }
        };
        match event {
            Some(watcher::Event::Apply(job) | watcher::Event::InitApply(job)) => {
                let key = key(&job);
                if let Some((text, s)) = line(&key, job.status.as_ref(), seen.get(&key)) {
                    println!("{text}");
                    seen.insert(key.clone(), s);
                }
                tally.set(key, job.status.as_ref().and_then(|s| s.phase));
            }
            Some(watcher::Event::Delete(job)) => {
                let key = key(&job);
                println!("{key}: deleted");
                seen.remove(&key);
                tally.remove(&key);
            }
            Some(watcher::Event::Init) => {}
            Some(watcher::Event::InitDone) => listed = true,
            None => {}
        }
        // Judge only once the initial list is complete (with --data-dir, old finished
        // jobs may be listed before the new ones) and every applied job was seen.
        if exit_when_done
            && listed
            && let Some((total, failed)) = tally.done()
        {
            println!(
                "all {total} jobs finished: {} succeeded, {failed} failed",
                total - failed
            );
            return if failed == 0 {
                Ok(())
            } else {
                Err(DevError::JobsFailed { failed, total })
            };
        }
    }
}

fn key(job: &Progress) -> String {
    format!(
        "{}/{}",
        job.metadata.namespace.as_deref().unwrap_or_default(),
        job.metadata.name.as_deref().unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::batch_job::{AttemptStatus, BatchJobStatus};

    fn job(status: BatchJobStatus) -> BatchJob {
        let mut j: BatchJob = serde_json::from_value(serde_json::json!({
            "apiVersion": "asgbatch.io/v1alpha1", "kind": "BatchJob",
            "metadata": {"name": "j", "namespace": "default"},
            "spec": {"queue": "q", "process": {"command": ["true"]}}
        }))
        .expect("job");
        j.status = Some(status);
        j
    }

    #[test]
    fn lines_say_what_a_user_wants_to_know() {
        let running = job(BatchJobStatus {
            phase: Some(JobPhase::Running),
            node: Some("local-dev-0001".into()),
            attempt: Some(2),
            ..Default::default()
        });
        let (text, seen) = line("default/j", running.status.as_ref(), None).expect("line");
        assert_eq!(text, "default/j: Running on local-dev-0001 (attempt 2)");
        assert!(
            line("default/j", running.status.as_ref(), Some(&seen)).is_none(),
            "no repeat"
        );

        let waiting = job(BatchJobStatus {
            phase: Some(JobPhase::Runnable),
            message: Some("waiting for 1 instance to boot in ce/dev".into()),
            ..Default::default()
        });
        assert_eq!(
            line("default/j", waiting.status.as_ref(), None)
                .expect("line")
                .0,
            "default/j: Runnable — waiting for 1 instance to boot in ce/dev"
        );
        let queued = job(BatchJobStatus {
            phase: Some(JobPhase::Runnable),
            message: Some("waiting for 1 instance to boot in ce/dev".into()),
            queue_position: Some(3),
            estimated_start_time: Some(crate::controller::time::time(3600 + 125)),
            ..Default::default()
        });
        assert_eq!(
            line("default/j", queued.status.as_ref(), None)
                .expect("line")
                .0,
            "default/j: Runnable (#3 in its queue, starts about 01:02:05) — waiting for 1 instance to boot in ce/dev"
        );

        let done = job(BatchJobStatus {
            phase: Some(JobPhase::Succeeded),
            attempts: vec![
                AttemptStatus {
                    attempt: 1,
                    exit_code: Some(3),
                    ..Default::default()
                },
                AttemptStatus {
                    attempt: 2,
                    exit_code: Some(0),
                    log_tail: Some("busy\nattempt 2 worked\n".into()),
                    ..Default::default()
                },
            ],
            ..Default::default()
        });
        assert_eq!(
            line("default/j", done.status.as_ref(), None)
                .expect("line")
                .0,
            "default/j: Succeeded, exit code 0, 2 attempts, output: attempt 2 worked"
        );
        let failed = job(BatchJobStatus {
            phase: Some(JobPhase::Failed),
            reason: Some("DependencyFailed".into()),
            message: Some("dependency default/a failed".into()),
            ..Default::default()
        });
        assert_eq!(
            line("default/j", failed.status.as_ref(), None)
                .expect("line")
                .0,
            "default/j: Failed, reason DependencyFailed — dependency default/a failed"
        );
    }

    #[test]
    fn progress_reads_names_and_status_and_skips_the_rest() {
        let p: Progress = serde_json::from_value(serde_json::json!({
            "apiVersion": "asgbatch.io/v1alpha1", "kind": "BatchJob",
            "metadata": {
                "name": "j", "namespace": "team", "uid": "u1", "resourceVersion": "42",
                "labels": {"a": "b"},
                "managedFields": [{"manager": "asg-batch-controller", "operation": "Apply",
                    "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {"f:phase": {}}}}]
            },
            "spec": {"queue": "q", "process": {"command": ["true"]}, "anything": [1, 2]},
            "status": {"phase": "Running", "node": "n1"}
        }))
        .expect("decodes");
        assert_eq!(p.metadata.name.as_deref(), Some("j"));
        assert_eq!(p.metadata.namespace.as_deref(), Some("team"));
        // The watch resumes from the resourceVersion of the last event.
        assert_eq!(
            kube::ResourceExt::resource_version(&p).as_deref(),
            Some("42")
        );
        assert!(p.metadata.managed_fields.is_none() && p.metadata.labels.is_none());
        assert_eq!(
            line("team/j", p.status.as_ref(), None).expect("line").0,
            "team/j: Running on n1"
        );
        // A job the controller has not seen yet has no status and prints nothing.
        let fresh: Progress = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "k", "namespace": "team"}, "spec": {}
        }))
        .expect("decodes");
        assert!(line("team/k", fresh.status.as_ref(), None).is_none());
    }

    #[test]
    fn the_tally_says_done_once_every_job_finished_and_counts_failures() {
        let mut t = Tally::default();
        t.applied(BTreeSet::new());
        assert_eq!(t.done(), None, "no job yet is not done");
        t.set("a".into(), None);
        t.set("b".into(), Some(JobPhase::Runnable));
        assert_eq!(t.done(), None);
        t.set("a".into(), Some(JobPhase::Succeeded));
        t.set("b".into(), Some(JobPhase::Failed));
        assert_eq!(t.done(), Some((2, 1)));
        // A finished job seen again (another status write) counts once.
        t.set("b".into(), Some(JobPhase::Failed));
        assert_eq!(t.done(), Some((2, 1)));
        // A new job reopens it.
        t.set("c".into(), Some(JobPhase::Submitted));
        assert_eq!(t.done(), None);
        t.remove("c");
        t.remove("b");
        assert_eq!(t.done(), Some((1, 0)));
        t.remove("a");
        assert_eq!(t.done(), None, "every job deleted is not done");
    }

    #[test]
    fn the_tally_waits_for_every_applied_job_even_one_deleted_before_the_list() {
        let key = |k: &str| k.to_owned();
        let mut t = Tally::default();
        // Jobs arrive and finish while dev still applies: not done.
        t.set(key("a"), Some(JobPhase::Succeeded));
        t.set(key("ttl"), Some(JobPhase::Succeeded));
        t.remove("ttl");
        assert_eq!(t.done(), None, "still applying");
        // Applied: a, ttl (deleted already: not awaited), b and c (not seen yet).
        t.applied(["a", "ttl", "b", "c"].map(key).into());
        assert_eq!(t.done(), None, "b and c not seen");
        t.set(key("b"), Some(JobPhase::Succeeded));
        // c is deleted before it was ever seen Running (a relist may skip it): seen.
        t.remove("c");
        assert_eq!(t.done(), Some((2, 0)));
    }
}
