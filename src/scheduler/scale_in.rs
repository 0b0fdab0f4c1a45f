//! Scale-in: which idle nodes to drain and which drained nodes to terminate.
//!
//! Two steps, never one, so that a binding racing with the decision cannot land on a
//! node being terminated:
//! 1. a Ready node that holds no job, received none in this pass, has been idle for at
//!    least `scaleInAfterIdleSeconds`, and whose compute environment needs no new
//!    instance in this pass becomes **Draining** — longest idle first (ties by name),
//!    and never so many that fewer than `minInstances` Ready nodes remain;
//! 2. a node observed Draining (or Lost) that holds no job and is `terminable` (its
//!    agent confirmed it starts nothing more and unprotected its instance; a Lost node's
//!    loss is settled) is **terminated** (with `ShouldDecrementDesiredCapacity=true`).
//!    A node holding a job is never terminated by scale-in.
//!
//! Scale-in goes on in Disabled compute environments (AWS Batch scales them in to
//! their minimum); a node whose environment is not in the snapshot is left alone.

use std::collections::{BTreeMap, BTreeSet};

use super::capacity::ready_nodes;
use super::model::{NodePhase, Seconds, Snapshot};

/// Nodes to drain and to terminate, each in name order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScaleIn {
    /// Ready → Draining.
    pub drain: Vec<String>,
    /// Terminate now (Draining or Lost, holding no job).
    pub terminate: Vec<String>,
}

/// Decides scale-in. `used` holds the nodes that received a job in this pass and
/// `growing` the compute environments that need new instances in this pass.
pub fn plan(
    snapshot: &Snapshot,
    now: Seconds,
    used: &BTreeSet<&str>,
    growing: &BTreeSet<&str>,
) -> ScaleIn {
    let mut out = ScaleIn::default();
    let mut candidates: BTreeMap<&str, Vec<(Seconds, &str)>> = BTreeMap::new();
    for (name, node) in &snapshot.nodes {
        if node.is_busy() || used.contains(name.as_str()) {
            continue;
        }
        match node.phase {
            NodePhase::Draining | NodePhase::Lost if node.terminable => {
                out.terminate.push(name.clone());
            }
            NodePhase::Draining | NodePhase::Lost => {}
            NodePhase::Ready => {
                let Some(ce) = snapshot.compute_environments.get(&node.compute_environment) else {
                    continue;
                };
                let Some(since) = node.idle_since else {
                    continue;
                };
                let idle_enough =
                    now.saturating_sub(since) >= ce.scale_in_after_idle_seconds && now >= since;
                if idle_enough && !growing.contains(node.compute_environment.as_str()) {
                    candidates
                        .entry(node.compute_environment.as_str())
                        .or_default()
                        .push((since, name.as_str()));
                }
            }
        }
    }
    for (ce_name, mut list) in candidates {
        let Some(ce) = snapshot.compute_environments.get(ce_name) else {
            continue;
        };
        let budget = ready_nodes(snapshot, ce_name).saturating_sub(ce.min_instances) as usize;
        list.sort();
        out.drain
            .extend(list.into_iter().take(budget).map(|(_, n)| n.to_owned()));
    }
    out.drain.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::model::{ComputeEnvironment, Node, State};
    use crate::scheduler::resources::{GIB, Resources};

    fn ce(min: u32) -> ComputeEnvironment {
        ComputeEnvironment {
            state: State::Enabled,
            shape: Resources::new(4000, 16 * GIB, 0),
            min_instances: min,
            max_instances: 10,
            booting: 0,
            scale_in_after_idle_seconds: 300,
            boot_seconds: 0,
            booting_ready_at: vec![],
        }
    }

    fn node(phase: NodePhase, jobs: u32, idle_since: Option<Seconds>) -> Node {
        Node {
            compute_environment: "a".into(),
            capacity: Resources::new(4000, 16 * GIB, 0),
            allocated: if jobs > 0 {
                Resources::new(1000, GIB, 0)
            } else {
                Resources::ZERO
            },
            jobs,
            phase,
            idle_since,
            terminable: true,
        }
    }

    fn snap(min: u32, nodes: Vec<(&str, Node)>) -> Snapshot {
        Snapshot {
            compute_environments: [("a".to_string(), ce(min))].into(),
            nodes: nodes.into_iter().map(|(n, x)| (n.to_string(), x)).collect(),
            ..Snapshot::default()
        }
    }

    fn run(s: &Snapshot, now: Seconds) -> ScaleIn {
        plan(s, now, &BTreeSet::new(), &BTreeSet::new())
    }

    #[test]
    fn drains_only_after_the_idle_threshold() {
        let s = snap(0, vec![("n", node(NodePhase::Ready, 0, Some(1000)))]);
        assert!(run(&s, 1299).drain.is_empty());
        assert_eq!(run(&s, 1300).drain, ["n"]);
    }

    #[test]
    fn never_drains_or_terminates_a_busy_node() {
        let s = snap(
            0,
            vec![
                ("busy", node(NodePhase::Ready, 1, Some(0))),
                ("busy-draining", node(NodePhase::Draining, 1, None)),
            ],
        );
        assert_eq!(run(&s, 10_000), ScaleIn::default());
    }

    #[test]
    fn keeps_min_instances_and_prefers_longest_idle() {
        let s = snap(
            2,
            vec![
                ("a", node(NodePhase::Ready, 0, Some(500))),
                ("b", node(NodePhase::Ready, 0, Some(100))),
                ("c", node(NodePhase::Ready, 0, Some(300))),
                ("d", node(NodePhase::Ready, 0, Some(200))),
            ],
        );
        assert_eq!(run(&s, 10_000).drain, ["b", "d"]);
    }

    #[test]
    fn terminates_empty_draining_and_lost_nodes_but_not_in_the_pass_that_drains() {
        let s = snap(
            0,
            vec![
                ("d", node(NodePhase::Draining, 0, Some(0))),
                ("l", node(NodePhase::Lost, 0, None)),
                ("r", node(NodePhase::Ready, 0, Some(0))),
            ],
        );
        let out = run(&s, 10_000);
        assert_eq!(out.terminate, ["d", "l"]);
        assert_eq!(out.drain, ["r"]);
    }

    #[test]
    fn nothing_drains_where_the_plan_grows_or_jobs_were_just_bound() {
        let s = snap(0, vec![("n", node(NodePhase::Ready, 0, Some(0)))]);
        let growing = BTreeSet::from(["a"]);
        assert!(
            plan(&s, 10_000, &BTreeSet::new(), &growing)
                .drain
                .is_empty()
        );
        let used = BTreeSet::from(["n"]);
        assert!(plan(&s, 10_000, &used, &BTreeSet::new()).drain.is_empty());
    }

    #[test]
    fn a_drained_node_is_terminated_only_once_terminable() {
        let mut d = node(NodePhase::Draining, 0, Some(0));
        d.terminable = false;
        let mut l = node(NodePhase::Lost, 0, Some(0));
        l.terminable = false;
        let s = snap(0, vec![("d", d.clone()), ("l", l)]);
        assert!(run(&s, 10_000).terminate.is_empty());
        d.terminable = true;
        let s = snap(0, vec![("d", d)]);
        assert_eq!(run(&s, 10_000).terminate, ["d"]);
    }

    #[test]
    fn idle_since_unknown_is_not_idle() {
        let s = snap(0, vec![("n", node(NodePhase::Ready, 0, None))]);
        assert!(run(&s, 10_000).drain.is_empty());
    }
}
