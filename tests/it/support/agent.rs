//! Helpers for the `agent_*` tests: an API server with the project's CRDs, an agent run in
//! the test's runtime, and the controller's side of PROTOCOL.md (bind an attempt).

pub use super::eventually;
pub use super::kube::ServerUnderTest;
use asg_batch::agent::executor::Executor;
use asg_batch::agent::{AgentConfig, AgentError};
use asg_batch::api::batch_job::BatchJobSpec;
use asg_batch::api::common::{ProcessSpec, Resources};
use asg_batch::api::{BatchJob, BatchNode};
use asg_batch::cloud::Fleet;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The controller's field manager (the protocol's).
pub use asg_batch::api::protocol::CONTROLLER_MANAGER as CONTROLLER;

/// A server (the embedded one, or the real one: [`ServerUnderTest`]) with every CRD of
/// `crds/` created and Established.
pub async fn server_with_crds() -> ServerUnderTest {
    server_with_crds_changed(|_| {}).await
}

/// [`server_with_crds`], with each CRD passed through `change` before it is created (e.g.
/// a schema loose enough to store a malformed object).
pub async fn server_with_crds_changed(
    change: impl Fn(&mut CustomResourceDefinition),
) -> ServerUnderTest {
    let s = ServerUnderTest::start().await;
    let crds: Api<CustomResourceDefinition> = Api::all(s.client());
    let dir = super::repo_root().join("crds");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("read crds/")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read crd");
        let mut crd: CustomResourceDefinition = serde_yaml::from_str(&text).expect("parse crd");
        change(&mut crd);
        let created = crds
            .create(&PostParams::default(), &crd)
            .await
            .unwrap_or_else(|e| panic!("create {}: {e}", file.display()));
        super::kube::wait_established(&crds, created.metadata.name.as_deref().unwrap()).await;
    }
    s
}

/// A config for node `instance_id` in compute environment `ce` with 4 cpu / 8Gi, the
/// process executor, fast heartbeats (200 ms), 3 idle polls, and running attempts
/// cancelled on a graceful stop (so tests leave nothing running).
pub fn config(instance_id: &str, ce: &str) -> AgentConfig {
    AgentConfig::new(
        instance_id,
        ce,
        Resources {
            cpu: "4".into(),
            memory: "8Gi".into(),
            gpu: 0,
        },
    )
    .with_executor(asg_batch::api::compute_environment::Executor::Process)
    .with_heartbeat_interval(Duration::from_millis(200))
    .with_shutdown_mode(asg_batch::agent::config::ShutdownMode::Cancel)
}

/// The small shim binary, `asg-batch-shim`, as the agent finds it beside `asg-batch`.
pub fn small_shim() -> asg_batch::agent::executor::shim::Shim {
    asg_batch::agent::executor::shim::Shim::Binary(env!("CARGO_BIN_EXE_asg-batch-shim").into())
}

/// The process executor with the small shim binary and its state in a directory of this
/// test process (attempt names are unique, so tests share it).
pub fn process_executor() -> asg_batch::agent::executor::process::ProcessExecutor {
    asg_batch::agent::executor::process::ProcessExecutor::new(
        std::env::temp_dir().join(format!("asgb-test-attempts-{}", std::process::id())),
        small_shim(),
    )
}

/// An agent running in the test's runtime.
pub struct TestAgent {
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<(), AgentError>>,
}

impl TestAgent {
    /// Starts `asg_batch::agent::run`.
    pub fn start(
        client: kube::Client,
        config: AgentConfig,
        executor: Arc<dyn Executor>,
        fleet: Option<Arc<dyn Fleet>>,
    ) -> Self {
        // `RUST_LOG=asg_batch=info` shows the agent's log in a failing test's output.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(asg_batch::agent::run(
            client,
            config,
            executor,
            fleet,
            async {
                let _ = rx.await;
            },
        ));
        Self {
            stop: Some(tx),
            handle,
        }
    }

    /// Graceful shutdown; returns what `run` returned.
    pub async fn stop(mut self) -> Result<(), AgentError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(60), &mut self.handle)
            .await
            .expect("agent stops")
            .expect("agent task")
    }

    /// A crash: the agent's task is dropped mid-flight (its attempts with it).
    pub async fn crash(self) {
        self.handle.abort();
        let _ = self.handle.await;
    }
}

