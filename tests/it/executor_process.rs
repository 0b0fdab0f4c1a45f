//! The process executor: exit codes, output tail, environment, timeout, cancellation,
//! the grace period between SIGTERM and SIGKILL.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use crate::support;
use crate::support::agent::small_shim;
use asg_batch::agent::executor::process::ProcessExecutor;
use asg_batch::agent::executor::shim::Shim;
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
        // Killed at once (`terminationGracePeriodSeconds: 0`) unless a test sets a grace.
        grace: Duration::ZERO,
        settings: Default::default(),
        gpus: vec![],
        gpu_count: 0,
    }
}

async fn run(spec: RunSpec, cancel_after: Option<Duration>) -> Outcome {
    run_under(small_shim(), spec, cancel_after).await
}

async fn run_under(shim: Shim, spec: RunSpec, cancel_after: Option<Duration>) -> Outcome {
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
    let exec = ProcessExecutor::new(dir.path(), shim);
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

/// The command line of the process that ran the attempt's program (its parent: the node
/// supervisor), as the program printed it, and the exit code.
async fn shim_command_line(shim: Shim) -> (Option<i32>, String) {
    let o = run_under(
        shim,
        spec("tr '\\0' ' ' < /proc/$PPID/cmdline; echo; exit 3", None),
        None,
    )
    .await;
    (o.exit_code, o.log_tail)
}

/// The agent starts attempts under `asg-batch-shim --serve` (the node supervisor) when it
/// sits beside `asg-batch` (as installed: image, AWS user data, `cargo build --bins`), and
/// under `asg-batch shim --serve` when `asg-batch` is alone (a one-binary install still
/// works).
#[tokio::test]
async fn the_small_shim_beside_the_binary_is_used_and_asg_batch_shim_without_it() {
    let bin = tempfile::tempdir().expect("tempdir");
    let exe = bin.path().join("asg-batch");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_asg-batch"), &exe).expect("symlink");

    let alone = Shim::beside(&exe);
    assert_eq!(alone, Shim::Subcommand(exe.clone()));
    let (code, line) = shim_command_line(alone).await;
    assert_eq!(code, Some(3), "{line}");
    assert!(
        line.starts_with(&format!("{} shim --serve", exe.display())),
        "{line}"
    );

    let small = bin.path().join("asg-batch-shim");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_asg-batch-shim"), &small).expect("symlink");
    let beside = Shim::beside(&exe);
    assert_eq!(beside, Shim::Binary(small.clone()));
    let (code, line) = shim_command_line(beside).await;
    assert_eq!(code, Some(3), "{line}");
    assert!(
        line.starts_with(&format!("{} --serve", small.display())),
        "{line}"
    );
}

/// A shim that does not understand its command line (e.g. an older `asg-batch-shim` left
/// beside a newer agent) fails the attempt with its own words, not a bare "could not start".
#[tokio::test]
async fn a_shim_refusing_its_command_line_says_why() {
    let bin = tempfile::tempdir().expect("tempdir");
    let old = bin.path().join("old-shim");
    std::fs::write(
        &old,
        "#!/bin/sh\necho 'error: unexpected argument --serve found' >&2\nexit 2\n",
    )
    .expect("script");
    std::fs::set_permissions(&old, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let o = run_under(Shim::Binary(old), spec("true", None), None).await;
    assert_eq!(o.reason, EndReason::StartFailed);
    assert!(
        o.status_reason.contains("unexpected argument"),
        "{}",
        o.status_reason
    );
}

/// A program that ends leaving a background process holding its output pipe: its end is
/// recorded (and reported) once what it wrote is copied, without waiting for the
/// background process, and its output is all there.
#[tokio::test]
async fn a_background_process_holding_the_output_does_not_hold_up_the_end() {
    let o = tokio::time::timeout(
        Duration::from_secs(120),
        run(spec("sleep 600 & echo $!; echo done; exit 4", None), None),
    )
    .await
    .expect("the attempt ended while its background process still ran");
    let lines: Vec<&str> = o.log_tail.lines().collect();
    assert_eq!(
        (o.exit_code, lines.get(1).copied()),
        (Some(4), Some("done")),
        "{o:?}"
    );
    let background: i32 = lines[0].parse().expect("pid");
    let state = proc_state(background);
    assert!(
        state == "S" || state == "R",
        "the background process still runs: {state}"
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(background),
        nix::sys::signal::Signal::SIGKILL,
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
    // SIGKILL'd processes vanish asynchronously: the grandchild must be gone (or a zombie
    // awaiting its reaper) soon after the attempt ends.
    let leftover = || -> Vec<String> {
        let ps = std::process::Command::new("ps")
            .args(["-eo", "pid,pgid,stat,args"])
            .output()
            .expect("ps");
        String::from_utf8_lossy(&ps.stdout)
            .lines()
            .filter(|l| l.contains(&format!("sleep {seconds}")))
            .filter(|l| {
                l.split_whitespace()
                    .nth(2)
                    .is_none_or(|st| !st.starts_with('Z'))
            })
            .map(String::from)
            .collect()
    };
    support::wait_until_async(
        "the job's background grandchild to be gone",
        Duration::from_secs(10),
        || leftover().is_empty(),
    )
    .await;
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

/// Runs `spec`, cancelling it once the file `ready` exists (the program wrote it after
/// installing its SIGTERM trap).
async fn run_cancelled_when(spec: RunSpec, ready: std::path::PathBuf) -> Outcome {
    let (tx, _rx) = mpsc::unbounded_channel();
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let canceller = tokio::spawn(async move {
        while !ready.exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = cancel_tx.send(true);
        std::future::pending::<()>().await;
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let exec = ProcessExecutor::new(dir.path(), small_shim());
    let outcome = exec.run(spec, tx, cancel_rx).await;
    canceller.abort();
    outcome
}

#[tokio::test]
async fn a_stopped_process_gets_sigterm_and_its_grace_period() {
    let work = tempfile::tempdir().expect("tempdir");
    let d = work.path().display().to_string();
    // Traps SIGTERM: writes its marker and exits 7 on its own, well within the grace.
    let script = format!(
        "trap 'echo cleaned-up > {d}/marker; exit 7' TERM; touch {d}/ready; while :; do sleep 0.1; done"
    );
    let mut s = spec(&script, None);
    s.grace = Duration::from_secs(60);
    let c = run_cancelled_when(s, work.path().join("ready")).await;
    assert_eq!(c.reason, EndReason::Cancelled, "{c:?}");
    assert_eq!(
        c.exit_code,
        Some(7),
        "the program's own exit, recorded by the shim that survived the SIGTERM: {c:?}"
    );
    assert_eq!(
        std::fs::read_to_string(work.path().join("marker")).expect("the trap ran"),
        "cleaned-up\n"
    );

    // A timeout stops the same way (as AWS Batch's timeout does).
    std::fs::remove_file(work.path().join("marker")).expect("rm marker");
    let mut t = spec(&script, Some(Duration::from_millis(500)));
    t.grace = Duration::from_secs(60);
    let t = run(t, None).await;
    assert_eq!(
        (t.reason, t.exit_code),
        (EndReason::Timeout, Some(7)),
        "{t:?}"
    );
    assert!(
        work.path().join("marker").exists(),
        "the trap ran on timeout"
    );
}

#[tokio::test]
async fn a_program_with_sigterm_default_action_ends_on_it_within_the_grace() {
    let work = tempfile::tempdir().expect("tempdir");
    // No trap: the program (not a shell, which resets signals) must get SIGTERM with its
    // default action, neither ignored nor blocked as the shim survives it.
    let script = format!("touch {}/ready; exec sleep 300", work.path().display());
    let mut s = spec(&script, None);
    s.grace = Duration::from_secs(60);
    let c = run_cancelled_when(s, work.path().join("ready")).await;
    assert_eq!(
        (c.reason, c.exit_code),
        (EndReason::Cancelled, Some(128 + 15)),
        "ended by the SIGTERM, not by the SIGKILL a minute later: {c:?}"
    );
}

#[tokio::test]
async fn a_process_ignoring_sigterm_is_killed_after_the_grace() {
    let work = tempfile::tempdir().expect("tempdir");
    let d = work.path().display().to_string();
    // Notes the SIGTERM and carries on; records that it still ran after it.
    let script = format!(
        "trap 'echo term >> {d}/observed' TERM; echo $$ > {d}/pid; touch {d}/ready; \
         while :; do if [ -s {d}/observed ]; then echo still-running >> {d}/observed; fi; sleep 0.1; done"
    );
    let mut s = spec(&script, None);
    s.grace = Duration::from_secs(2);
    let c = run_cancelled_when(s, work.path().join("ready")).await;
    assert_eq!(
        (c.reason, c.exit_code),
        (EndReason::Cancelled, Some(137)),
        "killed with SIGKILL after the grace: {c:?}"
    );
    let observed = std::fs::read_to_string(work.path().join("observed")).expect("observed");
    let lines: Vec<&str> = observed.lines().collect();
    assert_eq!(
        lines.first(),
        Some(&"term"),
        "SIGTERM came first: {observed}"
    );
    assert!(
        lines.iter().skip(1).any(|l| *l == "still-running"),
        "it ran on after the SIGTERM until the SIGKILL: {observed}"
    );
    let pid: i32 = std::fs::read_to_string(work.path().join("pid"))
        .expect("pid")
        .trim()
        .parse()
        .expect("a pid");
    // Gone (or a zombie nobody reaped yet: dead either way); SIGKILL is delivered
    // asynchronously, so its death is awaited, not assumed at the instant of the report.
    let state = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or("gone")
            .to_string()
    };
    crate::support::wait_until_async(
        "the program ignoring SIGTERM to be killed",
        Duration::from_secs(30),
        || matches!(state().as_str(), "gone" | "Z" | "X"),
    )
    .await;
}

#[tokio::test]
async fn an_adopted_process_is_stopped_with_sigterm_and_its_grace_too() {
    use asg_batch::agent::executor::Adoption;
    let work = tempfile::tempdir().expect("tempdir");
    let d = work.path().display().to_string();
    let script = format!(
        "trap 'echo cleaned-up > {d}/marker; exit 7' TERM; touch {d}/ready; while :; do sleep 0.1; done"
    );
    let state = tempfile::tempdir().expect("state");
    let exec = ProcessExecutor::new(state.path(), small_shim());
    // The first agent process starts the attempt, then goes away without stopping it.
    let (tx, _rx) = mpsc::unbounded_channel();
    let first = exec.run(spec(&script, None), tx, watch::channel(false).1);
    let ready = work.path().join("ready");
    tokio::select! {
        outcome = first => panic!("ended on its own: {outcome:?}"),
        () = crate::support::wait_until_async("the trap to be in place", Duration::from_secs(60), || ready.exists()) => {}
    }
    // The next one adopts it and is told to cancel it.
    let (tx, _rx) = mpsc::unbounded_channel();
    let adopted = exec
        .adopt(
            Adoption {
                name: "proc".into(),
                timeout: None,
                grace: Duration::from_secs(60),
                started_at: None,
            },
            tx,
            watch::channel(true).1,
        )
        .await
        .expect("adopted");
    assert_eq!(
        (adopted.reason, adopted.exit_code),
        (EndReason::Cancelled, Some(7)),
        "its own exit on SIGTERM, recorded by the shim: {adopted:?}"
    );
    assert!(work.path().join("marker").exists(), "the trap ran");
}

/// The state of process `pid`: its `/proc/PID/stat` state letter, or "gone".
fn proc_state(pid: i32) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or("gone")
        .to_string()
}

/// Starts an attempt whose program records its pid and sleeps; once it runs, SIGKILLs its
/// shim alone (as the OOM killer could), leaving the program in the shim's session.
/// Returns the program's pid and the attempt's run, which the caller awaits (the agent
/// that started it) or drops (an agent that went away).
async fn run_then_kill_the_shim_alone<'a>(
    exec: &'a ProcessExecutor,
    work: &std::path::Path,
) -> (i32, futures::future::BoxFuture<'a, Outcome>) {
    let pid_file = work.join("pid");
    let script = format!(
        "echo $$ > {}.tmp; mv {0}.tmp {0}; exec sleep 300",
        pid_file.display()
    );
    let (tx, _rx) = mpsc::unbounded_channel();
    let mut run = exec.run(spec(&script, None), tx, watch::channel(false).1);
    tokio::select! {
        outcome = &mut run => panic!("ended on its own: {outcome:?}"),
        () = support::wait_until_async("the program to run", Duration::from_secs(60), || pid_file.exists()) => {}
    }
    let program: i32 = std::fs::read_to_string(&pid_file)
        .expect("pid")
        .trim()
        .parse()
        .expect("a pid");
    // Killed once it recorded the program it runs (killed before, the attempt is one that
    // never started: its remains are killed and it is run afresh).
    let shim_file = exec
        .attempt_dir("proc")
        .join(asg_batch::agent::executor::shim::SHIM_FILE);
    let recorded = || {
        asg_batch::agent::executor::shim::read_json::<asg_batch::agent::executor::shim::ShimRecord>(
            &shim_file,
        )
        .filter(|r| r.command_pid.is_some())
    };
    support::wait_until_async(
        "the shim to record the program",
        Duration::from_secs(60),
        || recorded().is_some(),
    )
    .await;
    let record = recorded().expect("shim.json");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(record.pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the shim");
    let state = proc_state(program);
    assert!(
        !matches!(state.as_str(), "gone" | "Z" | "X"),
        "the program outlives its shim: {state}"
    );
    (program, run)
}

#[tokio::test]
async fn a_program_whose_shim_was_killed_is_killed_before_the_attempt_is_reported() {
    let work = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("state");
    let exec = ProcessExecutor::new(state.path(), small_shim());
    let (program, run) = run_then_kill_the_shim_alone(&exec, work.path()).await;
    let outcome = run.await;
    assert_eq!(outcome.reason, EndReason::Error, "{outcome:?}");
    // Reported over: the job may be retried, so the program must not run on beside it.
    support::wait_until_async(
        "the program left by the killed shim to be killed",
        Duration::from_secs(10),
        || matches!(proc_state(program).as_str(), "gone" | "Z" | "X"),
    )
    .await;
}

#[tokio::test]
async fn a_program_whose_shim_was_killed_while_no_agent_ran_is_killed_on_adoption() {
    use asg_batch::agent::executor::Adoption;
    let work = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("state");
    let exec = ProcessExecutor::new(state.path(), small_shim());
    // The agent that started the attempt goes away, then the shim is killed.
    let (program, run) = run_then_kill_the_shim_alone(&exec, work.path()).await;
    drop(run);
    let (tx, _rx) = mpsc::unbounded_channel();
    let adopted = exec
        .adopt(
            Adoption {
                name: "proc".into(),
                timeout: None,
                grace: Duration::from_secs(60),
                started_at: None,
            },
            tx,
            watch::channel(false).1,
        )
        .await
        .expect("adopted");
    assert_eq!(adopted.exit_code, None, "{adopted:?}");
    assert!(
        adopted.status_reason.contains("asg-batch shim"),
        "{adopted:?}"
    );
    support::wait_until_async(
        "the program left by the killed shim to be killed",
        Duration::from_secs(10),
        || matches!(proc_state(program).as_str(), "gone" | "Z" | "X"),
    )
    .await;
}

/// One node supervisor runs every attempt of an executor (no program is exec'd per
/// attempt beside the job's own), each program in a process group of its own: stopping
/// one attempt (SIGTERM, then SIGKILL to its group) leaves the others running, and they
/// end with their own exit codes.
#[tokio::test]
async fn one_supervisor_runs_every_attempt_and_stopping_one_leaves_the_others() {
    let work = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("state");
    let exec = ProcessExecutor::new(state.path(), small_shim());
    let d = work.path().display().to_string();
    // Each records its parent and process group, then waits for the file `go`.
    let script = |i: usize| {
        format!(
            "ps -o ppid=,pgid= -p $$ > {d}/who-{i}; while [ ! -e {d}/go ]; do sleep 0.05; done; exit {i}"
        )
    };
    let mut runs = Vec::new();
    let mut cancels = Vec::new();
    for i in 1..=3 {
        let mut s = spec(&script(i), None);
        s.name = format!("proc-{i}");
        let (tx, _rx) = mpsc::unbounded_channel();
        let (cancel_tx, cancel_rx) = watch::channel(false);
        cancels.push(cancel_tx);
        let exec = exec.clone();
        runs.push(tokio::spawn(
            async move { exec.run(s, tx, cancel_rx).await },
        ));
    }
    let who = |i: usize| std::fs::read_to_string(work.path().join(format!("who-{i}"))).ok();
    support::wait_until_async("every program to run", Duration::from_secs(60), || {
        (1..=3).all(|i| who(i).is_some_and(|w| w.split_whitespace().count() == 2))
    })
    .await;
    let ids: Vec<(String, String)> = (1..=3)
        .map(|i| {
            let w = who(i).expect("who");
            let mut f = w.split_whitespace().map(String::from);
            (f.next().expect("ppid"), f.next().expect("pgid"))
        })
        .collect();
    assert!(
        ids.iter().all(|(ppid, _)| *ppid == ids[0].0),
        "one parent for all: {ids:?}"
    );
    let groups: std::collections::BTreeSet<&String> = ids.iter().map(|(_, g)| g).collect();
    assert_eq!(groups.len(), 3, "a process group each: {ids:?}");
    assert!(
        !groups.contains(&ids[0].0),
        "not the supervisor's group: {ids:?}"
    );

    // Stop the first; the others still run, then end on their own.
    cancels[0].send(true).expect("cancel");
    let mut runs = runs.into_iter();
    let first = runs.next().expect("run").await.expect("joined");
    assert_eq!(first.reason, EndReason::Cancelled, "{first:?}");
    assert!(
        runs.as_slice().iter().all(|r| !r.is_finished()),
        "the others still run"
    );
    std::fs::write(work.path().join("go"), "").expect("go");
    for (i, run) in (2..).zip(runs) {
        let o = run.await.expect("joined");
        assert_eq!(
            (o.reason, o.exit_code),
            (EndReason::Error, Some(i)),
            "{o:?}"
        );
    }
}
