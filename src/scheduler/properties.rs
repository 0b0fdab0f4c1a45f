//! Property tests of [`plan`](super::plan) on random clusters and workloads.
//!
//! Every property is checked against the snapshot directly (not through the scheduler's
//! own helpers), so a bug in a helper cannot hide itself.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::resources::GIB;
use super::*;

#[derive(Debug, Clone)]
struct RawCe {
    cpu: u64,
    mem_gib: u64,
    gpus: u32,
    min: u32,
    extra: u32,
    booting: u32,
    disabled: bool,
    idle_after: Seconds,
}

#[derive(Debug, Clone)]
struct RawQueue {
    priority: i32,
    disabled: bool,
    ces: Vec<usize>,
    fair: Option<Seconds>,
    max_wait: Option<Seconds>,
}

#[derive(Debug, Clone)]
struct RawNode {
    ce: usize,
    phase: u8,
    used: Vec<u64>,
    idle_since: Option<Seconds>,
    terminable: bool,
}

#[derive(Debug, Clone)]
struct RawJob {
    queue: usize,
    cpu: u64,
    mem_gib: u64,
    gpus: u32,
    submitted: Seconds,
    phase: u8,
    node: usize,
    deps: Vec<(usize, u8)>,
    array: Option<(u8, u32)>,
    share: u8,
    not_before: Option<Seconds>,
}

fn raw_ce() -> impl Strategy<Value = RawCe> {
    (
        prop::sample::select(vec![2000u64, 4000, 8000]),
        prop::sample::select(vec![4u64, 8, 16, 32]),
        0u32..2,
        0u32..3,
        0u32..6,
        0u32..3,
        prop::bool::weighted(0.15),
        0u64..600,
    )
        .prop_map(
            |(cpu, mem_gib, gpus, min, extra, booting, disabled, idle_after)| RawCe {
                cpu,
                mem_gib,
                gpus,
                min,
                extra,
                booting,
                disabled,
                idle_after,
            },
        )
}

fn raw_queue() -> impl Strategy<Value = RawQueue> {
    (
        -2i32..3,
        prop::bool::weighted(0.1),
        prop::collection::vec(0usize..4, 0..3),
        prop::option::weighted(0.3, 0u64..3600),
        prop::option::weighted(0.3, 0u64..1800),
    )
        .prop_map(|(priority, disabled, ces, fair, max_wait)| RawQueue {
            priority,
            disabled,
            ces,
            fair,
            max_wait,
        })
}

fn raw_node() -> impl Strategy<Value = RawNode> {
    (
        0usize..4,
        0u8..6,
        prop::collection::vec(0u64..5, 0..3),
        prop::option::of(0u64..2000),
        any::<bool>(),
    )
        .prop_map(|(ce, phase, used, idle_since, terminable)| RawNode {
            ce,
            phase,
            used,
            idle_since,
            terminable,
        })
}

fn raw_job() -> impl Strategy<Value = RawJob> {
    (
        (
            0usize..4,
            0u64..5000,
            0u64..40,
            0u32..2,
            0u64..1000,
            0u8..7,
            0usize..16,
        ),
        prop::collection::vec((0usize..60, 0u8..3), 0..3),
        prop::option::weighted(0.3, (0u8..2, 0u32..4)),
        0u8..3,
        prop::option::weighted(0.1, 0u64..2000),
    )
        .prop_map(
            |(
                (queue, cpu, mem_gib, gpus, submitted, phase, node),
                deps,
                array,
                share,
                not_before,
            )| {
                RawJob {
                    queue,
                    cpu,
                    mem_gib,
                    gpus,
                    submitted,
                    phase,
                    node,
                    deps,
                    array,
                    share,
                    not_before,
                }
            },
        )
}

const PHASES: [Phase; 7] = [
    Phase::Submitted,
    Phase::Pending,
    Phase::Runnable,
    Phase::Starting,
    Phase::Running,
    Phase::Succeeded,
    Phase::Failed,
];

