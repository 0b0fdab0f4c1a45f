//! Queue order: job queues by priority (higher first, ties by name), jobs within a queue
//! first-in first-out by submission time (ties by id), or interleaved by fair share
//! when the queue has a fair-share policy.

use std::collections::{BTreeMap, VecDeque};

use super::fairshare::{self, DEFAULT_SHARE};
use super::model::{Job, JobId, Seconds, Snapshot};

/// Orders `candidates` (ids of jobs in `snapshot` whose queue exists) for placement.
/// Candidates whose queue is not in the snapshot are left out.
pub fn order(snapshot: &Snapshot, candidates: &[JobId], now: Seconds) -> Vec<JobId> {
    let mut sorted: Vec<&JobId> = candidates.iter().collect();
    sorted.sort();
    let jobs: Vec<(&JobId, &Job)> = sorted
        .into_iter()
        .filter_map(|id| Some((id, snapshot.jobs.get(id)?)))
        .collect();
    order_jobs(snapshot, &jobs, now)
        .into_iter()
        .map(|(id, _)| id.clone())
        .collect()
}

/// [`order`] of candidates given with their jobs, **in id order** (as the snapshot
/// lists them): within a first-in first-out queue a stable sort by submission time
/// alone then keeps ties in id order, without comparing ids.
pub fn order_jobs<'s>(
    snapshot: &'s Snapshot,
    candidates: &[(&'s JobId, &'s Job)],
    now: Seconds,
) -> Vec<(&'s JobId, &'s Job)> {
    let mut by_queue: BTreeMap<&str, Vec<(&JobId, &Job)>> = BTreeMap::new();
    for &(id, job) in candidates {
        if snapshot.queues.contains_key(&job.queue) {
            by_queue
                .entry(job.queue.as_str())
                .or_default()
                .push((id, job));
        }
    }
    let mut queues: Vec<(&str, i32)> = by_queue
        .keys()
        .filter_map(|q| snapshot.queues.get(*q).map(|jq| (*q, jq.priority)))
        .collect();
    queues.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));

    let mut out = Vec::with_capacity(candidates.len());
    for (name, _) in queues {
        let Some(mut jobs) = by_queue.remove(name) else {
            continue;
        };
        // Stable: equal submission times stay in id order.
        jobs.sort_by_key(|(_, j)| j.submitted_at);
        match snapshot
            .queues
            .get(name)
            .and_then(|q| q.fair_share.as_ref())
        {
            None => out.extend(jobs),
            Some(policy) => {
                let mut by_share: BTreeMap<String, VecDeque<(JobId, u64)>> = BTreeMap::new();
                for (id, job) in &jobs {
                    let share = job
                        .share_identifier
                        .clone()
                        .unwrap_or_else(|| DEFAULT_SHARE.to_owned());
                    by_share
                        .entry(share)
                        .or_default()
                        .push_back(((*id).clone(), job.resources.cpu_millis));
                }
                let usage = fairshare::usage(snapshot, name, policy, now);
                let ids: BTreeMap<&JobId, &Job> = jobs.iter().copied().collect();
                out.extend(
                    fairshare::interleave(policy, by_share, &usage)
                        .into_iter()
                        .filter_map(|id| ids.get_key_value(&id).map(|(k, v)| (*k, *v))),
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::model::{FairSharePolicy, Job, JobQueue, State};
    use crate::scheduler::resources::Resources;

    fn queue(priority: i32, fair: bool) -> JobQueue {
        JobQueue {
            priority,
            state: State::Enabled,
            compute_environments: vec!["ce".into()],
            fair_share: fair.then(FairSharePolicy::default),
            max_wait_seconds: None,
        }
    }

    fn with_jobs(
        queues: Vec<(&str, JobQueue)>,
        jobs: Vec<(&str, &str, u64, Option<&str>)>,
    ) -> Snapshot {
        Snapshot {
            queues: queues
                .into_iter()
                .map(|(n, q)| (n.to_string(), q))
                .collect(),
            jobs: jobs
                .into_iter()
                .map(|(id, q, t, share)| {
                    let mut j = Job::runnable(q, Resources::new(1000, 1, 0), t);
                    j.share_identifier = share.map(str::to_owned);
                    (JobId::new(id), j)
                })
                .collect(),
            ..Snapshot::default()
        }
    }

    fn run(s: &Snapshot) -> Vec<String> {
        let ids: Vec<JobId> = s.jobs.keys().cloned().collect();
        order(s, &ids, 0).into_iter().map(|j| j.0).collect()
    }

    #[test]
    fn higher_priority_queue_first_then_fifo() {
        let s = with_jobs(
            vec![("low", queue(1, false)), ("high", queue(10, false))],
            vec![
                ("l1", "low", 1, None),
                ("h2", "high", 5, None),
                ("h1", "high", 3, None),
                ("l0", "low", 0, None),
            ],
        );
        assert_eq!(run(&s), ["h1", "h2", "l0", "l1"]);
    }

    #[test]
    fn same_submission_time_ties_by_id_and_equal_priorities_by_name() {
        let s = with_jobs(
            vec![("b", queue(1, false)), ("a", queue(1, false))],
            vec![
                ("y", "b", 0, None),
                ("x", "b", 0, None),
                ("z", "a", 9, None),
            ],
        );
        assert_eq!(run(&s), ["z", "x", "y"]);
    }

    #[test]
    fn fair_share_queue_interleaves_shares() {
        let s = with_jobs(
            vec![("q", queue(1, true))],
            vec![
                ("a1", "q", 0, Some("a")),
                ("a2", "q", 1, Some("a")),
                ("a3", "q", 2, Some("a")),
                ("b1", "q", 3, Some("b")),
            ],
        );
        assert_eq!(run(&s), ["a1", "b1", "a2", "a3"]);
    }

    #[test]
    fn jobs_of_unknown_queues_are_left_out() {
        let s = with_jobs(vec![("q", queue(1, false))], vec![("a", "nope", 0, None)]);
        assert!(run(&s).is_empty());
    }
}
