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
use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, KillContainerOptions, LogsOptions,
    RemoveContainerOptions, WaitContainerOptions,
};
use futures::StreamExt;
use futures::future::BoxFuture;
use jiff::Timestamp;
use tokio::sync::{mpsc, watch};

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
        })
    }

    /// Sets the container network mode (`bridge`, `host`, `none`); the engine's default otherwise.
    pub fn with_network_mode(mut self, mode: impl Into<String>) -> Self {
        self.network_mode = Some(mode.into());
        self
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
            _ => self
                .docker
                .inspect_container(name, None)
                .await
                .ok()
                .and_then(|c| c.state)
                .and_then(|s| s.exit_code)
                .and_then(|c| i32::try_from(c).ok()),
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
        let Workload::Container {
            image,
            command,
            args,
            working_dir,
        } = &spec.workload
        else {
            return Outcome::not_started(
                EndReason::StartFailed,
                "the docker executor runs container jobs only",
            );
        };
        if let Err(why) = self.ensure_image(image, &progress).await {
            return Outcome::not_started(EndReason::ImagePullFailed, why);
        }
        self.remove(&spec.name).await;
        let host_config = HostConfig {
            memory: (spec.memory_bytes > 0)
                .then(|| i64::try_from(spec.memory_bytes).unwrap_or(i64::MAX)),
            nano_cpus: (spec.cpu_millis > 0).then(|| {
                i64::try_from(spec.cpu_millis.saturating_mul(1_000_000)).unwrap_or(i64::MAX)
            }),
            network_mode: self.network_mode.clone(),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(image.clone()),
            entrypoint: (!command.is_empty()).then(|| command.clone()),
            cmd: (!args.is_empty()).then(|| args.clone()),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            working_dir: working_dir.clone(),
            labels: Some([(ATTEMPT_LABEL.to_string(), spec.name.clone())].into()),
            host_config: Some(host_config),
            ..Default::default()
        };
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

        let ending = tokio::select! {
            code = self.exit_code(&spec.name) => Ending::Exited(code.unwrap_or(-1)),
            () = expires(spec.timeout) => Ending::TimedOut(self.kill(&spec.name).await),
            () = cancelled(cancel) => Ending::Cancelled(self.kill(&spec.name).await),
        };
        let stopped_at = Timestamp::now();
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
        let found = self.docker.inspect_container(name, None).await.ok()?;
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
        let (ending, stopped_at) = if running {
            tracing::info!(container = name, "re-adopting a running container");
            let ending = tokio::select! {
                code = self.exit_code(name) => Ending::Exited(code.unwrap_or(-1)),
                () = expires(adoption.remaining(own_start)) => Ending::TimedOut(self.kill(name).await),
                () = cancelled(cancel) => Ending::Cancelled(self.kill(name).await),
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

    /// Kills the container and returns the code it died with.
    async fn kill(&self, name: &str) -> Option<i32> {
        let options = KillContainerOptions {
            signal: "SIGKILL".into(),
        };
        let _ = self.docker.kill_container(name, Some(options)).await;
        self.exit_code(name).await
    }
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
