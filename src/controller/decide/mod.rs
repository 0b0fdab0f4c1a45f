//! PURE: one controller pass, from observed objects to typed actions.
//!
//! [`decide`] runs these steps, each a plain function of data:
//! 1. **nodes**: a node whose heartbeat is older than the lost-node timeout is `Lost`;
//! 2. **attempt progress** (PROTOCOL.md steps 3 and 5): `attempts[N].startedAt` while
//!    Starting → Running; `attempts[N].stoppedAt` → Succeeded (exit code 0) or
//!    [`retry::decide`] → Runnable again (label removed, `notBefore` on backoff) or
//!    Failed; an attempt on a lost or deleted node ends with reason `NodeLost`;
//! 3. **schedule**: [`snapshot::build`] over the progressed state, [`scheduler::plan`],
//!    then its bindings, phase changes, dependency failures and "why not running"
//!    reasons onto the jobs;
//! 4. **arrays**: missing children to create, parent `arrayStatus` and phase;
//! 5. **nodes, environments, queues**: derived status; fleet actions (terminate, then
//!    set desired capacity) for compute environments with a fleet.
//!
//! Every status is computed as the full set of fields the controller owns
//! ([`super::status::owned_job_status`]) and emitted only when it differs from what is
//! observed, so a pass over an unchanged world emits nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Resource;
use kube::api::ObjectMeta;

use crate::api::batch_job::{ArrayStatus, AttemptStatus, BatchJobStatus, JobPhase};
use crate::api::batch_node::{BatchNodeStatus, NodeJob, NodePhase as ApiNodePhase};
use crate::api::common::{JobTemplate, Resources as ApiResources, RetryAction};
use crate::api::compute_environment::{ComputeEnvironmentStatus, InstanceShape};
use crate::api::job_queue::JobQueueStatus;
use crate::api::{BatchJob, BatchNode, ComputeEnvironment, JobDefinition, JobQueue};
use crate::cloud::FleetState;
use crate::scheduler::retry::{self, AttemptOutcome, FailCause, REASON_NODE_LOST, RetryDecision};
use crate::scheduler::{self, DEPENDENCY_FAILED, JobId, Phase, Plan, Reason, Resources, Seconds};

use super::snapshot::{self, Inputs, api_phase, effective_template, job_id, phase};
use super::status::{owned_job_status, owned_node_status, reason_code, set_condition};
use super::time::{seconds, time};
use super::{
    CONDITION_READY, CONDITION_SCALING, CONDITION_SCHEDULED, CONDITION_VALID, LABEL_ARRAY_PARENT,
    LABEL_NODE, reasons,
};

mod arrays;
mod attempts;
mod derived;
mod schedule;
#[cfg(test)]
mod tests;

use arrays::arrays;
pub use arrays::new_child;
use attempts::progress;
use derived::{environment_updates, node_updates, queue_updates};
use schedule::apply_plan;

/// Tunables of a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecideConfig {
    /// A node whose heartbeat is older than this is Lost.
    pub lost_node_timeout: Seconds,
}

impl Default for DecideConfig {
    fn default() -> Self {
        Self {
            lost_node_timeout: 60,
        }
    }
}

/// Everything a pass looks at.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Every ComputeEnvironment.
    pub compute_environments: Vec<Arc<ComputeEnvironment>>,
    /// Every JobQueue.
    pub queues: Vec<Arc<JobQueue>>,
    /// Every JobDefinition.
    pub definitions: Vec<Arc<JobDefinition>>,
    /// Every BatchJob.
    pub jobs: Vec<Arc<BatchJob>>,
    /// Every BatchNode.
    pub nodes: Vec<Arc<BatchNode>>,
    /// The fleet of each compute environment that has one, as described now.
    pub fleets: BTreeMap<String, FleetState>,
    /// Compute environments whose fleet could not be reached or described, and why.
    pub fleet_errors: BTreeMap<String, String>,
    /// Instance shapes looked up for compute environments without `spec.instanceShape`.
    pub shapes: BTreeMap<String, Resources>,
    /// When this controller first saw each node's current `heartbeatTime` value, on its
    /// own clock. A node is Lost when that value has not changed for the lost-node
    /// timeout, so an agent whose clock is off is judged by its heartbeats, not by its
    /// clock. Nodes not in it are judged by the timestamp itself.
    pub heartbeats_seen: BTreeMap<String, Seconds>,
}

