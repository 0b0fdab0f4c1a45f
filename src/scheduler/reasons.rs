//! Why a job is not running: one short, actionable reason per unplaced job.

use std::fmt;

use super::model::{JobId, Seconds};
use super::resources::{Dimension, Resources, format_amount};

/// Reason string the controller puts on a job failed because a dependency failed.
pub const DEPENDENCY_FAILED: &str = "DependencyFailed";

/// Why a waiting job was not bound to a node in this pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Its job queue does not exist.
    QueueNotFound {
        /// Queue name.
        queue: String,
    },
    /// Its job queue is Disabled.
    QueueDisabled {
        /// Queue name.
        queue: String,
    },
    /// None of the queue's compute environments exists and is Enabled.
    NoEnabledComputeEnvironment {
        /// Queue name.
        queue: String,
    },
    /// A dependency has not succeeded yet.
    WaitingOnDependency {
        /// The first unmet dependency.
        dependency: JobId,
    },
    /// A dependency is not in the snapshot at all.
    DependencyNotFound {
        /// The missing job.
        dependency: JobId,
    },
    /// Dependencies form a cycle.
    DependencyCycle,
    /// Retry backoff has not elapsed.
    Backoff {
        /// Seconds until it is runnable again.
        remaining: Seconds,
    },
    /// Larger than the instance shape of every enabled compute environment of its queue.
    TooLarge {
        /// First dimension that does not fit.
        dimension: Dimension,
        /// What the job needs in that dimension.
        needs: u64,
        /// Compute environment whose instance is the largest in that dimension.
        compute_environment: String,
        /// Its instance's amount in that dimension.
        largest: u64,
    },
    /// Fits each dimension of some instance shape, but no single shape holds it all.
    NoShapeFits {
        /// What the job needs.
        needs: Resources,
        /// The enabled compute environments considered.
        compute_environments: Vec<String>,
    },
    /// Capacity for it is booting.
    WaitingForBoot {
        /// Compute environment.
        compute_environment: String,
        /// Instances booting in it after this pass (already booting plus newly requested).
        instances: u32,
    },
    /// Its queue bounds the wait (`maxWaitSeconds`) and the forecast starts it on a node
    /// within the bound, when running work ends: no instance is bought for it.
    WaitingForRunningJobs {
        /// Compute environment of that node.
        compute_environment: String,
        /// The queue's `maxWaitSeconds`.
        max_wait: Seconds,
    },
    /// Every compute environment that could take it is at `maxInstances`.
    AtMaxInstances {
        /// First such compute environment.
        compute_environment: String,
        /// Its `maxInstances`.
        max: u32,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::QueueNotFound { queue } => write!(f, "queue jq/{queue} not found"),
            Reason::QueueDisabled { queue } => write!(f, "queue jq/{queue} disabled"),
            Reason::NoEnabledComputeEnvironment { queue } => {
                write!(f, "no enabled compute environment in queue jq/{queue}")
            }
            Reason::WaitingOnDependency { dependency } => {
                write!(f, "waiting on dependency {dependency}")
            }
            Reason::DependencyNotFound { dependency } => {
                write!(f, "dependency {dependency} not found")
            }
            Reason::DependencyCycle => f.write_str("dependencies form a cycle"),
            Reason::Backoff { remaining } => {
                write!(f, "retry backoff: runnable again in {remaining}s")
            }
            Reason::TooLarge {
                dimension,
                needs,
                compute_environment,
                largest,
            } => write!(
                f,
                "needs {} {dimension}, largest instance of ce/{compute_environment} has {}",
                format_amount(*dimension, *needs),
                format_amount(*dimension, *largest)
            ),
            Reason::NoShapeFits {
                needs,
                compute_environments,
            } => {
                let ces: Vec<String> = compute_environments
                    .iter()
                    .map(|c| format!("ce/{c}"))
                    .collect();
                write!(
                    f,
                    "needs {needs}, no instance of {} has all of it",
                    ces.join(", ")
                )
            }
            Reason::WaitingForBoot {
                compute_environment,
                instances,
            } => write!(
                f,
                "waiting for {instances} instance{} to boot in ce/{compute_environment}",
                if *instances == 1 { "" } else { "s" }
            ),
            Reason::WaitingForRunningJobs {
                compute_environment,
                max_wait,
            } => write!(
                f,
                "waiting for running jobs to finish in ce/{compute_environment} (its queue waits up to {max_wait}s before buying an instance)"
            ),
            Reason::AtMaxInstances {
                compute_environment,
                max,
            } => write!(
                f,
                "ce/{compute_environment} is at maxInstances ({max}); waiting for running jobs to finish"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::resources::GIB;

    #[test]
    fn reasons_read_as_the_issue_words_them() {
        let cases = [
            (
                Reason::WaitingForBoot {
                    compute_environment: "nightly".into(),
                    instances: 1,
                },
                "waiting for 1 instance to boot in ce/nightly",
            ),
            (
                Reason::WaitingForBoot {
                    compute_environment: "nightly".into(),
                    instances: 3,
                },
                "waiting for 3 instances to boot in ce/nightly",
            ),
            (
                Reason::TooLarge {
                    dimension: Dimension::Memory,
                    needs: 64 * GIB,
                    compute_environment: "nightly".into(),
                    largest: 16 * GIB,
                },
                "needs 64Gi memory, largest instance of ce/nightly has 16Gi",
            ),
            (
                Reason::QueueDisabled {
                    queue: "low".into(),
                },
                "queue jq/low disabled",
            ),
            (
                Reason::WaitingOnDependency {
                    dependency: JobId::new("etl-extract"),
                },
                "waiting on dependency etl-extract",
            ),
            (
                Reason::AtMaxInstances {
                    compute_environment: "nightly".into(),
                    max: 4,
                },
                "ce/nightly is at maxInstances (4); waiting for running jobs to finish",
            ),
            (
                Reason::Backoff { remaining: 30 },
                "retry backoff: runnable again in 30s",
            ),
        ];
        for (reason, text) in cases {
            assert_eq!(reason.to_string(), text);
        }
    }
}
