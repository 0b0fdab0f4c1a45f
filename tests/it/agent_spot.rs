//! Spot interruption notices and rebalance recommendations, end to end: a local IMDSv2 stub
//! (token flow; `spot/instance-action` and `events/recommendations/rebalance` answer 404
//! until the test posts a notice), the controller in-process and two real node agents
//! running process jobs, against the embedded API server (or the real kube-apiserver with
//! `ASG_BATCH_TEST_SERVER=kube-apiserver`). Ground truth is what the jobs' processes did.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use crate::support;
use asg_batch::api::protocol::AttemptReason;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use asg_batch::agent::identity::ImdsOptions;
use asg_batch::agent::spot::SpotWatch;
use asg_batch::api::batch_node::InterruptionKind;
use asg_batch::api::{BatchJob, BatchNode, JobPhase, NodePhase};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, put};
use support::agent::{TestAgent, config, process_alive, process_executor};
use support::controller::{Harness, LOCAL_WORLD, apply_yaml, start, test_config};

const TOKEN: &str = "spot-tok";
const SPOT: &str = "i-0spot";
const OTHER: &str = "i-0ondemand";

/// What the stub answers: `None` is a 404, as on an instance with no notice.
#[derive(Default)]
struct Notices {
    instance_action: Option<String>,
    rebalance: Option<String>,
}

type Shared = Arc<Mutex<Notices>>;

/// Serves IMDSv2 for the Spot paths; returns its URL and the notices to set.
async fn imds_stub() -> (String, Shared) {
    let notices: Shared = Arc::default();
    let token = put(|| async {
        let mut h = HeaderMap::new();
        h.insert(
            "x-aws-ec2-metadata-token-ttl-seconds",
            "21600".parse().expect("header"),
        );
        (h, TOKEN.to_string())
    });
    let answer = |pick: fn(&Notices) -> Option<String>| {
        get(
            move |State(n): State<Shared>, headers: HeaderMap| async move {
                if headers
                    .get("x-aws-ec2-metadata-token")
                    .is_none_or(|v| v != TOKEN)
                {
                    return (StatusCode::UNAUTHORIZED, String::new());
                }
                match pick(&n.lock().unwrap()) {
                    Some(body) => (StatusCode::OK, body),
                    None => (StatusCode::NOT_FOUND, String::new()),
                }
            },
        )
    };
    let app = Router::new()
        .route("/latest/api/token", token)
        .route(
            "/latest/meta-data/spot/instance-action",
            answer(|n| n.instance_action.clone()),
        )
        .route(
            "/latest/meta-data/events/recommendations/rebalance",
            answer(|n| n.rebalance.clone()),
        )
        .with_state(notices.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), notices)
}

/// The controller, and the agent of Spot node `SPOT` watching the stub every 200 ms.
async fn world() -> (Harness, TestAgent, Shared) {
    let h = start(
        LOCAL_WORLD,
        test_config(Duration::from_secs(600)),
        HashMap::new(),
    )
    .await;
    let (endpoint, notices) = imds_stub().await;
    let spot = TestAgent::start(
        h.client.clone(),
        config(SPOT, "local").with_spot_watch(Some(SpotWatch {
            imds: ImdsOptions {
                endpoint,
                timeout: Duration::from_secs(2),
            },
            interval: Duration::from_millis(200),
        })),
        Arc::new(process_executor()),
        None,
    );
    h.wait_node(SPOT, "Ready", |n| phase(n) == Some(NodePhase::Ready))
        .await;
    (h, spot, notices)
}

/// The second node, without Spot notices.
async fn other_agent(h: &Harness) -> TestAgent {
    let a = TestAgent::start(
        h.client.clone(),
        config(OTHER, "local"),
        Arc::new(process_executor()),
        None,
    );
    h.wait_node(OTHER, "Ready", |n| phase(n) == Some(NodePhase::Ready))
        .await;
    a
}

