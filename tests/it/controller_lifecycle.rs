//! The controller against the embedded API server, with the test playing the node agent
//! (PROTOCOL.md): what a user sees in `kubectl get bj` for a job's whole life.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use crate::support;
use asg_batch::api::protocol::AttemptReason;

use std::collections::HashMap;
use std::time::Duration;

use asg_batch::api::JobPhase;
use asg_batch::controller::LABEL_NODE;
use support::controller::{Harness, LOCAL_WORLD, apply_yaml, phase, start, test_config};

fn is(p: JobPhase) -> impl Fn(&asg_batch::api::BatchJob) -> bool {
    move |j| j.status.as_ref().and_then(|s| s.phase) == Some(p)
}

/// The local world with its controller (lost-node timeout in seconds) and one
/// heartbeating node n1 (4 cpu, 16Gi).
async fn local_with_n1(lost_node_timeout: u64) -> Harness {
    let mut h = start(
        LOCAL_WORLD,
        test_config(Duration::from_secs(lost_node_timeout)),
        HashMap::new(),
    )
    .await;
    h.register_node("n1", "local", "4", "16Gi").await;
    h
}

/// The jobs node `node`'s agent sees: its field selector (`status.node=<node>`), listed.
async fn watched_by(h: &Harness, node: &str) -> Vec<String> {
    let all: kube::Api<asg_batch::api::BatchJob> = kube::Api::all(h.client.clone());
    let selector = asg_batch::api::protocol::agent_field_selector(node);
    all.list(&kube::api::ListParams::default().fields(&selector))
        .await
        .expect("list by field selector")
        .items
        .into_iter()
        .filter_map(|j| j.metadata.name)
        .collect()
}

/// The legacy node label, which this controller never writes.
fn label(j: &asg_batch::api::BatchJob) -> Option<String> {
    j.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_NODE))
        .cloned()
}

const HELLO: &str = r#"
apiVersion: asgbatch.io/v1alpha1
kind: BatchJob
metadata: {name: hello}
spec:
  queue: q
  process: {command: ["true"]}
  resources: {cpu: 500m, memory: 64Mi}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_from_runnable_to_succeeded() {
    let h = local_with_n1(600).await;
    apply_yaml(&h.client, HELLO).await;

    let j = h
        .wait_job("hello", "Starting on n1", is(JobPhase::Starting))
        .await;
    let s = j.status.clone().unwrap_or_default();
    assert_eq!(s.node.as_deref(), Some("n1"));
    assert_eq!(s.attempt, Some(1));
    assert_eq!(s.attempts[0].node.as_deref(), Some("n1"));
    assert_eq!(s.attempts[0].instance_id.as_deref(), Some("n1"));
    assert_eq!(label(&j), None, "bound by its status alone");
    assert_eq!(watched_by(&h, "n1").await, ["hello"]);
    assert!(watched_by(&h, "n2").await.is_empty());
    let n = h
        .wait_node("n1", "allocated to hello", |n| {
            n.status.as_ref().is_some_and(|s| s.job_count == Some(1))
        })
        .await;
    let ns = n.status.unwrap_or_default();
    assert_eq!(
        ns.allocated.map(|a| (a.cpu.0, a.memory.0)),
        Some(("500m".into(), "64Mi".into()))
    );
    assert_eq!(ns.jobs[0].name, "hello");
    assert!(
        ns.heartbeat_time.is_some(),
        "the agent's heartbeat survives the controller's applies"
    );

    h.agent_started("hello", 1).await;
    let j = h.wait_job("hello", "Running", is(JobPhase::Running)).await;
    assert!(
        j.status
            .as_ref()
            .and_then(|s| s.started_at.as_ref())
            .is_some()
    );

    h.agent_exited("hello", 1, 0).await;
    let j = h
        .wait_job("hello", "Succeeded", is(JobPhase::Succeeded))
        .await;
    assert_eq!(label(&j), None);
    assert!(
        watched_by(&h, "n1").await.is_empty(),
        "an ended job leaves its node's watch"
    );
    let s = j.status.unwrap_or_default();
    assert_eq!(
        s.attempts[0].exit_code,
        Some(0),
        "the agent's fields are kept"
    );
    assert_eq!(
        s.attempts[0].node.as_deref(),
        Some("n1"),
        "and the controller's"
    );
    assert_eq!(s.reason.as_deref(), Some("Completed"));
    assert!(s.stopped_at.is_some());
    h.wait_node("n1", "empty again", |n| {
        n.status
            .as_ref()
            .is_some_and(|s| s.job_count == Some(0) && s.idle_since.is_some())
    })
    .await;
    // A settled job is not rewritten by later passes: one that binds another job (so it ran
    // after `hello` settled) leaves `hello`'s resourceVersion alone.
    let rv = h
        .jobs()
        .get("hello")
        .await
        .expect("hello")
        .metadata
        .resource_version;
    apply_yaml(&h.client, &HELLO.replace("name: hello", "name: later")).await;
    h.wait_job("later", "Starting on n1", is(JobPhase::Starting))
        .await;
    let again = h
        .jobs()
        .get("hello")
        .await
        .expect("hello")
        .metadata
        .resource_version;
    assert_eq!(rv, again, "no status churn");
    h.wait_events("hello", &["Bound", "Started", "Succeeded"])
        .await;
}

