//! The cloud behind a compute environment, in a few verbs.
//!
//! [`Fleet`] is what the controller and the node agent need from an instance group:
//! read it, set its desired capacity, terminate one instance (decrementing the desired
//! capacity), and protect instances from scale-in (the seed's technique: a busy instance
//! is protected, so no scale-in from anywhere can kill a running job). [`aws::AwsFleet`]
//! implements it on an EC2 Auto Scaling Group. Errors are classified ([`CloudError`]) so
//! callers can tell a missing group from throttling from bad credentials.

pub mod aws;
pub mod local;

use futures::future::BoxFuture;

/// Where an instance is in its life, as the group reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lifecycle {
    /// Booting (`Pending`, `Pending:Wait`, `Pending:Proceed`).
    Pending,
    /// Running and counted in service.
    InService,
    /// Leaving (`Terminating*`, `Terminated`, `Detaching`, `Detached`).
    Terminating,
    /// Any other state (`Standby`, warm pool states, ...), verbatim.
    Other(String),
}

impl Lifecycle {
    /// Maps an Auto Scaling lifecycle state name.
    pub fn from_asg(state: &str) -> Self {
        match state {
            s if s.starts_with("Pending") => Self::Pending,
            "InService" => Self::InService,
            s if s.starts_with("Terminat") || s.starts_with("Detach") => Self::Terminating,
            other => Self::Other(other.to_string()),
        }
    }
}

/// One instance of a fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetInstance {
    /// Instance id (`i-...`).
    pub instance_id: String,
    /// Lifecycle state.
    pub lifecycle: Lifecycle,
    /// Whether scale-in may not choose it.
    pub protected_from_scale_in: bool,
    /// Instance type, when known.
    pub instance_type: Option<String>,
    /// When it launched (EC2 `LaunchTime`; a local instance's start), when known: with
    /// its node's registration, a sample of the fleet's boot time.
    pub launched_at: Option<jiff::Timestamp>,
}

/// A fleet as read from the cloud.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetState {
    /// Desired capacity.
    pub desired: u32,
    /// Minimum size.
    pub min: u32,
    /// Maximum size.
    pub max: u32,
    /// Instance type new instances get (from the launch template or configuration), when known.
    pub instance_type: Option<String>,
    /// Its instances.
    pub instances: Vec<FleetInstance>,
}

impl FleetState {
    /// Instances not on their way out (booting or in service).
    pub fn live_instances(&self) -> impl Iterator<Item = &FleetInstance> {
        self.instances
            .iter()
            .filter(|i| matches!(i.lifecycle, Lifecycle::Pending | Lifecycle::InService))
    }
}

/// Capacity of one instance type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceTypeInfo {
    /// vCPUs, in millicores.
    pub cpu_millis: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// GPUs.
    pub gpus: u32,
}

/// A cloud call failed; classified so the controller can react (wait, back off, report).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloudError {
    /// The group or instance does not exist.
    #[error("{operation}: not found: {message}")]
    NotFound {
        operation: &'static str,
        message: String,
    },
    /// Rate-limited or a scaling activity is in progress; retry later.
    #[error("{operation}: throttled: {message}")]
    Throttled {
        operation: &'static str,
        message: String,
    },
    /// The cloud has no capacity for the instance type right now.
    #[error("{operation}: insufficient capacity: {message}")]
    InsufficientCapacity {
        operation: &'static str,
        message: String,
    },
    /// The identity is known but its IAM policies do not allow this call (`AccessDenied`,
    /// EC2's `UnauthorizedOperation`); `action` is the missing permission.
    #[error("{operation}: access denied: missing IAM permission {action}: {message}")]
    AccessDenied {
        operation: &'static str,
        /// The IAM action refused, e.g. `autoscaling:SetDesiredCapacity`.
        action: String,
        message: String,
    },
    /// Credentials missing, unknown, expired or badly signed.
    #[error("{operation}: unauthorized: {message}")]
    Unauthorized {
        operation: &'static str,
        message: String,
    },
    /// The request was refused as invalid (e.g. desired capacity above the group's max).
    #[error("{operation}: invalid request: {message}")]
    InvalidRequest {
        operation: &'static str,
        message: String,
    },
    /// The call did not reach the cloud or timed out.
    #[error("{operation}: transport: {message}")]
    Transport {
        operation: &'static str,
        message: String,
    },
    /// Anything else.
    #[error("{operation}: {message}")]
    Other {
        operation: &'static str,
        message: String,
    },
}

impl CloudError {
    /// Whether retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Throttled { .. } | Self::Transport { .. } | Self::InsufficientCapacity { .. }
        )
    }

    /// A short label for metrics and Event reasons.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "NotFound",
            Self::Throttled { .. } => "Throttled",
            Self::InsufficientCapacity { .. } => "InsufficientCapacity",
            Self::AccessDenied { .. } => "AccessDenied",
            Self::Unauthorized { .. } => "Unauthorized",
            Self::InvalidRequest { .. } => "InvalidRequest",
            Self::Transport { .. } => "Transport",
            Self::Other { .. } => "Other",
        }
    }

    /// Classifies an error code returned by AWS (`Throttling`, `ValidationError`, ...).
    pub fn from_aws_code(operation: &'static str, code: Option<&str>, message: String) -> Self {
        let lower = message.to_ascii_lowercase();
        match code.unwrap_or_default() {
            "Throttling"
            | "ThrottlingException"
            | "RequestLimitExceeded"
            | "ScalingActivityInProgress"
            | "ResourceContention"
            | "ResourceContentionFault" => Self::Throttled { operation, message },
            "InsufficientInstanceCapacity" | "InsufficientCapacity" | "InstanceLimitExceeded" => {
                Self::InsufficientCapacity { operation, message }
            }
            "AccessDenied" | "AccessDeniedException" | "UnauthorizedOperation" => {
                Self::AccessDenied {
                    operation,
                    action: denied_action(operation, &message),
                    message,
                }
            }
            "InvalidClientTokenId" | "AuthFailure" | "SignatureDoesNotMatch" | "ExpiredToken" => {
                Self::Unauthorized { operation, message }
            }
            "InvalidInstanceID.NotFound"
            | "InvalidInstanceID.Malformed"
            | "InvalidLaunchTemplateId.NotFound"
            | "InvalidInstanceType" => Self::NotFound { operation, message },
            "ValidationError"
                if lower.contains("not found")
                    || lower.contains("does not exist")
                    || lower.contains("not part of") =>
            {
                Self::NotFound { operation, message }
            }
            "ValidationError" | "InvalidParameterValue" | "InvalidParameterCombination" => {
                Self::InvalidRequest { operation, message }
            }
            _ => Self::Other { operation, message },
        }
    }
}

