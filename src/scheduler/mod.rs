//! Pure scheduling logic: queue order, bin-packing, capacity plan, scale-in, retry and
//! dependency decisions.
//!
//! Plain data in ([`Snapshot`] and the time `now`), decisions out ([`Plan`]); no I/O, no
//! clock reads, no Kubernetes types, and deterministic (every map is a `BTreeMap`, every
//! sort is stable with a total tie-break). The controller maps its custom resources
//! into a [`Snapshot`], calls [`plan`], and applies the [`Plan`]; after an attempt ends
//! it calls [`retry::decide`]. The simulator (`crate::simulate`) drives the very same
//! functions.
//!
//! One pass of [`plan`]:
//! 1. [`deps::evaluate`] — which waiting jobs are released, keep waiting, or fail with
//!    `DependencyFailed`;
//! 2. [`queue::order`] — queue priority, then FIFO or fair share within each queue;
//! 3. [`packing::NodePool::place_until`] — onto Ready nodes with room, the node whose
//!    work is expected to end latest first, best fit among equals (drain-friendly); a
//!    job that fits nowhere while its environments are at `maxInstances` holds a node
//!    ([`packing::NodePool::reserve`]) so smaller jobs cannot starve it;
//! 4. [`capacity::plan`] — first-fit-decreasing of the rest onto booting and new
//!    instances, per compute environment, within `[minInstances, maxInstances]`; jobs
//!    of queues with a wait bound (`maxWaitSeconds`) get instances only by
//!    [`scaleout::decide`] (cost-aware: when they would otherwise wait past their
//!    bound, and the instance pays for its boot);
//! 5. [`forecast`] — every waiting job's queue position and estimated start
//!    ([`Plan::queue`]);
//! 6. [`scale_in::plan`] — drain idle nodes nobody needs, terminate drained empty ones;
//! 7. a [`Reason`] for every waiting job that was not bound.

#![warn(missing_docs)]

pub mod capacity;
pub mod deps;
pub mod estimate;
pub mod fairshare;
pub mod forecast;
pub mod model;
pub mod packing;
pub mod park;
pub mod queue;
pub mod reasons;
pub mod resources;
pub mod retry;
pub mod scale_in;
pub mod scaleout;

use std::collections::{BTreeMap, BTreeSet};

pub use model::{
    ArrayChild, Attempt, ComputeEnvironment, Dependency, DependencyType, FairSharePolicy, Job,
    JobId, JobQueue, Node, NodePhase, Phase, Seconds, Snapshot, State,
};
pub use reasons::{DEPENDENCY_FAILED, Reason};
pub use resources::Resources;

use capacity::Demand;
use deps::DependencyState;
use forecast::{BinKind, MAX_PROJECTED, Timeline, Waiting};
use packing::NodePool;

/// Switches of a pass (both on by default; the simulator turns them off to measure
/// what they bring).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Drain-friendly placement (latest expected end first); off: best fit alone.
    pub drain_friendly: bool,
    /// Honour queues' `maxWaitSeconds` (cost-aware scale-out); off: every queue buys
    /// instances at once, as without a bound.
    pub wait_bounds: bool,
    /// How cost-aware scale-out searches the number of instances to buy.
    pub scale_out_search: scaleout::Search,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            drain_friendly: true,
            wait_bounds: true,
            scale_out_search: scaleout::Search::Bisect,
        }
    }
}

/// A waiting job's place in its queue and when it is expected to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueEstimate {
    /// 1 for the next job of its queue to start (scheduling order, among the queue's
    /// Runnable jobs not bound in this pass).
    pub position: u32,
    /// When the forecast starts it (`None`: not forecast, see
    /// [`forecast::MAX_PROJECTED`], or it fits no instance that can exist).
    pub estimated_start: Option<Seconds>,
}

/// Bind a job to a node (the job moves to Starting).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The job.
    pub job: JobId,
    /// The node it goes to.
    pub node: String,
}