const FLAKY: &str = r#"
apiVersion: asgbatch.io/v1alpha1
kind: BatchJob
metadata: {name: flaky}
spec:
  queue: q
  process: {command: ["false"]}
  resources: {cpu: "1", memory: 1Gi}
  retryStrategy:
    attempts: 2
    evaluateOnExit:
      - {onExitCode: "3", action: RETRY}
      - {onExitCode: "*", action: EXIT}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_rule_runs_a_second_attempt_then_the_job_fails() {
    let h = local_with_n1(600).await;
    apply_yaml(&h.client, FLAKY).await;
    h.wait_job("flaky", "attempt 1 Starting", is(JobPhase::Starting))
        .await;
    h.agent_started("flaky", 1).await;
    h.wait_job("flaky", "Running", is(JobPhase::Running)).await;
    h.agent_exited("flaky", 1, 3).await;
    let j = h
        .wait_job("flaky", "attempt 2 Starting", |j| {
            j.status
                .as_ref()
                .is_some_and(|s| s.attempt == Some(2) && s.phase == Some(JobPhase::Starting))
        })
        .await;
    assert_eq!(label(&j), None);
    assert_eq!(watched_by(&h, "n1").await, ["flaky"]);
    h.agent_started("flaky", 2).await;
    h.wait_job("flaky", "Running again", is(JobPhase::Running))
        .await;
    h.agent_exited("flaky", 2, 3).await;
    let j = h.wait_job("flaky", "Failed", is(JobPhase::Failed)).await;
    let s = j.status.clone().unwrap_or_default();
    assert_eq!(s.reason.as_deref(), Some("Error"));
    assert_eq!(
        s.message.as_deref(),
        Some("attempt 2 failed on node n1: exit code 3 (Error); all 2 attempts used")
    );
    let codes: Vec<_> = s
        .attempts
        .iter()
        .map(|a| (a.attempt, a.exit_code))
        .collect();
    assert_eq!(
        codes,
        [(1, Some(3)), (2, Some(3))],
        "both attempts keep their reports"
    );
    assert!(label(&j).is_none());
    assert!(watched_by(&h, "n1").await.is_empty());
    h.wait_events("flaky", &["Retrying", "Failed"]).await;
}

const CHAIN: &str = r#"
apiVersion: asgbatch.io/v1alpha1
kind: BatchJob
metadata: {name: extract}
spec:
  queue: q
  process: {command: ["true"]}
  resources: {cpu: "1", memory: 1Gi}
---
apiVersion: asgbatch.io/v1alpha1
kind: BatchJob
metadata: {name: load}
spec:
  queue: q
  process: {command: ["true"]}
  resources: {cpu: "1", memory: 1Gi}
  dependsOn: [{jobName: extract}]
---
apiVersion: asgbatch.io/v1alpha1
kind: BatchJob
metadata: {name: broken}
spec:
  queue: q
  process: {command: ["false"]}
  resources: {cpu: "1", memory: 1Gi}
