//! The project against a real kube-apiserver v1.35 and etcd (`tests/it/support/kube.rs`):
//! the generated CRDs install unchanged and become Established, the examples are accepted,
//! every invalid fixture is rejected naming its field, and the chart's RBAC holds.
//! The `both_servers_*` tests run one body against the embedded server and the real one
//! and compare what they answer. One real server for the whole file; each test has its
//! own namespace.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use crate::support;

use asg_batch::api::BatchJob;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::Value;
use support::kube::{Cluster, RealKube, install_crds};
use support::manifests::{read_documents, yaml_files};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn api_error(r: Result<impl std::fmt::Debug, kube::Error>, what: &str) -> kube::core::Status {
    match r {
        Err(kube::Error::Api(s)) => *s,
        other => panic!("{what}: expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn the_server_is_kube_apiserver_1_35() {
    let real = RealKube::shared();
    let v = real.client().apiserver_version().await.expect("/version");
    assert_eq!((v.major.as_str(), v.minor.as_str()), ("1", "35"), "{v:?}");
    assert!(v.git_version.starts_with("v1.35."), "{v:?}");
}

#[tokio::test]
async fn generated_crds_install_unchanged_and_become_established() {
    let real = RealKube::shared();
    let crds = real.install_crds().await;
    let files = yaml_files(&support::repo_root().join("crds"));
    assert_eq!(crds.len(), files.len(), "one CRD per file in crds/");
    assert!(crds.len() >= 5, "{} CRDs", crds.len());
    // The server stored the schemas as written: nothing pruned or rewritten.
    for file in files {
        let doc = &read_documents(&file)[0];
        let name = doc["metadata"]["name"].as_str().unwrap();
        let stored = crds
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(name))
            .unwrap();
        let stored = serde_json::to_value(&stored.spec.versions).unwrap();
        assert_eq!(
            stored,
            doc["spec"]["versions"],
            "{}: stored versions differ",
            file.display()
        );
    }
}

#[tokio::test]
async fn the_examples_are_accepted_and_read_back_into_the_rust_types() {
    let real = RealKube::shared();
    real.install_crds().await;
    let ns = real.namespace("examples").await;
    let o = real
        .kubectl(&["apply", "-n", &ns, "-f", "manifests/examples/"])
        .await;
    assert!(o.status.success(), "kubectl apply: {}", stderr(&o));
    let jobs: Api<BatchJob> = Api::namespaced(real.client(), &ns);
    let stored = jobs.list(&ListParams::default()).await.expect("list jobs");
    let expected: usize = yaml_files(&support::repo_root().join("manifests/examples"))
        .iter()
        .flat_map(|f| read_documents(f))
        .filter(|d| d["kind"] == "BatchJob")
        .count();
    assert!(expected >= 1);
    assert_eq!(stored.items.len(), expected);
    assert!(
        stored
            .items
            .iter()
            .any(|j| j.metadata.name.as_deref() == Some("hello"))
    );
}

/// The fixture's `# expect: FIELD` and optional `# message: TEXT` lines.
fn expectation(text: &str) -> (String, Option<String>) {
    let header = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("# {key}: ")))
            .map(|s| s.trim().to_string())
    };
    (header("expect").expect("# expect: line"), header("message"))
}

