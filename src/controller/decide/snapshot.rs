//! PURE: the custom resources as the scheduler sees them ([`build`] → [`Snapshot`]).
//!
//! - A job's id is `namespace/name`; its resources come from its `definitionRef`
//!   overlaid with its inline fields ([`JobTemplate::overlay`]). A job whose definition
//!   is missing or whose resources are unusable is left out of the snapshot with a reason
//!   ([`Built::invalid_jobs`]), unless it is already placed (then it stays, so its node is
//!   known to be busy).
//! - Array parents are not scheduled; their children (BatchJobs with `spec.arrayIndex`
//!   and the label [`LABEL_ARRAY_PARENT`]) are, as [`ArrayChild`]ren of the parent's id.
//!   An unfinished parent's size is in [`Snapshot::array_sizes`]: its children are
//!   created in batches, and dependents wait for the ones not created yet.
//! - Finished jobs stay in the snapshot where a decision needs them ([`Needed`]): those
//!   dependents wait on, a `SEQUENTIAL` array's children, a fair-share queue's jobs.
//!   The others are left out, so a history of finished jobs does not weigh on a pass.
//! - A waiting job's template is not built: only its resources and timeout are looked up
//!   ([`resolve_template`] builds it for a binding, which pins it).
//! - A node's `allocated` and `jobs` are derived from the jobs placed on it (the
//!   controller owns those status fields); its capacity comes from its spec.

use std::collections::{BTreeMap, BTreeSet};

use crate::api::batch_job::{BatchJob, JobPhase, PinnedDefinition};
use crate::api::batch_node::{BatchNode, NodePhase as ApiNodePhase};
use crate::api::common::Resources as ApiResources;
use crate::api::common::{DependencyType as ApiDependencyType, JobTemplate, State as ApiState};
use crate::api::compute_environment::ComputeEnvironment as ApiComputeEnvironment;
use crate::api::job_definition::JobDefinition;
use crate::api::job_queue::JobQueue as ApiJobQueue;
use crate::api::parameters;
use crate::scheduler::{
    ArrayChild, Attempt, ComputeEnvironment, Dependency, DependencyType, FairSharePolicy, Job,
    JobId, JobQueue, Node, NodePhase, Phase, Resources, Seconds, Snapshot, State,
};

use crate::controller::LABEL_ARRAY_PARENT;
use crate::controller::estimates;
use crate::controller::time::seconds;

/// What the snapshot is built from.
#[derive(Debug, Clone, Default)]
pub struct Inputs<'a> {
    /// Every ComputeEnvironment.
    pub compute_environments: Vec<&'a ApiComputeEnvironment>,
    /// Every JobQueue.
    pub queues: Vec<&'a ApiJobQueue>,
    /// Every JobDefinition.
    pub definitions: Vec<&'a JobDefinition>,
    /// Every BatchJob.
    pub jobs: Vec<&'a BatchJob>,
    /// Every BatchNode.
    pub nodes: Vec<&'a BatchNode>,
    /// Node phases decided by this pass (instead of the observed `status.phase`).
    pub node_phases: BTreeMap<String, ApiNodePhase>,
    /// Per compute environment: instances launched that have no BatchNode yet.
    pub booting: BTreeMap<String, u32>,
    /// Per compute environment without `spec.instanceShape`: the shape looked up from
    /// its instance type (EC2 `DescribeInstanceTypes`).
    pub shapes: BTreeMap<String, Resources>,
    /// Per node holding nothing: since when the controller has seen it idle, on its own
    /// clock. A node holding nothing that is not here became idle now.
    pub idle_since: BTreeMap<String, Seconds>,
    /// Draining or Lost nodes that may be terminated once empty (see
    /// [`crate::scheduler::Node::terminable`]).
    pub terminable: BTreeSet<String>,
    /// The time of this pass (Unix seconds).
    pub now: Seconds,
}

/// The snapshot and what could not be put in it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Built {
    /// What the scheduler sees.
    pub snapshot: Snapshot,
    /// Jobs with an unusable spec, and why (left out unless already placed).
    pub invalid_jobs: BTreeMap<JobId, String>,
    /// Compute environments left out, and why.
    pub invalid_compute_environments: BTreeMap<String, String>,
    /// Nodes left out, and why.
    pub invalid_nodes: BTreeMap<String, String>,
    /// Recent successful attempt durations per JobDefinition (duration estimates).
    pub histories: estimates::Histories,
    /// The same as kept in the definitions' status, with the attempts not in it yet.
    pub kept: BTreeMap<(String, String), estimates::Kept>,
    /// Which finished jobs the scheduler needs (the others are left out).
    pub needed: Needed,
}

/// The finished jobs the scheduler looks at: those a job depends on (a job, or every
/// child of an array), the children of a `SEQUENTIAL` array (each waits on the one
/// before), and those of queues with a fair-share policy (their attempts are usage).
/// Any other finished job changes no decision, so it is left out of the snapshot: a
/// history of finished jobs costs a pass nothing there (issue 13).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Needed {
    /// Ids named in some job's `dependsOn` (a job, or an array parent).
    targets: BTreeSet<JobId>,
    /// Array parents whose children depend on their previous sibling.
    sequential: BTreeSet<JobId>,
    /// Queues with a fair-share policy.
    fair_share: BTreeSet<String>,
}

