//! Helpers for the `controller_*` tests: an embedded API server with the project's CRDs,
//! the controller running in-process against it, and the test playing the node agent
//! per `src/api/PROTOCOL.md` (registers a BatchNode, heartbeats, applies
//! `attempts[N].startedAt` then the end of the attempt with field manager
//! `asg-batch-agent-attempt-N`).
//!
//! With `ASG_BATCH_TEST_SERVER=kube-apiserver` the same tests run against the real
//! kube-apiserver and etcd instead (`support::kube`, a server of each test's own).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use asg_batch::api::{BatchJob, BatchNode, crds};
use asg_batch::cloud::Fleet;
use asg_batch::controller::{ControllerConfig, StaticFleets};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

pub use super::kube::ServerUnderTest;

/// A server, the controller against it, and heartbeat tasks; all stop on drop.
pub struct Harness {
    pub server: ServerUnderTest,
    pub client: kube::Client,
    controllers: Vec<Option<(JoinHandle<()>, tokio::sync::oneshot::Sender<()>)>>,
    heartbeats: HashMap<String, JoinHandle<()>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        for (h, stop) in self.controllers.drain(..).flatten() {
            let _ = stop.send(());
            h.abort();
        }
        for h in self.heartbeats.values() {
            h.abort();
        }
    }
}

/// Fast passes for tests; the lost-node timeout as given.
pub fn test_config(lost_node_timeout: Duration) -> ControllerConfig {
    ControllerConfig {
        lost_node_timeout,
        resync: Duration::from_millis(500),
        debounce: Duration::from_millis(20),
        fleet_timeout: Duration::from_secs(20),
        instance: Some("test".into()),
        leader_election: None,
        ..ControllerConfig::default()
    }
}

/// Starts a server with the CRDs and the given objects (YAML documents), then the controller.
pub async fn start(
    yaml: &str,
    config: ControllerConfig,
    fleets: HashMap<String, Arc<dyn Fleet>>,
) -> Harness {
    let mut h = start_server(yaml).await;
    h.add_controller(config, fleets);
    h
}

/// Starts a server with the CRDs and the given objects, without a controller.
pub async fn start_server(yaml: &str) -> Harness {
    start_server_with(yaml, |_| {}).await
}

/// Like [`start_server`], with the CRDs changed by `edit` first (e.g. a laxer schema, to
/// store objects the controller's types cannot read).
pub async fn start_server_with(
    yaml: &str,
    edit: impl Fn(&mut CustomResourceDefinition),
) -> Harness {
    let server = ServerUnderTest::start().await;
    let client = server.client();
    let crd_api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for mut crd in crds::all() {
        edit(&mut crd);
        let created = crd_api
            .create(&PostParams::default(), &crd)
            .await
            .expect("create CRD");
        super::kube::wait_established(&crd_api, created.metadata.name.as_deref().unwrap()).await;
    }
    apply_yaml(&client, yaml).await;
    Harness {
        server,
        client,
        controllers: Vec::new(),
        heartbeats: HashMap::new(),
    }
}

impl Harness {
    /// Starts one more controller replica; returns its index.
    pub fn add_controller(
        &mut self,
        config: ControllerConfig,
        fleets: HashMap<String, Arc<dyn Fleet>>,
    ) -> usize {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let c = self.client.clone();
        let handle = tokio::spawn(async move {
            let r = asg_batch::controller::run(c, config, Arc::new(StaticFleets(fleets)), async {
                let _ = stopped.await;
            })
            .await;
            if let Err(e) = r {
                panic!("controller failed: {e}");
            }
        });
        self.controllers.push(Some((handle, stop)));
        self.controllers.len() - 1
    }

    /// Kills controller replica `i` (its task is aborted: no lease release).
    pub async fn kill_controller(&mut self, i: usize) {
        if let Some((handle, _stop)) = self.controllers.get_mut(i).and_then(Option::take) {
            handle.abort();
            let _ = handle.await;
        }
    }

    /// Stops controller replica `i` gracefully (it releases its lease) and waits for it.
    pub async fn stop_controller(&mut self, i: usize) {
        if let Some((handle, stop)) = self.controllers.get_mut(i).and_then(Option::take) {
            let _ = stop.send(());
            handle.await.expect("controller task");
        }
    }
}

