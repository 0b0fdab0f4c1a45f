//! Parked classes of waiting jobs (issue 13, "Backlog"): kube-scheduler's
//! "unschedulable queue", for a class of Runnable jobs, with its event list replaced by a
//! direct test run at the start of every pass.
//!
//! A **class** is the Runnable jobs of one queue that need the same resources: all that
//! placement, reservation and the capacity plan look at in a first-in first-out queue
//! without a wait bound. A class is **parkable** ([`parkable`]) in a pass when no member
//! can be bound, hold a node or get an instance in it, whatever order or other jobs the
//! pass has:
//! - its resources fit no Ready node of an Enabled compute environment of its queue at
//!   the start of the pass (the pool [`super::packing::NodePool`] is built from; it only
//!   shrinks while a pass places), so no member is placed;
//! - the capacity plan has no bin for it: every Enabled environment of its queue whose
//!   shape holds it is at `maxInstances` with nothing booting, or none holds it (then it
//!   is too large); so every member gets the same reason and asks for nothing;
//! - at most one environment could take it: then only the first job of the class in
//!   scheduling order can reserve a node ([`super::packing::NodePool::reserve`], one per
//!   environment; a failed reservation fails again for a later member, as nodes are only
//!   ever more reserved within a pass). With two, a second member reserves in the
//!   second environment, so such classes are not parked.
//!
//! Queues with a fair-share policy (the order interleaves shares by usage) or a wait
//! bound (`maxWaitSeconds`: each job's `due` reservation depends on its own deadline)
//! are never parked: both would make a member's effect depend on more than its class.
//!
//! The caller (the controller) leaves a parked class's later members out of the
//! [`super::Snapshot`]; the pass then decides every binding, phase change, dependency
//! failure, reservation, capacity, drain and termination exactly as with them, and
//! [`count_parked_ahead`] puts them back into the queue positions of the jobs that
//! remain.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use super::model::{JobId, NodePhase, Seconds, Snapshot, State};
use super::resources::Resources;
use super::{Plan, saturated_environments};

/// What [`parkable`] needs of the snapshot, worked out once per pass.
pub struct Parking<'s> {
    snapshot: &'s Snapshot,
    saturated: std::collections::BTreeSet<&'s str>,
}

impl<'s> Parking<'s> {
    /// Prepares the test for a pass over `snapshot` (every node and placed job in it).
    pub fn new(snapshot: &'s Snapshot) -> Self {
        Parking {
            snapshot,
            saturated: saturated_environments(snapshot),
        }
    }

    /// Whether the Runnable jobs of `queue` that need `resources` (no dependencies, no
    /// retry backoff left, not array children) form a parkable class in this pass: see
    /// the module documentation. O(nodes).
    pub fn parkable(&self, queue: &str, resources: &Resources) -> bool {
        let s = self.snapshot;
        let Some(q) = s.queues.get(queue) else {
            return false;
        };
        if q.state != State::Enabled || q.fair_share.is_some() || q.max_wait_seconds.is_some() {
            return false;
        }
        let enabled = |c: &str| {
            s.compute_environments
                .get(c)
                .is_some_and(|ce| ce.state == State::Enabled)
        };
        if !q.compute_environments.iter().any(|c| enabled(c)) {
            return false;
        }
        let fits_a_node = s.nodes.values().any(|n| {
            n.phase == NodePhase::Ready
                && q.compute_environments.contains(&n.compute_environment)
                && enabled(&n.compute_environment)
                && resources.fits_in(&n.free())
        });
        if fits_a_node {
            return false;
        }
        let mut eligible = q.compute_environments.iter().filter(|c| {
            s.compute_environments
                .get(*c)
                .is_some_and(|ce| ce.state == State::Enabled && resources.fits_in(&ce.shape))
        });
        match (eligible.next(), eligible.next()) {
            (None, _) => true,
            (Some(c), None) => self.saturated.contains(c.as_str()),
            (Some(_), Some(_)) => false,
        }
    }
}

/// Whether a class is parkable in a pass over `snapshot` ([`Parking::parkable`]).
pub fn parkable(snapshot: &Snapshot, queue: &str, resources: &Resources) -> bool {
    Parking::new(snapshot).parkable(queue, resources)
}

/// A parked job's place in its queue: submission time, then its id, given as the parts
/// whose concatenation is its [`JobId`] text (`namespace`, `/`, `name`), so that no id
/// is built for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParkedKey<'a> {
    /// Submission time.
    pub submitted_at: Seconds,
    /// The id's text, in parts.
    pub id: [&'a str; 3],
}

