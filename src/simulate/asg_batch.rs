//! The asg-batch policy: a discrete-event simulation of the controller calling
//! [`scheduler::plan`](crate::scheduler::plan) — the same function the controller
//! calls — against a simulated Auto Scaling Group.
//!
//! Model:
//! - the controller runs a pass whenever something changes (a job arrives or ends, an
//!   instance becomes Ready, a node's idle time reaches `scaleInAfterIdleSeconds`), and
//!   again at the same instant while a pass changed something (a node marked Draining
//!   is terminated by the next pass, as the two-step protocol requires);
//! - a binding starts the job at once; it runs for its duration and frees its node;
//! - the group launches instances when the plan's desired capacity exceeds the
//!   instances it has; each boots for `bootSeconds` (billed) and then registers as a
//!   Ready node; a terminated instance leaves the group and its billing stops
//!   (`ShouldDecrementDesiredCapacity=true`); should the desired capacity fall below the
//!   instances alive, the group removes booting instances first, then idle ones, never
//!   one holding a job (scale-in protection);
//! - billing is per second from launch to termination, at least 60 s; the simulation
//!   ends once every job is done and only `minInstances` instances are left, which are
//!   billed until then.

use std::collections::BTreeMap;

use super::accounting::{Billed, Report, report};
use super::workload::Workload;
use crate::scheduler::estimate::{Estimate, EstimateSource};
use crate::scheduler::forecast;
use crate::scheduler::{
    self, Attempt, ComputeEnvironment, Job, JobId, JobQueue, Node, NodePhase, Options, Phase,
    Resources, Snapshot, State,
};

/// Name of this policy in reports.
pub const NAME: &str = "asg-batch";

/// Passes at one instant before the simulation moves on (a pass that changes nothing
/// ends the loop earlier; two are needed for drain → terminate).
const MAX_PASSES_PER_INSTANT: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InstanceState {
    Booting,
    Ready,
    Draining,
    Terminated,
}

#[derive(Debug, Clone)]
struct Instance {
    launched: u64,
    ready_at: u64,
    terminated_at: Option<u64>,
    state: InstanceState,
    allocated: Resources,
    jobs: u32,
    idle_since: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobState {
    Waiting,
    Running {
        node: usize,
        started: u64,
        ends: u64,
    },
    Done {
        started: u64,
        ended: u64,
    },
}

struct Sim<'w> {
    workload: &'w Workload,
    options: Options,
    instances: Vec<Instance>,
    jobs: Vec<JobState>,
    index: BTreeMap<JobId, usize>,
    now: u64,
    /// Per job: the estimated start of the first pass that left it waiting, if any.
    first_estimate: Vec<Option<u64>>,
    /// The last plan's `review_at`.
    review_at: Option<u64>,
    /// Per job: the queue position and estimated start last written to its status.
    written: Vec<Option<(u32, Option<u64>)>>,
    /// Status writes of queue positions and estimated starts (the controller's rule).
    queue_writes: usize,
}

fn node_name(i: usize) -> String {
    format!("i-{i:05}")
}

fn node_index(name: &str) -> Option<usize> {
    name.strip_prefix("i-").and_then(|n| n.parse().ok())
}

impl<'w> Sim<'w> {
    fn new(workload: &'w Workload, options: Options) -> Self {
        let index = workload
            .jobs
            .iter()
            .enumerate()
            .map(|(i, j)| (JobId::new(j.name.clone()), i))
            .collect();
        Sim {
            workload,
            options,
            instances: Vec::new(),
            jobs: vec![JobState::Waiting; workload.jobs.len()],
            index,
            now: 0,
            first_estimate: vec![None; workload.jobs.len()],
            review_at: None,
            written: vec![None; workload.jobs.len()],
            queue_writes: 0,
        }
    }

    fn alive(&self) -> impl Iterator<Item = (usize, &Instance)> {
        self.instances
            .iter()
            .enumerate()
            .filter(|(_, i)| i.state != InstanceState::Terminated)
    }

