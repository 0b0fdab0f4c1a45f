//! The controller: maps the custom resources into a [`crate::scheduler::Snapshot`], runs
//! the scheduler, and applies its decisions (bindings, phases, retries, capacity,
//! scale-in). Who writes which field: `src/api/PROTOCOL.md`; the names: [`crate::api::protocol`].
//!
//! One pass is a pipeline: observe (reflector stores, fleet descriptions) →
//! [`decide::decide`] (pure: progress of attempts, [`decide::snapshot::build`],
//! [`crate::scheduler::plan`], array aggregation, node and environment status) → apply
//! ([`run()`]: server-side apply of the controller-owned status fields, label patches,
//! child creation, fleet calls, Events).
//!
//! Wiring (`asg-batch controller`):
//!
//! ```rust,ignore
//! let client = kube::Client::try_default().await?;
//! let config = ControllerConfig {
//!     leader_election: Some(LeaderElection::new("asg-batch-system", pod_name)),
//!     ..ControllerConfig::default()
//! };
//! controller::run(client, config, Arc::new(AwsFleets::default()), shutdown_signal()).await?;
//! ```

pub mod cli;
pub mod context;
pub mod decide;
pub mod error;
pub mod estimates;
pub mod grants;
pub mod leader;
pub mod memory;
pub mod metrics;
pub mod recorder;
pub mod run;
pub mod time;

pub use context::{AwsFleets, ControllerConfig, FleetProvider, StaticFleets};
pub use error::ControllerError;
pub use leader::LeaderElection;
pub use memory::PassMemory;
pub use run::run;

/// Field manager of every write the controller makes.
pub use crate::api::protocol::CONTROLLER_MANAGER as FIELD_MANAGER;
/// Label on an array child naming its parent.
pub use crate::api::protocol::LABEL_ARRAY_PARENT;
/// Label on a bound BatchJob naming its node (set on binding, removed when the attempt ends).
pub use crate::api::protocol::LABEL_NODE;
/// Condition type on a BatchJob: whether it is bound to a node, and if not, why.
pub const CONDITION_SCHEDULED: &str = "Scheduled";
/// Condition type on a ComputeEnvironment: instances booting, draining or terminating.
pub const CONDITION_SCALING: &str = "Scaling";
/// Condition type on a JobQueue: whether every compute environment it names exists.
pub const CONDITION_VALID: &str = "Valid";
/// Condition type on a ComputeEnvironment / BatchNode: whether it is usable.
pub const CONDITION_READY: &str = "Ready";
/// Condition type on a ComputeEnvironment: True while it is in disruption mode (many of
/// its nodes silent at once, so none is declared Lost).
pub const CONDITION_DISRUPTED: &str = "Disrupted";

/// Event and status reasons, in one place.
pub mod reasons {
    /// A job was bound to a node.
    pub const BOUND: &str = "Bound";
    /// A job's attempt started running.
    pub const STARTED: &str = "Started";
    /// A job succeeded.
    pub const SUCCEEDED: &str = "Succeeded";
    /// A failed attempt is retried.
    pub const RETRYING: &str = "Retrying";
    /// A job failed for good.
    pub const FAILED: &str = "Failed";
    /// A job's JobDefinition or resources are unusable.
    pub const INVALID_JOB: &str = "InvalidJob";
    /// A node stopped heartbeating.
    pub const NODE_LOST: &str = crate::scheduler::retry::REASON_NODE_LOST;
    /// A node is drained for scale-in.
    pub const DRAINING: &str = "Draining";
    /// A node's agent reported a Spot interruption notice or rebalance recommendation.
    pub const SPOT_INTERRUPTION: &str = crate::api::protocol::reason::SPOT_INTERRUPTION;
    /// An instance is terminated for scale-in.
    pub const TERMINATING: &str = "Terminating";
    /// A fleet's desired capacity changed.
    pub const SCALED: &str = "Scaled";
    /// A fleet call failed.
    pub const FLEET_ERROR: &str = "FleetError";
    /// A fleet call was refused by IAM: the message names the missing permission.
    pub const ACCESS_DENIED: &str = "AccessDenied";
    /// An object does not deserialise and is left out.
    pub const INVALID_OBJECT: &str = "InvalidObject";
    /// Array children were created.
    pub const CHILDREN_CREATED: &str = "ChildrenCreated";
    /// A binding to a draining node that its agent did not start was given back to the
    /// scheduler.
    pub const HANDED_BACK: &str = "HandedBack";
    /// A Lost node's instance was terminated so that its attempts can be retried.
    pub const FENCED_NODE: &str = "FencedNode";
    /// Many nodes of a compute environment fell silent at once: nobody is declared Lost.
    pub const DISRUPTION: &str = "Disruption";
    /// Heartbeats came back after a disruption.
    pub const DISRUPTION_ENDED: &str = "DisruptionEnded";
}
