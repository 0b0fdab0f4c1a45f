//! A `local` compute environment's fleet: an in-process stand-in for an Auto Scaling
//! Group whose instances are started by a [`Launcher`] on this machine (in `asg-batch
//! dev`, node agents running as tasks of the same process).
//!
//! It keeps the group semantics the controller and the agents rely on:
//! - `set_desired` must stay within `[min, max]` (otherwise `InvalidRequest`, as the Auto
//!   Scaling API's `ValidationError`); the group launches instances up to the desired
//!   capacity and, above it, stops unprotected instances, newest first — a protected
//!   instance is never chosen, so the group may stay above its desired capacity until
//!   protection is lifted (as an ASG does);
//! - `terminate` stops one instance and lowers the desired capacity by one
//!   (`ShouldDecrementDesiredCapacity=true`), refused below `min`;
//! - `protect` on an instance that is not in the group is `NotFound`.
//!
//! Instances are `InService` as soon as they are launched; their agent takes its own
//! time to register, which is what "booting" means to the controller.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::future::BoxFuture;
use tokio::sync::watch;

use super::{CloudError, Fleet, FleetInstance, FleetState, InstanceTypeInfo, Lifecycle};

/// What a [`Launcher`] gets for each new instance.
#[derive(Debug)]
pub struct LaunchRequest {
    /// The new instance's id (`local-<group>-<n>`).
    pub instance_id: String,
    /// Turns true when the group stops the instance; the launched work should end then.
    pub stop: watch::Receiver<bool>,
}

/// Starts the work behind one instance (typically a node agent). It must not block:
/// spawn and return.
pub type Launcher = Arc<dyn Fn(LaunchRequest) -> Result<(), CloudError> + Send + Sync>;

/// Shape and bounds of a local group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalGroup {
    /// Group name (part of every instance id).
    pub name: String,
    /// Minimum size.
    pub min: u32,
    /// Maximum size.
    pub max: u32,
    /// Instance type name reported for its instances.
    pub instance_type: String,
    /// What one instance offers.
    pub shape: InstanceTypeInfo,
}

struct Instance {
    protected: bool,
    launched_at: jiff::Timestamp,
    stop: watch::Sender<bool>,
}

struct Inner {
    desired: u32,
    launched: u64,
    /// Live instances by id; ids sort in launch order (zero-padded counter).
    instances: BTreeMap<String, Instance>,
}

/// An in-process instance group (see the module docs).
pub struct LocalFleet {
    group: LocalGroup,
    launcher: Launcher,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for LocalFleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalFleet")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl LocalFleet {
    /// A group with desired capacity `min` and no instance yet: [`Self::start`] launches
    /// them, so whoever holds the fleet can hand it to its launcher first.
    pub fn new(group: LocalGroup, launcher: Launcher) -> Self {
        Self {
            inner: Mutex::new(Inner {
                desired: group.min,
                launched: 0,
                instances: BTreeMap::new(),
            }),
            group,
            launcher,
        }
    }

    /// Launches instances up to the desired capacity.
    pub fn start(&self) -> Result<(), CloudError> {
        self.converge(&mut self.lock())
    }

    /// Stops every instance (the group goes away with the process).
    pub fn shutdown(&self) {
        let mut inner = self.lock();
        for (_, i) in std::mem::take(&mut inner.instances) {
            let _ = i.stop.send(true);
        }
        inner.desired = 0;
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind: keep going.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Launches up to the desired capacity, or stops unprotected instances above it.
    fn converge(&self, inner: &mut Inner) -> Result<(), CloudError> {
        let desired = inner.desired as usize;
        while inner.instances.len() < desired {
            inner.launched += 1;
            let id = format!("local-{}-{:04}", self.group.name, inner.launched);
            let (tx, rx) = watch::channel(false);
            let launched_at = jiff::Timestamp::now();
            (self.launcher)(LaunchRequest {
                instance_id: id.clone(),
                stop: rx,
            })?;
            inner.instances.insert(
                id,
                Instance {
                    protected: false,
                    launched_at,
                    stop: tx,
                },
            );
        }
        if inner.instances.len() > desired {
            let excess = inner.instances.len() - desired;
            let victims: Vec<String> = inner
                .instances
                .iter()
                .rev()
                .filter(|(_, i)| !i.protected)
                .take(excess)
                .map(|(id, _)| id.clone())
                .collect();
            for id in victims {
                if let Some(i) = inner.instances.remove(&id) {
                    let _ = i.stop.send(true);
                }
            }
        }
        Ok(())
    }

    fn check_bounds(&self, operation: &'static str, desired: i64) -> Result<u32, CloudError> {
        let LocalGroup { min, max, name, .. } = &self.group;
        if desired < i64::from(*min) || desired > i64::from(*max) {
            return Err(CloudError::InvalidRequest {
                operation,
                message: format!(
                    "desired capacity {desired} of local group {name} is outside [{min}, {max}]"
                ),
            });
        }
        u32::try_from(desired).map_err(|_| CloudError::InvalidRequest {
            operation,
            message: format!("desired capacity {desired} out of range"),
        })
    }

    fn not_found(&self, operation: &'static str, instance_id: &str) -> CloudError {
        CloudError::NotFound {
            operation,
            message: format!(
                "instance {instance_id} is not part of local group {}",
                self.group.name
            ),
        }
    }
}

impl Fleet for LocalFleet {
    fn describe(&self) -> BoxFuture<'_, Result<FleetState, CloudError>> {
        let inner = self.lock();
        let state = FleetState {
            desired: inner.desired,
            min: self.group.min,
            max: self.group.max,
            instance_type: Some(self.group.instance_type.clone()),
            instances: inner
                .instances
                .iter()
                .map(|(id, i)| FleetInstance {
                    instance_id: id.clone(),
                    lifecycle: Lifecycle::InService,
                    protected_from_scale_in: i.protected,
                    instance_type: Some(self.group.instance_type.clone()),
                    launched_at: Some(i.launched_at),
                })
                .collect(),
        };
        Box::pin(async move { Ok(state) })
    }

