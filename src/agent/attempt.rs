//! One attempt on this node: resolve its RunSpec, protect the instance, run it with the
//! executor, and report `startedAt` and then how it ended — each report only while the
//! attempt is still the job's current one on this node.

use super::config::AgentConfig;
use super::executor::{Adoption, EndReason, Executor, Outcome, Progress, RunSpec, Workload};
use super::gpus::{GpuAllocator, VISIBLE_DEVICES_ENV, visible_devices};
use super::patches;
use super::plan::{AttemptKey, CancelWhy};
use super::protection::Protection;
use super::spec;
use super::watched::WatchedJob;
use crate::api::BatchJob;
use jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

/// What attempts share.
pub struct AttemptContext {
    /// API client.
    pub client: kube::Client,
    /// Agent configuration.
    pub config: AgentConfig,
    /// Runs the workloads.
    pub executor: Arc<dyn Executor>,
    /// Scale-in protection, when the agent manages it.
    pub protection: Option<Arc<Protection>>,
    /// Which of the node's GPUs each attempt holds.
    pub gpus: Arc<GpuAllocator>,
    /// The agent's watch cache of the jobs bound to its node: a report checks it first.
    pub jobs: Store<WatchedJob>,
}

/// Why a cancelled attempt was cancelled, set by the agent loop before it signals.
pub type CancelReason = Arc<Mutex<Option<CancelWhy>>>;

/// Longest wait between two tries of a report.
const REPORT_MAX_DELAY: Duration = Duration::from_secs(10);

/// Why a report was not written.
#[derive(Debug, thiserror::Error)]
enum ReportError {
    #[error("attempt is no longer current: {0}")]
    NotCurrent(String),
    #[error(transparent)]
    Api(#[from] kube::Error),
}

/// The job changed between the read and the write (the write carries the read's
/// resourceVersion as a precondition).
fn is_stale(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409 && s.message.contains("has been modified"))
}

/// Worth retrying: the API server is unreachable or busy, or the job changed between the
/// re-read and the write (the write carries the read's resourceVersion as a precondition).
fn is_transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code >= 500 || s.code == 429 || is_stale(e),
        _ => true,
    }
}

/// Whether attempt `key` is still the current attempt of `job` on `node`.
fn check_current(job: &BatchJob, key: &AttemptKey, node: &str) -> Result<(), ReportError> {
    if job.metadata.uid.as_deref() != Some(key.uid.as_str()) {
        return Err(ReportError::NotCurrent("the job was replaced".into()));
    }
    let status = job.status.as_ref();
    let status_node = status.and_then(|s| s.node.as_deref());
    if status_node != Some(node) {
        return Err(ReportError::NotCurrent(format!(
            "status.node is {status_node:?}"
        )));
    }
    let attempt = status.and_then(|s| s.attempt);
    if attempt != Some(key.attempt) {
        return Err(ReportError::NotCurrent(format!(
            "status.attempt is {attempt:?}"
        )));
    }
    Ok(())
}

/// The resourceVersion of the job, read from the API server, when attempt `key` is still
/// its current attempt on `node`.
async fn current_version(
    api: &Api<BatchJob>,
    key: &AttemptKey,
    node: &str,
) -> Result<Option<String>, ReportError> {
    let job = api
        .get_opt(&key.name)
        .await?
        .ok_or_else(|| ReportError::NotCurrent("the job was deleted".into()))?;
    check_current(&job, key, node)?;
    Ok(job.metadata.resource_version)
}

/// The resourceVersion of the job in the agent's watch cache, when the cache has it with
/// attempt `key` current. `None` when it cannot tell (the API server is asked then).
fn cached_version(ctx: &AttemptContext, key: &AttemptKey) -> Option<String> {
    let cached = ctx
        .jobs
        .get(&ObjectRef::new(&key.name).within(&key.namespace))?;
    let job = cached.job()?;
    check_current(job, key, &ctx.config.node_name).ok()?;
    job.metadata.resource_version.clone()
}

