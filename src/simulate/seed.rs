//! The seed's two ways of running the nightly batch, for comparison.
//!
//! - **seed-single-host**: one big always-on instance (`size` times the fleet's type)
//!   running at most `concurrency` jobs at a time, first-in first-out (head of line
//!   waits until it fits). Billed only from the first arrival to the last completion —
//!   generous to the seed, whose host in fact stays up all day.
//! - **seed-one-per-instance**: a scheduled action launches `instances` instances at
//!   `scaleUpAt`; each boots for `bootSeconds`, then its worker polls the queue and runs
//!   one job at a time, first-in first-out. A second scheduled action sets the desired
//!   capacity to 0 at `scaleDownAt` (the fixed estimate); a worker holding a job is
//!   protected from scale-in and keeps taking queued jobs; an idle worker drops its
//!   protection after `idleGraceSeconds` of idleness and is terminated then (but not
//!   before `scaleDownAt`). A job arriving after the last worker is gone never runs.

use super::accounting::{Billed, Report, report, scaled};
use super::workload::Workload;
use crate::scheduler::Resources;

/// Name of the single-host policy.
pub const SINGLE_HOST: &str = "seed-single-host";
/// Name of the one-job-per-instance policy.
pub const ONE_PER_INSTANCE: &str = "seed-one-per-instance";

/// Job indices in first-in first-out order (arrival, then file order).
fn fifo(workload: &Workload) -> Vec<usize> {
    let mut order: Vec<usize> = (0..workload.jobs.len()).collect();
    order.sort_by_key(|&i| (workload.jobs[i].arrival, i));
    order
}

/// Runs the workload on the seed's single big host.
pub fn single_host(workload: &Workload) -> Report {
    let spec = &workload.single_host;
    let capacity = scaled(workload.fleet.shape, spec.size);
    let order = fifo(workload);
    let mut completions: Vec<Option<u64>> = vec![None; workload.jobs.len()];
    // (end time, job) of running jobs.
    let mut running: Vec<(u64, usize)> = Vec::new();
    let mut used = Resources::ZERO;
    let mut now = 0u64;
    let mut next = 0usize;
    loop {
        // Finish what ends by now.
        running.retain(|&(end, j)| {
            if end <= now {
                used = used.saturating_sub(&workload.jobs[j].resources);
                false
            } else {
                true
            }
        });
        // Start from the head of the line while it has arrived and fits.
        while next < order.len() {
            let j = order[next];
            let job = &workload.jobs[j];
            let fits = job.resources.saturating_add(&used).fits_in(&capacity);
            if job.arrival > now || running.len() >= spec.concurrency as usize || !fits {
                break;
            }
            used = used.saturating_add(&job.resources);
            running.push((now + job.duration, j));
            completions[j] = Some(now + job.duration);
            next += 1;
        }
        if next >= order.len() && running.is_empty() {
            break;
        }
        let next_end = running.iter().map(|r| r.0).min();
        let next_arrival = order
            .get(next)
            .map(|&j| workload.jobs[j].arrival)
            .filter(|&a| a > now);
        match next_end.into_iter().chain(next_arrival).min() {
            Some(t) => now = t,
            // Head of the line can never fit (bigger than the host): stop, unfinished.
            None => {
                for &j in &order[next..] {
                    completions[j] = None;
                }
                break;
            }
        }
    }
    let first = workload.jobs.iter().map(|j| j.arrival).min().unwrap_or(0);
    let last = completions.iter().flatten().copied().max().unwrap_or(first);
    let billed = [Billed {
        from: first,
        to: last,
        size: spec.size,
    }];
    report(SINGLE_HOST, workload, &billed, &completions)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Worker {
    Booting { ready_at: u64 },
    Idle { since: u64 },
    Busy { until: u64 },
    Gone { at: u64 },
}

/// Runs the workload on the seed's one-job-per-instance fleet.
pub fn one_per_instance(workload: &Workload) -> Report {
    let spec = &workload.one_per_instance;
    let boot = workload.fleet.boot_seconds;
    let capacity = scaled(workload.fleet.shape, spec.size);
    let order = fifo(workload);
    let mut completions: Vec<Option<u64>> = vec![None; workload.jobs.len()];
    let mut workers: Vec<Worker> = Vec::new();
    let mut launched = false;
    let mut now = 0u64;
    let mut next = 0usize;
    loop {
        if !launched && now >= spec.scale_up_at {
            launched = true;
            workers = vec![
                Worker::Booting {
                    ready_at: spec.scale_up_at + boot
                };
                spec.instances as usize
            ];
        }
        for w in &mut workers {
            match *w {
                Worker::Booting { ready_at } if ready_at <= now => {
                    *w = Worker::Idle { since: ready_at }
                }
                Worker::Busy { until } if until <= now => *w = Worker::Idle { since: until },
                _ => {}
            }
        }
        // Idle workers take the oldest arrived job (one each); a job bigger than the
        // seed's instance can never run there and is skipped.
        for w in &mut workers {
            if !matches!(w, Worker::Idle { .. }) {
                continue;
            }
            while next < order.len() && !workload.jobs[order[next]].resources.fits_in(&capacity) {
                next += 1;
            }
            let Some(&j) = order.get(next) else { break };
            if workload.jobs[j].arrival > now {
                break;
            }
            let until = now + workload.jobs[j].duration;
            completions[j] = Some(until);
            *w = Worker::Busy { until };
            next += 1;
        }
        // After the scheduled scale-down, idle workers past their grace are terminated.
        for w in &mut workers {
            if let Worker::Idle { since } = *w
                && now >= spec.scale_down_at
                && now >= since + spec.idle_grace_seconds
            {
                *w = Worker::Gone { at: now };
            }
        }
        let all_gone = launched && workers.iter().all(|w| matches!(w, Worker::Gone { .. }));
        if all_gone {
            break;
        }
        let mut events: Vec<u64> = Vec::new();
        if !launched {
            events.push(spec.scale_up_at);
        }
        events.push(spec.scale_down_at);
        if let Some(&j) = order.get(next) {
            events.push(workload.jobs[j].arrival);
        }
        for w in &workers {
            match *w {
                Worker::Booting { ready_at } => events.push(ready_at),
                Worker::Busy { until } => events.push(until),
                Worker::Idle { since } => events.push(since + spec.idle_grace_seconds),
                Worker::Gone { .. } => {}
            }
        }
        match events.into_iter().filter(|&t| t > now).min() {
            Some(t) => now = t,
            None => break,
        }
    }
    let billed: Vec<Billed> = workers
        .iter()
        .map(|w| Billed {
            from: spec.scale_up_at,
            to: match *w {
                Worker::Gone { at } => at,
                _ => now,
            },
            size: spec.size,
        })
        .collect();
    report(ONE_PER_INSTANCE, workload, &billed, &completions)
}
