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

/// A store of objects that may have failed to deserialise: one bad object never breaks
/// a watch; it is reported on itself and left out of the pass.
type Guarded<K> = Store<DeserializeGuard<K>>;

/// The reflector stores of the five kinds.
#[derive(Clone)]
struct Stores {
    compute_environments: Guarded<ComputeEnvironment>,
    queues: Guarded<JobQueue>,
    definitions: Guarded<JobDefinition>,
    jobs: Guarded<BatchJob>,
    nodes: Guarded<BatchNode>,
}

/// An object that failed to deserialise, and why.
struct Invalid {
    reference: ObjectReference,
    error: String,
}

/// The objects of `store` that deserialised; the others go to `invalid`.
fn valid<K>(store: &Guarded<K>, invalid: &mut Vec<Invalid>) -> Vec<Arc<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone,
{
    let mut out = Vec::new();
    for g in store.state() {
        match &g.0 {
            Ok(k) => out.push(Arc::new(k.clone())),
            Err(e) => invalid.push(Invalid {
                reference: ObjectReference {
                    api_version: Some(K::api_version(&()).into_owned()),
                    kind: Some(K::kind(&()).into_owned()),
                    name: e.metadata.name.clone(),
                    namespace: e.metadata.namespace.clone(),
                    uid: e.metadata.uid.clone(),
                    resource_version: e.metadata.resource_version.clone(),
                    ..ObjectReference::default()
                },
                error: e.error.clone(),
            }),
        }
    }
    out
}

/// Logs and reports (a Warning Event, once per resourceVersion) objects that failed
/// to deserialise.
async fn report_invalid(ctx: &Context, invalid: Vec<Invalid>) {
    for i in invalid {
        let key = format!(
            "{}/{}",
            i.reference.uid.as_deref().unwrap_or_default(),
            i.reference.resource_version.as_deref().unwrap_or_default()
        );
        if !ctx.reported_invalid.lock().await.insert(key) {
            continue;
        }
        warn!(
            kind = i.reference.kind.as_deref().unwrap_or_default(),
            name = i.reference.name.as_deref().unwrap_or_default(),
            namespace = i.reference.namespace.as_deref().unwrap_or_default(),
            error = i.error,
            "object does not deserialise; left out"
        );
        let ev = Event {
            type_: EventType::Warning,
            reason: reasons::INVALID_OBJECT.into(),
            note: Some(truncate(
                &format!("ignored by the controller: {}", i.error),
                1000,
            )),
            action: reasons::INVALID_OBJECT.into(),
            secondary: None,
        };
        if let Err(err) = ctx.recorder.publish(&ev, &i.reference).await {
            debug!(error = %err, "publishing an Event failed");
        }
    }
}

impl Stores {
    async fn ready(&self) -> Result<(), ControllerError> {
        let e = |k| move |_| ControllerError::StoreNotReady(k);
        self.compute_environments
            .wait_until_ready()
            .await
            .map_err(e("ComputeEnvironment"))?;
        self.queues
            .wait_until_ready()
            .await
            .map_err(e("JobQueue"))?;
        self.definitions
            .wait_until_ready()
            .await
            .map_err(e("JobDefinition"))?;
        self.jobs.wait_until_ready().await.map_err(e("BatchJob"))?;
        self.nodes
            .wait_until_ready()
            .await
            .map_err(e("BatchNode"))?;
        Ok(())
    }
}

/// Watches one kind into a store; the stream yields `()` per change.
fn watch<K>(client: &kube::Client) -> (Store<K>, BoxStream<'static, Result<(), watcher::Error>>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let api: Api<K> = Api::all(client.clone());
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .touched_objects()
        .map_ok(|_| ())
        .boxed();
    (store, stream)
}

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

fn cloud_error(ce: &str, e: CloudError) -> ControllerError {
    ControllerError::Fleet {
        compute_environment: ce.to_owned(),
        source: e,
    }
}

async fn with_timeout<T>(
    ctx: &Context,
    operation: &'static str,
    f: impl Future<Output = Result<T, CloudError>>,
) -> Result<T, CloudError> {
    match tokio::time::timeout(ctx.config.fleet_timeout, f).await {
        Ok(r) => r,
        Err(_) => Err(CloudError::Transport {
            operation,
            message: format!("no answer within {:?}", ctx.config.fleet_timeout),
        }),
    }
}