impl Needed {
    /// What the jobs and queues need.
    pub fn of(jobs: &[&BatchJob], queues: &[&ApiJobQueue]) -> Self {
        let mut out = Needed {
            fair_share: queues
                .iter()
                .filter(|q| q.spec.fair_share.is_some())
                .filter_map(|q| q.metadata.name.clone())
                .collect(),
            ..Needed::default()
        };
        for job in jobs.iter().filter(|j| !j.spec.depends_on.is_empty()) {
            let ns = job.metadata.namespace.as_deref().unwrap_or_default();
            for d in &job.spec.depends_on {
                if d.dependency_type == Some(ApiDependencyType::Sequential) {
                    let own = match array_child(job) {
                        Some(a) => a.parent,
                        None => job_id(job),
                    };
                    out.sequential.insert(own);
                } else {
                    out.targets.insert(JobId(format!("{ns}/{}", d.job_name)));
                }
            }
        }
        out
    }

    /// The ids some job depends on.
    pub fn targets(&self) -> impl Iterator<Item = &JobId> {
        self.targets.iter()
    }

    /// Whether some job depends on the job `namespace/name` (or on an array it belongs
    /// to: array children are never asked).
    pub fn is_target(&self, namespace: &str, name: &str) -> bool {
        !self.targets.is_empty() && self.targets.contains(&JobId(format!("{namespace}/{name}")))
    }

    /// Whether a finished job is needed.
    fn finished(&self, job: &BatchJob) -> bool {
        if self.fair_share.contains(job.spec.queue.as_str()) {
            return true;
        }
        if self.targets.is_empty() && self.sequential.is_empty() {
            return false;
        }
        if let Some(a) = array_child(job)
            && (self.targets.contains(&a.parent) || self.sequential.contains(&a.parent))
        {
            return true;
        }
        self.targets.contains(&job_id(job))
    }
}

/// The id of a job: `namespace/name`.
pub fn job_id(job: &BatchJob) -> JobId {
    JobId(format!(
        "{}/{}",
        job.metadata.namespace.as_deref().unwrap_or_default(),
        job.metadata.name.as_deref().unwrap_or_default()
    ))
}

/// JobDefinitions by `(namespace, name)`.
pub type Definitions<'a> = BTreeMap<(&'a str, &'a str), &'a JobDefinition>;

/// Indexes definitions by namespace and name.
pub fn index_definitions<'a>(definitions: &[&'a JobDefinition]) -> Definitions<'a> {
    definitions
        .iter()
        .filter_map(|d| {
            Some((
                (
                    d.metadata.namespace.as_deref()?,
                    d.metadata.name.as_deref()?,
                ),
                *d,
            ))
        })
        .collect()
}

/// The job's template: the one pinned in its status at its first binding, else its
/// definition's overlaid with the job's own fields.
pub fn effective_template(
    job: &BatchJob,
    definitions: &Definitions<'_>,
) -> Result<JobTemplate, String> {
    if let Some(pinned) = job.status.as_ref().and_then(|s| s.template.as_ref()) {
        return Ok(pinned.clone());
    }
    resolve_template(job, definitions).map(|(t, _)| t)
}

/// The job's template resolved now (ignoring a pinned one), and the definition it uses:
/// the definition's template overlaid with the job's fields, with the parameters (the
/// job's over the definition's) substituted for `Ref::name` in command and args.
pub fn resolve_template(
    job: &BatchJob,
    definitions: &Definitions<'_>,
) -> Result<(JobTemplate, Option<PinnedDefinition>), String> {
    let Some(r) = &job.spec.definition_ref else {
        let mut t = job.spec.template.clone();
        parameters::apply(&mut t, &job.spec.parameters);
        return Ok((t, None));
    };
    let ns = job.metadata.namespace.as_deref().unwrap_or_default();
    match definitions.get(&(ns, r.name.as_str())) {
        Some(d) => {
            let mut t = job.spec.template.overlay(&d.spec.template);
            parameters::apply(
                &mut t,
                &parameters::merged(&d.spec.parameters, &job.spec.parameters),
            );
            Ok((
                t,
                Some(PinnedDefinition {
                    name: r.name.clone(),
                    uid: d.metadata.uid.clone(),
                    generation: d.metadata.generation,
                }),
            ))
        }
        None => Err(format!("job definition {ns}/{} not found", r.name)),
    }
}

/// The resources and timeout of the job's template as [`resolve_template`] would
/// resolve it (the job's fields over its definition's), without building it.
fn resolve_needs<'j>(
    job: &'j BatchJob,
    definitions: &Definitions<'j>,
) -> Result<(Option<&'j ApiResources>, Option<u32>), String> {
    let own = &job.spec.template;
    let Some(r) = &job.spec.definition_ref else {
        return Ok((own.resources.as_ref(), own.timeout_seconds));
    };
    let ns = job.metadata.namespace.as_deref().unwrap_or_default();
    match definitions.get(&(ns, r.name.as_str())) {
        Some(d) => Ok((
            own.overlay_resources(&d.spec.template),
            own.overlay_timeout(&d.spec.template),
        )),
        None => Err(format!("job definition {ns}/{} not found", r.name)),
    }
}

