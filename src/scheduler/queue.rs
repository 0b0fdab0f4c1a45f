//! Queue order: job queues by priority (higher first, ties by name), jobs within a queue
//! first-in first-out by submission time (ties by id), or interleaved by fair share
//! when the queue has a fair-share policy.

use std::collections::{BTreeMap, VecDeque};

use super::fairshare::{self, DEFAULT_SHARE};
use super::model::{JobId, Seconds, Snapshot};

/// Orders `candidates` (ids of jobs in `snapshot` whose queue exists) for placement.
/// Candidates whose queue is not in the snapshot are left out.
pub fn order(snapshot: &Snapshot, candidates: &[JobId], now: Seconds) -> Vec<JobId> {
    let mut by_queue: BTreeMap<&str, Vec<&JobId>> = BTreeMap::new();
    for id in candidates {
        if let Some(job) = snapshot.jobs.get(id)
            && snapshot.queues.contains_key(&job.queue)
        {
            by_queue.entry(job.queue.as_str()).or_default().push(id);
        }
    }
    let mut queues: Vec<(&str, i32)> = by_queue
        .keys()
        .filter_map(|q| snapshot.queues.get(*q).map(|jq| (*q, jq.priority)))
        .collect();
    queues.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));

    let mut out = Vec::with_capacity(candidates.len());
    for (name, _) in queues {
        let Some(mut ids) = by_queue.remove(name) else {
            continue;
        };
        ids.sort_by_cached_key(|id| (snapshot.jobs.get(*id).map_or(0, |j| j.submitted_at), *id));
        match snapshot
            .queues
            .get(name)
            .and_then(|q| q.fair_share.as_ref())
        {
            None => out.extend(ids.into_iter().cloned()),
            Some(policy) => {
                let mut by_share: BTreeMap<String, VecDeque<(JobId, u64)>> = BTreeMap::new();
                for id in ids {
                    let Some(job) = snapshot.jobs.get(id) else {
                        continue;
                    };
                    let share = job
                        .share_identifier
                        .clone()
                        .unwrap_or_else(|| DEFAULT_SHARE.to_owned());
                    by_share
                        .entry(share)
                        .or_default()
                        .push_back((id.clone(), job.resources.cpu_millis));
                }
                let usage = fairshare::usage(snapshot, name, policy, now);
                out.extend(fairshare::interleave(policy, by_share, &usage));
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
