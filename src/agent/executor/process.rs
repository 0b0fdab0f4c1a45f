//! Attempts as plain processes on the instance (executor `process`). No resource limits
//! are enforced; the scheduler's accounting still keeps the node from being over-committed.
//!
//! Each attempt runs under the node supervisor ([`shim::serve`], `asg-batch-shim --serve`,
//! started once per executor and kept in a session of its own), in a process group of its
//! own, with its state in `<state dir>/<attempt name>/`: the program's output, who
//! supervises it and, once the program ends, its exit code. So an attempt outlives the
//! agent that started it, and a later agent process takes it over ([`Executor::adopt`]) or
//! reports how it ended while no agent ran. The state stays until the ending is reported
//! ([`Executor::release`]). Attempts of a per-attempt shim (`asg-batch-shim --state DIR`,
//! how agents before the supervisor ran them) are adopted the same way.

use super::shim::{
    self, EXIT_FILE, ExitRecord, OUTPUT_FILE, SHIM_FILE, STOP_FILE, Shim, ShimRecord, StartRequest,
    StopReason, StopRecord, SupervisorEvent, TAIL_FILE,
};
use super::{
    Adoption, EndReason, Ending, Executor, LogTail, Outcome, Progress, RunSpec, SIGKILL_EXIT,
    Workload, cancelled, classify, expires,
};
use futures::future::BoxFuture;
use jiff::Timestamp;
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, watch};

/// How long a shim may take to start its program before the attempt is a start failure.
const SHIM_START_TIMEOUT: Duration = Duration::from_secs(60);
/// How often an adopted shim (not a child of this process) is checked.
const POLL: Duration = Duration::from_millis(200);
/// How much of the end of the output file makes the log tail.
const TAIL_BYTES: u64 = 64 * 1024;

/// Runs attempts as processes under the node supervisor, `asg-batch-shim --serve` (or
/// `asg-batch shim --serve`), started once by this executor ([`shim::serve`]).
#[derive(Clone, Debug)]
pub struct ProcessExecutor {
    state_dir: PathBuf,
    shim: Shim,
    logs: Option<crate::agent::logs::LogStore>,
    supervisor: Arc<tokio::sync::Mutex<Option<Arc<Connection>>>>,
}

/// What an attempt hears from the supervisor, or of its end.
#[derive(Debug)]
enum Heard {
    /// An event about the attempt.
    Event(SupervisorEvent),
    /// The supervisor ended (what it wrote on stderr, e.g. why it refused its command
    /// line); its attempts' programs may still run.
    Gone(String),
}

