//! The Helm chart (`charts/asg-batch`) and the plain manifest rendered from it
//! (`manifests/install.yaml`): they lint, they install with the real helm and kubectl into
//! the embedded API server and into the real kube-apiserver (`support::kube`, one test
//! body for both), and what they install serves the example manifests.
//! Regenerate `manifests/install.yaml` with `make crds`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use crate::support;
use support::apiserver::{TestServer, server};
use support::kube::{Cluster, RealKube};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;

const NAMESPACE: &str = "asg-batch";

fn ok(what: &str, o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn chart() -> String {
    support::repo_root()
        .join("charts/asg-batch")
        .to_string_lossy()
        .into_owned()
}

/// What `manifests/install.yaml` must hold: the namespace, then the chart rendered with
/// its CRDs and default values.
async fn rendered_install(s: &TestServer) -> String {
    let out = ok(
        "helm template",
        &s.helm(&[
            "template",
            "asg-batch",
            &chart(),
            "--namespace",
            NAMESPACE,
            "--include-crds",
        ])
        .await,
    );
    format!(
        "# asg-batch without Helm: kubectl apply --server-side -f manifests/install.yaml\n\
         # Generated from charts/asg-batch with its default values (`make crds`); do not edit.\n\
         ---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NAMESPACE}\n{out}"
    )
}

#[tokio::test]
async fn chart_lints_and_install_yaml_is_current() {
    let s = server().await;
    let lint = ok("helm lint", &s.helm(&["lint", "--strict", &chart()]).await);
    assert!(lint.contains("0 chart(s) failed"), "{lint}");

    let rendered = rendered_install(&s).await;
    let path = support::repo_root().join("manifests/install.yaml");
    if std::env::var_os("ASG_BATCH_BLESS_CRDS").is_some() {
        std::fs::write(&path, &rendered).expect("write manifests/install.yaml");
    }
    let on_disk = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run `make crds`)", path.display()));
    assert!(
        on_disk == rendered,
        "manifests/install.yaml is stale: run `make crds` and commit the result"
    );
}

/// Waits until every CRD of the project is Established (on kube-apiserver that takes a
/// moment after the create).
async fn crds_established(s: &impl Cluster) {
    let crds: Api<CustomResourceDefinition> = Api::all(s.client());
    for doc in support::manifests::yaml_files(&support::repo_root().join("crds")) {
        let name = support::manifests::read_documents(&doc)[0]["metadata"]["name"]
            .as_str()
            .expect("name")
            .to_string();
        support::kube::wait_established(&crds, &name).await;
    }
}

#[tokio::test]
async fn helm_installs_the_controller_and_the_crds_serve_the_examples() {
    helm_install_upgrade_uninstall(&server().await).await;
}

#[tokio::test]
async fn helm_installs_the_controller_on_kube_apiserver() {
    // A server of its own: the chart's cluster-scoped objects belong to one release.
    helm_install_upgrade_uninstall(&RealKube::start()).await;
}

