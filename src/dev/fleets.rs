//! The fleets of `asg-batch dev`: every `local` compute environment gets a
//! [`LocalFleet`] whose instances are node agents running as tasks of this process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use tracing::{Instrument, error, info, info_span};

use crate::agent::config::{ShutdownMode, node_name_for};
use crate::agent::executor::Executor;
use crate::agent::executor::docker::DockerExecutor;
use crate::agent::executor::process::ProcessExecutor;
use crate::agent::{self, AgentConfig};
use crate::api::compute_environment::{ComputeEnvironment, Executor as ExecutorKind};
use crate::cloud::local::{LaunchRequest, Launcher, LocalFleet, LocalGroup};
use crate::cloud::{CloudError, Fleet, FleetState, InstanceTypeInfo};
use crate::controller::FleetProvider;

/// Heartbeat of the in-process agents: short, so a dev fleet reacts quickly.
const HEARTBEAT: Duration = Duration::from_secs(2);

/// Gives each `local` compute environment an in-process fleet of node agents.
pub struct LocalFleets {
    client: kube::Client,
    docker_socket: String,
    fleets: Mutex<HashMap<String, Arc<dyn Fleet>>>,
    /// Every fleet made, to stop their agents at shutdown.
    made: Mutex<Vec<Arc<LocalFleet>>>,
    /// The agents' tasks, to wait for at shutdown.
    agents: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    /// The agents' executors, closed at shutdown once the agents stopped.
    executors: Mutex<Vec<Arc<dyn Executor>>>,
    /// The agents' data directory ([`run_dir`]: their logs, and process jobs' records under
    /// `attempts/`; removed at shutdown: dev's agents cancel their attempts when they stop).
    data_dir: std::path::PathBuf,
}

/// The directory under which the shared-memory file system keeps files
/// (`/dev/shm`), when it is one.
const SHM_DIR: &str = "/dev/shm";

/// dev's own directory for its agents' files: `<dir>/asg-batch-dev-<pid>` on the
/// shared-memory file system when there is one (`/dev/shm` on tmpfs), else in `fallback`.
/// Everything in it lives only as long as dev does (removed when it exits): process jobs'
/// records (who their shim is, how the program ended: they only matter for the boot they
/// were written in, a shim being found by pid, start time and boot id; containerd keeps its
/// shims' state under `/run` for the same reason) under `attempts/`, and the attempts' logs
/// under `logs/`. On a disk file system the small files each attempt makes and removes
/// cost more than a trivial attempt's process: on this project's test machines (ext4
/// without a journal, where allocating an inode skips recently deleted ones by reading
/// their inode table blocks) creating the log files alone took ~15 % of dev's wall time
/// for 5,000 trivial jobs (issue 13). An agent on an instance keeps its logs on disk
/// (`--data-dir`).
pub fn run_dir(fallback: &std::path::Path) -> std::path::PathBuf {
    let shm = std::path::Path::new(SHM_DIR);
    let on_tmpfs = nix::sys::statfs::statfs(shm)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC);
    let writable = nix::unistd::access(
        shm,
        nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
    )
    .is_ok();
    let base = if on_tmpfs && writable { shm } else { fallback };
    base.join(format!("asg-batch-dev-{}", std::process::id()))
}

impl LocalFleets {
    /// Fleets whose agents talk to the API server through `client`; container jobs go
    /// to the Docker Engine API at `docker_socket`.
    pub fn new(client: kube::Client, docker_socket: impl Into<String>) -> Self {
        Self {
            client,
            docker_socket: docker_socket.into(),
            fleets: Mutex::default(),
            made: Mutex::default(),
            agents: Arc::default(),
            executors: Mutex::default(),
            data_dir: run_dir(&std::env::temp_dir()),
        }
    }

