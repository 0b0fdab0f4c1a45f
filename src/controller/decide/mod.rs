//! PURE: one controller pass, from observed objects to typed actions.
//!
//! [`decide`] runs these steps, each a plain function of data:
//! 1. **nodes** ([`liveness`]): a node whose heartbeat this controller has not seen change
//!    for the lost-node timeout, counting from the last gap in its view, is `Lost`, unless
//!    its compute environment is in disruption mode (many nodes silent at once);
//! 2. **attempt progress** (PROTOCOL.md steps 3 and 5): `attempts[N].startedAt` while
//!    Starting → Running; `attempts[N].stoppedAt` → Succeeded (exit code 0) or
//!    [`retry::decide`] → Runnable again (label removed, `notBefore` on backoff) or
//!    Failed; an attempt on a Lost node ends with reason `NodeLost` only once its
//!    instance is gone or its BatchNode deleted (fence, then retry); a binding a
//!    draining node's agent refused is handed back;
//! 3. **schedule**: [`snapshot::build`] once, from what was observed, with step 2's
//!    progress applied to the model ([`snapshot::Built::progress`]: a job's phase, node
//!    and backoff, and its node's allocation; no API object is cloned or rebuilt), then
//!    [`scheduler::plan`], then its bindings, phase changes, dependency failures and
//!    "why not running" reasons onto the jobs;
//! 4. **arrays**: missing children to create (in batches: at most
//!    [`DecideConfig::array_children_waiting`] of one array waiting at a time), parent
//!    `arrayStatus` and phase; then
//!    **retention** ([`retention`]): finished jobs past their `ttlSecondsAfterFinished`
//!    to delete (an array parent after its children);
//! 5. **nodes, environments, queues**: derived status; fleet actions (fences of Lost
//!    nodes, terminations of drained nodes whose agent let them go, then desired
//!    capacity) for compute environments with a fleet.
//!
//! Every status is computed as the full set of fields the controller owns
//! ([`super::status::owned_job_status`]) and emitted only when it differs from what is
//! observed, so a pass over an unchanged world emits nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Resource;

use crate::api::batch_job::{BatchJobStatus, JobPhase};
use crate::api::batch_node::{BatchNodeStatus, NodePhase as ApiNodePhase};
use crate::api::compute_environment::ComputeEnvironmentStatus;
use crate::api::job_queue::JobQueueStatus;
use crate::api::{BatchJob, BatchNode, ComputeEnvironment, JobDefinition, JobQueue};
use crate::cloud::FleetState;
use crate::scheduler::{self, JobId, Plan, Resources, Seconds};

use super::time::seconds;
use super::{LABEL_NODE, reasons};
use snapshot::{Inputs, JobState, job_id, phase};
use status::owned_job_status;

mod arrays;
mod attempts;
mod boot;
mod cancel;
pub mod carry;
mod derived;
mod liveness;
mod park;
mod retention;
mod schedule;
mod settled;
pub(crate) mod snapshot;
pub(crate) mod status;
#[cfg(test)]
mod tests;
mod time_limits;

use arrays::arrays;
pub use arrays::{ARRAY_CHILDREN_WAITING, new_child};
use attempts::{NodeFacts, progress};
pub use cancel::{CancelChild, REASON_CANCELLED, REASON_TERMINATED};
use derived::{environment_updates, node_updates, queue_updates};
use liveness::{Liveness, liveness};
use retention::retention;
use schedule::apply_plan;
pub use settled::Settled;

/// Tunables of a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecideConfig {
    /// A node whose heartbeat this controller has not seen change for this long, across
    /// a whole view, is Lost (default 300 s: as long as pods tolerate `unreachable`).
    pub lost_node_timeout: Seconds,
    /// Disruption mode: when more than this share (percent) of a compute environment's
    /// nodes (at least two) are silent at once, or every node of the cluster is, no node
    /// is declared Lost (kube-controller-manager's `--unhealthy-zone-threshold`).
    pub disruption_threshold_percent: u32,
    /// At most this many children of one array wait at a time (created, not yet bound):
    /// an array's children are created in batches as earlier ones are bound
    /// ([`ARRAY_CHILDREN_WAITING`] by default).
    pub array_children_waiting: u32,
    /// A pass that remembers settled jobs ([`decide_with`]) leaves the later members of
    /// a parked class of Runnable jobs out ([`crate::scheduler::park`]), their status
    /// as written; their queue positions are refreshed at least this often
    /// ([`DEFAULT_FULL_PASS_INTERVAL`]): by a **refresh** when they are carried
    /// (`carry_parked`: their positions worked out without planning them, the stale
    /// ones planned: see [`carry`]), else by a **full pass** (nothing parked). 0: every
    /// pass is full.
    pub full_pass_interval: Seconds,
    /// A parked class keeps at least its first this many members in the snapshot, and
    /// every queue its first this many parked jobs ([`crate::scheduler::forecast::MAX_PROJECTED`]
    /// by default: the forecast projects no more, so every estimated start is exact).
    pub parked_kept: usize,
    /// Whether the parked jobs a pass leaves out are carried to the next passes
    /// outside the observed jobs ([`carry`]): only for a caller that feeds the passes
    /// through a [`carry::JobIndex`] (the controller's loop), since the observed jobs
    /// must then leave the carried ones out.
    pub carry_parked: bool,
}

