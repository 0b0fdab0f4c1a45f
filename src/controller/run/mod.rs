//! The controller loop: watch the five kinds into reflector stores, and on any change
//! (debounced) or every `resync` run one pass: observe → [`decide`] → apply.
//!
//! Writes: server-side apply with field manager [`FIELD_MANAGER`] for every status the
//! controller owns (the whole owned set each time; BatchJob status applies carry the
//! observed `resourceVersion` as a precondition, so a decision made on a stale cache is
//! refused with 409 and made again on the next pass); JSON merge patches with a
//! `resourceVersion` precondition for the node label; creates for array children;
//! fleet calls (terminations before the desired capacity); Events.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream::BoxStream};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio::sync::{Notify, watch};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::api::batch_job::JobPhase;
use crate::api::{
    BatchJob, BatchNode, ComputeEnvironment, GROUP, JobDefinition, JobQueue, VERSION,
};
use crate::cloud::{CloudError, Fleet};
use crate::scheduler::Resources;

use super::context::{Context, ControllerConfig, FleetProvider};
use super::decide::carry::{CarryChanges, JobIndex};
use super::decide::{
    CancelChild, DecideConfig, Decisions, FleetAction, FleetProblem, JobUpdate, LabelChange,
    NodeUpdate, Observed, decide_with,
};
use super::error::ControllerError;
use super::memory::PassMemory;
use super::metrics::{Metrics, StageLabels};
use super::{FIELD_MANAGER, LABEL_NODE, leader, reasons, time};
use crate::scheduler::Seconds;
use crate::telemetry::{self, Health};
use std::sync::atomic::{AtomicU64, Ordering};

mod apply;
mod events;
mod observe;

/// How the controller's watches decode each object (public for the controller bench).
pub use observe::Checked;

use apply::apply;
use apply::truncate;
use observe::{Stores, observe_fleets, report_invalid, valid, watch, watch_jobs, with_timeout};

/// A spawned task that is aborted when this is dropped, so that a cancelled [`run`]
/// leaves no watch or lease renewal behind.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Writes of one kind in flight at once.
const WRITES_IN_FLIGHT: usize = 16;

