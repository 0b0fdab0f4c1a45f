//! `asg-batch shim`: what keeps a process job restart-safe. The process executor starts
//! one node supervisor, `asg-batch shim --serve` ([`serve`]), which runs each attempt on a
//! thread exactly as the per-attempt form, `asg-batch shim --state DIR -- program
//! args...`, runs one, except that the program leads a process group of its own (the
//! per-attempt shim leads its attempt's session and group itself; what follows says "the
//! shim" for either). The shim runs the program with its output going to
//! `DIR/output`, and records in `DIR` who it is and, when the program ends, its exit code.
//! The agent that started it waits for it as a child; an agent started later (after a
//! crash or an upgrade) finds it by `DIR/shim.json`, checks that the pid is still that
//! shim (boot id and start time, so a recycled pid is not mistaken for it), and waits for
//! `DIR/exit.json`. An attempt that ended while no agent ran is reported from that file.
//!
//! Files of one attempt's directory, each written whole (temporary file, then rename):
//! - `shim.json` ([`ShimRecord`]): the shim's pid, start time and boot id, written before
//!   the program starts (so an agent restarting at any moment after it finds the attempt),
//!   then again with the program's pid once it runs;
//! - `exit.json` ([`ExitRecord`]): the exit code and stop time, or why the program could
//!   not start;
//! - `stop.json` ([`StopRecord`]): written by the agent before it stops the attempt
//!   (timeout or cancellation), so an agent that restarts in between knows why it died;
//!
//! Stopping: the agent sends SIGTERM to the shim's process group, then SIGKILL after the
//! attempt's grace period. The shim handles SIGTERM (so it survives it; the program gets
//! the default action) and records the program's exit when it ends within the grace.
//! A shim that dies without recording the program's end (killed alone) leaves the
//! program in its session: the agent kills what is left there
//! ([`ShimRecord::kill_remains`]) before it reports the attempt.
//! - `output`: the program's stdout and stderr, through one pipe the shim copies (up to a
//!   cap; `--output FILE` puts it elsewhere: the agent's log store, see
//!   [`crate::agent::logs`]); `output.tail`: the last 64 KiB when the output was cut at its
//!   cap; `shim.log`: the shim's own errors, created only when it has one.
//!
//! The shim is its own small binary, `asg-batch-shim` (`src/bin/asg-batch-shim.rs`: only
//! this module's code, so its exec costs a fraction of the whole `asg-batch`'s, once per
//! attempt), shipped beside `asg-batch`; `asg-batch shim` is the same program, for an
//! install with the one binary ([`Shim::beside`]).

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

/// The small shim binary's name, looked for beside the `asg-batch` binary.
pub const SHIM_BINARY: &str = "asg-batch-shim";

/// The program the process executor starts each attempt under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shim {
    /// The small `asg-batch-shim` binary at this path.
    Binary(PathBuf),
    /// `asg-batch shim`: the `asg-batch` binary at this path (slower to start: it is the
    /// whole operator).
    Subcommand(PathBuf),
}

impl Shim {
    /// `asg-batch-shim` when it sits beside `exe` (the `asg-batch` binary), else
    /// `exe shim`.
    pub fn beside(exe: &Path) -> Self {
        match exe.parent().map(|dir| dir.join(SHIM_BINARY)) {
            Some(small) if small.is_file() => Self::Binary(small),
            _ => Self::Subcommand(exe.to_path_buf()),
        }
    }

    /// The command that starts a shim, before its own arguments.
    pub fn command(&self) -> tokio::process::Command {
        match self {
            Self::Binary(path) => tokio::process::Command::new(path),
            Self::Subcommand(path) => {
                let mut cmd = tokio::process::Command::new(path);
                cmd.arg("shim");
                cmd
            }
        }
    }
}

/// The shim's command line (`asg-batch-shim ARGS`, or `asg-batch shim ARGS`).
#[derive(Debug, clap::Parser)]
#[command(name = "asg-batch-shim")]
pub struct Cli {
    /// Run as the node's supervisor ([`serve`]): attempts are requested as JSON lines on
    /// stdin and announced as JSON lines on stdout.
    #[arg(long, conflicts_with_all = ["state", "output", "output_max_bytes", "command"])]
    serve: bool,
    /// The attempt's state directory.
    #[arg(long, required_unless_present = "serve")]
    state: Option<PathBuf>,
    /// Where the program's output goes (default: `output` in the state directory).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Cap of the output file in bytes; beyond it the output is dropped (one line says so).
    #[arg(long)]
    output_max_bytes: Option<u64>,
    /// The program and its arguments.
    #[arg(last = true, required_unless_present = "serve")]
    command: Vec<String>,
}

