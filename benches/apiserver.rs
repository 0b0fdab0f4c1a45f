//! Benchmark of the embedded API server (prints figures; not a timed test):
//! - writes/s creating 10,000 BatchJobs through kube-rs (64 concurrent requests),
//! - RSS of the process with 10,000 BatchJobs stored (server and client in-process),
//! - watch fan-out: delay from a write to its delivery on 100 concurrent watchers.
//! - the request mix of `asg-batch dev`, with 12 watchers on all BatchJobs (the controller
//!   and 10 agents each watch them all, plus one): status merge-patches and server-side
//!   applies of `/status` with a resourceVersion precondition, label patches, Event
//!   creates; requests/s and the process's CPU per request (server, client and watchers
//!   in one process: compare builds, not absolute figures).
//!
//! Run: `cargo bench --bench apiserver`. `APISERVER_BENCH_JOBS` overrides 10,000.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use asg_batch::api::{BatchJob, crds};
use asg_batch_apiserver::{ApiServerConfig, start};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|k| k.parse::<f64>().ok())
            })
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

/// CPU time (user + system) of this process so far, in seconds (`/proc/self/stat`).
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // the fields after the command name (in parentheses, which may hold spaces)
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// Runs `count` requests made by `make(i)`, 16 at a time; prints requests/s and CPU per
/// request, returns the results.
async fn timed<T, F, Fut>(label: &str, count: usize, make: F) -> Vec<Result<T, kube::Error>>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let (t, c) = (Instant::now(), cpu_secs());
    let out: Vec<Result<T, kube::Error>> = futures::stream::iter(0..count)
        .map(make)
        .buffer_unordered(16)
        .collect()
        .await;
    let (secs, cpu) = (t.elapsed().as_secs_f64(), cpu_secs() - c);
    let failed = out.iter().filter(|r| r.is_err()).count();
    println!(
        "  {label:<44} {count:>6} req {:>8.0} req/s {:>7.3} ms CPU/req ({failed} failed)",
        count as f64 / secs,
        cpu * 1000.0 / count as f64
    );
    out
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

#[allow(
    clippy::cast_sign_loss,
    reason = "p is in [0, 1] and sorted is not empty"
)]
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn job(name: &str) -> BatchJob {
    serde_json::from_value(json!({
        "apiVersion": "asgbatch.io/v1alpha1", "kind": "BatchJob",
        "metadata": {"name": name, "labels": {"bench": "yes"}},
        "spec": {"queue": "bench", "container": {"image": "localhost/busybox:test", "command": ["sh", "-c", "true"]},
                 "resources": {"cpu": "250m", "memory": "64Mi"}},
    }))
    .expect("job")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::var("APISERVER_BENCH_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let rss_start = rss_mib();
    let server = start(ApiServerConfig::default()).await?;
    let client = server.client()?;
    let crd_api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crds::all() {
        crd_api.create(&PostParams::default(), &crd).await?;
    }
    let api: Api<BatchJob> = Api::namespaced(client.clone(), "default");

    // 1. writes/s
    let start_t = Instant::now();
    let results: Vec<Result<BatchJob, kube::Error>> = futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                api.create(&PostParams::default(), &job(&format!("job-{i:05}")))
                    .await
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let secs = start_t.elapsed().as_secs_f64();
    let failed = results.iter().filter(|r| r.is_err()).count();
    println!(
        "create {n} BatchJobs via kube-rs: {secs:.2} s, {:.0} writes/s ({failed} failed)",
        n as f64 / secs
    );
    drop(results);

    // 2. RSS
    let rss = rss_mib();
    println!(
        "RSS with {n} BatchJobs stored: {rss:.1} MiB (process start {rss_start:.1} MiB; server + client in one process)"
    );

    // 3. watch fan-out on 100 watchers
    let watchers = 100;
    let writes = 200;
    let rv = api
        .list_metadata(&Default::default())
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let delays = Arc::new(tokio::sync::Mutex::new(Vec::<f64>::with_capacity(
        watchers * writes,
    )));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(watchers);
    let mut tasks = vec![];
    for _ in 0..watchers {
        let api = api.clone();
        let rv = rv.clone();
        let delays = delays.clone();
        let ready = ready_tx.clone();
        tasks.push(tokio::spawn(async move {
            let stream = api
                .watch(
                    &WatchParams::default().labels("fanout=yes").timeout(120),
                    &rv,
                )
                .await?;
            let _ = ready.send(()).await;
            let mut stream = stream.boxed();
            let mut got = 0;
            while let Some(ev) = stream.try_next().await? {
                if let WatchEvent::Modified(o) = ev {
                    let sent: u128 = o
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get("sent-ns"))
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    let d = (now_ns().saturating_sub(sent)) as f64 / 1e6;
                    delays.lock().await.push(d);
                    got += 1;
                    if got == writes {
                        break;
                    }
                }
            }
            Ok::<(), kube::Error>(())
        }));
    }
    for _ in 0..watchers {
        ready_rx.recv().await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    api.patch(
        "job-00000",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"fanout": "yes"}}})),
    )
    .await?;
    // the label change is an ADDED for these watchers; now timed MODIFIED writes
    for _ in 0..writes {
        api.patch(
            "job-00000",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"sent-ns": now_ns().to_string()}}})),
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(60), t).await;
    }
    let mut d = delays.lock().await.clone();
    d.sort_by(f64::total_cmp);
    println!(
        "watch fan-out, {watchers} watchers x {writes} writes ({} deliveries): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        d.len(),
        percentile(&d, 0.50),
        percentile(&d, 0.99),
        d.last().copied().unwrap_or(f64::NAN)
    );
    request_mix(&client, &api, n.min(2_000)).await?;
    server.shutdown().await;
    Ok(())
}