/// What one attempt of a job needs, as [`build`] puts it into the snapshot (its pinned
/// template, else its own overlaid on its definition); `None` when that cannot be
/// worked out (the snapshot says why).
pub fn job_needs(job: &BatchJob, definitions: &Definitions<'_>) -> Option<Resources> {
    let pinned = job.status.as_ref().and_then(|s| s.template.as_ref());
    let r = match pinned {
        Some(t) => t.resources.as_ref(),
        None => resolve_needs(job, definitions).ok()?.0,
    };
    needs_of(r).ok()
}

/// When a job was submitted, as the snapshot has it.
pub fn submitted_at(job: &BatchJob, now: Seconds) -> Seconds {
    job.metadata
        .creation_timestamp
        .as_ref()
        .map_or(now, seconds)
}

/// Converts API resources (quantities) to the scheduler's integers.
pub fn resources(r: &ApiResources) -> Result<Resources, String> {
    let cpu = r.cpu.millicores().map_err(|e| format!("cpu: {e}"))?;
    let memory = r.memory.bytes().map_err(|e| format!("memory: {e}"))?;
    Ok(Resources::new(cpu, memory, r.gpu))
}

/// Resources one attempt needs, from a template's `resources`.
fn needs_of(needs: Option<&ApiResources>) -> Result<Resources, String> {
    match needs {
        Some(r) => resources(r).map_err(|e| format!("resources.{e}")),
        None => Err(
            "no resources: set resources.cpu and resources.memory in the job or its job definition"
                .into(),
        ),
    }
}

/// Maps an API job phase (absent: Submitted).
pub fn phase(p: Option<JobPhase>) -> Phase {
    match p {
        None | Some(JobPhase::Submitted) => Phase::Submitted,
        Some(JobPhase::Pending) => Phase::Pending,
        Some(JobPhase::Runnable) => Phase::Runnable,
        Some(JobPhase::Starting) => Phase::Starting,
        Some(JobPhase::Running) => Phase::Running,
        Some(JobPhase::Succeeded) => Phase::Succeeded,
        Some(JobPhase::Failed) => Phase::Failed,
    }
}

/// Maps a scheduler phase to the API's.
pub fn api_phase(p: Phase) -> JobPhase {
    match p {
        Phase::Submitted => JobPhase::Submitted,
        Phase::Pending => JobPhase::Pending,
        Phase::Runnable => JobPhase::Runnable,
        Phase::Starting => JobPhase::Starting,
        Phase::Running => JobPhase::Running,
        Phase::Succeeded => JobPhase::Succeeded,
        Phase::Failed => JobPhase::Failed,
    }
}

fn state(s: ApiState) -> State {
    match s {
        ApiState::Enabled => State::Enabled,
        ApiState::Disabled => State::Disabled,
    }
}

fn node_phase(p: Option<ApiNodePhase>) -> NodePhase {
    match p {
        None | Some(ApiNodePhase::Ready) => NodePhase::Ready,
        Some(ApiNodePhase::Draining) => NodePhase::Draining,
        Some(ApiNodePhase::Lost) => NodePhase::Lost,
    }
}

/// Default `bootSeconds` of an `aws` compute environment.
pub const DEFAULT_AWS_BOOT_SECONDS: Seconds = 120;
/// Default `bootSeconds` of a `local` compute environment.
pub const DEFAULT_LOCAL_BOOT_SECONDS: Seconds = 5;

/// The compute environment's `bootSeconds`, or the boot time observed on its fleet, or its
/// provider's default.
fn boot_seconds(ce: &ApiComputeEnvironment) -> Seconds {
    let observed = ce.status.as_ref().and_then(|s| s.observed_boot_seconds);
    match ce.spec.boot_seconds.or(observed) {
        Some(b) => Seconds::from(b),
        None if ce.spec.aws.is_some() => DEFAULT_AWS_BOOT_SECONDS,
        None => DEFAULT_LOCAL_BOOT_SECONDS,
    }
}

fn clamp(n: i32) -> u32 {
    u32::try_from(n).unwrap_or(0)
}

/// The array a job belongs to, if it is an array child.
pub fn array_child(job: &BatchJob) -> Option<ArrayChild> {
    let index = job.spec.array_index?;
    let parent = job.metadata.labels.as_ref()?.get(LABEL_ARRAY_PARENT)?;
    let ns = job.metadata.namespace.as_deref().unwrap_or_default();
    Some(ArrayChild {
        parent: JobId(format!("{ns}/{parent}")),
        index,
    })
}

/// Whether the job is an array parent (not scheduled itself).
pub fn is_array_parent(job: &BatchJob) -> bool {
    job.spec.array_properties.is_some()
}

/// A job's scheduling state: as observed, or as progressed by this pass (attempt
/// progress changes only these, so the pass applies it to the snapshot without
/// rebuilding it: [`Built::progress`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobState<'a> {
    /// Phase (absent: Submitted).
    pub phase: Option<JobPhase>,
    /// The node it is on (counts only while placed).
    pub node: Option<&'a str>,
    /// Not to be started before this time (backoff).
    pub not_before: Option<Seconds>,
}

impl<'a> JobState<'a> {
    /// The state the job's observed status records.
    pub fn observed(job: &'a BatchJob) -> Self {
        let st = job.status.as_ref();
        Self {
            phase: st.and_then(|s| s.phase),
            node: st.and_then(|s| s.node.as_deref()),
            not_before: st.and_then(|s| s.not_before.as_ref()).map(seconds),
        }
    }
}