impl Default for DecideConfig {
    fn default() -> Self {
        Self {
            lost_node_timeout: DEFAULT_LOST_NODE_TIMEOUT,
            disruption_threshold_percent: 55,
            array_children_waiting: ARRAY_CHILDREN_WAITING,
            full_pass_interval: DEFAULT_FULL_PASS_INTERVAL,
            parked_kept: crate::scheduler::forecast::MAX_PROJECTED,
            carry_parked: false,
        }
    }
}

/// The default [`DecideConfig::full_pass_interval`] in seconds: three resyncs (10 s
/// each by default). A parked job's position is the only thing a pass with parking
/// leaves stale, and only beyond the [`DecideConfig::parked_kept`] first parked jobs
/// of its queue, where it is rewritten only when it moves by a factor of 4
/// ([`crate::scheduler::forecast::material_change`]): a 30 s lag on such a figure is
/// not seen. A refresh of a carried backlog costs what a pass that parks costs (49,000
/// carried: 4–5 ms in the `controller pass` bench, 5–6 ms in dev against 3–7 ms for
/// the passes between), where a full pass over it took 160–250 ms.
pub const DEFAULT_FULL_PASS_INTERVAL: Seconds = 30;

/// The default lost-node timeout in seconds: Kubernetes pods tolerate a node being
/// `unreachable` for 300 s before they are evicted.
pub const DEFAULT_LOST_NODE_TIMEOUT: Seconds = 300;

/// A fence whose instance is still in its fleet is asked again after this long.
pub const FENCE_RETRY_SECONDS: Seconds = 60;

/// Everything a pass looks at.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Every ComputeEnvironment.
    pub compute_environments: Vec<Arc<ComputeEnvironment>>,
    /// Every JobQueue.
    pub queues: Vec<Arc<JobQueue>>,
    /// Every JobDefinition.
    pub definitions: Vec<Arc<JobDefinition>>,
    /// Every BatchJob, but those carried by the memory ([`carry::JobIndex`]).
    pub jobs: Vec<Arc<BatchJob>>,
    /// Carried jobs (as carried) that changed or went since the last pass
    /// ([`carry::JobIndex::released`]).
    pub released: Vec<Arc<BatchJob>>,
    /// Every BatchNode.
    pub nodes: Vec<Arc<BatchNode>>,
    /// The fleet of each compute environment that has one, as described now.
    pub fleets: BTreeMap<String, FleetState>,
    /// Compute environments whose fleet could not be reached or described, and why.
    pub fleet_errors: BTreeMap<String, FleetProblem>,
    /// Instance shapes looked up for compute environments without `spec.instanceShape`.
    pub shapes: BTreeMap<String, Resources>,
    /// When this controller first saw each node's current `heartbeatTime` value, on its
    /// own clock. A node is Lost when that value has not changed for the lost-node
    /// timeout, so an agent whose clock is off is judged by its heartbeats, not by its
    /// clock. Nodes not in it are judged by the timestamp itself.
    pub heartbeats_seen: BTreeMap<String, Seconds>,
    /// Since when this controller has seen each node hold no attempt, without a break
    /// ([`super::memory::PassMemory`]). A node not in it became idle in this pass.
    pub idle_seen: BTreeMap<String, Seconds>,
    /// When this controller first observed each Draining node Draining.
    pub draining_seen: BTreeMap<String, Seconds>,
    /// When the controller last fenced each node's instance.
    pub fenced: BTreeMap<String, Seconds>,
    /// The last gap in the controller's view (its start, a watch error, failed writes, a
    /// change of leadership): no node's grace counts from before it.
    pub view_gap: Option<Seconds>,
}

/// Why a compute environment's fleet fails: the reason of its `Ready=False` condition and
/// Warning Event, and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetProblem {
    /// `FleetError`, or `AccessDenied` when IAM refused a call (the message names the
    /// missing permission).
    pub reason: &'static str,
    /// What failed.
    pub message: String,
}

impl FleetProblem {
    /// A cloud error of `compute_environment`'s fleet.
    pub fn from_cloud(error: &crate::cloud::CloudError) -> Self {
        let reason = match error {
            crate::cloud::CloudError::AccessDenied { .. } => super::reasons::ACCESS_DENIED,
            _ => super::reasons::FLEET_ERROR,
        };
        Self {
            reason,
            message: error.to_string(),
        }
    }

    /// Any other failure (`FleetError`).
    pub fn other(message: impl Into<String>) -> Self {
        Self {
            reason: super::reasons::FLEET_ERROR,
            message: message.into(),
        }
    }
}

/// A label change on a BatchJob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelChange {
    /// Set `asgbatch.io/node` to this node (no longer decided: agents watch `status.node`
    /// by field selector; kept for the write path).
    Set(String),
    /// Remove the legacy `asgbatch.io/node` label (written by controllers before field
    /// selectors) when its job leaves that node.
    Remove,
}

/// A write to one BatchJob: label first (only to remove a legacy label), then status
/// (PROTOCOL.md).
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
    /// The node this write newly binds the job to (its `status.node` with phase Starting
    /// or Running, where the observed job was not bound there): the node's Secret grant
    /// must be written first.
    pub binds: Option<String>,
    /// Every controller-owned status field, when any of them changes.
    pub status: Option<BatchJobStatus>,
}

/// An array child to create.
#[derive(Debug, Clone)]
pub struct NewChild {
    /// The complete object (name, labels, owner reference, spec).
    pub job: BatchJob,
}

/// A finished job to delete (its `ttlSecondsAfterFinished` passed), guarded by its uid:
/// a job created again under the same name is not touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobDeletion {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The uid the decision was made on (delete precondition).
    pub uid: Option<String>,
    /// An array parent: deleted after its children.
    pub array_parent: bool,
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