/// A phase change decided by dependency evaluation (Submitted → Pending, or
/// Submitted/Pending → Runnable). Bindings (→ Starting) and dependency failures
/// (→ Failed) are listed separately.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseChange {
    /// The job.
    pub job: JobId,
    /// Its new phase.
    pub to: Phase,
}

/// A waiting job that fails with reason [`DEPENDENCY_FAILED`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DependencyFailure {
    /// The job that fails.
    pub job: JobId,
    /// The dependency that failed.
    pub dependency: JobId,
}

/// Capacity decision for one compute environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapacityDecision {
    /// Desired capacity of the Auto Scaling Group after this pass's terminations,
    /// always within `[minInstances, maxInstances]`.
    pub desired: u32,
    /// Registered nodes plus booting instances before this pass.
    pub current: u32,
    /// New instances the unplaced demand needs (0 when Disabled).
    pub new_instances: u32,
}

/// Every decision of one scheduling pass.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Job → node, in scheduling order.
    pub bindings: Vec<Binding>,
    /// Phase changes from dependency evaluation, in job-id order.
    pub phase_changes: Vec<PhaseChange>,
    /// Jobs failed by a failed dependency, in job-id order.
    pub dependency_failures: Vec<DependencyFailure>,
    /// Per compute environment.
    pub capacity: BTreeMap<String, CapacityDecision>,
    /// Nodes held for a job that fits no node and whose compute environments are all
    /// at `maxInstances` with nothing booting (at most one per environment), or whose
    /// queue's wait bound runs out within a boot (every node that could take it):
    /// nothing else was bound to them in this pass. Informational; the job is in
    /// `unplaced`.
    pub reserved: Vec<Binding>,
    /// Nodes to mark Draining.
    pub drain: Vec<String>,
    /// Nodes to terminate (`ShouldDecrementDesiredCapacity=true`).
    pub terminate: Vec<String>,
    /// Why each waiting, non-failed job was not bound in this pass.
    pub unplaced: BTreeMap<JobId, Reason>,
    /// Position and estimated start of every Runnable job that was not bound in this
    /// pass and is not in retry backoff.
    pub queue: BTreeMap<JobId, QueueEstimate>,
    /// When a job that waits within its queue's bound falls due (an instance must be
    /// launched by then): a pass should run at that time at the latest.
    pub review_at: Option<Seconds>,
}

/// Runs one full scheduling pass over `snapshot` at time `now`.
pub fn plan(snapshot: &Snapshot, now: Seconds) -> Plan {
    plan_with(snapshot, now, &Options::default())
}

/// When each Ready node's placed work is expected to end (nodes holding none are left
/// out).
fn expected_ends(snapshot: &Snapshot, now: Seconds) -> BTreeMap<&str, Seconds> {
    let mut ends: BTreeMap<&str, Seconds> = BTreeMap::new();
    for job in snapshot.jobs.values() {
        if let (true, Some(node)) = (job.phase.is_placed(), job.node.as_deref()) {
            let end = forecast::expected_end(job, now);
            let e = ends.entry(node).or_default();
            *e = (*e).max(end);
        }
    }
    ends
}