/// Runs the controller until `shutdown` completes (or a watch cannot start).
///
/// `fleets` gives the fleet of each `aws` compute environment
/// ([`super::context::AwsFleets`] in production, [`super::StaticFleets`] in tests).
pub async fn run(
    client: kube::Client,
    config: ControllerConfig,
    fleets: Arc<dyn FleetProvider>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ControllerError> {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let health = Arc::new(Health::default());
    let _metrics_server = match config.metrics_bind_address {
        Some(addr) => {
            let (_, task) = telemetry::serve(addr, Arc::new(registry), health.clone())
                .await
                .map_err(ControllerError::Metrics)?;
            Some(AbortOnDrop(task))
        }
        None => None,
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        config,
        fleets,
        metrics.clone(),
    ));
    let (event_queue, _publisher) = events::start(ctx.recorder.clone(), metrics);
    // A fresh context: nothing has set its queue yet.
    let _ = ctx.events.set(event_queue);
    let (ces, s1) = watch::<ComputeEnvironment>(&client);
    let (queues, s2) = watch::<JobQueue>(&client);
    let (definitions, s3) = watch::<JobDefinition>(&client);
    let (jobs, s4) = watch_jobs(&client);
    let (nodes, s5) = watch::<BatchNode>(&client);
    let stores = Stores {
        compute_environments: ces,
        queues,
        definitions,
        jobs,
        nodes,
    };
    let changed = Arc::new(Notify::new());
    let mut merged = futures::stream::select_all([s1, s2, s3, s4, s5]);
    let notify = changed.clone();
    // The last watch error (Unix seconds): a gap in the controller's view.
    let watch_gap = Arc::new(AtomicU64::new(0));
    let gap = watch_gap.clone();
    let _driver = AbortOnDrop(tokio::spawn(async move {
        while let Some(item) = merged.next().await {
            match item {
                Ok(()) => notify.notify_one(),
                Err(e) => {
                    gap.fetch_max(time::now(), Ordering::Relaxed);
                    warn!(error = %e, "watch error (retrying with backoff)");
                }
            }
        }
    }));

    // Without leader election this replica always leads.
    let election = ctx.config.leader_election.clone();
    let (leading_tx, mut leading) = watch::channel(election.is_none());
    let mut _kept_sender = None;
    let elector = match &election {
        Some(le) => Some(AbortOnDrop(tokio::spawn(leader::elect(
            client.clone(),
            le.clone(),
            leading_tx,
        )))),
        None => {
            _kept_sender = Some(leading_tx);
            None
        }
    };

    tokio::pin!(shutdown);
    let result = tokio::select! {
        () = &mut shutdown => Ok(()),
        r = async {
            stores.ready().await?;
            health.set_ready(true);
            info!("caches synced; controller running");
            let mut n: u64 = 0;
            let mut memory = PassMemory::default();
            let mut was_leading = false;
            let mut last_start = Instant::now();
            loop {
                let is_leading = *leading.borrow_and_update();
                ctx.metrics.leader.set(i64::from(is_leading));
                let gap_before = memory.last_gap();
                if is_leading {
                    if !was_leading {
                        // A new leader has seen nothing so far: every grace restarts.
                        memory.view_gap(time::now());
                    }
                    n += 1;
                    let started = Instant::now();
                    last_start = started;
                    let span = info_span!("pass", n);
                    let limit = ctx.config.pass_timeout;
                    let done = tokio::time::timeout(
                        limit,
                        pass(&ctx, &stores, &mut memory, &watch_gap, &leading).instrument(span),
                    )
                    .await;
                    ctx.metrics.pass_seconds.observe(started.elapsed().as_secs_f64());
                    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                    match done {
                        Ok(summary) if summary.is_idle() => {
                            debug!(n, elapsed_ms, "pass done: nothing to change");
                        }
                        Ok(summary) => info!(n, ?summary, elapsed_ms, "pass done"),
                        Err(_) => {
                            memory.view_gap(time::now());
                            warn!(n, ?limit, "pass did not finish in time; the view has a gap");
                        }
                    }
                } else {
                    // A standby parks nothing: what it parked while it led is stale.
                    ctx.metrics.parked_jobs.set(0);
                    ctx.metrics.parked_classes.set(0);
                    debug!("standing by: another replica holds the lease");
                }
                if memory.last_gap() != gap_before {
                    ctx.metrics.view_gaps.inc();
                }
                was_leading = is_leading;
                tokio::select! {
                    // Passes start at most one debounce apart: after a pass longer than
                    // that, changes that came during it are taken up at once.
                    () = changed.notified() => {
                        tokio::time::sleep(ctx.config.debounce.saturating_sub(last_start.elapsed())).await;
                    }
                    () = tokio::time::sleep(ctx.config.resync) => {}
                    Ok(()) = leading.changed() => {}
                }
            }
        } => r,
    };
    if let (Some(e), Some(le)) = (elector, &election) {
        drop(e);
        let api: Api<Lease> = Api::namespaced(client.clone(), &le.namespace);
        if let Err(err) = leader::release(&api, le).await {
            warn!(error = %err, "releasing the lease failed");
        }
    }
    info!("controller stopped");
    result
}

/// Counts of what one pass did (for the log).
#[derive(Debug, Default)]
struct Summary {
    jobs: usize,
    children: usize,
    nodes: usize,
    fleet: usize,
    conflicts: usize,
    failures: usize,
}

impl Summary {
    fn is_idle(&self) -> bool {
        self.jobs + self.children + self.nodes + self.fleet + self.conflicts + self.failures == 0
    }
}