/// Server-side applies each YAML document (as the test user, field manager `test`).
pub async fn apply_yaml(client: &kube::Client, yaml: &str) {
    use serde::Deserialize;
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let v = Value::deserialize(doc).expect("yaml document");
        if v.is_null() {
            continue;
        }
        let kind = v["kind"].as_str().expect("kind").to_string();
        let name = v["metadata"]["name"].as_str().expect("name").to_string();
        let pp = PatchParams::apply("test");
        match kind.as_str() {
            "BatchJob" => {
                let api: Api<BatchJob> = Api::namespaced(client.clone(), "default");
                api.patch(&name, &pp, &Patch::Apply(&v))
                    .await
                    .expect("apply BatchJob");
            }
            "JobDefinition" => {
                let api: Api<asg_batch::api::JobDefinition> =
                    Api::namespaced(client.clone(), "default");
                api.patch(&name, &pp, &Patch::Apply(&v))
                    .await
                    .expect("apply JobDefinition");
            }
            "JobQueue" => {
                let api: Api<asg_batch::api::JobQueue> = Api::all(client.clone());
                api.patch(&name, &pp, &Patch::Apply(&v))
                    .await
                    .expect("apply JobQueue");
            }
            "ComputeEnvironment" => {
                let api: Api<asg_batch::api::ComputeEnvironment> = Api::all(client.clone());
                api.patch(&name, &pp, &Patch::Apply(&v))
                    .await
                    .expect("apply ComputeEnvironment");
            }
            other => panic!("unexpected kind {other}"),
        }
    }
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now().to_string()
}

impl Harness {
    /// The BatchJob API in `default`.
    pub fn jobs(&self) -> Api<BatchJob> {
        Api::namespaced(self.client.clone(), "default")
    }

    /// The BatchNode API.
    pub fn nodes(&self) -> Api<BatchNode> {
        Api::all(self.client.clone())
    }