/// [`plan`] with explicit [`Options`].
pub fn plan_with(snapshot: &Snapshot, now: Seconds, options: &Options) -> Plan {
    let mut out = Plan::default();
    // Every waiting job once, in id order, with its job (no lookups by id, no copies of
    // ids for the jobs that stay where they are).
    let deps = deps::evaluate_in_order(snapshot);
    // Why each waiting job is not placed, in id order (the map is built at the end, in
    // one go, not by inserting one by one).
    let mut unplaced: Vec<(JobId, Reason)> = Vec::new();

    let mut candidates: Vec<(&JobId, &Job)> = Vec::new();
    for (id, job, state) in deps {
        match state {
            DependencyState::Failed { dependency } => {
                out.dependency_failures.push(DependencyFailure {
                    job: id.clone(),
                    dependency,
                });
            }
            DependencyState::Waiting(reason) => {
                if job.phase == Phase::Submitted {
                    out.phase_changes.push(PhaseChange {
                        job: id.clone(),
                        to: Phase::Pending,
                    });
                }
                unplaced.push((id.clone(), reason));
            }
            DependencyState::Met => {
                if job.phase != Phase::Runnable {
                    out.phase_changes.push(PhaseChange {
                        job: id.clone(),
                        to: Phase::Runnable,
                    });
                }
                match blocked(snapshot, job, now) {
                    Some(reason) => unplaced.push((id.clone(), reason)),
                    None => candidates.push((id, job)),
                }
            }
        }
    }

    let ordered = queue::order_jobs(snapshot, &candidates, now);
    let mut pool = NodePool::from_snapshot(snapshot);
    if options.drain_friendly {
        pool = pool.with_expected_ends(&expected_ends(snapshot, now));
    }
    let saturated = saturated_environments(snapshot);
    let mut holding: BTreeSet<&str> = BTreeSet::new();
    let mut classes: BTreeMap<(&str, Resources), (Vec<&str>, bool)> = BTreeMap::new();
    let mut unbound: Vec<(&JobId, &Job, &[String])> = Vec::new();
    for (id, job) in ordered {
        let Some(q) = snapshot.queues.get(&job.queue) else {
            continue;
        };
        let ends = options
            .drain_friendly
            .then(|| now.saturating_add(forecast::estimate_of(job).seconds));
        match pool.place_until(&q.compute_environments, &job.resources, ends) {
            Some(node) => out.bindings.push(Binding {
                job: id.clone(),
                node,
            }),
            None => {
                // Blocked with no way to grow: hold a node for it (first such job per
                // environment), so later, smaller jobs cannot starve it by backfilling.
                // The environments that could take it are those of its class (queue and
                // resources): worked out once per class, not per job of a backlog.
                let (eligible, stuck) = classes
                    .entry((job.queue.as_str(), job.resources))
                    .or_insert_with(|| {
                        let eligible: Vec<&str> = q
                            .compute_environments
                            .iter()
                            .filter(|c| {
                                snapshot.compute_environments.get(*c).is_some_and(|ce| {
                                    ce.state == State::Enabled && job.resources.fits_in(&ce.shape)
                                })
                            })
                            .map(String::as_str)
                            .collect();
                        let stuck =
                            !eligible.is_empty() && eligible.iter().all(|c| saturated.contains(c));
                        (eligible, stuck)
                    });
                let stuck = *stuck;
                // Or due: its queue's bound runs out within a boot. Then it holds every
                // node of its environments that could take it, so no later job can push
                // it past the bound when there is no time left to buy an instance.
                let due = options.wait_bounds
                    && eligible.first().is_some_and(|c| {
                        let boot = snapshot
                            .compute_environments
                            .get(*c)
                            .map_or(0, |ce| ce.boot_seconds);
                        scaleout::deadline(snapshot, job)
                            .is_some_and(|d| now.saturating_add(boot) >= d)
                    });
                if due {
                    for ce in eligible.iter() {
                        for node in pool.reserve_all(ce, &job.resources) {
                            out.reserved.push(Binding {
                                job: id.clone(),
                                node,
                            });
                        }
                    }
                } else if stuck
                    && let Some(ce) = eligible.iter().find(|c| !holding.contains(*c))
                    && let Some(node) = pool.reserve(ce, &job.resources)
                {
                    holding.insert(*ce);
                    out.reserved.push(Binding {
                        job: id.clone(),
                        node,
                    });
                }
                unbound.push((id, job, &q.compute_environments));
            }
        }
    }

    let bounded = |job: &Job| {
        options.wait_bounds
            && snapshot
                .queues
                .get(&job.queue)
                .is_some_and(|q| q.max_wait_seconds.is_some())
    };
    let demand: Vec<Demand<'_>> = unbound
        .iter()
        .filter(|(_, job, _)| !bounded(job))
        .map(|(id, job, ces)| Demand {
            job: id,
            resources: job.resources,
            compute_environments: ces,
        })
        .collect();
    let mut capacity = capacity::plan(snapshot, &demand);
    let any_bounded = demand.len() < unbound.len();

    // The forecast: nodes with this pass's bindings, booting instances, and the new
    // instances of unbounded demand; then cost-aware instances for bounded queues.
    let bound_now: BTreeMap<&JobId, &str> = out
        .bindings
        .iter()
        .map(|b| (&b.job, b.node.as_str()))
        .collect();
    let mut timeline = Timeline::new(snapshot, now, &bound_now);
    timeline.drain_friendly = options.drain_friendly;
    if !options.wait_bounds {
        timeline.max_wait.clear();
    }
    for (ce, e) in &capacity.environments {
        for _ in 0..e.new_instances {
            timeline.add_new(snapshot, ce, now);
        }
    }
    let waiting: Vec<Waiting<'_>> = unbound
        .iter()
        .take(MAX_PROJECTED)
        .map(|(id, job, ces)| (*id, *job, *ces))
        .collect();
    let projection = if any_bounded {
        let headroom: BTreeMap<String, u32> = capacity
            .environments
            .iter()
            .map(|(name, e)| {
                let max = snapshot
                    .compute_environments
                    .get(name)
                    .map_or(0, |c| c.max_instances);
                (
                    name.clone(),
                    max.saturating_sub(e.current.saturating_add(e.new_instances)),
                )
            })
            .collect();
        let decision = scaleout::decide_with(
            snapshot,
            &mut timeline,
            &waiting,
            &headroom,
            now,
            options.scale_out_search,
        );
        for (ce, n) in &decision.extra {
            if let Some(e) = capacity.environments.get_mut(ce) {
                e.new_instances += n;
            }
        }
        out.review_at = decision.review_at;
        // Why each bounded job waits: what the forecast says, else what plain
        // first-fit-decreasing says (too large, at maxInstances).
        let all: Vec<Demand<'_>> = unbound
            .iter()
            .filter(|(_, job, _)| bounded(job))
            .map(|(id, job, ces)| Demand {
                job: id,
                resources: job.resources,
                compute_environments: ces,
            })
            .collect();
        let plain = capacity::plan(snapshot, &all).reasons;
        let projected: BTreeMap<&JobId, Option<forecast::Start>> = waiting
            .iter()
            .zip(&decision.projection.starts)
            .map(|((id, _, _), s)| (*id, *s))
            .collect();
        for d in &all {
            let start = projected.get(d.job).copied().flatten();
            let reason = match start.map(|s| &timeline.bins[s.bin]) {
                Some(bin) if bin.kind == BinKind::Node => Some(Reason::WaitingForRunningJobs {
                    compute_environment: bin.compute_environment.clone(),
                    max_wait: snapshot
                        .jobs
                        .get(d.job)
                        .and_then(|j| snapshot.queues.get(&j.queue))
                        .and_then(|q| q.max_wait_seconds)
                        .unwrap_or(0),
                }),
                Some(bin) => Some(Reason::WaitingForBoot {
                    compute_environment: bin.compute_environment.clone(),
                    instances: capacity
                        .environments
                        .get(&bin.compute_environment)
                        .map_or(0, |e| e.booting + e.new_instances),
                }),
                None => plain.get(d.job).cloned(),
            };
            if let Some(r) = reason {
                capacity.reasons.insert(d.job.clone(), r);
            }
        }
        decision.projection
    } else {
        timeline.project(&waiting, now)
    };
    // Reasons from dependency evaluation and from the capacity plan: one map, built in
    // one go from both lists in id order.
    out.unplaced = merge_reasons(unplaced, capacity.reasons);

    // Queue positions (every unbound job, in scheduling order) and estimated starts.
    let mut positions: BTreeMap<&str, u32> = BTreeMap::new();
    let starts: BTreeMap<&JobId, Seconds> = waiting
        .iter()
        .zip(&projection.starts)
        .filter_map(|((id, _, _), s)| Some((*id, s.as_ref()?.at)))
        .collect();
    let mut queue: Vec<(JobId, QueueEstimate)> = Vec::with_capacity(unbound.len());
    for (id, job, _) in &unbound {
        let p = positions.entry(job.queue.as_str()).or_default();
        *p += 1;
        queue.push((
            (*id).clone(),
            QueueEstimate {
                position: *p,
                estimated_start: starts.get(id).copied(),
            },
        ));
    }
    // Built in one go (each job once; a queue's jobs are mostly in id order already).
    out.queue = queue.into_iter().collect();

    let used: BTreeSet<&str> = pool.used_nodes().collect();
    let growing: BTreeSet<&str> = capacity
        .environments
        .iter()
        .filter(|(_, e)| e.new_instances > 0)
        .map(|(n, _)| n.as_str())
        .collect();
    let scale_in = scale_in::plan(snapshot, now, &used, &growing);

    let mut terminated: BTreeMap<&str, u32> = BTreeMap::new();
    for name in &scale_in.terminate {
        if let Some(n) = snapshot.nodes.get(name) {
            *terminated
                .entry(n.compute_environment.as_str())
                .or_default() += 1;
        }
    }
    for (name, e) in &capacity.environments {
        let Some(ce) = snapshot.compute_environments.get(name) else {
            continue;
        };
        let gone = terminated.get(name.as_str()).copied().unwrap_or(0);
        out.capacity.insert(
            name.clone(),
            CapacityDecision {
                desired: capacity::desired_capacity(
                    ce.min_instances,
                    ce.max_instances,
                    e.current,
                    gone,
                    e.new_instances,
                ),
                current: e.current,
                new_instances: e.new_instances,
            },
        );
    }
    out.drain = scale_in.drain;
    out.terminate = scale_in.terminate;
    out
}