/// One pass: observe, decide, apply. Every failure inside it is recorded in `memory`
/// (a gap in the view, a fleet error) and logged; nothing is decided from a view that is
/// known to be broken.
async fn pass(
    ctx: &Context,
    stores: &Stores,
    memory: &mut PassMemory,
    watch_gap: &AtomicU64,
    leading: &watch::Receiver<bool>,
) -> Summary {
    let now = time::now();
    let began = Instant::now();
    let gap = watch_gap.load(Ordering::Relaxed);
    if gap > 0 {
        memory.view_gap(gap);
    }
    let mut invalid = Vec::new();
    let mut observed = Observed {
        compute_environments: valid(&stores.compute_environments, &mut invalid),
        queues: valid(&stores.queues, &mut invalid),
        definitions: valid(&stores.definitions, &mut invalid),
        jobs: Vec::new(),
        nodes: valid(&stores.nodes, &mut invalid),
        ..Observed::default()
    };
    stores.jobs.invalid(&mut invalid);
    report_invalid(ctx, invalid).await;
    memory.observe_nodes(&observed.nodes, now);
    confirm_silence(ctx, &observed, memory, now).await;
    observed.heartbeats_seen = memory.heartbeats_seen();
    observed.idle_seen = memory.idle_seen();
    observed.draining_seen = memory.draining_seen();
    observed.fenced = memory.fenced();
    observed.view_gap = memory.last_gap();
    let ces = observed.compute_environments.clone();
    let fleets = observe_fleets(ctx, &ces, &mut observed).await;
    for (ce, e) in &memory.fleet_errors {
        observed
            .fleet_errors
            .entry(ce.clone())
            .or_insert_with(|| e.clone());
    }
    let config = DecideConfig {
        lost_node_timeout: ctx.config.lost_node_timeout.as_secs(),
        disruption_threshold_percent: ctx.config.disruption_threshold_percent,
        array_children_waiting: ctx.config.array_children_waiting,
        full_pass_interval: ctx.config.full_pass_interval.as_secs(),
        parked_kept: ctx.config.parked_kept,
        carry_parked: true,
    };
    let observed_at = Instant::now();
    // Taken now, with no wait before the pass: a pass cut short by its timeout keeps
    // the job index as it was.
    (observed.jobs, observed.released) = stores.jobs.for_pass();
    let decisions = decide_with(&observed, &config, now, &mut memory.settled);
    stores
        .jobs
        .after_pass(observed.released.len(), &decisions.carry);
    ctx.metrics
        .parked_jobs
        .set(i64::try_from(decisions.parked_jobs).unwrap_or(i64::MAX));
    ctx.metrics
        .parked_classes
        .set(i64::try_from(decisions.parked_classes).unwrap_or(i64::MAX));
    if decisions.parked_jobs > 0 {
        debug!(
            classes = decisions.parked_classes,
            jobs = decisions.parked_jobs,
            "pass left parked backlog jobs out (their status as written)"
        );
    }
    record_state(&ctx.metrics, &observed, &decisions);
    memory.after_pass(decisions.idle.clone());
    // A fleet that was described fine and needs no call this pass has no error left.
    for ce in observed.fleets.keys() {
        let acting = decisions
            .fleet
            .iter()
            .any(|a| a.compute_environment() == ce);
        if !acting {
            memory.fleet_errors.remove(ce);
        }
    }
    let decided_at = Instant::now();
    let full_pass = decisions.full_pass;
    let summary = apply(ctx, decisions, &fleets, memory, leading, now).await;
    let stages = [
        ("observe", observed_at - began),
        ("decide", decided_at - observed_at),
        ("apply", decided_at.elapsed()),
    ];
    for (stage, took) in stages {
        ctx.metrics
            .pass_stage_seconds
            .get_or_create(&StageLabels { stage })
            .observe(took.as_secs_f64());
    }
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    debug!(
        observe_ms = ms(stages[0].1),
        decide_ms = ms(stages[1].1),
        apply_ms = ms(stages[2].1),
        full_pass,
        "pass stages"
    );
    summary
}

