//! Types shared by several kinds: resources, containers, retry strategy, conditions.

use super::quantity::Quantity;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Whether new work may start here.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum State {
    /// Accepts and schedules new jobs.
    #[default]
    Enabled,
    /// Schedules nothing new; work already placed finishes.
    Disabled,
}

/// cpu, memory and gpu of a job or an instance.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// CPU as a Kubernetes quantity: `"2"` cores, `"500m"` millicores.
    pub cpu: Quantity,
    /// Memory as a Kubernetes quantity: `"4Gi"`, `"512Mi"`.
    pub memory: Quantity,
    /// Number of GPUs.
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schemars(range(max = 64))]
    pub gpu: u32,
}

impl Resources {
    /// Resources from amounts: millicores, bytes and GPUs, written the way Kubernetes
    /// writes quantities (`"1500m"`, `"4Gi"`).
    pub fn from_amounts(cpu_millis: u64, memory_bytes: u64, gpu: u32) -> Self {
        Self {
            cpu: Quantity::new(super::quantity::format_millicores(cpu_millis)),
            memory: Quantity::new(super::quantity::format_bytes(memory_bytes)),
            gpu,
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// An environment variable of a job.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    /// Variable name.
    #[schemars(
        length(min = 1, max = 256),
        regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$")
    )]
    pub name: String,
    /// Literal value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Take the value from a key of a Secret in the job's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
}

/// A key of a Secret in the job's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Key within the Secret's data.
    #[schemars(length(min = 1))]
    pub key: String,
}

/// Run the job as a container (image pulled on demand by the node agent).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSpec {
    /// Container image, e.g. `registry.example.com/etl:1.4`.
    #[schemars(length(min = 1, max = 1024))]
    pub image: String,
    /// Entrypoint override; the image's entrypoint when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Arguments to the entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment variables, in addition to the `AWS_BATCH_*` variables every job sees.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub env: Vec<EnvVar>,
    /// Working directory inside the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Volumes, mount points, user, privileges, ulimits and Linux parameters (AWS Batch's
    /// `containerProperties` fields of the same names).
    #[serde(flatten)]
    pub settings: ContainerSettings,
}

/// How a job's container runs, beyond what it runs: AWS Batch's `containerProperties`
/// `volumes`, `mountPoints`, `user`, `privileged`, `readonlyRootFilesystem`, `ulimits` and
/// `linuxParameters` (with ECS's `capabilities`). Mapped onto the Docker Engine API by the
/// agent's container executor.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.mountPoints) || self.mountPoints.all(m, has(self.volumes) && self.volumes.exists(v, v.name == m.sourceVolume))").message("every mountPoints[].sourceVolume must name one of volumes[].name").field_path(".mountPoints"),
    validation = Rule::new("!has(self.volumes) || self.volumes.all(v, self.volumes.exists_one(w, w.name == v.name))").message("volumes[].name must be unique").field_path(".volumes")
)]
pub struct ContainerSettings {
    /// Host directories the container may mount (`mountPoints`). A host path also covers
    /// EFS or NFS file systems mounted on the instance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub volumes: Vec<Volume>,
    /// Where the volumes appear in the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub mount_points: Vec<MountPoint>,
    /// User (and optionally group) the container runs as: a name or a uid, `uid:gid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 255),
        regex(pattern = r"^[A-Za-z0-9_.][A-Za-z0-9_.-]*(:[A-Za-z0-9_.][A-Za-z0-9_.-]*)?$")
    )]
    pub user: Option<String>,
    /// Runs the container with every privilege on the instance (root on the host).
    #[serde(default, skip_serializing_if = "is_false")]
    pub privileged: bool,
    /// Mounts the container's root file system read-only.
    #[serde(default, skip_serializing_if = "is_false")]
    pub readonly_root_filesystem: bool,
    /// Resource limits (`ulimit`) of the container's processes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub ulimits: Vec<Ulimit>,
    /// Devices, shared memory, tmpfs mounts and capabilities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linux_parameters: Option<LinuxParameters>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A volume a container may mount (AWS Batch `volumes[]`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    /// Name that `mountPoints[].sourceVolume` refers to.
    #[schemars(
        length(min = 1, max = 255),
        regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
    )]
    pub name: String,
    /// A path on the instance.
    pub host: HostVolume,
}

/// A path on the instance (AWS Batch `volumes[].host`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostVolume {
    /// Absolute path on the instance; created by the container engine when missing.
    #[schemars(length(min = 2, max = 4096), regex(pattern = r"^/[^:,]*$"))]
    pub source_path: String,
}

