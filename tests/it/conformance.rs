//! Differential conformance: one request sequence, through kube-rs and through kubectl,
//! against the embedded API server (`crates/asg-batch-apiserver`) and the real kube-apiserver v1.35 +
//! etcd (`tests/it/support/kube.rs`). Every step records what the server answered — status
//! code, reason, message, causes and field paths, the resulting object (uid, timestamps
//! and resourceVersion values blanked, managedFields times dropped), watch event
//! sequences, kubectl's exit code and output — and the two recordings must be equal, step
//! by step, except for the differences listed in [`KNOWN_DIFFERENCES`] (each one
//! explained in `crates/asg-batch-apiserver/README.md`).
//!
//! Covered: create, AlreadyExists, server-side apply by two managers (conflict, force,
//! the `status.attempts` list-map), resourceVersion conflicts, `/status` rules, dry-run,
//! label and field selectors, watches from a resourceVersion with bookmarks, streaming
//! lists, 410 Gone for a too-old resourceVersion, lists at an exact resourceVersion,
//! finalizers and deletion, SSA of unknown fields, Table output (raw and `kubectl get`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use crate::support;

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, ApiResource, DynamicObject, WatchEvent, WatchParams};
use serde_json::{Value, json};
use support::kube::{Cluster, RealKube, install_crds};

/// Steps whose answers are known to differ, with why (see `crates/asg-batch-apiserver/README.md`,
/// "Checked against kube-apiserver"). A listed step that stops differing fails the test,
/// so the list stays true. Empty: every difference this sequence found was fixed in the
/// embedded server. Not compared at all, on purpose: periodic BOOKMARK events (their
/// timing is each server's: 5 s embedded, about a minute kube-apiserver; only the
/// `initial-events-end` bookmark is), and exact lists older than the embedded server's
/// retention (kube-apiserver serves them until etcd's compaction).
const KNOWN_DIFFERENCES: &[(&str, &str)] = &[];

const GROUP_VERSION: &str = "asgbatch.io/v1alpha1";

fn job_ar() -> ApiResource {
    ApiResource {
        group: "asgbatch.io".into(),
        version: "v1alpha1".into(),
        api_version: GROUP_VERSION.into(),
        kind: "BatchJob".into(),
        plural: "batchjobs".into(),
    }
}

/// A BatchJob `name` with `labels`, as a user writes it.
fn job(name: &str, labels: Value) -> Value {
    json!({
        "apiVersion": GROUP_VERSION,
        "kind": "BatchJob",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "queue": "adhoc",
            "container": {"image": "busybox", "command": ["true"]},
            "resources": {"cpu": "250m", "memory": "64Mi"},
        },
    })
}

/// Blanks what legitimately differs between two servers: uids, timestamps and
/// resourceVersion values (their presence is kept), managedFields times, ages in
/// tables, and the numbers in 410 messages.
fn normalize(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                match k.as_str() {
                    "uid" | "resourceVersion" | "creationTimestamp" | "deletionTimestamp"
                    | "time"
                        if x.is_string() =>
                    {
                        *x = json!("<blank>");
                    }
                    "continue" if x.as_str().is_some_and(|c| !c.is_empty()) => {
                        *x = json!("<token>");
                    }
                    // Ordered by operation, time (to the second), manager, apiVersion
                    // and subresource: with times blanked, by the others only.
                    "managedFields" if x.is_array() => {
                        normalize(x);
                        let key = |e: &Value| {
                            ["operation", "manager", "apiVersion", "subresource"]
                                .map(|k| e[k].as_str().unwrap_or_default().to_string())
                        };
                        x.as_array_mut().unwrap().sort_by_key(key);
                    }
                    _ => normalize(x),
                }
            }
            let numbered = |m: &serde_json::Map<String, Value>| {
                m.get("code") == Some(&json!(410))
                    || m["message"]
                        .as_str()
                        .is_some_and(|s| s.contains("in the precondition"))
            };
            if m.contains_key("message") && numbered(m) {
                if let Some(Value::String(s)) = m.get_mut("message") {
                    *s = digits_blanked(s);
                }
            }
            // Table rows: the Age cell.
            if let (Some(Value::Array(cols)), Some(Value::Array(rows))) =
                (m.get("columnDefinitions").cloned(), m.get_mut("rows"))
            {
                let age = cols.iter().position(|c| c["name"] == "Age");
                for r in rows {
                    if let (Some(i), Some(Value::Array(cells))) = (age, r.get_mut("cells")) {
                        if let Some(c) = cells.get_mut(i) {
                            *c = json!("<age>");
                        }
                    }
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(normalize),
        _ => {}
    }
}