/// Sets the gauges from what a pass saw and decided: jobs by queue and phase, desired
/// and in-service capacity per compute environment.
fn record_state(metrics: &Metrics, observed: &Observed, decisions: &Decisions) {
    use super::metrics::{CeLabels, JobLabels};
    // Counted by borrowed keys: no allocation per job.
    let mut jobs: BTreeMap<(&str, Option<JobPhase>), i64> = BTreeMap::new();
    for j in &observed.jobs {
        let phase = j.status.as_ref().and_then(|s| s.phase);
        *jobs.entry((j.spec.queue.as_str(), phase)).or_default() += 1;
    }
    // Carried parked jobs (not handed to the pass): Runnable.
    for (queue, n) in &decisions.carry.by_queue {
        *jobs
            .entry((queue.as_str(), Some(JobPhase::Runnable)))
            .or_default() += i64::try_from(*n).unwrap_or(i64::MAX);
    }
    metrics.jobs.clear();
    for ((queue, phase), n) in jobs {
        let phase = phase.map_or_else(|| "Submitted".to_owned(), |p| format!("{p:?}"));
        metrics
            .jobs
            .get_or_create(&JobLabels {
                queue: queue.to_owned(),
                phase,
            })
            .set(n);
    }
    for (ce, fleet) in &observed.fleets {
        let desired = decisions
            .fleet
            .iter()
            .find_map(|a| match a {
                FleetAction::SetDesired {
                    compute_environment,
                    desired,
                    ..
                } if compute_environment == ce => Some(*desired),
                _ => None,
            })
            .unwrap_or(fleet.desired);
        metrics
            .desired
            .get_or_create(&CeLabels {
                compute_environment: ce.clone(),
            })
            .set(i64::from(desired));
    }
    let mut in_service: BTreeMap<&str, i64> = BTreeMap::new();
    for n in &observed.nodes {
        let lost = n.status.as_ref().and_then(|s| s.phase) == Some(crate::api::NodePhase::Lost);
        let e = in_service
            .entry(n.spec.compute_environment.as_str())
            .or_default();
        if !lost {
            *e += 1;
        }
    }
    for ce in &observed.compute_environments {
        let Some(name) = ce.metadata.name.clone() else {
            continue;
        };
        let n = in_service.get(name.as_str()).copied().unwrap_or(0);
        metrics
            .in_service
            .get_or_create(&CeLabels {
                compute_environment: name,
            })
            .set(n);
    }
}

