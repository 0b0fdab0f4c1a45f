//! The scheduler's own plain input types. The controller maps the custom resources into
//! these; nothing here knows about Kubernetes. Maps are `BTreeMap`s keyed by name so that
//! iteration order (and therefore every decision) is deterministic.

use std::collections::BTreeMap;
use std::fmt;

use super::estimate::Estimate;
use super::resources::Resources;

/// Seconds since an arbitrary epoch (the controller uses Unix time, the simulator uses
/// seconds since the start of the workload). The scheduler never reads a clock.
pub type Seconds = u64;

/// A job's identity (`namespace/name` in the controller; any unique string here).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(pub String);

impl JobId {
    /// Builds an id from anything string-like.
    pub fn new(id: impl Into<String>) -> Self {
        JobId(id.into())
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for JobId {
    fn from(s: &str) -> Self {
        JobId(s.to_owned())
    }
}

/// Enabled or Disabled, for queues and compute environments (AWS Batch's `state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum State {
    /// Accepts new work.
    #[default]
    Enabled,
    /// Schedules nothing new; work already placed runs to completion.
    Disabled,
}

/// AWS Batch job phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// Accepted, not yet evaluated.
    Submitted,
    /// Waiting on dependencies.
    Pending,
    /// Queued, waiting for capacity.
    Runnable,
    /// Bound to a node, not yet running.
    Starting,
    /// Running on its node.
    Running,
    /// Finished with success (terminal).
    Succeeded,
    /// Finished with failure (terminal).
    Failed,
}

impl Phase {
    /// Succeeded or Failed.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }

    /// Starting or Running: the job holds resources on a node.
    pub fn is_placed(self) -> bool {
        matches!(self, Phase::Starting | Phase::Running)
    }

    /// Submitted, Pending or Runnable: the job is waiting to be placed.
    pub fn is_waiting(self) -> bool {
        matches!(self, Phase::Submitted | Phase::Pending | Phase::Runnable)
    }
}

/// A node's lifecycle phase (BatchNode `status.phase`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NodePhase {
    /// Heartbeating and accepting jobs.
    Ready,
    /// Chosen for scale-in: accepts no new jobs.
    Draining,
    /// Heartbeat expired.
    Lost,
}

/// Fair-share policy of a job queue (AWS Batch scheduling policy).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FairSharePolicy {
    /// Window over which past usage counts (0: only current usage counts).
    pub share_decay_seconds: Seconds,
    /// `weightFactor` per share identifier; lower gets more. Missing shares weigh 1.0.
    pub weight_factors: BTreeMap<String, f64>,
}

/// A job queue.
#[derive(Debug, Clone, PartialEq)]
pub struct JobQueue {
    /// Higher runs first.
    pub priority: i32,
    /// Enabled or Disabled.
    pub state: State,
    /// Compute environments in order of preference.
    pub compute_environments: Vec<String>,
    /// Optional fair-share policy; `None` means first-in first-out.
    pub fair_share: Option<FairSharePolicy>,
    /// Cost-aware scale-out bound (`spec.maxWaitSeconds`): a job of this queue may wait
    /// this long for running work to finish before an instance is bought for it.
    /// `None`: every job that fits no node now gets an instance at once (the default).
    pub max_wait_seconds: Option<Seconds>,
}

/// A compute environment: one Auto Scaling Group of identical instances.
#[derive(Debug, Clone, PartialEq)]
pub struct ComputeEnvironment {
    /// Enabled or Disabled (Disabled: no new placements, no scale-out; scale-in goes on).
    pub state: State,
    /// Allocatable resources of one instance.
    pub shape: Resources,
    /// Never fewer instances than this.
    pub min_instances: u32,
    /// Never more instances than this.
    pub max_instances: u32,
    /// Instances launched but not yet registered as nodes.
    pub booting: u32,
    /// A Ready node idle this long may be scaled in.
    pub scale_in_after_idle_seconds: Seconds,
    /// Launch until an instance's node is Ready (estimate; `spec.bootSeconds`).
    pub boot_seconds: Seconds,
    /// When each booting instance is expected Ready, where known (fewer entries than
    /// `booting`: the rest are expected at `now + boot_seconds`).
    pub booting_ready_at: Vec<Seconds>,
}

