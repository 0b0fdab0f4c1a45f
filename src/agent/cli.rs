//! `asg-batch agent`: command-line flags into an [`AgentConfig`], an executor and (for an
//! `aws` compute environment) the fleet used for scale-in protection, then [`super::run`].

use std::sync::Arc;
use std::time::Duration;

use kube::Api;

use super::config::{
    DEFAULT_DATA_DIR, DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_IDLE_POLLS, DEFAULT_START_REPORT_DELAY,
    ShutdownMode,
};
use super::executor::Executor;
use super::executor::docker::DockerExecutor;
use super::executor::process::ProcessExecutor;
use super::identity::{IMDS_ENDPOINT, ImdsOptions};
use super::{AgentConfig, AgentError};
use crate::api::common::Resources;
use crate::api::compute_environment::{ComputeEnvironment, Executor as ExecutorKind};
use crate::api::quantity::Quantity;
use crate::cloud::Fleet;
use crate::cloud::aws::AwsFleet;

/// Flags of `asg-batch agent`.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// ComputeEnvironment this instance belongs to.
    #[arg(long)]
    pub compute_environment: String,
    /// Instance id; read from EC2 instance metadata (IMDSv2) when omitted.
    #[arg(long)]
    pub instance_id: Option<String>,
    /// Instance type; read from instance metadata with the instance id when omitted.
    #[arg(long)]
    pub instance_type: Option<String>,
    /// BatchNode name (default: the instance id, lower-cased).
    #[arg(long)]
    pub node_name: Option<String>,
    /// Resources offered to jobs, e.g. `cpu=4,memory=8Gi,gpu=1` (default: the compute
    /// environment's instance shape, or its instance type's size).
    #[arg(long, value_parser = parse_capacity)]
    pub capacity: Option<Resources>,
    /// How jobs run (default: the compute environment's `local.executor`, else docker).
    #[arg(long, value_enum)]
    pub executor: Option<ExecutorArg>,
    /// Docker Engine API socket (Docker or Podman).
    #[arg(long, default_value = "/var/run/docker.sock")]
    pub docker_socket: String,
    /// Seconds between heartbeats.
    #[arg(long, default_value_t = DEFAULT_HEARTBEAT_INTERVAL.as_secs())]
    pub heartbeat_interval: u64,
    /// Idle heartbeats before the instance's scale-in protection is lifted.
    #[arg(long, default_value_t = DEFAULT_IDLE_POLLS)]
    pub idle_polls: u32,
    /// Milliseconds an attempt's start report waits for the attempt to end: a job that
    /// ends within it is reported once, start and end in one write (fewer API writes for
    /// short jobs; its status shows Running that much later). `0` reports every start at
    /// once.
    #[arg(long, default_value_t = u64::try_from(DEFAULT_START_REPORT_DELAY.as_millis()).unwrap_or(1000))]
    pub start_report_delay_ms: u64,
    /// Instance metadata endpoint.
    #[arg(long, default_value = IMDS_ENDPOINT)]
    pub imds_endpoint: String,
    /// Seconds between two polls of the instance metadata service for Spot interruption
    /// notices and rebalance recommendations (at `--imds-endpoint`); `0` disables it.
    /// Default: every 5 s when the instance's identity comes from the metadata service
    /// (on EC2), off when `--instance-id` is given (elsewhere, or told explicitly).
    #[arg(long)]
    pub spot_poll_interval: Option<u64>,
    /// Data directory: process jobs keep their state (exit code, output) in
    /// `<dir>/attempts/`, so a restarted agent re-adopts or reports them; every attempt's
    /// whole output is kept in `<dir>/logs/`.
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    pub data_dir: std::path::PathBuf,
    /// Serve `/metrics`, `/healthz` and `/readyz` on this address (e.g. `127.0.0.1:9091`);
    /// `off` (the default) serves nothing.
    #[arg(long, default_value = "off", value_parser = crate::controller::cli::parse_bind)]
    pub metrics_bind_address: crate::controller::cli::Bind,
    /// Serve the attempts' full logs (`asg-batch logs`) on this address, e.g.
    /// `0.0.0.0:10270`, over TLS with a self-signed certificate published in the
    /// BatchNode's `status.logEndpoint`, to callers whose bearer token may `get`
    /// `batchjobs/log` in the job's namespace (TokenReview, SubjectAccessReview). Off
    /// unless given; logs are kept under `<data dir>/logs/` either way.
    #[arg(long)]
    pub log_listen: Option<std::net::SocketAddr>,
    /// The address or host name clients reach the log endpoint at (default: the
    /// `--log-listen` address; required when that is `0.0.0.0` or `::`).
    #[arg(long)]
    pub log_advertise_address: Option<String>,
    /// Cap of one attempt's log in bytes: the beginning is kept, one last line says it
    /// was truncated (the status's log tail still shows the end).
    #[arg(long, default_value_t = super::logs::DEFAULT_MAX_BYTES)]
    pub log_max_bytes: u64,
    /// Seconds an ended attempt's log is kept (logs of deleted jobs go sooner, at the
    /// next sweep, every 10 minutes).
    #[arg(long, default_value_t = super::logs::DEFAULT_RETENTION.as_secs())]
    pub log_retention: u64,
    /// Serve logs over plain HTTP to anyone who reaches the endpoint (no TLS, no
    /// authentication); only for a loopback `--log-listen`.
    #[arg(long)]
    pub log_insecure_loopback: bool,
    /// What SIGTERM/SIGINT does with running attempts: `leave` them running for the next
    /// agent process to adopt (an upgrade or restart), or `cancel` them.
    #[arg(long, value_enum, default_value_t = OnShutdown::Leave)]
    pub on_shutdown: OnShutdown,
    /// Authenticate to this EKS cluster with the instance's own AWS credentials (instance
    /// profile): an `aws eks get-token` bearer token, made again before it expires. Needs
    /// `--kube-server` (and `--kube-ca-file`).
    #[arg(long, conflicts_with = "kube_token_file", requires = "kube_server")]
    pub eks_cluster_name: Option<String>,
    /// Region of the EKS cluster (default: the AWS default chain's, e.g. the instance's).
    #[arg(long, requires = "eks_cluster_name")]
    pub eks_region: Option<String>,
    /// Authenticate with the bearer token in this file, re-read at least once a minute (a
    /// rotated token is used without a restart). Needs `--kube-server`.
    #[arg(long, requires = "kube_server")]
    pub kube_token_file: Option<std::path::PathBuf>,
    /// The Kubernetes API server's URL, with `--eks-cluster-name` or `--kube-token-file`
    /// (otherwise the kubeconfig's, from `KUBECONFIG`).
    #[arg(long)]
    pub kube_server: Option<String>,
    /// CA bundle (PEM) of an `https` `--kube-server`.
    #[arg(long, requires = "kube_server")]
    pub kube_ca_file: Option<std::path::PathBuf>,
}

