//! One controller pass (`controller::decide::decide`: snapshot of the custom resources,
//! scheduler plan, status decisions) over 10,000 BatchJobs on 500 BatchNodes: 2,000 of
//! them running, the rest runnable, in two queues over two compute environments. This is
//! what a controller spends per pass before any API write; with the default 10 s resync
//! it bounds the CPU the controller needs at that scale.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use std::hint::black_box;
use std::sync::Arc;

use asg_batch::api::batch_job::BatchJob;
use asg_batch::api::batch_node::BatchNode;
use asg_batch::api::compute_environment::ComputeEnvironment;
use asg_batch::api::job_queue::JobQueue;
use asg_batch::controller::decide::carry::JobIndex;
use asg_batch::controller::decide::{
    DecideConfig, Decisions, Observed, Settled, decide, decide_with,
};
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;

const NOW: &str = "2026-11-24T02:00:00Z";
const NOW_SECONDS: u64 = 1_795_485_600;

fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Arc<T> {
    Arc::new(serde_json::from_value(v).expect("valid object"))
}

fn observed() -> Observed {
    let ce = |name: &str| {
        from::<ComputeEnvironment>(json!({
            "apiVersion": "asgbatch.io/v1alpha1", "kind": "ComputeEnvironment",
            "metadata": {"name": name},
            "spec": {"local": {"executor": "process"}, "minInstances": 0, "maxInstances": 1000,
                     "instanceShape": {"cpu": "16", "memory": "64Gi"}}
        }))
    };
    let queue = |name: &str, priority: i32| {
        from::<JobQueue>(json!({
            "apiVersion": "asgbatch.io/v1alpha1", "kind": "JobQueue",
            "metadata": {"name": name},
            "spec": {"priority": priority, "computeEnvironments": ["ce-a", "ce-b"]}
        }))
    };
    let mut nodes = Vec::new();
    for i in 0..500 {
        let ce = if i % 2 == 0 { "ce-a" } else { "ce-b" };
        nodes.push(from::<BatchNode>(json!({
            "apiVersion": "asgbatch.io/v1alpha1", "kind": "BatchNode",
            "metadata": {"name": format!("i-{i:05}"), "creationTimestamp": NOW},
            "spec": {"instanceId": format!("i-{i:05}"), "computeEnvironment": ce,
                     "capacity": {"cpu": "16", "memory": "64Gi"}},
            "status": {"phase": "Ready", "heartbeatTime": NOW}
        })));
    }
    let mut jobs = Vec::new();
    for i in 0..10_000u32 {
        let cpu = ["250m", "500m", "1", "2"][(i % 4) as usize];
        let memory = ["512Mi", "1Gi", "2Gi", "4Gi"][(i % 4) as usize];
        let mut job = json!({
            "apiVersion": "asgbatch.io/v1alpha1", "kind": "BatchJob",
            "metadata": {"name": format!("job-{i:05}"), "namespace": "default",
                         "uid": format!("uid-{i}"), "generation": 1,
                         "creationTimestamp": NOW},
            "spec": {"queue": if i % 3 == 0 { "high" } else { "low" },
                     "process": {"command": ["true"]},
                     "resources": {"cpu": cpu, "memory": memory},
                     "retryStrategy": {"attempts": 3}},
            "status": {"phase": "Runnable"}
        });
        if i < 2_000 {
            let node = format!("i-{:05}", i % 500);
            job["metadata"]["labels"] = json!({"asgbatch.io/node": node});
            job["status"] = json!({
                "phase": "Running", "node": node, "attempt": 1, "startedAt": NOW,
                "attempts": [{"attempt": 1, "node": node, "instanceId": node, "startedAt": NOW}]
            });
        }
        jobs.push(from::<BatchJob>(job));
    }
    Observed {
        compute_environments: vec![ce("ce-a"), ce("ce-b")],
        queues: vec![queue("high", 10), queue("low", 1)],
        definitions: vec![],
        jobs,
        nodes,
        ..Observed::default()
    }
}

fn bench(c: &mut Criterion) {
    let o = observed();
    let config = DecideConfig::default();
    let d = decide(&o, &config, NOW_SECONDS);
    assert!(
        d.plan.bindings.len() > 1_000,
        "the pass binds work: {} bindings",
        d.plan.bindings.len()
    );
    println!(
        "controller pass: {} jobs, {} nodes -> {} bindings, {} job writes",
        o.jobs.len(),
        o.nodes.len(),
        d.plan.bindings.len(),
        d.jobs.len()
    );
    c.bench_function("controller pass, 10k jobs / 500 nodes", |b| {
        b.iter(|| decide(black_box(&o), &config, NOW_SECONDS));
    });
}