/// Observe the fleets: describe each `aws` environment's group, look up shapes.
async fn observe_fleets(
    ctx: &Context,
    ces: &[Arc<ComputeEnvironment>],
    observed: &mut Observed,
) -> BTreeMap<String, Arc<dyn Fleet>> {
    let mut handles = BTreeMap::new();
    for ce in ces {
        let Some(name) = ce.metadata.name.as_deref() else {
            continue;
        };
        let Some(fleet) = ctx.fleets.fleet(ce).await else {
            continue;
        };
        match with_timeout(ctx, "DescribeAutoScalingGroups", fleet.describe()).await {
            Ok(state) => {
                if ce.spec.instance_shape.is_none() {
                    match state.instance_type.as_deref() {
                        Some(t) => match shape(ctx, fleet.as_ref(), t).await {
                            Ok(r) => {
                                observed.shapes.insert(name.to_owned(), r);
                            }
                            Err(e) => {
                                observed.fleet_errors.insert(name.to_owned(), e.to_string());
                            }
                        },
                        None => {
                            observed.fleet_errors.insert(
                                name.to_owned(),
                                "the Auto Scaling Group reports no instance type: set spec.instanceShape".into(),
                            );
                        }
                    }
                }
                observed.fleets.insert(name.to_owned(), state);
            }
            Err(e) => {
                warn!(compute_environment = name, error = %e, "describe fleet failed");
                observed.fleet_errors.insert(name.to_owned(), e.to_string());
            }
        }
        handles.insert(name.to_owned(), fleet);
    }
    handles
}

async fn shape(
    ctx: &Context,
    fleet: &dyn Fleet,
    instance_type: &str,
) -> Result<Resources, CloudError> {
    if let Some(r) = ctx.shapes.lock().await.get(instance_type) {
        return Ok(*r);
    }
    let info = with_timeout(
        ctx,
        "DescribeInstanceTypes",
        fleet.instance_type_info(instance_type),
    )
    .await?;
    let r = Resources::new(info.cpu_millis, info.memory_bytes, info.gpus);
    ctx.shapes.lock().await.insert(instance_type.to_owned(), r);
    Ok(r)
}

/// One pass: observe, decide, apply.
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

fn status_body(
    kind: &str,
    status: impl serde::Serialize,
    resource_version: Option<&str>,
) -> serde_json::Value {
    let mut body = json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": kind,
        "status": status,
    });
    if let Some(rv) = resource_version {
        body["metadata"] = json!({ "resourceVersion": rv });
    }
    body
}