fn digits_blanked(s: &str) -> String {
    regex::Regex::new(r"\d+")
        .unwrap()
        .replace_all(s, "N")
        .into_owned()
}

/// kubectl's output with ages (`5s`, `2m3s`, `<invalid>`) blanked.
fn text_blanked(s: &str) -> String {
    regex::Regex::new(r"(?m)(^|\s)((\d+[smhd])+|<invalid>)(\s|$)")
        .unwrap()
        .replace_all(s, "$1<age>$4")
        .into_owned()
}

/// What one server answered, step by step.
struct Recorder<'a, C: Cluster> {
    c: &'a C,
    client: kube::Client,
    ns: String,
    steps: Vec<(String, Value)>,
}

impl<'a, C: Cluster> Recorder<'a, C> {
    fn new(c: &'a C, ns: &str) -> Self {
        Recorder {
            c,
            client: c.client(),
            ns: ns.to_string(),
            steps: Vec::new(),
        }
    }

    fn jobs_path(&self) -> String {
        format!("/apis/{GROUP_VERSION}/namespaces/{}/batchjobs", self.ns)
    }

    /// Records the normalized answer of `step`; returns it as it was.
    fn record(&mut self, step: &str, v: Value) -> Value {
        let mut n = v.clone();
        normalize(&mut n);
        assert!(
            !self.steps.iter().any(|(s, _)| s == step),
            "step {step} twice"
        );
        self.steps.push((step.to_string(), n));
        v
    }

    /// One HTTP request through kube-rs's client: `{code, body}` (body parsed as JSON).
    async fn raw(&self, method: &str, path: &str, ctype: &str, body: Option<Value>) -> Value {
        self.raw_accept(method, path, ctype, body, "application/json")
            .await
    }

    async fn raw_accept(
        &self,
        method: &str,
        path: &str,
        ctype: &str,
        body: Option<Value>,
        accept: &str,
    ) -> Value {
        let bytes = body
            .map(|b| serde_json::to_vec(&b).unwrap())
            .unwrap_or_default();
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("Content-Type", ctype)
            .header("Accept", accept)
            .body(kube::client::Body::from(bytes))
            .unwrap();
        let resp = self
            .client
            .send(req)
            .await
            .unwrap_or_else(|e| panic!("{}: {method} {path}: {e}", self.c.label()));
        let code = resp.status().as_u16();
        let bytes = resp.into_body().collect_bytes().await.expect("body");
        let body: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes).into_owned()));
        json!({"code": code, "body": body})
    }

    /// A step made of one request.
    async fn step(
        &mut self,
        step: &str,
        method: &str,
        path: &str,
        ctype: &str,
        body: Option<Value>,
    ) -> Value {
        let r = self.raw(method, path, ctype, body).await;
        self.record(step, r)
    }

    /// A step made of one kubectl run: exit code, stdout, stderr (ages blanked).
    async fn kubectl(&mut self, step: &str, args: &[&str], stdin: Option<&str>) -> Value {
        let o = self.c.kubectl_stdin(args, stdin).await;
        let stdout = String::from_utf8_lossy(&o.stdout);
        let stdout =
            serde_json::from_str::<Value>(&stdout).unwrap_or_else(|_| json!(text_blanked(&stdout)));
        let r = json!({
            "exit": o.status.code(),
            "stdout": stdout,
            "stderr": text_blanked(&String::from_utf8_lossy(&o.stderr)),
        });
        self.record(step, r)
    }

    /// The current resourceVersion of the BatchJob list.
    async fn list_rv(&self) -> String {
        let r = self.raw("GET", &self.jobs_path(), "", None).await;
        r["body"]["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// A watch through kube-rs (`Api::watch`), read until `done` says the last wanted
    /// event arrived (30 s at most). BOOKMARKs are recorded as such (their timing is
    /// the server's; only those that close an initial-events list are awaited).
    async fn watch(
        &mut self,
        step: &str,
        wp: &WatchParams,
        rv: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &self.ns, &job_ar());
        let stream = api
            .watch(wp, rv)
            .await
            .unwrap_or_else(|e| panic!("{}: watch {step}: {e}", self.c.label()));
        let mut stream = stream.boxed();
        let mut events = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let next = tokio::time::timeout_at(deadline, stream.try_next()).await;
            let e = match next {
                Err(_) => panic!(
                    "{}: watch {step}: no closing event in 30 s; got {events:?}",
                    self.c.label()
                ),
                Ok(Err(e)) => panic!("{}: watch {step}: {e}", self.c.label()),
                Ok(Ok(None)) => break,
                Ok(Ok(Some(e))) => e,
            };
            let v = match e {
                WatchEvent::Added(o) => json!(["ADDED", o]),
                WatchEvent::Modified(o) => json!(["MODIFIED", o]),
                WatchEvent::Deleted(o) => json!(["DELETED", o]),
                WatchEvent::Bookmark(b) => {
                    let initial_end = b
                        .metadata
                        .annotations
                        .get("k8s.io/initial-events-end")
                        .cloned();
                    // Periodic bookmarks come when the server's timer says: not compared.
                    if initial_end.is_none() {
                        continue;
                    }
                    json!(["BOOKMARK", {"initialEventsEnd": initial_end, "hasResourceVersion": !b.metadata.resource_version.is_empty()}])
                }
                WatchEvent::Error(s) => json!(["ERROR", s]),
            };
            let stop = done(&v) || v[0] == "ERROR";
            events.push(v);
            if stop {
                break;
            }
        }
        self.record(step, json!(events))
    }
}

