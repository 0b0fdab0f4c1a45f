//! BatchJob: the unit of work.

use super::common::{Condition, JobDependency, JobTemplate, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A batch job: runs on a worker instance of its queue's compute environments, retried by
/// its `retryStrategy`, after the jobs it `dependsOn` have succeeded.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "asgbatch.io",
    doc = "A batch job: a container or process run on a worker instance, with retries, timeout, dependencies and array children.",
    version = "v1alpha1",
    kind = "BatchJob",
    shortname = "bj",
    category = "asgbatch",
    namespaced,
    status = "BatchJobStatus",
    // Field selector (Kubernetes >= 1.30): each agent watches `status.node=<its node>`
    // (`protocol::agent_field_selector`); users can filter by node too.
    selectable = ".status.node",
    printcolumn(name = "Queue", type_ = "string", json_path = ".spec.queue"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Node", type_ = "string", json_path = ".status.node"),
    printcolumn(name = "Attempts", type_ = "integer", json_path = ".status.attempt"),
    printcolumn(
        name = "Position",
        type_ = "integer",
        json_path = ".status.queuePosition"
    ),
    printcolumn(
        name = "Est-Start",
        type_ = "date",
        json_path = ".status.estimatedStartTime"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.definitionRef) || has(self.container) || has(self.process)").message("a job needs definitionRef, container or process"),
    validation = Rule::new("!(has(self.container) && has(self.process))").message("container and process are mutually exclusive"),
    validation = Rule::new("!(has(self.arrayIndex) && has(self.arrayProperties))").message("arrayIndex is set by the controller on array children and cannot be combined with arrayProperties"),
    validation = Rule::new("!has(self.dependsOn) || self.dependsOn.all(d, !has(d.type) || has(self.arrayProperties) || has(self.arrayIndex))").message("a dependsOn type (N_TO_N, SEQUENTIAL) needs an array job").field_path(".dependsOn"),
    validation = Rule::new("!has(oldSelf.cancel) || (has(self.cancel) && self.cancel == oldSelf.cancel)").message("cancel cannot be changed or removed once set").field_path(".cancel")
)]
pub struct BatchJobSpec {
    /// Name of the JobQueue to submit to.
    #[schemars(length(min = 1, max = 253))]
    pub queue: String,
    /// JobDefinition in the same namespace to start from; inline fields override it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition_ref: Option<DefinitionRef>,
    /// What to run, its resources, retries and timeout; each field set here overrides the
    /// definition's.
    #[serde(flatten)]
    pub template: JobTemplate,
    /// Jobs (same namespace) that must succeed before this one becomes runnable; at most 20.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub depends_on: Vec<JobDependency>,
    /// Makes this an array job of `size` children.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array_properties: Option<ArrayProperties>,
    /// Index of this job within its array parent; set by the controller on array children.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 9999))]
    pub array_index: Option<u32>,
    /// Fair-share identifier (a team, a project) when the queue uses fair share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub share_identifier: Option<String>,
    /// Delete the job this many seconds after it finished (Succeeded or Failed), as a
    /// Kubernetes Job's; an array job goes with its children. Unset: the queue's
    /// `jobTtlSecondsAfterFinished`, else the job is kept. Ignored on array children (they
    /// go with their parent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 31536000))]
    pub ttl_seconds_after_finished: Option<u32>,
    /// How long one attempt is expected to run, seconds. The scheduler plans with it
    /// (estimated start times, cost-aware scale-out, drain-friendly placement); without
    /// it, the median of the JobDefinition's recent successful attempts, else the timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1209600))]
    pub expected_duration_seconds: Option<u32>,
    /// Values for the `Ref::name` placeholders of the command and args; they override the
    /// definition's `parameters` (AWS Batch's SubmitJob `parameters`). Resolved into
    /// `status.template` when the job is first bound. A placeholder's name runs to the
    /// first character that is not a letter, digit or underscore.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 100))]
    pub parameters: BTreeMap<String, String>,
    /// Cancels the job (AWS Batch's CancelJob and TerminateJob in one field; set it with
    /// `asg-batch cancel` or `kubectl patch`). A job not started yet never starts; a
    /// running one is stopped by its agent. Either way it ends `Failed` with reason
    /// `Cancelled` (never started) or `Terminated` (stopped while running) and this
    /// message, is not retried, and keeps its record. Cancelling an array parent cancels
    /// its children. Cannot be changed or removed once set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel: Option<CancelRequest>,
}

