//! Pure scheduling logic: queue order, bin-packing, capacity plan, scale-in, retry and
//! dependency decisions.
//!
//! Plain data in ([`Snapshot`] and the time `now`), decisions out ([`Plan`]); no I/O, no
//! clock reads, no Kubernetes types, and deterministic (every map is a `BTreeMap`, every
//! sort is stable with a total tie-break). The controller maps its custom resources
//! into a [`Snapshot`], calls [`plan`], and applies the [`Plan`]; after an attempt ends
//! it calls [`retry::decide`]. The simulator (`crate::simulate`) drives the very same
//! functions.
//!
//! One pass of [`plan`]:
//! 1. [`deps::evaluate`] — which waiting jobs are released, keep waiting, or fail with
//!    `DependencyFailed`;
//! 2. [`queue::order`] — queue priority, then FIFO or fair share within each queue;
//! 3. [`packing::NodePool::place`] — best-fit onto Ready nodes with room;
//! 4. [`capacity::plan`] — first-fit-decreasing of the rest onto booting and new
//!    instances, per compute environment, within `[minInstances, maxInstances]`;
//! 5. [`scale_in::plan`] — drain idle nodes nobody needs, terminate drained empty ones;
//! 6. a [`Reason`] for every waiting job that was not bound.

pub mod capacity;
pub mod deps;
pub mod fairshare;
pub mod model;
pub mod packing;
pub mod queue;
pub mod reasons;
pub mod resources;
pub mod retry;
pub mod scale_in;

use std::collections::{BTreeMap, BTreeSet};

pub use model::{
    ArrayChild, Attempt, ComputeEnvironment, Dependency, DependencyType, FairSharePolicy, Job,
    JobId, JobQueue, Node, NodePhase, Phase, Seconds, Snapshot, State,
};
pub use reasons::{DEPENDENCY_FAILED, Reason};
pub use resources::Resources;

use capacity::Demand;
use deps::DependencyState;
use packing::NodePool;

/// Bind a job to a node (the job moves to Starting).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The job.
    pub job: JobId,
    /// The node it goes to.
    pub node: String,
}

/// A phase change decided by dependency evaluation (Submitted → Pending, or
/// Submitted/Pending → Runnable). Bindings (→ Starting) and dependency failures
/// (→ Failed) are listed separately.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseChange {
    /// The job.
    pub job: JobId,
    /// Its new phase.
    pub to: Phase,
}

/// A waiting job that fails with reason [`DEPENDENCY_FAILED`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DependencyFailure {
    /// The job that fails.
    pub job: JobId,
    /// The dependency that failed.
    pub dependency: JobId,
}

/// Capacity decision for one compute environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapacityDecision {
    /// Desired capacity of the Auto Scaling Group after this pass's terminations,
    /// always within `[minInstances, maxInstances]`.
    pub desired: u32,
    /// Registered nodes plus booting instances before this pass.
    pub current: u32,
    /// New instances the unplaced demand needs (0 when Disabled).
    pub new_instances: u32,
}

/// Every decision of one scheduling pass.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Job → node, in scheduling order.
    pub bindings: Vec<Binding>,
    /// Phase changes from dependency evaluation, in job-id order.
    pub phase_changes: Vec<PhaseChange>,
    /// Jobs failed by a failed dependency, in job-id order.
    pub dependency_failures: Vec<DependencyFailure>,
    /// Per compute environment.
    pub capacity: BTreeMap<String, CapacityDecision>,
    /// Nodes to mark Draining.
    pub drain: Vec<String>,
    /// Nodes to terminate (`ShouldDecrementDesiredCapacity=true`).
    pub terminate: Vec<String>,
    /// Why each waiting, non-failed job was not bound in this pass.
    pub unplaced: BTreeMap<JobId, Reason>,
}