#[tokio::test]
async fn every_invalid_fixture_is_rejected_naming_its_field() {
    let real = RealKube::shared();
    real.install_crds().await;
    let ns = real.namespace("invalid").await;
    let files = yaml_files(&support::repo_root().join("tests/fixtures/invalid"));
    assert!(files.len() >= 8, "invalid fixtures missing");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let (field, message) = expectation(&text);
        // kubectl, as a user sees it.
        let o = real
            .kubectl(&["apply", "-n", &ns, "-f", file.to_str().unwrap()])
            .await;
        assert_eq!(o.status.code(), Some(1), "{}: accepted", file.display());
        let e = stderr(&o);
        assert!(e.contains("is invalid"), "{}: {e}", file.display());
        assert!(
            e.contains(&field),
            "{}: {field} not named in {e}",
            file.display()
        );
        if let Some(m) = &message {
            assert!(
                e.contains(m.as_str()),
                "{}: {m:?} not in {e}",
                file.display()
            );
        }
        // kube-rs: 422 Invalid with a cause on the field.
        let doc: Value = read_documents(&file).remove(0);
        let kind = doc["kind"].as_str().unwrap().to_string();
        let ar = kube::api::ApiResource {
            group: "asgbatch.io".into(),
            version: "v1alpha1".into(),
            api_version: "asgbatch.io/v1alpha1".into(),
            kind: kind.clone(),
            plural: format!("{}s", kind.to_lowercase()),
        };
        let obj: kube::api::DynamicObject = serde_json::from_value(doc).unwrap();
        let api: Api<kube::api::DynamicObject> = if kind == "BatchJob" {
            Api::namespaced_with(real.client(), &ns, &ar)
        } else {
            Api::all_with(real.client(), &ar)
        };
        let s = api_error(
            api.create(&PostParams::default(), &obj).await,
            &file.display().to_string(),
        );
        assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"), "{s:?}");
        let causes = s
            .details
            .as_ref()
            .map(|d| d.causes.clone())
            .unwrap_or_default();
        assert!(
            causes.iter().any(|c| c.field == field
                || c.field.starts_with(&format!("{field}."))
                || c.field.starts_with(&format!("{field}["))),
            "{}: no cause on {field}: {causes:?}",
            file.display()
        );
    }
    // Unknown fields: kubectl validates strictly by default (server-side field validation).
    let o = real
        .kubectl_stdin(
            &["apply", "-n", &ns, "-f", "-"],
            Some("apiVersion: asgbatch.io/v1alpha1\nkind: BatchJob\nmetadata:\n  name: typo\nspec:\n  queue: adhoc\n  qeueu: x\n  container:\n    image: busybox\n"),
        )
        .await;
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("unknown field \"spec.qeueu\""),
        "{}",
        stderr(&o)
    );
}

/// The chart's ServiceAccounts, ClusterRoles and bindings from `manifests/install.yaml`.
async fn apply_chart_rbac(real: &RealKube) {
    let docs = read_documents(&support::repo_root().join("manifests/install.yaml"));
    let wanted = [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
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
        yaml.contains("asg-batch-node"),
        "no node agent RBAC in install.yaml"
    );
    let o = real
        .kubectl_stdin(&["apply", "--server-side", "-f", "-"], Some(&yaml))
        .await;
    assert!(o.status.success(), "apply RBAC: {}", stderr(&o));
}

fn hello_job() -> BatchJob {
    let doc =
        read_documents(&support::repo_root().join("manifests/examples/hello-local.yaml")).remove(0);
    serde_json::from_value(doc).expect("hello BatchJob")
}