/// One map of the reasons of `first` (in id order, each id once) and of `then`; `then`'s
/// reason wins for an id in both.
fn merge_reasons(
    first: Vec<(JobId, Reason)>,
    then: BTreeMap<JobId, Reason>,
) -> BTreeMap<JobId, Reason> {
    let mut out = Vec::with_capacity(first.len() + then.len());
    let mut then = then.into_iter().peekable();
    for (id, reason) in first {
        while let Some(t) = then.next_if(|(t, _)| *t < id) {
            out.push(t);
        }
        match then.next_if(|(t, _)| *t == id) {
            Some(t) => out.push(t),
            None => out.push((id, reason)),
        }
    }
    out.extend(then);
    // Sorted and unique: the map is built without a search per entry.
    out.into_iter().collect()
}

/// Enabled compute environments that cannot grow: nothing booting and at least
/// `maxInstances` instances (nodes of any phase).
fn saturated_environments(snapshot: &Snapshot) -> BTreeSet<&str> {
    let mut nodes: BTreeMap<&str, u32> = BTreeMap::new();
    for n in snapshot.nodes.values() {
        *nodes.entry(n.compute_environment.as_str()).or_default() += 1;
    }
    snapshot
        .compute_environments
        .iter()
        .filter(|(name, ce)| {
            ce.state == State::Enabled
                && ce.booting == 0
                && nodes.get(name.as_str()).copied().unwrap_or(0) >= ce.max_instances
        })
        .map(|(name, _)| name.as_str())
        .collect()
}