    /// Registers a BatchNode as its agent would and heartbeats it every 300 ms.
    pub async fn register_node(&mut self, name: &str, ce: &str, cpu: &str, memory: &str) {
        let nodes = self.nodes();
        let body = json!({
            "apiVersion": "asgbatch.io/v1alpha1",
            "kind": "BatchNode",
            "metadata": {"name": name},
            "spec": {
                "instanceId": name,
                "computeEnvironment": ce,
                "capacity": {"cpu": cpu, "memory": memory},
                "executor": "process",
            },
        });
        nodes
            .patch(
                name,
                &PatchParams::apply(asg_batch::api::protocol::AGENT_MANAGER),
                &Patch::Apply(&body),
            )
            .await
            .expect("register node");
        let name = name.to_string();
        let n = name.clone();
        let handle = tokio::spawn(async move {
            let mut draining = false;
            loop {
                // As the real agent's gate: it stops accepting work once it has seen its
                // node Draining (this fake runs nothing itself).
                let hb = json!({
                    "apiVersion": "asgbatch.io/v1alpha1",
                    "kind": "BatchNode",
                    "status": {"heartbeatTime": now_rfc3339(), "acceptingAttempts": !draining},
                });
                if let Ok(node) = nodes
                    .patch_status(
                        &n,
                        &PatchParams::apply(asg_batch::api::protocol::AGENT_MANAGER),
                        &Patch::Apply(&hb),
                    )
                    .await
                {
                    draining = node.status.and_then(|s| s.phase)
                        == Some(asg_batch::api::NodePhase::Draining);
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
        self.heartbeats.insert(name, handle);
    }

    /// Stops a node's heartbeat (the node will be Lost after the timeout).
    pub fn stop_heartbeat(&mut self, name: &str) {
        if let Some(h) = self.heartbeats.remove(name) {
            h.abort();
        }
    }

    /// The agent reports attempt `n` of `job` started.
    pub async fn agent_started(&self, job: &str, n: u32) {
        self.agent_apply(job, n, json!({"attempt": n, "startedAt": now_rfc3339()}))
            .await;
    }

    /// The agent reports attempt `n` of `job` ended (it re-applies `startedAt`, which
    /// its manager owns).
    pub async fn agent_exited(&self, job: &str, n: u32, exit_code: i32) {
        let current = self.jobs().get(job).await.expect("get job");
        let started = current
            .status
            .as_ref()
            .and_then(|s| s.attempts.iter().find(|a| a.attempt == n))
            .and_then(|a| a.started_at.as_ref())
            .map(|t| t.0.to_string())
            .unwrap_or_else(now_rfc3339);
        let reason = if exit_code == 0 { "Completed" } else { "Error" };
        self.agent_apply(
            job,
            n,
            json!({
                "attempt": n,
                "startedAt": started,
                "stoppedAt": now_rfc3339(),
                "exitCode": exit_code,
                "reason": reason,
                "logTail": format!("exit {exit_code}\n"),
            }),
        )
        .await;
    }

    async fn agent_apply(&self, job: &str, n: u32, attempt: Value) {
        let body = json!({
            "apiVersion": "asgbatch.io/v1alpha1",
            "kind": "BatchJob",
            "status": {"attempts": [attempt]},
        });
        self.jobs()
            .patch_status(
                job,
                &PatchParams::apply(&asg_batch::api::protocol::attempt_manager(n)),
                &Patch::Apply(&body),
            )
            .await
            .expect("agent apply");
    }

    /// Polls `job` until `ready` holds (30 s deadline); returns it.
    pub async fn wait_job(
        &self,
        job: &str,
        what: &str,
        ready: impl Fn(&BatchJob) -> bool,
    ) -> BatchJob {
        let api = self.jobs();
        let seen = super::eventually_within(
            &format!("{job}: {what}"),
            Duration::from_secs(30),
            || async { Seen(api.get_opt(job).await.ok().flatten()) },
            |seen| seen.0.as_ref().is_some_and(&ready),
        )
        .await;
        seen.0.expect("a ready job")
    }

    /// Polls `node` until `ready` holds (30 s deadline); returns it.
    pub async fn wait_node(
        &self,
        node: &str,
        what: &str,
        ready: impl Fn(&BatchNode) -> bool,
    ) -> BatchNode {
        let api = self.nodes();
        super::eventually_within(
            &format!("node {node}: {what}"),
            Duration::from_secs(30),
            || async { api.get_opt(node).await.ok().flatten() },
            |n| n.as_ref().is_some_and(&ready),
        )
        .await
        .expect("a ready node")
    }

    /// Reasons of the Events about `name` (events.k8s.io/v1, in `default`).
    pub async fn event_reasons(&self, name: &str) -> Vec<String> {
        use k8s_openapi::api::events::v1::Event;
        let api: Api<Event> = Api::namespaced(self.client.clone(), "default");
        api.list(&Default::default())
            .await
            .expect("list events")
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .filter_map(|e| e.reason)
            .collect()
    }

    /// Polls the Events about `name` until each of `reasons` is among them (the controller
    /// publishes Events after the status they tell of); returns all their reasons.
    pub async fn wait_events(&self, name: &str, reasons: &[&str]) -> Vec<String> {
        super::eventually_within(
            &format!("Events {reasons:?} about {name}"),
            Duration::from_secs(30),
            || self.event_reasons(name),
            |seen| reasons.iter().all(|r| seen.iter().any(|s| s == r)),
        )
        .await
    }
}

/// A job as polled; shown by its labels and status when a wait times out.
struct Seen(Option<BatchJob>);

impl std::fmt::Debug for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = self.0.as_ref().map(|j| (&j.metadata.labels, &j.status));
        f.write_str(&serde_json::to_string_pretty(&shown).unwrap_or_default())
    }
}

/// The phase of a job as text (`"-"` when unset).
pub fn phase(j: &BatchJob) -> String {
    j.status
        .as_ref()
        .and_then(|s| s.phase)
        .map_or("-".into(), |p| format!("{p:?}"))
}

/// A local compute environment `local` (4 cpu, 16Gi, at most 3 instances) and a queue `q`.
pub const LOCAL_WORLD: &str = r#"
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
  priority: 1
  computeEnvironments: [local]
"#;
