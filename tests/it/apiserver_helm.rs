//! Helm 4 against the embedded API server: install, upgrade, list and uninstall a chart.
//! Helm stores releases in Secrets through client-go's typed client, which sends
//! protobuf request bodies.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use crate::support;
use support::apiserver as apiserver_support;

use apiserver_support::*;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ListParams};

async fn helm(s: &TestServer, args: &[&str]) -> std::process::Output {
    s.helm(args).await
}

fn ok(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "helm failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[tokio::test]
async fn helm_install_upgrade_uninstall() {
    let s = server().await;
    let chart = s.dir.path().join("chart");
    std::fs::create_dir_all(chart.join("templates")).unwrap();
    std::fs::write(
        chart.join("Chart.yaml"),
        "apiVersion: v2\nname: demo\nversion: 0.1.0\n",
    )
    .unwrap();
    std::fs::write(
        chart.join("templates/cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: demo-cm\ndata:\n  a: \"{{ .Values.a | default \"1\" }}\"\n",
    )
    .unwrap();
    let chart = chart.to_str().unwrap().to_string();
    let o = ok(&helm(
        &s,
        &["install", "demo", &chart, "--wait", "--timeout", "30s"],
    )
    .await);
    assert!(o.contains("STATUS: deployed"), "{o}");
    let cms: Api<ConfigMap> = Api::namespaced(s.client(), "default");
    assert_eq!(cms.get("demo-cm").await.unwrap().data.unwrap()["a"], "1");
    let o = ok(&helm(&s, &["upgrade", "demo", &chart, "--set", "a=2"]).await);
    assert!(o.contains("REVISION: 2"), "{o}");
    assert_eq!(cms.get("demo-cm").await.unwrap().data.unwrap()["a"], "2");
    let o = ok(&helm(&s, &["list"]).await);
    assert!(
        o.lines()
            .any(|l| l.starts_with("demo") && l.contains("deployed")),
        "{o}"
    );
    let secrets: Api<Secret> = Api::namespaced(s.client(), "default");
    let releases = secrets
        .list(&ListParams::default().labels("owner=helm,name=demo"))
        .await
        .unwrap();
    assert_eq!(releases.items.len(), 2, "one release Secret per revision");
    ok(&helm(&s, &["uninstall", "demo"]).await);
    assert!(cms.get_opt("demo-cm").await.unwrap().is_none());
    assert!(
        secrets
            .list(&ListParams::default().labels("owner=helm"))
            .await
            .unwrap()
            .items
            .is_empty()
    );
}