/// This executor's node supervisor: its stdin (closed when the executor is dropped: the
/// supervisor then starts nothing more and exits once its attempts ended), and the
/// routes of its events.
#[derive(Debug)]
struct Connection {
    /// `None` once closed ([`Executor::close`]).
    stdin: tokio::sync::Mutex<Option<tokio::process::ChildStdin>>,
    routes: Arc<Routes>,
    /// The task routing its events, which ends once the supervisor ended and was reaped.
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Who waits for which attempt of a supervisor, and whether it ended.
#[derive(Debug)]
struct Routes {
    pid: Option<u32>,
    waiting: std::sync::Mutex<Waiting>,
    /// Its stdout ended: a new attempt needs a new supervisor.
    gone: std::sync::atomic::AtomicBool,
}

/// The attempts waiting for a supervisor's events; once it ended (and was reaped), what
/// it said on stderr, told to each attempt that asks after that.
#[derive(Debug, Default)]
struct Waiting {
    attempts: HashMap<PathBuf, mpsc::UnboundedSender<Heard>>,
    ended: Option<String>,
}

impl Connection {
    /// Starts a supervisor with `shim` and the task that routes its events.
    fn start(shim: &Shim) -> std::io::Result<Arc<Self>> {
        let mut cmd = shim.command();
        cmd.arg("--serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its attempts outlive this agent process: they are adopted by the next one.
            .kill_on_drop(false);
        let mut child = cmd.spawn()?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(std::io::Error::other("the supervisor's pipes are missing"));
        };
        let routes = Arc::new(Routes {
            pid: child.id(),
            waiting: std::sync::Mutex::new(Waiting::default()),
            gone: std::sync::atomic::AtomicBool::new(false),
        });
        tracing::debug!(pid = ?routes.pid, "node supervisor started");
        let routing = routes.clone();
        let task = tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<SupervisorEvent>(&line) {
                    Ok(SupervisorEvent::Refused { error }) => {
                        tracing::error!(%error, "the node supervisor refused a request");
                    }
                    Ok(event) => routing.tell(event),
                    Err(e) => {
                        tracing::warn!(%line, error = %e, "unreadable line from the node supervisor");
                    }
                }
            }
            routing
                .gone
                .store(true, std::sync::atomic::Ordering::SeqCst);
            let mut said = Vec::new();
            let _ = tokio::time::timeout(
                SHIM_START_TIMEOUT,
                tokio::io::AsyncReadExt::read_to_end(
                    &mut tokio::io::AsyncReadExt::take(stderr, 64 * 1024),
                    &mut said,
                ),
            )
            .await;
            let said = String::from_utf8_lossy(&said).trim().to_string();
            let status = child.wait().await;
            tracing::info!(pid = ?routing.pid, ?status, stderr = %said, "node supervisor ended");
            let waiting = {
                let mut w = routing.lock_waiting();
                w.ended = Some(said.clone());
                std::mem::take(&mut w.attempts)
            };
            for tx in waiting.into_values() {
                let _ = tx.send(Heard::Gone(said.clone()));
            }
        });
        Ok(Arc::new(Self {
            stdin: tokio::sync::Mutex::new(Some(stdin)),
            routes,
            task: std::sync::Mutex::new(Some(task)),
        }))
    }

    /// Asks the supervisor to run `request`; what it says of it arrives on the receiver.
    async fn run(&self, request: &StartRequest) -> std::io::Result<mpsc::UnboundedReceiver<Heard>> {
        let line = serde_json::to_vec(request).map_err(std::io::Error::other)?;
        let (tx, rx) = mpsc::unbounded_channel();
        {
            let mut w = self.routes.lock_waiting();
            if let Some(said) = &w.ended {
                let _ = tx.send(Heard::Gone(said.clone()));
                return Ok(rx);
            }
            w.attempts.insert(request.state.clone(), tx);
        }
        let mut stdin = self.stdin.lock().await;
        let written = async {
            let Some(stdin) = stdin.as_mut() else {
                return Err(std::io::Error::other("the node supervisor was closed"));
            };
            tokio::io::AsyncWriteExt::write_all(stdin, &line).await?;
            tokio::io::AsyncWriteExt::write_all(stdin, b"\n").await?;
            tokio::io::AsyncWriteExt::flush(stdin).await
        }
        .await;
        if let Err(e) = written {
            // A broken pipe: the supervisor ended (its stdin is open while it runs); the
            // attempt hears that, with what it said, from the routing task.
            tracing::debug!(error = %e, "the node supervisor did not take a request");
        }
        Ok(rx)
    }
}

impl Routes {
    fn lock_waiting(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Routes an event to the attempt it is about (forgotten once it ended).
    fn tell(&self, event: SupervisorEvent) {
        let (state, last) = match &event {
            SupervisorEvent::Started { state, .. } => (state, false),
            SupervisorEvent::Failed { state, .. } | SupervisorEvent::Exited { state, .. } => {
                (state, true)
            }
            SupervisorEvent::Refused { .. } => return,
        };
        let mut waiting = self.lock_waiting();
        let tx = if last {
            waiting.attempts.remove(state)
        } else {
            waiting.attempts.get(state).cloned()
        };
        if let Some(tx) = tx {
            let _ = tx.send(Heard::Event(event));
        }
    }
}

impl ProcessExecutor {
    /// An executor keeping each attempt's state under `state_dir` (made absolute) and
    /// starting attempts under `shim`.
    pub fn new(state_dir: impl Into<PathBuf>, shim: Shim) -> Self {
        let state_dir = state_dir.into();
        let state_dir = std::path::absolute(&state_dir).unwrap_or(state_dir);
        Self {
            state_dir,
            shim,
            logs: None,
            supervisor: Arc::default(),
        }
    }

    /// Stops routing the supervisor's events about the attempt in `state`.
    async fn forget(&self, state: &Path) {
        if let Some(c) = &*self.supervisor.lock().await {
            c.routes.lock_waiting().attempts.remove(state);
        }
    }

