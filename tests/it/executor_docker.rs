//! The container executor on a real engine (Podman's Docker API): exit codes, logs,
//! environment, limits, out-of-memory, timeout, cancellation, pull failure.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use crate::support;

use asg_batch::agent::executor::docker::DockerExecutor;
use asg_batch::agent::executor::{EndReason, Executor, Outcome, Progress, RunSpec, Workload};
use std::time::Duration;
use support::podman::{PodmanService, TEST_IMAGE};
use tokio::sync::{mpsc, watch};

fn spec(name: &str, script: &str) -> RunSpec {
    RunSpec {
        name: format!("asgb-test-{name}-{}", std::process::id()),
        workload: Workload::Container {
            image: TEST_IMAGE.into(),
            command: vec!["sh".into(), "-c".into()],
            args: vec![script.into()],
            working_dir: None,
        },
        env: vec![
            ("AWS_BATCH_JOB_ID".into(), "default/etl".into()),
            ("AWS_BATCH_JOB_ATTEMPT".into(), "2".into()),
        ],
        cpu_millis: 500,
        memory_bytes: 64 << 20,
        timeout: None,
        // Stopped at once (`terminationGracePeriodSeconds: 0`) unless a test sets a grace.
        grace: Duration::ZERO,
        settings: Default::default(),
        gpus: vec![],
        gpu_count: 0,
    }
}

async fn run(
    exec: &DockerExecutor,
    spec: RunSpec,
    cancel_after: Option<Duration>,
) -> (Outcome, Vec<Progress>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (cancel_tx, cancel_rx) = watch::channel(false);
    if let Some(after) = cancel_after {
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = cancel_tx.send(true);
        });
    } else {
        std::mem::forget(cancel_tx);
    }
    let name = spec.name.clone();
    let outcome = exec.run(spec, tx, cancel_rx).await;
    // The container is kept until the agent reported the ending; nothing reports here.
    exec.release(&name).await;
    assert!(
        exec.adopt(
            asg_batch::agent::executor::Adoption {
                name,
                timeout: None,
                grace: Duration::ZERO,
                started_at: None,
            },
            mpsc::unbounded_channel().0,
            watch::channel(false).1,
        )
        .await
        .is_none(),
        "released: nothing left to adopt"
    );
    let mut progress = Vec::new();
    while let Ok(p) = rx.try_recv() {
        progress.push(p);
    }
    (outcome, progress)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_attempts_end_as_aws_batch_reports_them() {
    let podman = PodmanService::start();
    let exec = DockerExecutor::connect(&podman.socket.display().to_string())
        .await
        .expect("connect")
        .with_network_mode("none");

    let (ok, progress) = run(
        &exec,
        spec(
            "ok",
            "echo job=$AWS_BATCH_JOB_ID attempt=$AWS_BATCH_JOB_ATTEMPT",
        ),
        None,
    )
    .await;
    assert_eq!(
        (ok.exit_code, ok.reason),
        (Some(0), EndReason::Completed),
        "{ok:?}"
    );
    assert_eq!(ok.log_tail, "job=default/etl attempt=2");
    assert!(
        matches!(progress.as_slice(), [Progress::Started { .. }]),
        "{progress:?}"
    );
    assert!(ok.started_at.is_some_and(|s| s <= ok.stopped_at));

    let (failed, _) = run(&exec, spec("fail", "echo bad input >&2; exit 3"), None).await;
    assert_eq!(
        (failed.exit_code, failed.reason),
        (Some(3), EndReason::Error),
        "{failed:?}"
    );
    assert_eq!(failed.log_tail, "bad input");

    // 64 MiB limit, ~200 MiB held in a shell variable: killed by the OOM killer (137).
    let (oom, _) = run(
        &exec,
        spec(
            "oom",
            "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived ${#x}",
        ),
        None,
    )
    .await;
    assert_eq!(
        (oom.exit_code, oom.reason),
        (Some(137), EndReason::OutOfMemory),
        "{oom:?}"
    );
    assert!(
        oom.status_reason.starts_with("OutOfMemoryError"),
        "{}",
        oom.status_reason
    );

    let mut slow = spec("timeout", "echo started; sleep 60");
    slow.timeout = Some(Duration::from_secs(2));
    let (timed_out, _) = run(&exec, slow, None).await;
    assert_eq!(timed_out.reason, EndReason::Timeout, "{timed_out:?}");
    assert_eq!(
        timed_out.status_reason,
        "Job attempt duration exceeded timeout"
    );
    assert_eq!(timed_out.log_tail, "started");

    let (cancelled, _) = run(
        &exec,
        spec("cancel", "sleep 60"),
        Some(Duration::from_secs(2)),
    )
    .await;
    assert_eq!(cancelled.reason, EndReason::Cancelled, "{cancelled:?}");

    let mut missing = spec("pull", "true");
    missing.workload = Workload::Container {
        image: "localhost:1/asg-batch/does-not-exist:1".into(),
        command: vec![],
        args: vec![],
        working_dir: None,
    };
    let (pull, progress) = run(&exec, missing, None).await;
    assert_eq!(pull.reason, EndReason::ImagePullFailed, "{pull:?}");
    assert!(
        pull.status_reason.contains("does-not-exist"),
        "{}",
        pull.status_reason
    );
    assert!(pull.exit_code.is_none() && pull.started_at.is_none());
    assert!(
        matches!(progress.as_slice(), [Progress::Pulling { .. }]),
        "{progress:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_container_gets_sigterm_and_its_grace_period() {
    use futures::StreamExt;
    let podman = PodmanService::start();
    let exec = DockerExecutor::connect(&podman.socket.display().to_string())
        .await
        .expect("connect")
        .with_network_mode("none");
    let docker = podman.docker().await;
    // The shell (PID 1 of the container) traps SIGTERM, writes its marker and exits 5.
    let mut s = spec(
        "grace",
        "trap 'echo cleaned-up; exit 5' TERM; echo ready; while :; do sleep 0.1; done",
    );
    s.grace = Duration::from_secs(60);
    let name = s.name.clone();
    let (tx, _rx) = mpsc::unbounded_channel();
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let canceller = tokio::spawn(async move {
        // Cancel once the trap is in place: the container said `ready`.
        loop {
            let options = bollard::query_parameters::LogsOptions {
                stdout: true,
                ..Default::default()
            };
            let mut logs = docker.logs(&name, Some(options));
            let mut text = String::new();
            while let Some(Ok(chunk)) = logs.next().await {
                text.push_str(&chunk.to_string());
            }
            if text.contains("ready") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = cancel_tx.send(true);
        std::future::pending::<()>().await;
    });
    let name = s.name.clone();
    let outcome = exec.run(s, tx, cancel_rx).await;
    canceller.abort();
    exec.release(&name).await;
    assert_eq!(
        (outcome.reason, outcome.exit_code),
        (EndReason::Cancelled, Some(5)),
        "its own exit within the grace, not SIGKILL's 137: {outcome:?}"
    );
    assert_eq!(outcome.log_tail, "ready\ncleaned-up", "{outcome:?}");
}
