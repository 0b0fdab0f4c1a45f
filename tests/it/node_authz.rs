//! A worker instance can touch only its own work (issue 12): each agent acts as
//! `asg-batch:node:<node>` in the group `asg-batch:nodes`; the chart's node ClusterRole,
//! its ValidatingAdmissionPolicy and the controller's per-node Secret grants
//! (`src/controller/grants.rs`) decide what it may do. Judged by what the API server
//! answers: 403 from RBAC, 422 Invalid from the policy (with its message).
//!
//! The policy tests run against the real kube-apiserver (RBAC and policy; node identities
//! are client certificates signed by the test CA) and against the embedded server (the
//! policy only: it enforces no RBAC; node identities are bearer tokens from its token
//! file). The end-to-end run with Secrets needs RBAC: the real server only.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use std::path::{Path, PathBuf};
use std::time::Duration;

use asg_batch::api::{BatchJob, BatchNode};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::support::apiserver::{TestServer, server_with};
use crate::support::kube::{Cluster, RealKube, client_from_kubeconfig};
use crate::support::manifests::read_documents;
use crate::support::{self, eventually_within};

const POLICY: &str = "ValidatingAdmissionPolicy 'asg-batch-node-restriction'";

/// A server with node identities.
trait NodeCluster: Cluster {
    /// A client acting as node `node`: user `asg-batch:node:<node>` in `asg-batch:nodes`.
    fn node_client(&self, node: &str) -> kube::Client;
    /// Whether the server enforces RBAC (the embedded one does not).
    fn enforces_rbac(&self) -> bool;
    /// A namespace of the test's own.
    fn namespace(&self, prefix: &str) -> impl std::future::Future<Output = String>;
}

impl NodeCluster for RealKube {
    fn node_client(&self, node: &str) -> kube::Client {
        // Files of their own: tests share the server and may mint the same node at once.
        client_from_kubeconfig(&self.kubeconfig_for_user(
            &format!("node-{node}-{}", suffix()),
            &format!("asg-batch:node:{node}"),
            &["asg-batch:nodes"],
        ))
    }
    fn enforces_rbac(&self) -> bool {
        true
    }
    async fn namespace(&self, prefix: &str) -> String {
        RealKube::namespace(self, prefix).await
    }
}

/// The embedded server started with a token file holding `token-<node>` for each node.
struct Embedded(TestServer);

impl Embedded {
    async fn start(nodes: &[&str]) -> Embedded {
        let text: String = nodes
            .iter()
            .map(|n| format!("token-{n},asg-batch:node:{n},uid-{n},\"asg-batch:nodes\"\n"))
            .collect();
        let path = std::env::temp_dir().join(format!("asg-batch-tokens-{}.csv", suffix()));
        std::fs::write(&path, text).expect("write token file");
        let tokens = asg_batch_apiserver::admission::Tokens::read(&path).expect("token file");
        std::fs::remove_file(&path).ok();
        Embedded(
            server_with(asg_batch_apiserver::ApiServerConfig {
                tokens: Some(tokens),
                ..Default::default()
            })
            .await,
        )
    }
}

impl Cluster for Embedded {
    fn label(&self) -> &'static str {
        "embedded"
    }
    fn client(&self) -> kube::Client {
        self.0.client()
    }
    fn kubeconfig(&self) -> PathBuf {
        self.0.kubeconfig()
    }
    async fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        self.0.kubectl_stdin(args, stdin).await
    }
    async fn helm(&self, args: &[&str]) -> std::process::Output {
        self.0.helm(args).await
    }
}

impl NodeCluster for Embedded {
    fn node_client(&self, node: &str) -> kube::Client {
        let path = self.0.dir.path().join(format!("{node}.kubeconfig"));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n\
             users:\n- name: u\n  user:\n    token: token-{node}\n\
             contexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n",
            self.0.server.base_url()
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        client_from_kubeconfig(&path)
    }
    fn enforces_rbac(&self) -> bool {
        false
    }
    async fn namespace(&self, prefix: &str) -> String {
        let ns = format!("{prefix}-{}", suffix());
        let o = self.kubectl(&["create", "namespace", &ns]).await;
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        ns
    }
}