/// Parses the shim's command line (`args`, the program's name first) and runs it.
pub fn cli_main<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = <Cli as clap::Parser>::parse_from(args);
    let Some(state) = cli.state.clone().filter(|_| !cli.serve) else {
        return ExitCode::from(u8::try_from(serve()).unwrap_or(255));
    };
    // The shim's messages go to `shim.log`, a panic's too: its stderr is a pipe the agent
    // reads only while the shim starts (clap's usage errors), gone once it runs.
    let hook_state = state.clone();
    std::panic::set_hook(Box::new(move |info| {
        say(&hook_state, &format!("panicked: {info}"));
    }));
    let output = OutputSettings {
        path: cli.output.unwrap_or_else(|| state.join(OUTPUT_FILE)),
        max_bytes: cli.output_max_bytes,
    };
    let code = main(&state, &output, &cli.command);
    ExitCode::from(u8::try_from(code).unwrap_or(255))
}

/// Appends one of the shim's own messages to `state/shim.log` (created by the first).
fn say(state: &Path, message: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(state.join(LOG_FILE))
    {
        let _ = writeln!(f, "asg-batch shim: {message}");
    }
}

/// `shim.json`.
pub const SHIM_FILE: &str = "shim.json";
/// `exit.json`.
pub const EXIT_FILE: &str = "exit.json";
/// `stop.json`.
pub const STOP_FILE: &str = "stop.json";
/// The program's output.
pub const OUTPUT_FILE: &str = "output";
/// The shim's own stderr.
pub const LOG_FILE: &str = "shim.log";
/// The last [`TAIL_BYTES`] of the output, written when the output file was truncated at
/// its cap (so the status's log tail is still the real end of the output).
pub const TAIL_FILE: &str = "output.tail";
/// How much of the end of the output is kept for [`TAIL_FILE`].
pub const TAIL_BYTES: usize = 64 * 1024;
/// How often the tail file of a truncated output is refreshed.
const TAIL_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
/// How long the shim waits, once the program ended, for the rest of its output.
const OUTPUT_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);
/// How often the shim checks whether the program ended while its output pipe is open.
const EXIT_CHECK: std::time::Duration = std::time::Duration::from_millis(100);

/// Where the program's output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputSettings {
    /// The output file (appended to).
    pub path: std::path::PathBuf,
    /// Its cap in bytes (`None`: unbounded). Beyond it the output is dropped and one line
    /// saying so ends the file ([`crate::agent::logs::truncated_line`]).
    pub max_bytes: Option<u64>,
}

/// Copies the program's output into the output file, up to its cap.
struct OutputCopy {
    file: crate::agent::logs::CappedFile,
    path: std::path::PathBuf,
    tail_file: std::path::PathBuf,
    state: std::path::PathBuf,
}

