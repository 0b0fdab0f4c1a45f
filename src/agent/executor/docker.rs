//! Attempts as containers through the Docker Engine API (Docker, or Podman's compatible
//! service). The image is pulled on demand; cpu and memory limits are enforced.
//!
//! A container outlives the agent process that started it: it is named after the attempt
//! ([`RunSpec::name`]) and labelled `io.asgbatch.attempt=<name>`, so a later agent
//! process finds it and takes it over ([`Executor::adopt`]). A stopped container is kept
//! until its ending is reported ([`Executor::release`]).

use super::{
    Adoption, EndReason, Ending, Executor, LogTail, Outcome, Progress, RunSpec, Workload,
    cancelled, classify, expires,
};
use crate::api::common::DevicePermission;
use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, DeviceMapping, DeviceRequest, HostConfig, ResourcesUlimits,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, KillContainerOptions, LogsOptions,
    RemoveContainerOptions, StopContainerOptions, WaitContainerOptions,
};
use futures::StreamExt;
use futures::future::BoxFuture;
use jiff::Timestamp;
use std::collections::{BTreeMap, HashMap};
use tokio::sync::{mpsc, watch};

/// How long the log copy of a stopped container may take to reach the end.
const LOG_COPY_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// A container's log being copied; stopped when dropped (the supervision of the attempt
/// ended: an agent that leaves it to the next agent process stops copying too, and the
/// next one copies the whole log again).
struct LogCopy(tokio::task::JoinHandle<Option<CopiedLog>>);

/// What a log copy wrote: the file, and how many bytes of the container's log it took.
struct CopiedLog {
    file: crate::agent::logs::CappedFile,
    received: usize,
}

impl Drop for LogCopy {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// First pause before inspecting a container again after an error, and the longest.
const INSPECT_RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(100);
const INSPECT_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(5);
/// How long the exit code of a container whose wait failed is asked for.
const INSPECT_GIVE_UP: std::time::Duration = std::time::Duration::from_secs(60);

/// What inspecting a container found.
enum Inspected {
    Found(Box<bollard::models::ContainerInspectResponse>),
    /// The engine says there is no such container.
    NoSuchContainer,
    /// The engine kept failing until the caller gave up.
    GaveUp,
}

/// Label naming the attempt a container runs (its value is the container's name).
pub const ATTEMPT_LABEL: &str = "io.asgbatch.attempt";

/// A container engine's time (RFC 3339); `None` for the zero time of "never".
fn parse_time(s: &str) -> Option<Timestamp> {
    let t: Timestamp = s.parse().ok()?;
    (t.as_second() > 0).then_some(t)
}

/// Could not reach the container engine.
#[derive(Debug, thiserror::Error)]
#[error("container engine at {endpoint}: {source}")]
pub struct ConnectError {
    endpoint: String,
    #[source]
    source: bollard::errors::Error,
}

/// Runs attempts as containers.
#[derive(Clone, Debug)]
pub struct DockerExecutor {
    docker: Docker,
    network_mode: Option<String>,
    logs: Option<crate::agent::logs::LogStore>,
}

impl DockerExecutor {
    /// Connects to the engine's unix socket (e.g. `/var/run/docker.sock` or a Podman
    /// service socket) and negotiates the API version (Podman serves 1.41).
    pub async fn connect(socket: &str) -> Result<Self, ConnectError> {
        let err = |source| ConnectError {
            endpoint: socket.to_string(),
            source,
        };
        let docker =
            Docker::connect_with_unix(socket, 120, bollard::API_DEFAULT_VERSION).map_err(err)?;
        let docker = docker.negotiate_version().await.map_err(err)?;
        Ok(Self {
            docker,
            network_mode: None,
            logs: None,
        })
    }

    /// Sets the container network mode (`bridge`, `host`, `none`); the engine's default otherwise.
    pub fn with_network_mode(mut self, mode: impl Into<String>) -> Self {
        self.network_mode = Some(mode.into());
        self
    }

    /// Keeps each attempt's whole output in `logs` (capped there), copied from the
    /// engine's log stream while the container runs, so it outlives the container.
    pub fn with_logs(mut self, logs: crate::agent::logs::LogStore) -> Self {
        self.logs = Some(logs);
        self
    }