/// A label change on a BatchJob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelChange {
    /// Set `asgbatch.io/node` to this node.
    Set(String),
    /// Remove `asgbatch.io/node`.
    Remove,
}

/// A write to one BatchJob: label first, then status (PROTOCOL.md).
#[derive(Debug, Clone, PartialEq)]
pub struct JobUpdate {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The resourceVersion the decision was made on (precondition of the label patch).
    pub resource_version: Option<String>,
    /// Label change, if any.
    pub label: Option<LabelChange>,
    /// Every controller-owned status field, when any of them changes.
    pub status: Option<BatchJobStatus>,
}

/// An array child to create.
#[derive(Debug, Clone)]
pub struct NewChild {
    /// The complete object (name, labels, owner reference, spec).
    pub job: BatchJob,
}

/// A write to one BatchNode's controller-owned status.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeUpdate {
    /// Node name.
    pub name: String,
    /// Every controller-owned status field.
    pub status: BatchNodeStatus,
}

/// A write to a ComputeEnvironment's status.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvironmentUpdate {
    /// Name.
    pub name: String,
    /// Full status.
    pub status: ComputeEnvironmentStatus,
}

/// A write to a JobQueue's status.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueUpdate {
    /// Name.
    pub name: String,
    /// Full status.
    pub status: JobQueueStatus,
}

/// A fleet call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetAction {
    /// Terminate one instance, decrementing desired capacity (its BatchNode goes once the
    /// instance has left the fleet and its agent is quiet: [`Decisions::delete_nodes`]).
    Terminate {
        /// Compute environment.
        compute_environment: String,
        /// BatchNode name.
        node: String,
        /// Instance id.
        instance_id: String,
    },
    /// Set the desired capacity (after this pass's terminations).
    SetDesired {
        /// Compute environment.
        compute_environment: String,
        /// New desired capacity.
        desired: u32,
        /// Desired capacity observed before.
        from: u32,
    },
}

/// A Kubernetes Event to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    /// The object it is about.
    pub regarding: ObjectReference,
    /// Warning (true) or Normal.
    pub warning: bool,
    /// CamelCase reason.
    pub reason: &'static str,
    /// Human text.
    pub note: String,
}

/// Every action of one pass.
#[derive(Debug, Clone, Default)]
pub struct Decisions {
    /// BatchJob writes, in job-id order.
    pub jobs: Vec<JobUpdate>,
    /// Array children to create.
    pub children: Vec<NewChild>,
    /// BatchNode status writes.
    pub nodes: Vec<NodeUpdate>,
    /// ComputeEnvironment status writes.
    pub compute_environments: Vec<EnvironmentUpdate>,
    /// JobQueue status writes.
    pub queues: Vec<QueueUpdate>,
    /// Fleet calls: every Terminate before the SetDesired of its environment.
    pub fleet: Vec<FleetAction>,
    /// BatchNodes to delete: their instance left its fleet and their agent went quiet.
    pub delete_nodes: Vec<String>,
    /// Events.
    pub events: Vec<Note>,
    /// The scheduler's plan of this pass (for logs and tests).
    pub plan: Plan,
}

/// A job being decided: the object and its desired controller-owned status.
struct Work<'a> {
    job: &'a BatchJob,
    desired: BatchJobStatus,
}

fn object_ref<K: Resource<DynamicType = ()>>(k: &K) -> ObjectReference {
    k.object_ref(&())
}

fn event(
    out: &mut Vec<Note>,
    regarding: ObjectReference,
    warning: bool,
    reason: &'static str,
    note: String,
) {
    out.push(Note {
        regarding,
        warning,
        reason,
        note,
    });
}

