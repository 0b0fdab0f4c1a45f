//! ComputeEnvironment: a fleet of worker instances (an EC2 Auto Scaling Group or local agents).

use super::common::{Condition, Resources, State, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A fleet of worker instances that jobs run on, scaled from demand between
/// `minInstances` and `maxInstances`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "asgbatch.io",
    doc = "A fleet of worker instances (an EC2 Auto Scaling Group or local agents) that jobs run on, scaled from demand.",
    version = "v1alpha1",
    kind = "ComputeEnvironment",
    shortname = "ce",
    category = "asgbatch",
    status = "ComputeEnvironmentStatus",
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".status.desiredCapacity"
    ),
    printcolumn(
        name = "InService",
        type_ = "integer",
        json_path = ".status.inServiceInstances"
    ),
    printcolumn(name = "Busy", type_ = "integer", json_path = ".status.busyInstances"),
    printcolumn(name = "Min", type_ = "integer", json_path = ".spec.minInstances"),
    printcolumn(name = "Max", type_ = "integer", json_path = ".spec.maxInstances"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.minInstances <= self.maxInstances").message("minInstances must be less than or equal to maxInstances").field_path(".minInstances"),
    validation = Rule::new("has(self.aws) != has(self.local)").message("exactly one provider must be set: aws or local"),
    validation = Rule::new("has(self.aws) || has(self.instanceShape)").message("a local compute environment needs instanceShape").field_path(".instanceShape")
)]
pub struct ComputeEnvironmentSpec {
    /// EC2 Auto Scaling Group provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsProvider>,
    /// Local provider: instances are node agents started on this machine (development and tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalProvider>,
    /// Fewest instances to keep, even when idle (0 scales to zero).
    #[schemars(range(min = 0, max = 10000))]
    pub min_instances: i32,
    /// Most instances to ever ask for.
    #[schemars(range(min = 0, max = 10000))]
    pub max_instances: i32,
    /// Shape of one instance. For `aws`, looked up from the ASG's instance type when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_shape: Option<InstanceShape>,
    /// An instance idle this long (and not needed by queued work) is drained and terminated.
    #[serde(default = "default_scale_in_after")]
    #[schemars(range(min = 0, max = 86400))]
    pub scale_in_after_idle_seconds: u32,
    /// `Disabled` places no new jobs here; running ones finish.
    #[serde(default)]
    pub state: State,
    /// How long a new instance takes from launch to a Ready node, seconds: the scheduler's
    /// estimated start times and cost-aware scale-out use it. Unset: the boot time observed
    /// on this fleet (`status.observedBootSeconds`), else 120 for `aws`, 5 for `local`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub boot_seconds: Option<u32>,
}

fn default_scale_in_after() -> u32 {
    300
}

/// The EC2 Auto Scaling Group behind a compute environment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AwsProvider {
    /// Name of the Auto Scaling Group; its desired capacity is managed by asg-batch.
    #[schemars(length(min = 1, max = 255))]
    pub auto_scaling_group_name: String,
    /// AWS region; the default credential chain's region when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub region: Option<String>,
}

/// Instances are node agents on this machine.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalProvider {
    /// How the local agents run jobs.
    #[serde(default)]
    pub executor: Executor,
}

/// How a node agent runs jobs.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Executor {
    /// Containers through the Docker Engine API (Docker or Podman).
    #[default]
    Docker,
    /// Plain processes on the instance.
    Process,
}

/// Capacity of one instance.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceShape {
    /// EC2 instance type, informational when cpu/memory are given (e.g. `r5.xlarge`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    /// Allocatable cpu, memory and gpu of one instance.
    #[serde(flatten)]
    pub resources: Resources,
}

/// Observed state of a compute environment (written by the controller).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComputeEnvironmentStatus {
    /// Desired capacity last set on the fleet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_capacity: Option<i32>,
    /// Instances running and registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_service_instances: Option<i32>,
    /// Instances holding at least one job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy_instances: Option<i32>,
    /// Instance shape in use (from the spec or looked up from the instance type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_shape: Option<InstanceShape>,
    /// When desired capacity last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
    /// Boot time observed on this fleet, seconds: the median, over the most recently
    /// registered nodes (up to 9), of an instance's launch (EC2 `LaunchTime`) to its
    /// BatchNode's creation. Used when `spec.bootSeconds` is unset; rewritten only when it
    /// moves by a tenth (and a second) or more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_boot_seconds: Option<u32>,
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Scaling` and error conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
