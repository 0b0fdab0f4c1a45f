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
    /// Seconds between passes when nothing changes (backoff expiry, idle timers, fleets).
    #[arg(long, default_value_t = 10)]
    pub resync: u64,
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
        let cli = Cli::parse_from(["x", "--leader-elect=false"]);
        assert!(config(&cli.args).leader_election.is_none());
    }
}