/// The identity-related objects of `manifests/install.yaml` (the chart rendered):
/// namespace, ServiceAccounts, ClusterRoles and bindings, the admission policy and its
/// binding. Then waits until the policy is in force (a request it denies is denied).
async fn apply_install_auth(s: &impl NodeCluster) {
    let docs = read_documents(&support::repo_root().join("manifests/install.yaml"));
    let wanted = [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ];
    let mut yaml = String::new();
    for d in docs
        .iter()
        .filter(|d| wanted.contains(&d["kind"].as_str().unwrap_or_default()))
    {
        yaml.push_str("---\n");
        yaml.push_str(&serde_yaml::to_string(d).unwrap());
    }
    assert!(
        yaml.contains("kind: ValidatingAdmissionPolicy"),
        "no node policy in install.yaml"
    );
    let o = s
        .kubectl_stdin(&["apply", "--server-side", "-f", "-"], Some(&yaml))
        .await;
    assert!(
        o.status.success(),
        "{}: apply install.yaml's identities: {}",
        s.label(),
        String::from_utf8_lossy(&o.stderr)
    );
    // kube-apiserver loads policies from an informer: wait until a node's dry-run
    // registration under another name is refused.
    let nodes: Api<BatchNode> = Api::all(s.node_client("policy-probe"));
    let probe = eventually_within(
        "the node policy in force",
        Duration::from_secs(30),
        || async {
            nodes
                .patch(
                    "not-the-probe",
                    &PatchParams::apply("asg-batch-agent").dry_run(),
                    &Patch::Apply(node_body("not-the-probe", "not-the-probe")),
                )
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
        |r| matches!(r, Err(e) if e.contains(POLICY)),
    )
    .await;
    assert!(probe.is_err());
}

/// The kubeconfig of node `node` on the real server (a client certificate).
fn node_kubeconfig(real: &RealKube, node: &str) -> PathBuf {
    real.kubeconfig_for_user(
        &format!("node-{node}-{}", suffix()),
        &format!("asg-batch:node:{node}"),
        &["asg-batch:nodes"],
    )
}

fn node_body(name: &str, instance_id: &str) -> Value {
    json!({
        "apiVersion": "asgbatch.io/v1alpha1", "kind": "BatchNode",
        "metadata": {"name": name},
        "spec": {"instanceId": instance_id, "computeEnvironment": "ce",
                 "capacity": {"cpu": "1", "memory": "1Gi"}, "executor": "process"},
    })
}

fn status_of(r: Result<impl std::fmt::Debug, kube::Error>, what: &str) -> kube::core::Status {
    match r {
        Err(kube::Error::Api(s)) => *s,
        other => panic!("{what}: expected an API error, got {other:?}"),
    }
}

/// A 422 Invalid from the node policy, with `message` in its text.
fn assert_denied_by_policy(
    r: Result<impl std::fmt::Debug, kube::Error>,
    what: &str,
    message: &str,
) {
    let s = status_of(r, what);
    assert_eq!(
        (s.code, s.reason.as_str()),
        (422, "Invalid"),
        "{what}: {s:?}"
    );
    assert!(
        s.message.contains(POLICY) && s.message.contains(message),
        "{what}: {}",
        s.message
    );
}

/// A 403 from RBAC naming the node's user.
fn assert_forbidden(r: Result<impl std::fmt::Debug, kube::Error>, what: &str, user: &str) {
    let s = status_of(r, what);
    assert_eq!(
        (s.code, s.reason.as_str()),
        (403, "Forbidden"),
        "{what}: {s:?}"
    );
    assert!(s.message.contains(user), "{what}: {}", s.message);
}

/// Refused by RBAC where it is enforced, else by the policy with `message`.
fn assert_refused(
    s: &impl NodeCluster,
    r: Result<impl std::fmt::Debug, kube::Error>,
    what: &str,
    user: &str,
    message: &str,
) {
    if s.enforces_rbac() {
        assert_forbidden(r, what, user);
    } else {
        assert_denied_by_policy(r, what, message);
    }
}

fn suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    format!("{:08x}", h.finish() as u32)
}