fn phase(n: &BatchNode) -> Option<NodePhase> {
    n.status.as_ref().and_then(|s| s.phase)
}

fn job(name: &str, script: &str, extra: &str) -> String {
    format!(
        r#"
apiVersion: asgbatch.io/v1alpha1
kind: BatchJob
metadata: {{name: {name}}}
spec:
  queue: q
  process: {{command: ["sh", "-c", {script:?}]}}
  resources: {{cpu: "1", memory: 1Gi}}
{extra}
"#
    )
}

fn is(p: JobPhase) -> impl Fn(&BatchJob) -> bool {
    move |j| j.status.as_ref().and_then(|s| s.phase) == Some(p)
}

fn node_of(j: &BatchJob) -> Option<&str> {
    j.status.as_ref().and_then(|s| s.node.as_deref())
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_recommendation_drains_the_node_and_new_work_goes_elsewhere() {
    let (h, spot, notices) = world().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display();
    // Work already running on the Spot node when the recommendation comes.
    apply_yaml(
        &h.client,
        &job(
            "busy",
            &format!("echo $$ > {d}/busy.pid; while [ ! -f {d}/go ]; do sleep 0.1; done"),
            "",
        ),
    )
    .await;
    let pid = read_pid(&dir.path().join("busy.pid")).await;
    let busy = h.wait_job("busy", "Running", is(JobPhase::Running)).await;
    assert_eq!(node_of(&busy), Some("i-0spot"));
    let other = other_agent(&h).await;

    notices.lock().unwrap().rebalance = Some(r#"{"noticeTime": "2026-11-30T10:00:00Z"}"#.into());
    let n = h
        .wait_node(SPOT, "Draining with the interruption", |n| {
            phase(n) == Some(NodePhase::Draining)
                && n.status.as_ref().is_some_and(|s| {
                    s.interruption.is_some() && s.accepting_attempts == Some(false)
                })
        })
        .await;
    let i = n.status.and_then(|s| s.interruption).expect("interruption");
    assert_eq!(i.kind, InterruptionKind::Rebalance);
    assert_eq!(i.time.as_deref(), Some("2026-11-30T10:00:00Z"));
    assert!(i.action.is_none());
    h.wait_events(SPOT, &["SpotInterruption"]).await;

    // New work is bound to the other node; the running job goes on and finishes.
    apply_yaml(
        &h.client,
        &job("fresh", &format!("touch {d}/fresh.ran"), ""),
    )
    .await;
    let fresh = h
        .wait_job("fresh", "Succeeded", is(JobPhase::Succeeded))
        .await;
    let attempts = fresh.status.map(|s| s.attempts).unwrap_or_default();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].node.as_deref(), Some("i-0ondemand"));
    assert!(dir.path().join("fresh.ran").exists());
    assert!(process_alive(pid), "a recommendation stops nothing");
    std::fs::write(dir.path().join("go"), "").expect("go");
    let busy = h
        .wait_job("busy", "Succeeded", is(JobPhase::Succeeded))
        .await;
    assert_eq!(busy.status.as_ref().and_then(|s| s.attempt), Some(1));
    spot.stop().await.expect("agent stops");
    other.stop().await.expect("agent stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interruption_stops_the_running_attempt_and_the_job_is_retried_elsewhere() {
    let (h, spot, notices) = world().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display();
    // The example (retry on `SpotInterruption*`, exit on anything else), in queue `q`,
    // with a command whose first attempt records its pid and runs until stopped and whose
    // second succeeds.
    let mut doc = support::manifests::read_documents(
        &support::repo_root().join("manifests/examples/spot-retry.yaml"),
    )
    .remove(0);
    doc["metadata"]["name"] = "victim".into();
    doc["spec"]["queue"] = "q".into();
    doc["spec"]["process"]["command"] = serde_json::json!([
        "sh",
        "-c",
        format!(
            "if [ -f {d}/first ]; then echo $$ > {d}/second; exit 0; fi; \
             touch {d}/first; echo $$ > {d}/victim.pid; exec sleep 600"
        )
    ]);
    apply_yaml(&h.client, &doc.to_string()).await;
    let pid = read_pid(&dir.path().join("victim.pid")).await;
    let v = h.wait_job("victim", "Running", is(JobPhase::Running)).await;
    assert_eq!(node_of(&v), Some("i-0spot"));
    let other = other_agent(&h).await;
    assert!(process_alive(pid));

    notices.lock().unwrap().instance_action =
        Some(r#"{"action": "terminate", "time": "2026-11-30T10:02:00Z"}"#.into());
    support::eventually(
        &format!("process {pid} to be stopped"),
        || async { process_alive(pid) },
        |alive| !alive,
    )
    .await;
    let v = h
        .wait_job("victim", "Succeeded on retry", is(JobPhase::Succeeded))
        .await;
    let st = v.status.clone().expect("status");
    assert_eq!(st.attempt, Some(2), "{st:?}");
    let a1 = &st.attempts[0];
    assert_eq!(a1.node.as_deref(), Some("i-0spot"));
    assert_eq!(
        a1.reason.as_ref().map(AttemptReason::as_str),
        Some("SpotInterruption"),
        "{a1:?}"
    );
    assert!(
        a1.status_reason
            .as_deref()
            .is_some_and(|r| r.contains("interruption notice")),
        "{a1:?}"
    );
    let a2 = &st.attempts[1];
    assert_eq!(
        (
            a2.node.as_deref(),
            a2.reason.as_ref().map(AttemptReason::as_str)
        ),
        (Some("i-0ondemand"), Some("Completed"))
    );
    assert!(dir.path().join("second").exists(), "the retry ran");
    let n = h
        .wait_node(SPOT, "Draining", |n| phase(n) == Some(NodePhase::Draining))
        .await;
    let i = n.status.and_then(|s| s.interruption).expect("interruption");
    assert_eq!(
        (i.kind, i.action.as_deref()),
        (InterruptionKind::InstanceAction, Some("terminate"))
    );
    spot.stop().await.expect("agent stops");
    other.stop().await.expect("agent stops");
}

async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return String::new();
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut out = String::new();
    if s.write_all(req.as_bytes()).await.is_ok() {
        let _ = s.read_to_string(&mut out).await;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_command_watches_the_imds_endpoint_it_is_given() {
    let h = support::controller::start_server(LOCAL_WORLD).await;
    let (endpoint, notices) = imds_stub().await;
    notices.lock().unwrap().rebalance = Some(r#"{"noticeTime": "2026-11-30T09:00:00Z"}"#.into());
    let data = tempfile::tempdir().expect("data dir");
    let metrics_addr = format!("127.0.0.1:{}", support::free_port());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_asg-batch"))
        .args([
            "agent",
            "--compute-environment",
            "local",
            "--instance-id",
            "i-0cli",
            "--heartbeat-interval",
            "1",
            "--spot-poll-interval",
            "1",
            "--imds-endpoint",
            &endpoint,
            "--metrics-bind-address",
            &metrics_addr,
            "--data-dir",
            &data.path().display().to_string(),
        ])
        .env("KUBECONFIG", h.server.kubeconfig())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start agent");
    let n = h
        .wait_node("i-0cli", "the rebalance recommendation", |n| {
            n.status
                .as_ref()
                .is_some_and(|s| s.interruption.is_some() && s.accepting_attempts == Some(false))
        })
        .await;
    let i = n.status.and_then(|s| s.interruption).expect("interruption");
    assert_eq!(
        (i.kind, i.time.as_deref()),
        (InterruptionKind::Rebalance, Some("2026-11-30T09:00:00Z"))
    );
    support::eventually(
        "asg_batch_agent_spot_notice 1",
        || http_get(&metrics_addr, "/metrics"),
        |m| m.contains("asg_batch_agent_spot_notice 1"),
    )
    .await;
    child.kill().await.expect("kill agent");
}