impl OutputCopy {
    /// Copies the program's output from `pipe` until it ends, and waits for the program;
    /// returns its exit code. One thread: `poll` on the pipe, the program's exit checked
    /// every [`EXIT_CHECK`]. Once the program ended, what it wrote is copied before its
    /// end is recorded, but a background process it left holding the pipe does not hold
    /// the ending up for more than [`OUTPUT_DRAIN`].
    fn pump(mut self, pipe: std::fs::File, child: &mut std::process::Child) -> i32 {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::io::Read;
        use std::os::fd::AsFd;
        let mut tail: std::collections::VecDeque<u8> = std::collections::VecDeque::new();
        let mut last_tail = std::time::Instant::now();
        let mut buf = vec![0u8; 64 * 1024];
        let mut said = false;
        let mut ended: Option<(i32, std::time::Instant)> = None;
        let mut last_check = std::time::Instant::now();
        let mut reader = &pipe;
        let copied = loop {
            if ended.is_none() && last_check.elapsed() >= EXIT_CHECK {
                last_check = std::time::Instant::now();
                match child.try_wait() {
                    Ok(Some(status)) => ended = Some((exit_code(status), last_check)),
                    Ok(None) => {}
                    Err(e) => break Err(e),
                }
            }
            let wait = match ended {
                Some((_, at)) => match OUTPUT_DRAIN.checked_sub(at.elapsed()) {
                    Some(left) => left,
                    None => {
                        say(
                            &self.state,
                            &format!(
                                "the output pipe is still open {OUTPUT_DRAIN:?} after the program ended (a background process holds it); not waiting for it"
                            ),
                        );
                        break Ok(());
                    }
                },
                None => EXIT_CHECK,
            };
            let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
            match poll(
                &mut fds,
                PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX),
            ) {
                Ok(0) => continue,
                Ok(_) => {}
                // SIGTERM (the shim's handler) or another signal.
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => break Err(std::io::Error::from(e)),
            }
            let n = match reader.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => break Err(e),
            };
            let chunk = &buf[..n];
            tail.extend(chunk);
            let excess = tail.len().saturating_sub(TAIL_BYTES);
            tail.drain(..excess);
            let truncated = match self.file.write(chunk) {
                Ok(t) => t,
                Err(e) => break Err(e),
            };
            if truncated && !said {
                said = true;
                say(
                    &self.state,
                    &format!(
                        "output over its cap: {} keeps the beginning",
                        self.path.display()
                    ),
                );
            }
            if truncated && last_tail.elapsed() >= TAIL_EVERY {
                // Refreshed now and then, so a shim killed later still leaves a recent end.
                last_tail = std::time::Instant::now();
                let (a, b) = tail.as_slices();
                let _ = write_atomic(&self.tail_file, &[a, b].concat());
            }
        };
        if let Err(e) = copied {
            say(&self.state, &format!("copying the output: {e}"));
        }
        // Not read any more: a program still writing gets EPIPE.
        drop(pipe);
        if self.file.truncated() {
            let (a, b) = tail.as_slices();
            if let Err(e) = write_atomic(&self.tail_file, &[a, b].concat()) {
                say(&self.state, &format!("cannot write {TAIL_FILE}: {e}"));
            }
        }
        match ended {
            Some((code, _)) => code,
            None => match child.wait() {
                Ok(status) => exit_code(status),
                Err(e) => {
                    say(&self.state, &format!("waiting for the program: {e}"));
                    -1
                }
            },
        }
    }
}
/// What the shim prints on stdout once the program runs (the agent waits for it).
pub const STARTED_LINE: &str = "started";

/// Who the shim is, written once the program started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShimRecord {
    /// The shim's pid (also its process group and session).
    pub pid: i32,
    /// Its start time in clock ticks since boot (`/proc/PID/stat`, field 22).
    pub start_ticks: u64,
    /// The kernel's boot id when it started.
    pub boot_id: String,
    /// The program's pid; `None` while the shim is still starting it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_pid: Option<u32>,
    /// Under a node supervisor ([`serve`], whose pid and start time `pid` and
    /// `start_ticks` are): the process group the program leads (its pid), which the
    /// agent signals to stop the attempt. `None`: a per-attempt shim, which leads the
    /// attempt's session and process group itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<i32>,
    /// Written by the node supervisor, which serves other attempts too: its own process
    /// group is never signalled, only `group`, once the program leads it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
    /// When the program started.
    pub started_at: Timestamp,
}

/// How the program ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitRecord {
    /// Its exit code (128 + signal when a signal killed it); `None` when it never started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why it could not start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_error: Option<String>,
    /// When it ended.
    pub stopped_at: Timestamp,
}

/// Why the agent killed the attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopReason {
    /// It ran past its timeout.
    Timeout,
    /// It was cancelled.
    Cancelled,
}

/// `stop.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StopRecord {
    /// Why.
    pub reason: StopReason,
}

/// Writes `bytes` to `path` whole: a temporary file beside it, then renamed over it.
///
/// Not synced to disk: the records let a later *agent process* on the same boot adopt or
/// reap an attempt, and a rename is atomic against any process dying (readers see the old
/// file or the new one, never a part). An OS crash loses what the page cache held, but it
/// loses the attempt too: after a reboot the boot id differs, so no shim is alive, and an
/// attempt whose records did not reach the disk is reported as killed or lost (the
/// attempt fails, as AWS Batch fails the jobs of a host that went away); a record that
/// did reach it is still read. Syncing the file and its directory cost ~2 fsyncs per record,
/// 4 records per attempt: most of an attempt's wall time on a disk-backed state directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Writes `value` as JSON to `path` whole.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    write_atomic(path, &bytes)
}