impl AgentArgs {
    /// How the agent authenticates to the Kubernetes API.
    pub fn kube_auth(&self) -> crate::kubeauth::KubeAuth {
        use crate::kubeauth::KubeAuth;
        match (&self.eks_cluster_name, &self.kube_token_file) {
            (Some(cluster), _) => KubeAuth::Eks {
                cluster_name: cluster.clone(),
                region: self.eks_region.clone(),
            },
            (None, Some(file)) => KubeAuth::TokenFile(file.clone()),
            (None, None) => KubeAuth::Default,
        }
    }
}

/// The Kubernetes client `args` ask for: from `--eks-cluster-name` / `--kube-token-file`
/// with `--kube-server`, else the kubeconfig (`KUBECONFIG`) or in-cluster configuration.
pub async fn kube_client(args: &AgentArgs) -> Result<kube::Client, AgentCliError> {
    let auth = args.kube_auth();
    let server = args.kube_server.clone().unwrap_or_default();
    let exe = std::env::current_exe()
        .map_err(|e| AgentCliError::KubeConfig(format!("cannot find the asg-batch binary: {e}")))?;
    let Some(kubeconfig) =
        crate::kubeauth::kubeconfig(&auth, &server, args.kube_ca_file.as_deref(), &exe)
            .map_err(AgentCliError::KubeConfig)?
    else {
        return Ok(kube::Client::try_default().await?);
    };
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .map_err(|e| AgentCliError::KubeConfig(e.to_string()))?;
    Ok(kube::Client::try_from(config)?)
}

