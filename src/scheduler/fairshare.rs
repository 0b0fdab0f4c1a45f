//! Fair share within a job queue (AWS Batch scheduling policies).
//!
//! Usage of a share is measured in cpu millicores:
//! `usage = cpu of its jobs placed now + mean cpu of its finished attempts over the last
//! shareDecaySeconds` (the second term is absent when `shareDecaySeconds` is 0, so only
//! current usage counts, as in AWS Batch). The share with the least
//! `usage × weightFactor` goes next; taking a job charges the share that job's cpu, so a
//! queue interleaves shares in proportion to `1 / weightFactor` and one team's 5,000-job
//! array cannot starve another team's single job. Ties go to the lexically smaller share.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use super::model::{FairSharePolicy, JobId, Seconds, Snapshot};

/// The share of jobs without a `shareIdentifier`.
pub const DEFAULT_SHARE: &str = "";

/// Smallest weight factor honoured (AWS Batch's minimum); smaller or invalid values
/// are raised to it so that a zero weight cannot divide anything by zero.
pub const MIN_WEIGHT_FACTOR: f64 = 0.0001;

/// The weight factor of a share under a policy (1.0 when not listed).
pub fn weight_factor(policy: &FairSharePolicy, share: &str) -> f64 {
    let w = policy.weight_factors.get(share).copied().unwrap_or(1.0);
    if w.is_finite() && w >= MIN_WEIGHT_FACTOR {
        w
    } else {
        MIN_WEIGHT_FACTOR
    }
}

/// Recent usage (cpu millicores) of every share that has jobs in `queue`.
pub fn usage(
    snapshot: &Snapshot,
    queue: &str,
    policy: &FairSharePolicy,
    now: Seconds,
) -> BTreeMap<String, f64> {
    let decay = policy.share_decay_seconds;
    let window_start = now.saturating_sub(decay);
    let mut out: BTreeMap<String, f64> = BTreeMap::new();
    for job in snapshot.jobs.values().filter(|j| j.queue == queue) {
        let share = job
            .share_identifier
            .clone()
            .unwrap_or_else(|| DEFAULT_SHARE.to_owned());
        let cpu = job.resources.cpu_millis as f64;
        let entry = out.entry(share).or_insert(0.0);
        if job.phase.is_placed() {
            *entry += cpu;
        }
        if decay > 0 {
            for a in &job.attempts {
                let Some(stop) = a.stopped_at else { continue };
                let from = a.started_at.max(window_start);
                let to = stop.min(now);
                if to > from {
                    *entry += cpu * (to - from) as f64 / decay as f64;
                }
            }
        }
    }
    out
}

#[derive(PartialEq)]
struct Key(f64, String);

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0
            .total_cmp(&other.0)
            .then_with(|| self.1.cmp(&other.1))
    }
}

