//! Cancel and terminate (`spec.cancel`, `asg-batch cancel`), parameters (`Ref::name`) and
//! a queue's `jobStateTimeLimitActions`, end to end: the controller in-process and a real
//! node agent running process jobs, against the embedded API server (or the real
//! kube-apiserver with `ASG_BATCH_TEST_SERVER=kube-apiserver`). Ground truth is what the
//! jobs' processes did (files they write, their pids as the OS sees them).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use crate::support;
use asg_batch::api::protocol::AttemptReason;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use asg_batch::api::{BatchJob, JobPhase};
use kube::api::{Patch, PatchParams};
use serde_json::json;
use support::agent::{TestAgent, config, process_alive, process_executor};
use support::controller::{Harness, LOCAL_WORLD, apply_yaml, start, test_config};

const NODE: &str = "i-0wlctl";

/// Queue `dev` (what the examples use) on `local`.
const DEV_QUEUE: &str = r#"
apiVersion: asgbatch.io/v1alpha1
kind: JobQueue
metadata: {name: dev}
spec:
  computeEnvironments: [local]
"#;

fn example(name: &str) -> String {
    std::fs::read_to_string(support::repo_root().join("manifests/examples").join(name))
        .expect("example")
}

/// The controller and one real agent (4 cpu, 8Gi, process executor) in `local`, queues
/// `q` and `dev`.
async fn world(extra: &str) -> (Harness, TestAgent) {
    let h = start(
        &format!("{LOCAL_WORLD}\n---\n{DEV_QUEUE}\n---\n{extra}"),
        test_config(Duration::from_secs(600)),
        HashMap::new(),
    )
    .await;
    let agent = TestAgent::start(
        h.client.clone(),
        config(NODE, "local"),
        Arc::new(process_executor()),
        None,
    );
    (h, agent)
}

/// A process job of queue `q` running `sh -c script`.
fn job(name: &str, cpu: &str, script: &str, extra: &str) -> String {
    format!(
        r#"
apiVersion: asgbatch.io/v1alpha1
kind: BatchJob
metadata: {{name: {name}}}
spec:
  queue: q
  process: {{command: ["sh", "-c", {script:?}]}}
  resources: {{cpu: "{cpu}", memory: 1Gi}}
{extra}
"#
    )
}

fn is(p: JobPhase) -> impl Fn(&BatchJob) -> bool {
    move |j| j.status.as_ref().and_then(|s| s.phase) == Some(p)
}

fn reason(j: &BatchJob) -> Option<&str> {
    j.status.as_ref().and_then(|s| s.reason.as_deref())
}

fn message(j: &BatchJob) -> Option<&str> {
    j.status.as_ref().and_then(|s| s.message.as_deref())
}

async fn read_pid(path: &Path) -> i32 {
    let text = support::eventually(
        &format!("{}", path.display()),
        || async { std::fs::read_to_string(path).unwrap_or_default() },
        |t| t.trim().parse::<i32>().is_ok(),
    )
    .await;
    text.trim().parse().expect("pid")
}

async fn gone(pid: i32) {
    support::eventually(
        &format!("process {pid} to be gone"),
        || async { process_alive(pid) },
        |alive| !alive,
    )
    .await;
}