/// A worker instance (BatchNode).
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Name of the compute environment it belongs to.
    pub compute_environment: String,
    /// Allocatable resources.
    pub capacity: Resources,
    /// Resources held by jobs bound to it.
    pub allocated: Resources,
    /// Number of jobs bound to it (Starting or Running).
    pub jobs: u32,
    /// Ready, Draining or Lost.
    pub phase: NodePhase,
    /// When it last became empty (or registered); `None` while it holds a job.
    pub idle_since: Option<Seconds>,
    /// Whether a Draining or Lost node that holds no job may be terminated now: its
    /// agent confirmed it starts nothing more and its instance is no longer protected
    /// from scale-in (Draining), or its loss is settled (Lost). Ready nodes ignore it.
    pub terminable: bool,
}

impl Node {
    /// True when the node holds a job or any allocated resources.
    pub fn is_busy(&self) -> bool {
        self.jobs > 0 || !self.allocated.is_zero()
    }

    /// Capacity not yet allocated.
    pub fn free(&self) -> Resources {
        self.capacity.saturating_sub(&self.allocated)
    }
}

/// Kind of a `dependsOn` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DependencyType {
    /// Wait for the whole job (all children if it is an array).
    Standard,
    /// Array child `i` waits for child `i` of the named array job.
    NToN,
    /// Array child `i` waits for child `i - 1` of its own array (the job id is ignored).
    Sequential,
}

/// One `dependsOn` entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dependency {
    /// The job depended on (an array parent id for `NToN`; ignored for `Sequential`).
    pub job: JobId,
    /// How the dependency applies.
    pub kind: DependencyType,
}

/// Position of an array child in its array.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ArrayChild {
    /// The array parent's id (the id other jobs name in `dependsOn`).
    pub parent: JobId,
    /// `AWS_BATCH_JOB_ARRAY_INDEX`.
    pub index: u32,
}

/// One attempt of a job (for fair-share usage history).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// When it started.
    pub started_at: Seconds,
    /// When it stopped; `None` while running.
    pub stopped_at: Option<Seconds>,
}

/// A schedulable job (an array parent's children appear as separate jobs; array children
/// carry their parent's `dependsOn` entries).
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Name of its job queue.
    pub queue: String,
    /// Resources one attempt needs.
    pub resources: Resources,
    /// Submission time; first-in first-out within a queue.
    pub submitted_at: Seconds,
    /// Current phase.
    pub phase: Phase,
    /// Node it is bound to (Starting/Running).
    pub node: Option<String>,
    /// `dependsOn` entries.
    pub depends_on: Vec<Dependency>,
    /// Set on array children.
    pub array: Option<ArrayChild>,
    /// Fair-share identifier (ignored by queues without a fair-share policy).
    pub share_identifier: Option<String>,
    /// Attempts so far.
    pub attempts: Vec<Attempt>,
    /// After a retry with backoff: not runnable before this time.
    pub not_before: Option<Seconds>,
    /// How long one attempt is expected to run, and where that figure comes from
    /// ([`super::estimate`]); `None`: unknown ([`super::estimate::DEFAULT_SECONDS`]).
    pub estimate: Option<Estimate>,
}

impl Job {
    /// A Runnable job with no dependencies, attempts or share: a base for builders.
    pub fn runnable(queue: impl Into<String>, resources: Resources, submitted_at: Seconds) -> Self {
        Job {
            queue: queue.into(),
            resources,
            submitted_at,
            phase: Phase::Runnable,
            node: None,
            depends_on: Vec::new(),
            array: None,
            share_identifier: None,
            attempts: Vec::new(),
            not_before: None,
            estimate: None,
        }
    }
}

/// Everything the scheduler looks at in one pass.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    /// Job queues by name.
    pub queues: BTreeMap<String, JobQueue>,
    /// Compute environments by name.
    pub compute_environments: BTreeMap<String, ComputeEnvironment>,
    /// Nodes by name.
    pub nodes: BTreeMap<String, Node>,
    /// Jobs by id: waiting and placed ones, plus finished ones that others depend on
    /// or whose attempts count for fair share.
    pub jobs: BTreeMap<JobId, Job>,
    /// The size of each array parent that is still creating its children (they are
    /// created in batches): such an array is done only once all of them exist and have
    /// succeeded, and a child not created yet is waited for, not missing. Arrays not
    /// listed are judged by the children in [`Snapshot::jobs`].
    pub array_sizes: BTreeMap<JobId, u32>,
}
