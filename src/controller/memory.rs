//! PURE: what the controller remembers between passes, all on its own clock.
//!
//! Liveness and idleness are observations, not timestamps written by someone else
//! (DESIGN.md §7): a node's heartbeat counts from when this controller first saw its
//! value change, idleness from when this controller first saw the node hold nothing,
//! and any gap in the controller's own view (its start, a watch error, a write that
//! failed or timed out, a pass that could not finish, a change of leadership) restarts
//! every node's grace.
//!
//! The loop owns one [`PassMemory`], updates it from what it observed before each pass
//! ([`PassMemory::observe_nodes`]), hands a read-only copy of the relevant parts to
//! [`super::decide::decide`] through [`super::decide::Observed`], and takes back what the
//! pass decided ([`PassMemory::after_pass`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::api::BatchNode;
use crate::api::batch_node::NodePhase;
use crate::scheduler::Seconds;

/// State carried between passes. Entries of nodes that no longer exist are pruned.
#[derive(Debug, Clone, Default)]
pub struct PassMemory {
    /// Per node: its last seen `heartbeatTime` value and when it was first seen.
    heartbeats: BTreeMap<String, (Option<String>, Seconds)>,
    /// Per node: since when this controller has seen it hold no attempt, without a break.
    idle: BTreeMap<String, Seconds>,
    /// Per node: when this controller first observed it Draining.
    draining: BTreeMap<String, Seconds>,
    /// Per node: when the controller last terminated its instance as a fence.
    fenced: BTreeMap<String, Seconds>,
    /// The last moment the controller's view was not whole (`None`: never started).
    view_gap: Option<Seconds>,
    /// Fleet calls or describes that failed, by compute environment (shown in its status
    /// until the fleet works again).
    pub fleet_errors: BTreeMap<String, super::decide::FleetProblem>,
    /// Waiting jobs whose status a pass found already right, by uid and resourceVersion
    /// (a function of the objects, so no gap in the view invalidates it).
    pub settled: super::decide::Settled,
}

impl PassMemory {
    /// Records a gap in the controller's view at `now`: every node's grace restarts.
    pub fn view_gap(&mut self, now: Seconds) {
        self.view_gap = Some(self.view_gap.map_or(now, |g| g.max(now)));
    }

    /// The last gap in the view, if any.
    pub fn last_gap(&self) -> Option<Seconds> {
        self.view_gap
    }

    /// Takes in the nodes as observed now: heartbeat values that changed, nodes newly
    /// Draining; forgets nodes that are gone.
    pub fn observe_nodes(&mut self, nodes: &[Arc<BatchNode>], now: Seconds) {
        let mut present = BTreeSet::new();
        for n in nodes {
            let Some(name) = n.metadata.name.clone() else {
                continue;
            };
            let st = n.status.as_ref();
            let value = st
                .and_then(|s| s.heartbeat_time.as_ref())
                .map(|t| t.0.to_string());
            let entry = self
                .heartbeats
                .entry(name.clone())
                .or_insert((value.clone(), now));
            if entry.0 != value {
                *entry = (value, now);
            }
            if st.and_then(|s| s.phase) == Some(NodePhase::Draining) {
                self.draining.entry(name.clone()).or_insert(now);
            } else {
                self.draining.remove(&name);
            }
            present.insert(name);
        }
        self.heartbeats.retain(|k, _| present.contains(k));
        self.idle.retain(|k, _| present.contains(k));
        self.draining.retain(|k, _| present.contains(k));
        self.fenced.retain(|k, _| present.contains(k));
    }

    /// When each node's current heartbeat value was first seen.
    pub fn heartbeats_seen(&self) -> BTreeMap<String, Seconds> {
        self.heartbeats
            .iter()
            .map(|(k, (_, at))| (k.clone(), *at))
            .collect()
    }

    /// Since when each node has been seen idle.
    pub fn idle_seen(&self) -> BTreeMap<String, Seconds> {
        self.idle.clone()
    }

    /// When each node was first seen Draining.
    pub fn draining_seen(&self) -> BTreeMap<String, Seconds> {
        self.draining.clone()
    }

    /// When each node was last fenced.
    pub fn fenced(&self) -> BTreeMap<String, Seconds> {
        self.fenced.clone()
    }

    /// Takes the idle windows a pass computed (nodes holding an attempt are absent).
    pub fn after_pass(&mut self, idle: BTreeMap<String, Seconds>) {
        self.idle = idle;
    }

    /// Records a fence (a termination of a Lost node's instance that the fleet accepted).
    pub fn fenced_at(&mut self, node: &str, now: Seconds) {
        self.fenced.insert(node.to_owned(), now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::batch_node::{BatchNodeSpec, BatchNodeStatus};
    use crate::api::common::{Resources, Time};
    use crate::controller::time::time;
    use kube::api::ObjectMeta;

    fn node(name: &str, heartbeat: Option<Seconds>, phase: Option<NodePhase>) -> Arc<BatchNode> {
        Arc::new(BatchNode {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            spec: BatchNodeSpec {
                instance_id: name.into(),
                instance_type: None,
                compute_environment: "ce".into(),
                capacity: Resources::default(),
                executor: Default::default(),
            },
            status: Some(BatchNodeStatus {
                heartbeat_time: heartbeat.map(|h| -> Time { time(h) }),
                phase,
                ..BatchNodeStatus::default()
            }),
        })
    }

    #[test]
    fn heartbeats_count_from_when_their_value_changed_on_our_clock() {
        let mut m = PassMemory::default();
        m.observe_nodes(&[node("a", Some(5), None)], 100);
        m.observe_nodes(&[node("a", Some(5), None)], 130);
        assert_eq!(m.heartbeats_seen()["a"], 100, "same value: first seen");
        m.observe_nodes(&[node("a", Some(6), None)], 140);
        assert_eq!(m.heartbeats_seen()["a"], 140, "new value: seen now");
    }

    #[test]
    fn draining_is_remembered_from_first_sight_and_nodes_that_go_are_forgotten() {
        let mut m = PassMemory::default();
        m.observe_nodes(&[node("a", Some(1), Some(NodePhase::Draining))], 10);
        m.observe_nodes(&[node("a", Some(1), Some(NodePhase::Draining))], 20);
        assert_eq!(m.draining_seen()["a"], 10);
        m.fenced_at("a", 20);
        m.after_pass(BTreeMap::from([("a".to_owned(), 5)]));
        m.observe_nodes(&[], 30);
        assert!(m.draining_seen().is_empty());
        assert!(m.heartbeats_seen().is_empty());
        assert!(m.fenced().is_empty());
        assert!(m.idle_seen().is_empty());
    }

    #[test]
    fn a_gap_only_moves_forward() {
        let mut m = PassMemory::default();
        assert_eq!(m.last_gap(), None);
        m.view_gap(50);
        m.view_gap(40);
        assert_eq!(m.last_gap(), Some(50));
    }
}