/// The event of `kind` on the object `name`.
fn is_event(kind: &'static str, name: &'static str) -> impl Fn(&Value) -> bool {
    move |v: &Value| v[0] == kind && v[1]["metadata"]["name"] == name
}

fn merge() -> &'static str {
    "application/merge-patch+json"
}

fn apply() -> &'static str {
    "application/apply-patch+yaml"
}

/// The whole request sequence against one server.
async fn sequence<C: Cluster>(c: &C, ns: &str) -> Vec<(String, Value)> {
    let mut r = Recorder::new(c, ns);
    let jobs = r.jobs_path();
    let job_path = |n: &str| format!("{jobs}/{n}");
    let rv_start = r.list_rv().await;

    // --- create ---
    let created = r
        .step(
            "create a",
            "POST",
            &jobs,
            "application/json",
            Some(job("a", json!({"app": "conf", "team": "red"}))),
        )
        .await;
    assert_eq!(created["code"], 201, "{}: {created}", c.label());
    r.step(
        "create a again: AlreadyExists",
        "POST",
        &jobs,
        "application/json",
        Some(job("a", json!({}))),
    )
    .await;
    r.step(
        "create with a bad label value: Invalid",
        "POST",
        &jobs,
        "application/json",
        Some(job("bad", json!({"team": "-no-"}))),
    )
    .await;
    r.step(
        "create without a name: Invalid",
        "POST",
        &jobs,
        "application/json",
        Some(job("", json!({}))),
    )
    .await;

    // --- server-side apply by two managers ---
    let by = |m: &str, force: bool| {
        format!(
            "{}?fieldManager={m}{}",
            job_path("b"),
            if force { "&force=true" } else { "" }
        )
    };
    let mut b = job("b", json!({"app": "conf", "team": "red"}));
    b["spec"]["timeoutSeconds"] = json!(60);
    r.step(
        "apply b by alice (creates)",
        "PATCH",
        &by("alice", false),
        apply(),
        Some(b),
    )
    .await;
    let bob = json!({"apiVersion": GROUP_VERSION, "kind": "BatchJob",
        "metadata": {"name": "b", "labels": {"team": "blue", "owner": "bob"}},
        "spec": {"timeoutSeconds": 90}});
    r.step(
        "apply b by bob: conflicts on team and timeoutSeconds",
        "PATCH",
        &by("bob", false),
        apply(),
        Some(bob.clone()),
    )
    .await;
    r.step(
        "apply b by bob, forced",
        "PATCH",
        &by("bob", true),
        apply(),
        Some(bob),
    )
    .await;
    let mut b2 = job("b", json!({"app": "conf"}));
    b2["spec"]["timeoutSeconds"] = json!(60);
    r.step(
        "apply b by alice without team: alice's other fields stay",
        "PATCH",
        &by("alice", true),
        apply(),
        Some(b2),
    )
    .await;
    r.step(
        "apply by bob without a kind: BadRequest",
        "PATCH",
        &by("bob", false),
        apply(),
        Some(json!({"apiVersion": GROUP_VERSION, "metadata": {"name": "b"}})),
    )
    .await;
    r.step(
        "apply without fieldManager: BadRequest",
        "PATCH",
        &job_path("b"),
        apply(),
        Some(json!({"apiVersion": GROUP_VERSION, "kind": "BatchJob", "metadata": {"name": "b"}})),
    )
    .await;

    // status.attempts, a list-map keyed by attempt, by the controller and an agent.
    let status_by = |m: &str| format!("{}/status?fieldManager={m}&force=true", job_path("b"));
    let attempts = |a: Value| {
        json!({"apiVersion": GROUP_VERSION, "kind": "BatchJob", "metadata": {"name": "b"},
            "status": {"attempts": a}})
    };
    let steps = [
        ("controller", json!([{"attempt": 1, "node": "n1"}])),
        (
            "agent",
            json!([{"attempt": 1, "startedAt": "2026-01-01T00:00:00Z"}]),
        ),
        (
            "controller",
            json!([{"attempt": 1, "node": "n1"}, {"attempt": 2, "node": "n2"}]),
        ),
        (
            "agent",
            json!([{"attempt": 1, "exitCode": 1, "reason": "Error"}]),
        ),
        ("controller", json!([{"attempt": 2, "node": "n2"}])),
    ];
    for (i, (m, a)) in steps.into_iter().enumerate() {
        r.step(
            &format!("attempts {i}: apply by {m}"),
            "PATCH",
            &status_by(m),
            apply(),
            Some(attempts(a)),
        )
        .await;
    }
    r.step(
        "attempts: a duplicate key is Invalid",
        "PATCH",
        &status_by("controller"),
        apply(),
        Some(attempts(json!([{"attempt": 3}, {"attempt": 3}]))),
    )
    .await;

    // --- resourceVersion conflicts ---
    let mut stale = created["body"].clone();
    let a_now = r.raw("GET", &job_path("a"), "", None).await["body"].clone();
    stale["metadata"]["resourceVersion"] = a_now["metadata"]["resourceVersion"].clone();
    stale["spec"]["timeoutSeconds"] = json!(5);
    r.step(
        "update a at its resourceVersion",
        "PUT",
        &job_path("a"),
        "application/json",
        Some(stale.clone()),
    )
    .await;
    stale["spec"]["timeoutSeconds"] = json!(6);
    r.step(
        "update a at a stale resourceVersion: Conflict",
        "PUT",
        &job_path("a"),
        "application/json",
        Some(stale.clone()),
    )
    .await;
    r.step(
        "merge patch a with a stale resourceVersion: Conflict",
        "PATCH",
        &job_path("a"),
        merge(),
        Some(json!({"metadata": {"resourceVersion": a_now["metadata"]["resourceVersion"]}, "spec": {"timeoutSeconds": 7}})),
    )
    .await;
    let mut no_rv = stale.clone();
    no_rv["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    r.step(
        "update a without a resourceVersion: Invalid",
        "PUT",
        &job_path("a"),
        "application/json",
        Some(no_rv),
    )
    .await;

    // --- status subresource rules ---
    r.step(
        "merge patch a/status: spec ignored, status written",
        "PATCH",
        &format!("{}/status", job_path("a")),
        merge(),
        Some(json!({"spec": {"timeoutSeconds": 99}, "status": {"phase": "Running"}})),
    )
    .await;
    r.step(
        "merge patch a: status ignored, spec written, generation bumped",
        "PATCH",
        &job_path("a"),
        merge(),
        Some(json!({"spec": {"timeoutSeconds": 11}, "status": {"phase": "Failed"}})),
    )
    .await;
    let mut whole = r.raw("GET", &job_path("a"), "", None).await["body"].clone();
    whole["spec"]["timeoutSeconds"] = json!(12);
    whole["status"]["phase"] = json!("Succeeded");
    r.step(
        "update a/status: spec ignored",
        "PUT",
        &format!("{}/status", job_path("a")),
        "application/json",
        Some(whole.clone()),
    )
    .await;
    whole["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    whole["status"]["phase"] = json!("Failed");
    r.step(
        "update a (no resourceVersion): status ignored",
        "PUT",
        &job_path("a"),
        "application/json",
        Some(whole),
    )
    .await;
    r.step(
        "merge patch a/status with an invalid phase: Invalid",
        "PATCH",
        &format!("{}/status", job_path("a")),
        merge(),
        Some(json!({"status": {"phase": "Dancing"}})),
    )
    .await;

    // --- dry run ---
    r.step(
        "create dry (dry run)",
        "POST",
        &format!("{jobs}?dryRun=All"),
        "application/json",
        Some(job("dry", json!({"team": "red"}))),
    )
    .await;
    r.step("get dry: NotFound", "GET", &job_path("dry"), "", None)
        .await;
    r.step(
        "apply dry (dry run)",
        "PATCH",
        &format!("{}?fieldManager=alice&dryRun=All", job_path("dry")),
        apply(),
        Some(job("dry", json!({}))),
    )
    .await;
    r.step(
        "merge patch a (dry run)",
        "PATCH",
        &format!("{}?dryRun=All", job_path("a")),
        merge(),
        Some(json!({"metadata": {"labels": {"dry": "yes"}}})),
    )
    .await;
    r.step(
        "delete a (dry run)",
        "DELETE",
        &format!("{}?dryRun=All", job_path("a")),
        "application/json",
        None,
    )
    .await;
    r.step("get a after dry runs", "GET", &job_path("a"), "", None)
        .await;
    r.step(
        "dry run with a bad value: BadRequest",
        "POST",
        &format!("{jobs}?dryRun=Some"),
        "application/json",
        Some(job("dry", json!({}))),
    )
    .await;

    // --- selectors ---
    r.step(
        "create c",
        "POST",
        &jobs,
        "application/json",
        Some(job("c", json!({"app": "conf", "team": "blue"}))),
    )
    .await;
    for (step, q) in [
        ("list team=red", "labelSelector=team%3Dred"),
        ("list team!=red", "labelSelector=team%21%3Dred"),
        (
            "list team in (red,blue)",
            "labelSelector=team+in+%28red%2Cblue%29",
        ),
        ("list !owner", "labelSelector=%21owner"),
        ("list owner exists", "labelSelector=owner"),
        ("list metadata.name=c", "fieldSelector=metadata.name%3Dc"),
        (
            "list metadata.name!=c,team=blue",
            "fieldSelector=metadata.name%21%3Dc&labelSelector=team%3Dblue",
        ),
        (
            "list by an unsupported field: BadRequest",
            "fieldSelector=spec.queue%3Dadhoc",
        ),
        (
            "list by a bad label selector: BadRequest",
            "labelSelector=team%3D%3D%3D",
        ),
        ("list page of 2", "limit=2"),
    ] {
        r.step(step, "GET", &format!("{jobs}?{q}"), "", None).await;
    }

    // --- watch from a resourceVersion, with bookmarks ---
    let rv_watch = r.list_rv().await;
    r.step(
        "relabel c out of team=blue",
        "PATCH",
        &job_path("c"),
        merge(),
        Some(json!({"metadata": {"labels": {"team": "green"}}})),
    )
    .await;
    r.step(
        "relabel a into team=blue",
        "PATCH",
        &job_path("a"),
        merge(),
        Some(json!({"metadata": {"labels": {"team": "blue"}}})),
    )
    .await;
    r.step(
        "delete b",
        "DELETE",
        &job_path("b"),
        "application/json",
        None,
    )
    .await;
    r.step(
        "create end",
        "POST",
        &jobs,
        "application/json",
        Some(job("end", json!({"team": "blue"}))),
    )
    .await;
    let wp = WatchParams::default();
    r.watch(
        "watch from before the relabels",
        &wp,
        &rv_watch,
        is_event("ADDED", "end"),
    )
    .await;
    let wp = WatchParams::default().labels("team=blue");
    r.watch(
        "watch team=blue from before the relabels",
        &wp,
        &rv_watch,
        is_event("ADDED", "end"),
    )
    .await;
    let wp = WatchParams::default().fields("metadata.name=c");
    r.watch(
        "watch metadata.name=c from the start",
        &wp,
        &rv_start,
        |v| v[0] == "MODIFIED" && v[1]["metadata"]["labels"]["team"] == "green",
    )
    .await;
    // A streaming list: the current state, then the initial-events-end bookmark.
    let wp = WatchParams::streaming_lists();
    r.watch("streaming list", &wp, "", |v| v[0] == "BOOKMARK")
        .await;

    // --- 410 Gone, lists at an exact resourceVersion ---
    r.watch(
        "watch from resourceVersion 1: Expired",
        &WatchParams::default(),
        "1",
        |_| false,
    )
    .await;
    r.step(
        "list at resourceVersion 1, exactly",
        "GET",
        &format!("{jobs}?resourceVersion=1&resourceVersionMatch=Exact"),
        "",
        None,
    )
    .await;
    r.step(
        "list at the watch's resourceVersion, exactly",
        "GET",
        &format!("{jobs}?resourceVersion={rv_watch}&resourceVersionMatch=Exact"),
        "",
        None,
    )
    .await;
    r.step(
        "list at a resourceVersion, not older than",
        "GET",
        &format!("{jobs}?resourceVersion={rv_watch}&resourceVersionMatch=NotOlderThan"),
        "",
        None,
    )
    .await;
    r.step(
        "list with resourceVersionMatch but no resourceVersion: Invalid",
        "GET",
        &format!("{jobs}?resourceVersionMatch=Exact"),
        "",
        None,
    )
    .await;

    // --- finalizers and deletion ---
    let mut held = job("held", json!({}));
    held["metadata"]["finalizers"] = json!(["example.com/hold"]);
    r.step(
        "create held with a finalizer",
        "POST",
        &jobs,
        "application/json",
        Some(held),
    )
    .await;
    let rv_held = r.list_rv().await;
    r.step(
        "delete held: deletionTimestamp set, object stays",
        "DELETE",
        &job_path("held"),
        "application/json",
        None,
    )
    .await;
    r.step(
        "get held while deleting",
        "GET",
        &job_path("held"),
        "",
        None,
    )
    .await;
    r.step(
        "add a finalizer while deleting: Forbidden",
        "PATCH",
        &job_path("held"),
        merge(),
        Some(json!({"metadata": {"finalizers": ["example.com/hold", "example.com/more"]}})),
    )
    .await;
    r.step(
        "delete held again",
        "DELETE",
        &job_path("held"),
        "application/json",
        None,
    )
    .await;
    r.step(
        "remove the finalizer: held goes",
        "PATCH",
        &job_path("held"),
        merge(),
        Some(json!({"metadata": {"finalizers": null}})),
    )
    .await;
    r.step(
        "get held after: NotFound",
        "GET",
        &job_path("held"),
        "",
        None,
    )
    .await;
    r.watch(
        "watch held's deletion",
        &WatchParams::default(),
        &rv_held,
        is_event("DELETED", "held"),
    )
    .await;
    r.step(
        "delete with a stale resourceVersion precondition: Conflict",
        "DELETE",
        &job_path("c"),
        "application/json",
        Some(json!({"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"resourceVersion": "1"}})),
    )
    .await;

    // --- unknown fields in server-side apply ---
    let mut typo = job("typo", json!({}));
    typo["spec"]["qeueu"] = json!("x");
    r.step(
        "apply with an unknown field",
        "PATCH",
        &format!("{}?fieldManager=alice", job_path("typo")),
        apply(),
        Some(typo.clone()),
    )
    .await;
    r.step(
        "apply with an unknown field, strict",
        "PATCH",
        &format!(
            "{}?fieldManager=alice&fieldValidation=Strict",
            job_path("typo")
        ),
        apply(),
        Some(typo.clone()),
    )
    .await;
    r.step(
        "create with an unknown field (warns, prunes)",
        "POST",
        &jobs,
        "application/json",
        Some(typo),
    )
    .await;

    // --- Table output ---
    let table = "application/json;as=Table;v=v1;g=meta.k8s.io";
    let t = r
        .raw_accept("GET", &jobs, "", None, &format!("{table},application/json"))
        .await;
    r.record("list as Table", t);
    let t = r
        .raw_accept(
            "GET",
            &job_path("a"),
            "",
            None,
            &format!("{table},application/json"),
        )
        .await;
    r.record("get a as Table", t);

    // --- kubectl ---
    let n = ns.to_string();
    r.kubectl(
        "kubectl get batchjobs",
        &["get", "batchjobs", "-n", &n],
        None,
    )
    .await;
    r.kubectl(
        "kubectl get bj -o wide -l team=blue",
        &["get", "bj", "-n", &n, "-o", "wide", "-l", "team=blue"],
        None,
    )
    .await;
    r.kubectl(
        "kubectl get bj a -o json",
        &["get", "bj", "a", "-n", &n, "-o", "json"],
        None,
    )
    .await;
    r.kubectl(
        "kubectl get bj --field-selector metadata.name=c",
        &[
            "get",
            "bj",
            "-n",
            &n,
            "--field-selector",
            "metadata.name=c",
            "-o",
            "name",
        ],
        None,
    )
    .await;
    r.kubectl(
        "kubectl get bj nope",
        &["get", "bj", "nope", "-n", &n],
        None,
    )
    .await;
    let yaml = "apiVersion: asgbatch.io/v1alpha1\nkind: BatchJob\nmetadata:\n  name: k\n  labels: {team: red}\nspec:\n  queue: adhoc\n  container: {image: busybox}\n";
    r.kubectl(
        "kubectl create k",
        &["create", "-n", &n, "-f", "-"],
        Some(yaml),
    )
    .await;
    r.kubectl(
        "kubectl create k again",
        &["create", "-n", &n, "-f", "-"],
        Some(yaml),
    )
    .await;
    r.kubectl(
        "kubectl apply --server-side k",
        &["apply", "--server-side", "-n", &n, "-f", "-"],
        Some(&yaml.replace("red", "blue")),
    )
    .await;
    r.kubectl(
        "kubectl apply --server-side k with an unknown field",
        &["apply", "--server-side", "-n", &n, "-f", "-"],
        Some(&format!("{yaml}  qeueu: x\n")),
    )
    .await;
    r.kubectl(
        "kubectl apply (client-side) k with an invalid field",
        &["apply", "-n", &n, "-f", "-"],
        Some(&yaml.replace("queue: adhoc", "queue: Bad_Queue")),
    )
    .await;
    r.kubectl(
        "kubectl label k team=green",
        &["label", "bj", "k", "-n", &n, "team=green", "--overwrite"],
        None,
    )
    .await;
    r.kubectl(
        "kubectl patch k --subresource status",
        &[
            "patch",
            "bj",
            "k",
            "-n",
            &n,
            "--subresource",
            "status",
            "--type",
            "merge",
            "-p",
            r#"{"status":{"phase":"Running"}}"#,
        ],
        None,
    )
    .await;
    r.kubectl("kubectl get bj k", &["get", "bj", "k", "-n", &n], None)
        .await;
    r.kubectl(
        "kubectl delete bj k",
        &["delete", "bj", "k", "-n", &n],
        None,
    )
    .await;
    r.kubectl(
        "kubectl get bj -o name",
        &["get", "bj", "-n", &n, "-o", "name"],
        None,
    )
    .await;
    r.steps
}

#[tokio::test]
async fn both_servers_answer_the_same_request_sequence_alike() {
    let real = RealKube::shared();
    let embedded = support::apiserver::server().await;
    install_crds(&Cluster::client(real)).await;
    install_crds(&Cluster::client(&embedded)).await;
    let ns = real.namespace("conformance").await;
    create_namespace(&embedded, &ns).await;
    let t = std::time::Instant::now();
    let want = sequence(real, &ns).await;
    let real_time = t.elapsed();
    let t = std::time::Instant::now();
    let got = sequence(&embedded, &ns).await;
    let embedded_time = t.elapsed();
    eprintln!(
        "sequence of {} steps: kube-apiserver {real_time:.1?}, embedded {embedded_time:.1?}",
        want.len()
    );
    assert_eq!(
        want.iter().map(|(s, _)| s).collect::<Vec<_>>(),
        got.iter().map(|(s, _)| s).collect::<Vec<_>>()
    );
    let mut differences = Vec::new();
    let mut known_but_equal = Vec::new();
    for ((step, w), (_, g)) in want.iter().zip(&got) {
        let known = KNOWN_DIFFERENCES.iter().any(|(s, _)| s == step);
        match (w == g, known) {
            (false, false) => differences.push(format!(
                "{step}:\n  kube-apiserver: {w}\n  embedded:       {g}"
            )),
            (true, true) => known_but_equal.push(step.clone()),
            _ => {}
        }
    }
    assert!(
        differences.is_empty(),
        "{} steps differ:\n{}",
        differences.len(),
        differences.join("\n")
    );
    assert!(
        known_but_equal.is_empty(),
        "known differences that no longer differ (remove them from KNOWN_DIFFERENCES): {known_but_equal:?}"
    );
}

/// Creates the namespace `name` (the embedded server is fresh, so the real server's
/// generated name is free there).
async fn create_namespace(c: &impl Cluster, name: &str) {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(c.client());
    let ns = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    api.create(&Default::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("{}: create namespace {name}: {e}", c.label()));
}

/// 410 Gone for lists at a resourceVersion the server no longer has: kube-apiserver's
/// after etcd is compacted (`real` given: compacted here, as kube-apiserver does every
/// five minutes), the embedded server's once its history has moved past it.
async fn expiry_sequence<C: Cluster>(
    c: &C,
    ns: &str,
    real: Option<&RealKube>,
) -> Vec<(String, Value)> {
    let mut r = Recorder::new(c, ns);
    let jobs = r.jobs_path();
    for i in 0..EXPIRY_WRITES {
        let created = r
            .raw(
                "POST",
                &jobs,
                "application/json",
                Some(job(&format!("j{i:02}"), json!({}))),
            )
            .await;
        assert_eq!(created["code"], 201, "{}: {created}", c.label());
    }
    let now = r.list_rv().await;
    if let Some(real) = real {
        real.compact_etcd(now.parse().unwrap()).await;
    }
    r.step(
        "list at resourceVersion 1, exactly, after compaction: Expired",
        "GET",
        &format!("{jobs}?resourceVersion=1&resourceVersionMatch=Exact"),
        "",
        None,
    )
    .await;
    r.step(
        "list at the current resourceVersion, exactly",
        "GET",
        &format!("{jobs}?resourceVersion={now}&resourceVersionMatch=Exact&limit=3"),
        "",
        None,
    )
    .await;
    r.step(
        "list at resourceVersion 1, not older than",
        "GET",
        &format!("{jobs}?resourceVersion=1&resourceVersionMatch=NotOlderThan&limit=3"),
        "",
        None,
    )
    .await;
    r.watch(
        "watch from resourceVersion 1 after compaction: Expired",
        &WatchParams::default(),
        "1",
        |_| false,
    )
    .await;
    r.steps
}

/// Writes before the compaction: more than the embedded server's smallest history.
const EXPIRY_WRITES: usize = 20;

#[tokio::test]
async fn both_servers_expire_compacted_resource_versions_alike() {
    // Servers of their own: compaction must not reach the other test's server.
    let real = RealKube::start();
    let embedded = support::apiserver::server_with(asg_batch_apiserver::ApiServerConfig {
        history_limit: 16,
        ..Default::default()
    })
    .await;
    install_crds(&Cluster::client(&real)).await;
    install_crds(&Cluster::client(&embedded)).await;
    let ns = real.namespace("expiry").await;
    create_namespace(&embedded, &ns).await;
    let want = expiry_sequence(&real, &ns, Some(&real)).await;
    let got = expiry_sequence(&embedded, &ns, None).await;
    let differences: Vec<String> = want
        .iter()
        .zip(&got)
        .filter(|((_, w), (_, g))| w != g)
        .map(|((step, w), (_, g))| format!("{step}:\n  kube-apiserver: {w}\n  embedded:       {g}"))
        .collect();
    assert!(differences.is_empty(), "{}", differences.join("\n"));
    assert_eq!(want.len(), got.len());
    assert_eq!(want[0].1["code"], 410, "{}", want[0].1);
}
