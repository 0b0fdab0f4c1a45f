//! Billing, the lower bound, and the figures a simulation reports.

use serde::Serialize;

use super::workload::Workload;
use crate::scheduler::Resources;

/// EC2 per-second billing (Linux) charges at least this much per instance launch.
pub const MIN_BILLED_SECONDS: u64 = 60;

/// One instance's billed interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Billed {
    /// Launch time (billing starts; boot time is billed).
    pub from: u64,
    /// Termination time.
    pub to: u64,
    /// Size in instances of the fleet's type (price scales with size).
    pub size: f64,
}

impl Billed {
    /// Billed seconds in units of the fleet's instance type, with the 60 s minimum.
    pub fn seconds(&self) -> f64 {
        self.to.saturating_sub(self.from).max(MIN_BILLED_SECONDS) as f64 * self.size
    }
}

/// The figures of one policy on one workload.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Policy name (`asg-batch`, `seed-one-per-instance`, `seed-single-host`).
    pub policy: String,
    /// From the first arrival to the last completion, seconds.
    pub makespan_s: u64,
    /// Billed instance-hours, in instances of the fleet's type.
    pub instance_hours: f64,
    /// Most instances up (booting or running) at once.
    pub peak_instances: u32,
    /// Busiest-resource utilisation of the billed capacity, 0–1 (see [`utilisation`]).
    pub utilisation: f64,
    /// Lower bound of instance-hours for this workload (see [`lower_bound_seconds`]).
    pub lower_bound_instance_hours: f64,
    /// The no-wait bound (see [`no_wait_bound_seconds`]), instance-hours.
    pub no_wait_bound_instance_hours: f64,
    /// Longest wait of a job from arrival to start, seconds (asg-batch policies only).
    pub max_wait_s: Option<u64>,
    /// Jobs that waited and got an estimated start (asg-batch policies only).
    pub eta_jobs: usize,
    /// Median absolute error of those jobs' first estimated start against their actual
    /// start, seconds.
    pub eta_median_abs_error_s: Option<f64>,
    /// Status writes of queue positions and estimated starts the controller would make
    /// (asg-batch policies only).
    pub queue_writes: Option<usize>,
    /// Jobs that never ran (the seed's fixed schedule can strand late arrivals).
    #[serde(skip)]
    pub unfinished_jobs: usize,
}

/// Total resource-seconds of the jobs, per dimension, in units of one fleet instance
/// (so `[cpu, memory, gpu]` instance-seconds if each dimension were the only one).
fn volume(workload: &Workload, done: impl Fn(usize) -> bool) -> [f64; 3] {
    let s = workload.fleet.shape;
    let mut v = [0.0f64; 3];
    for (i, j) in workload.jobs.iter().enumerate() {
        if !done(i) {
            continue;
        }
        let t = j.duration as f64;
        let part = |need: u64, cap: u64| {
            if cap == 0 {
                0.0
            } else {
                need as f64 / cap as f64
            }
        };
        v[0] += t * part(j.resources.cpu_millis, s.cpu_millis);
        v[1] += t * part(j.resources.memory_bytes, s.memory_bytes);
        v[2] += t * part(u64::from(j.resources.gpus), u64::from(s.gpus));
    }
    v
}

/// The lower bound of billed instance-seconds for running `workload` on instances of
/// its fleet's type that start from none and boot in `bootSeconds`.
///
/// For every resource dimension `d`, an instance-second supplies at most `S_d` (the
/// instance's amount of `d`), so any schedule bills at least `Σ_j r_jd·t_j / S_d`
/// instance-seconds while jobs run, whatever the packing, the order or the number of
/// instances. Each instance also bills its boot, during which it runs nothing, and at
/// least one instance must boot. Hence
///
/// `LB = max_d Σ_j r_jd·t_j / S_d + bootSeconds`.
///
/// It is a true lower bound (no schedule beats it) but not always reachable: jobs cannot
/// move between instances, so a long job that ends up alone on an instance wastes the
/// rest of it, and a real fleet boots more than one instance.
pub fn lower_bound_seconds(workload: &Workload) -> f64 {
    let v = volume(workload, |_| true);
    v.iter().copied().fold(0.0, f64::max) + workload.fleet.boot_seconds as f64
}