    /// Starts copying the container's whole log (from its start, so a re-adopted
    /// container's log is written again whole, each line once) into the log store.
    fn copy_logs(&self, name: &str) -> Option<LogCopy> {
        let store = self.logs.clone()?;
        let docker = self.docker.clone();
        let name = name.to_string();
        Some(LogCopy(tokio::spawn(async move {
            let mut file = match store.create(&name) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(container = %name, error = %e, "cannot create the attempt's log file");
                    return None;
                }
            };
            let options = LogsOptions {
                follow: true,
                stdout: true,
                stderr: true,
                ..Default::default()
            };
            let mut received = 0;
            let mut logs = docker.logs(&name, Some(options));
            while let Some(chunk) = logs.next().await {
                match chunk {
                    Ok(out) => {
                        let bytes = out.into_bytes();
                        received += bytes.len();
                        if let Err(e) = file.write(&bytes) {
                            tracing::warn!(container = %name, error = %e, "cannot write the attempt's log");
                            return None;
                        }
                    }
                    Err(e) => {
                        // The rest is read once the container stopped (`finish_copy`).
                        tracing::info!(container = %name, error = %e, "the container's log stream failed");
                        break;
                    }
                }
            }
            Some(CopiedLog { file, received })
        })))
    }

    /// Waits for a log copy to reach the end of the stopped container's log, then reads
    /// the stopped container's log once more and appends what the followed stream did not
    /// deliver, in case a follow stream ends (or fails) when the container stops before it
    /// delivered everything. (The short logs once blamed on that were an adoption that
    /// took a container in Podman's transient `stopped` state for a gone one: see
    /// [`DockerExecutor::inspect`].)
    async fn finish_copy(&self, name: &str, copy: Option<LogCopy>) {
        let Some(mut copy) = copy else { return };
        let copied = match tokio::time::timeout(LOG_COPY_GRACE, &mut copy.0).await {
            Ok(Ok(Some(copied))) => copied,
            Ok(_) => return,
            Err(_) => {
                tracing::warn!(container = name, grace = ?LOG_COPY_GRACE, "the log stream did not end after the container stopped");
                return;
            }
        };
        let CopiedLog { mut file, received } = copied;
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let mut skip = received;
        let mut logs = self.docker.logs(name, Some(options));
        let mut appended = 0;
        while let Some(Ok(out)) = logs.next().await {
            let bytes = out.into_bytes();
            let start = skip.min(bytes.len());
            skip -= start;
            if start < bytes.len() {
                appended += bytes.len() - start;
                if let Err(e) = file.write(&bytes[start..]) {
                    tracing::warn!(container = name, error = %e, "cannot write the attempt's log");
                    return;
                }
            }
        }
        if appended > 0 {
            tracing::info!(
                container = name,
                bytes = appended,
                "the end of the log, missing from its stream, read after the container stopped"
            );
        }
    }

    async fn ensure_image(
        &self,
        image: &str,
        progress: &mpsc::UnboundedSender<Progress>,
    ) -> Result<(), String> {
        if self.docker.inspect_image(image).await.is_ok() {
            return Ok(());
        }
        let _ = progress.send(Progress::Pulling {
            image: image.to_string(),
        });
        let options = CreateImageOptions {
            from_image: Some(image.to_string()),
            ..Default::default()
        };
        let mut pull = self.docker.create_image(Some(options), None, None);
        while let Some(step) = pull.next().await {
            if let Err(e) = step {
                return Err(format!("CannotPullContainerError: {image}: {e}"));
            }
        }
        self.docker
            .inspect_image(image)
            .await
            .map(drop)
            .map_err(|e| {
                format!("CannotPullContainerError: {image} is not present after pulling: {e}")
            })
    }

    async fn remove(&self, name: &str) {
        let options = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        let _ = self.docker.remove_container(name, Some(options)).await;
    }

    async fn exit_code(&self, name: &str) -> Option<i32> {
        let mut wait = self
            .docker
            .wait_container(name, None::<WaitContainerOptions>);
        match wait.next().await {
            Some(Ok(r)) => i32::try_from(r.status_code).ok(),
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => {
                i32::try_from(code).ok()
            }
            _ => match self
                .inspect(name, tokio::time::sleep(INSPECT_GIVE_UP))
                .await
            {
                Inspected::Found(c) => c
                    .state
                    .and_then(|s| s.exit_code)
                    .and_then(|c| i32::try_from(c).ok()),
                Inspected::NoSuchContainer | Inspected::GaveUp => None,
            },
        }
    }

    /// Inspects container `name`. Only the engine's "no such container" means it is gone:
    /// any other error (the engine unreachable or failing, or an answer this client cannot
    /// read, such as Podman's transient `stopped` state between `running` and `exited`) is
    /// asked again, with backoff, until `give_up` resolves. Taking a container that could
    /// not be inspected for one that is gone would remove it, running or not, and lose its
    /// output.
    async fn inspect(&self, name: &str, give_up: impl Future<Output = ()>) -> Inspected {
        let mut give_up = std::pin::pin!(give_up);
        let mut delay = INSPECT_RETRY_FIRST;
        loop {
            match self.docker.inspect_container(name, None).await {
                Ok(found) => return Inspected::Found(Box::new(found)),
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => return Inspected::NoSuchContainer,
                Err(e) => {
                    tracing::warn!(container = name, error = %e, retry_in = ?delay, "cannot inspect the container; asking again");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = &mut give_up => return Inspected::GaveUp,
            }
            delay = (delay * 2).min(INSPECT_RETRY_MAX);
        }
    }

    async fn log_tail(&self, name: &str) -> String {
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            tail: "20".into(),
            ..Default::default()
        };
        let mut tail = LogTail::default();
        let mut logs = self.docker.logs(name, Some(options));
        while let Some(Ok(chunk)) = logs.next().await {
            tail.push(&chunk.to_string());
        }
        tail.text()
    }

    async fn run_inner(
        &self,
        spec: RunSpec,
        progress: mpsc::UnboundedSender<Progress>,
        cancel: watch::Receiver<bool>,
    ) -> Outcome {
        let Workload::Container { image, .. } = &spec.workload else {
            return Outcome::not_started(
                EndReason::StartFailed,
                "the docker executor runs container jobs only",
            );
        };
        if let Err(why) = self.ensure_image(image, &progress).await {
            return Outcome::not_started(EndReason::ImagePullFailed, why);
        }
        self.remove(&spec.name).await;
        let body = create_body(&spec, self.network_mode.clone());
        let create = CreateContainerOptions {
            name: Some(spec.name.clone()),
            ..Default::default()
        };
        if let Err(e) = self.docker.create_container(Some(create), body).await {
            return Outcome::not_started(
                EndReason::StartFailed,
                format!("CannotCreateContainerError: {e}"),
            );
        }
        if let Err(e) = self.docker.start_container(&spec.name, None).await {
            let log_tail = self.log_tail(&spec.name).await;
            self.remove(&spec.name).await;
            return Outcome {
                log_tail,
                ..Outcome::not_started(
                    EndReason::StartFailed,
                    format!("CannotStartContainerError: {e}"),
                )
            };
        }
        let started_at = Timestamp::now();
        let _ = progress.send(Progress::Started { at: started_at });
        let copy = self.copy_logs(&spec.name);

        let ending = tokio::select! {
            code = self.exit_code(&spec.name) => Ending::Exited(code.unwrap_or(-1)),
            () = expires(spec.timeout) => Ending::TimedOut(self.stop(&spec.name, spec.grace).await),
            () = cancelled(cancel) => Ending::Cancelled(self.stop(&spec.name, spec.grace).await),
        };
        let stopped_at = Timestamp::now();
        self.finish_copy(&spec.name, copy).await;
        // The container stays until the ending is reported (`release`).
        let log_tail = self.log_tail(&spec.name).await;
        let (exit_code, reason, status_reason) = classify(ending, spec.memory_bytes > 0);
        Outcome {
            exit_code,
            reason,
            status_reason,
            started_at: Some(started_at),
            stopped_at,
            log_tail,
        }
    }

    async fn adopt_inner(
        &self,
        adoption: Adoption,
        progress: mpsc::UnboundedSender<Progress>,
        cancel: watch::Receiver<bool>,
    ) -> Option<Outcome> {
        let name = adoption.name.as_str();
        let found = match self.inspect(name, cancelled(cancel.clone())).await {
            Inspected::Found(found) => *found,
            Inspected::NoSuchContainer => return None,
            Inspected::GaveUp => {
                // Cancelled while the engine could not say what the container is: stop it
                // all the same (stopping needs no inspection).
                let code = self.stop(name, adoption.grace).await;
                let (exit_code, reason, status_reason) = classify(Ending::Cancelled(code), false);
                return Some(Outcome {
                    exit_code,
                    reason,
                    status_reason,
                    started_at: adoption.started_at,
                    stopped_at: Timestamp::now(),
                    log_tail: self.log_tail(name).await,
                });
            }
        };
        let ours = found
            .config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get(ATTEMPT_LABEL))
            .is_some_and(|v| v == name);
        if !ours {
            tracing::warn!(
                container = name,
                "a container with the attempt's name but not its label: not adopted"
            );
            return None;
        }
        let state = found.state.clone().unwrap_or_default();
        let own_start = state.started_at.as_deref().and_then(parse_time);
        // Never started (created, or removed before it ran): nothing to take over.
        if own_start.is_none() {
            tracing::info!(container = name, status = ?state.status, "container never ran: not adopted");
            return None;
        }
        let memory_limited = found
            .host_config
            .as_ref()
            .and_then(|h| h.memory)
            .is_some_and(|m| m > 0);
        let _ = progress.send(Progress::Started {
            at: adoption
                .started_at
                .or(own_start)
                .unwrap_or_else(Timestamp::now),
        });
        let running = state.running.unwrap_or(false);
        let copy = self.copy_logs(name);
        let (ending, stopped_at) = if running {
            tracing::info!(container = name, "re-adopting a running container");
            let ending = tokio::select! {
                code = self.exit_code(name) => Ending::Exited(code.unwrap_or(-1)),
                () = expires(adoption.remaining(own_start)) => Ending::TimedOut(self.stop(name, adoption.grace).await),
                () = cancelled(cancel) => Ending::Cancelled(self.stop(name, adoption.grace).await),
            };
            (ending, Timestamp::now())
        } else {
            tracing::info!(
                container = name,
                "the container ended while no agent supervised it"
            );
            let code = state.exit_code.and_then(|c| i32::try_from(c).ok());
            let stopped = state
                .finished_at
                .as_deref()
                .and_then(parse_time)
                .unwrap_or_else(Timestamp::now);
            (Ending::Exited(code.unwrap_or(-1)), stopped)
        };
        self.finish_copy(name, copy).await;
        let log_tail = self.log_tail(name).await;
        let (exit_code, reason, status_reason) = classify(ending, memory_limited);
        Some(Outcome {
            exit_code,
            reason,
            status_reason,
            started_at: adoption.started_at.or(own_start),
            stopped_at,
            log_tail,
        })
    }

    /// Stops the container as `docker stop -t GRACE` does (its stop signal, SIGTERM by
    /// default, then SIGKILL after `grace`) and returns the code it ended with. Killed
    /// at once when the engine refuses the stop.
    async fn stop(&self, name: &str, grace: std::time::Duration) -> Option<i32> {
        let options = StopContainerOptions {
            t: Some(i32::try_from(grace.as_secs()).unwrap_or(i32::MAX)),
            signal: None,
        };
        // The request lasts up to the grace: the client's timeout must outlast it.
        let docker = self
            .docker
            .clone()
            .with_timeout(grace + std::time::Duration::from_secs(60));
        if let Err(e) = docker.stop_container(name, Some(options)).await {
            tracing::warn!(container = name, error = %e, "stopping the container failed: killing it");
            return self.kill(name).await;
        }
        self.exit_code(name).await
    }

    /// Kills the container and returns the code it died with.
    async fn kill(&self, name: &str) -> Option<i32> {
        let options = KillContainerOptions {
            signal: "SIGKILL".into(),
        };
        let _ = self.docker.kill_container(name, Some(options)).await;
        self.exit_code(name).await
    }
}

