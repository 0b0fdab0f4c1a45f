//! `asg-batch agent` killed with SIGKILL mid-attempt and started again: the attempt is not
//! lost. A container keeps running and is re-adopted; a process job keeps running under its
//! shim and is re-adopted, or, when it ended while no agent ran, is reported from its state
//! file with its real exit code and output. Ground truth is what the jobs write themselves
//! (start and stop markers), besides the job's status.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use crate::support;
use asg_batch::api::protocol::AttemptReason;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use asg_batch::api::BatchJob;
use asg_batch::api::common::{ContainerSpec, JobTemplate, Resources};
use asg_batch::api::compute_environment::ComputeEnvironment;
use kube::api::{Api, PostParams};
use support::agent::*;
use support::podman::{PodmanService, TEST_IMAGE, podman_available};
use tokio::io::{AsyncBufReadExt, BufReader};

fn local_ce(name: &str, executor: &str) -> ComputeEnvironment {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "asgbatch.io/v1alpha1",
        "kind": "ComputeEnvironment",
        "metadata": {"name": name},
        "spec": {
            "local": {"executor": executor},
            "minInstances": 0,
            "maxInstances": 2,
            "instanceShape": {"cpu": "2", "memory": "4Gi"}
        }
    }))
    .expect("compute environment")
}

/// One `asg-batch agent` process, its stderr collected.
struct AgentProcess {
    child: tokio::process::Child,
    log: Arc<Mutex<String>>,
}