/// A backlog: `backlog` Runnable jobs that cannot run now (queue `wait` on compute
/// environment `full`, at its maxInstances with both instances busy), their statuses as
/// the controller's earlier passes wrote them, and 100 new jobs of queue `q` that fit on
/// the idle Ready nodes of environment `ce`; before them, `finished` jobs of queue `q`
/// that succeeded (a day's history not yet expired). With `same_queue`, `full` is a GPU
/// environment, the backlog needs a GPU each, queue `wait` lists `full` then `ce`, and
/// the 100 new jobs (no GPU) go into `wait` too: a class of the backlog's own queue
/// that fits. Returns the observed state.
fn backlog(backlog: u32, finished: u32, same_queue: bool) -> Observed {
    let gpu = u32::from(same_queue);
    let ce = |name: &str, max: u32, gpu: u32| {
        from::<ComputeEnvironment>(json!({
            "apiVersion": "asgbatch.io/v1alpha1", "kind": "ComputeEnvironment",
            "metadata": {"name": name},
            "spec": {"local": {"executor": "process"}, "minInstances": 0, "maxInstances": max,
                     "instanceShape": {"cpu": "16", "memory": "64Gi", "gpu": gpu}}
        }))
    };
    let queue = |name: &str, ces: &[&str]| {
        from::<JobQueue>(json!({
            "apiVersion": "asgbatch.io/v1alpha1", "kind": "JobQueue",
            "metadata": {"name": name},
            "spec": {"priority": 1, "computeEnvironments": ces}
        }))
    };
    let node = |name: String, ce: &str, gpu: u32| {
        from::<BatchNode>(json!({
            "apiVersion": "asgbatch.io/v1alpha1", "kind": "BatchNode",
            "metadata": {"name": name, "creationTimestamp": NOW},
            "spec": {"instanceId": name, "computeEnvironment": ce,
                     "capacity": {"cpu": "16", "memory": "64Gi", "gpu": gpu}},
            "status": {"phase": "Ready", "heartbeatTime": NOW}
        }))
    };
    let job = |name: String, queue: &str, cpu: &str, gpu: u32| {
        json!({
            "apiVersion": "asgbatch.io/v1alpha1", "kind": "BatchJob",
            "metadata": {"name": name, "namespace": "default", "uid": name.clone(),
                         "generation": 1, "resourceVersion": "1", "creationTimestamp": NOW},
            "spec": {"queue": queue, "process": {"command": ["true"]},
                     "resources": {"cpu": cpu, "memory": "1Gi", "gpu": gpu}}
        })
    };
    let mut nodes: Vec<_> = (0..20)
        .map(|i| node(format!("i-{i:05}"), "ce", 0))
        .collect();
    let mut jobs = Vec::new();
    for i in 0..2 {
        let name = format!("full-{i}");
        nodes.push(node(name.clone(), "full", gpu));
        let mut j = job(format!("busy-{i}"), "wait", "16", gpu);
        j["metadata"]["labels"] = json!({"asgbatch.io/node": name});
        j["status"] = json!({
            "phase": "Running", "node": name, "attempt": 1, "startedAt": NOW,
            "attempts": [{"attempt": 1, "node": name, "instanceId": name, "startedAt": NOW}]
        });
        jobs.push(from::<BatchJob>(j));
    }
    jobs.extend(
        (0..backlog).map(|i| from::<BatchJob>(job(format!("wait-{i:05}"), "wait", "1", gpu))),
    );
    jobs.extend((0..finished).map(|i| {
        let mut j = job(format!("done-{i:05}"), "q", "1", 0);
        let node = format!("i-{:05}", i % 20);
        j["status"] = json!({
            "phase": "Succeeded", "attempt": 1, "startedAt": NOW, "stoppedAt": NOW,
            "attempts": [{"attempt": 1, "node": node, "instanceId": node, "startedAt": NOW,
                          "stoppedAt": NOW, "exitCode": 0}]
        });
        from::<BatchJob>(j)
    }));
    let mut o = Observed {
        compute_environments: vec![ce("ce", 20, 0), ce("full", 2, gpu)],
        queues: vec![
            queue("q", &["ce"]),
            queue(
                "wait",
                if same_queue {
                    &["full", "ce"]
                } else {
                    &["full"]
                },
            ),
        ],
        nodes,
        jobs,
        ..Observed::default()
    };
    // The passes before: every waiting job's status as the controller wrote it.
    let d = decide(&o, &DecideConfig::default(), NOW_SECONDS);
    let written: std::collections::HashMap<_, _> = d
        .jobs
        .into_iter()
        .filter_map(|u| Some((u.name, u.status?)))
        .collect();
    for j in &mut o.jobs {
        if let Some(status) = j.metadata.name.as_ref().and_then(|n| written.get(n)) {
            Arc::make_mut(j).status = Some(status.clone());
        }
    }
    let new_queue = if same_queue { "wait" } else { "q" };
    o.jobs
        .extend((0..100).map(|i| from::<BatchJob>(job(format!("new-{i:03}"), new_queue, "1", 0))));
    o
}