/// Part 4: the request mix of dev on `m` stored jobs, with 12 watchers on all BatchJobs
/// (reading raw lines, as cheap a client as there is, so the figures are the server's).
async fn request_mix(
    client: &kube::Client,
    api: &Api<BatchJob>,
    m: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    use futures::AsyncBufReadExt;
    use k8s_openapi::api::events::v1::Event;
    let watchers = 12;
    let events = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = vec![];
    let list = api.list(&Default::default()).await?;
    let from = list.metadata.resource_version.clone().unwrap_or_default();
    for _ in 0..watchers {
        let req = http::Request::get(format!(
            "/apis/asgbatch.io/v1alpha1/batchjobs?watch=true&resourceVersion={from}&timeoutSeconds=600"
        ))
        .body(vec![])?;
        let mut lines = client.request_stream(req).await?.lines();
        let events = events.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(_)) = lines.next().await {
                events.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    let mut rvs: Vec<String> = vec![String::new(); m];
    for j in list.items {
        let name = j.metadata.name.clone().unwrap_or_default();
        if let Some(i) = name
            .strip_prefix("job-")
            .and_then(|i| i.parse::<usize>().ok())
        {
            if i < m {
                rvs[i] = j.metadata.resource_version.clone().unwrap_or_default();
            }
        }
    }
    let before = events.load(std::sync::atomic::Ordering::Relaxed);
    println!("request mix on {m} BatchJobs, {watchers} watchers on all BatchJobs:");
    let rvs = Arc::new(std::sync::Mutex::new(rvs));
    let rv_of = |i: usize| rvs.lock().map(|r| r[i].clone()).unwrap_or_default();
    let keep = |out: Vec<Result<BatchJob, kube::Error>>| {
        for j in out.into_iter().flatten() {
            let name = j.metadata.name.clone().unwrap_or_default();
            if let Some(i) = name
                .strip_prefix("job-")
                .and_then(|i| i.parse::<usize>().ok())
            {
                if let Ok(mut r) = rvs.lock() {
                    r[i] = j.metadata.resource_version.clone().unwrap_or_default();
                }
            }
        }
    };
    let out = timed("status merge-patch, resourceVersion set", m, |i| {
        let (api, rv) = (api.clone(), rv_of(i));
        async move {
            api.patch_status(
                &format!("job-{i:05}"),
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"resourceVersion": rv},
                    "status": {"phase": "Starting", "node": "node-3", "attempt": 1}})),
            )
            .await
        }
    })
    .await;
    keep(out);
    let out = timed("status apply (SSA), resourceVersion set", m, |i| {
        let (api, rv) = (api.clone(), rv_of(i));
        async move {
            api.patch_status(
                &format!("job-{i:05}"),
                &PatchParams::apply("bench-agent").force(),
                &Patch::Apply(
                    json!({"apiVersion": "asgbatch.io/v1alpha1", "kind": "BatchJob",
                    "metadata": {"name": format!("job-{i:05}"), "resourceVersion": rv},
                    "status": {"phase": "Running", "attempts": [{"attempt": 1, "node": "node-3",
                        "startedAt": "2026-01-01T00:00:00Z"}]}}),
                ),
            )
            .await
        }
    })
    .await;
    keep(out);
    let out = timed("label merge-patch", m, |i| {
        let api = api.clone();
        async move {
            api.patch(
                &format!("job-{i:05}"),
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"asgbatch.io/node": "node-3"}}})),
            )
            .await
        }
    })
    .await;
    keep(out);
    let ev_api: Api<Event> = Api::namespaced(client.clone(), "default");
    timed("Event create (events.k8s.io/v1)", m, |i| {
        let ev_api = ev_api.clone();
        async move {
            let ev: Event = serde_json::from_value(json!({
                "metadata": {"name": format!("job-{i:05}.bench")},
                "eventTime": "2026-01-01T00:00:00.000000Z",
                "reportingController": "asgbatch.io/controller", "reportingInstance": "bench",
                "action": "Bind", "reason": "Bound", "type": "Normal", "note": "bound to node-3",
                "regarding": {"apiVersion": "asgbatch.io/v1alpha1", "kind": "BatchJob",
                    "namespace": "default", "name": format!("job-{i:05}")},
            }))
            .map_err(kube::Error::SerdeError)?;
            ev_api.create(&PostParams::default(), &ev).await
        }
    })
    .await;
    // Every BatchJob write reaches every watcher (3 kinds of writes × m jobs).
    let want = before + 3 * m * watchers;
    let t = Instant::now();
    while events.load(std::sync::atomic::Ordering::Relaxed) < want
        && t.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "  watch events delivered: {} of {}",
        events.load(std::sync::atomic::Ordering::Relaxed) - before,
        want - before
    );
    for t in tasks {
        t.abort();
    }
    Ok(())
}
