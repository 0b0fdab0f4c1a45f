//! Placement onto existing nodes by bin-packing on cpu, memory and gpu.
//!
//! A job goes to the first compute environment of its queue's ordered list that has a
//! Ready node with room; within it, with [`NodePool::place_until`] (drain-friendly
//! placement), to the node whose work is expected to end latest (so nodes near the end
//! of their work empty sooner and scale in), then to the node that is left with the
//! least free room (best fit: sum over dimensions of free ÷ capacity after placing),
//! ties to the node whose name sorts first. [`NodePool::place`] is best fit alone. Several jobs share an instance; a node is never over-committed; Draining
//! and Lost nodes and nodes of Disabled compute environments take nothing.

use std::collections::BTreeMap;

use super::model::{NodePhase, Snapshot, State};
use super::resources::Resources;

struct Slot {
    name: String,
    free: Resources,
    /// 1 / capacity per dimension (0 for an absent dimension), for the best-fit score.
    inv: [f64; 3],
    placed: u32,
    /// Held for a blocked job: takes nothing more in this pass.
    reserved: bool,
    capacity: Resources,
    /// When its work is expected to end (0: it holds none).
    ends: u64,
}

#[derive(Default)]
struct Pool {
    slots: Vec<Slot>,
    /// Upper bound of `free` over the slots, per dimension: lets a job that fits no
    /// node skip the scan (the common case once a cluster is full).
    max_free: Resources,
}

impl Pool {
    fn refresh_bound(&mut self) {
        let mut m = Resources::ZERO;
        for s in self.slots.iter().filter(|s| !s.reserved) {
            m.cpu_millis = m.cpu_millis.max(s.free.cpu_millis);
            m.memory_bytes = m.memory_bytes.max(s.free.memory_bytes);
            m.gpus = m.gpus.max(s.free.gpus);
        }
        self.max_free = m;
    }
}

/// The Ready nodes of Enabled compute environments, with their free room, updated as
/// jobs are placed during one pass.
#[derive(Default)]
pub struct NodePool {
    pools: BTreeMap<String, Pool>,
}

fn inverse(v: u64) -> f64 {
    if v == 0 { 0.0 } else { 1.0 / v as f64 }
}

impl NodePool {
    /// Builds the pool from a snapshot.
    pub fn from_snapshot(snapshot: &Snapshot) -> Self {
        let mut pools: BTreeMap<String, Pool> = BTreeMap::new();
        for (name, node) in &snapshot.nodes {
            if node.phase != NodePhase::Ready {
                continue;
            }
            let enabled = snapshot
                .compute_environments
                .get(&node.compute_environment)
                .is_some_and(|ce| ce.state == State::Enabled);
            if !enabled {
                continue;
            }
            let cap = node.capacity;
            pools
                .entry(node.compute_environment.clone())
                .or_default()
                .slots
                .push(Slot {
                    name: name.clone(),
                    free: node.free(),
                    inv: [
                        inverse(cap.cpu_millis),
                        inverse(cap.memory_bytes),
                        inverse(u64::from(cap.gpus)),
                    ],
                    placed: 0,
                    reserved: false,
                    capacity: cap,
                    ends: 0,
                });
        }
        for p in pools.values_mut() {
            p.refresh_bound();
        }
        NodePool { pools }
    }

    /// Sets when each node's work is expected to end (nodes not listed hold none), for
    /// [`NodePool::place_until`].
    pub fn with_expected_ends(mut self, ends: &BTreeMap<&str, u64>) -> Self {
        for s in self.pools.values_mut().flat_map(|p| p.slots.iter_mut()) {
            s.ends = ends.get(s.name.as_str()).copied().unwrap_or(0);
        }
        self
    }

    /// Places `need` on the best-fitting node of the first compute environment in
    /// `compute_environments` that has room, and returns that node's name.
    pub fn place(&mut self, compute_environments: &[String], need: &Resources) -> Option<String> {
        self.place_until(compute_environments, need, None)
    }