    /// Stops every agent of every fleet and waits up to `grace` for them to end (an
    /// agent cancels its running attempts and reports them before it returns).
    pub async fn shutdown(&self, grace: Duration) {
        let made = std::mem::take(
            &mut *self
                .made
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for f in made {
            f.shutdown();
        }
        let agents = std::mem::take(
            &mut *self
                .agents
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if tokio::time::timeout(grace, futures::future::join_all(agents))
            .await
            .is_err()
        {
            tracing::warn!(?grace, "node agents did not stop in time");
        }
        // Their executors' helpers (the node supervisors of process jobs) end with them,
        // reaped here rather than left to outlive this process.
        let executors = std::mem::take(
            &mut *self
                .executors
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        futures::future::join_all(executors.iter().map(|e| e.close(grace))).await;
        // The records (`attempts/`) and the logs.
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }

    /// The agents' data directory (logs under `logs/`).
    fn data_dir(&self) -> std::path::PathBuf {
        self.data_dir.clone()
    }

    /// Where process jobs keep their records.
    fn state_dir(&self) -> std::path::PathBuf {
        self.data_dir.join("attempts")
    }

    /// Where every agent of this process keeps its attempts' logs.
    fn log_store(&self) -> crate::agent::logs::LogStore {
        crate::agent::logs::LogStore::new(
            self.data_dir().join("logs"),
            crate::agent::logs::DEFAULT_MAX_BYTES,
        )
    }

    async fn make(&self, name: &str, ce: &ComputeEnvironment) -> Arc<dyn Fleet> {
        let Some(shape) = ce.spec.instance_shape.clone() else {
            return unavailable(format!(
                "local compute environment {name} has no instanceShape"
            ));
        };
        let (Ok(cpu_millis), Ok(memory_bytes)) = (
            shape.resources.cpu.millicores(),
            shape.resources.memory.bytes(),
        ) else {
            return unavailable(format!(
                "local compute environment {name}: instanceShape does not parse"
            ));
        };
        let kind = ce
            .spec
            .local
            .as_ref()
            .map_or(ExecutorKind::Docker, |l| l.executor);
        let records = self.state_dir();
        let executor: Arc<dyn Executor> = match kind {
            ExecutorKind::Process => match ProcessExecutor::with_current_exe(&records) {
                Ok(p) => {
                    info!(records = %records.display(), "process jobs keep their records here");
                    Arc::new(p.with_logs(self.log_store()))
                }
                Err(e) => {
                    return unavailable(format!(
                        "compute environment {name} runs processes, but the asg-batch binary \
                         to supervise them cannot be found: {e}"
                    ));
                }
            },
            ExecutorKind::Docker => match DockerExecutor::connect(&self.docker_socket).await {
                Ok(d) => Arc::new(d.with_logs(self.log_store())),
                Err(e) => {
                    return unavailable(format!(
                        "compute environment {name} runs containers, but {e} \
                         (start Docker or `podman system service`, pass --docker-socket, \
                         or use `executor: process`)"
                    ));
                }
            },
        };
        self.executors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(executor.clone());
        let group = LocalGroup {
            name: name.to_owned(),
            min: u32::try_from(ce.spec.min_instances).unwrap_or(0),
            max: u32::try_from(ce.spec.max_instances).unwrap_or(0),
            instance_type: shape
                .instance_type
                .clone()
                .unwrap_or_else(|| "local".to_owned()),
            shape: InstanceTypeInfo {
                cpu_millis,
                memory_bytes,
                gpus: shape.resources.gpu,
            },
        };
        // Every instance's agent gets this configuration with its own instance id and
        // node name.
        let base = AgentConfig::new("", name, shape.resources.clone())
            .with_instance_type(shape.instance_type.clone())
            .with_executor(kind)
            .with_heartbeat_interval(HEARTBEAT)
            .with_idle_polls(2)
            // The instances are tasks of this process and end with it: their attempts too.
            .with_shutdown_mode(ShutdownMode::Cancel)
            // Their logs: under this process's directory, served on loopback over plain
            // HTTP without authentication, the trust of dev's own loopback API server.
            .with_data_dir(self.data_dir())
            .with_logs(crate::agent::config::LogConfig {
                listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
                secure: false,
                ..Default::default()
            });
        // The launcher needs the fleet (agents protect their instance through it), and
        // the fleet needs the launcher: the launcher holds a weak reference, set before
        // the fleet launches anything.
        let slot: Arc<Mutex<Weak<LocalFleet>>> = Arc::default();
        let launcher = Spawner {
            agents: self.agents.clone(),
            client: self.client.clone(),
            base,
            executor,
            fleet: slot.clone(),
        }
        .launcher();
        let fleet = Arc::new(LocalFleet::new(group, launcher));
        *slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::downgrade(&fleet);
        if let Err(e) = fleet.start() {
            return unavailable(e.to_string());
        }
        self.made
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(fleet.clone());
        fleet
    }
}

/// Starts one node agent task per launched instance.
struct Spawner {
    agents: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    client: kube::Client,
    /// The agents' configuration but for the instance id and node name.
    base: AgentConfig,
    executor: Arc<dyn Executor>,
    fleet: Arc<Mutex<Weak<LocalFleet>>>,
}

impl Spawner {
    fn launcher(self) -> Launcher {
        Arc::new(move |LaunchRequest { instance_id, stop }| {
            let config = AgentConfig {
                node_name: node_name_for(&instance_id),
                instance_id: instance_id.clone(),
                ..self.base.clone()
            };
            let fleet = self
                .fleet
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .upgrade()
                .map(|f| f as Arc<dyn Fleet>);
            let (client, executor) = (self.client.clone(), self.executor.clone());
            let handle = tokio::spawn(
                async move {
                    info!("instance launched: node agent starting");
                    match agent::run(client, config, executor, fleet, super::stopped(stop)).await {
                        Ok(()) => info!("instance stopped"),
                        Err(e) => error!(error = %e, "node agent failed"),
                    }
                }
                .instrument(info_span!("instance", id = %instance_id)),
            );
            let mut agents = self
                .agents
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            agents.retain(|h| !h.is_finished());
            agents.push(handle);
            Ok(())
        })
    }
}

impl FleetProvider for LocalFleets {
    fn fleet<'a>(&'a self, ce: &'a ComputeEnvironment) -> BoxFuture<'a, Option<Arc<dyn Fleet>>> {
        Box::pin(async move {
            ce.spec.local.as_ref()?;
            let name = ce.metadata.name.clone()?;
            if let Some(f) = self
                .fleets
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&name)
            {
                return Some(f.clone());
            }
            let fleet = self.make(&name, ce).await;
            Some(
                self.fleets
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .entry(name)
                    .or_insert(fleet)
                    .clone(),
            )
        })
    }
}

/// A fleet that cannot work; every call says why (the controller turns that into a
/// condition and an Event on the compute environment).
struct Unavailable(String);

fn unavailable(message: String) -> Arc<dyn Fleet> {
    error!(%message, "local fleet unavailable");
    Arc::new(Unavailable(message))
}

impl Unavailable {
    fn err(&self, operation: &'static str) -> CloudError {
        CloudError::Other {
            operation,
            message: self.0.clone(),
        }
    }
}

impl Fleet for Unavailable {
    fn describe(&self) -> BoxFuture<'_, Result<FleetState, CloudError>> {
        Box::pin(async move { Err(self.err("DescribeAutoScalingGroups")) })
    }
    fn set_desired(&self, _: u32) -> BoxFuture<'_, Result<(), CloudError>> {
        Box::pin(async move { Err(self.err("SetDesiredCapacity")) })
    }
    fn terminate(&self, _: &str) -> BoxFuture<'_, Result<(), CloudError>> {
        Box::pin(async move { Err(self.err("TerminateInstanceInAutoScalingGroup")) })
    }
    fn protect(&self, _: &[String], _: bool) -> BoxFuture<'_, Result<(), CloudError>> {
        Box::pin(async move { Err(self.err("SetInstanceProtection")) })
    }
    fn instance_type_info(&self, _: &str) -> BoxFuture<'_, Result<InstanceTypeInfo, CloudError>> {
        Box::pin(async move { Err(self.err("DescribeInstanceTypes")) })
    }
}
