//! The workload file read by `asg-batch simulate`.
//!
//! ```yaml
//! computeEnvironment:          # the fleet asg-batch scales (one Auto Scaling Group)
//!   name: nightly
//!   instanceType: m5.xlarge    # informational
//!   cpu: 4                     # vCPU per instance: 4, "3.5" or "3500m"
//!   memory: 16Gi               # Ki/Mi/Gi/Ti, K/M/G/T, or bytes
//!   gpu: 0                     # optional, default 0
//!   minInstances: 0            # optional, default 0
//!   maxInstances: 20
//!   bootSeconds: 120           # launch until the agent is Ready (billed)
//!   scaleInAfterIdleSeconds: 120
//! queues:                      # optional; default one queue "default", priority 1
//!   - name: nightly
//!     priority: 10
//!     maxWaitSeconds: 10m      # optional: cost-aware scale-out bound (none: buy at once)
//! seed:                        # the seed's two ways, for comparison
//!   singleHost:                # one big always-on instance, at most N jobs at a time
//!     size: 4                  # its size in instances of the type above (m5.4xlarge)
//!     concurrency: 4
//!   onePerInstance:            # one job per instance, fleet scaled on a fixed schedule
//!     size: 0.5                # instance size in instances of the type above (m5.large)
//!     instances: 10            # scheduled action sets desired capacity to this ...
//!     scaleUpAt: 0             # ... at this time (seconds or 10m, 1h30m, ...)
//!     scaleDownAt: 4h          # then to 0 at this time (the fixed estimate)
//!     idleGraceSeconds: 600    # an idle worker drops scale-in protection after this
//! jobs:
//!   - name: extract-orders     # unique; with count > 1 the copies are name-0, name-1, ...
//!     queue: nightly           # optional when there is one queue
//!     arrival: 10m             # submission time (seconds or duration)
//!     duration: 45m            # run time of one attempt
//!     cpu: 1
//!     memory: 3Gi
//!     gpu: 0                   # optional
//!     count: 1                 # optional, default 1
//! ```
//!
//! Times are seconds from the start of the window (`0` is when the simulation starts);
//! a time or duration is a number of seconds or a string like `90s`, `15m`, `2h`,
//! `1h30m`. Unknown fields are rejected, so a typo is named rather than ignored.
//! Every error names the job or field it is about.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use crate::scheduler::Resources;

/// A workload file that cannot be used, naming the problem.
#[derive(Debug, Error)]
pub enum WorkloadError {
    /// The file could not be read.
    #[error("cannot read workload file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not YAML of the expected shape (the message names the field and line).
    #[error("workload file {path} is not a valid workload: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The YAML error, with field and position.
        source: serde_yaml::Error,
    },
    /// A field's value is malformed or out of range.
    #[error("{field}: {problem}")]
    Invalid {
        /// The field, e.g. `jobs[3].memory` or `computeEnvironment.maxInstances`.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
}