/// A BatchJob running `sh -c script` as a process.
pub fn process_job(name: &str, script: &str) -> BatchJob {
    BatchJob::new(
        name,
        BatchJobSpec {
            queue: "q".into(),
            definition_ref: None,
            template: asg_batch::api::common::JobTemplate {
                process: Some(ProcessSpec {
                    command: vec!["sh".into(), "-c".into(), script.into()],
                    env: vec![],
                    working_dir: None,
                }),
                ..Default::default()
            },
            depends_on: vec![],
            array_properties: None,
            array_index: None,
            share_identifier: None,
            ttl_seconds_after_finished: None,
            expected_duration_seconds: None,
            parameters: Default::default(),
            cancel: None,
        },
    )
}

/// Creates `job` in `ns`.
pub async fn create_job(client: &kube::Client, ns: &str, job: &BatchJob) -> BatchJob {
    Api::<BatchJob>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), job)
        .await
        .expect("create job")
}

/// The controller binds attempt `attempt` of job `name` to `node` (PROTOCOL.md, flow 1):
/// one status apply of phase=Starting, node, attempt and entries 1..=attempt {node,
/// instanceId} (the controller keeps applying every entry it owns). No label: the agent
/// finds the job by the field selector `status.node=<node>`.
pub async fn bind(client: &kube::Client, ns: &str, name: &str, node: &str, attempt: u32) {
    set_status(client, ns, name, "Starting", node, attempt).await;
}

/// The controller's status apply: `phase`, `node`, `attempt`, entries 1..=attempt.
pub async fn set_status(
    client: &kube::Client,
    ns: &str,
    name: &str,
    phase: &str,
    node: &str,
    attempt: u32,
) {
    let api: Api<BatchJob> = Api::namespaced(client.clone(), ns);
    let params = PatchParams::apply(CONTROLLER).force();
    let entries: Vec<Value> = (1..=attempt)
        .map(|n| json!({ "attempt": n, "node": node, "instanceId": node }))
        .collect();
    api.patch_status(
        name,
        &params,
        &Patch::Apply(json!({
            "apiVersion": "asgbatch.io/v1alpha1", "kind": "BatchJob",
            "metadata": { "name": name, "namespace": ns },
            "status": { "phase": phase, "node": node, "attempt": attempt, "attempts": entries },
        })),
    )
    .await
    .expect("controller status apply");
}

/// Reads job `name` (panics when absent).
pub async fn get_job(client: &kube::Client, ns: &str, name: &str) -> BatchJob {
    Api::<BatchJob>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .expect("get job")
}

/// Reads node `name`, if any.
pub async fn get_node(client: &kube::Client, name: &str) -> Option<BatchNode> {
    Api::<BatchNode>::all(client.clone())
        .get_opt(name)
        .await
        .expect("get node")
}

/// Attempt `n`'s entry of a job.
pub fn attempt(job: &BatchJob, n: u32) -> Option<asg_batch::api::batch_job::AttemptStatus> {
    job.status
        .as_ref()
        .and_then(|s| s.attempts.iter().find(|a| a.attempt == n).cloned())
}

/// The managers of a job's managedFields entries, as (manager, subresource) pairs.
pub fn managers(job: &BatchJob) -> Vec<(String, String)> {
    job.metadata
        .managed_fields
        .iter()
        .flatten()
        .map(|m| {
            (
                m.manager.clone().unwrap_or_default(),
                m.subresource.clone().unwrap_or_default(),
            )
        })
        .collect()
}

/// The fields (FieldsV1 JSON) a manager owns on a job's status.
pub fn owned_status_fields(job: &BatchJob, manager: &str) -> Value {
    job.metadata
        .managed_fields
        .iter()
        .flatten()
        .find(|m| {
            m.manager.as_deref() == Some(manager) && m.subresource.as_deref() == Some("status")
        })
        .and_then(|m| m.fields_v1.as_ref())
        .map(|f| f.0.clone())
        .unwrap_or(Value::Null)
}

/// Whether process `pid` exists (and is not a zombie).
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}
