//! BatchNode: one worker instance, registered by its node agent.

use super::common::{Condition, Resources, Time};
use super::compute_environment::Executor;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A worker instance. Its agent creates it at start, heartbeats into its status and runs
/// the jobs bound to it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "asgbatch.io",
    doc = "A worker instance registered by its node agent: capacity, bound jobs, heartbeat.",
    version = "v1alpha1",
    kind = "BatchNode",
    shortname = "bn",
    category = "asgbatch",
    status = "BatchNodeStatus",
    printcolumn(
        name = "ComputeEnvironment",
        type_ = "string",
        json_path = ".spec.computeEnvironment"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "CPU-Used",
        type_ = "string",
        json_path = ".status.allocated.cpu"
    ),
    printcolumn(name = "CPU", type_ = "string", json_path = ".spec.capacity.cpu"),
    printcolumn(name = "Jobs", type_ = "integer", json_path = ".status.jobCount"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BatchNodeSpec {
    /// EC2 instance id (or a local id for `local` compute environments).
    #[schemars(length(min = 1, max = 64))]
    pub instance_id: String,
    /// EC2 instance type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    /// ComputeEnvironment this instance belongs to.
    #[schemars(length(min = 1, max = 253))]
    pub compute_environment: String,
    /// Allocatable resources for jobs.
    pub capacity: Resources,
    /// How the agent runs jobs.
    #[serde(default)]
    pub executor: Executor,
}

/// Phase of a node.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum NodePhase {
    /// Heartbeating and accepting jobs.
    Ready,
    /// Chosen for scale-in: takes no new job, terminated once empty.
    Draining,
    /// Heartbeat expired; its attempts end with reason `NodeLost`.
    Lost,
}

/// A job bound to a node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeJob {
    /// Namespace of the BatchJob.
    pub namespace: String,
    /// Name of the BatchJob.
    pub name: String,
    /// Attempt number bound here.
    pub attempt: u32,
}

/// Observed state of a node.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchNodeStatus {
    /// Ready, Draining or Lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<NodePhase>,
    /// Resources held by bound jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated: Option<Resources>,
    /// Jobs bound to this node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<NodeJob>,
    /// Number of jobs bound (for `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_count: Option<u32>,
    /// Last heartbeat from the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_time: Option<Time>,
    /// Since when the node holds no job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_since: Option<Time>,
    /// Whether the instance is protected from scale-in (it is while it holds a job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protected_from_scale_in: Option<bool>,
    /// Whether the agent starts new attempts, as of its last heartbeat: `false` once it
    /// has seen its node Draining (from then on it starts nothing). Written by the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepting_attempts: Option<bool>,
    /// The attempts the agent runs or is still reporting, as of its last heartbeat.
    /// Written by the agent; the controller terminates a drained instance only when its
    /// agent reported none here while not accepting attempts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub running_attempts: Vec<NodeJob>,
    /// A Spot interruption notice or rebalance recommendation the agent read from the
    /// instance metadata service. Written by the agent; once set, the node takes no new
    /// work (the controller treats it as Draining and asks for replacement capacity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interruption: Option<NodeInterruption>,
    /// Where the agent serves its attempts' full logs (`asg-batch logs`), when it does
    /// (`--log-listen`). Written by the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_endpoint: Option<LogEndpoint>,
    /// Standard conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Where an agent serves its attempts' logs (`status.logEndpoint`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogEndpoint {
    /// Base URL, e.g. `https://10.0.1.7:10270`; logs are under
    /// `/logs/<namespace>/<job>/<attempt>`.
    pub url: String,
    /// The endpoint's own (self-signed) certificate, PEM, which clients pin; absent for a
    /// plain-HTTP loopback endpoint (`asg-batch dev`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
}

/// Which instance metadata notice the agent saw.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum InterruptionKind {
    /// `events/recommendations/rebalance`: the instance is at elevated risk of
    /// interruption; running work continues, nothing new starts.
    Rebalance,
    /// `spot/instance-action`: the instance will be stopped, hibernated or terminated in
    /// about two minutes; running attempts end with reason `SpotInterruption`.
    InstanceAction,
}

/// A Spot interruption notice (`status.interruption`), written by the agent.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeInterruption {
    /// Rebalance or InstanceAction.
    pub kind: InterruptionKind,
    /// For an InstanceAction: `terminate`, `stop` or `hibernate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// When the action happens (InstanceAction) or when the recommendation was made
    /// (Rebalance), as the metadata service says it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// When the agent first read the notice.
    pub noticed_at: Time,
}