    /// The running node supervisor, started when there is none (or it ended).
    async fn supervisor(&self) -> std::io::Result<Arc<Connection>> {
        let mut current = self.supervisor.lock().await;
        match &*current {
            Some(c) if !c.routes.gone.load(std::sync::atomic::Ordering::SeqCst) => Ok(c.clone()),
            _ => {
                let c = Connection::start(&self.shim)?;
                *current = Some(c.clone());
                Ok(c)
            }
        }
    }

    /// The shim it starts attempts under.
    pub fn shim(&self) -> &Shim {
        &self.shim
    }

    /// Keeps each attempt's whole output in `logs` (capped there), where the agent serves
    /// it, instead of in its state directory (removed once the ending is reported).
    pub fn with_logs(mut self, logs: crate::agent::logs::LogStore) -> Self {
        self.logs = Some(logs);
        self
    }

    /// Where the output of the attempt named `name` goes.
    pub fn output_path(&self, name: &str) -> PathBuf {
        match &self.logs {
            Some(logs) => logs.path(name),
            None => self.attempt_dir(name).join(OUTPUT_FILE),
        }
    }

    /// An executor under `state_dir` whose shim is `asg-batch-shim` beside this very
    /// binary (the `asg-batch` process: `asg-batch agent` and `asg-batch dev`), else this
    /// binary's `shim` subcommand ([`Shim::beside`]).
    pub fn with_current_exe(state_dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let shim = Shim::beside(&std::env::current_exe()?);
        match &shim {
            Shim::Binary(path) => {
                tracing::info!(shim = %path.display(), "process attempts run under the small shim binary");
            }
            Shim::Subcommand(path) => tracing::info!(
                shim = %path.display(),
                "process attempts run under `asg-batch shim` (no {} beside it: each attempt starts slower)",
                shim::SHIM_BINARY
            ),
        }
        Ok(Self::new(state_dir, shim))
    }

    /// The directory of the attempt named `name`.
    pub fn attempt_dir(&self, name: &str) -> PathBuf {
        self.state_dir.join(name)
    }