/// Runs one pass.
pub fn decide(observed: &Observed, config: &DecideConfig, now: Seconds) -> Decisions {
    let mut out = Decisions::default();
    let definitions: Vec<&JobDefinition> = observed.definitions.iter().map(|d| &**d).collect();
    let defs = snapshot::index_definitions(&definitions);

    // 1. Node liveness.
    let nodes: BTreeMap<&str, &BatchNode> = observed
        .nodes
        .iter()
        .filter_map(|n| Some((n.metadata.name.as_deref()?, &**n)))
        .collect();
    let mut node_phase: BTreeMap<&str, ApiNodePhase> = BTreeMap::new();
    // Nodes whose instance has left its described fleet (terminated, or terminating): never
    // schedulable, not capacity, and deleted once their agent has gone quiet. Deleting
    // them at once would not do: an agent still running on a terminating instance
    // registers its node again.
    let departed: BTreeSet<&str> = nodes
        .iter()
        .filter(|(_, n)| {
            observed
                .fleets
                .get(&n.spec.compute_environment)
                .is_some_and(|f| {
                    !f.live_instances()
                        .any(|i| i.instance_id.eq_ignore_ascii_case(&n.spec.instance_id))
                })
        })
        .map(|(name, _)| *name)
        .collect();
    for (name, n) in &nodes {
        let current = n.status.as_ref().and_then(|s| s.phase);
        let heartbeat = observed
            .heartbeats_seen
            .get(*name)
            .copied()
            .unwrap_or_else(|| {
                n.status
                    .as_ref()
                    .and_then(|s| s.heartbeat_time.as_ref())
                    .or(n.metadata.creation_timestamp.as_ref())
                    .map_or(now, seconds)
            });
        let lost = now.saturating_sub(heartbeat) > config.lost_node_timeout;
        // Draining lasts until a fleet terminates the node; without a fleet nothing
        // would, so such a node goes back to Ready.
        let ce = &n.spec.compute_environment;
        let has_fleet = observed.fleets.contains_key(ce) || observed.fleet_errors.contains_key(ce);
        let p = match (lost, current) {
            (true, _) => ApiNodePhase::Lost,
            (false, _) if departed.contains(name) => ApiNodePhase::Draining,
            (false, Some(ApiNodePhase::Draining)) if has_fleet => ApiNodePhase::Draining,
            (false, _) => ApiNodePhase::Ready,
        };
        node_phase.insert(name, p);
    }

    // 2. Attempt progress.
    let mut work: BTreeMap<JobId, Work<'_>> = BTreeMap::new();
    for j in &observed.jobs {
        let mut w = Work {
            job: j,
            desired: owned_job_status(j.status.as_ref()),
        };
        if !snapshot::is_array_parent(j) {
            progress(&mut w, &defs, &nodes, &node_phase, now, &mut out.events);
        }
        work.insert(job_id(j), w);
    }

    // 3. Schedule over the progressed state.
    let progressed: Vec<BatchJob> = work
        .values()
        .filter(|w| {
            let s = w.job.status.as_ref();
            s.and_then(|s| s.phase) != w.desired.phase
                || s.and_then(|s| s.node.as_ref()) != w.desired.node.as_ref()
        })
        .map(|w| {
            let mut j = w.job.clone();
            let st = j.status.get_or_insert_with(Default::default);
            st.phase = w.desired.phase;
            st.node = w.desired.node.clone();
            st.not_before = w.desired.not_before.clone();
            j
        })
        .collect();
    let progressed_ids: BTreeSet<JobId> = progressed.iter().map(job_id).collect();
    let mut jobs: Vec<&BatchJob> = observed
        .jobs
        .iter()
        .map(|j| &**j)
        .filter(|j| !progressed_ids.contains(&job_id(j)))
        .collect();
    jobs.extend(progressed.iter());
    let holding = nodes_holding_jobs(&work);
    let relabelled: Vec<BatchNode> = observed
        .nodes
        .iter()
        .filter(|n| {
            n.metadata
                .name
                .as_deref()
                .is_none_or(|m| !departed.contains(m) || holding.contains(m))
        })
        .map(|n| {
            let mut n = (**n).clone();
            if let Some(p) = n.metadata.name.as_deref().and_then(|m| node_phase.get(m)) {
                n.status.get_or_insert_with(Default::default).phase = Some(*p);
            }
            n
        })
        .collect();
    let fleet_instances: BTreeSet<String> = observed
        .nodes
        .iter()
        .map(|n| n.spec.instance_id.to_ascii_lowercase())
        .collect();
    let booting: BTreeMap<String, u32> = observed
        .fleets
        .iter()
        .map(|(ce, f)| {
            let n = f
                .live_instances()
                .filter(|i| !fleet_instances.contains(&i.instance_id.to_ascii_lowercase()))
                .count();
            (ce.clone(), u32::try_from(n).unwrap_or(u32::MAX))
        })
        .collect();
    let built = snapshot::build(&Inputs {
        compute_environments: observed.compute_environments.iter().map(|c| &**c).collect(),
        queues: observed.queues.iter().map(|q| &**q).collect(),
        definitions: definitions.clone(),
        jobs,
        nodes: relabelled.iter().collect(),
        booting,
        shapes: observed.shapes.clone(),
        now,
    });
    let mut plan = scheduler::plan(&built.snapshot, now);
    // Only a fleet can terminate a drained node: never drain where there is none.
    plan.drain.retain(|n| {
        built
            .snapshot
            .nodes
            .get(n)
            .is_some_and(|x| observed.fleets.contains_key(&x.compute_environment))
    });
    apply_plan(
        &plan,
        &built,
        &mut work,
        &nodes,
        &observed.fleet_errors,
        now,
        &mut out.events,
    );

    // 4. Arrays.
    arrays(&mut work, &mut out, now);

    // Generation, labels, and the job writes.
    for (id, w) in &work {
        w_finish(id, w, &mut out.jobs);
    }

    // 5. Nodes, environments, queues, fleets.
    node_updates(&work, &built, &nodes, &node_phase, &plan, now, &mut out);
    environment_updates(observed, &built, &plan, &nodes, &node_phase, now, &mut out);
    queue_updates(observed, &work, now, &mut out);
    let holding = nodes_holding_jobs(&work);
    out.delete_nodes = departed
        .iter()
        .filter(|n| node_phase.get(*n) == Some(&ApiNodePhase::Lost) && !holding.contains(**n))
        .map(|n| (*n).to_owned())
        .collect();
    out.plan = plan;
    out
}

