//! One full scheduling pass over 10,000 runnable jobs and 500 nodes, and the capacity
//! plan for the same input. Goals on the project's 2-core machine: < 50 ms per pass and
//! < 20 ms for the capacity plan.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use std::collections::BTreeMap;
use std::hint::black_box;

use asg_batch::scheduler::capacity::{self, Demand};
use asg_batch::scheduler::resources::GIB;
use asg_batch::scheduler::{
    ComputeEnvironment, Dependency, DependencyType, FairSharePolicy, Job, JobId, JobQueue, Node,
    NodePhase, Phase, Resources, Snapshot, State, plan,
};
use criterion::{Criterion, criterion_group, criterion_main};

/// Deterministic pseudo-random numbers (no seed file, no dependency).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

fn snapshot() -> Snapshot {
    let mut rng = Lcg(42);
    let mut s = Snapshot::default();
    let general = Resources::new(4000, 16 * GIB, 0);
    let big = Resources::new(16_000, 64 * GIB, 0);
    for (name, shape, max) in [("general", general, 1000), ("big", big, 300)] {
        s.compute_environments.insert(
            name.into(),
            ComputeEnvironment {
                state: State::Enabled,
                shape,
                min_instances: 0,
                max_instances: max,
                booting: 10,
                scale_in_after_idle_seconds: 300,
                boot_seconds: 120,
                booting_ready_at: vec![],
            },
        );
    }
    for (name, priority, fair) in [
        ("critical", 100, false),
        ("batch", 10, true),
        ("adhoc", 1, false),
    ] {
        s.queues.insert(
            name.into(),
            JobQueue {
                priority,
                state: State::Enabled,
                compute_environments: vec!["general".into(), "big".into()],
                fair_share: fair.then(|| FairSharePolicy {
                    share_decay_seconds: 3600,
                    weight_factors: BTreeMap::from([
                        ("team-a".into(), 0.5),
                        ("team-b".into(), 1.0),
                    ]),
                }),
                max_wait_seconds: None,
            },
        );
    }
    // 500 nodes: 400 general, 100 big, a quarter of them partly used, a few draining.
    for i in 0..500u64 {
        let (ce, shape) = if i < 400 {
            ("general", general)
        } else {
            ("big", big)
        };
        let used = rng.next(4);
        let allocated = Resources::new(
            shape.cpu_millis * used / 4,
            shape.memory_bytes * used / 4,
            0,
        );
        s.nodes.insert(
            format!("node-{i:04}"),
            Node {
                compute_environment: ce.into(),
                capacity: shape,
                allocated,
                jobs: u32::try_from(used).unwrap_or(0),
                phase: if i % 50 == 7 {
                    NodePhase::Draining
                } else {
                    NodePhase::Ready
                },
                idle_since: (used == 0).then_some(rng.next(1000)),
                terminable: true,
            },
        );
    }
    // 100 finished jobs some of the runnable ones depend on.
    for i in 0..100u64 {
        let mut j = Job::runnable("batch", Resources::new(1000, GIB, 0), i);
        j.phase = Phase::Succeeded;
        s.jobs.insert(JobId(format!("done-{i:03}")), j);
    }
    // 10,000 runnable jobs of mixed sizes across the three queues and two shares.
    for i in 0..10_000u64 {
        let queue = ["critical", "batch", "batch", "adhoc"][rng.next(4) as usize];
        let cpu = [250, 500, 1000, 2000, 4000][rng.next(5) as usize];
        let mem = [GIB / 2, GIB, 2 * GIB, 4 * GIB, 8 * GIB][rng.next(5) as usize];
        let mut j = Job::runnable(queue, Resources::new(cpu, mem, 0), 1000 + rng.next(5000));
        j.share_identifier = Some(if rng.next(10) < 9 { "team-a" } else { "team-b" }.into());
        if i % 10 == 0 {
            j.depends_on.push(Dependency {
                job: JobId(format!("done-{:03}", rng.next(100))),
                kind: DependencyType::Standard,
            });
        }
        s.jobs.insert(JobId(format!("job-{i:05}")), j);
    }
    s
}

fn bench(c: &mut Criterion) {
    let s = snapshot();
    let now = 10_000;
    let full = plan(&s, now);
    eprintln!(
        "input: {} jobs, {} nodes; one pass binds {}, leaves {} unplaced, desired {:?}",
        s.jobs.len(),
        s.nodes.len(),
        full.bindings.len(),
        full.unplaced.len(),
        full.capacity
            .iter()
            .map(|(k, v)| (k.as_str(), v.desired))
            .collect::<Vec<_>>()
    );
    c.bench_function("plan: 10k runnable jobs, 500 nodes", |b| {
        b.iter(|| plan(black_box(&s), black_box(now)));
    });

    // The stages of a pass, to see where the time goes.
    c.bench_function("stage: dependencies", |b| {
        b.iter(|| asg_batch::scheduler::deps::evaluate(black_box(&s)));
    });
    let runnable: Vec<JobId> = s
        .jobs
        .iter()
        .filter(|(_, j)| j.phase == Phase::Runnable)
        .map(|(id, _)| id.clone())
        .collect();
    c.bench_function("stage: queue order", |b| {
        b.iter(|| asg_batch::scheduler::queue::order(black_box(&s), black_box(&runnable), now));
    });
    let ordered = asg_batch::scheduler::queue::order(&s, &runnable, now);
    c.bench_function("stage: best-fit placement", |b| {
        b.iter(|| {
            let mut pool = asg_batch::scheduler::packing::NodePool::from_snapshot(black_box(&s));
            let mut placed = 0usize;
            for id in &ordered {
                let j = &s.jobs[id];
                if pool
                    .place(&s.queues[&j.queue].compute_environments, &j.resources)
                    .is_some()
                {
                    placed += 1;
                }
            }
            placed
        });
    });

    // The capacity plan alone, for the demand the pass above left unplaced.
    let bound: std::collections::BTreeSet<&JobId> = full.bindings.iter().map(|b| &b.job).collect();
    let demand: Vec<Demand<'_>> = s
        .jobs
        .iter()
        .filter(|(id, j)| j.phase == Phase::Runnable && !bound.contains(id))
        .filter_map(|(id, j)| {
            s.queues.get(&j.queue).map(|q| Demand {
                job: id,
                resources: j.resources,
                compute_environments: &q.compute_environments,
            })
        })
        .collect();
    eprintln!("capacity input: {} demanded jobs", demand.len());
    c.bench_function("capacity plan: same input", |b| {
        b.iter(|| capacity::plan(black_box(&s), black_box(&demand)));
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