fn build(ces: &[RawCe], queues: &[RawQueue], nodes: &[RawNode], jobs: &[RawJob]) -> Snapshot {
    let mut s = Snapshot::default();
    for (i, c) in ces.iter().enumerate() {
        s.compute_environments.insert(
            format!("ce{i}"),
            ComputeEnvironment {
                state: if c.disabled {
                    State::Disabled
                } else {
                    State::Enabled
                },
                shape: Resources::new(c.cpu, c.mem_gib * GIB, c.gpus),
                min_instances: c.min,
                max_instances: c.min + c.extra,
                booting: c.booting,
                scale_in_after_idle_seconds: c.idle_after,
                boot_seconds: 120,
                booting_ready_at: vec![],
            },
        );
    }
    for (i, q) in queues.iter().enumerate() {
        s.queues.insert(
            format!("q{i}"),
            JobQueue {
                priority: q.priority,
                state: if q.disabled {
                    State::Disabled
                } else {
                    State::Enabled
                },
                // Index 3 may name a compute environment that does not exist.
                compute_environments: q.ces.iter().map(|c| format!("ce{c}")).collect(),
                fair_share: q.fair.map(|d| FairSharePolicy {
                    share_decay_seconds: d,
                    weight_factors: [("s0".to_string(), 0.5)].into(),
                }),
                max_wait_seconds: q.max_wait,
            },
        );
    }
    for (i, n) in nodes.iter().enumerate() {
        let ce_name = format!("ce{}", n.ce % ces.len().max(1));
        let cap = ces
            .get(n.ce % ces.len().max(1))
            .map_or(Resources::new(4000, 16 * GIB, 0), |c| {
                Resources::new(c.cpu, c.mem_gib * GIB, c.gpus)
            });
        // Allocations of whole quarters of the capacity; phase 5 over-commits on purpose
        // (a malformed snapshot must still never get worse).
        let quarters: u64 = n
            .used
            .iter()
            .sum::<u64>()
            .min(if n.phase == 5 { 5 } else { 4 });
        let allocated = Resources::new(
            cap.cpu_millis * quarters / 4,
            cap.memory_bytes * quarters / 4,
            0,
        );
        s.nodes.insert(
            format!("n{i}"),
            Node {
                compute_environment: ce_name,
                capacity: cap,
                allocated,
                jobs: u32::try_from(n.used.iter().filter(|u| **u > 0).count()).unwrap_or(0),
                phase: match n.phase {
                    3 => NodePhase::Draining,
                    4 => NodePhase::Lost,
                    _ => NodePhase::Ready,
                },
                idle_since: n.idle_since,
                terminable: n.terminable,
            },
        );
    }
    let node_names: Vec<String> = s.nodes.keys().cloned().collect();
    for (i, j) in jobs.iter().enumerate() {
        let phase = PHASES[usize::from(j.phase) % PHASES.len()];
        let mut job = Job::runnable(
            format!("q{}", j.queue),
            Resources::new(j.cpu, j.mem_gib * GIB / 2, j.gpus),
            j.submitted,
        );
        job.phase = phase;
        if phase.is_placed() && !node_names.is_empty() {
            job.node = Some(node_names[j.node % node_names.len()].clone());
        }
        job.depends_on = j
            .deps
            .iter()
            .map(|(d, k)| Dependency {
                job: if *d < 35 {
                    JobId(format!("j{}", d % jobs.len().max(1)))
                } else {
                    JobId(format!("arr{}", d % 2))
                },
                kind: match k {
                    0 => DependencyType::Standard,
                    1 => DependencyType::NToN,
                    _ => DependencyType::Sequential,
                },
            })
            .collect();
        job.share_identifier = Some(format!("s{}", j.share));
        job.not_before = j.not_before;
        let id = match j.array {
            Some((parent, index)) => {
                job.array = Some(ArrayChild {
                    parent: JobId(format!("arr{parent}")),
                    index,
                });
                JobId(format!("arr{parent}:{index}"))
            }
            None => JobId(format!("j{i}")),
        };
        s.jobs.insert(id, job);
    }
    s
}

fn world() -> impl Strategy<Value = (Snapshot, Seconds)> {
    (
        prop::collection::vec(raw_ce(), 1..4),
        prop::collection::vec(raw_queue(), 1..4),
        prop::collection::vec(raw_node(), 0..14),
        prop::collection::vec(raw_job(), 0..50),
        0u64..3000,
    )
        .prop_map(|(c, q, n, j, now)| (build(&c, &q, &n, &j), now))
}

