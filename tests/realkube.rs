//! The project against a real kube-apiserver v1.35 and etcd (`tests/support/kube.rs`):
//! the generated CRDs install unchanged and become Established, the examples are accepted,
//! every invalid fixture is rejected naming its field, and the chart's RBAC holds.
//! One server for the whole file; each test has its own namespace.

mod support;

use asg_batch::api::BatchJob;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::Value;
use support::kube::RealKube;
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
        yaml.contains("asg-batch-agent"),
        "no agent RBAC in install.yaml"
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

    // The agent's ServiceAccount, with a real token from TokenRequest.
    let agent = real
        .client_for_service_account("asg-batch", "asg-batch-agent")
        .await;
    let jobs: Api<BatchJob> = Api::namespaced(agent.clone(), &ns);
    jobs.list(&ListParams::default())
        .await
        .expect("the agent lists BatchJobs");
    let s = api_error(
        jobs.create(&dry_run, &hello_job()).await,
        "agent creates a job",
    );
    assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"), "{s:?}");
    assert!(
        s.message
            .contains("system:serviceaccount:asg-batch:asg-batch-agent"),
        "{s:?}"
    );
    let nodes: Api<asg_batch::api::BatchNode> = Api::all(agent.clone());
    let s = api_error(
        nodes.delete("n1", &DeleteParams::default()).await,
        "agent deletes a node",
    );
    assert_eq!(s.code, 403, "{s:?}");

    // The controller's ServiceAccount creates jobs (dry run) but deletes none.
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
    assert_eq!(s.code, 403, "{s:?}");

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