/// Where a volume appears in the container (AWS Batch `mountPoints[]`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MountPoint {
    /// Name of one of `volumes[]`.
    #[schemars(length(min = 1, max = 255))]
    pub source_volume: String,
    /// Absolute path in the container.
    #[schemars(length(min = 2, max = 4096), regex(pattern = r"^/[^:,]*$"))]
    pub container_path: String,
    /// Mounted read-only.
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only: bool,
}

/// A `ulimit` of the container (AWS Batch `ulimits[]`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.softLimit <= self.hardLimit").message("softLimit must not exceed hardLimit").field_path(".softLimit"))]
pub struct Ulimit {
    /// Which limit.
    pub name: UlimitName,
    /// Soft limit.
    #[schemars(range(min = 0))]
    pub soft_limit: i64,
    /// Hard limit.
    #[schemars(range(min = 0))]
    pub hard_limit: i64,
}

/// The limits `ulimits[].name` may name (as AWS Batch and Docker spell them).
#[allow(missing_docs)]
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum UlimitName {
    Core,
    Cpu,
    Data,
    Fsize,
    Locks,
    Memlock,
    Msgqueue,
    Nice,
    Nofile,
    Nproc,
    Rss,
    Rtprio,
    Rttime,
    Sigpending,
    Stack,
}

impl UlimitName {
    /// Docker's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Core => "core",
            Self::Cpu => "cpu",
            Self::Data => "data",
            Self::Fsize => "fsize",
            Self::Locks => "locks",
            Self::Memlock => "memlock",
            Self::Msgqueue => "msgqueue",
            Self::Nice => "nice",
            Self::Nofile => "nofile",
            Self::Nproc => "nproc",
            Self::Rss => "rss",
            Self::Rtprio => "rtprio",
            Self::Rttime => "rttime",
            Self::Sigpending => "sigpending",
            Self::Stack => "stack",
        }
    }
}

/// Linux-specific settings (AWS Batch `linuxParameters`; `capabilities` as ECS's).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LinuxParameters {
    /// Host devices exposed to the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub devices: Vec<Device>,
    /// Size of `/dev/shm` in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1048576))]
    pub shared_memory_size: Option<u32>,
    /// tmpfs mounts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub tmpfs: Vec<Tmpfs>,
    /// Linux capabilities added to or dropped from the engine's default set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
}

/// A host device in the container (AWS Batch `linuxParameters.devices[]`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    /// Path of the device on the instance, e.g. `/dev/fuse`.
    #[schemars(length(min = 6, max = 4096), regex(pattern = r"^/dev/[^:,]+$"))]
    pub host_path: String,
    /// Path in the container; the host path when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 4096), regex(pattern = r"^/[^:,]*$"))]
    pub container_path: Option<String>,
    /// `READ`, `WRITE`, `MKNOD`; all three when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 3))]
    pub permissions: Vec<DevicePermission>,
}

/// What a container may do with a device.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum DevicePermission {
    /// Read it (`r`).
    Read,
    /// Write it (`w`).
    Write,
    /// Create device nodes (`m`).
    Mknod,
}

/// A tmpfs mount (AWS Batch `linuxParameters.tmpfs[]`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tmpfs {
    /// Absolute path in the container.
    #[schemars(length(min = 2, max = 4096), regex(pattern = r"^/[^:,]*$"))]
    pub container_path: String,
    /// Size in MiB.
    #[schemars(range(min = 1, max = 1048576))]
    pub size: u32,
    /// Mount options, e.g. `noexec`, `nosuid`, `mode=1777`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(regex(pattern = r"^[a-z]+(=[0-9a-z]+)?$")))]
    pub mount_options: Vec<TmpfsOption>,
}

/// One tmpfs mount option: a word (`noexec`) or `key=value` (`mode=1777`).
pub type TmpfsOption = String;

/// Linux capabilities to add to or drop from the engine's default set (ECS
/// `linuxParameters.capabilities`), e.g. `SYS_PTRACE`, `NET_RAW`, or `ALL`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    /// Capabilities added.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(regex(pattern = r"^(ALL|(CAP_)?[A-Z][A-Z_]*)$"))
    )]
    pub add: Vec<String>,
    /// Capabilities dropped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(regex(pattern = r"^(ALL|(CAP_)?[A-Z][A-Z_]*)$"))
    )]
    pub drop: Vec<String>,
}