#[tokio::test]
async fn chart_rbac_lets_the_agent_read_jobs_but_not_create_them() {
    let real = RealKube::shared();
    real.install_crds().await;
    apply_chart_rbac(real).await;
    let ns = real.namespace("rbac").await;
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };

    // A node agent: its own user in the nodes' group (a client certificate).
    let agent = real.client_for_user("asg-batch:node:n1", &["asg-batch:nodes"]);
    let jobs: Api<BatchJob> = Api::namespaced(agent.clone(), &ns);
    jobs.list(&ListParams::default())
        .await
        .expect("the agent lists BatchJobs");
    let s = api_error(
        jobs.create(&dry_run, &hello_job()).await,
        "agent creates a job",
    );
    assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"), "{s:?}");
    assert!(s.message.contains("asg-batch:node:n1"), "{s:?}");
    let nodes: Api<asg_batch::api::BatchNode> = Api::all(agent.clone());
    let s = api_error(
        nodes.delete("n1", &DeleteParams::default()).await,
        "agent deletes a node",
    );
    assert_eq!(s.code, 403, "{s:?}");

    // The controller's ServiceAccount creates jobs (dry run) and may delete them (finished
    // jobs past their ttlSecondsAfterFinished): a job that is not there is NotFound, not
    // Forbidden.
    let controller = real
        .client_for_service_account("asg-batch", "asg-batch")
        .await;
    let jobs: Api<BatchJob> = Api::namespaced(controller, &ns);
    jobs.create(&dry_run, &hello_job())
        .await
        .expect("the controller creates a BatchJob");
    let s = api_error(
        jobs.delete("hello", &DeleteParams::default()).await,
        "controller deletes a job",
    );
    assert_eq!((s.code, s.reason.as_str()), (404, "NotFound"), "{s:?}");

    // A certificate identity nothing is bound to is denied, by name.
    let stranger = real.client_for_user("asg-batch:test:stranger", &["asg-batch:test"]);
    let jobs: Api<BatchJob> = Api::namespaced(stranger, &ns);
    let s = api_error(
        jobs.list(&ListParams::default()).await,
        "stranger lists jobs",
    );
    assert_eq!(s.code, 403, "{s:?}");
    assert!(s.message.contains("\"asg-batch:test:stranger\""), "{s:?}");
}

#[tokio::test]
async fn a_server_of_ones_own_stops_on_drop() {
    let own = RealKube::start();
    let addr = own.url().trim_start_matches("https://").to_string();
    let dir = own.dir().to_path_buf();
    own.client()
        .apiserver_version()
        .await
        .expect("/version of an own server");
    drop(own);
    assert!(!dir.exists(), "{} left behind", dir.display());
    // Polled, not slept: the port refuses connections once kube-apiserver has exited.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while std::net::TcpStream::connect(&addr).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "{addr} still accepts connections"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Creates the namespace `name` (the embedded server is fresh per test, so the real
/// server's generated name is free there).
async fn create_namespace(c: &impl Cluster, name: &str) {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(c.client());
    let ns = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("{}: create namespace {name}: {e}", c.label()),
    }
}

/// How the embedded server's messages are known to differ from kube-apiserver 1.35's:
/// (embedded text, kube-apiserver text). Each is a bug of the embedded server
/// (`crates/asg-batch-apiserver`) until fixed there; the test holds everything else equal.
/// (Both former entries, the CEL rule's `Invalid value: "object": ` and the quoted
/// `"null"`, were fixed in `crates/asg-batch-apiserver/src/schema`.)
const KNOWN_MESSAGE_DIFFERENCES: &[(&str, &str)] = &[];

/// The parts of a rejection that must match: code, reason, kind, name, and each cause.
fn rejection(s: &kube::core::Status, embedded: bool) -> Value {
    let fix = |m: &str| {
        let mut m = m.to_string();
        if embedded {
            for (from, to) in KNOWN_MESSAGE_DIFFERENCES {
                m = m.replace(from, to);
            }
        }
        m
    };
    let d = s.details.as_ref();
    let causes: Vec<Value> = d
        .map(|d| d.causes.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|c| serde_json::json!([c.reason, c.field, fix(&c.message)]))
        .collect();
    serde_json::json!({
        "code": s.code,
        "reason": s.reason,
        "message": fix(&s.message),
        "kind": d.map(|d| d.kind.clone()),
        "name": d.map(|d| d.name.clone()),
        "causes": causes,
    })
}

async fn create_fixture(c: &impl Cluster, ns: &str, doc: &Value) -> kube::core::Status {
    let kind = doc["kind"].as_str().unwrap();
    let ar = kube::api::ApiResource {
        group: "asgbatch.io".into(),
        version: "v1alpha1".into(),
        api_version: "asgbatch.io/v1alpha1".into(),
        kind: kind.into(),
        plural: format!("{}s", kind.to_lowercase()),
    };
    let obj: kube::api::DynamicObject = serde_json::from_value(doc.clone()).unwrap();
    let api: Api<kube::api::DynamicObject> = if kind == "BatchJob" {
        Api::namespaced_with(c.client(), ns, &ar)
    } else {
        Api::all_with(c.client(), &ar)
    };
    api_error(api.create(&PostParams::default(), &obj).await, c.label())
}