/// Builds the scheduler's snapshot.
pub fn build(inputs: &Inputs<'_>) -> Built {
    let mut out = Built::default();
    let definitions = index_definitions(&inputs.definitions);

    for q in &inputs.queues {
        let Some(name) = q.metadata.name.clone() else {
            continue;
        };
        let fair_share = q.spec.fair_share.as_ref().map(|f| FairSharePolicy {
            share_decay_seconds: Seconds::from(f.share_decay_seconds),
            weight_factors: f
                .share_distribution
                .iter()
                .map(|w| (w.share_identifier.clone(), w.weight_factor))
                .collect(),
        });
        out.snapshot.queues.insert(
            name,
            JobQueue {
                priority: q.spec.priority,
                state: state(q.spec.state),
                compute_environments: q.spec.compute_environments.clone(),
                fair_share,
                max_wait_seconds: q.spec.max_wait_seconds.map(Seconds::from),
            },
        );
    }

    for ce in &inputs.compute_environments {
        let Some(name) = ce.metadata.name.clone() else {
            continue;
        };
        let shape = match &ce.spec.instance_shape {
            Some(s) => resources(&s.resources).map_err(|e| format!("spec.instanceShape.{e}")),
            None => inputs.shapes.get(&name).copied().ok_or_else(|| {
                "instance shape unknown: set spec.instanceShape, or the controller must look it up from the Auto Scaling Group's instance type".to_string()
            }),
        };
        match shape {
            Ok(shape) => {
                out.snapshot.compute_environments.insert(
                    name.clone(),
                    ComputeEnvironment {
                        state: state(ce.spec.state),
                        shape,
                        min_instances: clamp(ce.spec.min_instances),
                        max_instances: clamp(ce.spec.max_instances),
                        booting: inputs.booting.get(&name).copied().unwrap_or(0),
                        scale_in_after_idle_seconds: Seconds::from(
                            ce.spec.scale_in_after_idle_seconds,
                        ),
                        boot_seconds: boot_seconds(ce),
                        booting_ready_at: Vec::new(),
                    },
                );
            }
            Err(e) => {
                out.invalid_compute_environments.insert(name, e);
            }
        }
    }

    out.kept = estimates::kept(&inputs.jobs, &inputs.definitions);
    out.histories = estimates::histories(&out.kept);
    // Nodes first, empty: each placed job adds itself to its node's allocation.
    for n in &inputs.nodes {
        let Some(name) = n.metadata.name.clone() else {
            continue;
        };
        let capacity = match resources(&n.spec.capacity) {
            Ok(c) => c,
            Err(e) => {
                out.invalid_nodes.insert(name, format!("spec.capacity.{e}"));
                continue;
            }
        };
        let phase = inputs
            .node_phases
            .get(&name)
            .copied()
            .or_else(|| n.status.as_ref().and_then(|s| s.phase));
        let terminable = inputs.terminable.contains(&name);
        out.snapshot.nodes.insert(
            name,
            Node {
                compute_environment: n.spec.compute_environment.clone(),
                capacity,
                allocated: Resources::ZERO,
                jobs: 0,
                phase: node_phase(phase),
                idle_since: None,
                terminable,
            },
        );
    }

    out.needed = Needed::of(&inputs.jobs, &inputs.queues);
    for job in &inputs.jobs {
        out.add(job, &definitions, inputs.now);
        // An array still creating its children (in batches): its size, so that its
        // dependents wait for all of them.
        if let Some(a) = &job.spec.array_properties
            && !phase(job.status.as_ref().and_then(|s| s.phase)).is_terminal()
        {
            out.snapshot.array_sizes.insert(job_id(job), a.size);
        }
    }
    out.set_idle_since(&inputs.idle_since, inputs.now);
    out
}

impl Built {
    /// Puts an observed job that [`build`] was not given into the snapshot (a job set
    /// aside until the pass knew whether its class parks).
    pub fn add_aside(&mut self, job: &BatchJob, definitions: &Definitions<'_>, now: Seconds) {
        self.add(job, definitions, now);
    }

    /// Puts an observed job into a snapshot being built (each job once: nothing to
    /// replace).
    fn add(&mut self, job: &BatchJob, definitions: &Definitions<'_>, now: Seconds) {
        let state = JobState::observed(job);
        if is_array_parent(job) || (phase(state.phase).is_terminal() && !self.needed.finished(job))
        {
            return;
        }
        self.insert(job, job_id(job), definitions, state, now);
    }

    /// Puts the job into the snapshot in this state, replacing what it had (and its share
    /// of its node's allocation): how a pass applies a job's attempt progress to the model.
    pub fn progress(
        &mut self,
        job: &BatchJob,
        definitions: &Definitions<'_>,
        state: JobState<'_>,
        now: Seconds,
    ) {
        if is_array_parent(job) {
            return;
        }
        let p = phase(state.phase);
        // A finished job nothing needs: not in the snapshot (nor was it before, unless it
        // finished in this pass: then it leaves, with its share of its node).
        if p.is_terminal() && !self.needed.finished(job) {
            if !phase(job.status.as_ref().and_then(|s| s.phase)).is_terminal() {
                self.remove_job(&job_id(job));
            }
            return;
        }
        let id = job_id(job);
        self.remove_job(&id);
        self.insert(job, id, definitions, state, now);
    }