/// What the job needs from its instance.
pub type ResourceRequirements = Resources;

/// When a job ends unsuccessfully, whether to run it again.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryStrategy {
    /// How many times the job may start in all (AWS Batch's `attempts`), 1 to 10.
    #[serde(default = "default_attempts")]
    #[schemars(range(min = 1, max = 10))]
    pub attempts: u32,
    /// Up to 5 rules checked in order; the first whose every given condition matches decides.
    /// When none matches, the job is retried while attempts remain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5))]
    pub evaluate_on_exit: Vec<EvaluateOnExit>,
    /// Wait before a retried job becomes runnable again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<RetryBackoff>,
}

fn default_attempts() -> u32 {
    1
}

/// One `evaluateOnExit` rule, as AWS Batch's.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EvaluateOnExit {
    /// Exit code to match: digits, optionally ending in `*` (e.g. `"137"`, `"1*"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512), regex(pattern = r"^[0-9]*\*?$"))]
    pub on_exit_code: Option<String>,
    /// Glob on the attempt's reason (`NodeLost`, `Timeout`, `OutOfMemory`, ...); may end in `*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub on_reason: Option<String>,
    /// Glob on the attempt's status reason message; may end in `*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub on_status_reason: Option<String>,
    /// `RETRY` or `EXIT` (case-insensitive).
    pub action: RetryAction,
}

/// What an `evaluateOnExit` rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryAction {
    /// Run the job again (while attempts remain).
    Retry,
    /// Fail the job now.
    Exit,
}

impl Serialize for RetryAction {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            Self::Retry => "RETRY",
            Self::Exit => "EXIT",
        })
    }
}

impl<'de> Deserialize<'de> for RetryAction {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.eq_ignore_ascii_case("retry") {
            Ok(Self::Retry)
        } else if s.eq_ignore_ascii_case("exit") {
            Ok(Self::Exit)
        } else {
            Err(serde::de::Error::custom(format!(
                "action must be RETRY or EXIT, not {s:?}"
            )))
        }
    }
}

impl JsonSchema for RetryAction {
    fn schema_name() -> Cow<'static, str> {
        "RetryAction".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "RETRY or EXIT (case-insensitive).",
            "pattern": "^([Rr][Ee][Tt][Rr][Yy]|[Ee][Xx][Ii][Tt])$",
        })
    }
}

/// Exponential backoff between attempts: `min(initialDelaySeconds * 2^(attempt-1), maxDelaySeconds)`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryBackoff {
    /// Delay before the second attempt.
    #[schemars(range(min = 1, max = 86400))]
    pub initial_delay_seconds: u32,
    /// Upper bound of the delay.
    #[serde(default = "default_max_delay")]
    #[schemars(range(min = 1, max = 86400))]
    pub max_delay_seconds: u32,
}

fn default_max_delay() -> u32 {
    3600
}

/// How a job waits for another.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum DependencyType {
    /// Child i of this array job waits for child i of the array job it depends on.
    #[serde(rename = "N_TO_N")]
    NToN,
    /// Child i of this array job waits for child i-1 of this same array.
    #[serde(rename = "SEQUENTIAL")]
    Sequential,
}

/// A job this one waits for.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobDependency {
    /// Name of a BatchJob in the same namespace (for `SEQUENTIAL`, this job's own name).
    #[schemars(length(min = 1, max = 253))]
    pub job_name: String,
    /// For array jobs: `N_TO_N` or `SEQUENTIAL`. Absent: wait for the whole job.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub dependency_type: Option<DependencyType>,
}

/// Run the job as a process on the instance (executor `process`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProcessSpec {
    /// Program and arguments; the first element is the program.
    #[schemars(length(min = 1))]
    pub command: Vec<String>,
    /// Environment variables, in addition to the `AWS_BATCH_*` variables every job sees.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub env: Vec<EnvVar>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
}

