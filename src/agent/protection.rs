//! Scale-in protection (the seed's technique): the instance is protected before an attempt
//! starts and unprotected only after `idle_polls` consecutive idle heartbeats, so no
//! scale-in from anywhere (a scheduled action, a console edit) can kill a busy instance.
//! [`IdleTracker`] is the pure part; [`Protection`] makes the cloud calls.

use crate::cloud::{CloudError, Fleet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{Mutex, watch};

/// Counts idle heartbeats and says when to unprotect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdleTracker {
    idle_polls: u32,
    idle_count: u32,
    protected: bool,
}

impl IdleTracker {
    /// A tracker for an instance whose protection is unknown (treated as protected, so an
    /// idle agent clears a protection left behind by an earlier run).
    pub fn new(idle_polls: u32) -> Self {
        Self {
            idle_polls: idle_polls.max(1),
            idle_count: 0,
            protected: true,
        }
    }

    /// Whether the instance was last set protected.
    pub fn protected(&self) -> bool {
        self.protected
    }

    /// An attempt is about to start: returns whether a `protect(true)` call is needed.
    pub fn on_start(&mut self) -> bool {
        self.idle_count = 0;
        !self.protected
    }

    /// One heartbeat, `busy` when any attempt runs: returns whether to unprotect now.
    pub fn on_heartbeat(&mut self, busy: bool) -> bool {
        if busy {
            self.idle_count = 0;
            return false;
        }
        self.idle_count = self.idle_count.saturating_add(1);
        self.protected && self.idle_count >= self.idle_polls
    }

    /// A tracker for an instance whose protection is known.
    pub fn known(idle_polls: u32, protected: bool) -> Self {
        Self {
            protected,
            ..Self::new(idle_polls)
        }
    }

    /// Records that protection was set to `protected`.
    pub fn set(&mut self, protected: bool) {
        self.protected = protected;
    }
}

/// An instance's protection through its [`Fleet`].
pub struct Protection {
    fleet: Arc<dyn Fleet>,
    instance_id: String,
    tracker: Mutex<IdleTracker>,
    /// What was last set, readable without waiting for a protection call in flight.
    last: AtomicBool,
}

/// Tries of a protect call before giving up.
const TRIES: u32 = 3;
/// Longest wait for one protection call: a hanging call fails the attempt's start
/// (`StartFailed`, retried by policy) instead of holding it forever.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

impl Protection {
    /// Protection of `instance_id` in `fleet`.
    pub fn new(fleet: Arc<dyn Fleet>, instance_id: String, idle_polls: u32) -> Self {
        Self {
            fleet,
            instance_id,
            tracker: Mutex::new(IdleTracker::new(idle_polls)),
            last: AtomicBool::new(true),
        }
    }

    /// Protection of `instance_id`, starting from what the fleet reports for it (treated as
    /// protected when the fleet cannot be read or does not list the instance).
    pub async fn observe(fleet: Arc<dyn Fleet>, instance_id: String, idle_polls: u32) -> Self {
        let known = match fleet.describe().await {
            Ok(state) => state
                .instances
                .iter()
                .find(|i| i.instance_id == instance_id)
                .map(|i| i.protected_from_scale_in),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the fleet; assuming the instance is protected");
                None
            }
        };
        let tracker = match known {
            Some(protected) => IdleTracker::known(idle_polls, protected),
            None => IdleTracker::new(idle_polls),
        };
        Self {
            fleet,
            instance_id,
            last: AtomicBool::new(tracker.protected()),
            tracker: Mutex::new(tracker),
        }
    }

    /// What was last set.
    pub async fn protected(&self) -> bool {
        self.tracker.lock().await.protected()
    }

    /// What was last set, without waiting for a protection call in flight.
    pub fn last_known(&self) -> bool {
        self.last.load(Ordering::SeqCst)
    }

    fn record(&self, tracker: &mut IdleTracker, protected: bool) {
        tracker.set(protected);
        self.last.store(protected, Ordering::SeqCst);
    }

    async fn call(&self, protected: bool) -> Result<(), CloudError> {
        let ids = [self.instance_id.clone()];
        let mut delay = Duration::from_millis(200);
        let mut tries = 0;
        loop {
            tries += 1;
            let call = tokio::time::timeout(CALL_TIMEOUT, self.fleet.protect(&ids, protected));
            let result = call.await.unwrap_or_else(|_| {
                Err(CloudError::Transport {
                    operation: "SetInstanceProtection",
                    message: format!("no answer within {CALL_TIMEOUT:?}"),
                })
            });
            match result {
                Ok(()) => return Ok(()),
                Err(e) if e.is_transient() && tries < TRIES => {
                    tracing::warn!(error = %e, protected, "scale-in protection call failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Protects the instance before an attempt starts (no call when already protected).
    pub async fn before_start(&self) -> Result<(), CloudError> {
        let mut tracker = self.tracker.lock().await;
        if tracker.on_start() {
            self.call(true).await?;
            self.record(&mut tracker, true);
            tracing::info!(instance = %self.instance_id, "protected from scale-in");
        }
        Ok(())
    }

    /// One idle check: unprotects after enough idle ones in a row. `busy` (attempts held)
    /// is read under the lock that [`Self::before_start`] holds while it protects, so an
    /// attempt that is starting is never left unprotected. Returns what is now set.
    pub async fn on_heartbeat(&self, busy: &watch::Receiver<usize>) -> bool {
        let mut tracker = self.tracker.lock().await;
        let held = *busy.borrow();
        if tracker.on_heartbeat(held > 0) {
            match self.call(false).await {
                Ok(()) => {
                    self.record(&mut tracker, false);
                    tracing::info!(instance = %self.instance_id, "unprotected from scale-in (idle)");
                }
                Err(e) => tracing::warn!(error = %e, "cannot remove scale-in protection"),
            }
        }
        tracker.protected()
    }
}

/// Checks idleness every `interval`, apart from the heartbeat, so a slow or failing
/// protection call never delays a heartbeat (a node whose heartbeats stop is Lost).
pub async fn idle_loop(
    protection: Arc<Protection>,
    interval: Duration,
    busy: watch::Receiver<usize>,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        protection.on_heartbeat(&busy).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unprotects_after_consecutive_idle_heartbeats_only() {
        let mut t = IdleTracker::new(3);
        assert!(!t.on_start(), "assumed protected at first");
        assert!(!t.on_heartbeat(false));
        assert!(!t.on_heartbeat(false));
        assert!(!t.on_heartbeat(true), "busy resets the count");
        assert!(!t.on_heartbeat(false));
        assert!(!t.on_heartbeat(false));
        assert!(t.on_heartbeat(false));
        t.set(false);
        assert!(!t.on_heartbeat(false), "nothing to do once unprotected");
        assert!(t.on_start(), "protect before the next attempt");
        t.set(true);
        assert!(!t.on_start());
        assert!(!t.on_heartbeat(false));
        assert!(IdleTracker::known(3, false).on_start());
        assert!(!IdleTracker::known(3, true).on_start());
    }
}