/// A request to cancel or terminate a job.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CancelRequest {
    /// Why, for people: becomes the job's `status.message` (AWS Batch's CancelJob
    /// `reason`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub message: Option<String>,
}

/// A JobDefinition in the job's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DefinitionRef {
    /// JobDefinition name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Array job settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArrayProperties {
    /// Number of children, 2 to 10,000; child i sees `AWS_BATCH_JOB_ARRAY_INDEX=i`.
    #[schemars(range(min = 2, max = 10000))]
    pub size: u32,
}

/// Lifecycle phase of a job, as AWS Batch's.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
pub enum JobPhase {
    /// Accepted, not yet evaluated.
    Submitted,
    /// Waiting on dependencies.
    Pending,
    /// Queued for capacity (a retry in backoff is Runnable with `notBefore`).
    Runnable,
    /// Bound to a node; the agent is pulling and starting it.
    Starting,
    /// Running on its node.
    Running,
    /// Finished with exit code 0.
    Succeeded,
    /// Finished unsuccessfully with no attempts left, or cancelled.
    Failed,
}

impl JobPhase {
    /// Succeeded or Failed.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

/// Observed state of a job. The controller owns the phase and decisions; the agent on the
/// bound node owns the progress of the current attempt.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchJobStatus {
    /// Current phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<JobPhase>,
    /// Machine-readable reason of the phase (e.g. `DependencyFailed`, `NodeLost`, `Timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human explanation, e.g. why a Runnable job is not running yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Number of the current (or last) attempt, from 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// BatchNode the current attempt is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Not runnable before this time (retry backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Time>,
    /// When the first attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the job reached Succeeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<Time>,
    /// Since when the job has been Runnable without a break (what a queue's
    /// `jobStateTimeLimitActions` count); absent in other phases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runnable_since: Option<Time>,
    /// The template this job runs, pinned by the controller at its first binding: its
    /// JobDefinition's template with the job's own fields laid over it. From then on
    /// scheduling, retries and the agent read only this, so editing or deleting the
    /// JobDefinition changes nothing for a job already bound (AWS Batch pins the
    /// definition revision at submission).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<JobTemplate>,
    /// The JobDefinition the pinned template came from, as it was then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<PinnedDefinition>,
    /// Every attempt, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["attempt".into()]))]
    pub attempts: Vec<AttemptStatus>,
    /// For array parents: children per phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array_status: Option<ArrayStatus>,
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Standard conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// While Runnable: 1 for the next job of its queue to start (scheduling order).
    /// Updated when it changes materially, not on every move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<u32>,
    /// While Runnable: when the scheduler expects it to start, from its own plan, the
    /// duration estimates of the jobs ahead and running, and instances' boot time.
    /// Updated when it moves materially.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_start_time: Option<Time>,
    /// While Runnable: the duration the scheduler plans this job with, and its source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_duration: Option<DurationEstimate>,
}

/// How long one attempt is expected to run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DurationEstimate {
    /// Seconds.
    pub seconds: u64,
    /// Where it comes from: `Expected` (spec.expectedDurationSeconds), `History` (median
    /// of the JobDefinition's recent successful attempts), `Timeout`, or `Default`.
    pub source: String,
}

/// The identity of the JobDefinition a job's template was pinned from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PinnedDefinition {
    /// Its name (in the job's namespace).
    pub name: String,
    /// Its uid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Its `metadata.generation`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
}

/// One start of the job.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptStatus {
    /// Attempt number, from 1.
    pub attempt: u32,
    /// BatchNode it ran on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Instance id of that node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// When the process or container started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When it stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<Time>,
    /// Exit code, when it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why it ended: `Completed`, `Error`, `OutOfMemory`, `Timeout`, `NodeLost`, `Cancelled`, `ImagePullFailed`, `StartFailed`, `SpotInterruption` (reasons a newer build writes are kept as they are).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<crate::api::protocol::AttemptReason>,
    /// Detail of the reason (AWS Batch's `statusReason`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// Last lines of the output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_tail: Option<String>,
}

/// Children of an array job per phase.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArrayStatus {
    /// Number of children.
    pub size: u32,
    /// Children Submitted or Pending.
    #[serde(default)]
    pub pending: u32,
    /// Children Runnable.
    #[serde(default)]
    pub runnable: u32,
    /// Children Starting.
    #[serde(default)]
    pub starting: u32,
    /// Children Running.
    #[serde(default)]
    pub running: u32,
    /// Children Succeeded.
    #[serde(default)]
    pub succeeded: u32,
    /// Children Failed.
    #[serde(default)]
    pub failed: u32,
}