/// A second, tighter bound that holds only for schedules in which **no job waits**: every
/// job runs from its arrival to `arrival + duration`, and instances may even be
/// repacked for free at every instant. While the set of running jobs is fixed, at least
/// `max_d ⌈Σ_j r_jd / S_d⌉` instances are needed, and at least as many as there are jobs
/// using more than half of an instance in one dimension (two such jobs never share).
/// Integrating that count over time, plus one boot, gives the least instance-seconds of
/// any no-wait schedule. It shows how much of the gap to [`lower_bound_seconds`] is
/// forced by *when* the jobs arrive rather than by how they are packed; a policy that
/// delays jobs (the seed's) may go below it, so it is reported beside the true bound,
/// never instead of it.
pub fn no_wait_bound_seconds(workload: &Workload) -> f64 {
    let shape = workload.fleet.shape;
    let mut edges: Vec<(u64, bool, usize)> = Vec::with_capacity(workload.jobs.len() * 2);
    for (i, j) in workload.jobs.iter().enumerate() {
        edges.push((j.arrival, true, i));
        edges.push((j.arrival + j.duration, false, i));
    }
    // Ends before starts at the same instant.
    edges.sort_by_key(|&(t, start, i)| (t, start, i));
    let mut load = [0u128; 3];
    let mut big = [0u64; 3];
    let mut total = 0.0f64;
    let mut last = edges.first().map_or(0, |e| e.0);
    let caps = [
        u128::from(shape.cpu_millis),
        u128::from(shape.memory_bytes),
        u128::from(shape.gpus),
    ];
    for (t, start, i) in edges {
        let mut bins = 0u128;
        for d in 0..3 {
            if caps[d] > 0 {
                bins = bins.max(load[d].div_ceil(caps[d]));
            }
            bins = bins.max(u128::from(big[d]));
        }
        total += (t - last) as f64 * bins as f64;
        last = t;
        let r = workload.jobs[i].resources;
        let need = [
            u128::from(r.cpu_millis),
            u128::from(r.memory_bytes),
            u128::from(r.gpus),
        ];
        for d in 0..3 {
            let is_big = caps[d] > 0 && need[d] * 2 > caps[d];
            if start {
                load[d] += need[d];
                big[d] += u64::from(is_big);
            } else {
                load[d] -= need[d];
                big[d] -= u64::from(is_big);
            }
        }
    }
    total + workload.fleet.boot_seconds as f64
}

/// Mean utilisation of the busiest resource: `max_d Σ_j r_jd·t_j / (S_d × billed)` over
/// the jobs that ran, with billed capacity in instances of the fleet's type. At most 1.
pub fn utilisation(workload: &Workload, done: impl Fn(usize) -> bool, billed_seconds: f64) -> f64 {
    if billed_seconds <= 0.0 {
        return 0.0;
    }
    let v = volume(workload, done);
    v.iter().copied().fold(0.0, f64::max) / billed_seconds
}

/// Most intervals open at once (an interval is open on `[from, to)`).
pub fn peak(billed: &[Billed]) -> u32 {
    let mut edges: Vec<(u64, i32)> = Vec::with_capacity(billed.len() * 2);
    for b in billed {
        edges.push((b.from, 1));
        edges.push((b.to.max(b.from + 1), -1));
    }
    // Closings before openings at the same instant.
    edges.sort();
    let (mut cur, mut best) = (0i32, 0i32);
    for (_, d) in edges {
        cur += d;
        best = best.max(cur);
    }
    u32::try_from(best).unwrap_or(0)
}

/// Assembles a report from a finished simulation.
pub fn report(
    policy: &str,
    workload: &Workload,
    billed: &[Billed],
    completions: &[Option<u64>],
) -> Report {
    let first_arrival = workload.jobs.iter().map(|j| j.arrival).min().unwrap_or(0);
    let last = completions
        .iter()
        .flatten()
        .copied()
        .max()
        .unwrap_or(first_arrival);
    let seconds: f64 = billed.iter().map(Billed::seconds).sum();
    Report {
        policy: policy.to_owned(),
        makespan_s: last.saturating_sub(first_arrival),
        instance_hours: seconds / 3600.0,
        peak_instances: peak(billed),
        utilisation: utilisation(workload, |i| completions[i].is_some(), seconds),
        lower_bound_instance_hours: lower_bound_seconds(workload) / 3600.0,
        no_wait_bound_instance_hours: no_wait_bound_seconds(workload) / 3600.0,
        max_wait_s: None,
        eta_jobs: 0,
        eta_median_abs_error_s: None,
        queue_writes: None,
        unfinished_jobs: completions.iter().filter(|c| c.is_none()).count(),
    }
}

/// Scales a shape by a size factor (a seed host `size` times the fleet's instance).
#[allow(
    clippy::cast_sign_loss,
    reason = "size is a positive factor from a workload file; `as` saturates a NaN or negative product at 0"
)]
pub fn scaled(shape: Resources, size: f64) -> Resources {
    let f = |v: u64| (v as f64 * size).floor() as u64;
    Resources::new(
        f(shape.cpu_millis),
        f(shape.memory_bytes),
        (f64::from(shape.gpus) * size).floor() as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn billing_has_a_one_minute_minimum_and_scales_with_size() {
        let b = Billed {
            from: 100,
            to: 130,
            size: 1.0,
        };
        assert_eq!(b.seconds(), 60.0);
        let b = Billed {
            from: 0,
            to: 3600,
            size: 0.5,
        };
        assert_eq!(b.seconds(), 1800.0);
    }

    #[test]
    fn peak_counts_overlaps_only() {
        let b = |from, to| Billed {
            from,
            to,
            size: 1.0,
        };
        assert_eq!(peak(&[b(0, 10), b(10, 20)]), 1);
        assert_eq!(peak(&[b(0, 10), b(5, 20), b(6, 7)]), 3);
        assert_eq!(peak(&[]), 0);
    }
}
