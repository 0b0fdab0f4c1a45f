//! The agent loop: register the node, heartbeat, watch the jobs bound here, and start,
//! cancel or report attempts as [`plan`](super::plan::plan) decides.

use super::attempt::{self, AttemptContext, CancelReason, Mode};
use super::config::{AgentConfig, ShutdownMode};
use super::error::AgentError;
use super::executor::Executor;
use super::gate::Gate;
use super::gpus::GpuAllocator;
use super::node;
use super::plan::{self, Action, AttemptKey, CancelWhy, JobView};
use super::protection::Protection;
use super::watched::WatchedJob;
use crate::api::{BatchJob, BatchNode};
use crate::cloud::Fleet;
use futures::StreamExt;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tokio::task::{Id, JoinSet};
use tracing::Instrument;

/// Aborts a task when dropped.
struct AbortTask(tokio::task::JoinHandle<()>);

impl Drop for AbortTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An attempt this agent runs (or reports) now.
struct Running {
    cancel: watch::Sender<bool>,
    reason: CancelReason,
    /// Leave the workload running and stop supervising it (graceful stop, `Leave`).
    detach: watch::Sender<bool>,
}

struct Agent {
    ctx: Arc<AttemptContext>,
    /// What the heartbeat reports, and whether new attempts may start.
    gate: Arc<Gate>,
    /// Number of attempts held, read by the heartbeat (idle or not).
    busy: watch::Sender<usize>,
    store: Store<WatchedJob>,
    /// uid and resourceVersion of malformed jobs already logged.
    invalid_seen: HashSet<(String, String)>,
    running: HashMap<AttemptKey, Running>,
    done: HashSet<AttemptKey>,
    tasks: JoinSet<AttemptKey>,
    task_keys: HashMap<Id, AttemptKey>,
}

/// Runs a node agent until `shutdown` completes.
///
/// Registers the BatchNode `config.node_name` (server-side apply, field manager
/// `asg-batch-agent`), heartbeats every `config.heartbeat_interval`, watches the BatchJobs
/// bound to it and not ended (field selector [`plan::agent_field_selector`]) in all
/// namespaces and runs their current attempts with `executor`, reporting per
/// `src/api/PROTOCOL.md`. With a `fleet`, the
/// instance is protected from scale-in while it holds an attempt.
///
/// On shutdown, running attempts are left running for the next agent process to adopt
/// (`ShutdownMode::Leave`, the default) or cancelled and reported (reason `Cancelled`,
/// `ShutdownMode::Cancel`); either way, endings already known are reported within
/// `config.shutdown_grace`. Returns an error when the node cannot be registered or the
/// watch ends.
pub async fn run(
    client: kube::Client,
    config: AgentConfig,
    executor: Arc<dyn Executor>,
    fleet: Option<Arc<dyn Fleet>>,
    shutdown: impl Future,
) -> Result<(), AgentError> {
    let span = tracing::info_span!("agent", node = %config.node_name);
    run_inner(client, config, executor, fleet, shutdown)
        .instrument(span)
        .await
}