/// Checks that attempt `key` is still current and applies `body` for it, with the
/// checked object's resourceVersion as a precondition so nothing changes in between. The
/// agent's watch cache is asked first (no request; a stale cache makes the apply conflict,
/// and the job is then read from the API server). Transient failures (API server
/// unreachable, 5xx, 429) are retried until the report is written or the attempt is no
/// longer current — an ended attempt must not hang unreported; the agent's shutdown grace
/// bounds it. Returns whether it was written.
async fn report(
    ctx: &AttemptContext,
    key: &AttemptKey,
    what: &str,
    body: serde_json::Value,
) -> bool {
    let api: Api<BatchJob> = Api::namespaced(ctx.client.clone(), &key.namespace);
    let manager = patches::attempt_manager(key.attempt);
    let params = PatchParams::apply(&manager);
    let mut delay = Duration::from_millis(250);
    let mut from_cache = true;
    loop {
        let cached = if from_cache {
            cached_version(ctx, key)
        } else {
            None
        };
        let used_cache = cached.is_some();
        let result = async {
            let rv = match cached {
                Some(rv) => Some(rv),
                None => current_version(&api, key, &ctx.config.node_name).await?,
            };
            let mut guarded = body.clone();
            if let Some(rv) = rv {
                guarded["metadata"]["resourceVersion"] = serde_json::Value::String(rv);
            }
            api.patch_status(&key.name, &params, &Patch::Apply(&guarded))
                .await?;
            Ok::<(), ReportError>(())
        }
        .await;
        match result {
            Ok(()) => {
                tracing::info!(report = what, "reported");
                return true;
            }
            Err(ReportError::NotCurrent(why)) => {
                tracing::info!(report = what, %why, "not reported: the attempt is no longer current");
                return false;
            }
            Err(ReportError::Api(e)) if used_cache && is_stale(&e) => {
                // The cache was behind the API server: read the job from it at once.
                tracing::debug!(report = what, "watch cache stale; reading the job");
                from_cache = false;
            }
            Err(ReportError::Api(e)) if is_transient(&e) => {
                tracing::warn!(report = what, error = %e, retry_in = ?delay, "report failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(REPORT_MAX_DELAY);
                from_cache = false;
            }
            Err(ReportError::Api(e)) => {
                tracing::error!(report = what, error = %e, "report failed; giving up");
                return false;
            }
        }
    }
}

/// How an attempt task begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The controller bound it and it has no `startedAt`: start it, unless an earlier
    /// agent process already did (it crashed before reporting `startedAt`), in which case
    /// it is taken over.
    Start,
    /// It has `startedAt` but this agent process does not run it: take it over, or report
    /// it lost when nothing of it is left.
    Adopt,
}

/// Runs attempt `key` of `job` to its end and reports it. Returns the key when done.
///
/// When `detach` turns true before the workload ended (a graceful agent stop that leaves
/// attempts running), the task returns without stopping the workload or reporting: the
/// next agent process adopts it. Once the workload ended, its report is written (the
/// agent's shutdown grace bounds that).
pub async fn run(
    ctx: Arc<AttemptContext>,
    key: AttemptKey,
    job: Arc<BatchJob>,
    mode: Mode,
    cancel: watch::Receiver<bool>,
    cancel_reason: CancelReason,
    detach: watch::Receiver<bool>,
) -> AttemptKey {
    let span = tracing::info_span!("attempt", job = %format!("{}/{}", key.namespace, key.name), attempt = key.attempt);
    async {
        match mode {
            Mode::Start => tracing::info!("starting attempt"),
            Mode::Adopt => tracing::info!("attempt started before this agent process: taking it over"),
        }
        let ended = tokio::select! {
            ended = execute(&ctx, &key, &job, mode, cancel) => ended,
            () = super::executor::cancelled(detach) => {
                tracing::info!("agent stopping: the attempt is left running for the next agent process");
                return key;
            }
        };
        let (started_at, mut outcome) = ended;
        // Its whole output is in the log now (when the executor keeps one).
        ctx.config.log_store().mark_ended(&spec::attempt_name(&key), &key);
        if outcome.reason == EndReason::Cancelled {
            if let Ok(guard) = cancel_reason.lock() {
                if let Some(why) = *guard {
                    outcome.status_reason = why.message().to_string();
                    if why == CancelWhy::SpotInterruption {
                        outcome.reason = EndReason::SpotInterruption;
                    }
                }
            }
        }
        tracing::info!(reason = %outcome.reason.reason(), exit_code = ?outcome.exit_code, status_reason = %outcome.status_reason, "attempt ended");
        let body = patches::attempt_ended(&key.namespace, &key.name, key.attempt, started_at, &outcome);
        report(&ctx, &key, "ended", body).await;
        // Reported, or no longer current: what the executor kept for it can go.
        let name = spec::attempt_name(&key);
        ctx.executor.release(&name).await;
        ctx.gpus.release(&name);
        key
    }
    .instrument(span)
    .await
}