/// Before a node is declared Lost or fenced, the controller makes sure its view of the
/// nodes is current: when some node has been silent for the lost-node timeout, it reads
/// the BatchNodes afresh from the API server (a consistent list). If that read fails,
/// the view has a gap and nobody is Lost in this pass; if it succeeds, its heartbeat
/// values are taken in.
async fn confirm_silence(
    ctx: &Context,
    observed: &Observed,
    memory: &mut PassMemory,
    now: Seconds,
) {
    let timeout = ctx.config.lost_node_timeout.as_secs();
    let gap = memory.last_gap().unwrap_or(0);
    let seen = memory.heartbeats_seen();
    let any_silent = seen
        .values()
        .any(|at| now.saturating_sub((*at).max(gap)) > timeout);
    if !any_silent {
        return;
    }
    let api: Api<BatchNode> = Api::all(ctx.client.clone());
    let read = tokio::time::timeout(
        ctx.config
            .fleet_timeout
            .min(std::time::Duration::from_secs(10)),
        api.list(&Default::default()),
    )
    .await;
    match read {
        Ok(Ok(list)) => {
            let mut all: Vec<Arc<BatchNode>> = list.items.into_iter().map(Arc::new).collect();
            // Nodes the store has but the fresh list lacks are kept (deletions reach
            // the store through the watch).
            let fresh: std::collections::BTreeSet<Option<String>> =
                all.iter().map(|n| n.metadata.name.clone()).collect();
            all.extend(
                observed
                    .nodes
                    .iter()
                    .filter(|n| !fresh.contains(&n.metadata.name))
                    .cloned(),
            );
            memory.observe_nodes(&all, now);
        }
        Ok(Err(e)) => {
            warn!(error = %e, "cannot confirm silent nodes with a fresh read; nobody is declared Lost in this pass");
            memory.view_gap(now);
        }
        Err(_) => {
            warn!("a fresh read of the nodes timed out; nobody is declared Lost in this pass");
            memory.view_gap(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use asg_batch_apiserver::{ApiServerConfig, start};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
            return String::new();
        };
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut out = String::new();
        if s.write_all(req.as_bytes()).await.is_ok() {
            let _ = s.read_to_string(&mut out).await;
        }
        out
    }

    fn apply_yaml(yaml: &str) -> Vec<serde_json::Value> {
        use serde::Deserialize;
        serde_yaml::Deserializer::from_str(yaml)
            .filter_map(|d| serde_json::Value::deserialize(d).ok())
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_controller_serves_its_metrics_health_and_readiness() {
        let server = start(ApiServerConfig::default()).await.expect("server");
        let client = server.client().expect("client");
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        for crd in crate::api::crds::all() {
            crds.create(&PostParams::default(), &crd)
                .await
                .expect("crd");
        }
        let world = r#"
apiVersion: asgbatch.io/v1alpha1
kind: ComputeEnvironment
metadata: {name: local}
spec:
  local: {executor: process}
  minInstances: 0
  maxInstances: 3
  instanceShape: {cpu: "4", memory: 16Gi}
---
apiVersion: asgbatch.io/v1alpha1
kind: JobQueue
metadata: {name: q}
spec:
  computeEnvironments: [local]
---
apiVersion: asgbatch.io/v1alpha1
kind: BatchJob
metadata: {name: waits, namespace: default}
spec:
  queue: q
  process: {command: ["true"]}
  resources: {cpu: "1", memory: 1Gi}
"#;
        let pp = PatchParams::apply("test");
        for v in apply_yaml(world) {
            let name = v["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            match v["kind"].as_str() {
                Some("BatchJob") => {
                    let api: Api<BatchJob> = Api::namespaced(client.clone(), "default");
                    api.patch(&name, &pp, &Patch::Apply(&v)).await.expect("job");
                }
                Some("JobQueue") => {
                    let api: Api<JobQueue> = Api::all(client.clone());
                    api.patch(&name, &pp, &Patch::Apply(&v))
                        .await
                        .expect("queue");
                }
                _ => {
                    let api: Api<ComputeEnvironment> = Api::all(client.clone());
                    api.patch(&name, &pp, &Patch::Apply(&v)).await.expect("ce");
                }
            }
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        let config = ControllerConfig {
            resync: std::time::Duration::from_millis(200),
            debounce: std::time::Duration::from_millis(20),
            metrics_bind_address: Some(addr),
            ..ControllerConfig::default()
        };
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let controller = tokio::spawn(run(
            client.clone(),
            config,
            Arc::new(super::super::StaticFleets::default()),
            async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            },
        ));
        // The job waits (no node): the pass counts it, writes its status, and leads.
        let start = Instant::now();
        let metrics = loop {
            let m = get(addr, "/metrics").await;
            if m.contains(r#"asg_batch_controller_jobs{queue="q",phase="Runnable"} 1"#)
                && m.contains(r#"asg_batch_controller_api_writes_total{kind="job",outcome="ok"}"#)
            {
                break m;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(20),
                "metrics never showed the waiting job: {m}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        assert!(
            metrics.contains("asg_batch_controller_leader 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("asg_batch_controller_pass_duration_seconds_count"),
            "{metrics}"
        );
        assert!(
            metrics.contains(
                r#"asg_batch_controller_in_service_instances{compute_environment="local"} 0"#
            ),
            "{metrics}"
        );
        // Nothing parks: the environment can still grow.
        assert!(
            metrics.contains("asg_batch_controller_parked_jobs 0")
                && metrics.contains("asg_batch_controller_parked_classes 0"),
            "{metrics}"
        );
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        stop_tx.send_replace(true);
        let _ = controller.await;
    }
}