#[tokio::test]
async fn both_servers_reject_the_invalid_fixtures_alike() {
    let real = RealKube::shared();
    let embedded = support::apiserver::server().await;
    install_crds(&Cluster::client(real)).await;
    install_crds(&Cluster::client(&embedded)).await;
    let ns = real.namespace("diff-invalid").await;
    create_namespace(&embedded, &ns).await;
    let mut differences = Vec::new();
    for file in yaml_files(&support::repo_root().join("tests/fixtures/invalid")) {
        let doc = read_documents(&file).remove(0);
        let want = rejection(&create_fixture(real, &ns, &doc).await, false);
        let got = rejection(&create_fixture(&embedded, &ns, &doc).await, true);
        if want != got {
            differences.push(format!(
                "{}:\n  kube-apiserver: {want}\n  embedded:       {got}",
                file.display()
            ));
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
}

/// Server-side applies of `status.attempts` (a list-map keyed by `attempt`) by the
/// controller and an attempt's agent, as in `src/api/PROTOCOL.md`; after each, the
/// status and the two managers' managed fields.
async fn attempts_sequence(c: &impl Cluster, ns: &str) -> Vec<Value> {
    use kube::api::{Patch, PatchParams};
    let jobs: Api<BatchJob> = Api::namespaced(c.client(), ns);
    jobs.create(&PostParams::default(), &hello_job())
        .await
        .unwrap_or_else(|e| panic!("{}: create hello: {e}", c.label()));
    let ctl = "asg-batch-controller";
    let agent = "asg-batch-agent-attempt-1";
    let steps = [
        (ctl, serde_json::json!([{"attempt": 1, "node": "n1"}])),
        (
            agent,
            serde_json::json!([{"attempt": 1, "startedAt": "2026-01-01T00:00:00Z"}]),
        ),
        (
            ctl,
            serde_json::json!([{"attempt": 1, "node": "n1"}, {"attempt": 2, "node": "n2"}]),
        ),
        (
            agent,
            serde_json::json!([{"attempt": 1, "startedAt": "2026-01-01T00:00:00Z", "exitCode": 1, "reason": "Error"}]),
        ),
        // The controller lets go of attempt 1: the agent's fields of it stay.
        (ctl, serde_json::json!([{"attempt": 2, "node": "n2"}])),
    ];
    let mut out = Vec::new();
    for (manager, attempts) in steps {
        let patch = serde_json::json!({
            "apiVersion": "asgbatch.io/v1alpha1",
            "kind": "BatchJob",
            "metadata": {"name": "hello"},
            "status": {"attempts": attempts},
        });
        let job = jobs
            .patch_status(
                "hello",
                &PatchParams::apply(manager).force(),
                &Patch::Apply(&patch),
            )
            .await
            .unwrap_or_else(|e| panic!("{}: apply by {manager}: {e}", c.label()));
        let mut owners: Vec<Value> = job
            .metadata
            .managed_fields
            .unwrap_or_default()
            .into_iter()
            .filter(|m| [ctl, agent].contains(&m.manager.as_deref().unwrap_or_default()))
            .map(|m| serde_json::json!([m.manager, m.operation, m.subresource, m.fields_v1]))
            .collect();
        owners.sort_by_key(std::string::ToString::to_string);
        out.push(serde_json::json!({
            "after": manager,
            "status": serde_json::to_value(&job.status).unwrap(),
            "owners": owners,
        }));
    }
    out
}

#[tokio::test]
async fn both_servers_merge_the_attempts_list_map_alike() {
    let real = RealKube::shared();
    let embedded = support::apiserver::server().await;
    install_crds(&Cluster::client(real)).await;
    install_crds(&Cluster::client(&embedded)).await;
    let ns = real.namespace("diff-attempts").await;
    create_namespace(&embedded, &ns).await;
    let want = attempts_sequence(real, &ns).await;
    let got = attempts_sequence(&embedded, &ns).await;
    for (w, g) in want.iter().zip(&got) {
        assert_eq!(
            g, w,
            "embedded (left) and kube-apiserver (right) differ after the apply by {}",
            w["after"]
        );
    }
    assert_eq!(want.len(), got.len());
    // What the protocol relies on, on the real server.
    let last = &want.last().unwrap()["status"]["attempts"];
    assert_eq!(last[0]["exitCode"], 1, "{last}");
    assert!(last[0].get("node").is_none(), "{last}");
    assert_eq!(last[1]["node"], "n2", "{last}");
}

/// Runs `asg-batch ARGS` with `kubeconfig`, its log (debug) into `log`.
fn spawn_binary(
    args: &[&str],
    kubeconfig: &std::path::Path,
    log: &std::path::Path,
) -> tokio::process::Child {
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

async fn sigterm_and_wait(child: &mut tokio::process::Child) -> std::process::ExitStatus {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().expect("running")).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    tokio::time::timeout(std::time::Duration::from_secs(60), child.wait())
        .await
        .expect("exits after SIGTERM")
        .expect("wait")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_identities_alone_run_a_job() {
    // A server of its own: cluster-scoped compute environment and queue names.
    let real = RealKube::start();
    real.install_crds().await;
    apply_chart_rbac(&real).await;
    let world = "apiVersion: asgbatch.io/v1alpha1\nkind: ComputeEnvironment\nmetadata: {name: static}\n\
         spec:\n  local: {executor: process}\n  minInstances: 1\n  maxInstances: 1\n  \
         instanceShape: {cpu: '2', memory: 1Gi}\n---\n\
         apiVersion: asgbatch.io/v1alpha1\nkind: JobQueue\nmetadata: {name: q}\n\
         spec: {priority: 1, computeEnvironments: [static]}\n---\n\
         apiVersion: asgbatch.io/v1alpha1\nkind: BatchJob\nmetadata: {name: once, namespace: default}\n\
         spec:\n  queue: q\n  process: {command: [sh, -c, 'echo attempt $AWS_BATCH_JOB_ATTEMPT; exit 5']}\n  \
         resources: {cpu: '1', memory: 64Mi}\n  retryStrategy: {attempts: 2}\n";
    let o = real.kubectl_stdin(&["apply", "-f", "-"], Some(world)).await;
    assert!(o.status.success(), "apply world: {}", stderr(&o));

    // Each runs with nothing but its ServiceAccount's token (TokenRequest), as installed.
    let token = real.mint_token("asg-batch", "asg-batch").await;
    let controller_kc = real.kubeconfig_for_token("controller", &token);
    // The agent as its node's own user (client certificate), bound through the nodes' group.
    let agent_kc =
        real.kubeconfig_for_user("agent", "asg-batch:node:static-1", &["asg-batch:nodes"]);
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
    let mut agent = spawn_binary(
        &[
            "agent",
            "--compute-environment",
            "static",
            "--instance-id",
            "static-1",
            "--heartbeat-interval",
            "1",
        ],
        &agent_kc,
        &agent_log,
    );

    // Both attempts run and fail with exit code 5 (retried while attempts remain).
    let jobs: Api<BatchJob> = Api::namespaced(real.client(), "default");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let job = loop {
        let j = jobs.get("once").await.expect("get job");
        let phase = j.status.as_ref().and_then(|s| s.phase);
        if phase == Some(asg_batch::api::JobPhase::Failed) {
            break j;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "job not Failed after 90 s: {:?}\ncontroller log:\n{}\nagent log:\n{}",
            j.status,
            std::fs::read_to_string(&controller_log).unwrap_or_default(),
            std::fs::read_to_string(&agent_log).unwrap_or_default(),
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let attempts: Vec<_> = job
        .status
        .unwrap_or_default()
        .attempts
        .iter()
        .map(|a| (a.attempt, a.exit_code, a.node.clone()))
        .collect();
    assert_eq!(
        attempts,
        [
            (1, Some(5), Some("static-1".to_string())),
            (2, Some(5), Some("static-1".to_string()))
        ]
    );
    assert!(sigterm_and_wait(&mut agent).await.success());
    assert!(sigterm_and_wait(&mut controller).await.success());
    // Nothing either did was refused, not even what it only logs (Events, leases).
    for log in [&controller_log, &agent_log] {
        let text = std::fs::read_to_string(log).unwrap();
        assert!(
            !text.to_lowercase().contains("forbidden"),
            "{}: a request was refused:\n{}",
            log.display(),
            text.lines()
                .filter(|l| l.to_lowercase().contains("forbidden"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// Whether the ServiceAccount `asg-batch/<sa>` (or, for a name starting `asg-batch:node:`,
/// that node agent's user in `asg-batch:nodes`) may `verb` `resource` (`group/resource` or
/// `group/resource/subresource`, group empty for the core group) in namespace `default`
/// (cluster-scoped resources ignore it): a SubjectAccessReview by the admin, evaluated by
/// the server's RBAC authorizer.
async fn allowed(real: &RealKube, sa: &str, verb: &str, resource: &str) -> bool {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
    };
    let mut parts = resource.split('/');
    let group = parts.next().unwrap();
    let resource_name = parts.next().unwrap();
    let subresource = parts.next();
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(if sa.starts_with("asg-batch:node:") {
                sa.to_string()
            } else {
                format!("system:serviceaccount:asg-batch:{sa}")
            }),
            groups: Some(if sa.starts_with("asg-batch:node:") {
                vec!["asg-batch:nodes".into(), "system:authenticated".into()]
            } else {
                vec![
                    "system:serviceaccounts".into(),
                    "system:serviceaccounts:asg-batch".into(),
                    "system:authenticated".into(),
                ]
            }),
            resource_attributes: Some(ResourceAttributes {
                group: Some(group.into()),
                resource: Some(resource_name.into()),
                subresource: subresource.map(Into::into),
                verb: Some(verb.into()),
                namespace: Some("default".into()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    let api: Api<SubjectAccessReview> = Api::all(real.client());
    api.create(&PostParams::default(), &review)
        .await
        .expect("SubjectAccessReview")
        .status
        .expect("review status")
        .allowed
}

#[tokio::test]
async fn chart_rbac_grants_what_protocol_md_needs_and_not_more() {
    let real = RealKube::shared();
    real.install_crds().await;
    apply_chart_rbac(real).await;
    let a = "asgbatch.io";
    // (identity, verb, resource, allowed?) after src/api/PROTOCOL.md.
    let controller = "asg-batch";
    let agent = "asg-batch:node:i-0abc";
    let matrix: &[(&str, &str, String, bool)] = &[
        // The controller reads everything, binds and labels jobs, creates array children,
        // owns the status of jobs, nodes, compute environments and queues, records Events
        // and holds the leader Lease.
        (
            controller,
            "watch",
            format!("{a}/computeenvironments"),
            true,
        ),
        (controller, "watch", format!("{a}/jobqueues"), true),
        (controller, "get", format!("{a}/jobdefinitions"), true),
        (controller, "watch", format!("{a}/batchnodes"), true),
        (controller, "watch", format!("{a}/batchjobs"), true),
        (controller, "create", format!("{a}/batchjobs"), true),
        (controller, "patch", format!("{a}/batchjobs"), true),
        (controller, "patch", format!("{a}/batchjobs/status"), true),
        (controller, "patch", format!("{a}/batchnodes/status"), true),
        (
            controller,
            "patch",
            format!("{a}/computeenvironments/status"),
            true,
        ),
        (controller, "patch", format!("{a}/jobqueues/status"), true),
        (
            controller,
            "patch",
            format!("{a}/jobdefinitions/status"),
            true,
        ),
        (controller, "create", "events.k8s.io/events".into(), true),
        (
            controller,
            "update",
            "coordination.k8s.io/leases".into(),
            true,
        ),
        (
            controller,
            "create",
            "coordination.k8s.io/leases".into(),
            true,
        ),
        // It deletes finished jobs past their ttlSecondsAfterFinished, and the BatchNodes of
        // instances that left their fleet ...
        (controller, "delete", format!("{a}/batchjobs"), true),
        (controller, "delete", format!("{a}/batchnodes"), true),
        // ... and does nothing that is the agent's or the user's.
        (controller, "patch", format!("{a}/batchnodes"), false),
        (controller, "create", format!("{a}/batchnodes"), false),
        (
            controller,
            "patch",
            format!("{a}/computeenvironments"),
            false,
        ),
        // It grants each node the Secrets of its bound jobs (a Role per namespace and node),
        // so it holds `get` on Secrets (RBAC's escalation rule), but never lists them.
        (controller, "get", "/secrets".into(), true),
        (controller, "list", "/secrets".into(), false),
        (controller, "watch", "/secrets".into(), false),
        (
            controller,
            "create",
            "rbac.authorization.k8s.io/roles".into(),
            true,
        ),
        (
            controller,
            "delete",
            "rbac.authorization.k8s.io/rolebindings".into(),
            true,
        ),
        (
            controller,
            "escalate",
            "rbac.authorization.k8s.io/roles".into(),
            false,
        ),
        (
            controller,
            "bind",
            "rbac.authorization.k8s.io/roles".into(),
            false,
        ),
        (
            controller,
            "create",
            "rbac.authorization.k8s.io/clusterrolebindings".into(),
            false,
        ),
        // A node agent registers and heartbeats its BatchNode, watches the jobs bound to
        // it, reports attempts in their status, reads definitions; which node and which
        // jobs is the admission policy's business (tests/it/node_authz.rs).
        (agent, "create", format!("{a}/batchnodes"), true),
        (agent, "patch", format!("{a}/batchnodes"), true),
        (agent, "patch", format!("{a}/batchnodes/status"), true),
        (agent, "watch", format!("{a}/batchjobs"), true),
        (agent, "patch", format!("{a}/batchjobs/status"), true),
        (agent, "get", format!("{a}/jobdefinitions"), true),
        (agent, "get", format!("{a}/computeenvironments"), true),
        // ... and cannot read Secrets (the controller grants those per node and job),
        // create, bind, relabel or delete jobs, delete nodes,
        // write compute environments or queues, or take the controller's Lease.
        (agent, "create", format!("{a}/batchjobs"), false),
        (agent, "patch", format!("{a}/batchjobs"), false),
        (agent, "update", format!("{a}/batchjobs"), false),
        (agent, "delete", format!("{a}/batchjobs"), false),
        (agent, "delete", format!("{a}/batchnodes"), false),
        (agent, "update", format!("{a}/batchnodes/status"), false),
        (agent, "patch", format!("{a}/jobdefinitions/status"), false),
        (agent, "get", "/secrets".into(), false),
        (agent, "list", "/secrets".into(), false),
        (agent, "create", "events.k8s.io/events".into(), false),
        (
            agent,
            "patch",
            format!("{a}/computeenvironments/status"),
            false,
        ),
        (agent, "patch", format!("{a}/jobqueues"), false),
        (agent, "update", "coordination.k8s.io/leases".into(), false),
    ];
    let mut wrong = Vec::new();
    for (sa, verb, resource, want) in matrix {
        let got = allowed(real, sa, verb, resource).await;
        if got != *want {
            wrong.push(format!(
                "{sa} {verb} {resource}: {} but should {}",
                if got { "allowed" } else { "denied" },
                if *want { "be allowed" } else { "not be" }
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
