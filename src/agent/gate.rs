//! The agent's word on its own work: which attempts it runs (or is still reporting), and
//! whether it takes new ones. Each heartbeat publishes both (`status.runningAttempts`,
//! `status.acceptingAttempts`) and reads back the node's phase: once the agent has seen
//! its node Draining, it starts nothing more. So a heartbeat that says "not accepting,
//! running nothing" is a promise the controller can act on: the instance may be
//! terminated, and a binding the agent never started may be handed to another node.
//!
//! The decision to start and the record of what runs are taken under one lock, so no
//! attempt can start after a heartbeat reported the agent as not accepting without
//! that heartbeat, or a later one, listing it.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use crate::api::batch_node::{InterruptionKind, NodeInterruption, NodeJob, NodePhase};

use super::plan::AttemptKey;

#[derive(Debug, Default)]
struct State {
    draining: bool,
    /// A Spot notice read from the instance metadata service: kept for good (the
    /// instance is going away), so nothing starts here any more.
    interruption: Option<NodeInterruption>,
    running: BTreeMap<AttemptKey, NodeJob>,
}

/// Shared between the job loop (admits and releases attempts) and the heartbeat
/// (reports them and the node's phase).
#[derive(Debug, Default)]
pub struct Gate {
    state: Mutex<State>,
}

/// What one heartbeat reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Whether the agent starts new attempts.
    pub accepting: bool,
    /// The attempts it runs or is still reporting.
    pub running: Vec<NodeJob>,
    /// The Spot notice the agent saw, if any (`status.interruption`).
    pub interruption: Option<NodeInterruption>,
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a new attempt unless the node is draining; returns whether it may start.
    pub fn admit(&self, key: &AttemptKey) -> bool {
        let mut s = self.lock();
        if s.draining || s.interruption.is_some() {
            return false;
        }
        s.running.insert(key.clone(), node_job(key));
        true
    }

    /// Records work that must be reported whatever the phase (an attempt found lost
    /// after a restart).
    pub fn hold(&self, key: &AttemptKey) {
        self.lock().running.insert(key.clone(), node_job(key));
    }

    /// The attempt is over and its report written (or no longer current).
    pub fn release(&self, key: &AttemptKey) {
        self.lock().running.remove(key);
    }

    /// What the next heartbeat says.
    pub fn report(&self) -> Report {
        let s = self.lock();
        Report {
            accepting: !s.draining && s.interruption.is_none(),
            running: s.running.values().cloned().collect(),
            interruption: s.interruption.clone(),
        }
    }

    /// Takes in a Spot notice: from now on nothing starts here. The first notice is
    /// kept, except that an instance action replaces a rebalance recommendation. Returns
    /// whether the notice changed what the gate holds.
    pub fn interrupt(&self, notice: NodeInterruption) -> bool {
        let mut s = self.lock();
        let replace = match &s.interruption {
            None => true,
            Some(old) => {
                old.kind == InterruptionKind::Rebalance
                    && notice.kind == InterruptionKind::InstanceAction
            }
        };
        if replace {
            tracing::warn!(kind = ?notice.kind, action = ?notice.action, time = ?notice.time, "Spot notice: no new attempts start here");
            s.interruption = Some(notice);
        }
        replace
    }

    /// Whether an instance action (a Spot interruption proper) was noticed.
    pub fn instance_action(&self) -> bool {
        self.lock()
            .interruption
            .as_ref()
            .is_some_and(|i| i.kind == InterruptionKind::InstanceAction)
    }

    /// Takes in the node's phase as the API server returned it.
    pub fn observe_phase(&self, phase: Option<NodePhase>) {
        let draining = phase == Some(NodePhase::Draining);
        let mut s = self.lock();
        if s.draining != draining {
            if draining {
                tracing::info!("node is Draining: no new attempts start here");
            } else {
                tracing::info!("node is no longer Draining: attempts start here again");
            }
        }
        s.draining = draining;
    }

    /// Whether the node was last seen Draining.
    pub fn draining(&self) -> bool {
        self.lock().draining
    }
}

fn node_job(key: &AttemptKey) -> NodeJob {
    NodeJob {
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        attempt: key.attempt,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> AttemptKey {
        AttemptKey {
            namespace: "ns".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            attempt: 1,
        }
    }

    #[test]
    fn nothing_is_admitted_once_draining_is_seen_and_running_work_stays_reported() {
        let g = Gate::default();
        assert!(g.admit(&key("a")));
        assert_eq!(
            g.report(),
            Report {
                accepting: true,
                running: vec![node_job(&key("a"))],
                interruption: None,
            }
        );
        g.observe_phase(Some(NodePhase::Draining));
        assert!(!g.admit(&key("b")), "a draining node starts nothing");
        g.hold(&key("c"));
        let r = g.report();
        assert!(!r.accepting);
        assert_eq!(r.running, vec![node_job(&key("a")), node_job(&key("c"))]);
        g.release(&key("a"));
        g.release(&key("c"));
        assert_eq!(
            g.report(),
            Report {
                accepting: false,
                running: vec![],
                interruption: None,
            }
        );
        g.observe_phase(Some(NodePhase::Ready));
        assert!(g.admit(&key("b")));
    }

    fn notice(kind: InterruptionKind) -> NodeInterruption {
        NodeInterruption {
            kind,
            action: (kind == InterruptionKind::InstanceAction).then(|| "terminate".into()),
            time: Some("2026-11-30T10:00:00Z".into()),
            noticed_at: crate::api::common::Time(jiff::Timestamp::UNIX_EPOCH),
        }
    }

    #[test]
    fn a_spot_notice_stops_admissions_for_good_and_is_reported() {
        let g = Gate::default();
        assert!(g.admit(&key("a")));
        assert!(g.interrupt(notice(InterruptionKind::Rebalance)));
        assert!(!g.instance_action());
        assert!(!g.admit(&key("b")), "nothing starts after a notice");
        let r = g.report();
        assert!(!r.accepting);
        assert_eq!(r.running, vec![node_job(&key("a"))], "running work goes on");
        assert_eq!(
            r.interruption.map(|i| i.kind),
            Some(InterruptionKind::Rebalance)
        );
        assert!(
            !g.interrupt(notice(InterruptionKind::Rebalance)),
            "the first notice is kept"
        );
        assert!(g.interrupt(notice(InterruptionKind::InstanceAction)));
        assert!(g.instance_action());
        assert!(!g.interrupt(notice(InterruptionKind::Rebalance)));
        assert!(g.instance_action(), "never downgraded");
        g.observe_phase(Some(NodePhase::Ready));
        assert!(!g.admit(&key("c")), "a Ready phase does not lift a notice");
    }
}
