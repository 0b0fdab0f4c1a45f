//! Attempts as plain processes on the instance (executor `process`). No resource limits
//! are enforced; the scheduler's accounting still keeps the node from being over-committed.

use super::{
    EndReason, Ending, Executor, LogTail, Outcome, Progress, RunSpec, Workload, cancelled,
    classify, expires,
};
use futures::future::BoxFuture;
use jiff::Timestamp;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, watch};

/// Runs attempts as child processes of the agent.
#[derive(Clone, Debug, Default)]
pub struct ProcessExecutor;

fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

async fn drain(mut from: impl AsyncRead + Unpin, tail: Arc<Mutex<LogTail>>) {
    let mut buf = vec![0u8; 8192];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
        if let Ok(mut t) = tail.lock() {
            t.push(&String::from_utf8_lossy(&buf[..n]));
        }
    }
}

/// SIGKILLs the child's whole process group (the child leads it).
fn kill_group(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = child.start_kill();
}

impl ProcessExecutor {
    async fn run_inner(
        spec: RunSpec,
        progress: mpsc::UnboundedSender<Progress>,
        cancel: watch::Receiver<bool>,
    ) -> Outcome {
        let Workload::Process {
            command,
            working_dir,
        } = &spec.workload
        else {
            return Outcome::not_started(
                EndReason::StartFailed,
                "the process executor runs process jobs only",
            );
        };
        let Some((program, args)) = command.split_first() else {
            return Outcome::not_started(EndReason::StartFailed, "empty command");
        };
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Its own process group, so a timeout or cancellation kills everything it started.
            .process_group(0);
        if let Some(dir) = working_dir {
            cmd.current_dir(dir);
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                return Outcome::not_started(
                    EndReason::StartFailed,
                    format!("cannot start {program:?}: {e}"),
                );
            }
        };
        let started_at = Timestamp::now();
        let _ = progress.send(Progress::Started { at: started_at });
        let tail = Arc::new(Mutex::new(LogTail::default()));
        let readers: Vec<_> = [
            child
                .stdout
                .take()
                .map(|o| tokio::spawn(drain(o, tail.clone()))),
            child
                .stderr
                .take()
                .map(|e| tokio::spawn(drain(e, tail.clone()))),
        ]
        .into_iter()
        .flatten()
        .collect();

        let ending = tokio::select! {
            status = child.wait() => Ending::Exited(status.map(exit_code).unwrap_or(-1)),
            () = expires(spec.timeout) => {
                kill_group(&mut child);
                Ending::TimedOut(child.wait().await.ok().map(exit_code))
            }
            () = cancelled(cancel) => {
                kill_group(&mut child);
                Ending::Cancelled(child.wait().await.ok().map(exit_code))
            }
        };
        let stopped_at = Timestamp::now();
        for r in readers {
            // Output of grandchildren that outlive the process must not hold the report.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), r).await;
        }
        let log_tail = tail.lock().map(|t| t.text()).unwrap_or_default();
        let (exit_code, reason, status_reason) = classify(ending, false);
        Outcome {
            exit_code,
            reason,
            status_reason,
            started_at: Some(started_at),
            stopped_at,
            log_tail,
        }
    }
}

impl Executor for ProcessExecutor {
    fn run(
        &self,
        spec: RunSpec,
        progress: mpsc::UnboundedSender<Progress>,
        cancel: watch::Receiver<bool>,
    ) -> BoxFuture<'_, Outcome> {
        Box::pin(Self::run_inner(spec, progress, cancel))
    }
}