fn bench_backlog(c: &mut Criterion) {
    let config = DecideConfig::default();
    for (n, finished, same_queue) in [
        (0, 0, false),
        (50_000, 0, false),
        (0, 10_000, false),
        (50_000, 0, true),
    ] {
        let o = backlog(n, finished, same_queue);
        let new = if same_queue {
            " + 100 new in its queue"
        } else {
            " + 100 new"
        };
        let d = decide(&o, &config, NOW_SECONDS);
        assert_eq!(d.plan.bindings.len(), 100, "the new jobs are bound");
        println!(
            "controller pass with a backlog: {} jobs -> {} bindings, {} job writes",
            o.jobs.len(),
            d.plan.bindings.len(),
            d.jobs.len()
        );
        c.bench_function(
            &format!("controller pass, {n} unschedulable, {finished} finished{new}"),
            |b| b.iter(|| decide(black_box(&o), &config, NOW_SECONDS)),
        );
        // A running controller: its earlier passes saw the backlog settled (the same
        // objects, at the same resourceVersions) and remember it.
        let mut settled = Settled::default();
        let mut before = o.clone();
        before.jobs.retain(|j| {
            !j.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("new-"))
        });
        let _ = decide_with(&before, &config, NOW_SECONDS, &mut settled);
        let d = decide_with(&o, &config, NOW_SECONDS, &mut settled);
        assert_eq!(d.plan.bindings.len(), 100, "the new jobs are bound");
        println!(
            "controller pass with a remembered backlog: {} jobs -> {} bindings, {} job writes, {} settled, {} parked in {} classes",
            o.jobs.len(),
            d.plan.bindings.len(),
            d.jobs.len(),
            settled.len(),
            d.parked_jobs,
            d.parked_classes
        );
        c.bench_function(
            &format!("controller pass, {n} unschedulable, {finished} finished (settled){new}"),
            |b| b.iter(|| decide_with(black_box(&o), &config, NOW_SECONDS, &mut settled)),
        );
        // As the controller's loop runs it: the parked jobs carried outside the observed
        // jobs, a job index handing each pass only the others.
        let carrying_config = DecideConfig {
            carry_parked: true,
            ..config
        };
        let mut carrying = Settled::default();
        let mut index = JobIndex::default();
        let mut handed = Observed {
            jobs: Vec::new(),
            ..o.clone()
        };
        let pass = |handed: &mut Observed, index: &mut JobIndex, carrying: &mut Settled| {
            index.decide(handed, &carrying_config, NOW_SECONDS, carrying)
        };
        index.sync(&before.jobs);
        for _ in 0..2 {
            pass(&mut handed, &mut index, &mut carrying);
        }
        index.sync(&o.jobs);
        let d = pass(&mut handed, &mut index, &mut carrying);
        assert_eq!(d.plan.bindings.len(), 100, "the new jobs are bound");
        let show = |what: &str, handed: &Observed, index: &JobIndex, d: &Decisions| {
            println!(
                "controller {what} with a carried backlog: {} jobs handed, {} carried -> {} bindings, {} job writes, {} parked",
                handed.jobs.len(),
                index.carried(),
                d.plan.bindings.len(),
                d.jobs.len(),
                d.parked_jobs,
            );
        };
        show("pass", &handed, &index, &d);
        c.bench_function(
            &format!("controller pass, {n} unschedulable, {finished} finished (carried){new}"),
            |b| b.iter(|| pass(&mut handed, &mut index, &mut carrying)),
        );
        // The same, every pass a refresh (every `full_pass_interval`): the carried jobs'
        // positions worked out.
        carrying.age(carrying_config.full_pass_interval);
        let d = pass(&mut handed, &mut index, &mut carrying);
        assert!(d.full_pass, "a refresh");
        show("refresh", &handed, &index, &d);
        c.bench_function(
            &format!(
                "controller pass, {n} unschedulable, {finished} finished (carried, refresh){new}"
            ),
            |b| {
                b.iter(|| {
                    carrying.age(carrying_config.full_pass_interval);
                    let d = pass(&mut handed, &mut index, &mut carrying);
                    assert!(d.full_pass, "a refresh");
                    d
                });
            },
        );
        // The same memory, every pass a full pass (nothing parked): the pass before
        // parking, measured in the same run.
        let full = DecideConfig {
            full_pass_interval: 0,
            ..config
        };
        let d = decide_with(&o, &full, NOW_SECONDS, &mut settled);
        assert_eq!(d.plan.bindings.len(), 100, "the new jobs are bound");
        assert_eq!(d.parked_jobs, 0, "a full pass parks nothing");
        c.bench_function(
            &format!(
                "controller pass, {n} unschedulable, {finished} finished (settled, full passes){new}"
            ),
            |b| b.iter(|| decide_with(black_box(&o), &full, NOW_SECONDS, &mut settled)),
        );
    }
}

