//! The real kubectl 1.35 against the embedded API server, with the project's CRDs and
//! example manifests: what a user types and sees.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use crate::support;
use support::apiserver as apiserver_support;

use std::process::Output;
use std::time::Duration;

use apiserver_support::*;
use asg_batch::api::{BatchJob, JobPhase};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}
fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}
fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "kubectl failed ({:?}):\nstdout: {}\nstderr: {}",
        o.status.code(),
        out(o),
        err(o)
    );
    out(o)
}

/// A server with crds/ and manifests/examples/ applied through kubectl.
async fn with_examples() -> TestServer {
    let s = server().await;
    let o = ok(&s.kubectl(&["apply", "-f", "crds/"]).await);
    for kind in [
        "batchjobs",
        "batchnodes",
        "computeenvironments",
        "jobdefinitions",
        "jobqueues",
    ] {
        assert!(
            o.contains(&format!(
                "customresourcedefinition.apiextensions.k8s.io/{kind}.asgbatch.io created"
            )),
            "{o}"
        );
    }
    let o = ok(&s.kubectl(&["apply", "-f", "manifests/examples/"]).await);
    assert!(o.contains("batchjob.asgbatch.io/hello created"), "{o}");
    assert!(o.contains("jobqueue.asgbatch.io/adhoc created"), "{o}");
    s
}

fn header(table: &str) -> Vec<String> {
    table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn row<'a>(table: &'a str, name: &str) -> Vec<&'a str> {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row {name} in\n{table}"))
        .split_whitespace()
        .collect()
}

#[tokio::test]
async fn apply_get_columns_categories_yaml_and_explain() {
    let s = with_examples().await;
    let t = ok(&s.kubectl(&["get", "bj"]).await);
    assert_eq!(
        header(&t),
        [
            "NAME",
            "QUEUE",
            "PHASE",
            "NODE",
            "ATTEMPTS",
            "POSITION",
            "EST-START",
            "AGE"
        ]
    );
    assert_eq!(row(&t, "hello")[1], "adhoc");
    // categories: every kind of the project
    let all = ok(&s.kubectl(&["get", "asgbatch"]).await);
    for n in [
        "batchjob.asgbatch.io/hello",
        "jobqueue.asgbatch.io/adhoc",
        "computeenvironment.asgbatch.io/local",
        "jobdefinition.asgbatch.io/nightly-etl",
    ] {
        assert!(all.contains(n), "{n} missing from\n{all}");
    }
    let y = ok(&s.kubectl(&["get", "bj", "hello", "-o", "yaml"]).await);
    let v: serde_yaml::Value = serde_yaml::from_str(&y).unwrap();
    assert_eq!(v["kind"].as_str(), Some("BatchJob"));
    assert_eq!(v["metadata"]["name"].as_str(), Some("hello"));
    assert_eq!(v["spec"]["queue"].as_str(), Some("adhoc"));
    assert!(v["metadata"]["uid"].as_str().is_some());
    // kubectl explain reads the OpenAPI v3 document
    let e = ok(&s.kubectl(&["explain", "batchjob.spec"]).await);
    assert!(e.contains("KIND:       BatchJob"), "{e}");
    assert!(e.contains("queue\t<string> -required-"), "{e}");
    let e = ok(&s.kubectl(&["explain", "bj.spec.retryStrategy"]).await);
    assert!(e.contains("attempts"), "{e}");
    // api-resources from discovery
    let r = ok(&s
        .kubectl(&["api-resources", "--api-group=asgbatch.io"])
        .await);
    let bj = row(&r, "batchjobs");
    assert_eq!(
        bj,
        [
            "batchjobs",
            "bj",
            "asgbatch.io/v1alpha1",
            "true",
            "BatchJob"
        ]
    );
    // re-applying the same manifests changes nothing
    let o = ok(&s
        .kubectl(&["apply", "-f", "manifests/examples/hello-local.yaml"])
        .await);
    assert!(o.contains("batchjob.asgbatch.io/hello unchanged"), "{o}");
}

/// The next `hello` row `kubectl get -w` prints (30 s at most); every line read is kept in
/// `seen` for the failure message.
async fn next_row(
    rows: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    what: &str,
    seen: &mut Vec<String>,
) -> String {
    let wait = async {
        while let Some(line) = rows.recv().await {
            seen.push(line.clone());
            if line.starts_with("hello") {
                return Some(line);
            }
        }
        None
    };
    match tokio::time::timeout(Duration::from_secs(30), wait).await {
        Ok(Some(row)) => row,
        other => panic!("kubectl get -w printed no {what} ({other:?}); output so far: {seen:?}"),
    }
}