fn ssa() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Applies the decisions; one failed write never stops the others.
async fn apply(ctx: &Context, d: Decisions, fleets: &BTreeMap<String, Arc<dyn Fleet>>) -> Summary {
    let client = &ctx.client;
    let mut s = Summary::default();
    let record = |r: Result<(), ControllerError>, what: &str, s: &mut Summary| match r {
        Ok(()) => {}
        Err(e) if e.is_conflict() => {
            s.conflicts += 1;
            debug!(what, "conflict: decided again on the next pass");
        }
        Err(e) => {
            s.failures += 1;
            warn!(what, error = %e, "write failed");
        }
    };

    for c in &d.children {
        let ns = c.job.metadata.namespace.clone().unwrap_or_default();
        let api: Api<BatchJob> = Api::namespaced(client.clone(), &ns);
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        let r = match api.create(&pp, &c.job).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        };
        s.children += 1;
        record(r, "create array child", &mut s);
    }

    // Futures collected first: a closure inside the stream would make this future
    // not `Send` for every lifetime (rust-lang/rust#102211).
    let writes: Vec<_> = d.jobs.iter().map(|u| write_job(client, u)).collect();
    let results: Vec<_> = futures::stream::iter(writes)
        .buffer_unordered(WRITES_IN_FLIGHT)
        .collect()
        .await;
    for r in results {
        s.jobs += 1;
        record(r, "job", &mut s);
    }

    let nodes: Api<BatchNode> = Api::all(client.clone());
    let writes: Vec<_> = d.nodes.iter().map(|u| write_node(&nodes, u)).collect();
    let results: Vec<_> = futures::stream::iter(writes)
        .buffer_unordered(WRITES_IN_FLIGHT)
        .collect()
        .await;
    for r in results {
        s.nodes += 1;
        record(r, "node status", &mut s);
    }

    // Fleet calls: terminations first, then desired capacity.
    let mut failed: BTreeMap<String, String> = BTreeMap::new();
    let mut succeeded: Vec<String> = Vec::new();
    for a in &d.fleet {
        let (ce, result) = match a {
            FleetAction::Terminate {
                compute_environment,
                node,
                instance_id,
            } => {
                let Some(f) = fleets.get(compute_environment) else {
                    continue;
                };
                info!(
                    compute_environment,
                    node, instance_id, "terminating instance"
                );
                let r = with_timeout(
                    ctx,
                    "TerminateInstanceInAutoScalingGroup",
                    f.terminate(instance_id),
                )
                .await;
                let r = match r {
                    Ok(()) | Err(CloudError::NotFound { .. }) => {
                        // The instance is gone: so is its node.
                        match nodes.delete(node, &DeleteParams::default()).await {
                            Ok(_) => {}
                            Err(kube::Error::Api(e)) if e.code == 404 => {}
                            Err(e) => warn!(node, error = %e, "delete BatchNode failed"),
                        }
                        Ok(())
                    }
                    Err(e) => Err(e),
                };
                (compute_environment, r)
            }
            FleetAction::SetDesired {
                compute_environment,
                desired,
                from,
            } => {
                let Some(f) = fleets.get(compute_environment) else {
                    continue;
                };
                info!(
                    compute_environment,
                    from, desired, "setting desired capacity"
                );
                (
                    compute_environment,
                    with_timeout(ctx, "SetDesiredCapacity", f.set_desired(*desired)).await,
                )
            }
        };
        s.fleet += 1;
        match result {
            Ok(()) => succeeded.push(ce.clone()),
            Err(e) => {
                let err = cloud_error(ce, e);
                warn!(error = %err, "fleet call failed");
                failed.insert(ce.clone(), err.to_string());
            }
        }
    }
    {
        let mut errors = ctx.fleet_errors.lock().await;
        for ce in succeeded {
            errors.remove(&ce);
        }
        errors.extend(failed.clone());
    }

    let ces: Api<ComputeEnvironment> = Api::all(client.clone());
    for u in &d.compute_environments {
        let body = status_body("ComputeEnvironment", &u.status, None);
        let r = ces
            .patch_status(&u.name, &ssa(), &Patch::Apply(&body))
            .await
            .map(|_| ())
            .map_err(ControllerError::from);
        record(r, "compute environment status", &mut s);
    }
    let queues: Api<JobQueue> = Api::all(client.clone());
    for u in &d.queues {
        let body = status_body("JobQueue", &u.status, None);
        let r = queues
            .patch_status(&u.name, &ssa(), &Patch::Apply(&body))
            .await
            .map(|_| ())
            .map_err(ControllerError::from);
        record(r, "queue status", &mut s);
    }

    for e in &d.events {
        let ev = Event {
            type_: if e.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: e.reason.into(),
            note: Some(truncate(&e.note, 1000)),
            action: e.reason.into(),
            secondary: None,
        };
        if let Err(err) = ctx.recorder.publish(&ev, &e.regarding).await {
            debug!(error = %err, reason = e.reason, "publishing an Event failed");
        }
    }
    for (ce, msg) in &failed {
        debug!(
            compute_environment = ce,
            msg,
            reason = reasons::FLEET_ERROR,
            "fleet error recorded"
        );
    }
    s
}

/// Label (with the observed resourceVersion as precondition), then status (with the
/// resourceVersion the label patch returned, or the observed one).
async fn write_job(client: &kube::Client, u: &JobUpdate) -> Result<(), ControllerError> {
    let api: Api<BatchJob> = Api::namespaced(client.clone(), &u.namespace);
    let mut rv = u.resource_version.clone();
    if let Some(label) = &u.label {
        let value = match label {
            LabelChange::Set(n) => json!(n),
            LabelChange::Remove => serde_json::Value::Null,
        };
        let patch = json!({"metadata": {
            "resourceVersion": rv,
            "labels": { LABEL_NODE: value },
        }});
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        let out = api.patch(&u.name, &pp, &Patch::Merge(&patch)).await?;
        rv = out.metadata.resource_version;
    }
    if let Some(status) = &u.status {
        let body = status_body("BatchJob", status, rv.as_deref());
        api.patch_status(&u.name, &ssa(), &Patch::Apply(&body))
            .await?;
    }
    Ok(())
}

/// The controller-owned status of one node.
async fn write_node(nodes: &Api<BatchNode>, u: &NodeUpdate) -> Result<(), ControllerError> {
    let body = status_body("BatchNode", &u.status, None);
    nodes
        .patch_status(&u.name, &ssa(), &Patch::Apply(&body))
        .await
        .map(|_| ())
        .map_err(ControllerError::from)
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}