fn two_nodes() -> (String, String) {
    let s = suffix();
    (format!("i-a{s}"), format!("i-b{s}"))
}

#[tokio::test]
async fn a_node_registers_and_heartbeats_only_its_own_batchnode() {
    let real = RealKube::shared();
    real.install_crds().await;
    apply_install_auth(real).await;
    own_batchnode_only(real, two_nodes()).await;
}

#[tokio::test]
async fn a_node_registers_and_heartbeats_only_its_own_batchnode_embedded() {
    let (a, b) = two_nodes();
    let s = Embedded::start(&[&a, &b, "policy-probe"]).await;
    support::kube::install_crds(&s.client()).await;
    apply_install_auth(&s).await;
    own_batchnode_only(&s, (a, b)).await;
}

#[tokio::test]
async fn a_node_reports_only_the_attempts_of_jobs_bound_to_it() {
    let real = RealKube::shared();
    real.install_crds().await;
    apply_install_auth(real).await;
    own_attempts_only(real, two_nodes()).await;
}

#[tokio::test]
async fn a_node_reports_only_the_attempts_of_jobs_bound_to_it_embedded() {
    let (a, b) = two_nodes();
    let s = Embedded::start(&[&a, &b, "policy-probe"]).await;
    support::kube::install_crds(&s.client()).await;
    apply_install_auth(&s).await;
    own_attempts_only(&s, (a, b)).await;
}

/// The embedded server authenticates only the tokens of its token file.
#[tokio::test]
async fn the_embedded_server_refuses_an_unknown_token() {
    let s = Embedded::start(&["i-known"]).await;
    let known: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(s.node_client("i-known"));
    known
        .list(&Default::default())
        .await
        .expect("a known token");
    let stranger: Api<k8s_openapi::api::core::v1::Namespace> =
        Api::all(s.node_client("i-stranger"));
    let st = status_of(stranger.list(&Default::default()).await, "unknown token");
    assert_eq!(
        (st.code, st.reason.as_str()),
        (401, "Unauthorized"),
        "{st:?}"
    );
}

