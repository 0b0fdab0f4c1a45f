//! Prints each job's progress as the controller and the agents move it.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};

use super::DevError;
use crate::api::batch_job::{BatchJob, JobPhase};

/// What was last printed for a job.
type Seen = String;

/// One line describing a job's new state, or `None` when it would repeat the last one.
fn line(key: &str, job: &BatchJob, before: Option<&Seen>) -> Option<(String, Seen)> {
    let status = job.status.clone().unwrap_or_default();
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
pub async fn follow(client: kube::Client, exit_when_done: bool) -> Result<(), DevError> {
    let api: Api<BatchJob> = Api::all(client);
    let mut seen: BTreeMap<String, Seen> = BTreeMap::new();
    let mut phases: BTreeMap<String, Option<JobPhase>> = BTreeMap::new();
    let mut listed = false;
    let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    while let Some(event) = stream
        .try_next()
        .await
        .map_err(|e| DevError::Apply(e.to_string()))?
    {
        let (jobs, deleted) = match event {
            watcher::Event::Apply(j) | watcher::Event::InitApply(j) => (vec![j], false),
            watcher::Event::Delete(j) => (vec![j], true),
            watcher::Event::Init => (vec![], false),
            watcher::Event::InitDone => {
                listed = true;
                (vec![], false)
            }
        };
        for job in jobs {
            let key = format!(
                "{}/{}",
                job.metadata.namespace.as_deref().unwrap_or_default(),
                job.metadata.name.as_deref().unwrap_or_default()
            );
            if deleted {
                println!("{key}: deleted");
                seen.remove(&key);
                phases.remove(&key);
                continue;
            }
            if let Some((text, s)) = line(&key, &job, seen.get(&key)) {
                println!("{text}");
                seen.insert(key.clone(), s);
            }
            phases.insert(key, job.status.as_ref().and_then(|s| s.phase));
        }
        // Judge only once the initial list is complete (with --data-dir, old finished
        // jobs may be listed before the new ones).
        if exit_when_done
            && listed
            && !phases.is_empty()
            && phases
                .values()
                .all(|p| p.is_some_and(JobPhase::is_terminal))
        {
            let failed = phases
                .values()
                .filter(|p| **p == Some(JobPhase::Failed))
                .count();
            println!(
                "all {} jobs finished: {} succeeded, {failed} failed",
                phases.len(),
                phases.len() - failed
            );
            return if failed == 0 {
                Ok(())
            } else {
                Err(DevError::JobsFailed {
                    failed,
                    total: phases.len(),
                })
            };
        }
    }
    Ok(())
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
        let (text, seen) = line("default/j", &running, None).expect("line");
        assert_eq!(text, "default/j: Running on local-dev-0001 (attempt 2)");
        assert!(
            line("default/j", &running, Some(&seen)).is_none(),
            "no repeat"
        );

        let waiting = job(BatchJobStatus {
            phase: Some(JobPhase::Runnable),
            message: Some("waiting for 1 instance to boot in ce/dev".into()),
            ..Default::default()
        });
        assert_eq!(
            line("default/j", &waiting, None).expect("line").0,
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
            line("default/j", &queued, None).expect("line").0,
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
            line("default/j", &done, None).expect("line").0,
            "default/j: Succeeded, exit code 0, 2 attempts, output: attempt 2 worked"
        );
        let failed = job(BatchJobStatus {
            phase: Some(JobPhase::Failed),
            reason: Some("DependencyFailed".into()),
            message: Some("dependency default/a failed".into()),
            ..Default::default()
        });
        assert_eq!(
            line("default/j", &failed, None).expect("line").0,
            "default/j: Failed, reason DependencyFailed — dependency default/a failed"
        );
    }
}