async fn run_inner(
    client: kube::Client,
    mut config: AgentConfig,
    executor: Arc<dyn Executor>,
    fleet: Option<Arc<dyn Fleet>>,
    shutdown: impl Future,
) -> Result<(), AgentError> {
    let node_name = config.node_name.clone();
    let protection = match fleet {
        Some(f) => Some(Arc::new(
            Protection::observe(f, config.instance_id.clone(), config.idle_polls).await,
        )),
        None => None,
    };
    let nodes: Api<BatchNode> = Api::all(client.clone());
    let protected = match &protection {
        Some(p) => Some(p.protected().await),
        None => None,
    };
    let gpus = Arc::new(match config.capacity.gpu {
        0 => GpuAllocator::in_memory(0),
        n => GpuAllocator::load(&config.data_dir, n).map_err(AgentError::Gpus)?,
    });
    let gate = Arc::new(Gate::default());
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(super::metrics::AgentMetrics::new(&mut registry));
    let health = Arc::new(crate::telemetry::Health::default());
    let _metrics_server = match config.metrics_bind_address {
        Some(addr) => {
            let (_, task) = crate::telemetry::serve(addr, Arc::new(registry), health.clone())
                .await
                .map_err(AgentError::Metrics)?;
            Some(AbortTask(task))
        }
        None => None,
    };
    // The attempts' full logs: served (when asked) from before the node is registered,
    // so its first status already says where; swept of old ones all along.
    let log_store = config.log_store();
    let _log_server = match config.logs.listen {
        Some(addr) => {
            let (endpoint, task) = super::logs::serve(
                addr,
                &config,
                log_store.clone(),
                client.clone(),
                metrics.clone(),
            )
            .await
            .map_err(AgentError::Logs)?;
            tracing::info!(url = %endpoint.url, "serving attempt logs");
            config.log_endpoint = Some(endpoint);
            Some(AbortTask(task))
        }
        None => None,
    };
    let _log_sweep = AbortTask(tokio::spawn(
        super::logs::sweep_loop(
            log_store,
            client.clone(),
            config.logs.retention,
            config.logs.sweep_every,
        )
        .in_current_span(),
    ));
    node::register(&nodes, &config, protected, &gate)
        .await
        .map_err(|source| AgentError::Register {
            node: node_name.clone(),
            source,
        })?;
    health.set_ready(true);

    // One malformed BatchJob must not break the watch: it is logged and skipped. Each job
    // is decoded once, without the managedFields nothing here reads ([`WatchedJob`]).
    let jobs: Api<WatchedJob> = Api::all(client.clone());
    let (store, writer) = reflector::store();
    let selector = plan::agent_field_selector(&node_name);
    let stream = reflector::reflector(
        writer,
        watcher(jobs, watcher::Config::default().fields(&selector)).default_backoff(),
    );
    let mut stream = std::pin::pin!(stream);
    let grace = config.shutdown_grace;
    let shutdown_mode = config.shutdown_mode;
    let (busy_tx, busy_rx) = watch::channel(0usize);
    // Stopped also when this future is dropped: an agent that is gone does not heartbeat.
    let heartbeat = AbortOnDrop(tokio::spawn(
        node::heartbeat_loop(
            nodes.clone(),
            config.clone(),
            protection.clone(),
            gate.clone(),
            metrics.clone(),
        )
        .in_current_span(),
    ));
    let (spot_tx, mut spot_rx) = watch::channel(false);
    let _spot = config.spot.clone().map(|w| {
        AbortOnDrop(tokio::spawn(
            super::spot::poll_loop(w, gate.clone(), spot_tx).in_current_span(),
        ))
    });
    let idle = protection.clone().map(|p| {
        AbortOnDrop(tokio::spawn(
            super::protection::idle_loop(p, config.heartbeat_interval, busy_rx).in_current_span(),
        ))
    });

    let mut agent = Agent {
        gate,
        ctx: Arc::new(AttemptContext {
            client,
            config,
            executor,
            protection,
            gpus,
            jobs: store.clone(),
        }),
        busy: busy_tx,
        store,
        invalid_seen: HashSet::new(),
        running: HashMap::new(),
        done: HashSet::new(),
        tasks: JoinSet::new(),
        task_keys: HashMap::new(),
    };
    let mut ready = false;
    let mut shutdown = std::pin::pin!(shutdown);
    tracing::info!(node = %node_name, %selector, "agent running");
    let result = loop {
        tokio::select! {
            _ = &mut shutdown => break Ok(()),
            event = stream.next() => match event {
                Some(Ok(event)) => {
                    if matches!(event, watcher::Event::InitDone) {
                        ready = true;
                    }
                    if ready && !matches!(event, watcher::Event::Init | watcher::Event::InitApply(_)) {
                        agent.reconcile();
                    }
                }
                Some(Err(e)) => tracing::warn!(error = %e, "BatchJob watch error; retrying"),
                None => break Err(AgentError::WatchEnded { node: node_name.clone() }),
            },
            Ok(()) = spot_rx.changed() => {
                if ready {
                    agent.reconcile();
                }
            }
            Some(joined) = agent.tasks.join_next_with_id() => {
                agent.finished(joined);
                if ready {
                    agent.reconcile();
                }
            }
        }
    };
    agent.stop(grace, shutdown_mode).await;
    drop(heartbeat);
    drop(idle);
    tracing::info!(node = %node_name, "agent stopped");
    result
}

