//! Benchmark of the embedded API server (prints figures; not a timed test):
//! - writes/s creating 10,000 BatchJobs through kube-rs (64 concurrent requests),
//! - RSS of the process with 10,000 BatchJobs stored (server and client in-process),
//! - watch fan-out: delay from a write to its delivery on 100 concurrent watchers.
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

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

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
    d.sort_by(|a, b| a.total_cmp(b));
    println!(
        "watch fan-out, {watchers} watchers x {writes} writes ({} deliveries): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        d.len(),
        percentile(&d, 0.50),
        percentile(&d, 0.99),
        d.last().copied().unwrap_or(f64::NAN)
    );
    server.shutdown().await;
    Ok(())
}
