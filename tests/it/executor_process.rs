//! The process executor: exit codes, output tail, environment, timeout, cancellation.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use asg_batch::agent::executor::process::ProcessExecutor;
use asg_batch::agent::executor::{EndReason, Executor, Outcome, RunSpec, Workload};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

fn spec(script: &str, timeout: Option<Duration>) -> RunSpec {
    RunSpec {
        name: "proc".into(),
        workload: Workload::Process {
            command: vec!["sh".into(), "-c".into(), script.into()],
            working_dir: None,
        },
        env: vec![("AWS_BATCH_JOB_ARRAY_INDEX".into(), "7".into())],
        cpu_millis: 0,
        memory_bytes: 0,
        timeout,
        settings: Default::default(),
        gpus: vec![],
        gpu_count: 0,
    }
}

async fn run(spec: RunSpec, cancel_after: Option<Duration>) -> Outcome {
    let (tx, _rx) = mpsc::unbounded_channel();
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let canceller = tokio::spawn(async move {
        if let Some(after) = cancel_after {
            tokio::time::sleep(after).await;
            let _ = cancel_tx.send(true);
        }
        std::future::pending::<()>().await;
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let exec = ProcessExecutor::new(dir.path(), env!("CARGO_BIN_EXE_asg-batch"));
    let outcome = exec.run(spec, tx, cancel_rx).await;
    canceller.abort();
    outcome
}

#[tokio::test]
async fn exit_codes_and_output() {
    let ok = run(
        spec("echo index=$AWS_BATCH_JOB_ARRAY_INDEX; echo warn >&2", None),
        None,
    )
    .await;
    assert_eq!((ok.exit_code, ok.reason), (Some(0), EndReason::Completed));
    let mut lines: Vec<&str> = ok.log_tail.lines().collect();
    lines.sort();
    assert_eq!(lines, ["index=7", "warn"]);

    let failed = run(spec("exit 42", None), None).await;
    assert_eq!(
        (failed.exit_code, failed.reason),
        (Some(42), EndReason::Error)
    );
}

#[tokio::test]
async fn timeout_and_cancel_stop_the_process() {
    let t = run(spec("sleep 30", Some(Duration::from_millis(300))), None).await;
    assert_eq!(t.reason, EndReason::Timeout);
    assert_eq!(t.exit_code, Some(137), "killed with SIGKILL");
    let c = run(spec("sleep 30", None), Some(Duration::from_millis(300))).await;
    assert_eq!(c.reason, EndReason::Cancelled);
}

#[tokio::test]
async fn stopping_kills_what_the_job_started() {
    let marker = format!("asgb-orphan-check-{}", std::process::id());
    // A background grandchild that would outlive its shell if only the shell were killed;
    // its duration is unique to this test process so other runs cannot be mistaken for it.
    let seconds = 100_000 + std::process::id() % 100_000;
    let script = format!("sleep {seconds} & echo {marker}; wait");
    let t = run(spec(&script, Some(Duration::from_millis(500))), None).await;
    assert_eq!(t.reason, EndReason::Timeout);
    assert_eq!(t.log_tail, marker);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ps = std::process::Command::new("ps")
        .args(["-eo", "pid,pgid,args"])
        .output()
        .expect("ps");
    let leftover: Vec<String> = String::from_utf8_lossy(&ps.stdout)
        .lines()
        .filter(|l| l.contains(&format!("sleep {seconds}")))
        .map(String::from)
        .collect();
    assert!(
        leftover.is_empty(),
        "processes outlived the job: {leftover:?}"
    );
}

#[tokio::test]
async fn a_missing_program_is_a_start_failure() {
    let mut s = spec("", None);
    s.workload = Workload::Process {
        command: vec!["/nonexistent/program".into()],
        working_dir: None,
    };
    let o = run(s, None).await;
    assert_eq!(o.reason, EndReason::StartFailed);
    assert!(
        o.status_reason.contains("/nonexistent/program"),
        "{}",
        o.status_reason
    );
    assert!(o.started_at.is_none());
}