/// A write to a JobDefinition's `status.durations` (its own field manager's field).
#[derive(Debug, Clone, PartialEq)]
pub struct DefinitionUpdate {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The kept duration history.
    pub durations: crate::api::job_definition::DurationHistory,
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
    /// Terminate the instance of a Lost node that still holds attempts, so that they can
    /// be retried without ever running twice at once (STONITH). Ignores scale-in
    /// protection; decrements desired capacity.
    Fence {
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

impl FleetAction {
    /// The compute environment whose fleet the call goes to.
    pub fn compute_environment(&self) -> &str {
        match self {
            Self::Fence {
                compute_environment,
                ..
            }
            | Self::Terminate {
                compute_environment,
                ..
            }
            | Self::SetDesired {
                compute_environment,
                ..
            } => compute_environment,
        }
    }
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
    /// Running array children of a cancelled parent to mark cancelled (`spec.cancel`),
    /// so that their agents stop them; written after [`Decisions::jobs`].
    pub cancel_children: Vec<CancelChild>,
    /// Finished jobs past their TTL, to delete (array children before their parent).
    pub delete_jobs: Vec<JobDeletion>,
    /// BatchNode status writes.
    pub nodes: Vec<NodeUpdate>,
    /// ComputeEnvironment status writes.
    pub compute_environments: Vec<EnvironmentUpdate>,
    /// JobQueue status writes.
    pub queues: Vec<QueueUpdate>,
    /// JobDefinition `status.durations` writes (batched: [`super::estimates`]).
    pub definitions: Vec<DefinitionUpdate>,
    /// Fleet calls: every Terminate before the SetDesired of its environment.
    pub fleet: Vec<FleetAction>,
    /// BatchNodes to delete: their instance left its fleet and their agent went quiet.
    pub delete_nodes: Vec<String>,
    /// Events.
    pub events: Vec<Note>,
    /// The scheduler's plan of this pass (for logs and tests).
    pub plan: Plan,
    /// Parked classes whose later members this pass left out of the scheduler's snapshot
    /// ([`crate::scheduler::park`]; 0 in a full pass).
    pub parked_classes: usize,
    /// The jobs those classes left out (their status as written).
    pub parked_jobs: usize,
    /// Every waiting job's queue fields are as a full pass leaves them after this pass:
    /// it was a full pass (nothing left out) or a refresh (the left-out jobs' positions
    /// worked out, the stale ones planned), every `full_pass_interval` at least.
    pub full_pass: bool,
    /// What the pass changed in its carry of parked jobs, for the job index.
    pub carry: carry::CarryChanges,
    /// Since when each node holding no attempt after this pass has been idle, as this
    /// controller saw it (the next pass's [`Observed::idle_seen`]).
    pub idle: BTreeMap<String, Seconds>,
    /// The Secrets each node may read after this pass: those its bound jobs reference
    /// ([`super::grants::desired`]).
    pub grants: super::grants::Grants,
}

/// A job being decided: the object and its desired controller-owned status.
struct Work<'a> {
    job: &'a BatchJob,
    desired: BatchJobStatus,
}

/// A job the pass decides after all (its memory or the plan says it changed): into
/// `work`, its desired status starting from the observed one.
fn decide_again<'a>(work: &mut BTreeMap<JobId, Work<'a>>, j: &'a BatchJob) {
    work.insert(
        job_id(j),
        Work {
            job: j,
            desired: owned_job_status(j.status.as_ref()),
        },
    );
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

/// Runs one pass, as the first pass of a controller (nothing remembered).
pub fn decide(observed: &Observed, config: &DecideConfig, now: Seconds) -> Decisions {
    decide_with(observed, config, now, &mut Settled::default())
}

/// Runs one pass with what earlier passes remembered of settled waiting jobs
/// ([`Settled`]), and updates it. The decisions are exactly those of [`decide`]; a
/// backlog of waiting jobs whose status is already right costs only its scheduling.
pub fn decide_with(
    observed: &Observed,
    config: &DecideConfig,
    now: Seconds,
    settled: &mut Settled,
) -> Decisions {
    settled.begin();
    // Carried jobs that changed or went since: their entries are stale.
    settled.drop_released(&observed.released);
    // Every `full_pass_interval`, the queue fields of the jobs passes leave out are
    // refreshed: by a refresh when they are carried (the controller's loop), else by a
    // full pass.
    let (may_park, refresh) = match settled.kind(now, config.full_pass_interval) {
        settled::PassKind::Park => (true, false),
        settled::PassKind::Refresh if config.carry_parked => (true, true),
        settled::PassKind::Refresh | settled::PassKind::Full => (false, false),
    };
    // A pass that does not park sees every job: the carried ones from the carry (which
    // keeps those it leaves as they are).
    let mut back: Vec<Arc<BatchJob>> = if may_park {
        Vec::new()
    } else {
        settled.carry.jobs()
    };
    // Jobs a refresh found stale: planned (their queue fields written) after all.
    let mut refreshed: BTreeSet<*const BatchJob> = BTreeSet::new();
    loop {
        let pass = Pass {
            back: &back,
            may_park,
            refresh,
            refreshed: &refreshed,
        };
        match decide_once(observed, &pass, config, now, settled) {
            Ok(mut out) => {
                if may_park {
                    out.carry.unparked = back;
                }
                out.carry.by_queue = settled
                    .carry
                    .by_queue()
                    .into_iter()
                    .map(|(q, n)| (q.to_owned(), n))
                    .collect();
                return out;
            }
            // Carried jobs this pass must see after all: decided again with them (and
            // the stale ones of a refresh planned).
            Err(again) => {
                refreshed.extend(again.refreshed);
                back.extend(settled.give_back(again.back));
            }
        }
    }
}

/// How one attempt at a pass runs ([`decide_once`]).
struct Pass<'p> {
    /// Carried jobs taken back.
    back: &'p [Arc<BatchJob>],
    /// It may park.
    may_park: bool,
    /// It is a refresh ([`settled::PassKind::Refresh`]).
    refresh: bool,
    /// Jobs a refresh found stale, to plan.
    refreshed: &'p BTreeSet<*const BatchJob>,
}