/// Nodes that a Starting or Running job is on, as decided so far.
fn nodes_holding_jobs(work: &BTreeMap<JobId, Work<'_>>) -> BTreeSet<String> {
    work.values()
        .filter(|w| phase(w.desired.phase).is_placed())
        .filter_map(|w| w.desired.node.clone())
        .collect()
}

fn w_finish(id: &JobId, w: &Work<'_>, jobs: &mut Vec<JobUpdate>) {
    let mut desired = w.desired.clone();
    desired.observed_generation = w.job.metadata.generation;
    let current = owned_job_status(w.job.status.as_ref());
    let want_label = match desired.phase.map(|p| phase(Some(p))) {
        Some(p) if p.is_placed() => desired.node.clone(),
        _ => None,
    };
    let have_label = w
        .job
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_NODE))
        .cloned();
    let label = match (&want_label, &have_label) {
        (Some(n), h) if h.as_ref() != Some(n) => Some(LabelChange::Set(n.clone())),
        (None, Some(_)) => Some(LabelChange::Remove),
        _ => None,
    };
    let status = (desired != current).then_some(desired);
    if label.is_some() || status.is_some() {
        let (namespace, name) = id.0.split_once('/').unwrap_or(("", &id.0));
        jobs.push(JobUpdate {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            resource_version: w.job.metadata.resource_version.clone(),
            label,
            status,
        });
    }
}