/// One BatchJob watch event as the API server sends it (a Running job with its attempt,
/// conditions and the managedFields of three field managers), decoded as kube's
/// `DeserializeGuard` does and as the controller's watches do (`Checked`).
fn bench_decode(c: &mut Criterion) {
    use asg_batch::controller::run::Checked;
    use kube::core::{DeserializeGuard, WatchEvent};
    let fields = |f: serde_json::Value| {
        json!({"manager": "m", "operation": "Apply", "apiVersion": "asgbatch.io/v1alpha1",
               "time": NOW, "fieldsType": "FieldsV1", "fieldsV1": f})
    };
    let object = json!({
        "apiVersion": "asgbatch.io/v1alpha1", "kind": "BatchJob",
        "metadata": {"name": "job-00042", "namespace": "default", "uid": "0b7c2a9e-5d1f-4c8e-9a53-2f1e8d7c6b5a",
                     "generation": 1, "resourceVersion": "123456", "creationTimestamp": NOW,
                     "labels": {"app": "etl", "team": "data"},
                     "managedFields": [
                         fields(json!({"f:spec": {"f:queue": {}, "f:process": {"f:command": {}},
                                                  "f:resources": {"f:cpu": {}, "f:memory": {}}}})),
                         fields(json!({"f:status": {"f:phase": {}, "f:node": {}, "f:attempt": {},
                                                    "f:conditions": {"k:{\"type\":\"Scheduled\"}": {".": {}}}}})),
                         fields(json!({"f:status": {"f:attempts": {}, "f:startedAt": {}}})),
                     ]},
        "spec": {"queue": "q", "process": {"command": ["sh", "-c", "true"]},
                 "resources": {"cpu": "100m", "memory": "64Mi"}, "retryStrategy": {"attempts": 3}},
        "status": {
            "phase": "Running", "node": "i-00007", "attempt": 1, "startedAt": NOW,
            "observedGeneration": 1, "message": "attempt 1 bound to node i-00007",
            "conditions": [{"type": "Scheduled", "status": "True", "reason": "Bound",
                            "message": "attempt 1 bound to node i-00007",
                            "lastTransitionTime": NOW, "observedGeneration": 1}],
            "attempts": [{"attempt": 1, "node": "i-00007", "instanceId": "i-00007", "startedAt": NOW}]
        }
    });
    // `type` before `object`, as both API servers write an event.
    let line = format!(
        r#"{{"type":"MODIFIED","object":{}}}"#,
        serde_json::to_string(&object).unwrap()
    );
    let guarded = serde_json::from_str::<WatchEvent<DeserializeGuard<BatchJob>>>(&line).unwrap();
    let checked = serde_json::from_str::<WatchEvent<Checked<BatchJob>>>(&line).unwrap();
    match (guarded, checked) {
        (WatchEvent::Modified(g), WatchEvent::Modified(c)) => {
            let json = |j: Option<&BatchJob>| serde_json::to_value(j).unwrap();
            assert_eq!(
                json(g.0.as_ref().ok()),
                json(c.object().ok()),
                "both decode the same job"
            );
        }
        other => panic!("not both modifications: {other:?}"),
    }
    c.bench_function("watch event decode, DeserializeGuard<BatchJob>", |b| {
        b.iter(|| serde_json::from_str::<WatchEvent<DeserializeGuard<BatchJob>>>(black_box(&line)));
    });
    c.bench_function("watch event decode, Checked<BatchJob>", |b| {
        b.iter(|| serde_json::from_str::<WatchEvent<Checked<BatchJob>>>(black_box(&line)));
    });
}

criterion_group!(decode_benches, bench_decode);
criterion_group! {
    name = backlog_benches;
    config = Criterion::default().sample_size(10);
    targets = bench_backlog
}
criterion_group!(benches, bench);
criterion_main!(benches, backlog_benches, decode_benches);