/// Why an attempt at a pass must be made again.
struct Again {
    /// Carried jobs it must see.
    back: Vec<carry::Member>,
    /// Jobs (set aside or among `back`) a refresh found stale, to plan.
    refreshed: Vec<*const BatchJob>,
}

impl From<Vec<carry::Member>> for Again {
    fn from(back: Vec<carry::Member>) -> Self {
        Again {
            back,
            refreshed: Vec::new(),
        }
    }
}

/// One attempt at a pass over the observed jobs and `pass.back` (carried jobs taken
/// back); `Err` with more carried jobs it must see.
fn decide_once(
    observed: &Observed,
    pass: &Pass<'_>,
    config: &DecideConfig,
    now: Seconds,
    settled: &mut Settled,
) -> Result<Decisions, Again> {
    let Pass {
        back,
        may_park,
        refresh,
        refreshed,
    } = *pass;
    let jobs: Vec<&Arc<BatchJob>> = observed.jobs.iter().chain(back).collect();
    let mut out = Decisions::default();
    let definitions: Vec<&JobDefinition> = observed.definitions.iter().map(|d| &**d).collect();
    let defs = snapshot::index_definitions(&definitions);

    // 1. Node liveness.
    let nodes: BTreeMap<&str, &BatchNode> = observed
        .nodes
        .iter()
        .filter_map(|n| Some((n.metadata.name.as_deref()?, &**n)))
        .collect();
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
    let liveness = liveness(observed, config, &nodes, &departed, now);
    let mut node_phase: BTreeMap<&str, ApiNodePhase> = BTreeMap::new();
    for (name, n) in &nodes {
        let current = n.status.as_ref().and_then(|s| s.phase);
        let lost = liveness.lost.contains(name);
        // Draining lasts until a fleet terminates the node; without a fleet nothing
        // would, so such a node goes back to Ready.
        let ce = &n.spec.compute_environment;
        let has_fleet = observed.fleets.contains_key(ce) || observed.fleet_errors.contains_key(ce);
        let p = match (lost, current) {
            (true, _) => ApiNodePhase::Lost,
            // Declared Lost before a disruption began: it stays Lost while silent.
            (false, Some(ApiNodePhase::Lost)) if liveness.silent.contains(name) => {
                ApiNodePhase::Lost
            }
            (false, _) if departed.contains(name) => ApiNodePhase::Draining,
            // A Spot interruption notice or rebalance recommendation: no new work, and
            // not capacity (the scheduler asks for a replacement at once).
            (false, _) if interrupted(n) => ApiNodePhase::Draining,
            (false, Some(ApiNodePhase::Draining)) if has_fleet => ApiNodePhase::Draining,
            (false, _) => ApiNodePhase::Ready,
        };
        node_phase.insert(name, p);
    }

    // 2. Attempt progress.
    let with_fleet: BTreeSet<&str> = observed
        .fleets
        .keys()
        .chain(observed.fleet_errors.keys())
        .map(String::as_str)
        .collect();
    let facts = NodeFacts {
        nodes: &nodes,
        phase: &node_phase,
        departed: &departed,
        with_fleet: &with_fleet,
    };
    let mut work: BTreeMap<JobId, Work<'_>> = BTreeMap::new();
    // Queues whose jobStateTimeLimitActions may act on a waiting job as time passes.
    let timed_queues: BTreeSet<&str> = observed
        .queues
        .iter()
        .filter(|q| !q.spec.job_state_time_limit_actions.is_empty())
        .filter_map(|q| q.metadata.name.as_deref())
        .collect();
    let ttl_defaults = retention::ttl_defaults(&observed.queues);
    // Array parents by namespace and name: a finished child settles only while its
    // parent is there, not cancelled and not expired (else retention or cancellation
    // acts on it with its parent).
    let array_parents: BTreeMap<(&str, &str), &BatchJob> = jobs
        .iter()
        .filter(|j| snapshot::is_array_parent(j))
        .filter_map(|j| {
            let ns = j.metadata.namespace.as_deref().unwrap_or_default();
            Some(((ns, j.metadata.name.as_deref()?), &***j))
        })
        .collect();
    let parent_allows = |j: &BatchJob| {
        j.spec.array_index.is_none()
            || j.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(super::LABEL_ARRAY_PARENT))
                .and_then(|p| {
                    let ns = j.metadata.namespace.as_deref().unwrap_or_default();
                    array_parents.get(&(ns, p.as_str()))
                })
                .is_some_and(|p| {
                    p.spec.cancel.is_none() && !retention::expired(p, &ttl_defaults, now)
                })
    };
    let may_settle = |j: &BatchJob| {
        settled::eligible(j)
            && !timed_queues.contains(j.spec.queue.as_str())
            && !retention::expired(j, &ttl_defaults, now)
            && j.status
                .as_ref()
                .and_then(|s| s.runnable_since.as_ref())
                .is_none_or(|t| seconds(t) <= now)
            && parent_allows(j)
    };
    // Settled in an earlier pass at this resourceVersion (waiting, or finished and not
    // expired): decided after the plan. In a pass that may park, the settled Runnable
    // ones are set aside until the scheduler says whether their class parks.
    let mut quiet: Vec<&BatchJob> = Vec::with_capacity(jobs.len());
    let mut aside: Vec<park::Aside<'_>> = Vec::with_capacity(if may_park { jobs.len() } else { 0 });
    let mut set_aside = vec![false; if may_park { jobs.len() } else { 0 }];
    for (i, &j) in jobs.iter().enumerate() {
        if may_park {
            // One lookup: confirmed now if set aside, its reason compared after the plan;
            // what the object says is worked out once per resourceVersion.
            let touched = settled.touch_with(
                j,
                |j| park::facts(j, &defs),
                |f| f.ready(now) && !timed_queues.contains(j.spec.queue.as_str()),
            );
            match touched {
                settled::Touched::Aside(reason, facts) => {
                    if let Some(a) = park::Aside::of(quiet.len(), j, reason, &facts, &defs, now) {
                        aside.push(a);
                        set_aside[i] = true;
                    }
                    quiet.push(j);
                    continue;
                }
                settled::Touched::Settled if may_settle(j) => {
                    quiet.push(j);
                    continue;
                }
                settled::Touched::Settled | settled::Touched::No => {}
            }
        } else if settled.get(j).is_some() && may_settle(j) {
            quiet.push(j);
            continue;
        }
        let mut w = Work {
            job: j,
            desired: owned_job_status(j.status.as_ref()),
        };
        if !snapshot::is_array_parent(j) {
            progress(&mut w, &defs, &facts, now, &mut out.events);
        }
        work.insert(job_id(j), w);
    }
    // 2b. Cancel and terminate.
    cancel::cancel(&mut work, &cancel::requests(&jobs), &facts, now, &mut out);

    // 3. Schedule: the snapshot is built once, from what was observed, and the attempt
    //    progress of step 2 is applied to it (only phase, node and backoff change).
    let holding = nodes_holding_jobs(&work);
    // Idleness as this controller saw it: a node is idle when it holds no attempt, in
    // the controller's view and in its agent's last report.
    let idle_before: BTreeMap<String, Seconds> = nodes
        .iter()
        .filter(|(name, n)| !holding.contains(**name) && !agent_runs_something(n))
        .map(|(name, _)| {
            let since = observed.idle_seen.get(*name).copied().unwrap_or(now);
            ((*name).to_owned(), since.min(now))
        })
        .collect();
    let terminable = terminable(observed, &nodes, &node_phase, &liveness);
    // Silent in a disruption: not Lost, but no new work either.
    let node_phases: BTreeMap<String, ApiNodePhase> = node_phase
        .iter()
        .map(|(name, p)| {
            let p = if liveness.silent.contains(name) && *p != ApiNodePhase::Lost {
                ApiNodePhase::Lost
            } else {
                *p
            };
            ((*name).to_owned(), p)
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
    let mut built = snapshot::build(&Inputs {
        compute_environments: observed.compute_environments.iter().map(|c| &**c).collect(),
        queues: observed.queues.iter().map(|q| &**q).collect(),
        definitions: definitions.clone(),
        jobs: jobs
            .iter()
            .enumerate()
            .filter(|(i, _)| !set_aside.get(*i).copied().unwrap_or(false))
            .map(|(_, j)| &***j)
            .collect(),
        nodes: observed.nodes.iter().map(|n| &**n).collect(),
        node_phases,
        booting,
        shapes: observed.shapes.clone(),
        idle_since: BTreeMap::new(),
        terminable,
        now,
    });
    for w in work.values() {
        let s = w.job.status.as_ref();
        if s.and_then(|s| s.phase) != w.desired.phase
            || s.and_then(|s| s.node.as_ref()) != w.desired.node.as_ref()
        {
            let state = JobState {
                phase: w.desired.phase,
                node: w.desired.node.as_deref(),
                not_before: w.desired.not_before.as_ref().map(seconds),
            };
            built.progress(w.job, &defs, state, now);
        }
    }
    // Nodes whose instance left its fleet are not capacity once they hold nothing.
    for name in departed.iter().filter(|n| !holding.contains(**n)) {
        built.remove_node(name);
    }
    built.set_idle_since(&idle_before, now);
    // Parked classes: their later members stay out of the snapshot.
    // A full pass has nothing set aside and parks nothing (its carried jobs are in
    // the snapshot).
    let mut no_carry = carry::Carry::default();
    let mut parked = park::park(
        &mut built,
        &aside,
        &defs,
        config.parked_kept,
        now,
        if may_park {
            &mut settled.carry
        } else {
            &mut no_carry
        },
        refreshed,
    )?;
    let mut plan = scheduler::plan(&built.snapshot, now);
    let mut left_out = vec![false; if parked.jobs > 0 { quiet.len() } else { 0 }];
    if parked.jobs > 0 {
        // A member left out keeps its status: its reason must be its head's. (It is,
        // unless what it was settled with changed, e.g. its environment's maxInstances.)
        let carry = &settled.carry;
        let reasons_hold = parked.classes.iter().all(|c| {
            let reason = plan.unplaced.get(&c.head);
            // Members remembered with an equal reason share it ([`Settled`]): one
            // comparison per distinct reason.
            let mut held: Option<*const scheduler::Reason> = None;
            c.members.iter().all(|&i| match &aside[i].reason {
                Some(r) if held == Some(Arc::as_ptr(r)) => true,
                Some(r) if Some(&**r) == reason => {
                    held = Some(Arc::as_ptr(r));
                    true
                }
                r => r.as_deref() == reason,
            }) && carry.reasons(&c.class).all(|r| r == reason)
        });
        // Runnable jobs by queue: positioned, left out and carried.
        let carried = carry.by_queue();
        let mut counts: BTreeMap<String, u32> = positioned(&built, &parked)
            .into_iter()
            .map(|(q, n)| (q.to_owned(), n))
            .collect();
        for (q, c) in &carried {
            let n = counts.entry((*q).to_owned()).or_default();
            *n = n.saturating_add(u32::try_from(*c).unwrap_or(u32::MAX));
        }
        let moved = settled.queues_moved(
            counts
                .iter()
                .filter(|(q, _)| {
                    parked.keys.contains_key(q.as_str()) || carried.contains_key(q.as_str())
                })
                .map(|(q, n)| (q.as_str(), *n)),
        );
        if (!reasons_hold || moved) && may_park && !settled.carry.is_empty() {
            // A full pass after all, with every carried job.
            return Err(settled.carry.take_all().into());
        }
        if reasons_hold && !moved {
            scheduler::park::count_parked_ahead(&mut plan, &built.snapshot, &parked.keys);
            if may_park && !settled.carry.is_empty() {
                let carry = &settled.carry;
                scheduler::park::add_ahead(&mut plan, &built.snapshot, |q, at, id| {
                    carry.ahead(q, at, id)
                });
            }
            if refresh {
                // The left-out jobs' queue fields, as a full pass would leave them: the
                // stale ones are planned after all.
                let stale =
                    park::stale(&plan, &built.snapshot, &aside, &parked, &settled.carry, now);
                if !stale.is_empty() {
                    let back = if stale.carried.is_empty() {
                        Vec::new()
                    } else {
                        let ids = stale.carried.iter().map(String::as_str).collect();
                        settled.carry.take_ids(&ids)
                    };
                    let refreshed = stale
                        .aside
                        .iter()
                        .map(|&i| Arc::as_ptr(aside[i].job))
                        .chain(back.iter().map(|m| Arc::as_ptr(&m.job)))
                        .collect();
                    return Err(Again { back, refreshed });
                }
                settled.full_pass(now, counts);
                out.full_pass = true;
            }
            for c in &parked.classes {
                for &i in &c.members {
                    left_out[aside[i].quiet] = true;
                }
            }
        } else {
            // A full pass after all.
            for c in &parked.classes {
                for &i in &c.members {
                    built.add_aside(aside[i].job, &defs, now);
                }
            }
            parked = park::Parked::default();
            left_out.clear();
            plan = scheduler::plan(&built.snapshot, now);
        }
    }
    if parked.jobs == 0 {
        let counts = positioned(&built, &parked)
            .into_iter()
            .map(|(q, n)| (q.to_owned(), n))
            .collect();
        settled.full_pass(now, counts);
        out.full_pass = true;
    }
    out.parked_classes = parked.classes.len();
    out.parked_jobs = parked.jobs;
    // Only a fleet can terminate a drained node: never drain where there is none.
    plan.drain.retain(|n| {
        built
            .snapshot
            .nodes
            .get(n)
            .is_some_and(|x| observed.fleets.contains_key(&x.compute_environment))
    });
    // Settled jobs the plan leaves as they were need nothing; the others are decided.
    // Finished array children kept settled, by parent and index (they count in their
    // parent's arrayStatus).
    let mut settled_children: arrays::Children = BTreeMap::new();
    let (kept_settled, quiet_runnable) = {
        let touched: BTreeSet<&JobId> = plan
            .bindings
            .iter()
            .map(|b| &b.job)
            .chain(plan.phase_changes.iter().map(|c| &c.job))
            .chain(plan.dependency_failures.iter().map(|f| &f.job))
            .collect();
        let mut id = JobId(String::new());
        let mut kept = 0usize;
        let mut runnable: BTreeMap<&str, i32> = BTreeMap::new();
        // Left out of the snapshot (parked): Runnable, their status as written, and
        // confirmed in the memory already (counted by queue, not one by one).
        for (queue, keys) in &parked.keys {
            kept += keys.len();
            let n = i32::try_from(keys.len()).unwrap_or(i32::MAX);
            let e = runnable.entry(*queue).or_default();
            *e = e.saturating_add(n);
        }
        // Carried from earlier passes and not seen by this one (a full pass sees them:
        // counted one by one), by queue.
        let unseen = if may_park {
            settled.carry.by_queue()
        } else {
            BTreeMap::new()
        };
        for (queue, n) in unseen {
            if let Some(q) = observed
                .queues
                .iter()
                .find_map(|x| x.metadata.name.as_deref().filter(|name| *name == queue))
            {
                let n = i32::try_from(n).unwrap_or(i32::MAX);
                let e = runnable.entry(q).or_default();
                *e = e.saturating_add(n);
            }
        }
        for (qi, j) in quiet.into_iter().enumerate() {
            if left_out.get(qi).copied().unwrap_or(false) {
                continue;
            }
            let observed_phase = j.status.as_ref().and_then(|s| s.phase);
            // A finished job: the plan never binds, moves, fails or forecasts it, and
            // it is in the snapshot's invalid jobs only if a finished job needs it
            // (then still not written: a finished job's status stays).
            if phase(observed_phase).is_terminal() {
                if super::estimates::queue_fields_stay(j.status.as_ref(), None, now)
                    && settled.confirm_if(j, None)
                {
                    kept += 1;
                    if let (Some(a), Some(p)) = (snapshot::array_child(j), observed_phase) {
                        settled_children
                            .entry(a.parent)
                            .or_default()
                            .insert(a.index, (job_id(j), p));
                    }
                } else {
                    decide_again(&mut work, j);
                }
                continue;
            }
            id.0.clear();
            id.0.push_str(j.metadata.namespace.as_deref().unwrap_or_default());
            id.0.push('/');
            id.0.push_str(j.metadata.name.as_deref().unwrap_or_default());
            let stays = !touched.contains(&id)
                && !built.invalid_jobs.contains_key(&id)
                && super::estimates::queue_fields_stay(j.status.as_ref(), plan.queue.get(&id), now)
                && settled.confirm_if(j, plan.unplaced.get(&id));
            if stays {
                kept += 1;
                if observed_phase == Some(JobPhase::Runnable) {
                    *runnable.entry(j.spec.queue.as_str()).or_default() += 1;
                }
            } else {
                decide_again(&mut work, j);
            }
        }
        (kept, runnable)
    };
    apply_plan(
        &plan,
        &built,
        &defs,
        &mut work,
        &nodes,
        &observed.fleet_errors,
        now,
        &mut out.events,
    );
    // 3b. Runnable since when, and the queues' jobStateTimeLimitActions.
    time_limits::time_limits(&mut work, &observed.queues, now, &mut out.events);

    // 4. Arrays.
    arrays(
        &mut work,
        settled_children,
        config.array_children_waiting,
        &mut out,
        now,
    );

    // Generation, labels, and the job writes.
    let mut kept = kept_settled;
    for (id, w) in &work {
        let wrote = w_finish(id, w, &mut out.jobs);
        if !wrote && may_settle(w.job) && !built.invalid_jobs.contains_key(id) {
            let finished = phase(w.desired.phase).is_terminal();
            let reason = plan.unplaced.get(id);
            let memorable = match reason {
                Some(r) => !finished && settled::memorable(r),
                None => finished,
            };
            if memorable {
                settled.remember(w.job, reason);
                kept += 1;
            }
        }
    }
    // A full pass: the carried jobs it decided again (a write, or no longer settled) go
    // back; the others stay carried.
    let mut carried_unseen = settled.carry.len();
    if !may_park && !settled.carry.is_empty() {
        carried_unseen = 0;
        let ids: BTreeSet<&str> = work
            .keys()
            .map(|id| id.0.as_str())
            .filter(|id| settled.carry.may_hold(id))
            .collect();
        if !ids.is_empty() {
            let members = settled.carry.take_ids(&ids);
            out.carry.unparked = settled.give_back(members);
        }
    }
    // Members left out are carried to the next passes, outside the observed jobs.
    if config.carry_parked {
        for c in &parked.classes {
            let members = c.members.iter().map(|&i| aside[i].carried());
            out.carry
                .parked
                .extend(settled.carry_in(c.class.clone(), members));
        }
    }
    settled.end(kept, carried_unseen);
    // Finished jobs past their TTL: deleted (and not written).
    retention(&work, &observed.queues, now, &mut out);
    // Duration histories into the definitions' status (before retention loses them).
    let deleted: BTreeSet<(String, String)> = out
        .delete_jobs
        .iter()
        .map(|d| (d.namespace.clone(), d.name.clone()))
        .collect();
    out.definitions = super::estimates::definition_updates(&built.kept, &deleted);

    // 5. Nodes, environments, queues, fleets.
    let holding = nodes_holding_jobs(&work);
    out.idle = idle_before
        .into_iter()
        .filter(|(n, _)| !holding.contains(n))
        .collect();
    node_updates(&work, &built, &facts, &liveness, &plan, now, &mut out);
    fences(observed, &nodes, &node_phase, &holding, now, &mut out);
    environment_updates(
        observed,
        &built,
        &plan,
        &facts,
        &liveness.disrupted,
        now,
        &mut out,
    );
    queue_updates(observed, &work, &quiet_runnable, now, &mut out);
    out.delete_nodes = departed
        .iter()
        .filter(|n| node_phase.get(*n) == Some(&ApiNodePhase::Lost) && !holding.contains(**n))
        .map(|n| (*n).to_owned())
        .collect();
    out.plan = plan;
    // Every job a write may bind, or that is bound, is decided in `work`: the others
    // (settled: waiting or finished, no write) hold no grant.
    out.grants = super::grants::desired_of(work.values().map(|w| w.job), &out.jobs);
    Ok(out)
}

/// How many Runnable jobs each queue has: in the snapshot, and left out of it (queues
/// with none are not listed). One walk over the snapshot's jobs, no lookups.
fn positioned<'p>(built: &'p snapshot::Built, parked: &park::Parked<'p>) -> BTreeMap<&'p str, u32> {
    let mut out: BTreeMap<&str, u32> = BTreeMap::new();
    for j in built.snapshot.jobs.values() {
        if j.phase == scheduler::Phase::Runnable {
            *out.entry(j.queue.as_str()).or_default() += 1;
        }
    }
    for (q, keys) in &parked.keys {
        let n = u32::try_from(keys.len()).unwrap_or(u32::MAX);
        let e = out.entry(*q).or_default();
        *e = e.saturating_add(n);
    }
    out
}

/// Whether a node's agent reported, in its last heartbeat, an attempt it runs.
fn agent_runs_something(n: &BatchNode) -> bool {
    n.status
        .as_ref()
        .is_some_and(|s| !s.running_attempts.is_empty())
}

/// The fleet instance of a node, if its fleet was described in this pass.
fn fleet_instance<'o>(
    observed: &'o Observed,
    n: &BatchNode,
) -> Option<&'o crate::cloud::FleetInstance> {
    observed
        .fleets
        .get(&n.spec.compute_environment)?
        .live_instances()
        .find(|i| i.instance_id.eq_ignore_ascii_case(&n.spec.instance_id))
}