impl WorkloadError {
    fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Self {
        WorkloadError::Invalid {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// A number or a string in the YAML (`cpu: 4` and `cpu: "500m"` both work).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Scalar {
    Int(u64),
    Float(f64),
    Text(String),
}

impl Scalar {
    fn text(&self) -> String {
        match self {
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Text(s) => s.trim().to_owned(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileCe {
    name: String,
    #[serde(default)]
    instance_type: Option<String>,
    cpu: Scalar,
    memory: Scalar,
    #[serde(default)]
    gpu: Option<u32>,
    #[serde(default)]
    min_instances: Option<u32>,
    max_instances: u32,
    boot_seconds: Scalar,
    scale_in_after_idle_seconds: Scalar,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileQueue {
    name: String,
    #[serde(default)]
    priority: i32,
    #[serde(default)]
    max_wait_seconds: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileSingleHost {
    size: f64,
    concurrency: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileOnePerInstance {
    size: f64,
    instances: u32,
    scale_up_at: Scalar,
    scale_down_at: Scalar,
    #[serde(default)]
    idle_grace_seconds: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileSeed {
    single_host: FileSingleHost,
    one_per_instance: FileOnePerInstance,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileJob {
    name: String,
    #[serde(default)]
    queue: Option<String>,
    arrival: Scalar,
    duration: Scalar,
    cpu: Scalar,
    memory: Scalar,
    #[serde(default)]
    gpu: Option<u32>,
    #[serde(default)]
    count: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct File {
    compute_environment: FileCe,
    #[serde(default)]
    queues: Vec<FileQueue>,
    seed: FileSeed,
    jobs: Vec<FileJob>,
}

/// The compute environment asg-batch scales.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetSpec {
    /// Name (`ce/NAME` in reasons).
    pub name: String,
    /// Informational instance type.
    pub instance_type: Option<String>,
    /// One instance's resources.
    pub shape: Resources,
    /// `minInstances`.
    pub min_instances: u32,
    /// `maxInstances`.
    pub max_instances: u32,
    /// Launch to Ready, billed.
    pub boot_seconds: u64,
    /// Idle time before scale-in.
    pub scale_in_after_idle_seconds: u64,
}

/// A job queue.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSpec {
    /// Name.
    pub name: String,
    /// Higher first.
    pub priority: i32,
    /// The queue's wait bound (`maxWaitSeconds`, cost-aware scale-out); `None`: none.
    pub max_wait_seconds: Option<u64>,
}

/// The seed's single big host.
#[derive(Debug, Clone, PartialEq)]
pub struct SingleHostSpec {
    /// Size in instances of the fleet's type (price and every resource scale with it).
    pub size: f64,
    /// Jobs at a time.
    pub concurrency: u32,
}

/// The seed's one-job-per-instance fleet on a fixed schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct OnePerInstanceSpec {
    /// Size in instances of the fleet's type.
    pub size: f64,
    /// Instances launched by the scheduled scale-up.
    pub instances: u32,
    /// Time of the scheduled scale-up.
    pub scale_up_at: u64,
    /// Time of the scheduled scale-down (the fixed estimate).
    pub scale_down_at: u64,
    /// An idle worker drops scale-in protection after this long (the seed: ten missed
    /// polls, then a 50–100 s sleep).
    pub idle_grace_seconds: u64,
}

/// One job of the workload (copies of a `count` entry are separate jobs).
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    /// Unique name.
    pub name: String,
    /// Queue name.
    pub queue: String,
    /// Submission time.
    pub arrival: u64,
    /// Run time.
    pub duration: u64,
    /// Resources.
    pub resources: Resources,
}

/// A parsed, validated workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// The fleet asg-batch scales.
    pub fleet: FleetSpec,
    /// Queues (at least one).
    pub queues: Vec<QueueSpec>,
    /// The seed's single host.
    pub single_host: SingleHostSpec,
    /// The seed's one-per-instance fleet.
    pub one_per_instance: OnePerInstanceSpec,
    /// Jobs, in file order.
    pub jobs: Vec<JobSpec>,
}

/// Parses a duration or time: seconds (`90`) or `90s`, `15m`, `2h`, `1h30m`, `1h2m3s`.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(secs);
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    let mut seen_unit = false;
    for c in t.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let mult = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => {
                return Err(format!(
                    "{text:?} is not a duration (use 90, 90s, 15m, 2h, 1h30m)"
                ));
            }
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("{text:?} is not a duration (a unit without a number)"))?;
        total = total.saturating_add(n.saturating_mul(mult));
        digits.clear();
        seen_unit = true;
    }
    if !digits.is_empty() || !seen_unit {
        return Err(format!(
            "{text:?} is not a duration (a number without a unit after it)"
        ));
    }
    Ok(total)
}

/// Parses cpu as a Kubernetes quantity (`4`, `0.5`, `500m`) into millicores.
pub fn parse_cpu(text: &str) -> Result<u64, String> {
    crate::api::Quantity::from(text.trim())
        .millicores()
        .map_err(|e| e.to_string())
}

/// Parses memory as a Kubernetes quantity (`16Gi`, `512Mi`, `2G`, bytes) into bytes.
pub fn parse_memory(text: &str) -> Result<u64, String> {
    crate::api::Quantity::from(text.trim())
        .bytes()
        .map_err(|e| e.to_string())
}

fn field<T>(name: &str, r: Result<T, String>) -> Result<T, WorkloadError> {
    r.map_err(|p| WorkloadError::invalid(name, p))
}

impl Workload {
    /// Reads and validates a workload file.
    pub fn from_file(path: &Path) -> Result<Self, WorkloadError> {
        let text = std::fs::read_to_string(path).map_err(|source| WorkloadError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(&text).map_err(|e| match e {
            WorkloadError::Parse { source, .. } => WorkloadError::Parse {
                path: path.to_owned(),
                source,
            },
            other => other,
        })
    }

    /// Parses and validates workload YAML.
    pub fn from_yaml(text: &str) -> Result<Self, WorkloadError> {
        let file: File = serde_yaml::from_str(text).map_err(|source| WorkloadError::Parse {
            path: PathBuf::from("<input>"),
            source,
        })?;
        let ce = &file.compute_environment;
        let shape = Resources::new(
            field("computeEnvironment.cpu", parse_cpu(&ce.cpu.text()))?,
            field("computeEnvironment.memory", parse_memory(&ce.memory.text()))?,
            ce.gpu.unwrap_or(0),
        );
        if shape.cpu_millis == 0 || shape.memory_bytes == 0 {
            return Err(WorkloadError::invalid(
                "computeEnvironment",
                "an instance needs some cpu and memory",
            ));
        }
        let min_instances = ce.min_instances.unwrap_or(0);
        if ce.max_instances == 0 || min_instances > ce.max_instances {
            return Err(WorkloadError::invalid(
                "computeEnvironment.maxInstances",
                format!(
                    "must be at least 1 and at least minInstances ({min_instances}), got {}",
                    ce.max_instances
                ),
            ));
        }
        let fleet = FleetSpec {
            name: ce.name.clone(),
            instance_type: ce.instance_type.clone(),
            shape,
            min_instances,
            max_instances: ce.max_instances,
            boot_seconds: field(
                "computeEnvironment.bootSeconds",
                parse_duration(&ce.boot_seconds.text()),
            )?,
            scale_in_after_idle_seconds: field(
                "computeEnvironment.scaleInAfterIdleSeconds",
                parse_duration(&ce.scale_in_after_idle_seconds.text()),
            )?,
        };

        let queues: Vec<QueueSpec> = if file.queues.is_empty() {
            vec![QueueSpec {
                name: "default".into(),
                priority: 1,
                max_wait_seconds: None,
            }]
        } else {
            file.queues
                .iter()
                .enumerate()
                .map(|(i, q)| {
                    Ok(QueueSpec {
                        name: q.name.clone(),
                        priority: q.priority,
                        max_wait_seconds: q
                            .max_wait_seconds
                            .as_ref()
                            .map(|w| {
                                field(
                                    &format!("queues[{i}].maxWaitSeconds"),
                                    parse_duration(&w.text()),
                                )
                            })
                            .transpose()?,
                    })
                })
                .collect::<Result<_, WorkloadError>>()?
        };
        let mut queue_names = BTreeSet::new();
        for (i, q) in queues.iter().enumerate() {
            if !queue_names.insert(q.name.clone()) {
                return Err(WorkloadError::invalid(
                    format!("queues[{i}].name"),
                    format!("duplicate queue {:?}", q.name),
                ));
            }
        }

        let sh = &file.seed.single_host;
        if !(sh.size.is_finite() && sh.size > 0.0) || sh.concurrency == 0 {
            return Err(WorkloadError::invalid(
                "seed.singleHost",
                "size must be positive and concurrency at least 1",
            ));
        }
        let single_host = SingleHostSpec {
            size: sh.size,
            concurrency: sh.concurrency,
        };
        let op = &file.seed.one_per_instance;
        if !(op.size.is_finite() && op.size > 0.0) || op.instances == 0 {
            return Err(WorkloadError::invalid(
                "seed.onePerInstance",
                "size must be positive and instances at least 1",
            ));
        }
        let one_per_instance = OnePerInstanceSpec {
            size: op.size,
            instances: op.instances,
            scale_up_at: field(
                "seed.onePerInstance.scaleUpAt",
                parse_duration(&op.scale_up_at.text()),
            )?,
            scale_down_at: field(
                "seed.onePerInstance.scaleDownAt",
                parse_duration(&op.scale_down_at.text()),
            )?,
            idle_grace_seconds: match &op.idle_grace_seconds {
                Some(s) => field(
                    "seed.onePerInstance.idleGraceSeconds",
                    parse_duration(&s.text()),
                )?,
                None => 600,
            },
        };

        if file.jobs.is_empty() {
            return Err(WorkloadError::invalid("jobs", "the workload has no jobs"));
        }
        let mut jobs = Vec::new();
        let mut names = BTreeSet::new();
        for (i, j) in file.jobs.iter().enumerate() {
            let at = |f: &str| format!("jobs[{i}] ({}).{f}", j.name);
            let queue = match &j.queue {
                Some(q) if queue_names.contains(q) => q.clone(),
                Some(q) => {
                    return Err(WorkloadError::invalid(
                        at("queue"),
                        format!("no queue named {q:?} in queues"),
                    ));
                }
                None if queues.len() == 1 => queues[0].name.clone(),
                None => {
                    return Err(WorkloadError::invalid(
                        at("queue"),
                        "required when the workload has several queues",
                    ));
                }
            };
            let resources = Resources::new(
                field(&at("cpu"), parse_cpu(&j.cpu.text()))?,
                field(&at("memory"), parse_memory(&j.memory.text()))?,
                j.gpu.unwrap_or(0),
            );
            let arrival = field(&at("arrival"), parse_duration(&j.arrival.text()))?;
            let duration = field(&at("duration"), parse_duration(&j.duration.text()))?;
            if duration == 0 {
                return Err(WorkloadError::invalid(at("duration"), "must be positive"));
            }
            if let Some(dim) = resources.first_excess(&fleet.shape) {
                return Err(WorkloadError::invalid(
                    at(&dim.to_string()),
                    format!(
                        "needs more than one instance of ce/{} has ({})",
                        fleet.name, fleet.shape
                    ),
                ));
            }
            let count = j.count.unwrap_or(1);
            if count == 0 {
                return Err(WorkloadError::invalid(at("count"), "must be at least 1"));
            }
            for c in 0..count {
                let name = if count == 1 {
                    j.name.clone()
                } else {
                    format!("{}-{c}", j.name)
                };
                if !names.insert(name.clone()) {
                    return Err(WorkloadError::invalid(
                        at("name"),
                        format!("duplicate job name {name:?}"),
                    ));
                }
                jobs.push(JobSpec {
                    name,
                    queue: queue.clone(),
                    arrival,
                    duration,
                    resources,
                });
            }
        }
        Ok(Workload {
            fleet,
            queues,
            single_host,
            one_per_instance,
            jobs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::resources::GIB;

    const MINIMAL: &str = r#"
computeEnvironment:
  name: ce
  cpu: 4
  memory: 16Gi
  maxInstances: 3
  bootSeconds: 60
  scaleInAfterIdleSeconds: 2m
seed:
  singleHost: { size: 4, concurrency: 4 }
  onePerInstance: { size: 1, instances: 2, scaleUpAt: 0, scaleDownAt: 1h }
jobs:
  - { name: a, arrival: 0, duration: 1h30m, cpu: 500m, memory: 1.5Gi, count: 2 }
"#;

    #[test]
    fn parses_the_documented_format() {
        let w = Workload::from_yaml(MINIMAL).map_err(|e| e.to_string());
        let w = w.as_ref().map_err(String::as_str);
        let Ok(w) = w else {
            panic!("{w:?}");
        };
        assert_eq!(w.fleet.shape, Resources::new(4000, 16 * GIB, 0));
        assert_eq!(w.fleet.scale_in_after_idle_seconds, 120);
        assert_eq!(w.one_per_instance.scale_down_at, 3600);
        assert_eq!(w.one_per_instance.idle_grace_seconds, 600);
        assert_eq!(w.jobs.len(), 2);
        assert_eq!(w.jobs[1].name, "a-1");
        assert_eq!(w.jobs[0].duration, 5400);
        assert_eq!(w.jobs[0].resources, Resources::new(500, 3 * GIB / 2, 0));
        assert_eq!(w.jobs[0].queue, "default");
    }

    fn error_of(yaml: &str) -> String {
        match Workload::from_yaml(yaml) {
            Ok(_) => "no error".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn bad_values_are_named() {
        let e = error_of(&MINIMAL.replace("memory: 1.5Gi", "memory: lots"));
        assert!(
            e.starts_with("jobs[0] (a).memory: invalid quantity \"lots\""),
            "{e}"
        );
        let e = error_of(&MINIMAL.replace("duration: 1h30m", "duration: 1d"));
        assert!(e.starts_with("jobs[0] (a).duration:"), "{e}");
        let e = error_of(&MINIMAL.replace("memory: 1.5Gi", "memory: 32Gi"));
        assert!(
            e.starts_with("jobs[0] (a).memory: needs more than one instance"),
            "{e}"
        );
        let e = error_of(&MINIMAL.replace("count: 2", "count: 2, queue: nope"));
        assert!(e.contains("no queue named \"nope\""), "{e}");
    }

    #[test]
    fn unknown_fields_are_rejected_by_name() {
        let e = error_of(&MINIMAL.replace("count: 2", "cuont: 2"));
        assert!(e.contains("unknown field `cuont`"), "{e}");
    }

    #[test]
    fn durations_cpu_and_memory_parse() {
        assert_eq!(parse_duration("90"), Ok(90));
        assert_eq!(parse_duration("1h2m3s"), Ok(3723));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("1h30").is_err());
        assert_eq!(parse_cpu("1.5"), Ok(1500));
        assert_eq!(parse_cpu("250m"), Ok(250));
        assert!(parse_cpu("-1").is_err());
        assert_eq!(parse_memory("512Mi"), Ok(512 << 20));
        assert_eq!(parse_memory("2G"), Ok(2_000_000_000));
        assert_eq!(parse_memory("1024"), Ok(1024));
    }
}