impl ParkedKey<'_> {
    /// Orders a job of the snapshot (`submitted_at`, `id`) against this parked one, as
    /// a first-in first-out queue orders them.
    fn cmp_job(&self, submitted_at: Seconds, id: &JobId) -> Ordering {
        submitted_at.cmp(&self.submitted_at).then_with(|| {
            let [ns, slash, name] = self.id;
            // The common case: the same namespace, so the names decide (one memcmp).
            match id.0.strip_prefix(ns).and_then(|r| r.strip_prefix(slash)) {
                Some(rest) => rest.cmp(name),
                None => id.0.bytes().cmp(self.id.iter().flat_map(|p| p.bytes())),
            }
        })
    }
}

/// Adds to the queue position of every job in `plan.queue` the parked jobs of its queue
/// (`parked`, by queue name, in any order) that come before it in first-in first-out
/// order: the position a pass with them in the snapshot gives (parked jobs are never
/// bound, so they are all ahead of or behind a job, in their own queue only). Exact for
/// the queues [`parkable`] admits (first-in first-out). O(p + u log u) for p parked and
/// u positioned jobs of those queues; a parked job behind every positioned one (the
/// common case: the controller keeps a class's first members in the snapshot) costs
/// one comparison.
pub fn count_parked_ahead(
    plan: &mut Plan,
    snapshot: &Snapshot,
    parked: &BTreeMap<&str, Vec<ParkedKey<'_>>>,
) {
    if parked.values().all(Vec::is_empty) {
        return;
    }
    let mut by_queue: BTreeMap<&str, Vec<(Seconds, &JobId, &mut super::QueueEstimate)>> =
        BTreeMap::new();
    for (id, q) in &mut plan.queue {
        let Some(job) = snapshot.jobs.get(id) else {
            continue;
        };
        if let Some((name, _)) = parked.get_key_value(job.queue.as_str()) {
            by_queue
                .entry(name)
                .or_default()
                .push((job.submitted_at, id, q));
        }
    }
    for (queue, mut jobs) in by_queue {
        let Some(members) = parked.get(queue) else {
            continue;
        };
        jobs.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
        // ahead[i]: parked jobs just before jobs[i] (after jobs[i - 1]).
        let mut ahead = vec![0u32; jobs.len()];
        for m in members {
            let behind_all = jobs
                .last()
                .is_none_or(|(at, id, _)| m.cmp_job(*at, id) == Ordering::Less);
            if behind_all {
                continue;
            }
            let i = jobs.partition_point(|(at, id, _)| m.cmp_job(*at, id) == Ordering::Less);
            if let Some(a) = ahead.get_mut(i) {
                *a = a.saturating_add(1);
            }
        }
        let mut running = 0u32;
        for ((_, _, q), a) in jobs.iter_mut().zip(ahead) {
            running = running.saturating_add(a);
            q.position = q.position.saturating_add(running);
        }
    }
}

