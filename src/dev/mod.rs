//! `asg-batch dev`: the embedded default. One process runs the embedded API server, the
//! controller and, for every `local` compute environment, a fleet of node agents (tasks
//! of this process), applies the CRDs and a set of manifests (by default
//! `manifests/dev-demo.yaml`, built in), and prints each job's progress. kubectl
//! works against it through the kubeconfig it writes.

mod apply;
mod fleets;
mod progress;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::controller::{self, ControllerConfig};
use asg_batch_apiserver::{self as apiserver, ApiServerConfig};

pub use fleets::LocalFleets;

/// The manifests `dev` applies when given none.
pub const DEMO: &str = include_str!("../../manifests/dev-demo.yaml");

/// Field manager of what `dev` applies.
pub const FIELD_MANAGER: &str = "asg-batch-dev";

/// Job documents applied at a time: enough to keep the API server busy while a reply is
/// on its way, few enough to leave the controller and the agents their share.
const APPLY_PARALLEL: usize = 4;

/// Flags of `asg-batch dev`.
#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Address of the embedded API server (loopback).
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub listen: SocketAddr,
    /// Write a kubeconfig for the API server here.
    #[arg(long, default_value = "asg-batch-dev.kubeconfig")]
    pub kubeconfig: PathBuf,
    /// Keep objects in this directory across runs (in memory otherwise).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Apply these manifest files (YAML, several documents each) instead of the demo.
    #[arg(long = "manifest", short = 'f')]
    pub manifests: Vec<PathBuf>,
    /// Docker Engine API socket for `local` compute environments with `executor: docker`
    /// (Docker, or Podman's `podman system service`).
    #[arg(long, default_value = "/var/run/docker.sock")]
    pub docker_socket: String,
    /// Exit once every job has finished: status 0 when all succeeded, 1 otherwise.
    #[arg(long)]
    pub exit_when_done: bool,
}

/// Why `asg-batch dev` stopped.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// The API server did not start.
    #[error(transparent)]
    ApiServer(#[from] apiserver::ApiServerError),
    /// A manifest could not be read or applied.
    #[error("{0}")]
    Apply(String),
    /// The controller stopped with an error.
    #[error("controller: {0}")]
    Controller(#[from] controller::ControllerError),
    /// A Kubernetes call failed.
    #[error(transparent)]
    Kube(#[from] kube::Error),
    /// Some jobs failed (with `--exit-when-done`).
    #[error("{failed} of {total} jobs failed")]
    JobsFailed {
        /// Failed jobs.
        failed: usize,
        /// All jobs.
        total: usize,
    },
}

/// Runs `dev` until SIGINT/SIGTERM (or, with `--exit-when-done`, until every job ended).
pub async fn main(args: DevArgs) -> Result<(), DevError> {
    let server = apiserver::start(ApiServerConfig {
        listen: args.listen,
        data_dir: args.data_dir.clone(),
        ..ApiServerConfig::default()
    })
    .await?;
    server.write_kubeconfig(&args.kubeconfig)?;
    let client = server.client()?;
    let kubeconfig = std::fs::canonicalize(&args.kubeconfig).unwrap_or(args.kubeconfig.clone());
    apply::crds(&client).await?;
    let (source, documents) = if args.manifests.is_empty() {
        (
            "the built-in demo (manifests/dev-demo.yaml)".to_owned(),
            apply::parse("dev-demo.yaml", DEMO)?,
        )
    } else {
        let mut docs = Vec::new();
        for path in &args.manifests {
            let text = std::fs::read_to_string(path)
                .map_err(|e| DevError::Apply(format!("{}: {e}", path.display())))?;
            docs.extend(apply::parse(&path.display().to_string(), &text)?);
        }
        (
            args.manifests
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            docs,
        )
    };
    // Everything but the jobs first, in order (the compute environments, queues and
    // definitions the jobs name); the jobs are applied while the controller and the
    // agents run, as a cluster receives them.
    let total = documents.len();
    let (jobs, others): (Vec<_>, Vec<_>) = documents
        .into_iter()
        .partition(apply::Document::is_batch_job);
    apply::documents(&client, &others, 1).await?;
    drop(others);
    println!(
        "asg-batch dev: API server on {} ({})\n  export KUBECONFIG={}\n  kubectl get asgbatch      # everything\n  kubectl get bj -w         # jobs as they move",
        server.base_url(),
        match &args.data_dir {
            Some(d) => format!("objects kept in {}", d.display()),
            None => "in memory; --data-dir DIR keeps objects".to_owned(),
        },
        kubeconfig.display()
    );

    let fleets = Arc::new(LocalFleets::new(client.clone(), args.docker_socket.clone()));
    let config = ControllerConfig {
        resync: Duration::from_secs(2),
        debounce: Duration::from_millis(100),
        lost_node_timeout: Duration::from_secs(20),
        instance: Some("asg-batch-dev".to_owned()),
        ..ControllerConfig::default()
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut controller = tokio::spawn(controller::run(
        client.clone(),
        config,
        fleets.clone(),
        stopped(stop_rx),
    ));

    let (applied_tx, applied_rx) = tokio::sync::oneshot::channel();
    let applying = async {
        apply::documents(&client, &jobs, APPLY_PARALLEL).await?;
        println!("applied {total} objects from {source}");
        // Applied: the API server has them (10,000 parsed jobs would be ~15 MiB kept for
        // the run); progress waits for each of them before it judges the run done.
        let keys = jobs.iter().map(apply::Document::key).collect();
        drop(jobs);
        let _ = applied_tx.send(keys);
        std::future::pending::<Result<(), DevError>>().await
    };
    let progress = progress::follow(client.clone(), args.exit_when_done, applied_rx);
    let outcome = tokio::select! {
        r = progress => r,
        r = applying => r,
        _ = crate::agent::cli::shutdown_signal() => {
            println!("asg-batch dev: stopping");
            Ok(())
        }
        r = &mut controller => controller_ended(r),
    };
    // The controller first (so it launches nothing more), then the agents (they report
    // their cancelled attempts through the API server), then the API server.
    let _ = stop_tx.send(true);
    if !controller.is_finished()
        && tokio::time::timeout(Duration::from_secs(10), &mut controller)
            .await
            .is_err()
    {
        controller.abort();
    }
    fleets.shutdown(Duration::from_secs(15)).await;
    server.shutdown().await;
    outcome
}

/// Completes when `stop` turns true (or its sender is gone).
async fn stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            break;
        }
    }
}

fn controller_ended(
    joined: Result<Result<(), controller::ControllerError>, tokio::task::JoinError>,
) -> Result<(), DevError> {
    match joined {
        Ok(Ok(())) => Err(DevError::Apply("the controller stopped".into())),
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(DevError::Apply(format!("the controller panicked: {e}"))),
    }
}