/// Runs one full scheduling pass over `snapshot` at time `now`.
pub fn plan(snapshot: &Snapshot, now: Seconds) -> Plan {
    let mut out = Plan::default();
    let deps = deps::evaluate(snapshot);

    let mut candidates: Vec<JobId> = Vec::new();
    for (id, state) in deps {
        let Some(job) = snapshot.jobs.get(&id) else {
            continue;
        };
        match state {
            DependencyState::Failed { dependency } => {
                out.dependency_failures.push(DependencyFailure {
                    job: id,
                    dependency,
                });
            }
            DependencyState::Waiting(reason) => {
                if job.phase == Phase::Submitted {
                    out.phase_changes.push(PhaseChange {
                        job: id.clone(),
                        to: Phase::Pending,
                    });
                }
                out.unplaced.insert(id, reason);
            }
            DependencyState::Met => {
                if job.phase != Phase::Runnable {
                    out.phase_changes.push(PhaseChange {
                        job: id.clone(),
                        to: Phase::Runnable,
                    });
                }
                match blocked(snapshot, job, now) {
                    Some(reason) => {
                        out.unplaced.insert(id, reason);
                    }
                    None => candidates.push(id),
                }
            }
        }
    }

    let ordered = queue::order(snapshot, &candidates, now);
    let mut pool = NodePool::from_snapshot(snapshot);
    let mut unbound: Vec<(&JobId, &Job, &[String])> = Vec::new();
    for id in &ordered {
        let Some(job) = snapshot.jobs.get(id) else {
            continue;
        };
        let Some(q) = snapshot.queues.get(&job.queue) else {
            continue;
        };
        match pool.place(&q.compute_environments, &job.resources) {
            Some(node) => out.bindings.push(Binding {
                job: id.clone(),
                node,
            }),
            None => unbound.push((id, job, &q.compute_environments)),
        }
    }

    let demand: Vec<Demand<'_>> = unbound
        .iter()
        .map(|(id, job, ces)| Demand {
            job: id,
            resources: job.resources,
            compute_environments: ces,
        })
        .collect();
    let capacity = capacity::plan(snapshot, &demand);
    out.unplaced.extend(capacity.reasons);

    let used: BTreeSet<&str> = pool.used_nodes().collect();
    let growing: BTreeSet<&str> = capacity
        .environments
        .iter()
        .filter(|(_, e)| e.new_instances > 0)
        .map(|(n, _)| n.as_str())
        .collect();
    let scale_in = scale_in::plan(snapshot, now, &used, &growing);

    let mut terminated: BTreeMap<&str, u32> = BTreeMap::new();
    for name in &scale_in.terminate {
        if let Some(n) = snapshot.nodes.get(name) {
            *terminated
                .entry(n.compute_environment.as_str())
                .or_default() += 1;
        }
    }
    for (name, e) in &capacity.environments {
        let Some(ce) = snapshot.compute_environments.get(name) else {
            continue;
        };
        let gone = terminated.get(name.as_str()).copied().unwrap_or(0);
        out.capacity.insert(
            name.clone(),
            CapacityDecision {
                desired: capacity::desired_capacity(
                    ce.min_instances,
                    ce.max_instances,
                    e.current,
                    gone,
                    e.new_instances,
                ),
                current: e.current,
                new_instances: e.new_instances,
            },
        );
    }
    out.drain = scale_in.drain;
    out.terminate = scale_in.terminate;
    out
}

/// Why a job whose dependencies are met still cannot be placed, if anything does.
fn blocked(snapshot: &Snapshot, job: &Job, now: Seconds) -> Option<Reason> {
    let Some(q) = snapshot.queues.get(&job.queue) else {
        return Some(Reason::QueueNotFound {
            queue: job.queue.clone(),
        });
    };
    if q.state == State::Disabled {
        return Some(Reason::QueueDisabled {
            queue: job.queue.clone(),
        });
    }
    let any_enabled = q.compute_environments.iter().any(|c| {
        snapshot
            .compute_environments
            .get(c)
            .is_some_and(|ce| ce.state == State::Enabled)
    });
    if !any_enabled {
        return Some(Reason::NoEnabledComputeEnvironment {
            queue: job.queue.clone(),
        });
    }
    match job.not_before {
        Some(t) if t > now => Some(Reason::Backoff { remaining: t - now }),
        _ => None,
    }
}