/// `--on-shutdown` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnShutdown {
    /// Leave running attempts running; the next agent process adopts them.
    Leave,
    /// Cancel running attempts and report them `Cancelled`.
    Cancel,
}

/// `--executor` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExecutorArg {
    /// Containers through the Docker Engine API.
    Docker,
    /// Processes on the instance.
    Process,
}

/// Parses `cpu=4,memory=8Gi[,gpu=1]`.
pub fn parse_capacity(s: &str) -> Result<Resources, String> {
    let mut cpu = None;
    let mut memory = None;
    let mut gpu = 0;
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| format!("`{part}`: expected key=value (cpu=4,memory=8Gi,gpu=1)"))?;
        match key.trim() {
            "cpu" => {
                let q = Quantity::new(value.trim());
                q.millicores().map_err(|e| format!("cpu: {e}"))?;
                cpu = Some(q);
            }
            "memory" => {
                let q = Quantity::new(value.trim());
                q.bytes().map_err(|e| format!("memory: {e}"))?;
                memory = Some(q);
            }
            "gpu" => {
                gpu = value
                    .trim()
                    .parse()
                    .map_err(|e| format!("gpu `{value}`: {e}"))?;
            }
            other => return Err(format!("unknown resource `{other}` (cpu, memory, gpu)")),
        }
    }
    match (cpu, memory) {
        (Some(cpu), Some(memory)) => Ok(Resources { cpu, memory, gpu }),
        _ => Err("both cpu and memory are needed, e.g. cpu=4,memory=8Gi".into()),
    }
}