---
apiVersion: asgbatch.io/v1alpha1
kind: BatchJob
metadata: {name: after-broken}
spec:
  queue: q
  process: {command: ["true"]}
  resources: {cpu: "1", memory: 1Gi}
  dependsOn: [{jobName: broken}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependents_wait_for_success_and_fail_with_their_dependency() {
    let h = local_with_n1(600).await;
    apply_yaml(&h.client, CHAIN).await;
    let load = h.wait_job("load", "Pending", is(JobPhase::Pending)).await;
    assert_eq!(
        load.status.and_then(|s| s.message).as_deref(),
        Some("waiting on dependency default/extract")
    );
    h.wait_job("extract", "Starting", is(JobPhase::Starting))
        .await;
    h.wait_job("broken", "Starting", is(JobPhase::Starting))
        .await;
    h.agent_started("extract", 1).await;
    h.agent_started("broken", 1).await;
    h.agent_exited("broken", 1, 1).await;
    let j = h
        .wait_job("after-broken", "Failed", is(JobPhase::Failed))
        .await;
    let s = j.status.unwrap_or_default();
    assert_eq!(s.reason.as_deref(), Some("DependencyFailed"));
    assert_eq!(
        s.message.as_deref(),
        Some("dependency default/broken failed")
    );
    // load still waits while extract runs, then starts once it succeeded.
    assert_eq!(phase(&h.jobs().get("load").await.expect("load")), "Pending");
    h.agent_exited("extract", 1, 0).await;
    h.wait_job(
        "load",
        "Starting after extract succeeded",
        is(JobPhase::Starting),
    )
    .await;
}

const ARRAY: &str = r#"
apiVersion: asgbatch.io/v1alpha1
kind: BatchJob
metadata: {name: sweep}
spec:
  queue: q
  process: {command: ["true"]}
  resources: {cpu: "1", memory: 1Gi}
  arrayProperties: {size: 3}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_array_job_gets_three_children_and_counts_them() {
    let h = local_with_n1(600).await;
    apply_yaml(&h.client, ARRAY).await;
    let p = h
        .wait_job("sweep", "3 children starting", |j| {
            j.status
                .as_ref()
                .and_then(|s| s.array_status.as_ref())
                .is_some_and(|a| a.size == 3 && a.starting == 3)
        })
        .await;
    assert_eq!(phase(&p), "Running");
    for i in 0..3 {
        let c = h.jobs().get(&format!("sweep-{i}")).await.expect("child");
        assert_eq!(c.spec.array_index, Some(i));
        assert_eq!(
            c.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("asgbatch.io/array-parent"))
                .map(String::as_str),
            Some("sweep")
        );
        assert_eq!(
            c.metadata
                .owner_references
                .as_ref()
                .map(|o| o[0].name.as_str()),
            Some("sweep")
        );
        h.agent_started(&format!("sweep-{i}"), 1).await;
        h.agent_exited(&format!("sweep-{i}"), 1, 0).await;
    }
    let p = h
        .wait_job("sweep", "Succeeded", is(JobPhase::Succeeded))
        .await;
    assert_eq!(
        p.status.and_then(|s| s.array_status).map(|a| a.succeeded),
        Some(3)
    );
}