/// GPU driver of the device request a GPU attempt's container gets.
pub const GPU_DRIVER: &str = "nvidia";

/// The container an attempt runs in: its workload, environment, limits, label, the job's
/// container settings (volumes, user, privileges, ulimits, Linux parameters) and its GPUs.
/// Pure, so what the engine is asked for can be checked without one.
pub fn create_body(spec: &RunSpec, network_mode: Option<String>) -> ContainerCreateBody {
    let (image, command, args, working_dir) = match &spec.workload {
        Workload::Container {
            image,
            command,
            args,
            working_dir,
        } => (Some(image.clone()), command, args, working_dir.clone()),
        Workload::Process {
            command,
            working_dir,
        } => (None, command, &Vec::new(), working_dir.clone()),
    };
    let s = &spec.settings;
    let linux = s.linux_parameters.clone().unwrap_or_default();
    let volumes: BTreeMap<&str, &str> = s
        .volumes
        .iter()
        .map(|v| (v.name.as_str(), v.host.source_path.as_str()))
        .collect();
    // The schema requires every mount point to name a volume; one that does not is skipped.
    let binds: Vec<String> = s
        .mount_points
        .iter()
        .filter_map(|m| {
            let source = volumes.get(m.source_volume.as_str())?;
            let mode = if m.read_only { "ro" } else { "rw" };
            Some(format!("{source}:{}:{mode}", m.container_path))
        })
        .collect();
    let tmpfs: HashMap<String, String> = linux
        .tmpfs
        .iter()
        .map(|t| {
            let options = std::iter::once(format!("size={}m", t.size))
                .chain(t.mount_options.iter().cloned())
                .collect::<Vec<_>>()
                .join(",");
            (t.container_path.clone(), options)
        })
        .collect();
    let devices: Vec<DeviceMapping> = linux
        .devices
        .iter()
        .map(|d| DeviceMapping {
            path_on_host: Some(d.host_path.clone()),
            path_in_container: Some(
                d.container_path
                    .clone()
                    .unwrap_or_else(|| d.host_path.clone()),
            ),
            cgroup_permissions: Some(cgroup_permissions(&d.permissions)),
        })
        .collect();
    let ulimits: Vec<ResourcesUlimits> = s
        .ulimits
        .iter()
        .map(|u| ResourcesUlimits {
            name: Some(u.name.as_str().to_string()),
            soft: Some(u.soft_limit),
            hard: Some(u.hard_limit),
        })
        .collect();
    let capabilities = linux.capabilities.unwrap_or_default();
    let device_requests = (!spec.gpus.is_empty()).then(|| {
        vec![DeviceRequest {
            driver: Some(GPU_DRIVER.into()),
            device_ids: Some(spec.gpus.iter().map(u32::to_string).collect()),
            capabilities: Some(vec![vec!["gpu".into()]]),
            ..Default::default()
        }]
    });
    let some = |v: Vec<String>| (!v.is_empty()).then_some(v);
    let host_config = HostConfig {
        memory: (spec.memory_bytes > 0)
            .then(|| i64::try_from(spec.memory_bytes).unwrap_or(i64::MAX)),
        nano_cpus: (spec.cpu_millis > 0)
            .then(|| i64::try_from(spec.cpu_millis.saturating_mul(1_000_000)).unwrap_or(i64::MAX)),
        network_mode,
        binds: some(binds),
        tmpfs: (!tmpfs.is_empty()).then_some(tmpfs),
        privileged: s.privileged.then_some(true),
        readonly_rootfs: s.readonly_root_filesystem.then_some(true),
        ulimits: (!ulimits.is_empty()).then_some(ulimits),
        shm_size: linux
            .shared_memory_size
            .map(|mib| i64::from(mib).saturating_mul(1 << 20)),
        devices: (!devices.is_empty()).then_some(devices),
        cap_add: some(capabilities.add),
        cap_drop: some(capabilities.drop),
        device_requests,
        ..Default::default()
    };
    ContainerCreateBody {
        image,
        entrypoint: (!command.is_empty()).then(|| command.clone()),
        cmd: (!args.is_empty()).then(|| args.clone()),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        working_dir,
        user: s.user.clone(),
        labels: Some([(ATTEMPT_LABEL.to_string(), spec.name.clone())].into()),
        host_config: Some(host_config),
        ..Default::default()
    }
}