/// Interleaves per-share FIFO lists by least weighted usage.
///
/// `by_share` maps each share to its jobs in FIFO order with each job's cpu millicores;
/// `usage` is the starting usage from [`usage`]. Returns one merged order.
pub fn interleave(
    policy: &FairSharePolicy,
    by_share: BTreeMap<String, VecDeque<(JobId, u64)>>,
    usage: &BTreeMap<String, f64>,
) -> Vec<JobId> {
    let total: usize = by_share.values().map(VecDeque::len).sum();
    let mut out = Vec::with_capacity(total);
    let mut lists = by_share;
    let mut heap: BinaryHeap<Reverse<Key>> = lists
        .keys()
        .map(|s| {
            let u = usage.get(s).copied().unwrap_or(0.0);
            Reverse(Key(u * weight_factor(policy, s), s.clone()))
        })
        .collect();
    while let Some(Reverse(Key(weighted, share))) = heap.pop() {
        let Some(list) = lists.get_mut(&share) else {
            continue;
        };
        let Some((id, cpu)) = list.pop_front() else {
            continue;
        };
        out.push(id);
        if !list.is_empty() {
            // Charge at least one millicore so a cpu-less job still advances its share.
            let charge = cpu.max(1) as f64 * weight_factor(policy, &share);
            heap.push(Reverse(Key(weighted + charge, share)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::model::{Attempt, Job, Phase};
    use crate::scheduler::resources::Resources;

    fn policy(decay: Seconds, weights: &[(&str, f64)]) -> FairSharePolicy {
        FairSharePolicy {
            share_decay_seconds: decay,
            weight_factors: weights.iter().map(|(s, w)| (s.to_string(), *w)).collect(),
        }
    }

    fn lists(spec: &[(&str, usize)]) -> BTreeMap<String, VecDeque<(JobId, u64)>> {
        spec.iter()
            .map(|(s, n)| {
                (
                    s.to_string(),
                    (0..*n).map(|i| (JobId(format!("{s}-{i}")), 1000)).collect(),
                )
            })
            .collect()
    }

    fn ids(v: &[JobId]) -> Vec<&str> {
        v.iter().map(|j| j.0.as_str()).collect()
    }

    #[test]
    fn big_array_cannot_starve_a_single_job() {
        let order = interleave(
            &policy(0, &[]),
            lists(&[("bulk", 5000), ("solo", 1)]),
            &BTreeMap::new(),
        );
        assert_eq!(order.len(), 5001);
        let pos = order.iter().position(|j| j.0 == "solo-0");
        assert!(pos.is_some_and(|p| p <= 1), "solo at {pos:?}");
    }

    #[test]
    fn lower_weight_factor_gets_proportionally_more() {
        let order = interleave(
            &policy(0, &[("a", 0.5), ("b", 1.0)]),
            lists(&[("a", 100), ("b", 100)]),
            &BTreeMap::new(),
        );
        let first_30 = &order[..30];
        let a = first_30.iter().filter(|j| j.0.starts_with("a-")).count();
        assert_eq!(a, 20, "{:?}", ids(first_30));
    }

    #[test]
    fn share_with_more_recent_usage_goes_later() {
        let usage = BTreeMap::from([("a".to_string(), 5000.0), ("b".to_string(), 0.0)]);
        let order = interleave(&policy(3600, &[]), lists(&[("a", 2), ("b", 2)]), &usage);
        assert_eq!(ids(&order)[..3], ["b-0", "b-1", "a-0"][..]);
    }

    #[test]
    fn fifo_within_a_share() {
        let order = interleave(&policy(0, &[]), lists(&[("a", 3)]), &BTreeMap::new());
        assert_eq!(ids(&order), ["a-0", "a-1", "a-2"]);
    }

    #[test]
    fn usage_counts_current_jobs_and_decayed_history() {
        let mut running = Job::runnable("q", Resources::new(2000, 1, 0), 0);
        running.phase = Phase::Running;
        running.share_identifier = Some("a".into());
        let mut done = Job::runnable("q", Resources::new(1000, 1, 0), 0);
        done.phase = Phase::Succeeded;
        done.share_identifier = Some("b".into());
        // Ran 500 s, of which 250 s inside the 1,000 s window ending at now = 1,250.
        done.attempts = vec![Attempt {
            started_at: 0,
            stopped_at: Some(500),
        }];
        let snapshot = Snapshot {
            jobs: BTreeMap::from([(JobId::new("r"), running), (JobId::new("d"), done)]),
            ..Snapshot::default()
        };
        let u = usage(&snapshot, "q", &policy(1000, &[]), 1250);
        assert_eq!(u["a"], 2000.0);
        assert_eq!(u["b"], 250.0); // 1000 m × 250 s / 1000 s
        // shareDecaySeconds 0: only current usage.
        let u = usage(&snapshot, "q", &policy(0, &[]), 1250);
        assert_eq!(u["b"], 0.0);
    }

    #[test]
    fn zero_or_invalid_weight_is_clamped() {
        let p = policy(0, &[("z", 0.0), ("n", f64::NAN)]);
        assert_eq!(weight_factor(&p, "z"), MIN_WEIGHT_FACTOR);
        assert_eq!(weight_factor(&p, "n"), MIN_WEIGHT_FACTOR);
        assert_eq!(weight_factor(&p, "other"), 1.0);
    }
}