/// Reads a JSON file; `None` when it is absent or unreadable.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The kernel's boot id (empty when unknown).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// What the shim reads of a process in `/proc/PID/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcStat {
    /// Its state (`R`, `S`, `Z`, ...).
    state: char,
    /// Its process group id.
    group: i32,
    /// Its session id.
    session: i32,
    /// Its start time in clock ticks since boot.
    start: u64,
}

impl ProcStat {
    fn ended(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }
}

/// The `/proc/PID/stat` fields of process `pid`.
fn proc_stat(pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid pgrp session ..."; comm may hold spaces and parentheses.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        // Field 5 of the whole line.
        group: fields.get(2)?.parse().ok()?,
        // Field 6 of the whole line, the 4th from the state (field 3).
        session: fields.get(3)?.parse().ok()?,
        // Field 22, the 20th from the state.
        start: fields.get(19)?.parse().ok()?,
    })
}

/// Start time of process `pid` in clock ticks since boot.
pub fn start_ticks(pid: i32) -> Option<u64> {
    proc_stat(pid).map(|s| s.start)
}

impl ShimRecord {
    /// Whether this shim still runs: same boot, a process with its pid and start time,
    /// and not a zombie (an exited shim nobody reaped yet is over).
    pub fn alive(&self) -> bool {
        if self.boot_id != boot_id() {
            return false;
        }
        matches!(proc_stat(self.pid), Some(s) if s.start == self.start_ticks && !s.ended())
    }

    /// SIGKILLs what is left of the attempt once its shim is gone without having recorded
    /// how the program ended (the shim was killed alone, e.g. by the OOM killer, or
    /// between starting the program and recording its pid): the program and whatever it
    /// started still run, in the shim's session, with nobody to supervise them. Returns
    /// how many processes were killed. Nothing while the shim runs.
    ///
    /// The session is the shim's own: the kernel keeps a session's id (the shim's pid)
    /// from being given to another process while any member of the session lives, so when
    /// no other process holds the shim's pid, the processes of that session are the
    /// attempt's; those started before the shim (a later session on a recycled pid
    /// cannot hold them) or on another boot are not.
    pub fn kill_remains(&self) -> usize {
        if self.boot_id != boot_id() {
            return 0;
        }
        match proc_stat(self.pid) {
            // Another process got the pid: the session ended with the shim.
            Some(s) if s.start != self.start_ticks => return 0,
            // The shim runs: it supervises the program itself.
            Some(s) if !s.ended() => return 0,
            _ => {}
        }
        let mut killed = 0;
        for (pid, _) in self.members() {
            if nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            )
            .is_ok()
            {
                killed += 1;
            }
        }
        killed
    }

    /// The live processes of the attempt, other than the shim: in the shim's session
    /// (a per-attempt shim), or in the program's process group within the supervisor's
    /// session (a supervisor's attempt: the other attempts share that session), started
    /// no earlier than the shim (a later session on a recycled pid cannot hold those).
    fn members(&self) -> Vec<(i32, ProcStat)> {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|entry| {
                let pid = entry.file_name().to_str()?.parse::<i32>().ok()?;
                let s = proc_stat(pid)?;
                (pid != self.pid
                    && !(self.shared && self.group.is_none())
                    && s.session == self.pid
                    && self.group.is_none_or(|g| s.group == g)
                    && s.start >= self.start_ticks
                    && !s.ended())
                .then_some((pid, s))
            })
            .collect()
    }

    /// SIGKILLs the shim's process group (the shim and everything the program started),
    /// if the shim is still the process recorded.
    pub fn kill(&self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
    }

    /// SIGTERMs the shim's process group, if the shim is still the process recorded: the
    /// program (and what it started) gets the signal, the shim survives it and records
    /// how the program ended.
    pub fn terminate(&self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        if !self.alive() {
            return;
        }
        let group = match self.group {
            // The supervisor's record of a program not started yet: nothing to signal.
            None if self.shared => return,
            None => self.pid,
            // Still the attempt's group: its leader (the program) or, once that ended,
            // another member in the supervisor's session (a group id cannot be reused
            // while a member lives).
            Some(g) => {
                let ours = proc_stat(g).is_some_and(|s| s.session == self.pid && !s.ended())
                    || !self.members().is_empty();
                if !ours {
                    return;
                }
                g
            }
        };
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(group), signal);
    }
}

