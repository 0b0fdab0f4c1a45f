//! What an agent needs to know about itself: which node it is, what it offers, how it
//! runs jobs and how often it reports.

use crate::api::common::Resources;
use crate::api::compute_environment::Executor as ExecutorKind;
use std::path::PathBuf;
use std::time::Duration;

/// Default time between two heartbeats.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);

/// How long an attempt's `startedAt` report waits for the workload to end, so that a
/// short job is reported in one write (start and end together) instead of two.
pub const DEFAULT_START_REPORT_DELAY: Duration = Duration::from_secs(1);
/// Default number of consecutive idle heartbeats before scale-in protection is removed.
pub const DEFAULT_IDLE_POLLS: u32 = 3;
/// Default data directory: the process executor's per-attempt state lives under it.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/asg-batch";

/// What a graceful stop of the agent does with the attempts it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShutdownMode {
    /// Leave them running: the next agent process on the instance adopts them (an agent
    /// upgrade or restart does not disturb its jobs). Attempts that already ended are
    /// still reported within the shutdown grace.
    #[default]
    Leave,
    /// Cancel them and report them `Cancelled` within the shutdown grace (for agents
    /// whose instance goes away with them, as the in-process agents of `asg-batch dev`).
    Cancel,
}

/// Configuration of one node agent.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// Name of the BatchNode (the instance id lower-cased, see [`node_name_for`]).
    pub node_name: String,
    /// Instance id (`i-...`, or a local id).
    pub instance_id: String,
    /// EC2 instance type, when known.
    pub instance_type: Option<String>,
    /// ComputeEnvironment this instance belongs to (also `AWS_BATCH_CE_NAME`).
    pub compute_environment: String,
    /// Allocatable resources offered to jobs.
    pub capacity: Resources,
    /// How jobs are run (written into the BatchNode's spec).
    pub executor: ExecutorKind,
    /// Time between two heartbeats.
    pub heartbeat_interval: Duration,
    /// Consecutive idle heartbeats before the instance is unprotected from scale-in.
    pub idle_polls: u32,
    /// How long a graceful shutdown waits for attempts' reports.
    pub shutdown_grace: Duration,
    /// What a graceful shutdown does with running attempts.
    pub shutdown_mode: ShutdownMode,
    /// The agent's data directory (the process executor keeps each attempt's state in
    /// `<data_dir>/attempts/<attempt name>/`).
    pub data_dir: PathBuf,
    /// Where to serve `/metrics`, `/healthz` and `/readyz` (`None`: nowhere).
    pub metrics_bind_address: Option<std::net::SocketAddr>,
    /// Watch the instance metadata service for Spot notices (`None`: not watched).
    pub spot: Option<super::spot::SpotWatch>,
    /// How long the `startedAt` report of an attempt waits: an attempt that ends within
    /// it is reported once, start and end together ([`DEFAULT_START_REPORT_DELAY`]).
    pub start_report_delay: Duration,
    /// Attempts' full logs: kept under `<data_dir>/logs`, served when `listen` is set.
    pub logs: LogConfig,
    /// Where the logs are served, as published in the BatchNode's status: set by
    /// [`super::run()`] once it listens.
    pub log_endpoint: Option<crate::api::batch_node::LogEndpoint>,
}

/// Where and how the agent keeps and serves its attempts' full logs ([`super::logs`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// Serve them on this address (`None`: not served; still kept).
    pub listen: Option<std::net::SocketAddr>,
    /// The host name or address published in the BatchNode's `status.logEndpoint` (the
    /// listen address's when `None`; needed when that is unspecified, `0.0.0.0`).
    pub advertise: Option<String>,
    /// Cap of one attempt's log in bytes.
    pub max_bytes: u64,
    /// How long an ended attempt's log is kept.
    pub retention: Duration,
    /// How often logs past their retention, or of jobs that are gone, are deleted.
    pub sweep_every: Duration,
    /// Serve over TLS (a self-signed certificate made at start, published with the
    /// endpoint) to callers with a bearer token allowed `get` on `batchjobs/log`; off:
    /// plain HTTP to anyone who reaches it (loopback only, `asg-batch dev`).
    pub secure: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            listen: None,
            advertise: None,
            max_bytes: super::logs::DEFAULT_MAX_BYTES,
            retention: super::logs::DEFAULT_RETENTION,
            sweep_every: super::logs::SWEEP_EVERY,
            secure: true,
        }
    }
}