    async fn run_inner(
        &self,
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
        if command.is_empty() {
            return Outcome::not_started(EndReason::StartFailed, "empty command");
        }
        let dir = self.attempt_dir(&spec.name);
        let output = self.output_path(&spec.name);
        let request = StartRequest {
            state: dir.clone(),
            output: output.clone(),
            output_max_bytes: self
                .logs
                .as_ref()
                .map(crate::agent::logs::LogStore::max_bytes),
            command: command.clone(),
            env: spec.env.clone(),
            working_dir: working_dir.as_ref().map(PathBuf::from),
        };
        // The attempt's directories, in one trip to a blocking thread (five file system
        // calls as five trips cost more than the calls, per attempt).
        let prepared = {
            let (dir, output) = (dir.clone(), output.clone());
            let logs = self
                .logs
                .as_ref()
                .map(|l| (l.dir().to_path_buf(), l.end_path(&spec.name)));
            tokio::task::spawn_blocking(move || prepare(&dir, &output, logs))
                .await
                .unwrap_or_else(|e| Err(format!("preparing the attempt failed: {e}")))
        };
        if let Err(why) = prepared {
            return Outcome::not_started(EndReason::StartFailed, why);
        }
        let program = &command[0];
        let asked = match self.supervisor().await {
            Ok(conn) => conn.run(&request).await,
            Err(e) => Err(e),
        };
        let mut heard = match asked {
            Ok(rx) => rx,
            Err(e) => {
                let _ = tokio::fs::remove_dir_all(&dir).await;
                return Outcome::not_started(
                    EndReason::StartFailed,
                    format!("cannot start {program:?}: the process supervisor: {e}"),
                );
            }
        };
        // The supervisor says `started` once the program runs, or why it could not.
        let first = tokio::time::timeout(SHIM_START_TIMEOUT, heard.recv()).await;
        let group = match first {
            Ok(Some(Heard::Event(SupervisorEvent::Started { pid, .. }))) => pid,
            Ok(Some(Heard::Event(SupervisorEvent::Failed { error, .. }))) => {
                let _ = tokio::fs::remove_dir_all(&dir).await;
                return Outcome::not_started(EndReason::StartFailed, error);
            }
            Err(_) => {
                // Whatever it did not say in time, it must not start now.
                if let Some(r) = shim::read_json::<ShimRecord>(&dir.join(SHIM_FILE)) {
                    r.kill();
                }
                self.forget(&request.state).await;
                return Outcome::not_started(
                    EndReason::StartFailed,
                    format!("the process supervisor did not start {program:?} in time"),
                );
            }
            Ok(other) => {
                // The supervisor ended first (or answered out of turn): what it recorded,
                // else what it said on stderr (a shim refusing its command line).
                let said = match other {
                    Some(Heard::Gone(said)) => said,
                    _ => String::new(),
                };
                let why = shim::read_json::<ExitRecord>(&dir.join(EXIT_FILE))
                    .and_then(|r| r.start_error)
                    .or_else(|| {
                        (!said.is_empty()).then(|| {
                            format!("the process shim refused to start {program:?}: {said}")
                        })
                    })
                    .unwrap_or_else(|| format!("the process shim could not start {program:?}"));
                kill_remains(&dir, &spec.name);
                let _ = tokio::fs::remove_dir_all(&dir).await;
                return Outcome::not_started(EndReason::StartFailed, why.trim().to_string());
            }
        };
        let started_at = shim::read_json::<ShimRecord>(&dir.join(SHIM_FILE))
            .map_or_else(Timestamp::now, |r| r.started_at);
        let _ = progress.send(Progress::Started { at: started_at });

        let ending = tokio::select! {
            code = ended(&mut heard) => Ending::Exited(code.unwrap_or(SIGKILL_EXIT)),
            () = expires(spec.timeout) => {
                stop_intent(&dir, StopReason::Timeout);
                Ending::TimedOut(stop_group(&dir, group, &mut heard, spec.grace).await)
            }
            () = cancelled(cancel) => {
                stop_intent(&dir, StopReason::Cancelled);
                Ending::Cancelled(stop_group(&dir, group, &mut heard, spec.grace).await)
            }
        };
        // The supervisor's record says how and when the program stopped.
        let record = shim::read_json::<ExitRecord>(&dir.join(EXIT_FILE));
        if record.is_none() {
            // The supervisor died without recording the end: what it ran may still run.
            kill_remains(&dir, &spec.name);
        }
        let ending = match (ending, record.as_ref().and_then(|r| r.exit_code)) {
            (Ending::Exited(_), Some(code)) => Ending::Exited(code),
            (other, _) => other,
        };
        let stopped_at = record.map_or_else(Timestamp::now, |r| r.stopped_at);
        outcome(&dir, &output, ending, Some(started_at), stopped_at)
    }