/// Runs the shim: `state` is the attempt's directory (it exists), `output` where the
/// program's output goes, `command` the program and its arguments. Returns the exit code to exit with (the program's; 127 when it
/// could not start).
pub fn main(state: &Path, output: &OutputSettings, command: &[String]) -> i32 {
    // A session of its own: no signal aimed at the agent's group or terminal reaches the
    // attempt, and killing the process group kills everything the program started.
    let _ = nix::unistd::setsid();
    if let Err(e) = survive_sigterm() {
        say(state, &format!("cannot handle SIGTERM: {e}"));
    }
    let me = nix::unistd::getpid().as_raw();
    let who = Supervisor {
        pid: me,
        start_ticks: start_ticks(me).unwrap_or(0),
        boot_id: boot_id(),
    };
    let launch = Launch {
        env: &[],
        working_dir: None,
        own_group: false,
    };
    let mut announce = |a: Announce| {
        let mut out = std::io::stdout();
        let _ = match a {
            Announce::Started(_) => writeln!(out, "{STARTED_LINE}"),
            Announce::Failed(message) => writeln!(out, "error {message}"),
        };
        let _ = out.flush();
    };
    run_attempt(&who, state, output, command, &launch, &mut announce).unwrap_or(127)
}

/// The agent stops a per-attempt shim's attempt with SIGTERM to the whole process group,
/// then SIGKILL after the grace period: the shim must outlive the SIGTERM to record the
/// program's exit. A handler (a flag nobody reads) replaces the default action for the
/// shim's lifetime; exec resets it to the default in the program. Neither SIG_IGN nor a
/// blocked signal: the program would inherit both.
fn survive_sigterm() -> std::io::Result<()> {
    signal_hook::flag::register(
        signal_hook::consts::SIGTERM,
        std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
    )
    .map(drop)
}

/// Records in `state` that the attempt's program could not start, and why.
fn record_start_error(state: &Path, message: &str) {
    let _ = write_json(
        &state.join(EXIT_FILE),
        &ExitRecord {
            exit_code: None,
            start_error: Some(message.to_string()),
            stopped_at: Timestamp::now(),
        },
    );
}

/// The process that supervises an attempt, as its records name it.
#[derive(Debug, Clone)]
struct Supervisor {
    pid: i32,
    start_ticks: u64,
    boot_id: String,
}

/// How an attempt's program is started.
struct Launch<'a> {
    /// Added to the supervisor's environment.
    env: &'a [(String, String)],
    /// Its working directory (default: the supervisor's).
    working_dir: Option<&'a Path>,
    /// It leads a process group of its own (under the node supervisor); else it stays in
    /// the per-attempt shim's.
    own_group: bool,
}

/// What the supervisor of an attempt says once its program runs, or could not start.
enum Announce {
    /// The program runs, with this pid.
    Started(u32),
    /// Why it could not start (also in `exit.json`).
    Failed(String),
}

