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

use crate::api::batch_node::{NodeJob, NodePhase};

use super::plan::AttemptKey;

#[derive(Debug, Default)]
struct State {
    draining: bool,
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
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a new attempt unless the node is draining; returns whether it may start.
    pub fn admit(&self, key: &AttemptKey) -> bool {
        let mut s = self.lock();
        if s.draining {
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
            accepting: !s.draining,
            running: s.running.values().cloned().collect(),
        }
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
                running: vec![node_job(&key("a"))]
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
                running: vec![]
            }
        );
        g.observe_phase(Some(NodePhase::Ready));
        assert!(g.admit(&key("b")));
    }
}