    fn set_desired(&self, desired: u32) -> BoxFuture<'_, Result<(), CloudError>> {
        let r = self
            .check_bounds("SetDesiredCapacity", i64::from(desired))
            .and_then(|d| {
                let mut inner = self.lock();
                inner.desired = d;
                self.converge(&mut inner)
            });
        Box::pin(async move { r })
    }

    fn terminate(&self, instance_id: &str) -> BoxFuture<'_, Result<(), CloudError>> {
        const OP: &str = "TerminateInstanceInAutoScalingGroup";
        let r = (|| {
            let mut inner = self.lock();
            if !inner.instances.contains_key(instance_id) {
                return Err(self.not_found(OP, instance_id));
            }
            let desired = self.check_bounds(OP, i64::from(inner.desired) - 1)?;
            if let Some(i) = inner.instances.remove(instance_id) {
                let _ = i.stop.send(true);
            }
            inner.desired = desired;
            self.converge(&mut inner)
        })();
        Box::pin(async move { r })
    }

    fn protect(
        &self,
        instance_ids: &[String],
        protected: bool,
    ) -> BoxFuture<'_, Result<(), CloudError>> {
        let r = (|| {
            let mut inner = self.lock();
            if let Some(missing) = instance_ids
                .iter()
                .find(|id| !inner.instances.contains_key(*id))
            {
                return Err(self.not_found("SetInstanceProtection", missing));
            }
            for id in instance_ids {
                if let Some(i) = inner.instances.get_mut(id) {
                    i.protected = protected;
                }
            }
            // Lifting protection lets the group reach a lower desired capacity.
            self.converge(&mut inner)
        })();
        Box::pin(async move { r })
    }

    fn instance_type_info(
        &self,
        instance_type: &str,
    ) -> BoxFuture<'_, Result<InstanceTypeInfo, CloudError>> {
        let r = if instance_type == self.group.instance_type {
            Ok(self.group.shape)
        } else {
            Err(CloudError::NotFound {
                operation: "DescribeInstanceTypes",
                message: format!(
                    "local group {} only has instance type {}, not {instance_type}",
                    self.group.name, self.group.instance_type
                ),
            })
        };
        Box::pin(async move { r })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A launcher that records each instance's stop signal.
    fn recording() -> (Launcher, Arc<Mutex<Vec<LaunchRequest>>>) {
        let seen: Arc<Mutex<Vec<LaunchRequest>>> = Arc::default();
        let s = seen.clone();
        let launcher: Launcher = Arc::new(move |req| {
            s.lock().expect("lock").push(req);
            Ok(())
        });
        (launcher, seen)
    }

    fn group(min: u32, max: u32) -> LocalGroup {
        LocalGroup {
            name: "dev".into(),
            min,
            max,
            instance_type: "local.xlarge".into(),
            shape: InstanceTypeInfo {
                cpu_millis: 4000,
                memory_bytes: 8 << 30,
                gpus: 0,
            },
        }
    }

    fn stopped(seen: &Arc<Mutex<Vec<LaunchRequest>>>) -> Vec<String> {
        seen.lock()
            .expect("lock")
            .iter()
            .filter(|r| *r.stop.borrow())
            .map(|r| r.instance_id.clone())
            .collect()
    }

    fn ids(state: &FleetState) -> Vec<String> {
        state
            .instances
            .iter()
            .map(|i| i.instance_id.clone())
            .collect()
    }

    #[tokio::test]
    async fn starts_at_min_and_scales_out_to_desired() {
        let (launcher, seen) = recording();
        let fleet = LocalFleet::new(group(1, 5), launcher);
        fleet.start().expect("start");
        let s = fleet.describe().await.expect("describe");
        assert_eq!((s.desired, ids(&s).len()), (1, 1));
        fleet.set_desired(3).await.expect("scale out");
        let s = fleet.describe().await.expect("describe");
        assert_eq!(
            ids(&s),
            ["local-dev-0001", "local-dev-0002", "local-dev-0003"]
        );
        assert!(
            s.instances
                .iter()
                .all(|i| i.lifecycle == Lifecycle::InService)
        );
        assert_eq!(seen.lock().expect("lock").len(), 3);
        assert!(stopped(&seen).is_empty());
    }

    #[tokio::test]
    async fn scale_in_never_stops_a_protected_instance() {
        let (launcher, seen) = recording();
        let fleet = LocalFleet::new(group(0, 5), launcher);
        fleet.start().expect("start");
        fleet.set_desired(3).await.expect("scale out");
        fleet
            .protect(&["local-dev-0003".into(), "local-dev-0001".into()], true)
            .await
            .expect("protect");
        fleet.set_desired(0).await.expect("scale in");
        let s = fleet.describe().await.expect("describe");
        assert_eq!(s.desired, 0);
        assert_eq!(ids(&s), ["local-dev-0001", "local-dev-0003"]);
        assert_eq!(stopped(&seen), ["local-dev-0002"]);
        // Lifting protection lets the group reach its desired capacity.
        fleet
            .protect(&["local-dev-0003".into()], false)
            .await
            .expect("unprotect");
        let s = fleet.describe().await.expect("describe");
        assert_eq!(ids(&s), ["local-dev-0001"]);
        assert!(s.instances[0].protected_from_scale_in);
    }

    #[tokio::test]
    async fn scale_in_takes_the_newest_unprotected_first() {
        let (launcher, seen) = recording();
        let fleet = LocalFleet::new(group(0, 5), launcher);
        fleet.start().expect("start");
        fleet.set_desired(3).await.expect("scale out");
        fleet.set_desired(1).await.expect("scale in");
        assert_eq!(stopped(&seen), ["local-dev-0002", "local-dev-0003"]);
        fleet.set_desired(2).await.expect("scale out again");
        let s = fleet.describe().await.expect("describe");
        assert_eq!(
            ids(&s),
            ["local-dev-0001", "local-dev-0004"],
            "ids are never reused"
        );
    }

    #[tokio::test]
    async fn terminate_decrements_desired_and_is_not_replaced() {
        let (launcher, seen) = recording();
        let fleet = LocalFleet::new(group(0, 5), launcher);
        fleet.start().expect("start");
        fleet.set_desired(2).await.expect("scale out");
        fleet.terminate("local-dev-0001").await.expect("terminate");
        let s = fleet.describe().await.expect("describe");
        assert_eq!(
            (s.desired, ids(&s)),
            (1, vec!["local-dev-0002".to_string()])
        );
        assert_eq!(stopped(&seen), ["local-dev-0001"]);
        assert_eq!(
            seen.lock().expect("lock").len(),
            2,
            "no replacement launched"
        );
    }

    #[tokio::test]
    async fn refuses_what_an_auto_scaling_group_refuses() {
        let (launcher, _) = recording();
        let fleet = LocalFleet::new(group(1, 3), launcher);
        fleet.start().expect("start");
        let e = fleet.set_desired(4).await.expect_err("above max");
        assert_eq!(e.label(), "InvalidRequest");
        assert!(e.to_string().contains("outside [1, 3]"), "{e}");
        let e = fleet
            .terminate("local-dev-0001")
            .await
            .expect_err("below min");
        assert_eq!(e.label(), "InvalidRequest");
        let e = fleet.terminate("i-nope").await.expect_err("unknown");
        assert_eq!(e.label(), "NotFound");
        assert!(e.to_string().contains("i-nope"), "{e}");
        let e = fleet
            .protect(&["i-nope".into()], true)
            .await
            .expect_err("unknown");
        assert_eq!(e.label(), "NotFound");
        assert_eq!(
            fleet
                .instance_type_info("local.xlarge")
                .await
                .expect("known")
                .cpu_millis,
            4000
        );
        assert_eq!(
            fleet
                .instance_type_info("m5.large")
                .await
                .expect_err("unknown")
                .label(),
            "NotFound"
        );
    }

    #[tokio::test]
    async fn a_failing_launcher_is_an_error_not_a_phantom_instance() {
        let launcher: Launcher = Arc::new(|_| {
            Err(CloudError::InsufficientCapacity {
                operation: "Launch",
                message: "no room".into(),
            })
        });
        let fleet = LocalFleet::new(group(0, 2), launcher);
        fleet.start().expect("an empty fleet launches nothing");
        assert!(fleet.set_desired(1).await.is_err());
        let s = fleet.describe().await.expect("describe");
        assert!(s.instances.is_empty());
    }

    #[tokio::test]
    async fn shutdown_stops_everything() {
        let (launcher, seen) = recording();
        let fleet = LocalFleet::new(group(2, 2), launcher);
        fleet.start().expect("start");
        fleet.shutdown();
        assert_eq!(stopped(&seen).len(), 2);
        assert!(
            fleet
                .describe()
                .await
                .expect("describe")
                .instances
                .is_empty()
        );
    }
}