    /// Places a job needing `need` that is expected to end at `ends` (drain-friendly:
    /// `Some`) on the node of the first compute environment in `compute_environments`
    /// with room whose work is expected to end latest, best fit among equals; with
    /// `None`, best fit alone. Returns the node's name.
    pub fn place_until(
        &mut self,
        compute_environments: &[String],
        need: &Resources,
        ends: Option<u64>,
    ) -> Option<String> {
        for ce in compute_environments {
            let Some(pool) = self.pools.get_mut(ce) else {
                continue;
            };
            if !need.fits_in(&pool.max_free) {
                continue;
            }
            let mut best: Option<(u64, f64, usize)> = None;
            for (i, s) in pool.slots.iter().enumerate() {
                if s.reserved || !need.fits_in(&s.free) {
                    continue;
                }
                let left = s.free.saturating_sub(need);
                let score = left.cpu_millis as f64 * s.inv[0]
                    + left.memory_bytes as f64 * s.inv[1]
                    + f64::from(left.gpus) * s.inv[2];
                let ends_at = if ends.is_some() { s.ends } else { 0 };
                // Latest end first, then strictly smaller room left, so ties keep the
                // earlier (name-ordered) node.
                if best.is_none_or(|(e, b, _)| ends_at > e || (ends_at == e && score < b)) {
                    best = Some((ends_at, score, i));
                }
            }
            if let Some((_, _, i)) = best {
                let slot = &mut pool.slots[i];
                slot.free = slot.free.saturating_sub(need);
                slot.placed += 1;
                slot.ends = slot.ends.max(ends.unwrap_or(0));
                let name = slot.name.clone();
                pool.refresh_bound();
                return Some(name);
            }
        }
        None
    }

    /// Reserves a node of `compute_environment` for a job needing `need` that fits no
    /// node now and cannot get a new instance (the environment is at `maxInstances`):
    /// the node closest to holding it (most free room relative to capacity, ties by
    /// name) takes no other job in this pass, so smaller jobs later in the order cannot
    /// keep backfilling the room it is waiting for. Returns the node's name.
    pub fn reserve(&mut self, compute_environment: &str, need: &Resources) -> Option<String> {
        let pool = self.pools.get_mut(compute_environment)?;
        let mut best: Option<(f64, usize)> = None;
        for (i, s) in pool.slots.iter().enumerate() {
            // A node too small for the job even when empty would be held for nothing.
            if s.reserved || !need.fits_in(&s.capacity) {
                continue;
            }
            // Shortfall relative to capacity; the smallest is closest to fitting.
            let short = need.saturating_sub(&s.free);
            let score = short.cpu_millis as f64 * s.inv[0]
                + short.memory_bytes as f64 * s.inv[1]
                + f64::from(short.gpus) * s.inv[2];
            if best.is_none_or(|(b, _)| score < b) {
                best = Some((score, i));
            }
        }
        let (_, i) = best?;
        pool.slots[i].reserved = true;
        let name = pool.slots[i].name.clone();
        pool.refresh_bound();
        Some(name)
    }

    /// Holds every node of `compute_environment` that could hold a job needing `need`
    /// when empty: no other job goes there in this pass (for a job whose queue's wait
    /// bound is about to run out, so later jobs cannot push it past the bound). Returns
    /// the names held.
    pub fn reserve_all(&mut self, compute_environment: &str, need: &Resources) -> Vec<String> {
        let Some(pool) = self.pools.get_mut(compute_environment) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for s in &mut pool.slots {
            if !s.reserved && need.fits_in(&s.capacity) {
                s.reserved = true;
                out.push(s.name.clone());
            }
        }
        pool.refresh_bound();
        out
    }