/// Adds to the queue position of every job in `plan.queue` the parked jobs `ahead`
/// counts before it (by its queue, submission time and id): for parked jobs kept
/// sorted elsewhere, counted without a walk over them (see [`count_parked_ahead`]).
pub fn add_ahead(
    plan: &mut Plan,
    snapshot: &Snapshot,
    ahead: impl Fn(&str, Seconds, &JobId) -> u32,
) {
    for (id, q) in &mut plan.queue {
        let Some(job) = snapshot.jobs.get(id) else {
            continue;
        };
        q.position = q
            .position
            .saturating_add(ahead(job.queue.as_str(), job.submitted_at, id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::model::{ComputeEnvironment, Job, JobQueue, Node};
    use crate::scheduler::resources::GIB;
    use crate::scheduler::{QueueEstimate, plan};

    fn ce(max: u32) -> ComputeEnvironment {
        ComputeEnvironment {
            state: State::Enabled,
            shape: Resources::new(4000, 16 * GIB, 0),
            min_instances: 0,
            max_instances: max,
            booting: 0,
            scale_in_after_idle_seconds: 300,
            boot_seconds: 0,
            booting_ready_at: vec![],
        }
    }

    fn queue(ces: &[&str]) -> JobQueue {
        JobQueue {
            priority: 1,
            state: State::Enabled,
            compute_environments: ces.iter().map(|c| (*c).to_owned()).collect(),
            fair_share: None,
            max_wait_seconds: None,
        }
    }

    fn busy(ce: &str, cpu: u64) -> Node {
        Node {
            compute_environment: ce.into(),
            capacity: Resources::new(4000, 16 * GIB, 0),
            allocated: Resources::new(cpu, GIB, 0),
            jobs: 1,
            phase: NodePhase::Ready,
            idle_since: None,
            terminable: true,
        }
    }

    /// Environment `a` (max 1) with one node using `used` cpu; queue `q` on `a`.
    fn world(used: u64) -> Snapshot {
        Snapshot {
            queues: [("q".to_owned(), queue(&["a"]))].into(),
            compute_environments: [("a".to_owned(), ce(1))].into(),
            nodes: [("n".to_owned(), busy("a", used))].into(),
            ..Snapshot::default()
        }
    }

    #[test]
    fn a_class_parks_only_when_nothing_could_take_a_member() {
        let two = Resources::new(2000, GIB, 0);
        // At maxInstances with 1 cpu free: a 2-cpu class waits for running work.
        assert!(parkable(&world(3000), "q", &two));
        // Room on the node: it could be placed.
        assert!(!parkable(&world(2000), "q", &two));
        // Below maxInstances: the capacity plan buys it an instance.
        let mut s = world(3000);
        s.compute_environments.insert("a".into(), ce(2));
        assert!(!parkable(&s, "q", &two));
        // Booting: a booting instance is a bin for it.
        let mut s = world(3000);
        if let Some(c) = s.compute_environments.get_mut("a") {
            c.booting = 1;
        }
        assert!(!parkable(&s, "q", &two));
        // Larger than every shape: never placed, never bought.
        let mut s = world(0);
        s.compute_environments.insert("a".into(), ce(5));
        assert!(parkable(&s, "q", &Resources::new(8000, GIB, 0)));
        // Two environments that could take it: a second member could reserve a node.
        let mut s = world(3000);
        s.compute_environments.insert("b".into(), ce(1));
        s.nodes.insert("m".into(), busy("b", 3000));
        s.queues.insert("q".into(), queue(&["a", "b"]));
        assert!(!parkable(&s, "q", &two));
        // Fair share and wait bounds are never parked; neither is an unknown queue.
        let mut s = world(3000);
        if let Some(q) = s.queues.get_mut("q") {
            q.max_wait_seconds = Some(60);
        }
        assert!(!parkable(&s, "q", &two));
        assert!(!parkable(&world(3000), "other", &two));
    }

    #[test]
    fn parked_jobs_ahead_count_in_positions_as_if_they_were_planned() {
        // q: 1 cpu free on the only node (max 1). Jobs of 2 cpu park; 1-cpu jobs do not.
        let mut s = world(3000);
        let mut add = |id: &str, cpu: u64, at: Seconds| {
            s.jobs.insert(
                JobId::new(id),
                Job::runnable("q", Resources::new(cpu, GIB, 0), at),
            );
        };
        for (i, at) in [5, 6, 6, 7, 9].into_iter().enumerate() {
            add(&format!("ns/big-{i}"), 2000, at);
        }
        add("ns/small-a", 1000, 2);
        add("ns/small-b", 1000, 3);
        add("ns/small-c", 1000, 8);
        add("ns/small-d", 1000, 20);
        let full = plan(&s, 100);
        // Park big-1.. (big-0 stays: the class's head).
        let mut less = s.clone();
        let names = ["big-1", "big-2", "big-3", "big-4"];
        for n in names {
            less.jobs.remove(&JobId(format!("ns/{n}")));
        }
        let mut parked_plan = plan(&less, 100);
        let members: Vec<ParkedKey<'_>> = names
            .iter()
            .map(|n| ParkedKey {
                submitted_at: s.jobs[&JobId(format!("ns/{n}"))].submitted_at,
                id: ["ns", "/", n],
            })
            .collect();
        count_parked_ahead(&mut parked_plan, &less, &[("q", members)].into());
        assert_eq!(parked_plan.bindings, full.bindings);
        assert_eq!(parked_plan.reserved, full.reserved);
        assert_eq!(parked_plan.capacity, full.capacity);
        let without: BTreeMap<JobId, QueueEstimate> = full
            .queue
            .iter()
            .filter(|(id, _)| parked_plan.queue.contains_key(*id))
            .map(|(id, q)| (id.clone(), *q))
            .collect();
        let positions = |m: &BTreeMap<JobId, QueueEstimate>| -> Vec<(String, u32)> {
            m.iter().map(|(i, q)| (i.0.clone(), q.position)).collect()
        };
        assert_eq!(positions(&parked_plan.queue), positions(&without));
        // small-a takes the free cpu; small-c and small-d wait behind the parked big
        // jobs submitted before them (unbound order: small-b, big-0..3, small-c, big-4,
        // small-d).
        assert_eq!(parked_plan.bindings.len(), 1);
        assert_eq!(parked_plan.bindings[0].job, JobId::new("ns/small-a"));
        assert_eq!(parked_plan.queue[&JobId::new("ns/small-c")].position, 6);
        assert_eq!(parked_plan.queue[&JobId::new("ns/small-d")].position, 8);
    }
}