async fn helm_install_upgrade_uninstall(s: &impl Cluster) {
    let out = ok(
        "helm install",
        &s.helm(&[
            "install",
            "asg-batch",
            &chart(),
            "--namespace",
            NAMESPACE,
            "--create-namespace",
            "--set",
            "aws.region=eu-west-1",
        ])
        .await,
    );
    assert!(out.contains("STATUS: deployed"), "{out}");
    // NOTES: per-node identities, no shared long-lived token.
    assert!(
        out.contains("its own") && out.contains("asg-batch:node:<instance id"),
        "NOTES: {out}"
    );
    assert!(
        out.contains("username asg-batch:node:{{SessionName}}, group asg-batch:nodes"),
        "NOTES: {out}"
    );
    assert!(!out.contains("create token"), "NOTES: {out}");

    let crds: Api<CustomResourceDefinition> = Api::all(s.client());
    for name in [
        "computeenvironments.asgbatch.io",
        "jobqueues.asgbatch.io",
        "jobdefinitions.asgbatch.io",
        "batchjobs.asgbatch.io",
        "batchnodes.asgbatch.io",
    ] {
        assert!(crds.get_opt(name).await.expect("get").is_some(), "{name}");
    }

    let deployments: Api<Deployment> = Api::namespaced(s.client(), NAMESPACE);
    let d = deployments
        .get("asg-batch-controller")
        .await
        .expect("controller Deployment");
    let pod = d.spec.expect("spec").template.spec.expect("pod spec");
    assert_eq!(pod.service_account_name.as_deref(), Some("asg-batch"));
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("asg-batch:0.1.0"));
    assert_eq!(
        c.args.as_deref(),
        Some(
            &[
                "controller".to_string(),
                "--metrics-bind-address=0.0.0.0:8080".to_string()
            ][..]
        )
    );
    // Probes on the metrics port; two replicas (leader + warm standby).
    let probe_path = |p: Option<&k8s_openapi::api::core::v1::Probe>| {
        p.and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    assert_eq!(
        probe_path(c.liveness_probe.as_ref()).as_deref(),
        Some("/healthz")
    );
    assert_eq!(
        probe_path(c.readiness_probe.as_ref()).as_deref(),
        Some("/readyz")
    );
    let env: Vec<(String, Option<String>)> = c
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone()))
        .collect();
    assert!(
        env.contains(&("AWS_REGION".into(), Some("eu-west-1".into()))),
        "{env:?}"
    );
    assert!(
        !env.iter().any(|(n, _)| n == "AWS_ENDPOINT_URL"),
        "no endpoint override by default: {env:?}"
    );
    let sc = c.security_context.as_ref().expect("securityContext");
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));

    let sas: Api<ServiceAccount> = Api::namespaced(s.client(), NAMESPACE);
    assert!(sas.get_opt("asg-batch").await.expect("get").is_some());
    // No shared agent ServiceAccount: every node is its own user.
    assert!(sas.get_opt("asg-batch-agent").await.expect("get").is_none());

    // The controller may write what PROTOCOL.md gives it; the agent only its own parts.
    let roles: Api<ClusterRole> = Api::all(s.client());
    let grants = |role: &ClusterRole, group: &str, resource: &str, verb: &str| {
        role.rules.iter().flatten().any(|r| {
            r.api_groups.iter().flatten().any(|g| g == group)
                && r.resources.iter().flatten().any(|x| x == resource)
                && r.verbs.iter().any(|v| v == verb)
        })
    };
    let controller = roles.get("asg-batch-controller").await.expect("role");
    for (group, resource, verb) in [
        ("asgbatch.io", "batchjobs", "watch"),
        ("asgbatch.io", "batchjobs", "create"),
        ("asgbatch.io", "batchjobs", "patch"),
        ("asgbatch.io", "batchjobs/status", "patch"),
        ("asgbatch.io", "batchnodes/status", "patch"),
        ("asgbatch.io", "computeenvironments/status", "patch"),
        ("asgbatch.io", "jobdefinitions", "list"),
        ("events.k8s.io", "events", "create"),
        ("coordination.k8s.io", "leases", "update"),
    ] {
        assert!(
            grants(&controller, group, resource, verb),
            "controller may {verb} {group}/{resource}"
        );
    }
    let agent = roles.get("asg-batch-node").await.expect("role");
    assert!(grants(&agent, "asgbatch.io", "batchjobs/status", "patch"));
    assert!(grants(&agent, "asgbatch.io", "batchnodes", "create"));
    assert!(
        !grants(&agent, "asgbatch.io", "batchjobs", "patch")
            && !grants(&agent, "asgbatch.io", "batchjobs", "create"),
        "an agent cannot rebind or create jobs"
    );
    assert!(
        !grants(&agent, "", "secrets", "get"),
        "an agent reads only the Secrets granted to its node"
    );
    let bindings: Api<k8s_openapi::api::rbac::v1::ClusterRoleBinding> = Api::all(s.client());
    let node_binding = bindings.get("asg-batch-node").await.expect("binding");
    let subjects: Vec<(String, String)> = node_binding
        .subjects
        .iter()
        .flatten()
        .map(|s| (s.kind.clone(), s.name.clone()))
        .collect();
    assert_eq!(
        subjects,
        [("Group".to_string(), "asg-batch:nodes".to_string())]
    );
    let policies = s
        .kubectl(&[
            "get",
            "validatingadmissionpolicies,validatingadmissionpolicybindings",
            "-o",
            "name",
        ])
        .await;
    let policies = ok("kubectl get policies", &policies);
    assert!(
        policies.contains("validatingadmissionpolicy.admissionregistration.k8s.io/asg-batch-node-restriction")
            && policies.contains("validatingadmissionpolicybinding.admissionregistration.k8s.io/asg-batch-node-restriction"),
        "{policies}"
    );

    crds_established(s).await;
    let applied = s
        .kubectl(&["apply", "-f", "manifests/examples/", "--server-side"])
        .await;
    ok("kubectl apply examples", &applied);

    // Upgrade changes the Deployment; uninstall removes it but keeps the CRDs (and with
    // them every user's jobs), as Helm does with crds/.
    ok(
        "helm upgrade",
        &s.helm(&[
            "upgrade",
            "asg-batch",
            &chart(),
            "--namespace",
            NAMESPACE,
            "--set",
            "replicas=2",
        ])
        .await,
    );
    let d = deployments.get("asg-batch-controller").await.expect("get");
    assert_eq!(d.spec.and_then(|s| s.replicas), Some(2));
    ok(
        "helm uninstall",
        &s.helm(&["uninstall", "asg-batch", "--namespace", NAMESPACE])
            .await,
    );
    assert!(
        deployments
            .get_opt("asg-batch-controller")
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        crds.get_opt("batchjobs.asgbatch.io")
            .await
            .expect("get")
            .is_some()
    );
    let jobs = ok(
        "kubectl get bj",
        &s.kubectl(&["get", "bj", "-A", "-o", "name"]).await,
    );
    assert!(!jobs.trim().is_empty(), "the example jobs survive: {jobs}");
}

#[tokio::test]
async fn install_yaml_applies_with_plain_kubectl() {
    install_yaml_applies(&server().await).await;
}

#[tokio::test]
async fn install_yaml_applies_with_plain_kubectl_on_kube_apiserver() {
    install_yaml_applies(&RealKube::start()).await;
}

async fn install_yaml_applies(s: &impl Cluster) {
    ok(
        "kubectl apply install.yaml",
        &s.kubectl(&["apply", "--server-side", "-f", "manifests/install.yaml"])
            .await,
    );
    let out = ok(
        "kubectl get",
        &s.kubectl(&["get", "deploy,sa", "-n", NAMESPACE, "-o", "name"])
            .await,
    );
    assert!(
        out.contains("deployment.apps/asg-batch-controller"),
        "{out}"
    );
    assert!(out.contains("serviceaccount/asg-batch"), "{out}");
    assert!(!out.contains("serviceaccount/asg-batch-agent"), "{out}");
    crds_established(s).await;
    ok(
        "kubectl apply examples",
        &s.kubectl(&["apply", "-f", "manifests/examples/"]).await,
    );
}