/// Why a job whose dependencies are met still cannot be placed, if anything does.
fn blocked(snapshot: &Snapshot, job: &Job, now: Seconds) -> Option<Reason> {
    let Some(q) = snapshot.queues.get(&job.queue) else {
        return Some(Reason::QueueNotFound {
            queue: job.queue.clone(),
        });
    };
    if q.state == State::Disabled {
        return Some(Reason::QueueDisabled {
            queue: job.queue.clone(),
        });
    }
    let any_enabled = q.compute_environments.iter().any(|c| {
        snapshot
            .compute_environments
            .get(c)
            .is_some_and(|ce| ce.state == State::Enabled)
    });
    if !any_enabled {
        return Some(Reason::NoEnabledComputeEnvironment {
            queue: job.queue.clone(),
        });
    }
    match job.not_before {
        Some(t) if t > now => Some(Reason::Backoff { remaining: t - now }),
        _ => None,
    }
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use super::*;
    use resources::GIB;

    fn ce(min: u32, max: u32) -> ComputeEnvironment {
        ComputeEnvironment {
            state: State::Enabled,
            shape: Resources::new(4000, 16 * GIB, 0),
            min_instances: min,
            max_instances: max,
            booting: 0,
            scale_in_after_idle_seconds: 300,
            boot_seconds: 0,
            booting_ready_at: vec![],
        }
    }

    fn queue(priority: i32, ces: &[&str]) -> JobQueue {
        JobQueue {
            priority,
            state: State::Enabled,
            compute_environments: ces.iter().map(std::string::ToString::to_string).collect(),
            fair_share: None,
            max_wait_seconds: None,
        }
    }

    fn node(ce: &str, allocated: Resources, idle_since: Option<Seconds>) -> Node {
        Node {
            compute_environment: ce.into(),
            capacity: Resources::new(4000, 16 * GIB, 0),
            allocated,
            jobs: u32::from(!allocated.is_zero()),
            phase: NodePhase::Ready,
            idle_since,
            terminable: true,
        }
    }

    fn job(queue: &str, cpu: u64, gib: u64, at: Seconds) -> Job {
        Job::runnable(queue, Resources::new(cpu, gib * GIB, 0), at)
    }

    /// One CE `ce` (max 10), one queue `q` on it, and the given nodes and jobs.
    fn world(nodes: Vec<(&str, Node)>, jobs: Vec<(&str, Job)>) -> Snapshot {
        Snapshot {
            queues: [("q".to_string(), queue(1, &["ce"]))].into(),
            compute_environments: [("ce".to_string(), ce(0, 10))].into(),
            nodes: nodes.into_iter().map(|(n, x)| (n.to_string(), x)).collect(),
            jobs: jobs.into_iter().map(|(i, j)| (JobId::new(i), j)).collect(),
            array_sizes: BTreeMap::new(),
        }
    }

    fn bound(p: &Plan) -> Vec<(&str, &str)> {
        p.bindings
            .iter()
            .map(|b| (b.job.0.as_str(), b.node.as_str()))
            .collect()
    }

    #[test]
    fn released_job_is_bound_in_the_same_pass() {
        let mut dep = job("q", 1000, 1, 0);
        dep.phase = Phase::Succeeded;
        let mut after = job("q", 1000, 1, 1);
        after.phase = Phase::Pending;
        after.depends_on = vec![Dependency {
            job: JobId::new("extract"),
            kind: DependencyType::Standard,
        }];
        let s = world(
            vec![("n1", node("ce", Resources::ZERO, Some(0)))],
            vec![("extract", dep), ("load", after)],
        );
        let p = plan(&s, 10);
        assert_eq!(
            p.phase_changes,
            [PhaseChange {
                job: JobId::new("load"),
                to: Phase::Runnable
            }]
        );
        assert_eq!(bound(&p), [("load", "n1")]);
    }

    #[test]
    fn waiting_and_failed_dependencies_are_reported_and_never_bound() {
        let mut a = job("q", 1000, 1, 0);
        a.phase = Phase::Running;
        a.node = Some("n1".into());
        let mut f = job("q", 1000, 1, 0);
        f.phase = Phase::Failed;
        let on = |d: &str| {
            let mut j = job("q", 1000, 1, 1);
            j.phase = Phase::Submitted;
            j.depends_on = vec![Dependency {
                job: JobId::new(d),
                kind: DependencyType::Standard,
            }];
            j
        };
        let s = world(
            vec![("n1", node("ce", Resources::new(1000, GIB, 0), None))],
            vec![("a", a), ("f", f), ("wait", on("a")), ("doomed", on("f"))],
        );
        let p = plan(&s, 10);
        assert!(p.bindings.is_empty());
        assert_eq!(
            p.unplaced[&JobId::new("wait")].to_string(),
            "waiting on dependency a"
        );
        assert_eq!(
            p.phase_changes,
            [PhaseChange {
                job: JobId::new("wait"),
                to: Phase::Pending
            }]
        );
        assert_eq!(
            p.dependency_failures,
            [DependencyFailure {
                job: JobId::new("doomed"),
                dependency: JobId::new("f")
            }]
        );
        assert!(!p.unplaced.contains_key(&JobId::new("doomed")));
    }

    #[test]
    fn higher_priority_queue_gets_the_last_slot() {
        let mut s = world(
            vec![("n1", node("ce", Resources::new(3000, 0, 0), None))],
            vec![
                ("low-old", job("q", 1000, 1, 0)),
                ("high-new", job("hi", 1000, 1, 50)),
            ],
        );
        s.queues.insert("hi".into(), queue(10, &["ce"]));
        let p = plan(&s, 100);
        assert_eq!(bound(&p), [("high-new", "n1")]);
        assert_eq!(
            p.unplaced[&JobId::new("low-old")].to_string(),
            "waiting for 1 instance to boot in ce/ce"
        );
    }

    #[test]
    fn fifo_within_a_queue() {
        let s = world(
            vec![("n1", node("ce", Resources::new(3000, 0, 0), None))],
            vec![
                ("b-second", job("q", 1000, 1, 5)),
                ("a-first", job("q", 1000, 1, 9)),
            ],
        );
        // Submission time decides, not the id.
        let p = plan(&s, 100);
        assert_eq!(bound(&p), [("b-second", "n1")]);
    }

    #[test]
    fn disabled_queue_schedules_nothing_and_asks_for_nothing() {
        let mut s = world(
            vec![("n1", node("ce", Resources::ZERO, Some(0)))],
            vec![("j", job("q", 1000, 1, 0))],
        );
        if let Some(q) = s.queues.get_mut("q") {
            q.state = State::Disabled;
        }
        let p = plan(&s, 1);
        assert!(p.bindings.is_empty());
        assert_eq!(
            p.unplaced[&JobId::new("j")].to_string(),
            "queue jq/q disabled"
        );
        assert_eq!(p.capacity["ce"].new_instances, 0);
    }

    #[test]
    fn disabled_environment_places_nothing_new_but_keeps_busy_nodes() {
        let mut s = world(
            vec![
                ("busy", node("ce", Resources::new(1000, GIB, 0), None)),
                ("idle", node("ce", Resources::ZERO, Some(0))),
            ],
            vec![("j", job("q", 1000, 1, 0))],
        );
        if let Some(c) = s.compute_environments.get_mut("ce") {
            c.state = State::Disabled;
        }
        let p = plan(&s, 10_000);
        assert!(p.bindings.is_empty());
        assert_eq!(
            p.unplaced[&JobId::new("j")].to_string(),
            "no enabled compute environment in queue jq/q"
        );
        // Scale-in goes on: the idle node drains, the busy one stays.
        assert_eq!(p.drain, ["idle"]);
        assert!(p.terminate.is_empty());
    }

    #[test]
    fn unplaced_demand_scales_out_and_says_so() {
        let s = world(
            vec![],
            (0..5)
                .map(|i| (["a", "b", "c", "d", "e"][i], job("q", 2000, 4, 0)))
                .collect(),
        );
        let p = plan(&s, 0);
        // 5 × 2 cpu on 4-cpu instances: 3 instances.
        assert_eq!(
            p.capacity["ce"],
            CapacityDecision {
                desired: 3,
                current: 0,
                new_instances: 3
            }
        );
        assert_eq!(
            p.unplaced[&JobId::new("a")].to_string(),
            "waiting for 3 instances to boot in ce/ce"
        );
    }

    #[test]
    fn at_max_instances_a_blocked_job_holds_a_node_against_backfill() {
        let mut s = world(
            vec![("n1", node("ce", Resources::new(2000, GIB, 0), None))],
            vec![
                ("big", job("q", 4000, 1, 0)),
                ("small", job("q", 1000, 1, 5)),
            ],
        );
        if let Some(c) = s.compute_environments.get_mut("ce") {
            c.max_instances = 1;
        }
        let p = plan(&s, 10);
        assert!(p.bindings.is_empty(), "small must not backfill n1: {p:?}");
        assert_eq!(
            p.reserved,
            [Binding {
                job: JobId::new("big"),
                node: "n1".into()
            }]
        );
        assert_eq!(
            p.unplaced[&JobId::new("big")].to_string(),
            "ce/ce is at maxInstances (1); waiting for running jobs to finish"
        );
        // Below max there is no reservation: small backfills, big gets an instance.
        if let Some(c) = s.compute_environments.get_mut("ce") {
            c.max_instances = 2;
        }
        let p = plan(&s, 10);
        assert_eq!(bound(&p), [("small", "n1")]);
        assert!(p.reserved.is_empty());
        assert_eq!(p.capacity["ce"].new_instances, 1);
    }

    #[test]
    fn too_large_job_gets_an_actionable_reason_and_no_instances() {
        let s = world(vec![], vec![("huge", job("q", 1000, 64, 0))]);
        let p = plan(&s, 0);
        assert_eq!(p.capacity["ce"].desired, 0);
        assert_eq!(
            p.unplaced[&JobId::new("huge")].to_string(),
            "needs 64Gi memory, largest instance of ce/ce has 16Gi"
        );
    }

    #[test]
    fn backoff_keeps_a_job_off_nodes_until_its_time() {
        let mut j = job("q", 1000, 1, 0);
        j.not_before = Some(130);
        let s = world(
            vec![("n1", node("ce", Resources::ZERO, Some(0)))],
            vec![("j", j)],
        );
        let p = plan(&s, 100);
        assert!(p.bindings.is_empty());
        assert_eq!(
            p.unplaced[&JobId::new("j")].to_string(),
            "retry backoff: runnable again in 30s"
        );
        assert_eq!(bound(&plan(&s, 130)), [("j", "n1")]);
    }

    #[test]
    fn min_instances_hold_without_demand_and_scale_in_respects_them() {
        let mut s = world(
            vec![
                ("n1", node("ce", Resources::ZERO, Some(0))),
                ("n2", node("ce", Resources::ZERO, Some(10))),
            ],
            vec![],
        );
        if let Some(c) = s.compute_environments.get_mut("ce") {
            c.min_instances = 1;
        }
        let p = plan(&s, 10_000);
        assert_eq!(p.drain, ["n1"]);
        assert_eq!(p.capacity["ce"].desired, 2, "draining nodes still exist");
    }

    #[test]
    fn draining_node_is_terminated_and_desired_drops_with_it() {
        let mut d = node("ce", Resources::ZERO, Some(0));
        d.phase = NodePhase::Draining;
        let s = world(vec![("d", d)], vec![]);
        let p = plan(&s, 10_000);
        assert_eq!(p.terminate, ["d"]);
        assert_eq!(p.capacity["ce"].desired, 0);
    }

    #[test]
    fn an_idle_node_that_receives_a_job_is_not_drained() {
        let s = world(
            vec![("n1", node("ce", Resources::ZERO, Some(0)))],
            vec![("j", job("q", 1000, 1, 0))],
        );
        let p = plan(&s, 10_000);
        assert_eq!(bound(&p), [("j", "n1")]);
        assert!(p.drain.is_empty());
    }

    #[test]
    fn merged_reasons_are_every_id_once_the_capacity_plans_reason_winning() {
        let r = |s: u64| Reason::Backoff { remaining: s };
        let first = vec![(JobId::new("a"), r(1)), (JobId::new("c"), r(2))];
        let then: BTreeMap<JobId, Reason> = [("b", r(3)), ("c", r(4)), ("d", r(5))]
            .into_iter()
            .map(|(i, x)| (JobId::new(i), x))
            .collect();
        let got: Vec<(String, Reason)> = merge_reasons(first, then)
            .into_iter()
            .map(|(i, x)| (i.0, x))
            .collect();
        let want: Vec<(String, Reason)> = [("a", r(1)), ("b", r(3)), ("c", r(4)), ("d", r(5))]
            .into_iter()
            .map(|(i, x)| (i.to_owned(), x))
            .collect();
        assert_eq!(got, want);
    }
}
