//! The node agent against the embedded API server with the process executor; the test
//! plays the controller of `src/api/PROTOCOL.md`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use crate::support;
use asg_batch::api::protocol::AttemptReason;

use asg_batch::agent::attempt::LOST_STATUS_REASON;
use asg_batch::api::BatchJob;
use asg_batch::api::common::{EnvVar, JobTemplate, ProcessSpec};
use asg_batch::api::job_definition::{JobDefinition, JobDefinitionSpec};
use kube::api::{Api, DeleteParams, PostParams};
use std::sync::Arc;
use support::agent::*;

const NODE: &str = "i-0agent";

fn agent(client: &kube::Client) -> TestAgent {
    TestAgent::start(
        client.clone(),
        config(NODE, "ce-test"),
        Arc::new(process_executor()),
        None,
    )
}

async fn wait_attempt(
    client: &kube::Client,
    name: &str,
    n: u32,
    what: &str,
    ready: impl Fn(&asg_batch::api::batch_job::AttemptStatus) -> bool,
) -> BatchJob {
    eventually(
        what,
        || get_job(client, "default", name),
        |j| attempt(j, n).is_some_and(|a| ready(&a)),
    )
    .await
}

async fn read_pid(path: &std::path::Path) -> i32 {
    let text = eventually(
        "the pid file",
        || async { std::fs::read_to_string(path).unwrap_or_default() },
        |t| t.trim().parse::<i32>().is_ok(),
    )
    .await;
    text.trim().parse().expect("pid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_the_node_and_heartbeats() {
    let s = server_with_crds().await;
    let client = s.client();
    let agent = agent(&client);
    let node = eventually(
        "the BatchNode with a heartbeat",
        || get_node(&client, NODE),
        |n| {
            n.as_ref()
                .and_then(|n| n.status.as_ref())
                .is_some_and(|st| st.heartbeat_time.is_some())
        },
    )
    .await
    .expect("node");
    assert_eq!(node.spec.instance_id, NODE);
    assert_eq!(node.spec.compute_environment, "ce-test");
    assert_eq!(node.spec.capacity.cpu.as_str(), "4");
    assert_eq!(node.spec.capacity.memory.as_str(), "8Gi");
    let status = node.status.clone().expect("status");
    assert_eq!(
        status.protected_from_scale_in, None,
        "no fleet, no protection to mirror"
    );
    let managers: Vec<_> = node
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .map(|m| m.manager.clone().unwrap_or_default())
        .collect();
    assert!(
        managers.iter().all(|m| m == "asg-batch-agent"),
        "{managers:?}"
    );
    let first = status.heartbeat_time.expect("heartbeat").0;
    eventually(
        "the heartbeat to advance",
        || get_node(&client, NODE),
        |n| {
            n.as_ref()
                .and_then(|n| n.status.as_ref())
                .and_then(|st| st.heartbeat_time.as_ref())
                .is_some_and(|t| t.0 > first)
        },
    )
    .await;
    // Deleted by someone: the next heartbeat registers it again.
    Api::<asg_batch::api::BatchNode>::all(client.clone())
        .delete(NODE, &DeleteParams::default())
        .await
        .expect("delete node");
    eventually(
        "the node to be registered again",
        || get_node(&client, NODE),
        |n| n.as_ref().is_some_and(|n| n.spec.instance_id == NODE),
    )
    .await;
    agent.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_each_attempt_under_its_own_field_manager() {
    let s = server_with_crds().await;
    let client = s.client();
    let agent = agent(&client);
    create_job(
        &client,
        "default",
        &process_job(
            "exit3",
            "echo hello attempt=$AWS_BATCH_JOB_ATTEMPT; exit $((2 + AWS_BATCH_JOB_ATTEMPT))",
        ),
    )
    .await;
    bind(&client, "default", "exit3", NODE, 1).await;

    let job = wait_attempt(&client, "exit3", 1, "attempt 1 to end", |a| {
        a.stopped_at.is_some()
    })
    .await;
    let a1 = attempt(&job, 1).expect("attempt 1");
    assert!(a1.started_at.is_some(), "{a1:?}");
    assert_eq!(a1.exit_code, Some(3));
    assert_eq!(a1.reason.as_ref().map(AttemptReason::as_str), Some("Error"));
    assert!(
        a1.log_tail
            .as_deref()
            .unwrap_or_default()
            .contains("hello attempt=1"),
        "{a1:?}"
    );
    assert!(
        a1.status_reason
            .as_deref()
            .unwrap_or_default()
            .contains("code 3")
    );
    // The controller's fields are untouched.
    let status = job.status.clone().expect("status");
    assert_eq!(status.phase, Some(asg_batch::api::JobPhase::Starting));
    assert_eq!(status.node.as_deref(), Some(NODE));
    assert_eq!(status.attempt, Some(1));
    assert_eq!(a1.node.as_deref(), Some(NODE));
    assert_eq!(a1.instance_id.as_deref(), Some(NODE));
    let managers = managers(&job);
    assert!(
        managers.contains(&("asg-batch-agent-attempt-1".into(), "status".into())),
        "{managers:?}"
    );
    let agent_fields = owned_status_fields(&job, "asg-batch-agent-attempt-1").to_string();
    for f in [
        "f:exitCode",
        "f:startedAt",
        "f:stoppedAt",
        "f:logTail",
        "f:reason",
    ] {
        assert!(agent_fields.contains(f), "{f} in {agent_fields}");
    }
    for f in ["f:phase", "f:node\"", "f:instanceId", "resourceVersion"] {
        assert!(!agent_fields.contains(f), "{f} not in {agent_fields}");
    }
    let controller_fields = owned_status_fields(&job, CONTROLLER).to_string();
    for f in ["f:phase", "f:instanceId"] {
        assert!(controller_fields.contains(f), "{f} in {controller_fields}");
    }
    assert!(
        !controller_fields.contains("f:exitCode"),
        "{controller_fields}"
    );

    // The controller retries: attempt 2 on the same node.
    set_status(&client, "default", "exit3", "Starting", NODE, 2).await;
    let job = wait_attempt(&client, "exit3", 2, "attempt 2 to end", |a| {
        a.stopped_at.is_some()
    })
    .await;
    let a2 = attempt(&job, 2).expect("attempt 2");
    assert_eq!(a2.exit_code, Some(4));
    assert!(
        a2.log_tail
            .as_deref()
            .unwrap_or_default()
            .contains("attempt=2")
    );
    let a1_again = attempt(&job, 1).expect("attempt 1");
    assert_eq!(a1_again, a1, "attempt 2's report keeps attempt 1's");
    agent.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_or_failing_a_running_job_kills_its_process() {
    let s = server_with_crds().await;
    let client = s.client();
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = agent(&client);
    for name in ["doomed", "failed"] {
        let script = format!(
            "echo $$ > {}/{name}.pid; exec sleep 300",
            dir.path().display()
        );
        create_job(&client, "default", &process_job(name, &script)).await;
        bind(&client, "default", name, NODE, 1).await;
    }
    // Both run at once on this node.
    let doomed = read_pid(&dir.path().join("doomed.pid")).await;
    let failed = read_pid(&dir.path().join("failed.pid")).await;
    for name in ["doomed", "failed"] {
        wait_attempt(&client, name, 1, "startedAt", |a| a.started_at.is_some()).await;
    }
    assert!(process_alive(doomed) && process_alive(failed));

    Api::<BatchJob>::namespaced(client.clone(), "default")
        .delete("doomed", &DeleteParams::default())
        .await
        .expect("delete");
    eventually(
        "the deleted job's process to die",
        || async { process_alive(doomed) },
        |alive| !alive,
    )
    .await;
    assert!(process_alive(failed), "the other job keeps running");

    // The controller fails the job (e.g. a user cancelled it): the attempt is stopped and,
    // being still current, reported as Cancelled.
    set_status(&client, "default", "failed", "Failed", NODE, 1).await;
    let job = wait_attempt(
        &client,
        "failed",
        1,
        "the cancelled attempt's report",
        |a| a.stopped_at.is_some(),
    )
    .await;
    let a1 = attempt(&job, 1).expect("attempt");
    assert_eq!(
        a1.reason.as_ref().map(AttemptReason::as_str),
        Some("Cancelled"),
        "{a1:?}"
    );
    assert!(
        a1.status_reason
            .as_deref()
            .unwrap_or_default()
            .contains("terminal"),
        "{a1:?}"
    );
    assert!(!process_alive(failed));
    agent.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superseded_attempt_is_stopped_and_not_reported() {
    let s = server_with_crds().await;
    let client = s.client();
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = agent(&client);
    let script = format!(
        "echo $$ > {}/pid-$AWS_BATCH_JOB_ATTEMPT; exec sleep 300",
        dir.path().display()
    );
    create_job(&client, "default", &process_job("bumped", &script)).await;
    bind(&client, "default", "bumped", NODE, 1).await;
    let first = read_pid(&dir.path().join("pid-1")).await;
    wait_attempt(&client, "bumped", 1, "startedAt", |a| {
        a.started_at.is_some()
    })
    .await;

    // The controller moved on to attempt 2 meanwhile (e.g. it judged attempt 1 lost).
    set_status(&client, "default", "bumped", "Starting", NODE, 2).await;
    eventually(
        "attempt 1's process to die",
        || async { process_alive(first) },
        |alive| !alive,
    )
    .await;
    let second = read_pid(&dir.path().join("pid-2")).await;
    let job = wait_attempt(&client, "bumped", 2, "attempt 2's startedAt", |a| {
        a.started_at.is_some()
    })
    .await;
    let a1 = attempt(&job, 1).expect("attempt 1");
    assert!(
        a1.stopped_at.is_none() && a1.reason.is_none() && a1.exit_code.is_none(),
        "a stale attempt is not reported: {a1:?}"
    );
    assert!(process_alive(second));
    agent.stop().await.expect("clean stop");
    // A graceful stop cancels and reports the running attempt.
    let job = get_job(&client, "default", "bumped").await;
    let a2 = attempt(&job, 2).expect("attempt 2");
    assert_eq!(
        a2.reason.as_ref().map(AttemptReason::as_str),
        Some("Cancelled"),
        "{a2:?}"
    );
    assert!(!process_alive(second));
}

/// The agent finds its work by `status.node` alone (field selector; no label is written):
/// a job bound to this node runs here once, a job bound to another node never runs here,
/// and a job moved off this node while it runs leaves this node's watch, is stopped here
/// without a report, and runs on the other node. Two agents share the server; each runs
/// its jobs with its own compute environment name, which the jobs write down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_runs_exactly_the_jobs_whose_status_names_its_node() {
    const OTHER: &str = "i-0other";
    let s = server_with_crds().await;
    let client = s.client();
    let dir = tempfile::tempdir().expect("tempdir");
    let start = |node: &str, ce: &str| {
        TestAgent::start(
            client.clone(),
            config(node, ce),
            Arc::new(process_executor()),
            None,
        )
    };
    let (here, there) = (start(NODE, "ce-here"), start(OTHER, "ce-there"));
    let ran = |name: &str| dir.path().join(format!("ran-{name}"));
    let script = |name: &str, then: &str| {
        format!("echo $AWS_BATCH_CE_NAME >> {}; {then}", ran(name).display())
    };
    let long = format!(
        "echo $$ > {}/pid-$AWS_BATCH_JOB_ATTEMPT; exec sleep 300",
        dir.path().display()
    );
    for (name, then) in [
        ("mine", "true"),
        ("theirs", "true"),
        ("moved", long.as_str()),
    ] {
        create_job(&client, "default", &process_job(name, &script(name, then))).await;
    }
    bind(&client, "default", "mine", NODE, 1).await;
    bind(&client, "default", "theirs", OTHER, 1).await;
    bind(&client, "default", "moved", NODE, 1).await;

    for name in ["mine", "theirs"] {
        let job = wait_attempt(&client, name, 1, "attempt 1 to end", |a| {
            a.exit_code == Some(0)
        })
        .await;
        assert!(
            job.metadata
                .labels
                .as_ref()
                .is_none_or(|l| !l.contains_key(asg_batch::api::protocol::LABEL_NODE)),
            "no node label anywhere: {:?}",
            job.metadata.labels
        );
    }
    assert_eq!(lines(&ran("mine")), ["ce-here"], "once, on its node");
    assert_eq!(
        lines(&ran("theirs")),
        ["ce-there"],
        "once, on the other node"
    );

    // Moved off this node while it runs (as after a hand-over): it leaves this node's
    // watch (DELETED), so it is stopped here and its report refused; the other node runs it.
    let first = read_pid(&dir.path().join("pid-1")).await;
    wait_attempt(&client, "moved", 1, "startedAt", |a| a.started_at.is_some()).await;
    set_status(&client, "default", "moved", "Starting", OTHER, 2).await;
    eventually(
        "attempt 1's process to die",
        || async { process_alive(first) },
        |alive| !alive,
    )
    .await;
    let job = wait_attempt(&client, "moved", 2, "attempt 2's startedAt", |a| {
        a.started_at.is_some()
    })
    .await;
    let a1 = attempt(&job, 1).expect("attempt 1");
    assert!(
        a1.stopped_at.is_none() && a1.exit_code.is_none(),
        "an attempt moved away is not reported: {a1:?}"
    );
    assert_eq!(lines(&ran("moved")), ["ce-here", "ce-there"]);
    here.stop().await.expect("clean stop");
    there.stop().await.expect("clean stop");
    assert_eq!(
        lines(&ran("mine")),
        ["ce-here"],
        "never run again, here or there"
    );
}

/// Lines of `path` (none when absent).
fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

/// The state directory of attempt `n` of job `name` (uid `uid`) in the tests' executor.
fn state_dir(name: &str, uid: &str, n: u32) -> std::path::PathBuf {
    process_executor().attempt_dir(&asg_batch::agent::spec::attempt_name(
        &asg_batch::agent::plan::AttemptKey {
            namespace: "default".into(),
            name: name.into(),
            uid: uid.into(),
            attempt: n,
        },
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_attempt_is_adopted_after_an_agent_crash_and_reported_once() {
    let s = server_with_crds().await;
    let client = s.client();
    let dir = tempfile::tempdir().expect("tempdir");
    let (pid_file, go, markers) = (
        dir.path().join("pid"),
        dir.path().join("go"),
        dir.path().join("markers"),
    );
    let script = format!(
        "echo $$ > {pid}; echo start >> {m}; while [ ! -e {go} ]; do sleep 0.1; done; \
         echo adopted-output; echo stop >> {m}; exit 5",
        pid = pid_file.display(),
        m = markers.display(),
        go = go.display()
    );
    create_job(&client, "default", &process_job("adopted", &script)).await;
    let agent1 = agent(&client);
    bind(&client, "default", "adopted", NODE, 1).await;
    let pid = read_pid(&pid_file).await;
    let job = wait_attempt(&client, "adopted", 1, "startedAt", |a| {
        a.started_at.is_some()
    })
    .await;
    let started = attempt(&job, 1).and_then(|a| a.started_at);
    agent1.crash().await;
    assert!(process_alive(pid), "the process outlives its agent");

    let agent2 = agent(&client);
    // The new agent holds the attempt (its heartbeat lists it) while it still runs.
    eventually(
        "the new agent's heartbeat to list the adopted attempt",
        || get_node(&client, NODE),
        |n| {
            n.as_ref()
                .and_then(|n| n.status.as_ref())
                .is_some_and(|s| s.running_attempts.iter().any(|j| j.name == "adopted"))
        },
    )
    .await;
    assert!(process_alive(pid));
    let a1 = attempt(&get_job(&client, "default", "adopted").await, 1).expect("attempt 1");
    assert!(
        a1.stopped_at.is_none(),
        "not reported while it runs: {a1:?}"
    );
    std::fs::write(&go, "").expect("go");
    let job = wait_attempt(&client, "adopted", 1, "the adopted attempt's report", |a| {
        a.stopped_at.is_some()
    })
    .await;
    let a1 = attempt(&job, 1).expect("attempt 1");
    assert_eq!(
        (a1.exit_code, a1.reason.as_ref().map(AttemptReason::as_str)),
        (Some(5), Some("Error")),
        "{a1:?}"
    );
    assert_eq!(a1.started_at, started, "startedAt is kept");
    assert_eq!(a1.log_tail.as_deref(), Some("adopted-output"));
    assert_eq!(lines(&markers), ["start", "stop"], "one run, to its end");
    assert_eq!(job.status.as_ref().map(|s| s.attempts.len()), Some(1));
    // Reported, so its state is gone.
    let uid = job.metadata.uid.clone().expect("uid");
    eventually(
        "the attempt's state to be removed",
        || {
            let d = state_dir("adopted", &uid, 1);
            async move { d.exists() }
        },
        |e| !e,
    )
    .await;
    agent2.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adopted_attempt_keeps_its_timeout_from_its_start_and_is_cancelled_like_any() {
    let s = server_with_crds().await;
    let client = s.client();
    let dir = tempfile::tempdir().expect("tempdir");
    let timed_pid = dir.path().join("timed.pid");
    let mut timed = process_job(
        "timed",
        &format!("echo $$ > {}; exec sleep 300", timed_pid.display()),
    );
    timed.spec.template.timeout_seconds = Some(5);
    create_job(&client, "default", &timed).await;
    let doomed_pid = dir.path().join("doomed.pid");
    create_job(
        &client,
        "default",
        &process_job(
            "doomed",
            &format!("echo $$ > {}; exec sleep 300", doomed_pid.display()),
        ),
    )
    .await;
    let agent1 = agent(&client);
    bind(&client, "default", "timed", NODE, 1).await;
    bind(&client, "default", "doomed", NODE, 1).await;
    let (tp, dp) = (read_pid(&timed_pid).await, read_pid(&doomed_pid).await);
    let job = wait_attempt(&client, "timed", 1, "startedAt", |a| a.started_at.is_some()).await;
    let started = attempt(&job, 1)
        .and_then(|a| a.started_at)
        .expect("startedAt")
        .0;
    wait_attempt(&client, "doomed", 1, "startedAt", |a| {
        a.started_at.is_some()
    })
    .await;
    agent1.crash().await;
    // The new agent starts 3 s into the 5 s timeout.
    let since_start = || jiff::Timestamp::now().duration_since(started).as_secs_f64();
    eventually(
        "3 s since the start",
        || async { since_start() },
        |s| *s >= 3.0,
    )
    .await;
    let agent2 = agent(&client);

    let job = wait_attempt(&client, "timed", 1, "the timeout", |a| {
        a.stopped_at.is_some()
    })
    .await;
    let a1 = attempt(&job, 1).expect("attempt 1");
    assert_eq!(
        a1.reason.as_ref().map(AttemptReason::as_str),
        Some("Timeout"),
        "{a1:?}"
    );
    let ran = a1
        .stopped_at
        .expect("stoppedAt")
        .0
        .duration_since(started)
        .as_secs_f64();
    assert!(
        (5.0..7.5).contains(&ran),
        "stopped {ran:.1}s after its start: the timeout counts from the start, not from the adoption"
    );
    assert!(!process_alive(tp));

    // Deleting the job cancels the adopted attempt as it would a fresh one.
    assert!(process_alive(dp));
    Api::<BatchJob>::namespaced(client.clone(), "default")
        .delete("doomed", &DeleteParams::default())
        .await
        .expect("delete");
    eventually(
        "the deleted job's process to die",
        || async { process_alive(dp) },
        |alive| !alive,
    )
    .await;
    agent2.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_that_leaves_attempts_running_hands_them_to_the_next_agent() {
    let s = server_with_crds().await;
    let client = s.client();
    let dir = tempfile::tempdir().expect("tempdir");
    let (pid_file, go) = (dir.path().join("pid"), dir.path().join("go"));
    let script = format!(
        "echo $$ > {}; while [ ! -e {} ]; do sleep 0.1; done; echo left-running",
        pid_file.display(),
        go.display()
    );
    create_job(&client, "default", &process_job("upgrade", &script)).await;
    let leave = || {
        TestAgent::start(
            client.clone(),
            config(NODE, "ce-test")
                .with_shutdown_mode(asg_batch::agent::config::ShutdownMode::Leave),
            Arc::new(process_executor()),
            None,
        )
    };
    let agent1 = leave();
    bind(&client, "default", "upgrade", NODE, 1).await;
    let pid = read_pid(&pid_file).await;
    wait_attempt(&client, "upgrade", 1, "startedAt", |a| {
        a.started_at.is_some()
    })
    .await;
    agent1.stop().await.expect("clean stop");
    assert!(
        process_alive(pid),
        "a graceful stop leaves the attempt running"
    );
    let a1 = attempt(&get_job(&client, "default", "upgrade").await, 1).expect("attempt 1");
    assert!(a1.stopped_at.is_none(), "and does not report it: {a1:?}");

    let agent2 = agent(&client);
    std::fs::write(&go, "").expect("go");
    let job = wait_attempt(&client, "upgrade", 1, "the report", |a| {
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
        (Some(0), Some("Completed"), Some("left-running")),
        "{a1:?}"
    );
    agent2.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_with_nothing_left_after_a_restart_is_reported_lost_not_rerun() {
    let s = server_with_crds().await;
    let client = s.client();
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("pid");
    let script = format!("echo $$ > {}; exec sleep 300", pid_file.display());
    let uid = create_job(&client, "default", &process_job("lost", &script))
        .await
        .metadata
        .uid
        .expect("uid");
    let agent1 = agent(&client);
    bind(&client, "default", "lost", NODE, 1).await;
    let pid = read_pid(&pid_file).await;
    let job = wait_attempt(&client, "lost", 1, "startedAt", |a| a.started_at.is_some()).await;
    let started = attempt(&job, 1)
        .and_then(|a| a.started_at)
        .expect("startedAt");
    agent1.crash().await;
    // Everything of it goes: its supervisor (first: it would record the program's end),
    // its processes (the program leads their group) and its state.
    let record = asg_batch::agent::executor::shim::read_json::<
        asg_batch::agent::executor::shim::ShimRecord,
    >(
        &state_dir("lost", &uid, 1).join(asg_batch::agent::executor::shim::SHIM_FILE)
    )
    .expect("the attempt's record");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(record.pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the supervisor");
    let pgid = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid))).expect("pgid");
    nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL).expect("kill");
    std::fs::remove_dir_all(state_dir("lost", &uid, 1)).expect("remove state");
    std::fs::remove_file(&pid_file).expect("remove pid file");

    let agent2 = agent(&client);
    let job = wait_attempt(&client, "lost", 1, "the lost attempt's report", |a| {
        a.stopped_at.is_some()
    })
    .await;
    let a1 = attempt(&job, 1).expect("attempt 1");
    assert_eq!(
        a1.reason.as_ref().map(AttemptReason::as_str),
        Some("StartFailed"),
        "{a1:?}"
    );
    assert_eq!(a1.status_reason.as_deref(), Some(LOST_STATUS_REASON));
    assert_eq!(a1.started_at, Some(started), "startedAt is kept");
    assert_eq!(a1.exit_code, None);
    // The agent has done all it will for the attempt (its heartbeat no longer holds it):
    // it did not run it again.
    eventually(
        "the heartbeat to drop the attempt",
        || get_node(&client, NODE),
        |n| {
            n.as_ref()
                .and_then(|n| n.status.as_ref())
                .is_some_and(|s| s.running_attempts.is_empty())
        },
    )
    .await;
    assert!(!pid_file.exists(), "attempt 1 was started again");
    agent2.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_the_definition_with_aws_batch_variables() {
    let s = server_with_crds().await;
    let client = s.client();
    let agent = agent(&client);
    let definition = JobDefinition::new(
        "report",
        JobDefinitionSpec {
            template: JobTemplate {
                process: Some(ProcessSpec {
                    command: vec![
                        "sh".into(),
                        "-c".into(),
                        "echo id=$AWS_BATCH_JOB_ID ce=$AWS_BATCH_CE_NAME q=$AWS_BATCH_JQ_NAME a=$AWS_BATCH_JOB_ATTEMPT mode=$MODE".into(),
                    ],
                    env: vec![EnvVar {
                        name: "MODE".into(),
                        value: Some("full".into()),
                        secret_key_ref: None,
                    }],
                    working_dir: None,
                }),
                ..Default::default()
            },
            parameters: Default::default(),
        },
    );
    Api::<JobDefinition>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &definition)
        .await
        .expect("create definition");
    for (name, def) in [("uses-def", "report"), ("no-def", "missing")] {
        let mut job = process_job(name, "unused");
        job.spec.template = JobTemplate::default();
        job.spec.definition_ref =
            Some(asg_batch::api::batch_job::DefinitionRef { name: def.into() });
        create_job(&client, "default", &job).await;
        bind(&client, "default", name, NODE, 1).await;
    }
    let job = wait_attempt(&client, "uses-def", 1, "the report", |a| {
        a.stopped_at.is_some()
    })
    .await;
    let a1 = attempt(&job, 1).expect("attempt");
    assert_eq!(
        (a1.exit_code, a1.reason.as_ref().map(AttemptReason::as_str)),
        (Some(0), Some("Completed"))
    );
    let uid = job.metadata.uid.clone().expect("uid");
    assert_eq!(
        a1.log_tail.as_deref().map(str::trim),
        Some(format!("id={uid} ce=ce-test q=q a=1 mode=full").as_str())
    );

    let job = wait_attempt(&client, "no-def", 1, "the failure", |a| {
        a.stopped_at.is_some()
    })
    .await;
    let a1 = attempt(&job, 1).expect("attempt");
    assert_eq!(
        a1.reason.as_ref().map(AttemptReason::as_str),
        Some("StartFailed")
    );
    assert_eq!(
        a1.status_reason.as_deref(),
        Some("JobDefinition default/missing not found")
    );
    assert!(a1.started_at.is_none());
    agent.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_secrets_and_array_variables_reach_the_process() {
    use k8s_openapi::api::core::v1::Secret;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    let s = server_with_crds().await;
    let client = s.client();
    let agent = agent(&client);

    let mut slow = process_job("slow", "sleep 300");
    slow.spec.template.timeout_seconds = Some(1);
    create_job(&client, "default", &slow).await;
    bind(&client, "default", "slow", NODE, 1).await;

    let mut secret = Secret::default();
    secret.metadata.name = Some("creds".into());
    secret.string_data = Some([("token".to_string(), "s3cret".to_string())].into());
    Api::<Secret>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &secret)
        .await
        .expect("create secret");
    let mut parent = process_job("fan", "true");
    parent.spec.array_properties = Some(asg_batch::api::batch_job::ArrayProperties { size: 3 });
    let parent = create_job(&client, "default", &parent).await;
    let mut child = process_job(
        "fan-1",
        "echo id=$AWS_BATCH_JOB_ID index=$AWS_BATCH_JOB_ARRAY_INDEX size=$AWS_BATCH_JOB_ARRAY_SIZE token=$TOKEN",
    );
    child.spec.array_index = Some(1);
    if let Some(p) = child.spec.template.process.as_mut() {
        p.env.push(EnvVar {
            name: "TOKEN".into(),
            value: None,
            secret_key_ref: Some(asg_batch::api::common::SecretKeyRef {
                name: "creds".into(),
                key: "token".into(),
            }),
        });
    }
    let parent_uid = parent.metadata.uid.clone().expect("uid");
    child.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "asgbatch.io/v1alpha1".into(),
        kind: "BatchJob".into(),
        name: "fan".into(),
        uid: parent_uid.clone(),
        controller: Some(true),
        block_owner_deletion: None,
    }]);
    create_job(&client, "default", &child).await;
    bind(&client, "default", "fan-1", NODE, 1).await;

    let job = wait_attempt(&client, "fan-1", 1, "the child's report", |a| {
        a.stopped_at.is_some()
    })
    .await;
    let a1 = attempt(&job, 1).expect("attempt");
    assert_eq!(
        a1.reason.as_ref().map(AttemptReason::as_str),
        Some("Completed"),
        "{a1:?}"
    );
    assert_eq!(
        a1.log_tail.as_deref().map(str::trim),
        Some(format!("id={parent_uid}:1 index=1 size=3 token=s3cret").as_str())
    );

    let job = wait_attempt(&client, "slow", 1, "the timeout", |a| {
        a.stopped_at.is_some()
    })
    .await;
    let a1 = attempt(&job, 1).expect("attempt");
    assert_eq!(
        a1.reason.as_ref().map(AttemptReason::as_str),
        Some("Timeout"),
        "{a1:?}"
    );
    assert!(a1.started_at.is_some());
    agent.stop().await.expect("clean stop");
}

/// A BatchJob schema whose `spec` accepts anything (so a malformed job can be stored; its
/// CEL rules go with it); the status schema stays (the agent's reports merge into `status.attempts` as a list map).
fn loose_batchjob_spec(
    crd: &mut k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps;
    if crd.spec.names.kind != "BatchJob" {
        return;
    }
    for v in &mut crd.spec.versions {
        let root = v
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut());
        if let Some(root) = root {
            if let Some(props) = root.properties.as_mut() {
                props.insert(
                    "spec".to_owned(),
                    JSONSchemaProps {
                        type_: Some("object".into()),
                        x_kubernetes_preserve_unknown_fields: Some(true),
                        ..JSONSchemaProps::default()
                    },
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_job_bound_here_is_skipped_until_fixed_and_the_others_run() {
    let s = server_with_crds_changed(loose_batchjob_spec).await;
    let client = s.client();
    let raw: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &kube::api::ApiResource::erase::<BatchJob>(&()),
    );
    raw.patch(
        "garbled",
        &kube::api::PatchParams::apply("test"),
        &kube::api::Patch::Apply(serde_json::json!({
            "apiVersion": "asgbatch.io/v1alpha1", "kind": "BatchJob",
            "metadata": {"name": "garbled"},
            "spec": {"queue": 5, "resources": "lots"},
        })),
    )
    .await
    .expect("store a malformed job");
    // Bound here as the controller binds (the typed client cannot read it back).
    raw.patch_status(
        "garbled",
        &kube::api::PatchParams::apply(CONTROLLER).force(),
        &kube::api::Patch::Apply(serde_json::json!({
            "apiVersion": "asgbatch.io/v1alpha1", "kind": "BatchJob",
            "metadata": {"name": "garbled", "namespace": "default"},
            "status": {"phase": "Starting", "node": NODE, "attempt": 1,
                       "attempts": [{"attempt": 1, "node": NODE, "instanceId": NODE}]},
        })),
    )
    .await
    .expect("bind the malformed job");
    let agent = agent(&client);
    // A good job bound after it runs: the agent's watch went past the malformed one.
    create_job(&client, "default", &process_job("fine", "exit 0")).await;
    bind(&client, "default", "fine", NODE, 1).await;
    let fine = wait_attempt(&client, "fine", 1, "the good job's attempt to end", |a| {
        a.stopped_at.is_some()
    })
    .await;
    assert_eq!(attempt(&fine, 1).and_then(|a| a.exit_code), Some(0));
    let garbled = raw.get("garbled").await.expect("get garbled");
    let attempts = &garbled.data["status"]["attempts"];
    assert_eq!(
        attempts[0].get("startedAt"),
        None,
        "a job the agent cannot read is not started: {attempts}"
    );
    assert!(
        garbled.metadata.managed_fields.iter().flatten().all(|m| !m
            .manager
            .as_deref()
            .unwrap_or_default()
            .starts_with("asg-batch-agent")),
        "the agent wrote nothing to it"
    );
    // Fixed, it runs: the agent kept it (as its metadata) and reads it again on change.
    raw.patch(
        "garbled",
        &kube::api::PatchParams::apply("test").force(),
        &kube::api::Patch::Apply(serde_json::json!({
            "apiVersion": "asgbatch.io/v1alpha1", "kind": "BatchJob",
            "metadata": {"name": "garbled"},
            "spec": {"queue": "q", "process": {"command": ["sh", "-c", "exit 4"]}},
        })),
    )
    .await
    .expect("fix the malformed job");
    let fixed = wait_attempt(
        &client,
        "garbled",
        1,
        "the fixed job's attempt to end",
        |a| a.stopped_at.is_some(),
    )
    .await;
    let a1 = attempt(&fixed, 1).expect("attempt 1");
    assert!(a1.started_at.is_some(), "{a1:?}");
    assert_eq!(a1.exit_code, Some(4));
    agent.stop().await.expect("clean stop");
}