async fn own_batchnode_only(s: &impl NodeCluster, (a, b): (String, String)) {
    let nodes: Api<BatchNode> = Api::all(s.node_client(&a));
    let agent = PatchParams::apply("asg-batch-agent").force();

    // Its own node, under its own instance id (upper-case ids are lower-cased names).
    nodes
        .patch(&a, &agent, &Patch::Apply(node_body(&a, &a.to_uppercase())))
        .await
        .expect("a node registers itself");
    let heartbeat = |t: &str| {
        json!({"apiVersion": "asgbatch.io/v1alpha1", "kind": "BatchNode",
               "metadata": {"name": a}, "status": {"heartbeatTime": t, "acceptingAttempts": true}})
    };
    nodes
        .patch_status(&a, &agent, &Patch::Apply(heartbeat("2026-01-01T00:00:00Z")))
        .await
        .expect("a node heartbeats");
    // Its Spot notice is its own to report (`status.interruption`).
    nodes
        .patch_status(
            &a,
            &agent,
            &Patch::Apply(
                json!({"apiVersion": "asgbatch.io/v1alpha1", "kind": "BatchNode",
                "metadata": {"name": a}, "status": {"heartbeatTime": "2026-01-01T00:00:01Z",
                "acceptingAttempts": false, "interruption": {"kind": "Rebalance",
                "time": "2026-01-01T00:00:00Z", "noticedAt": "2026-01-01T00:00:01Z"}}}),
            ),
        )
        .await
        .expect("a node reports its Spot notice");

    // Not another node, nor its own under another instance.
    assert_denied_by_policy(
        nodes
            .patch(&b, &agent, &Patch::Apply(node_body(&b, &b)))
            .await,
        "registering another node",
        "metadata.name: a node may create and update only the BatchNode named after itself",
    );
    assert_denied_by_policy(
        nodes
            .patch(&a, &agent, &Patch::Apply(node_body(&a, &b)))
            .await,
        "claiming another instance",
        "spec.instanceId: a node may register only its own instance",
    );
    // Not the controller's part of its status: phase.
    let admin_nodes: Api<BatchNode> = Api::all(s.client());
    admin_nodes
        .patch_status(
            &a,
            &PatchParams::apply("asg-batch-controller").force(),
            &Patch::Apply(
                json!({"apiVersion": "asgbatch.io/v1alpha1", "kind": "BatchNode",
                "metadata": {"name": a}, "status": {"phase": "Draining"}}),
            ),
        )
        .await
        .expect("the controller drains the node");
    assert_denied_by_policy(
        nodes
            .patch_status(
                &a,
                &PatchParams::apply("asg-batch-agent").force(),
                &Patch::Apply(json!({"apiVersion": "asgbatch.io/v1alpha1", "kind": "BatchNode",
                    "metadata": {"name": a}, "status": {"heartbeatTime": "2026-01-01T00:00:01Z", "phase": "Ready"}})),
            )
            .await,
        "a node undrains itself",
        "status: a node may not change the controller's fields of its BatchNode",
    );
    nodes
        .patch_status(&a, &agent, &Patch::Apply(heartbeat("2026-01-01T00:00:02Z")))
        .await
        .expect("a drained node still heartbeats");
    let stored = admin_nodes.get(&a).await.expect("get node");
    let phase = stored.status.and_then(|s| s.phase);
    assert_eq!(phase, Some(asg_batch::api::batch_node::NodePhase::Draining));
    // RBAC: no deleting nodes (the policy does not look at deletes).
    if s.enforces_rbac() {
        assert_forbidden(
            nodes.delete(&a, &Default::default()).await,
            "a node deletes itself",
            &format!("asg-batch:node:{a}"),
        );
    }
}