    fn snapshot(&self) -> Snapshot {
        let fleet = &self.workload.fleet;
        let mut s = Snapshot::default();
        let booting_ready_at: Vec<u64> = self
            .alive()
            .filter(|(_, i)| i.state == InstanceState::Booting)
            .map(|(_, i)| i.ready_at)
            .collect();
        let booting = booting_ready_at.len();
        s.compute_environments.insert(
            fleet.name.clone(),
            ComputeEnvironment {
                state: State::Enabled,
                shape: fleet.shape,
                min_instances: fleet.min_instances,
                max_instances: fleet.max_instances,
                booting: u32::try_from(booting).unwrap_or(u32::MAX),
                scale_in_after_idle_seconds: fleet.scale_in_after_idle_seconds,
                boot_seconds: fleet.boot_seconds,
                booting_ready_at,
            },
        );
        for q in &self.workload.queues {
            s.queues.insert(
                q.name.clone(),
                JobQueue {
                    priority: q.priority,
                    state: State::Enabled,
                    compute_environments: vec![fleet.name.clone()],
                    fair_share: None,
                    max_wait_seconds: q.max_wait_seconds,
                },
            );
        }
        for (i, inst) in self.alive() {
            let phase = match inst.state {
                InstanceState::Ready => NodePhase::Ready,
                InstanceState::Draining => NodePhase::Draining,
                _ => continue,
            };
            s.nodes.insert(
                node_name(i),
                Node {
                    compute_environment: fleet.name.clone(),
                    capacity: fleet.shape,
                    allocated: inst.allocated,
                    jobs: inst.jobs,
                    phase,
                    idle_since: inst.idle_since,
                    terminable: true,
                },
            );
        }
        for (i, spec) in self.workload.jobs.iter().enumerate() {
            if spec.arrival > self.now {
                continue;
            }
            let (phase, node, started) = match self.jobs[i] {
                JobState::Waiting => (Phase::Runnable, None, None),
                JobState::Running { node, started, .. } => {
                    (Phase::Running, Some(node_name(node)), Some(started))
                }
                JobState::Done { .. } => continue,
            };
            let mut job = Job::runnable(spec.queue.clone(), spec.resources, spec.arrival);
            job.phase = phase;
            job.node = node;
            // Users state how long their jobs run (`expectedDurationSeconds`): exact here.
            job.estimate = Some(Estimate {
                seconds: spec.duration,
                source: EstimateSource::Expected,
            });
            job.attempts = started
                .map(|started_at| Attempt {
                    started_at,
                    stopped_at: None,
                })
                .into_iter()
                .collect();
            s.jobs.insert(JobId::new(spec.name.clone()), job);
        }
        s
    }

    /// Applies one plan; true when anything changed.
    fn apply(&mut self, plan: &scheduler::Plan) -> bool {
        let now = self.now;
        let mut changed = false;
        for b in &plan.bindings {
            let (Some(&j), Some(n)) = (self.index.get(&b.job), node_index(&b.node)) else {
                continue;
            };
            let Some(inst) = self.instances.get_mut(n) else {
                continue;
            };
            let spec = &self.workload.jobs[j];
            inst.allocated = inst.allocated.saturating_add(&spec.resources);
            inst.jobs += 1;
            inst.idle_since = None;
            self.jobs[j] = JobState::Running {
                node: n,
                started: now,
                ends: now + spec.duration,
            };
            changed = true;
        }
        for (id, q) in &plan.queue {
            let Some(&j) = self.index.get(id) else {
                continue;
            };
            if let (Some(eta), None) = (q.estimated_start, self.first_estimate[j]) {
                self.first_estimate[j] = Some(eta);
            }
            let new = (q.position, q.estimated_start);
            if forecast::material_change(self.written[j], new, now) {
                self.written[j] = Some(new);
                self.queue_writes += 1;
            }
        }
        self.review_at = plan.review_at;
        for name in &plan.drain {
            if let Some(inst) = node_index(name).and_then(|n| self.instances.get_mut(n)) {
                inst.state = InstanceState::Draining;
                changed = true;
            }
        }
        for name in &plan.terminate {
            if let Some(inst) = node_index(name).and_then(|n| self.instances.get_mut(n))
                && inst.jobs == 0
            {
                inst.state = InstanceState::Terminated;
                inst.terminated_at = Some(now);
                changed = true;
            }
        }
        if let Some(decision) = plan.capacity.get(&self.workload.fleet.name) {
            changed |= self.set_desired(decision.desired as usize);
        }
        changed
    }

    /// The group converges on `desired` instances.
    fn set_desired(&mut self, desired: usize) -> bool {
        let now = self.now;
        let alive = self.alive().count();
        if desired > alive {
            for _ in alive..desired {
                self.instances.push(Instance {
                    launched: now,
                    ready_at: now + self.workload.fleet.boot_seconds,
                    terminated_at: None,
                    state: InstanceState::Booting,
                    allocated: Resources::ZERO,
                    jobs: 0,
                    idle_since: None,
                });
            }
            return true;
        }
        let mut excess = alive - desired;
        let mut changed = false;
        // Newest booting first, then idle ones; never a protected (busy) instance.
        let mut victims: Vec<usize> = self
            .alive()
            .filter(|(_, i)| i.state == InstanceState::Booting)
            .map(|(n, _)| n)
            .collect();
        victims.reverse();
        victims.extend(
            self.alive()
                .filter(|(_, i)| i.state != InstanceState::Booting && i.jobs == 0)
                .map(|(n, _)| n),
        );
        for n in victims {
            if excess == 0 {
                break;
            }
            if let Some(inst) = self.instances.get_mut(n) {
                inst.state = InstanceState::Terminated;
                inst.terminated_at = Some(now);
                excess -= 1;
                changed = true;
            }
        }
        changed
    }

