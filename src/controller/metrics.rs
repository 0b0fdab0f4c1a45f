//! The controller's metrics: pass durations, jobs by queue and phase, API writes and
//! conflicts, fleet calls and errors by kind, desired vs in-service capacity per compute
//! environment, view gaps, the parked backlog left out of the last pass, and whether this
//! replica leads.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of the jobs gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    /// JobQueue.
    pub queue: String,
    /// BatchJob phase.
    pub phase: String,
}

/// Labels of the API write counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    /// What was written (`job`, `node status`, ...).
    pub kind: String,
    /// `ok`, `conflict` or `error`.
    pub outcome: String,
}

/// Labels of the fleet call counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FleetLabels {
    /// Compute environment.
    pub compute_environment: String,
    /// `describe`, `set_desired`, `terminate`, `fence`.
    pub call: String,
    /// `ok`, or the error kind (`Throttled`, `AccessDenied`, `Unauthorized`, ...).
    pub outcome: String,
}

/// Labels per compute environment.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CeLabels {
    /// Compute environment.
    pub compute_environment: String,
}

/// Labels of a pass's stage.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// `observe` (stores, nodes, fleets), `decide` (the pure pass and the gauges) or
    /// `apply` (writes and fleet calls).
    pub stage: &'static str,
}

/// A histogram of pass durations (5 ms to 41 s).
fn pass_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// Every metric of the controller.
#[derive(Debug)]
pub struct Metrics {
    /// Pass duration, seconds.
    pub pass_seconds: Histogram,
    /// Pass duration by stage, seconds (where a slow pass spends its time).
    pub pass_stage_seconds: Family<StageLabels, Histogram, fn() -> Histogram>,
    /// Jobs by queue and phase (as of the last pass).
    pub jobs: Family<JobLabels, Gauge>,
    /// API writes by kind and outcome.
    pub writes: Family<WriteLabels, Counter>,
    /// Fleet calls by compute environment, call and outcome.
    pub fleet_calls: Family<FleetLabels, Counter>,
    /// Desired capacity per compute environment.
    pub desired: Family<CeLabels, Gauge>,
    /// In-service (not Lost) nodes per compute environment.
    pub in_service: Family<CeLabels, Gauge>,
    /// Gaps in the controller's view (watch errors, failed writes, leadership changes).
    pub view_gaps: Counter,
    /// 1 while this replica leads.
    pub leader: Gauge,
    /// Events dropped because the queue of Events to publish was full.
    pub events_dropped: Counter,
    /// Runnable jobs the last pass left out of its snapshot (parked backlog: their
    /// status as written; 0 after a full pass, and on a replica that does not lead).
    /// A refresh leaves them out too.
    pub parked_jobs: Gauge,
    /// Classes (queue and resources) the parked jobs of the last pass belong to.
    pub parked_classes: Gauge,
}

impl Metrics {
    /// The metrics, registered in `registry` under the `asg_batch_controller` prefix.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            pass_seconds: pass_histogram(),
            pass_stage_seconds: Family::new_with_constructor(pass_histogram),
            jobs: Family::default(),
            writes: Family::default(),
            fleet_calls: Family::default(),
            desired: Family::default(),
            in_service: Family::default(),
            view_gaps: Counter::default(),
            leader: Gauge::default(),
            events_dropped: Counter::default(),
            parked_jobs: Gauge::default(),
            parked_classes: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("asg_batch_controller");
        r.register(
            "pass_duration_seconds",
            "Duration of a controller pass",
            m.pass_seconds.clone(),
        );
        r.register(
            "pass_stage_duration_seconds",
            "Duration of each stage of a controller pass",
            m.pass_stage_seconds.clone(),
        );
        r.register("jobs", "BatchJobs by queue and phase", m.jobs.clone());
        r.register(
            "api_writes",
            "Writes to the API server by kind and outcome",
            m.writes.clone(),
        );
        r.register(
            "fleet_calls",
            "Auto Scaling calls by compute environment, call and outcome",
            m.fleet_calls.clone(),
        );
        r.register(
            "desired_capacity",
            "Desired capacity set for each compute environment",
            m.desired.clone(),
        );
        r.register(
            "in_service_instances",
            "Nodes not Lost in each compute environment",
            m.in_service.clone(),
        );
        r.register(
            "view_gaps",
            "Gaps in the controller's view (no node is Lost across one)",
            m.view_gaps.clone(),
        );
        r.register("leader", "1 while this replica leads", m.leader.clone());
        r.register(
            "events_dropped",
            "Events dropped because the API server fell behind publishing them",
            m.events_dropped.clone(),
        );
        r.register(
            "parked_jobs",
            "Runnable jobs the last pass left out as a parked backlog (nothing can take them; status as written)",
            m.parked_jobs.clone(),
        );
        r.register(
            "parked_classes",
            "Classes (queue and resources) of the jobs the last pass left out as a parked backlog",
            m.parked_classes.clone(),
        );
        m
    }

    /// Counts one API write.
    pub fn write(&self, kind: &str, outcome: &str) {
        self.writes
            .get_or_create(&WriteLabels {
                kind: kind.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Counts one fleet call.
    pub fn fleet_call(&self, compute_environment: &str, call: &str, outcome: &str) {
        self.fleet_calls
            .get_or_create(&FleetLabels {
                compute_environment: compute_environment.to_owned(),
                call: call.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }
}