/// Runs one attempt to its end: its records in `state`, the program's output into
/// `output`; `announce` is told once whether the program started. Returns the program's
/// exit code, `None` when it could not start.
fn run_attempt(
    who: &Supervisor,
    state: &Path,
    output: &OutputSettings,
    command: &[String],
    launch: &Launch<'_>,
    announce: &mut dyn FnMut(Announce),
) -> Option<i32> {
    let mut fail = |message: String| -> Option<i32> {
        record_start_error(state, &message);
        announce(Announce::Failed(message));
        None
    };
    let Some((program, args)) = command.split_first() else {
        return fail("empty command".into());
    };
    let output = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&output.path)
    {
        Ok(f) => OutputCopy {
            file: crate::agent::logs::CappedFile::new(f, output.max_bytes),
            path: output.path.clone(),
            tail_file: state.join(TAIL_FILE),
            state: state.to_path_buf(),
        },
        Err(e) => return fail(format!("cannot open the output file: {e}")),
    };
    // stdout and stderr share one pipe, so their lines stay in the order the program
    // wrote them; the shim copies it into the output file up to its cap.
    // Close-on-exec: the program gets the writing end as its stdout and stderr only.
    let (reader, writer) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok((r, w)) => (std::fs::File::from(r), w),
        Err(e) => return fail(format!("cannot make the output pipe: {e}")),
    };
    let stderr = match writer.try_clone() {
        Ok(w) => w,
        Err(e) => return fail(format!("cannot make the output pipe: {e}")),
    };
    let record = ShimRecord {
        pid: who.pid,
        start_ticks: who.start_ticks,
        boot_id: who.boot_id.clone(),
        command_pid: None,
        group: None,
        shared: launch.own_group,
        started_at: Timestamp::now(),
    };
    // Who the shim is goes on disk before the program starts: the program may act (and
    // the agent that started the shim may die) before the shim is scheduled again, and an
    // agent that finds no record takes the attempt for one that never started.
    if let Err(e) = write_json(&state.join(SHIM_FILE), &record) {
        return fail(format!("cannot write {SHIM_FILE}: {e}"));
    }
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(launch.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(stderr);
    if let Some(dir) = launch.working_dir {
        cmd.current_dir(dir);
    }
    if launch.own_group {
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    }
    let spawned = cmd.spawn();
    // The writing ends now belong to the program alone (dropped with the Command), so
    // the pipe ends when the program (and whatever it started that kept it) closes it.
    drop(cmd);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot start {program:?}: {e}")),
    };
    let started_at = Timestamp::now();
    let record = ShimRecord {
        command_pid: Some(child.id()),
        group: launch
            .own_group
            .then(|| i32::try_from(child.id()).ok())
            .flatten(),
        started_at,
        ..record
    };
    if let Err(e) = write_json(&state.join(SHIM_FILE), &record) {
        say(state, &format!("cannot write {SHIM_FILE}: {e}"));
    }
    // The agent that started the shim may be gone already: a failed write is fine.
    announce(Announce::Started(child.id()));
    let code = output.pump(reader, &mut child);
    if let Err(e) = write_json(
        &state.join(EXIT_FILE),
        &ExitRecord {
            exit_code: Some(code),
            start_error: None,
            stopped_at: Timestamp::now(),
        },
    ) {
        say(state, &format!("cannot write {EXIT_FILE}: {e}"));
    }
    Some(code)
}

/// One attempt the agent asks the node supervisor to run (a JSON line on its stdin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartRequest {
    /// The attempt's state directory (it exists); also the attempt's key in the
    /// supervisor's [`SupervisorEvent`]s.
    pub state: PathBuf,
    /// Where the program's output goes.
    pub output: PathBuf,
    /// Cap of the output file in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_max_bytes: Option<u64>,
    /// The program and its arguments.
    pub command: Vec<String>,
    /// Added to the supervisor's environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<(String, String)>,
    /// The program's working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<PathBuf>,
}

/// What the node supervisor says about an attempt (a JSON line on its stdout).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "camelCase")]
pub enum SupervisorEvent {
    /// The program runs (its records say so too).
    Started {
        /// The attempt's state directory.
        state: PathBuf,
        /// The program's pid, which also names its process group.
        pid: u32,
    },
    /// It could not start (`exit.json` says why too).
    Failed {
        /// The attempt's state directory.
        state: PathBuf,
        /// Why.
        error: String,
    },
    /// It ended, with this exit code (recorded in `exit.json` first).
    Exited {
        /// The attempt's state directory.
        state: PathBuf,
        /// Its exit code (128 + the signal that killed it).
        code: i32,
    },
    /// A request line it could not read (the agent and the supervisor disagree on the
    /// protocol: e.g. an older `asg-batch-shim` beside a newer agent).
    Refused {
        /// Why.
        error: String,
    },
}