/// Whether the node's agent reported a Spot interruption notice or rebalance
/// recommendation (`status.interruption`).
pub(super) fn interrupted(n: &BatchNode) -> bool {
    n.status.as_ref().is_some_and(|s| s.interruption.is_some())
}

/// Draining or Lost nodes that may be terminated once they hold nothing:
/// - a Draining node, observed Draining, whose agent's last heartbeat says it starts
///   nothing more and runs nothing, and whose instance the fleet reports unprotected
///   from scale-in (the agent's word is a veto: it unprotects only after idle polls);
/// - a node observed Lost in an earlier pass that is still Lost now (not merely silent
///   in a disruption).
fn terminable(
    observed: &Observed,
    nodes: &BTreeMap<&str, &BatchNode>,
    node_phase: &BTreeMap<&str, ApiNodePhase>,
    liveness: &Liveness<'_>,
) -> BTreeSet<String> {
    nodes
        .iter()
        .filter(|(name, n)| {
            let st = n.status.as_ref();
            let current = st.and_then(|s| s.phase);
            match node_phase.get(**name) {
                Some(ApiNodePhase::Lost) => {
                    current == Some(ApiNodePhase::Lost) && liveness.lost.contains(**name)
                }
                Some(ApiNodePhase::Draining) => {
                    current == Some(ApiNodePhase::Draining)
                        && observed.draining_seen.contains_key(**name)
                        && st.and_then(|s| s.accepting_attempts) == Some(false)
                        && !agent_runs_something(n)
                        && fleet_instance(observed, n).is_some_and(|i| !i.protected_from_scale_in)
                }
                _ => false,
            }
        })
        .map(|(name, _)| (*name).to_owned())
        .collect()
}

