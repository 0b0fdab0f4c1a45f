//! Custom resource types of `asgbatch.io/v1alpha1`, one file per kind, plus the shared
//! quantity and spec types.

// kube-derive's repeated `printcolumn(type_ = ...)` arguments trip this lint; they are distinct columns.
#![allow(clippy::duplicated_attributes)]

pub mod batch_job;
pub mod batch_node;
pub mod common;
pub mod compute_environment;
pub mod crds;
pub mod job_definition;
pub mod job_queue;
pub mod parameters;
pub mod protocol;
pub mod quantity;
pub mod raw_json;

pub use batch_job::{BatchJob, BatchJobSpec, BatchJobStatus, JobPhase};
pub use batch_node::{BatchNode, BatchNodeSpec, BatchNodeStatus, NodePhase};
pub use compute_environment::{
    ComputeEnvironment, ComputeEnvironmentSpec, ComputeEnvironmentStatus,
};
pub use job_definition::{JobDefinition, JobDefinitionSpec};
pub use job_queue::{JobQueue, JobQueueSpec, JobQueueStatus};
pub use quantity::{Quantity, QuantityError};

/// API group of every kind.
pub const GROUP: &str = "asgbatch.io";
/// API version of every kind.
pub const VERSION: &str = "v1alpha1";