async fn own_attempts_only(s: &impl NodeCluster, (a, b): (String, String)) {
    let ns = s.namespace("authz").await;
    let admin = s.client();
    let user_a = format!("asg-batch:node:{a}");
    for (job, node) in [("for-a", &a), ("for-b", &b)] {
        support::agent::create_job(&admin, &ns, &support::agent::process_job(job, "true")).await;
        support::agent::bind(&admin, &ns, job, node, 1).await;
    }
    let jobs: Api<BatchJob> = Api::namespaced(s.node_client(&a), &ns);
    let attempt1 = PatchParams::apply("asg-batch-agent-attempt-1");
    let report = |job: &str, status: Value| {
        json!({"apiVersion": "asgbatch.io/v1alpha1", "kind": "BatchJob",
               "metadata": {"name": job, "namespace": ns}, "status": status})
    };
    let started = json!({"attempts": [{"attempt": 1, "startedAt": "2026-01-01T00:00:00Z"}]});

    // B's job: not A's to report on.
    assert_denied_by_policy(
        jobs.patch_status(
            "for-b",
            &attempt1,
            &Patch::Apply(report("for-b", started.clone())),
        )
        .await,
        "A reports on B's job",
        "status.node: a node may write only the status of a job bound to it",
    );
    // Its own job: start and end, as PROTOCOL.md's agent does.
    jobs.patch_status(
        "for-a",
        &attempt1,
        &Patch::Apply(report("for-a", started.clone())),
    )
    .await
    .expect("A reports the start of its attempt");
    let ended = json!({"attempts": [{"attempt": 1, "startedAt": "2026-01-01T00:00:00Z",
        "stoppedAt": "2026-01-01T00:00:05Z", "exitCode": 0, "reason": "Completed", "logTail": "ok"}]});
    jobs.patch_status("for-a", &attempt1, &Patch::Apply(report("for-a", ended)))
        .await
        .expect("A reports the end of its attempt");
    // Never the controller's decisions, even on its own job.
    let forced = PatchParams::apply("asg-batch-agent-attempt-1").force();
    let decisions = "never phase, node, attempt or the controller's other decisions";
    for (what, status) in [
        ("A marks its job Succeeded", json!({"phase": "Succeeded"})),
        ("A grants itself another attempt", json!({"attempt": 2})),
        (
            "A clears its retries' wait",
            json!({"notBefore": null, "message": "mine"}),
        ),
    ] {
        assert_denied_by_policy(
            jobs.patch_status("for-a", &forced, &Patch::Apply(report("for-a", status)))
                .await,
            what,
            decisions,
        );
    }
    assert_denied_by_policy(
        jobs.patch_status(
            "for-b",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"node": a}})),
        )
        .await,
        "A moves B's job to itself",
        "status.node",
    );
    assert_denied_by_policy(
        jobs.patch_status(
            "for-a",
            &forced,
            &Patch::Apply(report(
                "for-a",
                json!({"attempts": [{"attempt": 1, "reason": "NodeLost"}]}),
            )),
        )
        .await,
        "A writes the controller's NodeLost",
        "status.attempts",
    );
    assert_denied_by_policy(
        jobs.patch_status(
            "for-a",
            &forced,
            &Patch::Apply(report(
                "for-a",
                json!({"attempts": [{"attempt": 1, "node": b}]}),
            )),
        )
        .await,
        "A rewrites an attempt's node",
        "status.attempts",
    );
    // RBAC: no creating, relabelling or deleting jobs (the policy refuses the first two
    // too: nodes write only job status).
    let status_only = "a node may write only the status of a BatchJob";
    assert_refused(
        s,
        jobs.create(
            &PostParams::default(),
            &support::agent::process_job("mine", "true"),
        )
        .await,
        "A creates a job",
        &user_a,
        status_only,
    );
    assert_refused(
        s,
        jobs.patch(
            "for-b",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"asgbatch.io/node": a}}})),
        )
        .await,
        "A relabels B's job",
        &user_a,
        status_only,
    );
    if s.enforces_rbac() {
        assert_forbidden(
            jobs.delete("for-b", &Default::default()).await,
            "A deletes B's job",
            &user_a,
        );
    }
    // What landed is exactly what A was allowed to write.
    let for_a = support::agent::get_job(&admin, &ns, "for-a").await;
    let st = for_a.status.expect("status");
    assert_eq!(st.phase, Some(asg_batch::api::JobPhase::Starting));
    assert_eq!(st.attempt, Some(1));
    assert_eq!(st.attempts[0].exit_code, Some(0));
    assert_eq!(st.attempts[0].node.as_deref(), Some(a.as_str()));
    let for_b = support::agent::get_job(&admin, &ns, "for-b").await;
    let st = for_b.status.expect("status");
    assert_eq!(st.node.as_deref(), Some(b.as_str()));
    assert!(st.attempts[0].started_at.is_none(), "{st:?}");
}

/// Runs `asg-batch ARGS` with `kubeconfig`, its log into `log`.
fn spawn_binary(args: &[&str], kubeconfig: &Path, log: &Path) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_asg-batch"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "asg_batch=debug")
        .stdout(std::fs::File::create(log.with_extension("out")).unwrap())
        .stderr(std::fs::File::create(log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("start asg-batch")
}

fn secret(name: &str, value: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        string_data: Some([("token".to_string(), value.to_string())].into()),
        ..Secret::default()
    }
}

