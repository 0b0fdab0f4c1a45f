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
use super::{FIELD_MANAGER, LABEL_NODE, leader, reasons, time};

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
    let _driver = AbortOnDrop(tokio::spawn(async move {
        while let Some(item) = merged.next().await {
            match item {
                Ok(()) => notify.notify_one(),
                Err(e) => warn!(error = %e, "watch error (retrying with backoff)"),
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
            loop {
                if *leading.borrow_and_update() {
                    n += 1;
                    let started = Instant::now();
                    let span = info_span!("pass", n);
                    match pass(&ctx, &stores).instrument(span).await {
                        Ok(summary) => {
                            let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                            if summary.is_idle() {
                                debug!(n, elapsed_ms, "pass done: nothing to change");
                            } else {
                                info!(n, ?summary, elapsed_ms, "pass done");
                            }
                        }
                        Err(e) => warn!(n, error = %e, kind = e.metric_label(), "pass failed"),
                    }
                } else {
                    debug!("standing by: another replica holds the lease");
                }
                tokio::select! {
                    () = changed.notified() => tokio::time::sleep(ctx.config.debounce).await,
                    () = tokio::time::sleep(ctx.config.resync) => {}
                    Ok(()) = leading.changed() => {}
                }
            }
            #[allow(unreachable_code)]
            Ok::<(), ControllerError>(())
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

/// One pass: observe, decide, apply.
/// When each node's current heartbeat value was first seen, on this controller's clock
/// (see `Observed::heartbeats_seen`). Forgets nodes that are gone.
async fn heartbeats_seen(
    ctx: &Context,
    nodes: &[Arc<BatchNode>],
    now: crate::scheduler::Seconds,
) -> BTreeMap<String, crate::scheduler::Seconds> {
    let mut seen = ctx.heartbeats.lock().await;
    let mut out = BTreeMap::new();
    for n in nodes {
        let Some(name) = n.metadata.name.clone() else {
            continue;
        };
        let value = n
            .status
            .as_ref()
            .and_then(|s| s.heartbeat_time.as_ref())
            .map(|t| t.0.to_string());
        let entry = seen.entry(name.clone()).or_insert((value.clone(), now));
        if entry.0 != value {
            *entry = (value, now);
        }
        out.insert(name, entry.1);
    }
    seen.retain(|name, _| out.contains_key(name));
    out
}

async fn pass(ctx: &Context, stores: &Stores) -> Result<Summary, ControllerError> {
    let now = time::now();
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
    observed.heartbeats_seen = heartbeats_seen(ctx, &observed.nodes, now).await;
    let ces = observed.compute_environments.clone();
    let fleets = observe_fleets(ctx, &ces, &mut observed).await;
    for (ce, e) in ctx.fleet_errors.lock().await.iter() {
        observed
            .fleet_errors
            .entry(ce.clone())
            .or_insert_with(|| e.clone());
    }
    let config = DecideConfig {
        lost_node_timeout: ctx.config.lost_node_timeout.as_secs(),
    };
    let decisions = decide(&observed, &config, now);
    {
        // A fleet that was described fine and needs no call this pass has no error left.
        let mut errors = ctx.fleet_errors.lock().await;
        for ce in observed.fleets.keys() {
            let acting = decisions.fleet.iter().any(|a| match a {
                FleetAction::Terminate {
                    compute_environment,
                    ..
                }
                | FleetAction::SetDesired {
                    compute_environment,
                    ..
                } => compute_environment == ce,
            });
            if !acting {
                errors.remove(ce);
            }
        }
    }
    Ok(apply(ctx, decisions, &fleets).await)
}