    /// Names of nodes that received at least one job in this pass.
    pub fn used_nodes(&self) -> impl Iterator<Item = &str> {
        self.pools
            .values()
            .flat_map(|p| p.slots.iter())
            .filter(|s| s.placed > 0)
            .map(|s| s.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::model::{ComputeEnvironment, Node};
    use crate::scheduler::resources::GIB;

    fn ce(state: State) -> ComputeEnvironment {
        ComputeEnvironment {
            state,
            shape: Resources::new(4000, 16 * GIB, 0),
            min_instances: 0,
            max_instances: 10,
            booting: 0,
            scale_in_after_idle_seconds: 60,
            boot_seconds: 0,
            booting_ready_at: vec![],
        }
    }

    fn node(ce: &str, allocated: Resources, phase: NodePhase) -> Node {
        Node {
            compute_environment: ce.into(),
            capacity: Resources::new(4000, 16 * GIB, 0),
            allocated,
            jobs: u32::from(!allocated.is_zero()),
            phase,
            idle_since: None,
            terminable: true,
        }
    }

    fn snapshot(nodes: Vec<(&str, Node)>, ces: Vec<(&str, State)>) -> Snapshot {
        Snapshot {
            compute_environments: ces
                .into_iter()
                .map(|(n, s)| (n.to_string(), ce(s)))
                .collect(),
            nodes: nodes.into_iter().map(|(n, x)| (n.to_string(), x)).collect(),
            ..Snapshot::default()
        }
    }

    fn ces(names: &[&str]) -> Vec<String> {
        names.iter().map(std::string::ToString::to_string).collect()
    }

    #[test]
    fn best_fit_picks_the_fullest_node_that_fits() {
        let s = snapshot(
            vec![
                ("empty", node("a", Resources::ZERO, NodePhase::Ready)),
                (
                    "half",
                    node("a", Resources::new(2000, 8 * GIB, 0), NodePhase::Ready),
                ),
                (
                    "full",
                    node("a", Resources::new(4000, 16 * GIB, 0), NodePhase::Ready),
                ),
            ],
            vec![("a", State::Enabled)],
        );
        let mut pool = NodePool::from_snapshot(&s);
        let need = Resources::new(1000, 2 * GIB, 0);
        assert_eq!(pool.place(&ces(&["a"]), &need).as_deref(), Some("half"));
    }

    #[test]
    fn several_jobs_share_a_node_and_never_overcommit() {
        let s = snapshot(
            vec![("n", node("a", Resources::ZERO, NodePhase::Ready))],
            vec![("a", State::Enabled)],
        );
        let mut pool = NodePool::from_snapshot(&s);
        let need = Resources::new(1000, 4 * GIB, 0);
        for _ in 0..4 {
            assert_eq!(pool.place(&ces(&["a"]), &need).as_deref(), Some("n"));
        }
        assert_eq!(pool.place(&ces(&["a"]), &need), None);
    }

    #[test]
    fn draining_lost_and_disabled_take_nothing() {
        let s = snapshot(
            vec![
                ("d", node("a", Resources::ZERO, NodePhase::Draining)),
                ("l", node("a", Resources::ZERO, NodePhase::Lost)),
                ("x", node("off", Resources::ZERO, NodePhase::Ready)),
            ],
            vec![("a", State::Enabled), ("off", State::Disabled)],
        );
        let mut pool = NodePool::from_snapshot(&s);
        assert_eq!(
            pool.place(&ces(&["a", "off"]), &Resources::new(1, 1, 0)),
            None
        );
    }

    #[test]
    fn first_compute_environment_with_room_wins() {
        let s = snapshot(
            vec![
                (
                    "a1",
                    node("a", Resources::new(4000, 0, 0), NodePhase::Ready),
                ),
                ("b1", node("b", Resources::ZERO, NodePhase::Ready)),
                (
                    "c1",
                    node("c", Resources::new(3000, 0, 0), NodePhase::Ready),
                ),
            ],
            vec![
                ("a", State::Enabled),
                ("b", State::Enabled),
                ("c", State::Enabled),
            ],
        );
        let mut pool = NodePool::from_snapshot(&s);
        // a is full; b comes before c in the queue's list even though c fits tighter.
        let got = pool.place(&ces(&["a", "b", "c"]), &Resources::new(1000, GIB, 0));
        assert_eq!(got.as_deref(), Some("b1"));
    }

    #[test]
    fn a_reserved_node_takes_nothing_else() {
        let s = snapshot(
            vec![
                ("a", node("a", Resources::new(3000, 0, 0), NodePhase::Ready)),
                ("b", node("a", Resources::new(1000, 0, 0), NodePhase::Ready)),
            ],
            vec![("a", State::Enabled)],
        );
        let mut pool = NodePool::from_snapshot(&s);
        // A whole-instance job: b (3 cpu free) is closest to holding it.
        let big = Resources::new(4000, GIB, 0);
        assert_eq!(pool.reserve("a", &big).as_deref(), Some("b"));
        let small = Resources::new(1000, GIB, 0);
        assert_eq!(pool.place(&ces(&["a"]), &small).as_deref(), Some("a"));
        assert_eq!(pool.place(&ces(&["a"]), &small), None);
    }

    #[test]
    fn a_node_too_small_for_the_job_is_never_reserved() {
        let mut small_node = node("a", Resources::ZERO, NodePhase::Ready);
        small_node.capacity = Resources::new(2000, 16 * GIB, 0);
        let s = snapshot(vec![("n", small_node)], vec![("a", State::Enabled)]);
        let mut pool = NodePool::from_snapshot(&s);
        assert_eq!(pool.reserve("a", &Resources::new(4000, GIB, 0)), None);
    }

    #[test]
    fn drain_friendly_prefers_the_node_whose_work_ends_latest_then_best_fit() {
        let s = snapshot(
            vec![
                (
                    "ends-soon",
                    node("a", Resources::new(3000, 8 * GIB, 0), NodePhase::Ready),
                ),
                (
                    "ends-late",
                    node("a", Resources::new(1000, 2 * GIB, 0), NodePhase::Ready),
                ),
                (
                    "ends-late-fuller",
                    node("a", Resources::new(2000, 4 * GIB, 0), NodePhase::Ready),
                ),
            ],
            vec![("a", State::Enabled)],
        );
        let ends: BTreeMap<&str, u64> = [
            ("ends-soon", 100),
            ("ends-late", 5000),
            ("ends-late-fuller", 5000),
        ]
        .into();
        let need = Resources::new(1000, GIB, 0);
        // Best fit alone would pick the fullest node, whose work ends soon.
        let mut pool = NodePool::from_snapshot(&s);
        assert_eq!(
            pool.place(&ces(&["a"]), &need).as_deref(),
            Some("ends-soon")
        );
        // Drain-friendly: the latest end wins; best fit breaks the tie between the two.
        let mut pool = NodePool::from_snapshot(&s).with_expected_ends(&ends);
        assert_eq!(
            pool.place_until(&ces(&["a"]), &need, Some(200)).as_deref(),
            Some("ends-late-fuller")
        );
        // An empty node's work ends with the first job placed on it.
        let s = snapshot(
            vec![
                ("x", node("a", Resources::ZERO, NodePhase::Ready)),
                ("y", node("a", Resources::ZERO, NodePhase::Ready)),
            ],
            vec![("a", State::Enabled)],
        );
        let mut pool = NodePool::from_snapshot(&s).with_expected_ends(&BTreeMap::new());
        assert_eq!(
            pool.place_until(&ces(&["a"]), &need, Some(9000)).as_deref(),
            Some("x")
        );
    }

    #[test]
    fn gpu_jobs_need_gpu_nodes() {
        let s = snapshot(
            vec![("cpu-only", node("a", Resources::ZERO, NodePhase::Ready))],
            vec![("a", State::Enabled)],
        );
        let mut pool = NodePool::from_snapshot(&s);
        assert_eq!(pool.place(&ces(&["a"]), &Resources::new(1, 1, 1)), None);
    }
}