/// Docker's cgroup permissions (`rwm`) of a device; all three when none are given.
fn cgroup_permissions(permissions: &[DevicePermission]) -> String {
    if permissions.is_empty() {
        return "rwm".into();
    }
    [
        (DevicePermission::Read, 'r'),
        (DevicePermission::Write, 'w'),
        (DevicePermission::Mknod, 'm'),
    ]
    .iter()
    .filter(|(p, _)| permissions.contains(p))
    .map(|(_, c)| *c)
    .collect()
}

impl Executor for DockerExecutor {
    fn run(
        &self,
        spec: RunSpec,
        progress: mpsc::UnboundedSender<Progress>,
        cancel: watch::Receiver<bool>,
    ) -> BoxFuture<'_, Outcome> {
        Box::pin(self.run_inner(spec, progress, cancel))
    }

    fn adopt(
        &self,
        adoption: Adoption,
        progress: mpsc::UnboundedSender<Progress>,
        cancel: watch::Receiver<bool>,
    ) -> BoxFuture<'_, Option<Outcome>> {
        Box::pin(self.adopt_inner(adoption, progress, cancel))
    }

    fn release<'a>(&'a self, name: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(self.remove(name))
    }

    fn reap<'a>(&'a self, name: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            tracing::info!(
                container = name,
                "removing a container an earlier agent left and that cannot be adopted"
            );
            self.remove(name).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::common::{
        Capabilities, ContainerSettings, Device, HostVolume, LinuxParameters, MountPoint, Tmpfs,
        Ulimit, UlimitName, Volume,
    };

    fn spec(settings: ContainerSettings, gpus: Vec<u32>) -> RunSpec {
        RunSpec {
            name: "asgb-render-u1-a1".into(),
            workload: Workload::Container {
                image: "render:5".into(),
                command: vec!["render".into()],
                args: vec![],
                working_dir: None,
            },
            env: vec![("NVIDIA_VISIBLE_DEVICES".into(), "1,3".into())],
            cpu_millis: 1500,
            memory_bytes: 1 << 30,
            timeout: None,
            grace: std::time::Duration::from_secs(30),
            settings,
            gpu_count: u32::try_from(gpus.len()).unwrap_or(0),
            gpus,
        }
    }

    #[test]
    fn settings_map_onto_the_docker_api() {
        let settings = ContainerSettings {
            volumes: vec![
                Volume {
                    name: "assets".into(),
                    host: HostVolume {
                        source_path: "/mnt/efs/assets".into(),
                    },
                },
                Volume {
                    name: "out".into(),
                    host: HostVolume {
                        source_path: "/scratch".into(),
                    },
                },
            ],
            mount_points: vec![
                MountPoint {
                    source_volume: "assets".into(),
                    container_path: "/assets".into(),
                    read_only: true,
                },
                MountPoint {
                    source_volume: "out".into(),
                    container_path: "/out".into(),
                    read_only: false,
                },
            ],
            user: Some("1000:100".into()),
            privileged: false,
            readonly_root_filesystem: true,
            ulimits: vec![Ulimit {
                name: UlimitName::Nofile,
                soft_limit: 1024,
                hard_limit: 4096,
            }],
            linux_parameters: Some(LinuxParameters {
                devices: vec![Device {
                    host_path: "/dev/fuse".into(),
                    container_path: None,
                    permissions: vec![DevicePermission::Write, DevicePermission::Read],
                }],
                shared_memory_size: Some(256),
                tmpfs: vec![Tmpfs {
                    container_path: "/cache".into(),
                    size: 64,
                    mount_options: vec!["noexec".into(), "mode=1777".into()],
                }],
                capabilities: Some(Capabilities {
                    add: vec!["SYS_PTRACE".into()],
                    drop: vec!["ALL".into()],
                }),
            }),
        };
        let body = create_body(&spec(settings, vec![]), Some("none".into()));
        assert_eq!(body.user.as_deref(), Some("1000:100"));
        let h = body.host_config.expect("host config");
        assert_eq!(
            h.binds,
            Some(vec![
                "/mnt/efs/assets:/assets:ro".to_string(),
                "/scratch:/out:rw".to_string()
            ])
        );
        assert_eq!(
            h.tmpfs,
            Some(
                [(
                    "/cache".to_string(),
                    "size=64m,noexec,mode=1777".to_string()
                )]
                .into()
            )
        );
        assert_eq!(h.readonly_rootfs, Some(true));
        assert_eq!(h.privileged, None);
        assert_eq!(h.shm_size, Some(256 << 20));
        let ulimit = &h.ulimits.expect("ulimits")[0];
        assert_eq!(
            (ulimit.name.as_deref(), ulimit.soft, ulimit.hard),
            (Some("nofile"), Some(1024), Some(4096))
        );
        let device = &h.devices.expect("devices")[0];
        assert_eq!(device.path_in_container.as_deref(), Some("/dev/fuse"));
        assert_eq!(device.cgroup_permissions.as_deref(), Some("rw"));
        assert_eq!(h.cap_add, Some(vec!["SYS_PTRACE".to_string()]));
        assert_eq!(h.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(h.device_requests, None, "no GPU asked for");
        assert_eq!(
            (h.memory, h.nano_cpus),
            (Some(1 << 30), Some(1_500_000_000))
        );
    }

    #[test]
    fn gpus_become_an_nvidia_device_request() {
        let body = create_body(&spec(ContainerSettings::default(), vec![1, 3]), None);
        let h = body.host_config.expect("host config");
        let requests = h.device_requests.expect("device requests");
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].driver.as_deref(), Some(GPU_DRIVER));
        assert_eq!(
            requests[0].device_ids,
            Some(vec!["1".to_string(), "3".to_string()])
        );
        assert_eq!(
            requests[0].capabilities,
            Some(vec![vec!["gpu".to_string()]])
        );
        assert!(
            body.env
                .expect("env")
                .contains(&"NVIDIA_VISIBLE_DEVICES=1,3".to_string())
        );
        assert_eq!((h.binds, h.tmpfs, h.cap_add), (None, None, None));
    }
}