/// `asg-batch cancel` with the harness's kubeconfig.
fn cancel_cli(h: &Harness, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_asg-batch"))
        .arg("cancel")
        .args(args)
        .env("KUBECONFIG", h.server.kubeconfig())
        .output()
        .expect("run asg-batch cancel");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "asg-batch cancel {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `kubectl patch bj NAME --type merge -p '{"spec":{"cancel":{"message":...}}}'`, as the
/// README documents it.
async fn cancel_patch(h: &Harness, name: &str, message: &str) {
    h.jobs()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"cancel": {"message": message}}})),
        )
        .await
        .expect("patch spec.cancel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_job_is_cancelled_and_a_running_one_terminated() {
    let (h, agent) = world("").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display();
    // The blocker fills the node; `queued` waits behind it; `after` waits on `queued`.
    apply_yaml(
        &h.client,
        &job(
            "blocker",
            "4",
            &format!("echo $$ > {d}/blocker.pid; exec sleep 600"),
            "  retryStrategy: {attempts: 3}",
        ),
    )
    .await;
    let pid = read_pid(&dir.path().join("blocker.pid")).await;
    h.wait_job("blocker", "Running", is(JobPhase::Running))
        .await;
    apply_yaml(
        &h.client,
        &format!(
            "{}\n---\n{}",
            job("queued", "4", &format!("touch {d}/queued.ran"), ""),
            job(
                "after",
                "1",
                &format!("touch {d}/after.ran"),
                "  dependsOn: [{jobName: queued}]"
            ),
        ),
    )
    .await;
    h.wait_job("queued", "Runnable", is(JobPhase::Runnable))
        .await;

    let said = cancel_cli(&h, &["queued", "--reason", "wrong input file"]);
    assert!(said.contains("default/queued: cancel requested"), "{said}");
    let q = h.wait_job("queued", "Failed", is(JobPhase::Failed)).await;
    assert_eq!(reason(&q), Some("Cancelled"));
    assert_eq!(message(&q), Some("wrong input file"));
    let st = q.status.clone().unwrap_or_default();
    assert!(st.attempts.is_empty() && st.attempt.is_none(), "{st:?}");
    assert!(st.stopped_at.is_some());
    let a = h.wait_job("after", "Failed", is(JobPhase::Failed)).await;
    assert_eq!(reason(&a), Some("DependencyFailed"));
    // Set once: a second request changes nothing, and the API server refuses an edit.
    let said = cancel_cli(&h, &["queued", "--reason", "another"]);
    assert!(
        said.contains("already cancelled (wrong input file)"),
        "{said}"
    );
    let edit = h
        .jobs()
        .patch(
            "queued",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"cancel": {"message": "changed"}}})),
        )
        .await;
    let err = edit.expect_err("spec.cancel is immutable");
    assert!(
        err.to_string().contains("cancel cannot be changed"),
        "{err}"
    );

    // Terminate the running blocker: its process is stopped, it is not retried.
    assert!(process_alive(pid));
    let said = cancel_cli(&h, &["blocker", "--reason", "superseded by blocker-2"]);
    assert!(said.contains("default/blocker: terminating"), "{said}");
    let b = h.wait_job("blocker", "Failed", is(JobPhase::Failed)).await;
    gone(pid).await;
    assert_eq!(reason(&b), Some("Terminated"));
    assert_eq!(message(&b), Some("superseded by blocker-2"));
    let st = b.status.clone().unwrap_or_default();
    assert_eq!(st.attempt, Some(1), "never retried: {st:?}");
    assert_eq!(st.attempts.len(), 1);
    let a1 = &st.attempts[0];
    assert!(a1.started_at.is_some() && a1.stopped_at.is_some(), "{a1:?}");
    assert_eq!(
        a1.reason.as_ref().map(AttemptReason::as_str),
        Some("Cancelled"),
        "{a1:?}"
    );
    assert!(
        a1.status_reason
            .as_deref()
            .is_some_and(|r| r.contains("spec.cancel")),
        "{a1:?}"
    );
    // (`TerminatingJob` too, when a pass sees it still running after the request.)
    h.wait_events("blocker", &["Terminated"]).await;

    // The node is free again: a later job runs there, and the cancelled one never did.
    apply_yaml(
        &h.client,
        &job("later", "4", &format!("touch {d}/later.ran"), ""),
    )
    .await;
    h.wait_job("later", "Succeeded", is(JobPhase::Succeeded))
        .await;
    assert!(dir.path().join("later.ran").exists());
    assert!(!dir.path().join("queued.ran").exists(), "queued never ran");
    assert!(!dir.path().join("after.ran").exists(), "after never ran");
    let q2 = h.jobs().get("queued").await.expect("queued");
    assert_eq!(q2.status, q.status, "the record stays as it was");

    // The example: a job applied already cancelled never runs.
    apply_yaml(&h.client, &example("cancel-job.yaml")).await;
    let e = h
        .wait_job("rerun-2026-11-29", "Failed", is(JobPhase::Failed))
        .await;
    assert_eq!(reason(&e), Some("Cancelled"));
    assert_eq!(message(&e), Some("superseded by the 11-30 run"));
    assert!(e.status.as_ref().is_some_and(|s| s.attempts.is_empty()));
    agent.stop().await.expect("agent stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_an_array_parent_cancels_its_children_and_fails_dependents() {
    let (h, agent) = world("").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display();
    // Three children of 2 cpu on a 4-cpu node: two run, one waits.
    apply_yaml(
        &h.client,
        &format!(
            "{}\n---\n{}",
            job(
                "render",
                "2",
                &format!("echo $$ > {d}/child-$AWS_BATCH_JOB_ARRAY_INDEX.pid; exec sleep 600"),
                "  arrayProperties: {size: 3}",
            ),
            job(
                "publish",
                "1",
                &format!("touch {d}/publish.ran"),
                "  dependsOn: [{jobName: render}]"
            ),
        ),
    )
    .await;
    let running = support::eventually(
        "two children running",
        || async {
            let jobs = h.jobs().list(&Default::default()).await.expect("list");
            jobs.items
                .into_iter()
                .filter(|j| j.spec.array_index.is_some() && is(JobPhase::Running)(j))
                .collect::<Vec<_>>()
        },
        |r| r.len() == 2,
    )
    .await;
    let mut pids = Vec::new();
    for c in &running {
        let i = c.spec.array_index.expect("index");
        pids.push(read_pid(&dir.path().join(format!("child-{i}.pid"))).await);
    }
    let waiting = (0..3)
        .find(|i| !running.iter().any(|c| c.spec.array_index == Some(*i)))
        .expect("one child waits");

    cancel_patch(&h, "render", "bad render settings").await;
    let p = h.wait_job("render", "Failed", is(JobPhase::Failed)).await;
    assert_eq!(reason(&p), Some("Cancelled"));
    assert_eq!(message(&p), Some("bad render settings"));
    for c in &running {
        let name = c.metadata.name.clone().expect("name");
        let j = h.wait_job(&name, "Failed", is(JobPhase::Failed)).await;
        assert_eq!(reason(&j), Some("Terminated"), "{name}");
        assert_eq!(
            message(&j),
            Some("array parent default/render cancelled: bad render settings"),
            "{name}"
        );
        assert!(j.spec.cancel.is_some(), "{name} was marked cancelled");
    }
    for pid in pids {
        gone(pid).await;
    }
    let w = h
        .wait_job(&format!("render-{waiting}"), "Failed", is(JobPhase::Failed))
        .await;
    assert_eq!(reason(&w), Some("Cancelled"));
    assert!(
        w.status.as_ref().is_some_and(|s| s.attempts.is_empty()),
        "never bound: {:?}",
        w.status
    );
    let pb = h.wait_job("publish", "Failed", is(JobPhase::Failed)).await;
    assert_eq!(reason(&pb), Some("DependencyFailed"));
    let p = h
        .wait_job("render", "every child counted", |j| {
            j.status
                .as_ref()
                .and_then(|s| s.array_status.as_ref())
                .is_some_and(|a| a.failed == 3)
        })
        .await;
    assert_eq!(reason(&p), Some("Cancelled"), "the parent's record stays");
    assert!(!dir.path().join(format!("child-{waiting}.pid")).exists());
    assert!(!dir.path().join("publish.ran").exists());
    agent.stop().await.expect("agent stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_are_substituted_into_the_pinned_template_and_run() {
    let (h, agent) = world(&example("parameters.yaml")).await;
    let j = h
        .wait_job("encode-intro", "Succeeded", is(JobPhase::Succeeded))
        .await;
    let st = j.status.clone().unwrap_or_default();
    let command = st
        .template
        .as_ref()
        .and_then(|t| t.process.as_ref())
        .map(|p| p.command.clone())
        .unwrap_or_default();
    assert_eq!(
        command,
        expected_command(),
        "the job's values, its codec over the definition's, the definition's preset, an unknown Ref kept"
    );
    let tail = st.attempts[0].log_tail.clone().unwrap_or_default();
    assert!(
        tail.contains("encoding intro.mov to intro.mp4 with h265 --preset=fast at Ref::quality"),
        "{tail}"
    );
    agent.stop().await.expect("agent stops");
}

/// What `manifests/examples/parameters.yaml`'s job runs once resolved.
fn expected_command() -> Vec<String> {
    [
        "sh",
        "-c",
        "echo encoding $0 to $1 with $2 $3 at Ref::quality",
        "intro.mov",
        "intro.mp4",
        "h265",
        "--preset=fast",
    ]
    .map(String::from)
    .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_stuck_runnable_past_its_queues_time_limit_is_cancelled() {
    let h = start(
        r#"
apiVersion: asgbatch.io/v1alpha1
kind: ComputeEnvironment
metadata: {name: local}
spec:
  local: {executor: process}
  minInstances: 0
  maxInstances: 3
  instanceShape: {cpu: "4", memory: 16Gi}
---
apiVersion: asgbatch.io/v1alpha1
kind: JobQueue
metadata: {name: q}
spec:
  computeEnvironments: [local]
  jobStateTimeLimitActions:
  - reason: "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT"
    state: RUNNABLE
    maxTimeSeconds: 2
    action: CANCEL
"#,
        test_config(Duration::from_secs(600)),
        HashMap::new(),
    )
    .await;
    apply_yaml(&h.client, &job("huge", "64", "true", "")).await;
    let r = h
        .wait_job("huge", "Runnable, too large", |j| {
            is(JobPhase::Runnable)(j)
                && j.status.as_ref().is_some_and(|s| {
                    s.runnable_since.is_some()
                        && s.conditions.iter().any(|c| c.reason == "TooLarge")
                })
        })
        .await;
    let since = r.status.and_then(|s| s.runnable_since).expect("since");
    let j = h.wait_job("huge", "Failed", is(JobPhase::Failed)).await;
    let st = j.status.clone().unwrap_or_default();
    assert_eq!(st.reason.as_deref(), Some("Cancelled"));
    let msg = st.message.clone().unwrap_or_default();
    assert!(
        msg.starts_with(
            "Canceled by JobStateTimeLimit action due to reason: MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT (jq/q jobStateTimeLimitActions[0]"
        ) && msg.contains("TooLarge"),
        "{msg}"
    );
    let stopped = st.stopped_at.expect("stoppedAt");
    assert!(
        stopped.0.as_second() - since.0.as_second() >= 2,
        "cancelled only after maxTimeSeconds: {since:?} → {stopped:?}"
    );
    assert!(st.runnable_since.is_none());
    h.wait_events("huge", &["Cancelled"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_job_gets_sigterm_and_its_grace_period() {
    let (h, agent) = world("").await;
    // The example traps SIGTERM, saves a checkpoint and exits 143 (grace: 120 s).
    apply_yaml(&h.client, &example("graceful-stop.yaml")).await;
    h.wait_job("checkpointing-etl", "Running", is(JobPhase::Running))
        .await;
    // Its output says `working` once the trap is in place (the shim's output file).
    let state = process_executor().attempt_dir("");
    support::eventually(
        "the example's output to say `working`",
        || async {
            std::fs::read_dir(&state)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with("asgb-checkpointing-etl-")
                })
                .any(|e| {
                    std::fs::read_to_string(e.path().join("output"))
                        .is_ok_and(|o| o.contains("working"))
                })
        },
        |ready| *ready,
    )
    .await;
    let said = cancel_cli(&h, &["checkpointing-etl", "--reason", "maintenance window"]);
    assert!(said.contains("terminating"), "{said}");
    let j = h
        .wait_job("checkpointing-etl", "Failed", is(JobPhase::Failed))
        .await;
    assert_eq!(reason(&j), Some("Terminated"));
    assert_eq!(message(&j), Some("maintenance window"));
    let st = j.status.clone().unwrap_or_default();
    assert_eq!(
        st.template
            .as_ref()
            .and_then(|t| t.termination_grace_period_seconds),
        Some(120),
        "pinned: {st:?}"
    );
    let a1 = &st.attempts[0];
    assert_eq!(
        a1.reason.as_ref().map(AttemptReason::as_str),
        Some("Cancelled"),
        "{a1:?}"
    );
    assert_eq!(
        a1.exit_code,
        Some(143),
        "its own exit on SIGTERM, not a SIGKILL (137): {a1:?}"
    );
    assert!(
        a1.log_tail
            .as_deref()
            .is_some_and(|t| t.contains("SIGTERM: checkpoint saved")),
        "{a1:?}"
    );
    agent.stop().await.expect("agent stops");
}