    /// Completions and boots due at `now`.
    fn advance_to(&mut self, now: u64) {
        self.now = now;
        for j in 0..self.jobs.len() {
            if let JobState::Running {
                node,
                started,
                ends,
            } = self.jobs[j]
                && ends <= now
            {
                self.jobs[j] = JobState::Done {
                    started,
                    ended: ends,
                };
                if let Some(inst) = self.instances.get_mut(node) {
                    inst.allocated = inst
                        .allocated
                        .saturating_sub(&self.workload.jobs[j].resources);
                    inst.jobs = inst.jobs.saturating_sub(1);
                    if inst.jobs == 0 {
                        inst.idle_since = Some(ends);
                    }
                }
            }
        }
        for inst in &mut self.instances {
            if inst.state == InstanceState::Booting && inst.ready_at <= now {
                inst.state = InstanceState::Ready;
                inst.idle_since = Some(inst.ready_at);
            }
        }
    }

    fn next_event(&self) -> Option<u64> {
        let now = self.now;
        let arrivals = self.workload.jobs.iter().map(|j| j.arrival);
        let ends = self.jobs.iter().filter_map(|s| match s {
            JobState::Running { ends, .. } => Some(*ends),
            _ => None,
        });
        let boots = self
            .alive()
            .filter(|(_, i)| i.state == InstanceState::Booting)
            .map(|(_, i)| i.ready_at);
        let idle = self
            .alive()
            .filter(|(_, i)| i.state == InstanceState::Ready)
            .filter_map(|(_, i)| i.idle_since)
            .map(|s| s + self.workload.fleet.scale_in_after_idle_seconds);
        arrivals
            .chain(ends)
            .chain(boots)
            .chain(idle)
            .chain(self.review_at)
            .filter(|t| *t > now)
            .min()
    }

    fn finished(&self) -> bool {
        let all_done = self.jobs.iter().all(|s| matches!(s, JobState::Done { .. }));
        let only_min = self.alive().count() <= self.workload.fleet.min_instances as usize
            && self.alive().all(|(_, i)| i.state != InstanceState::Booting);
        all_done && only_min
    }
}

/// Runs the workload under asg-batch.
pub fn simulate(workload: &Workload) -> Report {
    simulate_with(workload, NAME, Options::default())
}

/// Runs the workload under asg-batch with the given scheduler options, reported as
/// `name`.
pub fn simulate_with(workload: &Workload, name: &str, options: Options) -> Report {
    let mut sim = Sim::new(workload, options);
    let mut now = 0;
    loop {
        sim.advance_to(now);
        for _ in 0..MAX_PASSES_PER_INSTANT {
            let plan = scheduler::plan_with(&sim.snapshot(), now, &sim.options);
            if !sim.apply(&plan) {
                break;
            }
        }
        if sim.finished() {
            break;
        }
        match sim.next_event() {
            Some(t) => now = t,
            None => break,
        }
    }
    let end = sim.now;
    let billed: Vec<Billed> = sim
        .instances
        .iter()
        .map(|i| Billed {
            from: i.launched,
            to: i.terminated_at.unwrap_or(end),
            size: 1.0,
        })
        .collect();
    let completions: Vec<Option<u64>> = sim
        .jobs
        .iter()
        .map(|s| match s {
            JobState::Done { ended, .. } => Some(*ended),
            _ => None,
        })
        .collect();
    let starts: Vec<Option<u64>> = sim
        .jobs
        .iter()
        .map(|s| match s {
            JobState::Done { started, .. } | JobState::Running { started, .. } => Some(*started),
            JobState::Waiting => None,
        })
        .collect();
    let mut r = report(name, workload, &billed, &completions);
    r.max_wait_s = workload
        .jobs
        .iter()
        .zip(&starts)
        .filter_map(|(j, s)| Some(s.as_ref()?.saturating_sub(j.arrival)))
        .max();
    // Estimated starts against actual ones, for the jobs that waited.
    let errors: Vec<u64> = sim
        .first_estimate
        .iter()
        .zip(&starts)
        .filter_map(|(e, s)| Some(e.as_ref()?.abs_diff(*s.as_ref()?)))
        .collect();
    r.eta_jobs = errors.len();
    r.queue_writes = Some(sim.queue_writes);
    r.eta_median_abs_error_s = median(&errors);
    r
}

/// The median of `v` (mean of the two middle values for an even count).
pub fn median(v: &[u64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_unstable();
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2] as f64),
        _ => Some((v[n / 2 - 1] + v[n / 2]) as f64 / 2.0),
    }
}
