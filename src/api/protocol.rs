//! The controller–agent protocol in one place: labels, field managers, attempt reasons.
//! Who writes which field, and when: [`PROTOCOL.md`](https://github.com/asg-batch/asg-batch/blob/main/src/api/PROTOCOL.md)
//! beside this file. The controller, the agent and the test fakes all use these names;
//! none spells them out itself.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Legacy label naming a bound BatchJob's node, written by controllers before issue 13's
/// field selectors (the agent now watches [`agent_field_selector`]). The controller writes
/// it no more; it only removes it from a job that still carries it when that job leaves
/// its node (so an old agent keeps an attempt it runs during an upgrade until it ends).
pub const LABEL_NODE: &str = "asgbatch.io/node";

/// The CRD `selectableFields` entry of BatchJob the agent's watch uses.
pub const FIELD_NODE: &str = "status.node";

/// The field selector of node `node`'s agent: the jobs bound to it. The controller sets
/// `status.node` with phase Starting when it binds and clears it when the attempt ends
/// (retry, hand-back, Succeeded, Failed), so a job leaves this watch (DELETED) exactly
/// when it leaves the node.
pub fn agent_field_selector(node: &str) -> String {
    format!("{FIELD_NODE}={node}")
}

/// Label on an array child naming its parent.
pub const LABEL_ARRAY_PARENT: &str = "asgbatch.io/array-parent";

/// Field manager of every write the controller makes.
pub const CONTROLLER_MANAGER: &str = "asg-batch-controller";

/// Field manager of a BatchNode's spec and the agent's part of its status.
pub const AGENT_MANAGER: &str = "asg-batch-agent";

/// Prefix of each node agent's user name: an agent acts as `asg-batch:node:<node name>`
/// (PROTOCOL.md, "Node identity"; on EKS the access entry's username template).
pub const NODE_USER_PREFIX: &str = "asg-batch:node:";

/// Group of every node agent's user (bound to the chart's `-node` ClusterRole; the
/// chart's ValidatingAdmissionPolicy restricts its requests).
pub const NODE_GROUP: &str = "asg-batch:nodes";

/// The user name the agent of node `node` acts as.
pub fn node_user(node: &str) -> String {
    format!("{NODE_USER_PREFIX}{node}")
}

/// Field manager of attempt `n`'s agent-owned fields: one per attempt, so applying
/// attempt N never removes what attempt N-1 reported.
pub fn attempt_manager(attempt: u32) -> String {
    format!("{AGENT_MANAGER}-attempt-{attempt}")
}

/// The wire form of each [`AttemptReason`] (for code that matches strings, such as
/// `evaluateOnExit.onReason`).
pub mod reason {
    /// [`super::AttemptReason::Completed`].
    pub const COMPLETED: &str = "Completed";
    /// [`super::AttemptReason::Error`].
    pub const ERROR: &str = "Error";
    /// [`super::AttemptReason::OutOfMemory`].
    pub const OUT_OF_MEMORY: &str = "OutOfMemory";
    /// [`super::AttemptReason::Timeout`].
    pub const TIMEOUT: &str = "Timeout";
    /// [`super::AttemptReason::Cancelled`].
    pub const CANCELLED: &str = "Cancelled";
    /// [`super::AttemptReason::ImagePullFailed`].
    pub const IMAGE_PULL_FAILED: &str = "ImagePullFailed";
    /// [`super::AttemptReason::StartFailed`].
    pub const START_FAILED: &str = "StartFailed";
    /// [`super::AttemptReason::NodeLost`].
    pub const NODE_LOST: &str = "NodeLost";
    /// [`super::AttemptReason::SpotInterruption`].
    pub const SPOT_INTERRUPTION: &str = "SpotInterruption";
}

/// Why an attempt ended (`status.attempts[].reason`). Reasons this build does not know
/// (written by a newer agent or controller) are kept as they are, never lost.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AttemptReason {
    /// The workload exited on its own with code 0.
    Completed,
    /// The workload exited on its own with another code.
    Error,
    /// Killed for exceeding its memory limit.
    OutOfMemory,
    /// Stopped at the job's timeout.
    Timeout,
    /// Stopped because the job was cancelled or the agent shut down.
    Cancelled,
    /// The image could not be pulled.
    ImagePullFailed,
    /// Could not be started, or found started-but-not-running after an agent restart.
    StartFailed,
    /// Ended by the controller: the node was lost and its instance is gone.
    NodeLost,
    /// Stopped by the agent because its Spot instance received an interruption notice
    /// (`spot/instance-action`); retried by the job's retry strategy.
    SpotInterruption,
    /// A reason this build does not know.
    Other(String),
}

impl AttemptReason {
    /// Every reason this build knows.
    pub const KNOWN: [AttemptReason; 9] = [
        Self::Completed,
        Self::Error,
        Self::OutOfMemory,
        Self::Timeout,
        Self::Cancelled,
        Self::ImagePullFailed,
        Self::StartFailed,
        Self::NodeLost,
        Self::SpotInterruption,
    ];

    /// The wire form.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Completed => reason::COMPLETED,
            Self::Error => reason::ERROR,
            Self::OutOfMemory => reason::OUT_OF_MEMORY,
            Self::Timeout => reason::TIMEOUT,
            Self::Cancelled => reason::CANCELLED,
            Self::ImagePullFailed => reason::IMAGE_PULL_FAILED,
            Self::StartFailed => reason::START_FAILED,
            Self::NodeLost => reason::NODE_LOST,
            Self::SpotInterruption => reason::SPOT_INTERRUPTION,
            Self::Other(s) => s,
        }
    }

    /// Reads the wire form; unknown values are kept as [`AttemptReason::Other`].
    pub fn parse(s: &str) -> Self {
        Self::KNOWN
            .iter()
            .find(|k| k.as_str() == s)
            .cloned()
            .unwrap_or_else(|| Self::Other(s.to_owned()))
    }
}

impl fmt::Display for AttemptReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for AttemptReason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for AttemptReason {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self::parse(&String::deserialize(d)?))
    }
}

impl JsonSchema for AttemptReason {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "AttemptReason".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        // Open on the wire: newer builds may add reasons.
        String::json_schema(generator)
    }

    fn inline_schema() -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip_and_unknown_ones_are_kept() {
        for r in AttemptReason::KNOWN {
            let json = serde_json::to_string(&r).unwrap_or_default();
            let back: AttemptReason = serde_json::from_str(&json).unwrap_or(AttemptReason::Error);
            assert_eq!(back, r);
        }
        let future: AttemptReason =
            serde_json::from_str("\"SpotInterrupted\"").unwrap_or(AttemptReason::Error);
        assert_eq!(future, AttemptReason::Other("SpotInterrupted".into()));
        assert_eq!(
            serde_json::to_string(&future).unwrap_or_default(),
            "\"SpotInterrupted\""
        );
        assert_eq!(attempt_manager(3), "asg-batch-agent-attempt-3");
    }
}