/// Fences: the instance of a node observed Lost in an earlier pass, still Lost and still
/// holding attempts, whose fleet was described in this pass and still lists it, is
/// terminated (again after [`FENCE_RETRY_SECONDS`] if it stays), so that its attempts can
/// be retried once it is gone. Never in a disruption (those nodes are not Lost).
fn fences(
    observed: &Observed,
    nodes: &BTreeMap<&str, &BatchNode>,
    node_phase: &BTreeMap<&str, ApiNodePhase>,
    holding: &BTreeSet<String>,
    now: Seconds,
    out: &mut Decisions,
) {
    for (name, n) in nodes {
        let observed_lost = n.status.as_ref().and_then(|s| s.phase) == Some(ApiNodePhase::Lost);
        if node_phase.get(name) != Some(&ApiNodePhase::Lost)
            || !observed_lost
            || !holding.contains(*name)
        {
            continue;
        }
        let Some(instance) = fleet_instance(observed, n) else {
            continue;
        };
        if observed
            .fenced
            .get(*name)
            .is_some_and(|at| now.saturating_sub(*at) < FENCE_RETRY_SECONDS)
        {
            continue;
        }
        out.fleet.push(FleetAction::Fence {
            compute_environment: n.spec.compute_environment.clone(),
            node: (*name).to_owned(),
            instance_id: instance.instance_id.clone(),
        });
        event(
            &mut out.events,
            object_ref(*n),
            true,
            reasons::FENCED_NODE,
            format!(
                "terminating instance {} of lost node {name} (no heartbeat for the lost-node timeout) so that its attempts can be retried without running twice",
                instance.instance_id
            ),
        );
    }
}