impl AgentConfig {
    /// A configuration with the defaults: node name from the instance id, heartbeat every
    /// 10 s, unprotect after 3 idle heartbeats, Docker executor, running attempts left
    /// running on shutdown, data in [`DEFAULT_DATA_DIR`].
    pub fn new(
        instance_id: impl Into<String>,
        compute_environment: impl Into<String>,
        capacity: Resources,
    ) -> Self {
        let instance_id = instance_id.into();
        Self {
            node_name: node_name_for(&instance_id),
            instance_id,
            instance_type: None,
            compute_environment: compute_environment.into(),
            capacity,
            executor: ExecutorKind::Docker,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            idle_polls: DEFAULT_IDLE_POLLS,
            shutdown_grace: Duration::from_secs(10),
            shutdown_mode: ShutdownMode::Leave,
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            metrics_bind_address: None,
            spot: None,
            start_report_delay: DEFAULT_START_REPORT_DELAY,
            logs: LogConfig::default(),
            log_endpoint: None,
        }
    }

    /// Sets how long the `startedAt` report waits for the attempt to end (zero: reported
    /// as soon as it starts).
    pub fn with_start_report_delay(mut self, delay: Duration) -> Self {
        self.start_report_delay = delay;
        self
    }

    /// Sets the instance type.
    pub fn with_instance_type(mut self, instance_type: Option<String>) -> Self {
        self.instance_type = instance_type;
        self
    }

    /// Sets the executor kind.
    pub fn with_executor(mut self, executor: ExecutorKind) -> Self {
        self.executor = executor;
        self
    }

    /// Sets the heartbeat interval.
    pub fn with_heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = interval;
        self
    }

    /// Sets the number of idle heartbeats before unprotecting (at least 1).
    pub fn with_idle_polls(mut self, idle_polls: u32) -> Self {
        self.idle_polls = idle_polls.max(1);
        self
    }

    /// Sets what a graceful shutdown does with running attempts.
    pub fn with_shutdown_mode(mut self, mode: ShutdownMode) -> Self {
        self.shutdown_mode = mode;
        self
    }

    /// Sets the data directory.
    pub fn with_data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = dir.into();
        self
    }

    /// Where the process executor keeps its per-attempt state: `<data_dir>/attempts`.
    pub fn attempts_dir(&self) -> PathBuf {
        self.data_dir.join("attempts")
    }

    /// Where the attempts' full logs are kept: `<data_dir>/logs`.
    pub fn logs_dir(&self) -> PathBuf {
        self.data_dir.join("logs")
    }

    /// The attempts' log store.
    pub fn log_store(&self) -> super::logs::LogStore {
        super::logs::LogStore::new(self.logs_dir(), self.logs.max_bytes)
    }

    /// Keeps and serves logs as `logs` says.
    pub fn with_logs(mut self, logs: LogConfig) -> Self {
        self.logs = logs;
        self
    }

    /// Watches for Spot notices as `spot` says (`None`: not at all).
    pub fn with_spot_watch(mut self, spot: Option<super::spot::SpotWatch>) -> Self {
        self.spot = spot;
        self
    }

    /// Overrides the node name (default: the instance id lower-cased).
    pub fn with_node_name(mut self, node_name: impl Into<String>) -> Self {
        self.node_name = node_name.into();
        self
    }
}

/// The BatchNode name of an instance: its id lower-cased (PROTOCOL.md, "Names").
pub fn node_name_for(instance_id: &str) -> String {
    instance_id.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_node_name() {
        let c = AgentConfig::new("i-0ABC", "ce", Resources::default());
        assert_eq!(c.node_name, "i-0abc");
        assert_eq!(c.instance_id, "i-0ABC");
        assert_eq!(c.heartbeat_interval, Duration::from_secs(10));
        assert_eq!(c.idle_polls, 3);
        assert_eq!(c.shutdown_mode, ShutdownMode::Leave);
        assert_eq!(
            c.attempts_dir(),
            PathBuf::from("/var/lib/asg-batch/attempts")
        );
        assert_eq!(c.with_idle_polls(0).idle_polls, 1);
    }
}
