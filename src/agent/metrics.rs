//! The agent's metrics: attempts it runs, whether it accepts new ones, when its last
//! heartbeat landed (the heartbeat's age is `time() - asg_batch_agent_last_heartbeat_timestamp_seconds`),
//! and its instance's scale-in protection.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Every metric of the agent.
#[derive(Debug, Default)]
pub struct AgentMetrics {
    /// Attempts running or being reported.
    pub running_attempts: Gauge,
    /// 1 while the agent starts new attempts (0 once it has seen its node Draining).
    pub accepting: Gauge,
    /// Unix time of the last heartbeat the API server accepted.
    pub last_heartbeat: Gauge,
    /// Heartbeats that failed or timed out.
    pub heartbeat_failures: Counter,
    /// Scale-in protection last set: 1 protected, 0 not, -1 unknown or not managed.
    pub protected: Gauge,
    /// Spot notice seen: 0 none, 1 rebalance recommendation, 2 interruption (instance action).
    pub spot_notice: Gauge,
    /// Requests to the log endpoint by HTTP status code (`code`).
    pub log_requests: Family<Vec<(String, String)>, Counter>,
}

impl AgentMetrics {
    /// The metrics, registered in `registry` under the `asg_batch_agent` prefix.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self::default();
        m.protected.set(-1);
        let r = registry.sub_registry_with_prefix("asg_batch_agent");
        r.register(
            "running_attempts",
            "Attempts this agent runs or is still reporting",
            m.running_attempts.clone(),
        );
        r.register(
            "accepting_attempts",
            "1 while the agent starts new attempts",
            m.accepting.clone(),
        );
        r.register(
            "last_heartbeat_timestamp_seconds",
            "Unix time of the last heartbeat the API server accepted",
            m.last_heartbeat.clone(),
        );
        r.register(
            "heartbeat_failures",
            "Heartbeats that failed or timed out",
            m.heartbeat_failures.clone(),
        );
        r.register(
            "protected_from_scale_in",
            "Scale-in protection last set (1, 0; -1 unknown or not managed)",
            m.protected.clone(),
        );
        r.register(
            "spot_notice",
            "Spot notice read from instance metadata (0 none, 1 rebalance recommendation, 2 interruption)",
            m.spot_notice.clone(),
        );
        r.register(
            "log_requests",
            "Requests to the log endpoint (--log-listen) by HTTP status code: 401/403 refused callers, 404 unknown attempts, 503 when the API server could not say",
            m.log_requests.clone(),
        );
        m
    }
}
