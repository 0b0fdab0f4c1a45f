//! Leader election on a `coordination.k8s.io/v1` Lease, so one controller replica acts
//! (binds jobs, writes status, calls AWS) while the others only watch.
//!
//! The holder renews `spec.renewTime` every `renew_interval`; a candidate takes the
//! Lease over when its `renewTime + leaseDurationSeconds` has passed. Every write
//! carries the Lease's `resourceVersion`, so two candidates can never both win. A leader
//! that cannot renew for a whole lease duration steps down on its own; on shutdown it
//! releases the Lease (clears the holder) so a standby takes over at once.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// Which Lease, and who we are.
#[derive(Debug, Clone)]
pub struct LeaderElection {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub lease_name: String,
    /// This replica's identity (pod name, host name).
    pub identity: String,
    /// How long a Lease is valid without renewal.
    pub lease_duration: Duration,
    /// How often the holder renews (and a candidate retries).
    pub renew_interval: Duration,
}

impl LeaderElection {
    /// A Lease `asg-batch-controller` in `namespace` for `identity`, 15 s duration,
    /// renewed every 5 s.
    pub fn new(namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            lease_name: super::FIELD_MANAGER.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_interval: Duration::from_secs(5),
        }
    }
}

fn micro_now() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

fn duration_secs(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

/// One attempt to acquire or renew. `Ok(true)`: we hold the Lease now.
pub async fn try_acquire(api: &Api<Lease>, cfg: &LeaderElection) -> Result<bool, kube::Error> {
    let now = jiff::Timestamp::now();
    let Some(mut lease) = api.get_opt(&cfg.lease_name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(cfg.lease_name.clone()),
                namespace: Some(cfg.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(cfg.identity.clone()),
                lease_duration_seconds: Some(duration_secs(cfg.lease_duration)),
                acquire_time: Some(micro_now()),
                renew_time: Some(micro_now()),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    if holder.as_deref() != Some(cfg.identity.as_str()) {
        let duration = spec.lease_duration_seconds.map_or(cfg.lease_duration, |s| {
            Duration::from_secs(u64::try_from(s).unwrap_or(0))
        });
        let expired = spec.renew_time.as_ref().is_none_or(|t| {
            let age = now.duration_since(t.0);
            age.as_secs() >= i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
        });
        if holder.is_some() && !expired {
            return Ok(false);
        }
        spec.holder_identity = Some(cfg.identity.clone());
        spec.acquire_time = Some(micro_now());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
    }
    spec.renew_time = Some(micro_now());
    spec.lease_duration_seconds = Some(duration_secs(cfg.lease_duration));
    // `replace` sends the resourceVersion we read: a concurrent writer makes this a 409.
    match api
        .replace(&cfg.lease_name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Releases the Lease if we hold it.
pub async fn release(api: &Api<Lease>, cfg: &LeaderElection) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&cfg.lease_name).await? else {
        return Ok(());
    };
    let Some(spec) = lease.spec.as_mut() else {
        return Ok(());
    };
    if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.renew_time = None;
    api.replace(&cfg.lease_name, &PostParams::default(), &lease)
        .await
        .map(|_| ())
}

/// Keeps trying to acquire and renew; publishes whether we lead. Runs until aborted.
pub async fn elect(client: kube::Client, cfg: LeaderElection, leading: watch::Sender<bool>) {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let mut last_renewal: Option<Instant> = None;
    loop {
        let now_leading = match try_acquire(&api, &cfg).await {
            Ok(true) => {
                last_renewal = Some(Instant::now());
                true
            }
            Ok(false) => {
                last_renewal = None;
                false
            }
            Err(e) => {
                warn!(error = %e, lease = cfg.lease_name, "lease renewal failed");
                // Keep leading only while the Lease we last renewed is still valid.
                last_renewal.is_some_and(|t| t.elapsed() < cfg.lease_duration)
            }
        };
        let was = *leading.borrow();
        if was != now_leading {
            if now_leading {
                info!(
                    identity = cfg.identity,
                    lease = cfg.lease_name,
                    "became leader"
                );
            } else {
                info!(
                    identity = cfg.identity,
                    lease = cfg.lease_name,
                    "lost leadership"
                );
            }
            leading.send_replace(now_leading);
        } else {
            debug!(leading = now_leading, "lease checked");
        }
        tokio::time::sleep(cfg.renew_interval).await;
    }
}