    /// Puts a job that is not in the snapshot into it.
    fn insert(
        &mut self,
        job: &BatchJob,
        id: JobId,
        definitions: &Definitions<'_>,
        state: JobState<'_>,
        now: Seconds,
    ) {
        let p = phase(state.phase);
        let node = if p.is_placed() { state.node } else { None };
        let st = job.status.as_ref();
        let pinned = st.and_then(|s| s.template.as_ref());
        // The template's timeout feeds the duration estimate. An unpinned template is
        // not built here (only a binding needs it: [`resolve_template`] then): its
        // resources and timeout are looked up.
        let resolved = match pinned {
            Some(t) => Ok((t.resources.as_ref(), t.timeout_seconds)),
            None => resolve_needs(job, definitions),
        };
        let timeout = resolved.as_ref().ok().and_then(|(_, t)| *t);
        let resolved = resolved.and_then(|(r, _)| needs_of(r));
        let definition = st
            .and_then(|s| s.definition.as_ref())
            .map(|d| d.name.as_str())
            .or(job.spec.definition_ref.as_ref().map(|r| r.name.as_str()));
        let estimate = estimates::job_estimate(job, definition, timeout, &self.histories);
        let needs = match resolved {
            Ok(r) => r,
            Err(e) => {
                self.invalid_jobs.insert(id.clone(), e);
                if !p.is_placed() && !p.is_terminal() {
                    return;
                }
                Resources::ZERO
            }
        };
        if let Some(n) = node.and_then(|n| self.snapshot.nodes.get_mut(n)) {
            n.allocated = n.allocated.saturating_add(&needs);
            n.jobs += 1;
        }
        let ns = job.metadata.namespace.as_deref().unwrap_or_default();
        let depends_on = job
            .spec
            .depends_on
            .iter()
            .map(|d| Dependency {
                job: JobId(format!("{ns}/{}", d.job_name)),
                kind: match d.dependency_type {
                    None => DependencyType::Standard,
                    Some(ApiDependencyType::NToN) => DependencyType::NToN,
                    Some(ApiDependencyType::Sequential) => DependencyType::Sequential,
                },
            })
            .collect();
        let attempts = st
            .map(|s| {
                s.attempts
                    .iter()
                    .filter_map(|a| {
                        Some(Attempt {
                            started_at: seconds(a.started_at.as_ref()?),
                            stopped_at: a.stopped_at.as_ref().map(seconds),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        self.snapshot.jobs.insert(
            id,
            Job {
                queue: job.spec.queue.clone(),
                resources: needs,
                submitted_at: submitted_at(job, now),
                phase: p,
                node: node.map(str::to_owned),
                depends_on,
                array: array_child(job),
                share_identifier: job.spec.share_identifier.clone(),
                attempts,
                not_before: state.not_before,
                estimate,
            },
        );
    }

    /// Takes a job out of the snapshot, and out of its node's allocation.
    fn remove_job(&mut self, id: &JobId) {
        self.invalid_jobs.remove(id);
        let Some(old) = self.snapshot.jobs.remove(id) else {
            return;
        };
        if let Some(n) = old
            .node
            .as_deref()
            .and_then(|n| self.snapshot.nodes.get_mut(n))
        {
            n.allocated = n.allocated.saturating_sub(&old.resources);
            n.jobs = n.jobs.saturating_sub(1);
        }
    }

    /// Takes a node out of the snapshot (a departed node that holds nothing).
    pub fn remove_node(&mut self, name: &str) {
        self.snapshot.nodes.remove(name);
    }

    /// Sets each node's `idle_since` from what the controller saw. Idleness counts only
    /// from that: never from the node's registration or a stored timestamp (a node whose
    /// last job ended in this pass is idle since now, not since it registered).
    pub fn set_idle_since(&mut self, idle_since: &BTreeMap<String, Seconds>, now: Seconds) {
        for (name, n) in &mut self.snapshot.nodes {
            n.idle_since =
                (n.jobs == 0).then(|| idle_since.get(name).copied().unwrap_or(now).min(now));
        }
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Builders of custom resources for the controller's unit tests.

    use std::collections::BTreeMap;

    use kube::api::ObjectMeta;

    use crate::api::batch_job::{ArrayProperties, BatchJobSpec, BatchJobStatus, DefinitionRef};
    use crate::api::batch_node::{BatchNodeSpec, BatchNodeStatus};
    use crate::api::common::{JobDependency, ProcessSpec, Resources as ApiResources};
    use crate::api::compute_environment::{ComputeEnvironmentSpec, InstanceShape, LocalProvider};
    use crate::api::job_definition::JobDefinitionSpec;
    use crate::api::job_queue::JobQueueSpec;
    use crate::api::{BatchJob, BatchNode, ComputeEnvironment, JobDefinition, JobQueue};

    use crate::controller::time::time;

    pub fn meta(ns: Option<&str>, name: &str, created: u64) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: ns.map(str::to_owned),
            creation_timestamp: Some(time(created)),
            generation: Some(1),
            uid: Some(format!("uid-{name}")),
            resource_version: Some("1".into()),
            ..ObjectMeta::default()
        }
    }

    pub fn res(cpu: &str, memory: &str) -> ApiResources {
        ApiResources {
            cpu: cpu.into(),
            memory: memory.into(),
            gpu: 0,
        }
    }

    pub fn ce(name: &str, cpu: &str, memory: &str, max: i32) -> ComputeEnvironment {
        ComputeEnvironment {
            metadata: meta(None, name, 0),
            spec: ComputeEnvironmentSpec {
                aws: None,
                local: Some(LocalProvider::default()),
                min_instances: 0,
                max_instances: max,
                instance_shape: Some(InstanceShape {
                    instance_type: None,
                    resources: res(cpu, memory),
                }),
                scale_in_after_idle_seconds: 300,
                state: Default::default(),
                boot_seconds: None,
            },
            status: None,
        }
    }

    pub fn queue(name: &str, ces: &[&str]) -> JobQueue {
        JobQueue {
            metadata: meta(None, name, 0),
            spec: JobQueueSpec {
                priority: 1,
                compute_environments: ces.iter().map(std::string::ToString::to_string).collect(),
                state: Default::default(),
                fair_share: None,
                max_wait_seconds: None,
                job_state_time_limit_actions: vec![],
                job_ttl_seconds_after_finished: None,
            },
            status: None,
        }
    }

    /// `true` as a process, with these resources.
    fn true_template(cpu: &str, memory: &str) -> crate::api::common::JobTemplate {
        crate::api::common::JobTemplate {
            process: Some(ProcessSpec {
                command: vec!["true".into()],
                env: vec![],
                working_dir: None,
            }),
            resources: Some(res(cpu, memory)),
            ..Default::default()
        }
    }

    pub fn definition(name: &str, cpu: &str, memory: &str) -> JobDefinition {
        JobDefinition {
            metadata: meta(Some("default"), name, 0),
            spec: JobDefinitionSpec {
                template: true_template(cpu, memory),
                parameters: Default::default(),
            },
            status: None,
        }
    }

    pub fn job(name: &str, cpu: &str, memory: &str, created: u64) -> BatchJob {
        BatchJob {
            metadata: meta(Some("default"), name, created),
            spec: BatchJobSpec {
                queue: "q".into(),
                definition_ref: None,
                template: true_template(cpu, memory),
                depends_on: vec![],
                array_properties: None,
                array_index: None,
                share_identifier: None,
                expected_duration_seconds: None,
                parameters: Default::default(),
                cancel: None,
                ttl_seconds_after_finished: None,
            },
            status: None,
        }
    }

    pub fn with_definition(mut j: BatchJob, def: &str) -> BatchJob {
        j.spec.definition_ref = Some(DefinitionRef { name: def.into() });
        j.spec.template.resources = None;
        j
    }

    pub fn with_status(mut j: BatchJob, status: BatchJobStatus) -> BatchJob {
        j.status = Some(status);
        j
    }

    pub fn depends_on(mut j: BatchJob, on: &str) -> BatchJob {
        j.spec.depends_on.push(JobDependency {
            job_name: on.into(),
            dependency_type: None,
        });
        j
    }

    pub fn array(mut j: BatchJob, size: u32) -> BatchJob {
        j.spec.array_properties = Some(ArrayProperties { size });
        j
    }

    pub fn child(parent: &BatchJob, index: u32) -> BatchJob {
        let pname = parent.metadata.name.clone().unwrap_or_default();
        let mut spec = parent.spec.clone();
        spec.array_properties = None;
        spec.array_index = Some(index);
        let mut m = meta(Some("default"), &format!("{pname}-{index}"), 0);
        m.creation_timestamp = parent.metadata.creation_timestamp.clone();
        m.labels = Some(BTreeMap::from([(
            super::LABEL_ARRAY_PARENT.to_string(),
            pname,
        )]));
        BatchJob {
            metadata: m,
            spec,
            status: None,
        }
    }

    pub fn node(name: &str, ce: &str, cpu: &str, memory: &str, heartbeat: u64) -> BatchNode {
        BatchNode {
            metadata: meta(None, name, heartbeat),
            spec: BatchNodeSpec {
                instance_id: name.into(),
                instance_type: None,
                compute_environment: ce.into(),
                capacity: res(cpu, memory),
                executor: Default::default(),
            },
            status: Some(BatchNodeStatus {
                heartbeat_time: Some(time(heartbeat)),
                ..BatchNodeStatus::default()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;
    use crate::api::batch_job::{AttemptStatus, BatchJobStatus};
    use crate::api::batch_node::BatchNodeStatus;
    use crate::controller::time::time;
    use crate::scheduler::resources::GIB;

    struct World {
        ces: Vec<ApiComputeEnvironment>,
        queues: Vec<ApiJobQueue>,
        defs: Vec<JobDefinition>,
        jobs: Vec<BatchJob>,
        nodes: Vec<BatchNode>,
    }

    impl World {
        fn new(jobs: Vec<BatchJob>) -> Self {
            World {
                ces: vec![ce("ce", "4", "16Gi", 10)],
                queues: vec![queue("q", &["ce"])],
                defs: vec![],
                jobs,
                nodes: vec![],
            }
        }
        fn build(&self) -> Built {
            build(&Inputs {
                compute_environments: self.ces.iter().collect(),
                queues: self.queues.iter().collect(),
                definitions: self.defs.iter().collect(),
                jobs: self.jobs.iter().collect(),
                nodes: self.nodes.iter().collect(),
                node_phases: BTreeMap::new(),
                booting: BTreeMap::from([("ce".to_string(), 2)]),
                shapes: BTreeMap::new(),
                idle_since: BTreeMap::from([("n2".to_string(), 500)]),
                terminable: BTreeSet::new(),
                now: 1000,
            })
        }
    }

    fn id(s: &str) -> JobId {
        JobId::new(format!("default/{s}"))
    }

    #[test]
    fn queues_environments_and_a_plain_job() {
        let b = World::new(vec![job("a", "500m", "1Gi", 7)]).build();
        assert_eq!(b.snapshot.queues["q"].compute_environments, ["ce"]);
        let ce = &b.snapshot.compute_environments["ce"];
        assert_eq!(ce.shape, Resources::new(4000, 16 * GIB, 0));
        assert_eq!(
            (ce.max_instances, ce.booting, ce.scale_in_after_idle_seconds),
            (10, 2, 300)
        );
        let j = &b.snapshot.jobs[&id("a")];
        assert_eq!(j.resources, Resources::new(500, GIB, 0));
        assert_eq!(j.phase, Phase::Submitted);
        assert_eq!(j.submitted_at, 7);
        assert_eq!(j.queue, "q");
        assert!(b.invalid_jobs.is_empty());
    }

    #[test]
    fn definition_is_overlaid_and_a_missing_one_is_a_reason() {
        let mut w = World::new(vec![
            with_definition(job("uses", "1", "1Gi", 0), "etl"),
            with_definition(job("orphan", "1", "1Gi", 0), "nope"),
        ]);
        w.defs.push(definition("etl", "2", "6Gi"));
        let b = w.build();
        assert_eq!(
            b.snapshot.jobs[&id("uses")].resources,
            Resources::new(2000, 6 * GIB, 0)
        );
        assert!(!b.snapshot.jobs.contains_key(&id("orphan")));
        assert_eq!(
            b.invalid_jobs[&id("orphan")],
            "job definition default/nope not found"
        );
    }

    #[test]
    fn bad_quantities_and_missing_resources_are_reasons() {
        let mut bad = job("bad", "lots", "1Gi", 0);
        let mut none = job("none", "1", "1Gi", 0);
        none.spec.template.resources = None;
        bad.spec.queue = "q".into();
        let b = World::new(vec![bad, none]).build();
        assert!(
            b.invalid_jobs[&id("bad")].starts_with("resources.cpu: invalid quantity \"lots\""),
            "{:?}",
            b.invalid_jobs
        );
        assert!(b.invalid_jobs[&id("none")].starts_with("no resources"));
        assert!(b.snapshot.jobs.is_empty());
    }

    #[test]
    fn array_parents_are_left_out_and_children_point_at_them() {
        let parent = array(job("arr", "1", "1Gi", 0), 2);
        let c0 = child(&parent, 0);
        let c1 = child(&parent, 1);
        let b = World::new(vec![parent, c0, c1]).build();
        assert!(!b.snapshot.jobs.contains_key(&id("arr")));
        assert_eq!(
            b.snapshot.jobs[&id("arr-1")].array,
            Some(ArrayChild {
                parent: id("arr"),
                index: 1
            })
        );
    }

    #[test]
    fn dependencies_name_jobs_in_the_same_namespace_and_finished_jobs_stay() {
        let done = with_status(
            job("extract", "1", "1Gi", 0),
            BatchJobStatus {
                phase: Some(JobPhase::Succeeded),
                ..Default::default()
            },
        );
        let b = World::new(vec![
            done,
            depends_on(job("load", "1", "1Gi", 0), "extract"),
        ])
        .build();
        assert_eq!(b.snapshot.jobs[&id("extract")].phase, Phase::Succeeded);
        assert_eq!(
            b.snapshot.jobs[&id("load")].depends_on,
            [Dependency {
                job: id("extract"),
                kind: DependencyType::Standard
            }]
        );
    }

    #[test]
    fn finished_jobs_are_in_the_snapshot_only_where_a_decision_needs_them() {
        let done = |j: BatchJob, p: JobPhase| {
            with_status(
                j,
                BatchJobStatus {
                    phase: Some(p),
                    ..Default::default()
                },
            )
        };
        // Nothing needs these: a finished job, a finished child of an array.
        let alone = done(job("alone", "1", "1Gi", 0), JobPhase::Succeeded);
        let free = array(job("free", "1", "1Gi", 0), 2);
        let free0 = done(child(&free, 0), JobPhase::Failed);
        // A job depended on, and every child of an array depended on.
        let extract = done(job("extract", "1", "1Gi", 0), JobPhase::Succeeded);
        let wide = array(job("wide", "1", "1Gi", 0), 2);
        let wide0 = done(child(&wide, 0), JobPhase::Succeeded);
        let load = depends_on(depends_on(job("load", "1", "1Gi", 0), "extract"), "wide");
        // A SEQUENTIAL array: child 1 waits on child 0.
        let mut seq = array(job("seq", "1", "1Gi", 0), 2);
        seq.spec.depends_on.push(crate::api::common::JobDependency {
            job_name: String::new(),
            dependency_type: Some(ApiDependencyType::Sequential),
        });
        let seq0 = done(child(&seq, 0), JobPhase::Succeeded);
        let seq1 = child(&seq, 1);
        // A fair-share queue: finished attempts are usage.
        let mut shared = done(job("shared", "1", "1Gi", 0), JobPhase::Succeeded);
        shared.spec.queue = "fs".into();
        let mut w = World::new(vec![
            alone, free, free0, extract, wide, wide0, load, seq, seq0, seq1, shared,
        ]);
        let mut fs = queue("fs", &["ce"]);
        fs.spec.fair_share = Some(crate::api::job_queue::FairSharePolicy {
            share_decay_seconds: 3600,
            share_distribution: vec![],
        });
        w.queues.push(fs);
        let b = w.build();
        let ids: Vec<&str> = b.snapshot.jobs.keys().map(|i| i.0.as_str()).collect();
        assert_eq!(
            ids,
            [
                "default/extract",
                "default/load",
                "default/seq-0",
                "default/seq-1",
                "default/shared",
                "default/wide-0"
            ]
        );
        // The scheduler decides as it did with every finished job in: load waits on
        // nothing missing, seq-1 on nothing.
        let plan = crate::scheduler::plan(&b.snapshot, 1000);
        assert!(plan.dependency_failures.is_empty(), "{plan:?}");
        assert!(
            plan.unplaced
                .get(&id("load"))
                .is_none_or(|r| !matches!(r, crate::scheduler::Reason::DependencyNotFound { .. })),
            "{plan:?}"
        );
    }

    #[test]
    fn nodes_take_allocation_from_placed_jobs() {
        let running = with_status(
            job("r", "1500m", "2Gi", 0),
            BatchJobStatus {
                phase: Some(JobPhase::Running),
                node: Some("n1".into()),
                attempt: Some(1),
                not_before: None,
                attempts: vec![AttemptStatus {
                    attempt: 1,
                    node: Some("n1".into()),
                    started_at: Some(time(900)),
                    ..Default::default()
                }],
                ..Default::default()
            },
        );
        let finished = with_status(
            job("f", "1", "1Gi", 0),
            BatchJobStatus {
                phase: Some(JobPhase::Succeeded),
                node: Some("n1".into()),
                ..Default::default()
            },
        );
        let mut w = World::new(vec![running, finished]);
        w.nodes.push(node("n1", "ce", "4", "16Gi", 990));
        let mut idle = node("n2", "ce", "4", "16Gi", 990);
        if let Some(s) = idle.status.as_mut() {
            s.idle_since = Some(time(500));
            s.phase = Some(ApiNodePhase::Draining);
        }
        w.nodes.push(idle);
        // Registered long ago, with an old idleSince stored, but not seen idle by this
        // controller yet: idle since now.
        let mut fresh = node("n3", "ce", "4", "16Gi", 990);
        if let Some(s) = fresh.status.as_mut() {
            s.idle_since = Some(time(10));
        }
        fresh.metadata.creation_timestamp = Some(time(5));
        w.nodes.push(fresh);
        let b = w.build();
        assert_eq!(b.snapshot.nodes["n3"].idle_since, Some(1000));
        let n1 = &b.snapshot.nodes["n1"];
        assert_eq!(n1.allocated, Resources::new(1500, 2 * GIB, 0));
        assert_eq!(
            (n1.jobs, n1.idle_since, n1.phase),
            (1, None, NodePhase::Ready)
        );
        let n2 = &b.snapshot.nodes["n2"];
        assert_eq!(
            (n2.jobs, n2.idle_since, n2.phase),
            (0, Some(500), NodePhase::Draining)
        );
        assert_eq!(b.snapshot.jobs[&id("r")].node.as_deref(), Some("n1"));
        assert_eq!(
            b.snapshot.jobs[&id("r")].attempts,
            [Attempt {
                started_at: 900,
                stopped_at: None
            }]
        );
        // A finished job holds nothing (and nothing needs it: it is left out).
        assert!(!b.snapshot.jobs.contains_key(&id("f")));
    }

    #[test]
    fn a_placed_job_with_a_deleted_definition_still_holds_its_node() {
        let placed = with_status(
            with_definition(job("p", "1", "1Gi", 0), "gone"),
            BatchJobStatus {
                phase: Some(JobPhase::Starting),
                node: Some("n1".into()),
                ..Default::default()
            },
        );
        let mut w = World::new(vec![placed]);
        w.nodes.push(node("n1", "ce", "4", "16Gi", 990));
        let b = w.build();
        assert_eq!(b.snapshot.nodes["n1"].jobs, 1);
        assert!(b.invalid_jobs.contains_key(&id("p")));
    }

    #[test]
    fn shapes_come_from_the_spec_or_the_lookup() {
        let mut w = World::new(vec![]);
        let mut aws = ce("aws", "1", "1Gi", 3);
        aws.spec.instance_shape = None;
        let mut unknown = aws.clone();
        unknown.metadata.name = Some("unknown".into());
        w.ces.push(aws);
        w.ces.push(unknown);
        let inputs = Inputs {
            compute_environments: w.ces.iter().collect(),
            shapes: BTreeMap::from([("aws".to_string(), Resources::new(4000, 8 * GIB, 0))]),
            ..Inputs::default()
        };
        let b = build(&inputs);
        assert_eq!(
            b.snapshot.compute_environments["aws"].shape,
            Resources::new(4000, 8 * GIB, 0)
        );
        assert!(b.invalid_compute_environments["unknown"].starts_with("instance shape unknown"));
        let _ = BatchNodeStatus::default();
    }
}