/// `asg-batch-shim --serve`: the node supervisor. The process executor starts one per
/// agent process, once, instead of one shim per attempt: an exec of a program costs its
/// dynamic loading (glibc's CPU and cache probing alone was 8–14 % of all CPU of a
/// 5,000-job `asg-batch dev` run with a shim per attempt), a thread costs microseconds.
/// Each attempt runs on a thread of its own exactly as under a per-attempt shim
/// ([`run_attempt`]: the same records, output copy and exit record), except that the
/// program leads a process group of its own (the record's `group`), which the agent
/// signals to stop it; the supervisor itself leads a session of its own, so the programs
/// share that session, not the agent's.
///
/// Requests ([`StartRequest`]) come as JSON lines on stdin; events
/// ([`SupervisorEvent`]) go out as JSON lines on stdout. When stdin ends (the agent
/// stopped or died), it starts nothing more, supervises what runs to its end (a later
/// agent adopts those attempts from their records, as a per-attempt shim's), and exits.
pub fn serve() -> i32 {
    use std::io::BufRead;
    let _ = nix::unistd::setsid();
    let me = nix::unistd::getpid().as_raw();
    let who = Supervisor {
        pid: me,
        start_ticks: start_ticks(me).unwrap_or(0),
        boot_id: boot_id(),
    };
    // A SIGTERM to the supervisor (e.g. a group signal meant for something else) must not
    // end the supervision of every attempt.
    if let Err(e) = survive_sigterm() {
        eprintln!("asg-batch shim --serve: cannot handle SIGTERM: {e}");
    }
    let out = std::sync::Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let emit = |out: &std::sync::Mutex<std::io::Stdout>, event: &SupervisorEvent| {
        if let (Ok(line), Ok(mut out)) = (serde_json::to_string(event), out.lock()) {
            // The agent that asked may be gone: a failed write is fine.
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    };
    let mut threads: Vec<std::thread::JoinHandle<()>> = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        let request: StartRequest = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                emit(
                    &out,
                    &SupervisorEvent::Refused {
                        error: format!("unreadable request: {e}"),
                    },
                );
                continue;
            }
        };
        threads.retain(|t| !t.is_finished());
        let (out2, who) = (out.clone(), who.clone());
        let state = request.state.clone();
        let spawned = std::thread::Builder::new()
            .name("attempt".into())
            .spawn(move || {
                let output = OutputSettings {
                    path: request.output.clone(),
                    max_bytes: request.output_max_bytes,
                };
                let launch = Launch {
                    env: &request.env,
                    working_dir: request.working_dir.as_deref(),
                    own_group: true,
                };
                let state = &request.state;
                let mut announce = |a: Announce| {
                    let event = match a {
                        Announce::Started(pid) => SupervisorEvent::Started {
                            state: state.clone(),
                            pid,
                        },
                        Announce::Failed(error) => SupervisorEvent::Failed {
                            state: state.clone(),
                            error,
                        },
                    };
                    emit(&out2, &event);
                };
                if let Some(code) = run_attempt(
                    &who,
                    state,
                    &output,
                    &request.command,
                    &launch,
                    &mut announce,
                ) {
                    emit(
                        &out2,
                        &SupervisorEvent::Exited {
                            state: state.clone(),
                            code,
                        },
                    );
                }
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                let error = format!("cannot start a thread for the attempt: {e}");
                record_start_error(&state, &error);
                emit(&out, &SupervisorEvent::Failed { state, error });
            }
        }
    }
    for t in threads {
        let _ = t.join();
    }
    0
}

/// The exit code of a status: the code, or 128 + the signal that killed it.
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_itself_and_not_a_recycled_pid() {
        let me = nix::unistd::getpid().as_raw();
        let record = ShimRecord {
            pid: me,
            start_ticks: start_ticks(me).expect("own start time"),
            boot_id: boot_id(),
            command_pid: None,
            group: None,
            shared: false,
            started_at: Timestamp::now(),
        };
        assert!(record.alive());
        let recycled = ShimRecord {
            start_ticks: record.start_ticks + 1,
            ..record.clone()
        };
        assert!(!recycled.alive(), "same pid, another start time");
        let rebooted = ShimRecord {
            boot_id: "another-boot".into(),
            ..record
        };
        assert!(!rebooted.alive());
    }

    #[test]
    fn records_round_trip_atomically() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(EXIT_FILE);
        let record = ExitRecord {
            exit_code: Some(3),
            start_error: None,
            stopped_at: Timestamp::now(),
        };
        write_json(&path, &record).expect("write");
        assert_eq!(read_json::<ExitRecord>(&path), Some(record));
        assert!(!path.with_extension("tmp").exists());
        assert_eq!(read_json::<ExitRecord>(&dir.path().join("nope")), None);
    }
}