/// What to run and how: the part a JobDefinition and a BatchJob share. A BatchJob's own
/// fields override those of the definition it references ([`JobTemplate::overlay`]).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobTemplate {
    /// Run as a container.
    // Boxed: a ContainerSpec is about 350 bytes inline, and every job holds two templates
    // (spec and status) that are mostly process jobs or share nothing else of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Box<ContainerSpec>>,
    /// Run as a process (executor `process`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessSpec>,
    /// cpu, memory and gpu one attempt needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Retries and their rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_strategy: Option<RetryStrategy>,
    /// An attempt running longer is stopped and ends with reason `Timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1209600))]
    pub timeout_seconds: Option<u32>,
    /// How long a running attempt that is stopped (cancelled, timed out, its job deleted)
    /// has between SIGTERM and SIGKILL, as Kubernetes' `terminationGracePeriodSeconds` and
    /// Docker's `stop -t`. 0 kills at once. Default 30 ([`DEFAULT_TERMINATION_GRACE_SECONDS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub termination_grace_period_seconds: Option<u32>,
}

/// Grace between SIGTERM and SIGKILL when a template sets none.
pub const DEFAULT_TERMINATION_GRACE_SECONDS: u32 = 30;

impl JobTemplate {
    /// The Secrets (in the job's namespace) this template's environment reads, sorted,
    /// each once: what the agent of the node running it must be able to `get`.
    pub fn secret_names(&self) -> Vec<String> {
        let env = self
            .container
            .iter()
            .flat_map(|c| c.env.iter())
            .chain(self.process.iter().flat_map(|p| p.env.iter()));
        let mut names: Vec<String> = env
            .filter_map(|v| v.secret_key_ref.as_ref().map(|r| r.name.clone()))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// This template's fields where set, `base`'s otherwise. Setting `container` or
    /// `process` replaces the base's workload entirely (a job cannot be both).
    pub fn overlay(&self, base: &JobTemplate) -> JobTemplate {
        let workload_set = self.container.is_some() || self.process.is_some();
        JobTemplate {
            container: if workload_set {
                self.container.clone()
            } else {
                base.container.clone()
            },
            process: if workload_set {
                self.process.clone()
            } else {
                base.process.clone()
            },
            resources: self.overlay_resources(base).cloned(),
            retry_strategy: self
                .retry_strategy
                .clone()
                .or_else(|| base.retry_strategy.clone()),
            timeout_seconds: self.overlay_timeout(base),
            termination_grace_period_seconds: self
                .termination_grace_period_seconds
                .or(base.termination_grace_period_seconds),
        }
    }

    /// [`JobTemplate::overlay`]'s `resources`, borrowed (what the scheduler needs of a
    /// waiting job, without building its whole template).
    pub fn overlay_resources<'t>(&'t self, base: &'t JobTemplate) -> Option<&'t Resources> {
        self.resources.as_ref().or(base.resources.as_ref())
    }

    /// [`JobTemplate::overlay`]'s `timeout_seconds`.
    pub fn overlay_timeout(&self, base: &JobTemplate) -> Option<u32> {
        self.timeout_seconds.or(base.timeout_seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(image: &str) -> ContainerSpec {
        ContainerSpec {
            image: image.into(),
            command: vec![],
            args: vec![],
            env: vec![],
            working_dir: None,
            settings: ContainerSettings::default(),
        }
    }

    #[test]
    fn inline_fields_override_the_definition() {
        let definition = JobTemplate {
            container: Some(Box::new(container("etl:1"))),
            resources: Some(Resources {
                cpu: "2".into(),
                memory: "4Gi".into(),
                gpu: 0,
            }),
            retry_strategy: Some(RetryStrategy {
                attempts: 3,
                evaluate_on_exit: vec![],
                backoff: None,
            }),
            timeout_seconds: Some(600),
            ..Default::default()
        };
        let inline = JobTemplate {
            container: Some(Box::new(container("etl:2"))),
            timeout_seconds: Some(60),
            ..Default::default()
        };
        let merged = inline.overlay(&definition);
        assert_eq!(merged.container.map(|c| c.image).as_deref(), Some("etl:2"));
        assert_eq!(merged.timeout_seconds, Some(60));
        assert_eq!(
            merged.resources, definition.resources,
            "unset inline fields come from the definition"
        );
        assert_eq!(merged.retry_strategy.map(|r| r.attempts), Some(3));
    }

    #[test]
    fn an_inline_process_replaces_a_definition_container() {
        let definition = JobTemplate {
            container: Some(Box::new(container("etl:1"))),
            ..Default::default()
        };
        let inline = JobTemplate {
            process: Some(ProcessSpec {
                command: vec!["true".into()],
                env: vec![],
                working_dir: None,
            }),
            ..Default::default()
        };
        let merged = inline.overlay(&definition);
        assert!(merged.container.is_none());
        assert!(merged.process.is_some());
        assert_eq!(JobTemplate::default().overlay(&definition), definition);
    }
}