/// Why `asg-batch agent` could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentCliError {
    /// No kubeconfig or in-cluster configuration.
    #[error("cannot reach the Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The Kubernetes client could not be configured from the flags.
    #[error("kubernetes client: {0}")]
    KubeConfig(String),
    /// Identity lookup failed.
    #[error(transparent)]
    Identity(#[from] super::identity::IdentityError),
    /// The compute environment could not be read.
    #[error("compute environment {name}: {message}")]
    ComputeEnvironment {
        /// Its name.
        name: String,
        /// What went wrong.
        message: String,
    },
    /// The Docker socket could not be used.
    #[error(transparent)]
    Docker(#[from] super::executor::docker::ConnectError),
    /// The data directory or the shim binary cannot be used.
    #[error("process executor: {0}")]
    DataDir(String),
    /// The log flags do not go together.
    #[error("{0}")]
    Logs(String),
    /// The agent loop failed.
    #[error(transparent)]
    Agent(#[from] AgentError),
}

/// Runs the agent until SIGINT/SIGTERM.
pub async fn main(args: AgentArgs) -> Result<(), AgentCliError> {
    let client = kube_client(&args).await?;
    // Spot notices come from the metadata service: watched by default only where the
    // instance's identity comes from it too.
    let spot_poll_interval = args
        .spot_poll_interval
        .unwrap_or(if args.instance_id.is_none() {
            super::spot::DEFAULT_POLL_SECONDS
        } else {
            0
        });
    let identity = super::identity::resolve(
        args.instance_id.clone(),
        args.instance_type.clone(),
        &ImdsOptions {
            endpoint: args.imds_endpoint.clone(),
            ..ImdsOptions::default()
        },
    )
    .await?;
    let ce_error = |message: String| AgentCliError::ComputeEnvironment {
        name: args.compute_environment.clone(),
        message,
    };
    let ce = Api::<ComputeEnvironment>::all(client.clone())
        .get_opt(&args.compute_environment)
        .await?
        .ok_or_else(|| ce_error("not found".into()))?;

    let fleet: Option<Arc<dyn Fleet>> = match &ce.spec.aws {
        Some(aws) => Some(Arc::new(
            AwsFleet::from_env(aws.auto_scaling_group_name.clone(), aws.region.clone()).await,
        )),
        None => None,
    };
    let capacity = match (&args.capacity, &ce.spec.instance_shape) {
        (Some(c), _) => c.clone(),
        (None, Some(shape)) => shape.resources.clone(),
        (None, None) => {
            let (Some(fleet), Some(t)) = (&fleet, &identity.instance_type) else {
                return Err(ce_error(
                    "has no instanceShape and the instance type is unknown: pass --capacity".into(),
                ));
            };
            let info = fleet
                .instance_type_info(t)
                .await
                .map_err(|e| ce_error(format!("looking up instance type {t}: {e}")))?;
            Resources::from_amounts(info.cpu_millis, info.memory_bytes, info.gpus)
        }
    };
    let kind = match args.executor {
        Some(ExecutorArg::Docker) => ExecutorKind::Docker,
        Some(ExecutorArg::Process) => ExecutorKind::Process,
        None => ce
            .spec
            .local
            .as_ref()
            .map_or(ExecutorKind::Docker, |l| l.executor),
    };
    if args.log_insecure_loopback && args.log_listen.is_some_and(|a| !a.ip().is_loopback()) {
        return Err(AgentCliError::Logs(format!(
            "--log-insecure-loopback serves logs without TLS or authentication: --log-listen must be a loopback address, not {}",
            args.log_listen.map(|a| a.to_string()).unwrap_or_default()
        )));
    }
    let logs = super::logs::LogStore::new(args.data_dir.join("logs"), args.log_max_bytes);
    let executor: Arc<dyn Executor> = match kind {
        ExecutorKind::Docker => Arc::new(
            DockerExecutor::connect(&args.docker_socket)
                .await?
                .with_logs(logs),
        ),
        ExecutorKind::Process => {
            let dir = args.data_dir.join("attempts");
            std::fs::create_dir_all(&dir).map_err(|e| {
                AgentCliError::DataDir(format!("cannot create {}: {e}", dir.display()))
            })?;
            Arc::new(
                ProcessExecutor::with_current_exe(&dir)
                    .map_err(|e| {
                        AgentCliError::DataDir(format!("cannot find the asg-batch binary: {e}"))
                    })?
                    .with_logs(logs),
            )
        }
    };
    let mut config = AgentConfig::new(
        identity.instance_id,
        args.compute_environment.clone(),
        capacity,
    )
    .with_instance_type(identity.instance_type)
    .with_executor(kind)
    .with_heartbeat_interval(Duration::from_secs(args.heartbeat_interval.max(1)))
    .with_idle_polls(args.idle_polls)
    .with_start_report_delay(Duration::from_millis(args.start_report_delay_ms))
    .with_data_dir(args.data_dir.clone())
    .with_spot_watch((spot_poll_interval > 0).then(|| super::spot::SpotWatch {
        imds: ImdsOptions {
            endpoint: args.imds_endpoint.clone(),
            ..ImdsOptions::default()
        },
        interval: Duration::from_secs(spot_poll_interval),
    }))
    .with_logs(super::config::LogConfig {
        listen: args.log_listen,
        advertise: args.log_advertise_address.clone(),
        max_bytes: args.log_max_bytes,
        retention: Duration::from_secs(args.log_retention),
        sweep_every: super::logs::SWEEP_EVERY,
        secure: !args.log_insecure_loopback,
    })
    .with_shutdown_mode(match args.on_shutdown {
        OnShutdown::Leave => ShutdownMode::Leave,
        OnShutdown::Cancel => ShutdownMode::Cancel,
    });
    if let Some(name) = args.node_name {
        config = config.with_node_name(name);
    }
    config.metrics_bind_address = args.metrics_bind_address.0;
    super::run(client, config, executor, fleet, shutdown_signal()).await?;
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_flag() {
        let r = parse_capacity("cpu=4,memory=8Gi,gpu=1").expect("valid");
        assert_eq!(r.cpu.millicores().expect("cpu"), 4000);
        assert_eq!(r.memory.bytes().expect("memory"), 8 << 30);
        assert_eq!(r.gpu, 1);
        assert_eq!(
            parse_capacity(" cpu=500m , memory=512Mi ")
                .expect("valid")
                .gpu,
            0
        );
        for (bad, says) in [
            ("cpu=4", "both cpu and memory"),
            ("cpu=x,memory=1Gi", "cpu:"),
            ("cpu=1,memory=1Gi,disk=3", "unknown resource `disk`"),
            ("cpu", "expected key=value"),
            ("cpu=1,memory=1Gi,gpu=-1", "gpu `-1`"),
        ] {
            let e = parse_capacity(bad).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
