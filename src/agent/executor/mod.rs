//! Running one attempt of a job and reporting how it ended.
//!
//! An [`Executor`] takes a [`RunSpec`], reports [`Progress`] (pulling, started) while it
//! works, and returns an [`Outcome`] with AWS Batch's vocabulary: exit code, a reason rules
//! can match (`onReason`), a status reason (`onStatusReason`), timings and the log tail.
//! How an ending is classified is pure ([`classify`]) and unit-tested.

pub mod docker;
pub mod process;
pub mod shim;
mod tail;

pub use tail::LogTail;

use crate::api::common::ContainerSettings;
use crate::api::protocol::AttemptReason;
use futures::future::BoxFuture;
use jiff::Timestamp;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Workload {
    /// A container: `command` replaces the image's entrypoint when non-empty, `args` its cmd.
    Container {
        /// Image reference; pulled when not present.
        image: String,
        /// Entrypoint override.
        command: Vec<String>,
        /// Arguments.
        args: Vec<String>,
        /// Working directory.
        working_dir: Option<String>,
    },
    /// A process: `command[0]` is the program.
    Process {
        /// Program and arguments.
        command: Vec<String>,
        /// Working directory.
        working_dir: Option<String>,
    },
}

/// One attempt to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSpec {
    /// Unique name of the attempt (container name), e.g. `asgb-default-etl-2`.
    pub name: String,
    /// What to run.
    pub workload: Workload,
    /// Environment, including the `AWS_BATCH_*` variables.
    pub env: Vec<(String, String)>,
    /// cpu limit in millicores (0: none).
    pub cpu_millis: u64,
    /// Memory limit in bytes (0: none).
    pub memory_bytes: u64,
    /// Stop the attempt after this long, with reason `Timeout`.
    pub timeout: Option<Duration>,
    /// When the attempt is stopped (timeout, cancellation): how long between SIGTERM and
    /// SIGKILL (`terminationGracePeriodSeconds`).
    pub grace: Duration,
    /// Container settings (volumes, user, privileges, ulimits, Linux parameters); the
    /// container executor applies them, the process executor has none.
    pub settings: ContainerSettings,
    /// Indices of the node's GPUs assigned to this attempt (empty: none). The container
    /// executor passes them as a Docker device request; `NVIDIA_VISIBLE_DEVICES` is in `env`.
    pub gpus: Vec<u32>,
    /// How many GPUs the attempt needs (`resources.gpu`); the agent assigns `gpus`.
    pub gpu_count: u32,
}

/// Progress while an attempt starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The image is being pulled.
    Pulling {
        /// Image reference.
        image: String,
    },
    /// The attempt is running.
    Started {
        /// When it started.
        at: Timestamp,
    },
}

/// Why an attempt ended (matched by `evaluateOnExit.onReason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Exit code 0.
    Completed,
    /// Non-zero exit code.
    Error,
    /// Killed for exceeding its memory limit.
    OutOfMemory,
    /// Ran longer than its timeout and was stopped.
    Timeout,
    /// Stopped on request (job cancelled or node draining).
    Cancelled,
    /// The image could not be pulled.
    ImagePullFailed,
    /// The container or process could not be created or started.
    StartFailed,
    /// Stopped because the Spot instance received an interruption notice.
    SpotInterruption,
}

impl EndReason {
    /// The reason as written into the job's status (the protocol's spelling).
    pub fn reason(self) -> AttemptReason {
        match self {
            Self::Completed => AttemptReason::Completed,
            Self::Error => AttemptReason::Error,
            Self::OutOfMemory => AttemptReason::OutOfMemory,
            Self::Timeout => AttemptReason::Timeout,
            Self::Cancelled => AttemptReason::Cancelled,
            Self::ImagePullFailed => AttemptReason::ImagePullFailed,
            Self::StartFailed => AttemptReason::StartFailed,
            Self::SpotInterruption => AttemptReason::SpotInterruption,
        }
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Exit code when the workload ran (128+signal when killed by a signal).
    pub exit_code: Option<i32>,
    /// Why it ended.
    pub reason: EndReason,
    /// Human detail, AWS Batch's `statusReason`.
    pub status_reason: String,
    /// When it started running.
    pub started_at: Option<Timestamp>,
    /// When it stopped.
    pub stopped_at: Timestamp,
    /// Last lines of stdout and stderr.
    pub log_tail: String,
}

impl Outcome {
    /// An attempt that never ran.
    pub fn not_started(reason: EndReason, status_reason: impl Into<String>) -> Self {
        Self {
            exit_code: None,
            reason,
            status_reason: status_reason.into(),
            started_at: None,
            stopped_at: Timestamp::now(),
            log_tail: String::new(),
        }
    }

