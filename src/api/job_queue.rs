//! JobQueue: where jobs wait, with a priority and an ordered list of compute environments.

use super::common::{Condition, State};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A queue of jobs. Higher `priority` queues are served first; within a queue jobs run
/// first-in first-out, or by fair share when `fairShare` is set.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "asgbatch.io",
    doc = "A queue of batch jobs with a priority and an ordered list of compute environments.",
    version = "v1alpha1",
    kind = "JobQueue",
    shortname = "jq",
    category = "asgbatch",
    status = "JobQueueStatus",
    printcolumn(name = "Priority", type_ = "integer", json_path = ".spec.priority"),
    printcolumn(name = "State", type_ = "string", json_path = ".spec.state"),
    printcolumn(
        name = "Runnable",
        type_ = "integer",
        json_path = ".status.runnableJobs"
    ),
    printcolumn(name = "Running", type_ = "integer", json_path = ".status.runningJobs"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct JobQueueSpec {
    /// Higher is served first.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub priority: i32,
    /// Compute environments tried in this order; a job goes to the first one that can take it.
    #[schemars(length(min = 1, max = 10))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub compute_environments: Vec<String>,
    /// `Disabled` schedules nothing new from this queue.
    #[serde(default)]
    pub state: State,
    /// Fair-share scheduling between `shareIdentifier`s (AWS Batch scheduling policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fair_share: Option<FairSharePolicy>,
    /// Default `ttlSecondsAfterFinished` of the jobs in this queue that set none: each
    /// finished job (with its array children) is deleted this many seconds after it ended,
    /// so that storage stays bounded. Unset: finished jobs are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 31536000))]
    pub job_ttl_seconds_after_finished: Option<u32>,
    /// Cost-aware scale-out: a job of this queue that fits no instance now may wait up to
    /// this many seconds for running work to finish before an instance is bought for it;
    /// an instance is bought earlier only when the queued work keeps it busy for at least
    /// its boot time. Unset: an instance for every such job at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 86400))]
    pub max_wait_seconds: Option<u32>,
    /// What to do with jobs stuck Runnable (AWS Batch's `jobStateTimeLimitActions`): a job
    /// of this queue Runnable for longer than `maxTimeSeconds` whose `Scheduled` condition
    /// gives `reason` is cancelled (Failed, reason `Cancelled`, the action in its message).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub job_state_time_limit_actions: Vec<JobStateTimeLimitAction>,
}

/// One action on jobs stuck in a state, as AWS Batch's.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobStateTimeLimitAction {
    /// Why the job waits. AWS Batch's names: `MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT`
    /// (no instance shape of the queue's compute environments can hold the job: the
    /// `Scheduled` reasons `TooLarge` and `NoShapeFits`),
    /// `MISCONFIGURATION:COMPUTE_ENVIRONMENT_MAX_RESOURCE` (every compute environment that
    /// could take it is at `maxInstances`: `AtMaxInstances`),
    /// `CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY` (waiting for instances to boot:
    /// `WaitingForCapacity`); or one of those `Scheduled` reasons itself, or
    /// `NoEnabledComputeEnvironment`.
    pub reason: StuckReason,
    /// The state the job is in: only `RUNNABLE`.
    pub state: StuckState,
    /// Seconds the job must have been Runnable, with that reason now, before the action is
    /// taken (AWS Batch accepts 600 to 86400; 1 is allowed here).
    #[schemars(range(min = 1, max = 86400))]
    pub max_time_seconds: u32,
    /// What to do: only `CANCEL`.
    pub action: StuckAction,
}

/// The waiting reasons a [`JobStateTimeLimitAction`] can match.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum StuckReason {
    /// AWS Batch's name for `TooLarge` or `NoShapeFits`.
    #[serde(rename = "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT")]
    JobResourceRequirement,
    /// AWS Batch's name for `AtMaxInstances`.
    #[serde(rename = "MISCONFIGURATION:COMPUTE_ENVIRONMENT_MAX_RESOURCE")]
    ComputeEnvironmentMaxResource,
    /// AWS Batch's name for `WaitingForCapacity`.
    #[serde(rename = "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY")]
    InsufficientInstanceCapacity,
    /// Larger than every instance shape in some dimension.
    TooLarge,
    /// No single instance shape holds all of it.
    NoShapeFits,
    /// Every compute environment that could take it is at `maxInstances`.
    AtMaxInstances,
    /// Waiting for instances to boot.
    WaitingForCapacity,
    /// None of the queue's compute environments exists and is Enabled.
    NoEnabledComputeEnvironment,
}

impl StuckReason {
    /// The `Scheduled` condition reasons it matches.
    pub fn condition_reasons(self) -> &'static [&'static str] {
        match self {
            Self::JobResourceRequirement => &["TooLarge", "NoShapeFits"],
            Self::ComputeEnvironmentMaxResource | Self::AtMaxInstances => &["AtMaxInstances"],
            Self::InsufficientInstanceCapacity | Self::WaitingForCapacity => {
                &["WaitingForCapacity"]
            }
            Self::TooLarge => &["TooLarge"],
            Self::NoShapeFits => &["NoShapeFits"],
            Self::NoEnabledComputeEnvironment => &["NoEnabledComputeEnvironment"],
        }
    }

    /// As written in the spec.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::JobResourceRequirement => "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT",
            Self::ComputeEnvironmentMaxResource => {
                "MISCONFIGURATION:COMPUTE_ENVIRONMENT_MAX_RESOURCE"
            }
            Self::InsufficientInstanceCapacity => "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY",
            Self::TooLarge => "TooLarge",
            Self::NoShapeFits => "NoShapeFits",
            Self::AtMaxInstances => "AtMaxInstances",
            Self::WaitingForCapacity => "WaitingForCapacity",
            Self::NoEnabledComputeEnvironment => "NoEnabledComputeEnvironment",
        }
    }
}

/// The job state a [`JobStateTimeLimitAction`] watches.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum StuckState {
    /// Runnable: waiting for capacity.
    #[serde(rename = "RUNNABLE")]
    Runnable,
}

/// What a [`JobStateTimeLimitAction`] does.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum StuckAction {
    /// Cancel the job.
    #[serde(rename = "CANCEL")]
    Cancel,
}

/// Fair share: the share with the least weighted recent usage goes next.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FairSharePolicy {
    /// Usage older than this counts less and less (decay half-life, seconds); 0 counts only current usage.
    #[serde(default)]
    #[schemars(range(min = 0, max = 604800))]
    pub share_decay_seconds: u32,
    /// Weights per share; shares not listed weigh 1.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 500))]
    pub share_distribution: Vec<ShareWeight>,
}

/// Weight of one share.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShareWeight {
    /// The `shareIdentifier` jobs carry.
    #[schemars(length(min = 1, max = 255))]
    pub share_identifier: String,
    /// Lower gets more: a share of weight 0.5 gets twice the resources of a share of weight 1.
    #[schemars(range(min = 0.0001, max = 999.9999))]
    pub weight_factor: f64,
}

/// Observed state of a queue (written by the controller).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobQueueStatus {
    /// Jobs waiting for capacity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runnable_jobs: Option<i32>,
    /// Jobs starting or running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_jobs: Option<i32>,
    /// Conditions such as `Valid` (all compute environments exist).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
