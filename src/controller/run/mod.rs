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
use std::time::Instant;

use futures::{StreamExt, TryStreamExt, stream::BoxStream};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::DeserializeGuard;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio::sync::{Notify, watch};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::api::{
    BatchJob, BatchNode, ComputeEnvironment, GROUP, JobDefinition, JobQueue, VERSION,
};
use crate::cloud::{CloudError, Fleet};
use crate::scheduler::Resources;

use super::context::{Context, ControllerConfig, FleetProvider};
use super::decide::{
    DecideConfig, Decisions, FleetAction, JobUpdate, LabelChange, NodeUpdate, Observed, decide,
};
use super::error::ControllerError;
use super::memory::PassMemory;
use super::{FIELD_MANAGER, LABEL_NODE, leader, reasons, time};
use crate::scheduler::Seconds;
use std::sync::atomic::{AtomicU64, Ordering};

mod apply;
mod observe;

use apply::apply;
use apply::truncate;
use observe::{Stores, observe_fleets, report_invalid, valid, watch, with_timeout};

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
    let ctx = Arc::new(Context::new(client.clone(), config, fleets));
    let (ces, s1) = watch::<DeserializeGuard<ComputeEnvironment>>(&client);
    let (queues, s2) = watch::<DeserializeGuard<JobQueue>>(&client);
    let (definitions, s3) = watch::<DeserializeGuard<JobDefinition>>(&client);
    let (jobs, s4) = watch::<DeserializeGuard<BatchJob>>(&client);
    let (nodes, s5) = watch::<DeserializeGuard<BatchNode>>(&client);
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
            info!("caches synced; controller running");
            let mut n: u64 = 0;
            let mut memory = PassMemory::default();
            let mut was_leading = false;
            loop {
                let is_leading = *leading.borrow_and_update();
                if is_leading {
                    if !was_leading {
                        // A new leader has seen nothing so far: every grace restarts.
                        memory.view_gap(time::now());
                    }
                    n += 1;
                    let started = Instant::now();
                    let span = info_span!("pass", n);
                    let limit = ctx.config.pass_timeout;
                    let done = tokio::time::timeout(
                        limit,
                        pass(&ctx, &stores, &mut memory, &watch_gap, &leading).instrument(span),
                    )
                    .await;
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
                    debug!("standing by: another replica holds the lease");
                }
                was_leading = is_leading;
                tokio::select! {
                    () = changed.notified() => tokio::time::sleep(ctx.config.debounce).await,
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
    let gap = watch_gap.load(Ordering::Relaxed);
    if gap > 0 {
        memory.view_gap(gap);
    }
    let mut invalid = Vec::new();
    let mut observed = Observed {
        compute_environments: valid(&stores.compute_environments, &mut invalid),
        queues: valid(&stores.queues, &mut invalid),
        definitions: valid(&stores.definitions, &mut invalid),
        jobs: valid(&stores.jobs, &mut invalid),
        nodes: valid(&stores.nodes, &mut invalid),
        ..Observed::default()
    };
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
    };
    let decisions = decide(&observed, &config, now);
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
    apply(ctx, decisions, &fleets, memory, leading, now).await
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
            let fresh: Vec<Arc<BatchNode>> = list.items.into_iter().map(Arc::new).collect();
            // Nodes the store has but the fresh list lacks are kept (deletions reach
            // the store through the watch).
            let mut all = fresh;
            for n in &observed.nodes {
                if !all.iter().any(|f| f.metadata.name == n.metadata.name) {
                    all.push(n.clone());
                }
            }
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