/// Taking a container over against an engine that fails or answers oddly: a fake engine
/// on a unix socket, since the real one cannot be made to (Podman shows its transient
/// `stopped` state for a moment only).
#[cfg(test)]
mod adopt_tests {
    use super::*;
    use axum::http::{Method, StatusCode, Uri};
    use std::sync::{Arc, Mutex};

    const NAME: &str = "asgb-job-u1-a1";

    fn inspection(status: &str) -> String {
        serde_json::json!({
            "Id": "c1",
            "Name": format!("/{NAME}"),
            "Config": { "Labels": { ATTEMPT_LABEL: NAME } },
            "HostConfig": { "Memory": 0 },
            "State": {
                "Status": status,
                "Running": false,
                "ExitCode": 0,
                "StartedAt": "2026-11-30T10:00:00Z",
                "FinishedAt": "2026-11-30T10:00:01Z",
            },
        })
        .to_string()
    }

    /// Serves inspections from `answers` in turn (the last one again once they run out),
    /// stops a container (which then exited with 143), and "no such container" for
    /// anything else; returns the executor and the requests.
    async fn engine(
        dir: &std::path::Path,
        answers: Vec<(StatusCode, String)>,
    ) -> (DockerExecutor, Arc<Mutex<Vec<String>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let answers = Arc::new(Mutex::new(answers));
        let log = seen.clone();
        let app = axum::Router::new().fallback(move |method: Method, uri: Uri| {
            let log = log.clone();
            let answers = answers.clone();
            async move {
                let path = uri.path().to_string();
                log.lock().expect("log").push(format!("{method} {path}"));
                let mut answers = answers.lock().expect("answers");
                if method == Method::GET && path.ends_with(&format!("/containers/{NAME}/json")) {
                    if answers.len() > 1 {
                        answers.remove(0)
                    } else {
                        answers[0].clone()
                    }
                } else if method == Method::POST && path.ends_with("/stop") {
                    (StatusCode::NO_CONTENT, String::new())
                } else if method == Method::POST && path.ends_with("/wait") {
                    (StatusCode::OK, r#"{"StatusCode":143}"#.into())
                } else {
                    (
                        StatusCode::NOT_FOUND,
                        r#"{"message":"no such container"}"#.into(),
                    )
                }
            }
        });
        let socket = dir.join("engine.sock");
        let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let docker = Docker::connect_with_unix(
            &socket.display().to_string(),
            10,
            bollard::API_DEFAULT_VERSION,
        )
        .expect("client");
        let executor = DockerExecutor {
            docker,
            network_mode: None,
            logs: None,
        };
        (executor, seen)
    }

    fn adoption() -> Adoption {
        Adoption {
            name: NAME.into(),
            timeout: None,
            grace: std::time::Duration::from_secs(1),
            started_at: None,
        }
    }

    #[tokio::test]
    async fn a_container_the_engine_cannot_describe_for_now_is_asked_again_not_taken_for_gone() {
        let dir = tempfile::tempdir().expect("dir");
        let (executor, seen) = engine(
            dir.path(),
            vec![
                // Podman, between running and exited: a state the client cannot read.
                (StatusCode::OK, inspection("stopped")),
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    r#"{"message":"engine busy"}"#.into(),
                ),
                (StatusCode::OK, inspection("exited")),
            ],
        )
        .await;
        let (progress, _rx) = mpsc::unbounded_channel();
        let (_cancel, cancel) = watch::channel(false);
        let outcome = executor
            .adopt_inner(adoption(), progress, cancel)
            .await
            .expect("the container is taken over, not reported lost");
        assert_eq!(outcome.exit_code, Some(0));
        assert_eq!(outcome.reason, EndReason::Completed);
        assert_eq!(
            outcome.stopped_at,
            "2026-11-30T10:00:01Z".parse::<Timestamp>().expect("time")
        );
        let seen = seen.lock().expect("seen").clone();
        let inspections = seen.iter().filter(|r| r.ends_with("/json")).count();
        assert_eq!(
            inspections, 3,
            "asked until it could read the answer: {seen:?}"
        );
        assert!(
            !seen.iter().any(|r| r.starts_with("DELETE")),
            "nothing removed: {seen:?}"
        );
    }