#[tokio::test]
async fn get_watch_sees_another_clients_update() {
    let s = with_examples().await;
    let mut child = tokio::process::Command::new(kubectl_path())
        .args(["get", "bj", "hello", "-w", "--request-timeout=30s"])
        .env("KUBECONFIG", s.kubeconfig())
        .env("KUBECACHEDIR", s.dir.path().join("kube-cache"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Rows as kubectl prints them, line by line: the initial row shows the watch is open.
    let stdout = child.stdout.take().unwrap();
    let (tx, mut rows_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let initial = next_row(&mut rows_rx, "initial row", &mut seen).await;
    assert!(
        initial.split_whitespace().next() == Some("hello"),
        "{initial}"
    );
    let api: Api<BatchJob> = Api::namespaced(s.client(), "default");
    api.patch_status(
        "hello",
        &PatchParams::apply("test-controller"),
        &Patch::Apply(json!({
            "apiVersion": "asgbatch.io/v1alpha1", "kind": "BatchJob", "metadata": {"name": "hello"},
            "status": {"phase": "Running", "node": "node-7"},
        })),
    )
    .await
    .unwrap();
    let update = next_row(&mut rows_rx, "row for the update", &mut seen).await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let text = seen.join("\n");
    let updated: Vec<&str> = update.split_whitespace().collect();
    assert_eq!(
        &updated[..4],
        ["hello", "adhoc", "Running", "node-7"],
        "{text}"
    );
    assert!(matches!(
        api.get("hello").await.unwrap().status.unwrap().phase,
        Some(JobPhase::Running)
    ));
}

#[tokio::test]
async fn patch_merge_status_and_server_side_apply_conflicts() {
    let s = with_examples().await;
    let o = ok(&s
        .kubectl(&[
            "patch",
            "bj",
            "hello",
            "--type=merge",
            "-p",
            r#"{"spec":{"timeoutSeconds":60}}"#,
        ])
        .await);
    assert_eq!(o.trim(), "batchjob.asgbatch.io/hello patched");
    let o = ok(&s
        .kubectl(&[
            "patch",
            "bj",
            "hello",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Runnable"}}"#,
        ])
        .await);
    assert_eq!(o.trim(), "batchjob.asgbatch.io/hello patched");
    let t = ok(&s.kubectl(&["get", "bj", "hello"]).await);
    assert_eq!(row(&t, "hello")[2], "Runnable");
    let j = ok(&s
        .kubectl(&[
            "get",
            "bj",
            "hello",
            "-o",
            "jsonpath={.spec.timeoutSeconds} {.metadata.generation}",
        ])
        .await);
    assert_eq!(
        j, "60 2",
        "spec patch bumped generation once; status patch did not"
    );
    // a status patch through the main resource does not change status
    ok(&s
        .kubectl(&[
            "patch",
            "bj",
            "hello",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Failed"}}"#,
        ])
        .await);
    let j = ok(&s
        .kubectl(&["get", "bj", "hello", "-o", "jsonpath={.status.phase}"])
        .await);
    assert_eq!(j, "Runnable");

    // server-side apply: a field another manager set to another value conflicts
    let manifest = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("manifests/examples/hello-local.yaml"),
    )
    .unwrap()
    .replace(
        "shareIdentifier: analytics",
        "shareIdentifier: analytics\n  timeoutSeconds: 120",
    );
    let o = s
        .kubectl_stdin(&["apply", "--server-side", "-f", "-"], Some(&manifest))
        .await;
    assert_eq!(o.status.code(), Some(1), "{}{}", out(&o), err(&o));
    let e = err(&o);
    assert!(
        e.contains("Apply failed with 1 conflict: conflict with \"kubectl-patch\""),
        "{e}"
    );
    assert!(e.contains(".spec.timeoutSeconds"), "{e}");
    assert!(e.contains("--force-conflicts"), "{e}");
    let o = ok(&s
        .kubectl_stdin(
            &["apply", "--server-side", "--force-conflicts", "-f", "-"],
            Some(&manifest),
        )
        .await);
    assert_eq!(o.trim(), "batchjob.asgbatch.io/hello serverside-applied");
    let j = ok(&s
        .kubectl(&[
            "get",
            "bj",
            "hello",
            "-o",
            "jsonpath={.spec.timeoutSeconds}",
        ])
        .await);
    assert_eq!(j, "120");
}

#[tokio::test]
async fn delete_with_finalizer_pending() {
    let s = with_examples().await;
    ok(&s
        .kubectl(&[
            "patch",
            "bj",
            "hello",
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":["asgbatch.io/test-hold"]}}"#,
        ])
        .await);
    let o = ok(&s.kubectl(&["delete", "bj", "hello", "--wait=false"]).await);
    assert!(o.contains("batchjob.asgbatch.io \"hello\" deleted"), "{o}");
    let j = ok(&s
        .kubectl(&[
            "get",
            "bj",
            "hello",
            "-o",
            "jsonpath={.metadata.deletionTimestamp}",
        ])
        .await);
    assert!(!j.is_empty(), "still there, terminating");
    // a waiting delete times out while the finalizer is pending
    let o = s.kubectl(&["delete", "bj", "hello", "--timeout=2s"]).await;
    assert_ne!(o.status.code(), Some(0));
    ok(&s
        .kubectl(&[
            "patch",
            "bj",
            "hello",
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
        ])
        .await);
    let o = s.kubectl(&["get", "bj", "hello"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("batchjobs.asgbatch.io \"hello\" not found"),
        "{}",
        err(&o)
    );
}

#[tokio::test]
async fn invalid_manifests_name_the_field() {
    let s = with_examples().await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/invalid");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 5);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .expect("# expect: line");
        let message = text.lines().find_map(|l| l.strip_prefix("# message: "));
        let o = s.kubectl(&["apply", "-f", f.to_str().unwrap()]).await;
        assert_eq!(o.status.code(), Some(1), "{}: {}", f.display(), out(&o));
        let e = err(&o);
        assert!(e.contains("is invalid"), "{}: {e}", f.display());
        assert!(
            e.contains(expect),
            "{}: field {expect} not named in {e}",
            f.display()
        );
        if let Some(m) = message {
            assert!(e.contains(m), "{}: {m:?} not in {e}", f.display());
        }
    }
    // unknown fields: kubectl validates strictly by default
    let o = s
        .kubectl_stdin(
            &["apply", "-f", "-"],
            Some("apiVersion: asgbatch.io/v1alpha1\nkind: BatchJob\nmetadata:\n  name: typo\nspec:\n  queue: adhoc\n  qeueu: x\n  container:\n    image: busybox\n"),
        )
        .await;
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("unknown field \"spec.qeueu\""),
        "{}",
        err(&o)
    );
}