impl AgentProcess {
    fn start(s: &ServerUnderTest, args: &[&str]) -> Self {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_asg-batch"))
            .arg("agent")
            .args(args)
            .env("KUBECONFIG", s.kubeconfig())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start agent");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut l = sink.lock().expect("log");
                l.push_str(&line);
                l.push('\n');
            }
        });
        Self { child, log }
    }

    fn log(&self) -> String {
        self.log.lock().expect("log").clone()
    }

    /// Waits until the agent logged `text`.
    async fn wait_log(&self, text: &str) {
        let log = self.log.clone();
        eventually(
            &format!("the agent to log {text:?}"),
            || {
                let l = log.clone();
                async move { l.lock().expect("log").clone() }
            },
            |l| l.contains(text),
        )
        .await;
    }

    /// SIGKILL, as a crash or the OOM killer would.
    async fn kill9(mut self) {
        let pid =
            nix::unistd::Pid::from_raw(i32::try_from(self.child.id().expect("pid")).expect("pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("SIGKILL");
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the agent dies")
            .expect("wait");
        assert!(!status.success());
    }

    async fn sigterm(mut self) {
        let pid =
            nix::unistd::Pid::from_raw(i32::try_from(self.child.id().expect("pid")).expect("pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("the agent exits after SIGTERM")
            .expect("wait");
        assert!(status.success(), "clean exit: {status:?}\n{}", self.log());
    }
}

async fn create_ce(client: &kube::Client, ce: &ComputeEnvironment) {
    Api::<ComputeEnvironment>::all(client.clone())
        .create(&PostParams::default(), ce)
        .await
        .expect("create ce");
}

async fn wait_attempt(
    client: &kube::Client,
    name: &str,
    what: &str,
    ready: impl Fn(&asg_batch::api::batch_job::AttemptStatus) -> bool,
) -> BatchJob {
    eventually(
        what,
        || get_job(client, "default", name),
        |j| attempt(j, 1).is_some_and(|a| ready(&a)),
    )
    .await
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

/// A process job that marks its start, waits for `go`, prints `output`, marks its stop
/// and exits with `code`.
fn marked_script(dir: &Path, output: &str, code: i32) -> (String, PathBuf, PathBuf, PathBuf) {
    let (pid, go, markers) = (dir.join("pid"), dir.join("go"), dir.join("markers"));
    let script = format!(
        "echo $$ > {pid}; echo start >> {m}; while [ ! -e {go} ]; do sleep 0.1; done; \
         echo {output}; echo stop >> {m}; exit {code}",
        pid = pid.display(),
        m = markers.display(),
        go = go.display()
    );
    (script, pid, go, markers)
}

async fn read_pid(path: &Path) -> i32 {
    let p = path.to_path_buf();
    let text = eventually(
        "the pid file",
        || {
            let p = p.clone();
            async move { std::fs::read_to_string(&p).unwrap_or_default() }
        },
        |t| t.trim().parse::<i32>().is_ok(),
    )
    .await;
    text.trim().parse().expect("pid")
}

/// Whether `pid` has ended (gone, or a zombie nobody reaped yet).
fn ended(pid: i32) -> bool {
    !process_alive(pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_job_that_ends_while_its_agent_is_dead_is_reported_with_its_exit_code() {
    let s = server_with_crds().await;
    let client = s.client();
    create_ce(&client, &local_ce("restart-b", "process")).await;
    let work = tempfile::tempdir().expect("tempdir");
    let data = tempfile::tempdir().expect("data dir");
    let data_dir = data.path().display().to_string();
    let args = [
        "--compute-environment",
        "restart-b",
        "--instance-id",
        "i-restart-b",
        "--heartbeat-interval",
        "1",
        "--data-dir",
        &data_dir,
    ];
    let (script, pid_file, go, markers) = marked_script(work.path(), "out-while-alone", 4);
    create_job(&client, "default", &process_job("ended-alone", &script)).await;
    let agent = AgentProcess::start(&s, &args);
    bind(&client, "default", "ended-alone", "i-restart-b", 1).await;
    let pid = read_pid(&pid_file).await;
    let job = wait_attempt(&client, "ended-alone", "startedAt", |a| {
        a.started_at.is_some()
    })
    .await;
    let started = attempt(&job, 1).and_then(|a| a.started_at);

    agent.kill9().await;
    // The job ends while no agent runs.
    std::fs::write(&go, "").expect("go");
    eventually("the job to end", || async { ended(pid) }, |e| *e).await;
    assert_eq!(lines(&markers), ["start", "stop"]);
    // ...and its shim has recorded how.
    let attempts = data.path().join("attempts");
    eventually(
        "the exit record",
        || {
            let a = attempts.clone();
            async move {
                std::fs::read_dir(&a)
                    .map(|d| d.flatten().any(|e| e.path().join("exit.json").exists()))
                    .unwrap_or(false)
            }
        },
        |e| *e,
    )
    .await;
    let a1 = attempt(&get_job(&client, "default", "ended-alone").await, 1).expect("attempt");
    assert!(a1.stopped_at.is_none(), "nobody reported it yet: {a1:?}");

    let agent = AgentProcess::start(&s, &args);
    let job = wait_attempt(&client, "ended-alone", "the report", |a| {
        a.stopped_at.is_some()
    })
    .await;
    let a1 = attempt(&job, 1).expect("attempt 1");
    assert_eq!(
        (a1.exit_code, a1.reason.as_ref().map(AttemptReason::as_str)),
        (Some(4), Some("Error")),
        "the real exit code, not StartFailed: {a1:?}\n{}",
        agent.log()
    );
    assert_eq!(a1.log_tail.as_deref(), Some("out-while-alone"));
    assert_eq!(a1.started_at, started, "startedAt is kept");
    assert!(a1.stopped_at.is_some_and(|t| Some(t) >= started));
    assert_eq!(job.status.as_ref().map(|s| s.attempts.len()), Some(1));
    assert_eq!(lines(&markers), ["start", "stop"], "it ran once");
    assert!(agent.log().contains("ended while no agent supervised it"));
    // Reported: its state is removed.
    eventually(
        "the attempt's state to be removed",
        || {
            let a = attempts.clone();
            async move {
                std::fs::read_dir(&a)
                    .map(std::iter::Iterator::count)
                    .unwrap_or(0)
            }
        },
        |n| *n == 0,
    )
    .await;
    agent.sigterm().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_process_job_is_re_adopted_by_the_restarted_agent_and_reported_once() {
    let s = server_with_crds().await;
    let client = s.client();
    create_ce(&client, &local_ce("restart-c", "process")).await;
    let work = tempfile::tempdir().expect("tempdir");
    let data = tempfile::tempdir().expect("data dir");
    let data_dir = data.path().display().to_string();
    let args = [
        "--compute-environment",
        "restart-c",
        "--instance-id",
        "i-restart-c",
        "--heartbeat-interval",
        "1",
        "--data-dir",
        &data_dir,
    ];
    let (script, pid_file, go, markers) = marked_script(work.path(), "out-adopted", 6);
    create_job(&client, "default", &process_job("readopted", &script)).await;
    let agent = AgentProcess::start(&s, &args);
    bind(&client, "default", "readopted", "i-restart-c", 1).await;
    let pid = read_pid(&pid_file).await;
    let job = wait_attempt(&client, "readopted", "startedAt", |a| {
        a.started_at.is_some()
    })
    .await;
    let started = attempt(&job, 1).and_then(|a| a.started_at);

    agent.kill9().await;
    assert!(process_alive(pid), "the job outlives its agent");
    let agent = AgentProcess::start(&s, &args);
    agent.wait_log("re-adopting a running attempt").await;
    assert!(process_alive(pid), "still the same process");
    let a1 = attempt(&get_job(&client, "default", "readopted").await, 1).expect("attempt");
    assert!(
        a1.stopped_at.is_none(),
        "not reported while it runs: {a1:?}"
    );

    std::fs::write(&go, "").expect("go");
    let job = wait_attempt(&client, "readopted", "the report", |a| {
        a.stopped_at.is_some()
    })
    .await;
    let a1 = attempt(&job, 1).expect("attempt 1");
    assert_eq!(
        (
            a1.exit_code,
            a1.reason.as_ref().map(AttemptReason::as_str),
            a1.log_tail.as_deref()
        ),
        (Some(6), Some("Error"), Some("out-adopted")),
        "{a1:?}\n{}",
        agent.log()
    );
    assert_eq!(a1.started_at, started);
    assert_eq!(job.status.as_ref().map(|s| s.attempts.len()), Some(1));
    assert_eq!(lines(&markers), ["start", "stop"], "it ran once");
    assert_eq!(
        agent.log().matches("attempt ended").count(),
        1,
        "ended and reported once"
    );
    agent.sigterm().await;
}

fn container_job(name: &str, script: &str) -> BatchJob {
    let mut job = process_job(name, "unused");
    job.spec.template = JobTemplate {
        container: Some(Box::new(ContainerSpec {
            image: TEST_IMAGE.into(),
            command: vec!["sh".into(), "-c".into()],
            args: vec![script.into()],
            env: vec![],
            working_dir: None,
            settings: Default::default(),
        })),
        resources: Some(Resources {
            cpu: "500m".into(),
            memory: "64Mi".into(),
            gpu: 0,
        }),
        ..Default::default()
    };
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_keeps_running_through_an_agent_crash_and_is_re_adopted() {
    assert!(podman_available(), "podman is required (make test-deps)");
    let podman = PodmanService::start();
    let docker = podman.docker().await;
    let s = server_with_crds().await;
    let client = s.client();
    create_ce(&client, &local_ce("restart-a", "docker")).await;
    let data = tempfile::tempdir().expect("data dir");
    let (data_dir, socket) = (
        data.path().display().to_string(),
        podman.socket.display().to_string(),
    );
    let args = [
        "--compute-environment",
        "restart-a",
        "--instance-id",
        "i-restart-a",
        "--heartbeat-interval",
        "1",
        "--data-dir",
        &data_dir,
        "--docker-socket",
        &socket,
    ];
    let name = format!("ctr-readopt-{}", std::process::id());
    let uid = create_job(
        &client,
        "default",
        &container_job(
            &name,
            "echo job-start; while [ ! -e /tmp/go ]; do sleep 0.1; done; echo job-stop; exit 3",
        ),
    )
    .await
    .metadata
    .uid
    .expect("uid");
    let container = format!("asgb-{name}-{uid}-a1");
    let agent = AgentProcess::start(&s, &args);
    bind(&client, "default", &name, "i-restart-a", 1).await;
    let job = wait_attempt(&client, &name, "startedAt", |a| a.started_at.is_some()).await;
    let started = attempt(&job, 1).and_then(|a| a.started_at);
    let before = docker
        .inspect_container(&container, None)
        .await
        .expect("the container");

    agent.kill9().await;
    let during = docker
        .inspect_container(&container, None)
        .await
        .expect("the container outlives its agent");
    assert_eq!(during.id, before.id);
    assert_eq!(during.state.as_ref().and_then(|s| s.running), Some(true));

    let agent = AgentProcess::start(&s, &args);
    agent.wait_log("re-adopting a running container").await;
    let after = docker
        .inspect_container(&container, None)
        .await
        .expect("the container");
    assert_eq!(after.id, before.id, "the same container, not a new one");
    assert_eq!(
        after.state.as_ref().and_then(|s| s.started_at.clone()),
        before.state.as_ref().and_then(|s| s.started_at.clone()),
        "not restarted"
    );
    // Let the job end: it waits for a file inside its container.
    let exec = docker
        .create_exec(
            &container,
            bollard::models::ExecConfig {
                cmd: Some(vec!["touch".into(), "/tmp/go".into()]),
                ..Default::default()
            },
        )
        .await
        .expect("create exec");
    docker
        .start_exec(
            &exec.id,
            Some(bollard::exec::StartExecOptions {
                detach: true,
                ..Default::default()
            }),
        )
        .await
        .expect("start exec");

    let job = wait_attempt(&client, &name, "the report", |a| a.stopped_at.is_some()).await;
    let a1 = attempt(&job, 1).expect("attempt 1");
    assert_eq!(
        (a1.exit_code, a1.reason.as_ref().map(AttemptReason::as_str)),
        (Some(3), Some("Error")),
        "the real exit code: {a1:?}\n{}",
        agent.log()
    );
    assert_eq!(a1.started_at, started, "startedAt is kept");
    let tail = a1.log_tail.unwrap_or_default();
    assert_eq!(
        (
            tail.matches("job-start").count(),
            tail.matches("job-stop").count()
        ),
        (1, 1),
        "one run, to its end: {tail}"
    );
    assert_eq!(job.status.as_ref().map(|s| s.attempts.len()), Some(1));
    // Reported: the container is removed.
    eventually(
        "the container to be removed",
        || {
            let d = docker.clone();
            let c = container.clone();
            async move { d.inspect_container(&c, None).await.is_ok() }
        },
        |exists| !exists,
    )
    .await;
    agent.sigterm().await;
}
