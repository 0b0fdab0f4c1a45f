//! `asg-batch controller`: flags into a [`ControllerConfig`], then [`super::run`] with the
//! Auto Scaling Groups of `aws` compute environments reached through the default AWS
//! credential chain (`AWS_ENDPOINT_URL` and `AWS_REGION` are honoured).

use std::sync::Arc;
use std::time::Duration;

use super::{AwsFleets, ControllerConfig, ControllerError, LeaderElection};

/// Flags of `asg-batch controller`.
#[derive(Debug, Clone, clap::Args)]
pub struct ControllerArgs {
    /// Elect one active replica through a Lease (`--leader-elect=false` for a single
    /// replica outside a cluster).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Namespace of the leader Lease (default: $POD_NAMESPACE, else `default`).
    #[arg(long)]
    pub leader_election_namespace: Option<String>,
    /// This replica's identity in the Lease (default: $POD_NAME, else host name and pid).
    #[arg(long)]
    pub identity: Option<String>,
    /// Seconds without a heartbeat seen by this controller (across a whole view) after
    /// which a node is Lost; its instance is then fenced (terminated) and its attempts
    /// retried once the instance is gone. 300 s, as long as pods tolerate `unreachable`.
    #[arg(long, default_value_t = 300)]
    pub lost_node_timeout: u64,
    /// Disruption mode: when more than this percentage of a compute environment's nodes
    /// (at least two) are silent at once, no node is declared Lost.
    #[arg(long, default_value_t = 55, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub unhealthy_threshold_percent: u32,
    /// Serve `/metrics`, `/healthz` and `/readyz` on this address (e.g. `127.0.0.1:9090`;
    /// the chart sets `0.0.0.0:8080`). `off` (the default) serves nothing.
    #[arg(long, default_value = "off", value_parser = parse_bind)]
    pub metrics_bind_address: Bind,
    /// Seconds between passes when nothing changes (backoff expiry, idle timers, fleets).
    #[arg(long, default_value_t = 10)]
    pub resync: u64,
    /// Array jobs: at most this many children of one array wait (created, not yet bound)
    /// at a time; the rest are created as those are bound, so a large array starts at
    /// once and no pass creates more than this many of its children.
    #[arg(long, default_value_t = super::decide::ARRAY_CHILDREN_WAITING, value_parser = clap::value_parser!(u32).range(1..))]
    pub array_children_waiting: u32,
    /// Seconds between refreshes of a parked backlog's queue positions: passes leave the
    /// later members of a parked backlog (Runnable jobs that nothing in the cluster can
    /// take) out, and only their queue positions wait for a refresh, which works them
    /// out and writes those that moved. 0: every pass is full (no backlog left out).
    #[arg(long, default_value_t = super::decide::DEFAULT_FULL_PASS_INTERVAL)]
    pub full_pass_interval: u64,
    /// A parked class keeps its first this many members in every pass, and each queue
    /// its first this many parked jobs (their estimated starts and queue positions are
    /// refreshed in every pass; the default, 1000, is as many as the forecast projects).
    /// Lower values leave more of a backlog out of a pass.
    #[arg(long, default_value_t = crate::scheduler::forecast::MAX_PROJECTED)]
    pub parked_kept: usize,
}

/// An optional listen address (`off`: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bind(pub Option<std::net::SocketAddr>);

/// Parses `--metrics-bind-address`: `off`, or `HOST:PORT`.
pub fn parse_bind(s: &str) -> Result<Bind, String> {
    if s == "off" {
        return Ok(Bind(None));
    }
    s.parse()
        .map(|a| Bind(Some(a)))
        .map_err(|e| format!("{s:?} is not `off` or an address such as 127.0.0.1:9090: {e}"))
}

/// Why `asg-batch controller` could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ControllerCliError {
    /// No kubeconfig or in-cluster configuration.
    #[error("cannot reach the Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The controller loop failed.
    #[error(transparent)]
    Controller(#[from] ControllerError),
}

fn identity() -> String {
    if let Ok(pod) = std::env::var("POD_NAME")
        && !pod.is_empty()
    {
        return pod;
    }
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "asg-batch".to_owned());
    format!("{host}-{}", std::process::id())
}

/// The configuration `args` ask for.
pub fn config(args: &ControllerArgs) -> ControllerConfig {
    let leader_election = args.leader_elect.then(|| {
        let namespace = args
            .leader_election_namespace
            .clone()
            .or_else(|| {
                std::env::var("POD_NAMESPACE")
                    .ok()
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or_else(|| "default".to_owned());
        LeaderElection::new(namespace, args.identity.clone().unwrap_or_else(identity))
    });
    ControllerConfig {
        lost_node_timeout: Duration::from_secs(args.lost_node_timeout.max(1)),
        resync: Duration::from_secs(args.resync.max(1)),
        disruption_threshold_percent: args.unhealthy_threshold_percent,
        metrics_bind_address: args.metrics_bind_address.0,
        array_children_waiting: args.array_children_waiting,
        full_pass_interval: Duration::from_secs(args.full_pass_interval),
        parked_kept: args.parked_kept,
        instance: args.identity.clone().or_else(|| Some(identity())),
        leader_election,
        ..ControllerConfig::default()
    }
}

/// Runs the controller until SIGINT/SIGTERM.
pub async fn main(args: ControllerArgs) -> Result<(), ControllerCliError> {
    let client = kube::Client::try_default().await?;
    super::run(
        client,
        config(&args),
        Arc::new(AwsFleets::default()),
        crate::agent::cli::shutdown_signal(),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ControllerArgs,
    }

    #[test]
    fn flags_become_the_configuration() {
        let cli = Cli::parse_from([
            "x",
            "--leader-election-namespace",
            "batch",
            "--identity",
            "pod-a",
            "--lost-node-timeout",
            "30",
        ]);
        let c = config(&cli.args);
        let le = c.leader_election.expect("on by default");
        assert_eq!(
            (le.namespace.as_str(), le.identity.as_str()),
            ("batch", "pod-a")
        );
        assert_eq!(c.lost_node_timeout, Duration::from_secs(30));
        assert_eq!(
            c.parked_kept,
            crate::scheduler::forecast::MAX_PROJECTED,
            "as many as the forecast projects by default"
        );
        let cli = Cli::parse_from(["x", "--parked-kept", "2"]);
        assert_eq!(config(&cli.args).parked_kept, 2);
        let cli = Cli::parse_from(["x", "--leader-elect=false"]);
        assert!(config(&cli.args).leader_election.is_none());
        assert_eq!(
            config(&cli.args).metrics_bind_address,
            None,
            "off by default"
        );
        let cli = Cli::parse_from(["x", "--metrics-bind-address", "0.0.0.0:8080"]);
        assert_eq!(
            config(&cli.args).metrics_bind_address,
            Some("0.0.0.0:8080".parse().expect("addr"))
        );
        let bad = Cli::try_parse_from(["x", "--metrics-bind-address", "everywhere"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(bad.contains("--metrics-bind-address"), "{bad}");
        assert!(bad.contains("is not `off` or an address"), "{bad}");
    }
}