/// The IAM action a denial names (`... is not authorized to perform: autoscaling:X ...`),
/// else the one `operation` needs.
pub fn denied_action(operation: &str, message: &str) -> String {
    const MARK: &str = "not authorized to perform: ";
    if let Some(i) = message.find(MARK) {
        let action: String = message[i + MARK.len()..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == ':' || *c == '-')
            .collect();
        if action.contains(':') {
            return action;
        }
    }
    let service = match operation {
        "DescribeInstanceTypes" | "DescribeLaunchTemplateVersions" | "DescribeInstances" => "ec2",
        _ => "autoscaling",
    };
    format!("{service}:{operation}")
}

/// An instance group whose size asg-batch manages. Object-safe so the controller can hold
/// fleets of different providers side by side.
pub trait Fleet: Send + Sync {
    /// Reads desired capacity, bounds and instances with their protection.
    fn describe(&self) -> BoxFuture<'_, Result<FleetState, CloudError>>;
    /// Sets the desired capacity (the caller keeps it within `[min, max]`).
    fn set_desired(&self, desired: u32) -> BoxFuture<'_, Result<(), CloudError>>;
    /// Terminates one instance and lowers the desired capacity by one, so it is not replaced.
    fn terminate(&self, instance_id: &str) -> BoxFuture<'_, Result<(), CloudError>>;
    /// Protects (or unprotects) instances from scale-in.
    fn protect(
        &self,
        instance_ids: &[String],
        protected: bool,
    ) -> BoxFuture<'_, Result<(), CloudError>>;
    /// cpu, memory and gpu of an instance type.
    fn instance_type_info(
        &self,
        instance_type: &str,
    ) -> BoxFuture<'_, Result<InstanceTypeInfo, CloudError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_aws_codes() {
        let c = |code: &str, msg: &str| {
            CloudError::from_aws_code("Op", Some(code), msg.to_string()).label()
        };
        assert_eq!(c("Throttling", "Rate exceeded"), "Throttled");
        assert_eq!(c("ScalingActivityInProgress", "busy"), "Throttled");
        assert_eq!(
            c("ValidationError", "AutoScalingGroup name not found - null"),
            "NotFound"
        );
        assert_eq!(
            c(
                "ValidationError",
                "New SetDesiredCapacity value 9 is above max value 5"
            ),
            "InvalidRequest"
        );
        assert_eq!(
            c("InsufficientInstanceCapacity", "no c5"),
            "InsufficientCapacity"
        );
        assert_eq!(c("UnauthorizedOperation", "no"), "AccessDenied");
        assert_eq!(c("InvalidClientTokenId", "who?"), "Unauthorized");
        assert_eq!(c("SignatureDoesNotMatch", "bad"), "Unauthorized");
        // The missing permission, from AWS's message or else from the operation.
        let e = CloudError::from_aws_code(
            "SetDesiredCapacity",
            Some("AccessDenied"),
            "User: arn:aws:iam::123456789012:assumed-role/ctl/i-1 is not authorized to \
             perform: autoscaling:SetDesiredCapacity on resource: arn:aws:autoscaling:... \
             because no identity-based policy allows the autoscaling:SetDesiredCapacity action"
                .into(),
        );
        assert!(
            matches!(&e, CloudError::AccessDenied { action, .. } if action == "autoscaling:SetDesiredCapacity"),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .contains("missing IAM permission autoscaling:SetDesiredCapacity"),
            "{e}"
        );
        let e = CloudError::from_aws_code(
            "DescribeInstanceTypes",
            Some("UnauthorizedOperation"),
            "You are not authorized to perform this operation. Encoded authorization failure message: xyz".into(),
        );
        assert!(
            matches!(&e, CloudError::AccessDenied { action, .. } if action == "ec2:DescribeInstanceTypes"),
            "{e:?}"
        );
        assert_eq!(c("Weird", "x"), "Other");
        assert!(CloudError::from_aws_code("Op", Some("Throttling"), String::new()).is_transient());
        assert!(
            !CloudError::from_aws_code("Op", Some("AccessDenied"), String::new()).is_transient()
        );
    }

    #[test]
    fn lifecycle_names() {
        assert_eq!(Lifecycle::from_asg("Pending:Wait"), Lifecycle::Pending);
        assert_eq!(Lifecycle::from_asg("InService"), Lifecycle::InService);
        assert_eq!(
            Lifecycle::from_asg("Terminating:Proceed"),
            Lifecycle::Terminating
        );
        assert_eq!(
            Lifecycle::from_asg("Standby"),
            Lifecycle::Other("Standby".into())
        );
    }
}