/// Independent dependency check: has every dependency of `job` succeeded?
fn deps_met(s: &Snapshot, job: &Job) -> bool {
    let children = |parent: &JobId| -> Vec<&Job> {
        s.jobs
            .values()
            .filter(|j| j.array.as_ref().is_some_and(|a| &a.parent == parent))
            .collect()
    };
    let child = |parent: &JobId, index: u32| -> Option<&Job> {
        s.jobs.values().find(|j| {
            j.array
                .as_ref()
                .is_some_and(|a| &a.parent == parent && a.index == index)
        })
    };
    job.depends_on.iter().all(|d| {
        let succeeded = |j: Option<&Job>| j.is_some_and(|j| j.phase == Phase::Succeeded);
        match (d.kind, &job.array) {
            (DependencyType::Sequential, Some(a)) => {
                a.index == 0 || succeeded(child(&a.parent, a.index - 1))
            }
            (DependencyType::Sequential, None) => true,
            (DependencyType::NToN, Some(a)) if !children(&d.job).is_empty() => {
                succeeded(child(&d.job, a.index))
            }
            _ => {
                let kids = children(&d.job);
                if kids.is_empty() {
                    succeeded(s.jobs.get(&d.job))
                } else {
                    kids.iter().all(|k| k.phase == Phase::Succeeded)
                }
            }
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn no_node_is_over_committed((s, now) in world()) {
        let p = plan(&s, now);
        let mut added: BTreeMap<&str, Resources> = BTreeMap::new();
        for b in &p.bindings {
            let r = s.jobs[&b.job].resources;
            let e = added.entry(b.node.as_str()).or_default();
            *e = e.saturating_add(&r);
        }
        for (node, extra) in added {
            let n = &s.nodes[node];
            let total = n.allocated.saturating_add(&extra);
            prop_assert!(total.fits_in(&n.capacity), "{node}: {total} > {}", n.capacity);
        }
    }

    #[test]
    fn bindings_are_legal((s, now) in world()) {
        let p = plan(&s, now);
        let mut seen = BTreeSet::new();
        for b in &p.bindings {
            prop_assert!(seen.insert(&b.job), "{} bound twice", b.job);
            let job = &s.jobs[&b.job];
            let node = &s.nodes[&b.node];
            prop_assert!(job.phase.is_waiting(), "{} was {:?}", b.job, job.phase);
            prop_assert!(deps_met(&s, job), "{} bound with unmet dependencies", b.job);
            prop_assert_eq!(node.phase, NodePhase::Ready, "bound onto a {:?} node", node.phase);
            let q = &s.queues[&job.queue];
            prop_assert_eq!(q.state, State::Enabled);
            prop_assert!(q.compute_environments.contains(&node.compute_environment));
            prop_assert_eq!(s.compute_environments[&node.compute_environment].state, State::Enabled);
            prop_assert!(job.not_before.is_none_or(|t| t <= now), "bound during backoff");
        }
    }

    #[test]
    fn desired_capacity_is_within_min_and_max((s, now) in world()) {
        let p = plan(&s, now);
        for (name, ce) in &s.compute_environments {
            let d = &p.capacity[name];
            prop_assert!(
                (ce.min_instances..=ce.max_instances).contains(&d.desired),
                "{name}: desired {} outside [{}, {}]", d.desired, ce.min_instances, ce.max_instances
            );
            if ce.state == State::Disabled {
                prop_assert_eq!(d.new_instances, 0);
            }
        }
    }

    #[test]
    fn no_busy_node_is_terminated_or_drained((s, now) in world()) {
        let p = plan(&s, now);
        let bound_to: BTreeSet<&str> = p.bindings.iter().map(|b| b.node.as_str()).collect();
        for n in p.terminate.iter().chain(&p.drain) {
            let node = &s.nodes[n];
            prop_assert!(!node.is_busy(), "{n} holds a job");
            prop_assert!(!bound_to.contains(n.as_str()), "{n} just got a job");
        }
        for n in &p.terminate {
            prop_assert!(s.nodes[n].phase != NodePhase::Ready, "{n} terminated without draining");
            prop_assert!(s.nodes[n].terminable, "{n} terminated before its agent let it go");
        }
        for (name, ce) in &s.compute_environments {
            let ready = s.nodes.values()
                .filter(|n| &n.compute_environment == name && n.phase == NodePhase::Ready)
                .count();
            let drained = p.drain.iter()
                .filter(|n| &s.nodes[*n].compute_environment == name)
                .count();
            if drained > 0 {
                prop_assert!(ready - drained >= ce.min_instances as usize, "{name} drained below min");
            }
        }
    }

    #[test]
    fn reservations_only_where_nothing_can_grow((s, now) in world()) {
        let p = plan(&s, now);
        let mut per_ce = BTreeSet::new();
        for r in &p.reserved {
            let node = &s.nodes[&r.node];
            let ce = &s.compute_environments[&node.compute_environment];
            let count = s.nodes.values()
                .filter(|n| n.compute_environment == node.compute_environment)
                .count();
            // Or the job is due: its queue's bound runs out within a boot.
            let due = crate::scheduler::scaleout::deadline(&s, &s.jobs[&r.job])
                .is_some_and(|d| now + ce.boot_seconds >= d);
            prop_assert!(due || (ce.booting == 0 && count >= ce.max_instances as usize));
            prop_assert_eq!(node.phase, NodePhase::Ready);
            prop_assert!(due || per_ce.insert(&node.compute_environment), "two reservations in one CE");
            prop_assert!(p.unplaced.contains_key(&r.job));
        }
    }

    #[test]
    fn every_waiting_job_gets_exactly_one_outcome((s, now) in world()) {
        let p = plan(&s, now);
        let bound: BTreeSet<&JobId> = p.bindings.iter().map(|b| &b.job).collect();
        let failed: BTreeSet<&JobId> = p.dependency_failures.iter().map(|f| &f.job).collect();
        for (id, job) in &s.jobs {
            let outcomes = usize::from(bound.contains(id))
                + usize::from(failed.contains(id))
                + usize::from(p.unplaced.contains_key(id));
            if job.phase.is_waiting() {
                prop_assert_eq!(outcomes, 1, "{} has {} outcomes", id, outcomes);
            } else {
                prop_assert_eq!(outcomes, 0);
            }
        }
    }

    #[test]
    fn same_input_same_output((s, now) in world()) {
        let first = plan(&s, now);
        // Rebuild the maps in reverse insertion order: nothing may depend on it.
        let mut r = Snapshot::default();
        for (k, v) in s.jobs.iter().rev() { r.jobs.insert(k.clone(), v.clone()); }
        for (k, v) in s.nodes.iter().rev() { r.nodes.insert(k.clone(), v.clone()); }
        for (k, v) in s.queues.iter().rev() { r.queues.insert(k.clone(), v.clone()); }
        for (k, v) in s.compute_environments.iter().rev() {
            r.compute_environments.insert(k.clone(), v.clone());
        }
        prop_assert_eq!(&first, &plan(&r, now));
        prop_assert_eq!(&first, &plan(&s, now));
    }

    #[test]
    fn fifo_queues_order_by_priority_then_submission_then_id((s, now) in world()) {
        // Every job of a queue that exists, given in a shuffled (reversed) order.
        let candidates: Vec<JobId> = s
            .jobs
            .iter()
            .filter(|(_, j)| s.queues.contains_key(&j.queue))
            .map(|(id, _)| id.clone())
            .rev()
            .collect();
        let got = queue::order(&s, &candidates, now);
        prop_assert_eq!(got.len(), candidates.len());
        // Reference, for jobs of queues without fair share: priority (higher first),
        // queue name, submission time, id.
        let key = |id: &JobId| {
            let j = &s.jobs[id];
            let q = &s.queues[&j.queue];
            (std::cmp::Reverse(q.priority), j.queue.clone(), j.submitted_at, id.clone())
        };
        let fifo = |id: &&JobId| s.queues[&s.jobs[*id].queue].fair_share.is_none();
        let mut want: Vec<&JobId> = candidates.iter().filter(fifo).collect();
        want.sort_by_key(|id| key(id));
        let got_fifo: Vec<&JobId> = got.iter().filter(fifo).collect();
        prop_assert_eq!(got_fifo, want);
        // Queues stay contiguous, in priority order, fair-share ones included.
        let queues: Vec<&str> = got.iter().map(|id| s.jobs[id].queue.as_str()).collect();
        let mut runs = queues.clone();
        runs.dedup();
        let distinct: BTreeSet<&str> = queues.iter().copied().collect();
        prop_assert_eq!(runs.len(), distinct.len(), "a queue's jobs are not contiguous");
    }
}