    #[tokio::test]
    async fn only_no_such_container_means_nothing_is_left_to_take_over() {
        let dir = tempfile::tempdir().expect("dir");
        let (executor, seen) = engine(
            dir.path(),
            vec![(
                StatusCode::NOT_FOUND,
                r#"{"message":"no such container"}"#.into(),
            )],
        )
        .await;
        let (progress, _rx) = mpsc::unbounded_channel();
        let (_cancel, cancel) = watch::channel(false);
        assert!(
            executor
                .adopt_inner(adoption(), progress, cancel)
                .await
                .is_none()
        );
        assert_eq!(seen.lock().expect("seen").len(), 1, "asked once");
    }

    #[tokio::test]
    async fn a_cancelled_attempt_whose_container_cannot_be_inspected_is_stopped() {
        let dir = tempfile::tempdir().expect("dir");
        let (executor, seen) = engine(
            dir.path(),
            vec![(
                StatusCode::INTERNAL_SERVER_ERROR,
                r#"{"message":"engine broken"}"#.into(),
            )],
        )
        .await;
        let (progress, _rx) = mpsc::unbounded_channel();
        let (cancel_tx, cancel) = watch::channel(false);
        let adopting =
            tokio::spawn(async move { executor.adopt_inner(adoption(), progress, cancel).await });
        let inspections = || {
            seen.lock()
                .expect("seen")
                .iter()
                .filter(|r| r.ends_with("/json"))
                .count()
        };
        tokio::time::timeout(std::time::Duration::from_secs(30), async {
            while inspections() < 2 {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("asked again after the error");
        cancel_tx.send(true).expect("cancel");
        let outcome = adopting
            .await
            .expect("join")
            .expect("an outcome: the attempt was cancelled");
        assert_eq!(outcome.reason, EndReason::Cancelled);
        assert_eq!(outcome.exit_code, Some(143));
        assert!(
            seen.lock()
                .expect("seen")
                .iter()
                .any(|r| r.starts_with("POST") && r.ends_with(&format!("/containers/{NAME}/stop"))),
            "the container was asked to stop"
        );
    }
}