/// The `startedAt` reported for attempt `key` of `job`.
fn reported_start(job: &BatchJob, key: &AttemptKey) -> Option<Timestamp> {
    job.status
        .as_ref()
        .and_then(|s| s.attempts.iter().find(|a| a.attempt == key.attempt))
        .and_then(|a| a.started_at.as_ref())
        .map(|t| t.0)
}

async fn execute(
    ctx: &AttemptContext,
    key: &AttemptKey,
    job: &BatchJob,
    mode: Mode,
    cancel: watch::Receiver<bool>,
) -> (Option<Timestamp>, Outcome) {
    let name = spec::attempt_name(key);
    let reported = reported_start(job, key);
    let spec = spec::resolve(&ctx.client, job, key, &ctx.config.compute_environment).await;
    let spec = spec.and_then(|s| with_gpus(&ctx.gpus, s).map_err(spec::SpecError::from));
    let spec = match (spec, mode) {
        (Ok(s), _) => Some(s),
        (Err(e), Mode::Start) => {
            tracing::warn!(error = %e, "cannot build the attempt");
            return (
                None,
                Outcome::not_started(EndReason::StartFailed, e.to_string()),
            );
        }
        (Err(e), Mode::Adopt) => {
            // It runs already: supervise it anyway, without a timeout.
            tracing::warn!(error = %e, "cannot build the attempt's spec; adopting it without its timeout");
            None
        }
    };
    if let Some(p) = &ctx.protection {
        if let Err(e) = p.before_start().await {
            tracing::error!(error = %e, "cannot protect the instance from scale-in");
            if mode == Mode::Start {
                return (
                    None,
                    Outcome::not_started(
                        EndReason::StartFailed,
                        format!("scale-in protection of this instance failed: {e}"),
                    ),
                );
            }
        }
    }
    if mode == Mode::Start && *cancel.borrow() {
        return (
            None,
            Outcome::not_started(
                EndReason::Cancelled,
                "Job attempt cancelled before it started",
            ),
        );
    }
    let adoption = Adoption {
        name: name.clone(),
        timeout: spec.as_ref().and_then(|s| s.timeout),
        grace: spec.as_ref().map_or(
            Duration::from_secs(u64::from(
                crate::api::common::DEFAULT_TERMINATION_GRACE_SECONDS,
            )),
            |s| s.grace,
        ),
        started_at: reported,
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let executor = ctx.executor.clone();
    let work = async move {
        if let Some(outcome) = executor.adopt(adoption, tx.clone(), cancel.clone()).await {
            return Some(outcome);
        }
        match spec {
            Some(spec) if mode == Mode::Start => Some(executor.run(spec, tx, cancel).await),
            _ => None,
        }
    };
    tokio::pin!(work);
    let mut started_at = reported;
    // The startedAt report runs beside the workload, so a slow API server delays neither
    // its timeout nor its cancellation; it is awaited before the final report, which would
    // otherwise be overwritten by it (same field manager). It first waits
    // `start_report_delay`: a workload that ends meanwhile is reported once, start and end
    // in one write (the controller takes both from one observation; PROTOCOL.md step 5).
    let mut started_report: Option<futures::future::BoxFuture<'_, bool>> = None;
    let report_begun = Arc::new(AtomicBool::new(false));
    let delay = ctx.config.start_report_delay;
    let outcome = loop {
        tokio::select! {
            outcome = &mut work => break outcome,
            Some(progress) = rx.recv() => match progress {
                Progress::Pulling { image } => tracing::info!(%image, "pulling image"),
                Progress::Started { at } => {
                    if started_at.is_none() {
                        started_at = Some(at);
                        let body = patches::attempt_started(&key.namespace, &key.name, key.attempt, at);
                        let begun = report_begun.clone();
                        started_report = Some(Box::pin(async move {
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            begun.store(true, Ordering::SeqCst);
                            report(ctx, key, "started", body).await
                        }));
                    }
                }
            },
            Some(_) = async {
                match started_report.as_mut() {
                    Some(f) => Some(f.await),
                    None => std::future::pending().await,
                }
            } => started_report = None,
        }
    };
    if let Some(f) = started_report {
        if report_begun.load(Ordering::SeqCst) {
            f.await;
        } else {
            // Not sent yet: the end report carries startedAt.
            tracing::debug!("ended within the start report delay: start and end reported together");
        }
    }
    let Some(outcome) = outcome else {
        // Adopt found nothing: no container, no state. It cannot have kept running
        // unseen, but make sure before the job is retried.
        tracing::warn!("nothing is left of the attempt; reporting it as ended");
        ctx.executor.reap(&name).await;
        return (
            reported,
            Outcome::not_started(EndReason::StartFailed, LOST_STATUS_REASON),
        );
    };
    (started_at.or(outcome.started_at), outcome)
}

/// Assigns the attempt's GPUs (the same ones again for an attempt that holds some already)
/// and names them in its environment: `NVIDIA_VISIBLE_DEVICES`, and for a process also
/// `CUDA_VISIBLE_DEVICES`.
fn with_gpus(gpus: &GpuAllocator, mut spec: RunSpec) -> Result<RunSpec, super::gpus::GpuError> {
    if spec.gpu_count == 0 {
        return Ok(spec);
    }
    let ids = gpus.assign(&spec.name, spec.gpu_count)?;
    let visible = visible_devices(&ids);
    tracing::info!(gpus = %visible, "GPUs assigned");
    spec.env.retain(|(k, _)| k != VISIBLE_DEVICES_ENV);
    spec.env.push((VISIBLE_DEVICES_ENV.into(), visible.clone()));
    if matches!(spec.workload, Workload::Process { .. }) {
        spec.env.push(("CUDA_VISIBLE_DEVICES".into(), visible));
    }
    spec.gpus = ids;
    Ok(spec)
}

/// Status reason of an attempt lost to an agent restart with nothing left of it.
pub const LOST_STATUS_REASON: &str = "The node agent restarted while this attempt was running and found neither its container nor its process state; the attempt is reported as ended";

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(Box::new(
            kube::core::Status::failure(message, "Conflict").with_code(code),
        ))
    }

    #[test]
    fn retries_busy_servers_and_stale_reads_not_refusals() {
        assert!(is_transient(&api(503, "unavailable")));
        assert!(is_transient(&api(429, "slow down")));
        assert!(is_transient(&api(
            409,
            "Operation cannot be fulfilled on batchjobs.asgbatch.io \"j\": the object has been modified; please apply your changes to the latest version and try again"
        )));
        assert!(!is_transient(&api(
            409,
            "Apply failed with 1 conflict: conflict with \"asg-batch-controller\": .status.attempts[attempt=1].stoppedAt"
        )));
        assert!(!is_transient(&api(422, "invalid")));
        assert!(!is_transient(&api(404, "not found")));
    }
}