    /// Whether the attempt succeeded.
    pub fn succeeded(&self) -> bool {
        self.reason == EndReason::Completed
    }
}

/// How the workload stopped, before classification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// It exited with this code on its own.
    Exited(i32),
    /// The timeout fired and it was killed; the code it died with, if known.
    TimedOut(Option<i32>),
    /// It was cancelled and killed; the code it died with, if known.
    Cancelled(Option<i32>),
}

/// Exit code of SIGKILL (128 + 9): what a container killed by the kernel's OOM killer exits with.
pub const SIGKILL_EXIT: i32 = 137;

/// Classifies an ending. `memory_limited` says a memory limit was enforced on the workload:
/// then exit code 137 means it was killed for memory. Podman 4.3 reports `OOMKilled: false`
/// even then, so the limit plus 137 is the evidence used, and the status reason says so.
pub fn classify(ending: Ending, memory_limited: bool) -> (Option<i32>, EndReason, String) {
    match ending {
        Ending::Exited(0) => (Some(0), EndReason::Completed, "Essential container in task exited".into()),
        Ending::Exited(SIGKILL_EXIT) if memory_limited => (
            Some(SIGKILL_EXIT),
            EndReason::OutOfMemory,
            "OutOfMemoryError: Container killed due to memory usage (exit code 137 under a memory limit)".into(),
        ),
        Ending::Exited(code) if code > 128 && code <= 128 + 64 => {
            (Some(code), EndReason::Error, format!("killed by signal {} (exit code {code})", code - 128))
        }
        Ending::Exited(code) => (Some(code), EndReason::Error, format!("Essential container in task exited with code {code}")),
        Ending::TimedOut(code) => (code, EndReason::Timeout, "Job attempt duration exceeded timeout".into()),
        Ending::Cancelled(code) => (code, EndReason::Cancelled, "Job attempt cancelled".into()),
    }
}

/// Runs attempts. Object-safe so an agent can hold either kind.
pub trait Executor: Send + Sync {
    /// Runs `spec` to its end. Reports progress on `progress`; stops the attempt when
    /// `cancel` turns true. Never fails: failures to start are outcomes too.
    fn run(
        &self,
        spec: RunSpec,
        progress: mpsc::UnboundedSender<Progress>,
        cancel: watch::Receiver<bool>,
    ) -> BoxFuture<'_, Outcome>;

    /// Takes over the attempt named `adoption.name` that an earlier agent process started
    /// (found by its container's name and label, or its state under the data directory)
    /// and supervises it as [`Executor::run`] would: reports [`Progress::Started`] with its
    /// real start, waits for its end, enforces what remains of its timeout and stops it
    /// when `cancel` turns true. Returns `None` at once when nothing of the attempt is
    /// left (then it never ran, or left no trace). Nothing to adopt by default.
    fn adopt(
        &self,
        adoption: Adoption,
        progress: mpsc::UnboundedSender<Progress>,
        cancel: watch::Receiver<bool>,
    ) -> BoxFuture<'_, Option<Outcome>> {
        let _ = (adoption, progress, cancel);
        Box::pin(async { None })
    }

    /// Forgets an attempt whose ending was reported (or is no longer wanted): removes its
    /// stopped container or its state files. Until then they are kept, so an agent that
    /// restarts before the report is written still finds how the attempt ended. Best
    /// effort; nothing to do by default.
    fn release<'a>(&'a self, name: &'a str) -> BoxFuture<'a, ()> {
        let _ = name;
        Box::pin(async {})
    }

    /// Stops and removes whatever an earlier agent process left for the attempt named
    /// `name` (`RunSpec::name`) that it could not adopt, so an attempt reported as lost is
    /// not still running while the job is retried. Best effort; nothing to do by default.
    fn reap<'a>(&'a self, name: &'a str) -> BoxFuture<'a, ()> {
        let _ = name;
        Box::pin(async {})
    }

    /// Ends what the executor keeps running for attempts to come, waiting up to `grace`
    /// for it to end (the process executor's node supervisor: it is told no attempt
    /// comes any more and ends once those it runs ended). For a process that goes away
    /// with its attempts (`asg-batch dev`), after its agents stopped them; an agent that
    /// leaves its attempts running for the next agent process does not call it. Nothing
    /// to do by default.
    fn close(&self, grace: std::time::Duration) -> BoxFuture<'_, ()> {
        let _ = grace;
        Box::pin(async {})
    }
}

