//! What the controller loop holds: configuration, the Kubernetes client, the Event
//! recorder, and how it reaches the fleet behind each `aws` compute environment.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use kube::runtime::events::Reporter;

use super::recorder::Recorder;
use tokio::sync::Mutex;

use crate::api::ComputeEnvironment;
use crate::cloud::Fleet;
use crate::cloud::aws::AwsFleet;
use crate::scheduler::Resources;

use super::FIELD_MANAGER;
use super::leader::LeaderElection;

/// Tunables of the controller loop.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// A node whose heartbeat this controller has not seen change for this long, across
    /// a whole view, is Lost (PROTOCOL.md: default 300 s, as long as pods tolerate
    /// `unreachable`).
    pub lost_node_timeout: Duration,
    /// Disruption mode threshold: more than this share (percent) of a compute
    /// environment's nodes silent at once means the control plane or the network is
    /// sick, and nobody is declared Lost.
    pub disruption_threshold_percent: u32,
    /// A pass that has not finished after this long is abandoned (a gap in the view).
    pub pass_timeout: Duration,
    /// A pass runs at least this often, even without changes (backoff expiry, lost
    /// nodes, scale-in timers, fleet state).
    pub resync: Duration,
    /// After a change, wait this long for more before a pass.
    pub debounce: Duration,
    /// Longest wait for one fleet call.
    pub fleet_timeout: Duration,
    /// Reporting instance of Events (e.g. the pod name).
    pub instance: Option<String>,
    /// Lease-based leader election; `None`: this replica always acts (one replica only).
    pub leader_election: Option<LeaderElection>,
    /// Where to serve `/metrics`, `/healthz` and `/readyz` (`None`: nowhere).
    pub metrics_bind_address: Option<std::net::SocketAddr>,
    /// At most this many children of one array wait (created, not yet bound) at a time:
    /// the rest are created as those are bound.
    pub array_children_waiting: u32,
    /// Passes leave parked backlog jobs out, and one pass at least this often takes
    /// them all in (their queue positions): [`super::decide::DecideConfig::full_pass_interval`].
    pub full_pass_interval: Duration,
    /// A parked class keeps its first this many members in every pass, and each queue
    /// its first this many parked jobs: [`super::decide::DecideConfig::parked_kept`].
    pub parked_kept: usize,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            lost_node_timeout: Duration::from_secs(super::decide::DEFAULT_LOST_NODE_TIMEOUT),
            disruption_threshold_percent: 55,
            pass_timeout: Duration::from_secs(120),
            resync: Duration::from_secs(10),
            debounce: Duration::from_millis(200),
            fleet_timeout: Duration::from_secs(30),
            instance: None,
            leader_election: None,
            metrics_bind_address: None,
            array_children_waiting: super::decide::ARRAY_CHILDREN_WAITING,
            full_pass_interval: Duration::from_secs(super::decide::DEFAULT_FULL_PASS_INTERVAL),
            parked_kept: crate::scheduler::forecast::MAX_PROJECTED,
        }
    }
}

impl ControllerConfig {
    /// Longest wait for one fleet call: the fleet timeout, and with leader election less
    /// than half the lease duration, so a leader stuck on AWS cannot act after another
    /// replica may have taken over.
    pub fn fleet_call_limit(&self) -> Duration {
        match &self.leader_election {
            Some(le) => self.fleet_timeout.min(le.lease_duration / 2),
            None => self.fleet_timeout,
        }
    }
}

/// Gives the controller the fleet behind a compute environment.
///
/// A compute environment without a fleet still has its jobs scheduled onto its
/// registered nodes, but the controller neither scales it nor drains its idle nodes
/// (nothing could terminate them).
pub trait FleetProvider: Send + Sync {
    /// The fleet of `ce`, or `None` when it has none.
    fn fleet<'a>(&'a self, ce: &'a ComputeEnvironment) -> BoxFuture<'a, Option<Arc<dyn Fleet>>>;
}

/// Fleets given up front, by compute environment name (tests, `dev`).
#[derive(Clone, Default)]
pub struct StaticFleets(pub HashMap<String, Arc<dyn Fleet>>);

impl FleetProvider for StaticFleets {
    fn fleet<'a>(&'a self, ce: &'a ComputeEnvironment) -> BoxFuture<'a, Option<Arc<dyn Fleet>>> {
        Box::pin(async move { self.0.get(ce.metadata.name.as_deref()?).cloned() })
    }
}

/// An Auto Scaling Group name and region.
type GroupKey = (String, Option<String>);

/// [`AwsFleet`]s made on first use from each `aws` environment's group and region,
/// through the default credential chain (`AWS_ENDPOINT_URL` is honoured); `local`
/// environments get none.
#[derive(Default)]
pub struct AwsFleets {
    cache: Mutex<HashMap<GroupKey, Arc<dyn Fleet>>>,
}

impl FleetProvider for AwsFleets {
    fn fleet<'a>(&'a self, ce: &'a ComputeEnvironment) -> BoxFuture<'a, Option<Arc<dyn Fleet>>> {
        Box::pin(async move {
            let aws = ce.spec.aws.as_ref()?;
            let key = (aws.auto_scaling_group_name.clone(), aws.region.clone());
            let mut cache = self.cache.lock().await;
            if let Some(f) = cache.get(&key) {
                return Some(f.clone());
            }
            let fleet: Arc<dyn Fleet> = Arc::new(
                AwsFleet::from_env(aws.auto_scaling_group_name.clone(), aws.region.clone())
                    .await
                    .reading_launch_times(),
            );
            cache.insert(key, fleet.clone());
            Some(fleet)
        })
    }
}

/// Shared state of the loop.
pub struct Context {
    /// Kubernetes client.
    pub client: kube::Client,
    /// Configuration.
    pub config: ControllerConfig,
    /// Fleets of `aws` compute environments.
    pub fleets: Arc<dyn FleetProvider>,
    /// Event recorder.
    pub recorder: Arc<Recorder>,
    /// Instance shapes by instance type (looked up once).
    pub shapes: Mutex<HashMap<String, Resources>>,
    /// Objects already reported as not deserialising (`uid/resourceVersion`).
    pub reported_invalid: Mutex<HashSet<String>>,
    /// The last describe error logged per compute environment (logged again on change).
    pub describe_errors: Mutex<HashMap<String, String>>,
    /// The controller's metrics.
    pub metrics: Arc<super::metrics::Metrics>,
    /// The Secrets granted to nodes, as far as the controller knows ([`super::grants`]).
    pub grants: Mutex<super::grants::Book>,
    /// The queue of the task publishing Events, once [`super::run`] has started it
    /// (without one, Events are published in the pass).
    pub events: std::sync::OnceLock<
        tokio::sync::mpsc::Sender<(
            kube::runtime::events::Event,
            k8s_openapi::api::core::v1::ObjectReference,
        )>,
    >,
}

impl Context {
    /// A context for `client`.
    pub fn new(
        client: kube::Client,
        config: ControllerConfig,
        fleets: Arc<dyn FleetProvider>,
        metrics: Arc<super::metrics::Metrics>,
    ) -> Self {
        let recorder = Arc::new(Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: config.instance.clone(),
            },
        ));
        Self {
            client,
            config,
            fleets,
            recorder,
            shapes: Mutex::default(),
            reported_invalid: Mutex::default(),
            describe_errors: Mutex::default(),
            metrics,
            grants: Mutex::default(),
            events: std::sync::OnceLock::new(),
        }
    }
}