/// Aborts its task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Agent {
    fn node(&self) -> &str {
        &self.ctx.config.node_name
    }

    /// Applies the plan to the current watch state.
    fn reconcile(&mut self) {
        // The store's objects are shared, not copied: this runs on every watch event, over
        // every job bound here (up to one per 100m of cpu).
        let state = self.store.state();
        let mut jobs: Vec<&Arc<BatchJob>> = Vec::with_capacity(state.len());
        let mut invalid_uids: HashSet<String> = HashSet::new();
        for guarded in &state {
            match &guarded.0 {
                Ok(job) => jobs.push(job),
                Err(invalid) => {
                    let meta = &invalid.metadata;
                    let uid = meta.uid.clone().unwrap_or_default();
                    let seen = (
                        uid.clone(),
                        meta.resource_version.clone().unwrap_or_default(),
                    );
                    if self.invalid_seen.insert(seen) {
                        tracing::warn!(
                            namespace = ?meta.namespace, name = ?meta.name, error = %invalid.error,
                            "malformed BatchJob bound to this node; skipped until it is fixed"
                        );
                    }
                    invalid_uids.insert(uid);
                }
            }
        }
        self.invalid_seen
            .retain(|(uid, _)| invalid_uids.contains(uid));
        let views: Vec<JobView<'_>> = jobs.iter().filter_map(|j| JobView::of(j)).collect();
        plan::prune_done(&mut self.done, &views);
        // An attempt of a job that became unreadable keeps running: that is no reason to stop it.
        let running = self
            .running
            .keys()
            .filter(|k| !invalid_uids.contains(&k.uid));
        let actions = plan::plan(self.node(), &views, running, &self.done);
        for action in actions {
            match action {
                Action::Start(key) => {
                    if let Some(job) = find(&jobs, &key) {
                        if !self.gate.admit(&key) {
                            tracing::debug!(attempt = %key, "node is draining: attempt not started (the controller hands it back)");
                            continue;
                        }
                        self.start(key, job, Mode::Start);
                    }
                }
                Action::Adopt(key) => {
                    if let Some(job) = find(&jobs, &key) {
                        // Running work is held whatever the node's phase.
                        self.gate.hold(&key);
                        self.start(key, job, Mode::Adopt);
                    }
                }
                Action::Cancel(key, why) => self.cancel(&key, why),
            }
        }
        // A Spot interruption notice: the instance goes away, so does what runs here.
        if self.gate.instance_action() {
            let keys: Vec<AttemptKey> = self.running.keys().cloned().collect();
            for key in keys {
                self.cancel(&key, CancelWhy::SpotInterruption);
            }
        }
        // GPUs held by attempts this agent neither runs nor reports any more (a crash
        // between an attempt's report and its release) are free again.
        // Their names are made only when some GPU is held (this runs on every watch event).
        let live = std::cell::LazyCell::new(|| {
            self.running
                .keys()
                .map(super::spec::attempt_name)
                .collect::<HashSet<String>>()
        });
        self.ctx.gpus.retain(|name| live.contains(name));
    }

    /// Runs (or adopts) attempt `key`; the gate holds it already.
    fn start(&mut self, key: AttemptKey, job: Arc<BatchJob>, mode: Mode) {
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let (detach_tx, detach_rx) = watch::channel(false);
        let reason: CancelReason = Arc::new(Mutex::new(None));
        let fut = attempt::run(
            self.ctx.clone(),
            key.clone(),
            job,
            mode,
            cancel_rx,
            reason.clone(),
            detach_rx,
        );
        let running = Running {
            cancel: cancel_tx,
            reason,
            detach: detach_tx,
        };
        self.spawn(key, fut, running);
    }

    fn spawn(
        &mut self,
        key: AttemptKey,
        fut: impl Future<Output = AttemptKey> + Send + 'static,
        running: Running,
    ) {
        let handle = self.tasks.spawn(fut.in_current_span());
        self.task_keys.insert(handle.id(), key.clone());
        self.running.insert(key, running);
        self.busy.send_replace(self.running.len());
    }

    fn cancel(&mut self, key: &AttemptKey, why: CancelWhy) {
        let Some(r) = self.running.get(key) else {
            return;
        };
        if *r.cancel.borrow() {
            return;
        }
        if let Ok(mut reason) = r.reason.lock() {
            *reason = Some(why);
        }
        tracing::info!(attempt = %key, ?why, "cancelling attempt");
        r.cancel.send_replace(true);
    }

    fn finished(&mut self, joined: Result<(Id, AttemptKey), tokio::task::JoinError>) {
        let key = match joined {
            Ok((id, key)) => {
                self.task_keys.remove(&id);
                key
            }
            Err(e) => {
                let Some(key) = self.task_keys.remove(&e.id()) else {
                    return;
                };
                tracing::error!(attempt = %key, error = %e, "attempt task failed");
                key
            }
        };
        self.running.remove(&key);
        self.gate.release(&key);
        self.busy.send_replace(self.running.len());
        self.done.insert(key);
    }

    /// Leaves every running attempt running (`Leave`: their tasks stop supervising them,
    /// the next agent process adopts them) or cancels it (`Cancel`), and waits up to
    /// `grace` for the reports of the attempts that ended.
    async fn stop(&mut self, grace: std::time::Duration, mode: ShutdownMode) {
        let keys: Vec<AttemptKey> = self.running.keys().cloned().collect();
        for key in &keys {
            match mode {
                ShutdownMode::Cancel => self.cancel(key, CancelWhy::Shutdown),
                ShutdownMode::Leave => {
                    if let Some(r) = self.running.get(key) {
                        r.detach.send_replace(true);
                    }
                }
            }
        }
        if mode == ShutdownMode::Leave && !keys.is_empty() {
            tracing::info!(
                attempts = keys.len(),
                "leaving running attempts running for the next agent process"
            );
        }
        let drain = async {
            while let Some(joined) = self.tasks.join_next_with_id().await {
                self.finished(joined);
            }
        };
        if tokio::time::timeout(grace, drain).await.is_err() {
            tracing::warn!(
                left = self.tasks.len(),
                "attempts did not report within the shutdown grace"
            );
        }
        self.tasks.abort_all();
    }
}

/// The job of attempt `key`, shared with the store (not copied) for the attempt's task.
fn find(jobs: &[&Arc<BatchJob>], key: &AttemptKey) -> Option<Arc<BatchJob>> {
    jobs.iter()
        .find(|j| j.metadata.uid.as_deref() == Some(key.uid.as_str()))
        .map(|j| Arc::clone(j))
}