/// An attempt an earlier agent process started, to be taken over ([`Executor::adopt`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adoption {
    /// The attempt's name (`RunSpec::name`).
    pub name: String,
    /// Its timeout, counted from when it started.
    pub timeout: Option<Duration>,
    /// How long between SIGTERM and SIGKILL when it is stopped.
    pub grace: Duration,
    /// When it started, as reported then (`attempts[N].startedAt`); the executor's own
    /// record of the start is used when unknown.
    pub started_at: Option<Timestamp>,
}

impl Adoption {
    /// What remains of the timeout for an attempt that started at `started` (zero when
    /// it is already over); `None` without a timeout.
    pub fn remaining(&self, started: Option<Timestamp>) -> Option<Duration> {
        let timeout = self.timeout?;
        let Some(started) = self.started_at.or(started) else {
            return Some(timeout);
        };
        let elapsed = Timestamp::now()
            .duration_since(started)
            .try_into()
            .unwrap_or(Duration::ZERO);
        Some(timeout.saturating_sub(elapsed))
    }
}

/// Waits until `cancel` is true (never returns if the sender is dropped while false).
pub(crate) async fn cancelled(mut cancel: watch::Receiver<bool>) {
    loop {
        if *cancel.borrow_and_update() {
            return;
        }
        if cancel.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Sleeps for `timeout`, or forever when there is none.
async fn expires(timeout: Option<Duration>) {
    match timeout {
        Some(t) => tokio::time::sleep(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_endings() {
        assert_eq!(classify(Ending::Exited(0), true).1, EndReason::Completed);
        let (code, reason, why) = classify(Ending::Exited(3), true);
        assert_eq!((code, reason), (Some(3), EndReason::Error));
        assert!(why.contains("code 3"), "{why}");
        let (code, reason, why) = classify(Ending::Exited(137), true);
        assert_eq!((code, reason), (Some(137), EndReason::OutOfMemory));
        assert!(why.starts_with("OutOfMemoryError"), "{why}");
        let (_, reason, why) = classify(Ending::Exited(137), false);
        assert_eq!(
            reason,
            EndReason::Error,
            "137 without a memory limit is a plain kill"
        );
        assert!(why.contains("signal 9"), "{why}");
        assert_eq!(
            classify(Ending::TimedOut(Some(137)), true).1,
            EndReason::Timeout
        );
        assert_eq!(
            classify(Ending::Cancelled(None), false).1,
            EndReason::Cancelled
        );
    }

    #[test]
    fn remaining_timeout_counts_from_the_start() {
        let started = Timestamp::now() - jiff::SignedDuration::from_secs(30);
        let a = Adoption {
            name: "x".into(),
            timeout: Some(Duration::from_secs(100)),
            grace: Duration::from_secs(30),
            started_at: Some(started),
        };
        let left = a.remaining(None).expect("a timeout");
        assert!(
            left <= Duration::from_secs(70) && left > Duration::from_secs(60),
            "{left:?}"
        );
        let over = Adoption {
            timeout: Some(Duration::from_secs(10)),
            ..a.clone()
        };
        assert_eq!(over.remaining(None), Some(Duration::ZERO));
        let own = Adoption {
            started_at: None,
            ..a.clone()
        };
        assert!(own.remaining(Some(started)).expect("t") <= Duration::from_secs(70));
        assert_eq!(
            Adoption { timeout: None, ..a }.remaining(Some(started)),
            None
        );
    }

    #[tokio::test]
    async fn cancelled_fires_on_true_only() {
        let (tx, rx) = watch::channel(false);
        let waiter = tokio::spawn(cancelled(rx));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        tx.send(true).expect("send");
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("fires")
            .expect("join");
    }
}