/// The whole protocol with real identities: the controller as the chart's ServiceAccount
/// (granting Secrets under RBAC's escalation rules), the agent binary as node A (a
/// kubeconfig with A's certificate). A's job reads a Secret through `secretKeyRef`; B's
/// job (bound to a node B registered as itself) references another Secret, which only B
/// may read, and A's grant goes when its job has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_as_its_node_runs_a_job_with_a_secret_and_reads_no_other() {
    let real = RealKube::start();
    real.install_crds().await;
    apply_install_auth(&real).await;
    let (a, b) = ("i-0aaa", "i-0bbb");
    let world = "apiVersion: asgbatch.io/v1alpha1\nkind: ComputeEnvironment\nmetadata: {name: ce-a}\n\
         spec:\n  local: {executor: process}\n  minInstances: 1\n  maxInstances: 1\n  \
         instanceShape: {cpu: '2', memory: 1Gi}\n---\n\
         apiVersion: asgbatch.io/v1alpha1\nkind: ComputeEnvironment\nmetadata: {name: ce-b}\n\
         spec:\n  local: {executor: process}\n  minInstances: 1\n  maxInstances: 1\n  \
         instanceShape: {cpu: '2', memory: 1Gi}\n---\n\
         apiVersion: asgbatch.io/v1alpha1\nkind: JobQueue\nmetadata: {name: qa}\n\
         spec: {priority: 1, computeEnvironments: [ce-a]}\n---\n\
         apiVersion: asgbatch.io/v1alpha1\nkind: JobQueue\nmetadata: {name: qb}\n\
         spec: {priority: 1, computeEnvironments: [ce-b]}\n";
    let o = real.kubectl_stdin(&["apply", "-f", "-"], Some(world)).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ns = "default";
    let secrets: Api<Secret> = Api::namespaced(real.client(), ns);
    for (name, value) in [("for-a", "a-value-7"), ("for-b", "b-value-9")] {
        secrets
            .create(&PostParams::default(), &secret(name, value))
            .await
            .expect("create Secret");
    }

    // Node B: registered as itself (no agent runs there, so its job stays bound).
    let b_client = real.node_client(b);
    let b_nodes: Api<BatchNode> = Api::all(b_client.clone());
    let mut body = node_body(b, b);
    body["spec"]["computeEnvironment"] = json!("ce-b");
    body["spec"]["capacity"] = json!({"cpu": "2", "memory": "1Gi"});
    let agent = PatchParams::apply("asg-batch-agent").force();
    b_nodes
        .patch(b, &agent, &Patch::Apply(&body))
        .await
        .expect("B registers");
    b_nodes
        .patch_status(
            b,
            &agent,
            &Patch::Apply(json!({"apiVersion": "asgbatch.io/v1alpha1", "kind": "BatchNode",
                "metadata": {"name": b},
                "status": {"heartbeatTime": jiff::Timestamp::now().to_string(), "acceptingAttempts": true}})),
        )
        .await
        .expect("B heartbeats");

    let token = real.mint_token("asg-batch", "asg-batch").await;
    let controller_kc = real.kubeconfig_for_token("controller", &token);
    let controller_log = real.dir().join("controller.log");
    let agent_log = real.dir().join("agent.log");
    let mut controller = spawn_binary(
        &[
            "controller",
            "--leader-election-namespace",
            "asg-batch",
            "--resync",
            "1",
        ],
        &controller_kc,
        &controller_log,
    );
    let mut agent_a = spawn_binary(
        &[
            "agent",
            "--compute-environment",
            "ce-a",
            "--instance-id",
            a,
            "--heartbeat-interval",
            "1",
            // Not on EC2: no Spot notices to poll for (a metadata service refusing the
            // token would log "forbidden", which this test looks for).
            "--spot-poll-interval",
            "0",
        ],
        &node_kubeconfig(&real, a),
        &agent_log,
    );
    let logs = || {
        format!(
            "controller log:\n{}\nagent log:\n{}",
            std::fs::read_to_string(&controller_log).unwrap_or_default(),
            std::fs::read_to_string(&agent_log).unwrap_or_default()
        )
    };

    let job = |name: &str, queue: &str, secret: &str, script: &str| {
        format!(
            "apiVersion: asgbatch.io/v1alpha1\nkind: BatchJob\nmetadata: {{name: {name}, namespace: {ns}}}\n\
             spec:\n  queue: {queue}\n  resources: {{cpu: '1', memory: 64Mi}}\n  \
             process:\n    command: [sh, -c, '{script}']\n    env:\n    - name: TOKEN\n      \
             secretKeyRef: {{name: {secret}, key: token}}\n"
        )
    };
    let yaml = format!(
        "{}---\n{}",
        job("job-b", "qb", "for-b", "echo never runs"),
        job("job-a", "qa", "for-a", "echo token=$TOKEN")
    );
    let o = real.kubectl_stdin(&["apply", "-f", "-"], Some(&yaml)).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // A's job ran as A, with A's Secret.
    let jobs: Api<BatchJob> = Api::namespaced(real.client(), ns);
    let done = eventually_within(
        "job-a Succeeded",
        Duration::from_secs(90),
        || async { jobs.get("job-a").await.expect("get job-a") },
        |j| {
            j.status.as_ref().and_then(|s| s.phase) == Some(asg_batch::api::JobPhase::Succeeded)
                || j.status.as_ref().and_then(|s| s.phase) == Some(asg_batch::api::JobPhase::Failed)
        },
    )
    .await;
    let st = done.status.clone().expect("status");
    assert_eq!(
        st.phase,
        Some(asg_batch::api::JobPhase::Succeeded),
        "{st:?}\n{}",
        logs()
    );
    assert_eq!(st.attempts[0].node.as_deref(), Some(a));
    assert!(
        st.attempts[0]
            .log_tail
            .as_deref()
            .unwrap_or_default()
            .contains("token=a-value-7"),
        "{st:?}"
    );

    // B's job is bound to B: B reads its Secret, A does not.
    eventually_within(
        "job-b bound to B",
        Duration::from_secs(30),
        || async { jobs.get("job-b").await.expect("get job-b") },
        |j| j.status.as_ref().and_then(|s| s.node.as_deref()) == Some(b),
    )
    .await;
    let as_b: Api<Secret> = Api::namespaced(b_client, ns);
    let got = as_b.get("for-b").await.expect("B reads its job's Secret");
    assert!(got.data.is_some());
    let as_a: Api<Secret> = Api::namespaced(real.node_client(a), ns);
    let user_a = format!("asg-batch:node:{a}");
    assert_forbidden(as_a.get("for-b").await, "A reads B's Secret", &user_a);
    assert_forbidden(
        as_a.list(&Default::default()).await,
        "A lists Secrets",
        &user_a,
    );
    assert_forbidden(
        as_b.get("for-a").await,
        "B reads A's Secret",
        &format!("asg-batch:node:{b}"),
    );
    // A's job has ended: its grant goes, and A can no longer read even its own Secret.
    let revoked = eventually_within(
        "A's grant revoked",
        Duration::from_secs(30),
        || async {
            as_a.get("for-a")
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
        |r| matches!(r, Err(e) if e.contains("forbidden")),
    )
    .await;
    assert!(revoked.is_err());

    let pid = |c: &tokio::process::Child| {
        nix::unistd::Pid::from_raw(i32::try_from(c.id().expect("running")).expect("pid"))
    };
    for child in [&mut agent_a, &mut controller] {
        nix::sys::signal::kill(pid(child), nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .expect("exits after SIGTERM")
            .expect("wait");
        assert!(status.success(), "{}", logs());
    }
    // Nothing either did was refused by RBAC or the policy.
    let text = logs();
    assert!(
        !text.to_lowercase().contains("forbidden") && !text.contains(POLICY),
        "a request was refused:\n{text}"
    );
}

/// The same denied requests to both servers get the same answer: code, reason, message
/// and details (the differential check of the embedded server's policy enforcement).
#[tokio::test]
async fn both_servers_deny_a_node_alike() {
    let real = RealKube::shared();
    real.install_crds().await;
    apply_install_auth(real).await;
    let (a, b) = two_nodes();
    let embedded = Embedded::start(&[&a, &b, "policy-probe"]).await;
    support::kube::install_crds(&embedded.client()).await;
    apply_install_auth(&embedded).await;
    let ns = real.namespace("authz-diff").await;
    let o = embedded.kubectl(&["create", "namespace", &ns]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    async fn denials(s: &impl NodeCluster, ns: &str, a: &str, b: &str) -> Vec<Value> {
        let admin = s.client();
        support::agent::create_job(&admin, ns, &support::agent::process_job("for-b", "true")).await;
        support::agent::bind(&admin, ns, "for-b", b, 1).await;
        let nodes: Api<BatchNode> = Api::all(s.node_client(a));
        let jobs: Api<BatchJob> = Api::namespaced(s.node_client(a), ns);
        let agent = PatchParams::apply("asg-batch-agent").force();
        let answers = vec![
            nodes
                .patch(b, &agent, &Patch::Apply(node_body(b, b)))
                .await
                .map(|_| ()),
            jobs.patch_status(
                "for-b",
                &PatchParams::apply("asg-batch-agent-attempt-1"),
                &Patch::Apply(
                    json!({"apiVersion": "asgbatch.io/v1alpha1", "kind": "BatchJob",
                    "metadata": {"name": "for-b", "namespace": ns},
                    "status": {"attempts": [{"attempt": 1, "startedAt": "2026-01-01T00:00:00Z"}]}}),
                ),
            )
            .await
            .map(|_| ()),
        ];
        answers
            .into_iter()
            .map(|r| {
                let st = status_of(r, s.label());
                serde_json::to_value(&st).expect("status as JSON")
            })
            .collect()
    }
    let want = denials(real, &ns, &a, &b).await;
    let got = denials(&embedded, &ns, &a, &b).await;
    assert_eq!(
        got, want,
        "embedded (left) and kube-apiserver (right) differ"
    );
    assert_eq!(want[0]["code"], 422, "{want:?}");
}

/// `asg-batch apiserver --token-auth-file`: kubectl with a token of the file acts as its
/// user, with another token gets 401 (without one, as the admin); a malformed file is refused at
/// start, naming its line.
#[tokio::test]
async fn the_apiserver_command_authenticates_a_token_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        "t-ok,asg-batch:node:i-1,1,\"asg-batch:nodes\"\nonly-a-token\n",
    )
    .unwrap();
    let o = tokio::process::Command::new(env!("CARGO_BIN_EXE_asg-batch"))
        .args(["apiserver", "--listen", "127.0.0.1:0", "--kubeconfig"])
        .arg(dir.path().join("never"))
        .arg("--token-auth-file")
        .arg(&bad)
        .output()
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("bad.csv, line 2"), "{e}");

    let tokens = dir.path().join("tokens.csv");
    std::fs::write(&tokens, "t-node,asg-batch:node:i-1,1,\"asg-batch:nodes\"\n").unwrap();
    let admin_kc = dir.path().join("kubeconfig");
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_asg-batch"))
        .args(["apiserver", "--listen", "127.0.0.1:0", "--kubeconfig"])
        .arg(&admin_kc)
        .arg("--token-auth-file")
        .arg(&tokens)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    support::wait_until("kubeconfig written", Duration::from_secs(20), || {
        admin_kc.exists()
    });
    let text = std::fs::read_to_string(&admin_kc).unwrap();
    let url = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .expect("server in kubeconfig")
        .to_string();
    // kube-rs sends the bearer token over plain HTTP (client-go, hence kubectl, does not:
    // it acts as the loopback admin here).
    let client_as = |token: &str| {
        let kc = dir.path().join(format!("kc-{token}"));
        std::fs::write(
            &kc,
            format!(
                "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: '{url}'}}}}]\n\
                 users: [{{name: u, user: {{token: {token}}}}}]\n\
                 contexts: [{{name: x, context: {{cluster: c, user: u}}}}]\ncurrent-context: x\n"
            ),
        )
        .unwrap();
        client_from_kubeconfig(&kc)
    };
    type Namespaces = Api<k8s_openapi::api::core::v1::Namespace>;
    let known: Namespaces = Api::all(client_as("t-node"));
    known
        .list(&Default::default())
        .await
        .expect("a token of the file");
    let unknown: Namespaces = Api::all(client_as("t-wrong"));
    let st = status_of(unknown.list(&Default::default()).await, "unknown token");
    assert_eq!(
        (st.code, st.reason.as_str()),
        (401, "Unauthorized"),
        "{st:?}"
    );
    server.kill().await.unwrap();
}