    async fn adopt_inner(
        &self,
        adoption: Adoption,
        progress: mpsc::UnboundedSender<Progress>,
        cancel: watch::Receiver<bool>,
    ) -> Option<Outcome> {
        let dir = self.attempt_dir(&adoption.name);
        let output = self.output_path(&adoption.name);
        let exit = shim::read_json::<ExitRecord>(&dir.join(EXIT_FILE));
        let record = shim::read_json::<ShimRecord>(&dir.join(SHIM_FILE));
        if let Some(ExitRecord {
            start_error: Some(why),
            ..
        }) = &exit
        {
            // It never ran: the earlier agent reported (or will be told) a start failure.
            tracing::info!(attempt = %adoption.name, %why, "the attempt's program never started");
            return None;
        }
        // No record: the shim never got as far as starting the program.
        let record = record?;
        // A record without the program's pid: the shim was starting it when the earlier
        // agent went away. Wait for it to say how that went.
        let (record, exit) = match record.command_pid {
            Some(_) => (record, exit),
            None => {
                let Some(record) = program_started(&dir, &record).await else {
                    // Or the shim died between starting it and recording its pid.
                    kill_remains(&dir, &adoption.name);
                    tracing::info!(attempt = %adoption.name, "the attempt's program never started");
                    return None;
                };
                (record, shim::read_json::<ExitRecord>(&dir.join(EXIT_FILE)))
            }
        };
        let started_at = Some(record.started_at);
        let _ = progress.send(Progress::Started {
            at: adoption.started_at.unwrap_or(record.started_at),
        });
        if let Some(ExitRecord {
            exit_code: Some(code),
            stopped_at,
            ..
        }) = exit
        {
            tracing::info!(attempt = %adoption.name, exit_code = code, "the attempt ended while no agent supervised it");
            return Some(outcome(
                &dir,
                &output,
                Ending::Exited(code),
                started_at,
                stopped_at,
            ));
        }
        if record.alive() {
            tracing::info!(attempt = %adoption.name, pid = record.pid, "re-adopting a running attempt");
        }
        let remaining = adoption.remaining(started_at);
        let wait_end = async {
            while record.alive() && !dir.join(EXIT_FILE).exists() {
                tokio::time::sleep(POLL).await;
            }
        };
        let killed = tokio::select! {
            () = wait_end => None,
            () = expires(remaining) => Some(StopReason::Timeout),
            () = cancelled(cancel) => Some(StopReason::Cancelled),
        };
        if let Some(reason) = killed {
            stop_intent(&dir, reason);
            record.terminate();
            // Over once recorded (a node supervisor lives on) or once its shim is gone.
            let over = || !record.alive() || dir.join(EXIT_FILE).exists();
            let ended = async {
                while !over() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            if tokio::time::timeout(adoption.grace, ended).await.is_err() {
                tracing::info!(attempt = %adoption.name, grace = ?adoption.grace, "still running after the grace period: killing it");
                record.kill();
                while !over() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        let exit = shim::read_json::<ExitRecord>(&dir.join(EXIT_FILE));
        let stopped_at = exit.as_ref().map_or_else(Timestamp::now, |r| r.stopped_at);
        // A program that ended on SIGTERM within the grace has its code recorded.
        let code = exit.and_then(|r| r.exit_code);
        let ending = match (code, killed) {
            (Some(code), None) => Ending::Exited(code),
            (code, Some(StopReason::Timeout)) => {
                Ending::TimedOut(Some(code.unwrap_or(SIGKILL_EXIT)))
            }
            (code, Some(StopReason::Cancelled)) => {
                Ending::Cancelled(Some(code.unwrap_or(SIGKILL_EXIT)))
            }
            // The shim died without recording the end: killed by an earlier agent (which
            // said why first), or by someone else.
            (None, None) => {
                kill_remains(&dir, &adoption.name);
                match shim::read_json::<StopRecord>(&dir.join(STOP_FILE)).map(|s| s.reason) {
                    Some(StopReason::Timeout) => Ending::TimedOut(Some(SIGKILL_EXIT)),
                    Some(StopReason::Cancelled) => Ending::Cancelled(Some(SIGKILL_EXIT)),
                    None => {
                        let mut o = outcome(
                            &dir,
                            &output,
                            Ending::Exited(SIGKILL_EXIT),
                            started_at,
                            stopped_at,
                        );
                        o.exit_code = None;
                        o.status_reason = "the attempt's process supervisor (asg-batch shim) was killed before it recorded the exit code".into();
                        return Some(o);
                    }
                }
            }
        };
        Some(outcome(&dir, &output, ending, started_at, stopped_at))
    }
}

/// Waits until the shim of `record`, which was starting the program, records that the
/// program runs; `None` when it could not start it, or died first.
async fn program_started(dir: &Path, record: &ShimRecord) -> Option<ShimRecord> {
    let running =
        || shim::read_json::<ShimRecord>(&dir.join(SHIM_FILE)).filter(|r| r.command_pid.is_some());
    loop {
        if let Some(r) = running() {
            return Some(r);
        }
        if dir.join(EXIT_FILE).exists() || !record.alive() {
            // It may have recorded the program just before it ended.
            return running();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Kills what the attempt in `dir` left running when its shim died without recording
/// the program's end ([`ShimRecord::kill_remains`]), so the attempt is over before it is
/// reported and the job never runs twice at once.
fn kill_remains(dir: &Path, attempt: &str) {
    if let Some(record) = shim::read_json::<ShimRecord>(&dir.join(SHIM_FILE)) {
        let killed = record.kill_remains();
        if killed > 0 {
            tracing::warn!(
                attempt,
                shim_pid = record.pid,
                killed,
                "the attempt's shim died before recording the program's end: killed the processes it left"
            );
        }
    }
}

/// Records why the agent is about to kill the attempt.
fn stop_intent(dir: &Path, reason: StopReason) {
    let _ = shim::write_json(&dir.join(STOP_FILE), &StopRecord { reason });
}

/// The program's exit code once the supervisor says it ended; `None` when the supervisor
/// ended first (its attempts are then judged by their records).
async fn ended(heard: &mut mpsc::UnboundedReceiver<Heard>) -> Option<i32> {
    loop {
        match heard.recv().await {
            Some(Heard::Event(SupervisorEvent::Exited { code, .. })) => return Some(code),
            Some(Heard::Event(_)) => {}
            Some(Heard::Gone(_)) | None => return None,
        }
    }
}

/// Stops a running attempt as `docker stop` does: SIGTERM to the program's process group
/// (the supervisor records the program's exit), then SIGKILL to the group when it still
/// runs after `grace`. Signalled through the attempt's record (in `dir`, naming the
/// program `group`), which checks that the group is still the attempt's. Returns the
/// program's exit code as the supervisor reported it.
async fn stop_group(
    dir: &Path,
    group: u32,
    heard: &mut mpsc::UnboundedReceiver<Heard>,
    grace: Duration,
) -> Option<i32> {
    let record = shim::read_json::<ShimRecord>(&dir.join(SHIM_FILE))
        .filter(|r| r.group.and_then(|g| u32::try_from(g).ok()) == Some(group));
    if !grace.is_zero() {
        if let Some(r) = &record {
            r.terminate();
        }
        if let Ok(code) = tokio::time::timeout(grace, ended(heard)).await {
            return code;
        }
        tracing::info!(?grace, "still running after the grace period: killing it");
    }
    match &record {
        Some(r) => r.kill(),
        // No record to check the group by (removed?): the group the supervisor named.
        None => {
            if let Ok(pid) = i32::try_from(group) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    ended(heard).await
}

/// The outcome of an ended attempt, its log tail read from its output file (or, when
/// that was cut at its cap, from the shim's copy of the end).
fn outcome(
    dir: &Path,
    output: &Path,
    ending: Ending,
    started_at: Option<Timestamp>,
    stopped_at: Timestamp,
) -> Outcome {
    let (exit_code, reason, status_reason) = classify(ending, false);
    Outcome {
        exit_code,
        reason,
        status_reason,
        started_at,
        stopped_at,
        log_tail: {
            let tail = dir.join(TAIL_FILE);
            read_tail(if tail.exists() { &tail } else { output })
        },
    }
}

/// The last lines of the file at `path`.
fn read_tail(path: &Path) -> String {
    let mut tail = LogTail::default();
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let from = len.saturating_sub(TAIL_BYTES);
    if f.seek(SeekFrom::Start(from)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    let _ = f.read_to_end(&mut bytes);
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    if from > 0 {
        // Started mid-line: drop the partial first line.
        if let Some(pos) = text.find('\n') {
            text.drain(..=pos);
        }
    }
    tail.push(&text);
    tail.text()
}

impl Executor for ProcessExecutor {
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
        Box::pin(async move {
            let _ = tokio::fs::remove_dir_all(self.attempt_dir(name)).await;
        })
    }

    fn close(&self, grace: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let Some(conn) = self.supervisor.lock().await.take() else {
                return;
            };
            // Its stdin closed: it starts nothing more and ends once its attempts ended.
            conn.stdin.lock().await.take();
            let task = conn
                .task
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            if let Some(task) = task
                && tokio::time::timeout(grace, task).await.is_err()
            {
                tracing::warn!(?grace, pid = ?conn.routes.pid, "the node supervisor did not end in time");
            }
        })
    }

    fn reap<'a>(&'a self, name: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let dir = self.attempt_dir(name);
            if let Some(record) = shim::read_json::<ShimRecord>(&dir.join(SHIM_FILE)) {
                if record.alive() {
                    tracing::info!(
                        attempt = name,
                        pid = record.pid,
                        "stopping a process an earlier agent left running"
                    );
                    record.kill();
                } else {
                    kill_remains(&dir, name);
                }
            }
            let _ = tokio::fs::remove_dir_all(&dir).await;
        })
    }
}

/// Makes an attempt's state directory afresh (what an earlier try left without a shim to
/// adopt, e.g. a shim that never started its program, is cleared) and, when logs are kept
/// (`logs`: their directory and the attempt's end mark), the log directory, with nothing
/// of an earlier try left in the attempt's log (`output`) or end mark.
fn prepare(dir: &Path, output: &Path, logs: Option<(PathBuf, PathBuf)>) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create the attempt's state directory {dir:?}: {e}"))?;
    if let Some((logs, end)) = logs {
        std::fs::create_dir_all(&logs)
            .map_err(|e| format!("cannot create the log directory {logs:?}: {e}"))?;
        let _ = std::fs::remove_file(end);
        let _ = std::fs::remove_file(output);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process standing for a shim that is still starting its program: its record on
    /// disk, without the program's pid.
    fn starting_shim(dir: &Path) -> (std::process::Child, ShimRecord) {
        let child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("sleep");
        let pid = i32::try_from(child.id()).expect("pid");
        let record = ShimRecord {
            pid,
            start_ticks: shim::start_ticks(pid).expect("start ticks"),
            boot_id: shim::boot_id(),
            command_pid: None,
            group: None,
            shared: false,
            started_at: Timestamp::now(),
        };
        shim::write_json(&dir.join(SHIM_FILE), &record).expect("record");
        (child, record)
    }

    fn adoption() -> Adoption {
        Adoption {
            name: "a".into(),
            timeout: None,
            grace: Duration::from_secs(1),
            started_at: None,
        }
    }

    #[tokio::test]
    async fn an_attempt_whose_shim_is_starting_its_program_is_adopted_not_lost() {
        let state = tempfile::tempdir().expect("state");
        let exec = ProcessExecutor::new(state.path(), Shim::Binary("/nonexistent".into()));
        let dir = exec.attempt_dir("a");
        std::fs::create_dir_all(&dir).expect("dir");
        let (mut child, record) = starting_shim(&dir);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let adopting = tokio::spawn({
            let exec = exec.clone();
            async move {
                exec.adopt_inner(adoption(), tx, watch::channel(false).1)
                    .await
            }
        });
        // The shim goes on: the program runs, then ends with 3.
        let running = ShimRecord {
            command_pid: Some(1),
            ..record
        };
        shim::write_json(&dir.join(SHIM_FILE), &running).expect("record");
        let exit = ExitRecord {
            exit_code: Some(3),
            start_error: None,
            stopped_at: Timestamp::now(),
        };
        shim::write_json(&dir.join(EXIT_FILE), &exit).expect("exit");
        let outcome = adopting.await.expect("task").expect("adopted");
        assert_eq!(outcome.exit_code, Some(3), "{outcome:?}");
        assert!(matches!(rx.recv().await, Some(Progress::Started { .. })));
        let _ = child.kill();
        let _ = child.wait();
    }

    #[tokio::test]
    async fn a_shim_that_died_before_starting_its_program_leaves_nothing_to_adopt() {
        let state = tempfile::tempdir().expect("state");
        let exec = ProcessExecutor::new(state.path(), Shim::Binary("/nonexistent".into()));
        let dir = exec.attempt_dir("a");
        std::fs::create_dir_all(&dir).expect("dir");
        let (mut child, _) = starting_shim(&dir);
        let (tx, _rx) = mpsc::unbounded_channel();
        let adopting = tokio::spawn({
            let exec = exec.clone();
            async move {
                exec.adopt_inner(adoption(), tx, watch::channel(false).1)
                    .await
            }
        });
        let _ = child.kill();
        let _ = child.wait();
        assert!(adopting.await.expect("task").is_none());
    }

    #[test]
    fn the_tail_of_a_long_output_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out");
        let mut text = String::new();
        for i in 0..20_000 {
            text.push_str(&format!("line {i}\n"));
        }
        std::fs::write(&path, text).expect("write");
        let tail = read_tail(&path);
        let lines: Vec<&str> = tail.lines().collect();
        assert_eq!(lines.len(), 20);
        assert_eq!(lines[19], "line 19999");
        assert_eq!(read_tail(&dir.path().join("absent")), "");
    }
}