/// Nodes that a Starting or Running job is on, as decided so far.
fn nodes_holding_jobs(work: &BTreeMap<JobId, Work<'_>>) -> BTreeSet<String> {
    work.values()
        .filter(|w| phase(w.desired.phase).is_placed())
        .filter_map(|w| w.desired.node.clone())
        .collect()
}

/// Emits the job's write if it needs one; whether it did.
fn w_finish(id: &JobId, w: &Work<'_>, jobs: &mut Vec<JobUpdate>) -> bool {
    let mut desired = w.desired.clone();
    desired.observed_generation = w.job.metadata.generation;
    let current = owned_job_status(w.job.status.as_ref());
    let placed_on = |s: &BatchJobStatus| match s.phase.map(|p| phase(Some(p))) {
        Some(p) if p.is_placed() => s.node.clone(),
        _ => None,
    };
    let want_node = placed_on(&desired);
    let binds = want_node
        .clone()
        .filter(|n| w.job.status.as_ref().and_then(placed_on).as_ref() != Some(n));
    // No label is written: agents watch `status.node` by field selector. A legacy label
    // (an older controller's) goes when its job leaves that node.
    let have_label = w
        .job
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_NODE));
    let label = have_label
        .filter(|h| want_node.as_ref() != Some(*h))
        .map(|_| LabelChange::Remove);
    let status = (desired != current).then_some(desired);
    if label.is_some() || status.is_some() {
        let (namespace, name) = id.0.split_once('/').unwrap_or(("", &id.0));
        jobs.push(JobUpdate {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            resource_version: w.job.metadata.resource_version.clone(),
            label,
            binds,
            status,
        });
        true
    } else {
        false
    }
}