/// A job, and array children, that the pass first seeing them can bind are written once,
/// bound (`Starting`), never `Runnable` first: every write of them as a watch sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_fits_at_once_is_written_bound_without_a_runnable_write() {
    use futures::{StreamExt, TryStreamExt};
    use kube::api::{ListParams, WatchEvent, WatchParams};
    let h = local_with_n1(600).await;
    let api = h.jobs();
    let rv = api
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("resourceVersion");
    let mut stream = api
        .watch(&WatchParams::default(), &rv)
        .await
        .expect("watch")
        .boxed();
    apply_yaml(&h.client, HELLO).await;
    apply_yaml(&h.client, ARRAY).await;
    let want = ["hello", "sweep-0", "sweep-1", "sweep-2"];
    let mut writes: Vec<(String, String)> = Vec::new();
    let seen = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(e) = stream.try_next().await.expect("watch event") {
            if let WatchEvent::Added(j) | WatchEvent::Modified(j) = e {
                writes.push((j.metadata.name.clone().unwrap_or_default(), phase(&j)));
            }
            if want
                .iter()
                .all(|n| writes.iter().any(|(w, p)| w == n && p == "Starting"))
            {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(seen, Ok(true), "all four bound: {writes:?}");
    for n in want {
        // Created (and labelled with its node just before the status write), then bound.
        let mut phases: Vec<&str> = writes
            .iter()
            .filter(|(w, _)| w == n)
            .map(|(_, p)| p.as_str())
            .collect();
        phases.dedup();
        assert_eq!(phases, ["-", "Starting"], "{n}: one status write, bound");
    }
    let j = api.get("hello").await.expect("hello");
    let s = j.status.unwrap_or_default();
    assert_eq!(s.runnable_since, None);
    let c = s
        .conditions
        .iter()
        .find(|c| c.type_ == "Scheduled")
        .expect("Scheduled");
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Bound"));
    h.wait_events("hello", &["Bound"]).await;
}

const BIG_ARRAY: &str = r#"
apiVersion: asgbatch.io/v1alpha1
kind: BatchJob
metadata: {name: sweep}
spec:
  queue: q
  process: {command: ["true"]}
  resources: {cpu: "1", memory: 1Gi}
  arrayProperties: {size: 10}
---
apiVersion: asgbatch.io/v1alpha1
kind: BatchJob
metadata: {name: after}
spec:
  queue: q
  process: {command: ["true"]}
  resources: {cpu: "1", memory: 1Gi}
  dependsOn: [{jobName: sweep}]
"#;

/// The children of `sweep` that exist, by index, with their uids.
async fn sweep_children(h: &Harness) -> std::collections::BTreeMap<u32, String> {
    let lp = kube::api::ListParams::default().labels("asgbatch.io/array-parent=sweep");
    h.jobs()
        .list(&lp)
        .await
        .expect("list children")
        .items
        .into_iter()
        .map(|c| {
            (
                c.spec.array_index.expect("arrayIndex"),
                c.metadata.uid.expect("uid"),
            )
        })
        .collect()
}

fn counts(j: &asg_batch::api::BatchJob) -> Option<(u32, u32, u32, u32, u32)> {
    let a = j.status.as_ref()?.array_status.as_ref()?;
    Some((a.pending, a.runnable, a.starting, a.running, a.succeeded))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_array_creates_its_children_in_batches_and_a_restarted_controller_creates_the_rest_once()
{
    let config = asg_batch::controller::ControllerConfig {
        array_children_waiting: 4,
        ..test_config(Duration::from_secs(600))
    };
    let mut h = start(
        support::controller::LOCAL_WORLD,
        config.clone(),
        HashMap::new(),
    )
    .await;
    h.register_node("n1", "local", "4", "16Gi").await;
    apply_yaml(&h.client, BIG_ARRAY).await;
    // Four children bound (the node holds four), four more created and waiting: the window
    // is full, the last two are not created yet and count as pending.
    h.wait_job("sweep", "4 starting, 4 runnable, 2 pending", |j| {
        counts(j) == Some((2, 4, 4, 0, 0))
    })
    .await;
    let first = sweep_children(&h).await;
    assert_eq!(
        first.keys().copied().collect::<Vec<_>>(),
        (0..8).collect::<Vec<_>>()
    );
    let after = h.jobs().get("after").await.expect("after");
    assert_eq!(phase(&after), "Pending", "the array has not succeeded");

    // A controller restarted here creates the rest, each once.
    h.kill_controller(0).await;
    h.add_controller(config, HashMap::new());
    for i in 0..4 {
        h.agent_started(&format!("sweep-{i}"), 1).await;
        h.agent_exited(&format!("sweep-{i}"), 1, 0).await;
    }
    for i in 4..8 {
        h.wait_job(&format!("sweep-{i}"), "Starting", is(JobPhase::Starting))
            .await;
        h.agent_started(&format!("sweep-{i}"), 1).await;
        h.agent_exited(&format!("sweep-{i}"), 1, 0).await;
    }
    h.wait_job("sweep", "8 succeeded, 2 starting", |j| {
        counts(j) == Some((0, 0, 2, 0, 8))
    })
    .await;
    let after = h.jobs().get("after").await.expect("after");
    assert_eq!(
        phase(&after),
        "Pending",
        "every child created so far succeeded, but the array has not"
    );
    for i in 8..10 {
        h.agent_started(&format!("sweep-{i}"), 1).await;
        h.agent_exited(&format!("sweep-{i}"), 1, 0).await;
    }
    let p = h
        .wait_job("sweep", "Succeeded", is(JobPhase::Succeeded))
        .await;
    assert_eq!(counts(&p), Some((0, 0, 0, 0, 10)));
    let all = sweep_children(&h).await;
    assert_eq!(all.len(), 10);
    for (i, uid) in &first {
        assert_eq!(all.get(i), Some(uid), "child {i} was created once");
    }
    h.wait_job(
        "after",
        "bound once the array succeeded",
        is(JobPhase::Starting),
    )
    .await;
    h.wait_events("sweep", &["ChildrenCreated"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_too_large_job_says_why_it_is_not_running() {
    let h = local_with_n1(600).await;
    apply_yaml(
        &h.client,
        r#"
apiVersion: asgbatch.io/v1alpha1
kind: BatchJob
metadata: {name: huge}
spec:
  queue: q
  process: {command: ["true"]}
  resources: {cpu: "1", memory: 64Gi}
"#,
    )
    .await;
    let j = h
        .wait_job("huge", "a reason", |j| {
            j.status.as_ref().is_some_and(|s| s.message.is_some())
        })
        .await;
    let s = j.status.unwrap_or_default();
    assert_eq!(s.phase, Some(JobPhase::Runnable));
    assert_eq!(
        s.message.as_deref(),
        Some("needs 64Gi memory, largest instance of ce/local has 16Gi")
    );
    let c = s
        .conditions
        .iter()
        .find(|c| c.type_ == "Scheduled")
        .expect("condition");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "TooLarge")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_node_without_a_fleet_keeps_its_attempt_until_its_batchnode_is_deleted_then_retries_it()
 {
    let mut h = local_with_n1(2).await;
    apply_yaml(
        &h.client,
        r#"
apiVersion: asgbatch.io/v1alpha1
kind: BatchJob
metadata: {name: survivor}
spec:
  queue: q
  process: {command: ["true"]}
  resources: {cpu: "1", memory: 1Gi}
  retryStrategy:
    attempts: 2
    evaluateOnExit: [{onReason: NodeLost, action: RETRY}]
"#,
    )
    .await;
    h.wait_job("survivor", "Starting", is(JobPhase::Starting))
        .await;
    h.agent_started("survivor", 1).await;
    h.wait_job("survivor", "Running", is(JobPhase::Running))
        .await;
    h.stop_heartbeat("n1");
    h.register_node("n2", "local", "4", "16Gi").await;
    // Lost, but nothing confirms n1 stopped running the attempt (no fleet to fence it):
    // the job stays on n1 and says what it waits for.
    h.wait_node("n1", "Lost", |n| {
        n.status.as_ref().and_then(|s| s.phase) == Some(asg_batch::api::NodePhase::Lost)
    })
    .await;
    let j = h
        .wait_job(
            "survivor",
            "waiting for n1's BatchNode to be deleted",
            |j| {
                j.status.as_ref().is_some_and(|s| {
                    s.message
                        .as_deref()
                        .is_some_and(|m| m.contains("retried once the BatchNode is deleted"))
                })
            },
        )
        .await;
    let s = j.status.clone().unwrap_or_default();
    assert_eq!((s.attempt, s.node.as_deref()), (Some(1), Some("n1")));
    // The operator confirms the instance is gone by deleting its BatchNode.
    h.nodes()
        .delete("n1", &Default::default())
        .await
        .expect("delete n1");
    let j = h
        .wait_job("survivor", "attempt 2 on n2", |j| {
            j.status
                .as_ref()
                .is_some_and(|s| s.attempt == Some(2) && s.node.as_deref() == Some("n2"))
        })
        .await;
    let s = j.status.clone().unwrap_or_default();
    assert_eq!(
        s.attempts[0].reason.as_ref().map(AttemptReason::as_str),
        Some("NodeLost")
    );
    assert!(s.attempts[0].stopped_at.is_some());
    assert_eq!(label(&j), None);
    assert_eq!(watched_by(&h, "n2").await, ["survivor"]);
    assert!(watched_by(&h, "n1").await.is_empty(), "off the lost node");
}
