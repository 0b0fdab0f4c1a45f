//! Cost-aware scale-out for queues with a wait bound (`maxWaitSeconds`).
//!
//! A job of such a queue that fits no node now does not get an instance at once. The
//! [`forecast`](super::forecast) says when it would start on the nodes and booting
//! instances as they are; a job is **late** when that is after its deadline (when it
//! became runnable, plus the bound), or never. For the first late job (in scheduling
//! order) the planner tries one more instance of the first compute environment of its
//! queue that can hold it and grow, and forecasts again. It buys the instance when
//! - the forecast puts at least `bootSeconds` of instance-seconds of work on it (it
//!   pays for its boot: [`PAYBACK`]), or
//! - it lets a late job that is **due** start earlier (one that would miss its deadline
//!   unless an instance is launched now: `now + bootSeconds ≥ deadline`);
//!
//! otherwise the job waits (within its bound) for running work to finish or for more
//! work to make an instance pay, and [`Decision::review_at`] says when it falls due. It
//! repeats while late jobs remain and the environments can grow. With accurate
//! estimates, a bound at least `bootSeconds` and room below `maxInstances`, no job waits
//! longer than its bound (`properties.rs` checks it in the simulator).

use std::collections::{BTreeMap, BTreeSet};

use super::forecast::{Projection, Timeline, Waiting};
use super::model::{Job, Seconds, Snapshot, State};

/// A new instance pays when the forecast keeps it busy for at least this many times its
/// boot (in instance-seconds of work).
pub const PAYBACK: f64 = 1.0;

/// At most this many instances are added by one pass (each costs one forecast).
pub const MAX_NEW_PER_PASS: usize = 64;

/// [`Search::Bisect`] tries this many instances one at a time before doubling.
pub const LINEAR_FIRST: usize = 4;

/// The deadline of a job of a bounded queue: when it became runnable plus the bound.
pub fn deadline(snapshot: &Snapshot, job: &Job) -> Option<Seconds> {
    let bound = snapshot.queues.get(&job.queue)?.max_wait_seconds?;
    let since = job.submitted_at.max(job.not_before.unwrap_or(0));
    Some(since.saturating_add(bound))
}

/// What the cost-aware planner decided.
#[derive(Debug, Clone, Default)]
pub struct Decision {
    /// The forecast with the instances bought.
    pub projection: Projection,
    /// Instances bought per compute environment (beyond those `timeline` already has).
    pub extra: BTreeMap<String, u32>,
    /// The earliest time a job left waiting falls due (a pass should run by then).
    pub review_at: Option<Seconds>,
    /// Forecasts made (the cost of the decision).
    pub forecasts: u32,
}

/// How [`decide`] searches the number of instances to buy for a late job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Search {
    /// One instance at a time, a forecast for each (the first version; kept to compare).
    Linear,
    /// Doubling, then bisection (see [`decide`]).
    #[default]
    Bisect,
}

/// Decides the instances to buy for late jobs of bounded queues. `timeline` holds the
/// nodes, booting instances and the instances planned for unbounded queues; `headroom`
/// how many more each compute environment may launch. The instances bought are added
/// to `timeline`.
///
/// The number of instances of one environment is searched one at a time for the first
/// [`LINEAR_FIRST`], then by doubling and bisection: `k` instances are **still wanted** when, in the forecast
/// with `k` of them, the `k`-th pays for its boot and a late job that an instance
/// launched now could still serve in time (its deadline at least `bootSeconds` away,
/// its first environment that can grow the one grown) remains. Both parts tend to hold
/// for small `k` and fail for large: more instances start jobs earlier and share the
/// same work among more of them (identical bins, Ready at the same time, the last one
/// filled last). Where that does not hold exactly (a packing anomaly), the search still
/// buys only `k` with the `k`-th paying and a job still late without it. The instance
/// after the largest `k` wanted is then judged one by one, as [`Search::Linear`] does
/// (it pays, or it lets a due job start earlier), and where one fewer than the search
/// found leaves no such job late, one fewer is bought. So a pass that buys many costs
/// about `2 log2(instances)` forecasts instead of one per instance.
pub fn decide(
    snapshot: &Snapshot,
    timeline: &mut Timeline,
    waiting: &[Waiting<'_>],
    headroom: &BTreeMap<String, u32>,
    now: Seconds,
) -> Decision {
    decide_with(snapshot, timeline, waiting, headroom, now, Search::Bisect)
}

/// [`decide`] with an explicit [`Search`].
pub fn decide_with(
    snapshot: &Snapshot,
    timeline: &mut Timeline,
    waiting: &[Waiting<'_>],
    headroom: &BTreeMap<String, u32>,
    now: Seconds,
    search: Search,
) -> Decision {
    let deadlines: Vec<Option<Seconds>> = waiting
        .iter()
        .map(|(_, job, _)| deadline(snapshot, job))
        .collect();
    let boot = |ce: &str| {
        snapshot
            .compute_environments
            .get(ce)
            .map_or(0, |c| c.boot_seconds)
    };
    let mut out = Decision {
        projection: timeline.project(waiting, now),
        forecasts: 1,
        ..Decision::default()
    };
    let forecasts = std::cell::Cell::new(1u32);
    let is_late = |p: &Projection, i: usize| {
        deadlines[i].is_some_and(|d| p.starts[i].is_none_or(|s| s.at > d))
    };
    // The environment an instance would be bought in for a job (the first of its queue
    // that is Enabled and can hold it), ignoring headroom.
    let home = |job: &Job, ces: &'_ [String]| -> Option<usize> {
        ces.iter().position(|c| {
            snapshot
                .compute_environments
                .get(c)
                .is_some_and(|ce| ce.state == State::Enabled && job.resources.fits_in(&ce.shape))
        })
    };
    // Whether the instance at `bin` pays in `trial`, or lets a job that is due and late
    // in `base` start earlier.
    let accept = |trial: &Projection, base: &Projection, bin: usize, b: Seconds| {
        let pays = trial.work.get(bin).copied().unwrap_or(0.0) >= b as f64 * PAYBACK;
        pays || (0..waiting.len()).any(|k| {
            let due = deadlines[k].is_some_and(|d| now.saturating_add(b) >= d);
            let earlier = match (trial.starts[k], base.starts[k]) {
                (Some(t), Some(o)) => t.at < o.at,
                (Some(_), None) => true,
                _ => false,
            };
            due && is_late(base, k) && earlier
        })
    };
    let mut settled: BTreeSet<usize> = BTreeSet::new();
    // Environments where one more instance did not pay: another try in this pass would
    // forecast the same.
    let mut unpaying: BTreeSet<&str> = BTreeSet::new();
    let mut added = 0usize;
    while added < MAX_NEW_PER_PASS {
        let Some(i) =
            (0..waiting.len()).find(|i| !settled.contains(i) && is_late(&out.projection, *i))
        else {
            break;
        };
        settled.insert(i);
        let (_, job, ces) = waiting[i];
        let grow = ces.iter().find(|c| {
            snapshot.compute_environments.get(*c).is_some_and(|ce| {
                ce.state == State::Enabled
                    && job.resources.fits_in(&ce.shape)
                    && out.extra.get(*c).copied().unwrap_or(0)
                        < headroom.get(*c).copied().unwrap_or(0)
            })
        });
        let Some(ce) = grow else {
            continue;
        };
        if unpaying.contains(ce.as_str()) {
            continue;
        }
        let b = boot(ce);
        let base = timeline.bins.len();
        let room = headroom
            .get(ce)
            .copied()
            .unwrap_or(0)
            .saturating_sub(out.extra.get(ce).copied().unwrap_or(0));
        let cap = (room as usize).min(MAX_NEW_PER_PASS - added);
        // The forecast with `k` more instances of `ce` (the timeline then holds them).
        let mut with = |k: usize| -> Option<Projection> {
            timeline.bins.truncate(base);
            for _ in 0..k {
                timeline.add_new(snapshot, ce, now)?;
            }
            forecasts.set(forecasts.get() + 1);
            Some(timeline.project(waiting, now))
        };
        // Whether `k` instances are still wanted (see the function's documentation).
        let still_late = |p: &Projection| {
            (0..waiting.len()).any(|m| {
                let (_, j, cs) = waiting[m];
                is_late(p, m)
                    && deadlines[m].is_some_and(|d| d >= now.saturating_add(b))
                    && home(j, cs).and_then(|h| cs.get(h)) == Some(ce)
            })
        };
        let wanted = |p: &Projection, k: usize| {
            let pays = p
                .work
                .get(base + k - 1)
                .is_some_and(|w| *w >= b as f64 * PAYBACK);
            pays && still_late(p)
        };
        // `lo` instances are bought (their forecast `lo_p`); `next` is the forecast with
        // one more, judged on its own; `known` the numbers found wanted.
        let (mut lo, mut lo_p) = (0usize, None::<Projection>);
        let mut next: Option<Projection> = None;
        let mut known: BTreeSet<usize> = BTreeSet::new();
        match search {
            Search::Linear => next = with(1),
            Search::Bisect => {
                // The first few one at a time (most passes buy few: no overhead there).
                while lo < cap.min(LINEAR_FIRST) {
                    let Some(p) = with(lo + 1) else { break };
                    if wanted(&p, lo + 1) {
                        lo += 1;
                        lo_p = Some(p);
                        known.insert(lo);
                    } else {
                        next = Some(p);
                        break;
                    }
                }
                // Then doubling, then bisection.
                let mut hi: Option<(usize, Projection)> = None;
                let gallop = next.is_none() && lo == LINEAR_FIRST;
                while gallop && lo < cap {
                    let k = (lo * 2).min(cap);
                    let Some(p) = with(k) else { break };
                    if wanted(&p, k) {
                        lo = k;
                        lo_p = Some(p);
                        known.insert(lo);
                        if lo < cap {
                            continue;
                        }
                    } else {
                        hi = Some((k, p));
                    }
                    break;
                }
                while let Some((h, hp)) = hi.take() {
                    if h == lo + 1 {
                        next = Some(hp);
                        break;
                    }
                    let mid = lo + (h - lo) / 2;
                    let Some(p) = with(mid) else { break };
                    if wanted(&p, mid) {
                        lo = mid;
                        lo_p = Some(p);
                        known.insert(lo);
                        hi = Some((h, hp));
                    } else {
                        hi = Some((mid, p));
                    }
                }
            }
        }
        // The forecast is not always monotone in the number of instances (with more,
        // drain-friendly placement packs differently and a job may start later): where
        // one fewer than the search found already leaves no job late that an instance
        // could serve, and no more late jobs than one at a time would have tried by
        // then, it would have stopped there.
        let exhausted = |p: &Projection| {
            !still_late(p)
                && (0..waiting.len())
                    .filter(|m| !settled.contains(m) && is_late(p, *m))
                    .count()
                    <= lo.saturating_sub(2)
        };
        if lo >= 2
            && !known.contains(&(lo - 1))
            && let Some(p) = with(lo - 1).filter(|p| exhausted(p))
        {
            lo -= 1;
            lo_p = Some(p);
            next = None;
        }
        let mut bought = lo;
        if let Some(p) = lo_p {
            out.projection = p;
        }
        if let Some(p) = next.filter(|_| lo < cap) {
            if accept(&p, &out.projection, base + lo, b) {
                bought = lo + 1;
                out.projection = p;
            } else {
                unpaying.insert(ce.as_str());
            }
        }
        timeline.bins.truncate(base);
        for _ in 0..bought {
            let _ = timeline.add_new(snapshot, ce, now);
        }
        if bought > 0 {
            *out.extra.entry(ce.clone()).or_default() += u32::try_from(bought).unwrap_or(0);
            added += bought;
        }
        // One at a time, each instance is tried for a late job (the first in scheduling
        // order not tried yet), which is not tried again in the pass. The jobs still late
        // first in order are the ones those tries were for.
        let more: Vec<usize> = (0..waiting.len())
            .filter(|k| !settled.contains(k) && is_late(&out.projection, *k))
            .take(bought.saturating_sub(1))
            .collect();
        settled.extend(more);
    }
    out.forecasts = forecasts.get();
    // Late jobs left waiting fall due `bootSeconds` before their deadline.
    for (k, (_, _, ces)) in waiting.iter().enumerate() {
        let (Some(d), true) = (deadlines[k], is_late(&out.projection, k)) else {
            continue;
        };
        let b = ces.first().map_or(0, |c| boot(c));
        let due_at = d.saturating_sub(b);
        if due_at > now {
            out.review_at = Some(out.review_at.map_or(due_at, |r| r.min(due_at)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::scheduler::estimate::{Estimate, EstimateSource};
    use crate::scheduler::model::{
        Attempt, ComputeEnvironment, JobId, JobQueue, Node, NodePhase, Phase,
    };
    use crate::scheduler::resources::{GIB, Resources};
    use crate::scheduler::{Options, plan_with};

    /// One bounded queue on one environment of 4 cpu / 16 GiB instances: `running` jobs
    /// `(cpu quarters, seconds left)` on `nodes` Ready nodes, and waiting jobs
    /// `(cpu quarters, estimate, submitted)` at `now = 1000`.
    fn world(
        max: u32,
        booting: u32,
        bound: Seconds,
        nodes: usize,
        running: &[(u64, Seconds)],
        waiting: &[(u64, Seconds, Seconds)],
    ) -> Snapshot {
        let shape = Resources::new(4000, 16 * GIB, 0);
        let mut s = Snapshot::default();
        s.compute_environments.insert(
            "ce".into(),
            ComputeEnvironment {
                state: State::Enabled,
                shape,
                min_instances: 0,
                max_instances: max,
                booting,
                scale_in_after_idle_seconds: 60,
                boot_seconds: 120,
                booting_ready_at: vec![],
            },
        );
        s.queues.insert(
            "q".into(),
            JobQueue {
                priority: 1,
                state: State::Enabled,
                compute_environments: vec!["ce".into()],
                fair_share: None,
                max_wait_seconds: Some(bound),
            },
        );
        let est = |seconds| {
            Some(Estimate {
                seconds,
                source: EstimateSource::Expected,
            })
        };
        let mut allocated = vec![Resources::ZERO; nodes];
        for (k, (quarters, left)) in running.iter().enumerate() {
            if nodes == 0 {
                break;
            }
            let n = k % nodes;
            let need = Resources::new(1000 * quarters, 4 * GIB * quarters, 0);
            if !need.fits_in(&shape.saturating_sub(&allocated[n])) {
                continue;
            }
            allocated[n] = allocated[n].saturating_add(&need);
            let mut j = Job::runnable("q", need, 0);
            j.phase = Phase::Running;
            j.node = Some(format!("n{n:02}"));
            j.attempts = vec![Attempt {
                started_at: 900,
                stopped_at: None,
            }];
            j.estimate = est(100 + left);
            s.jobs.insert(JobId(format!("r{k:03}")), j);
        }
        for (n, a) in allocated.iter().enumerate() {
            s.nodes.insert(
                format!("n{n:02}"),
                Node {
                    compute_environment: "ce".into(),
                    capacity: shape,
                    allocated: *a,
                    jobs: u32::from(*a != Resources::ZERO),
                    phase: NodePhase::Ready,
                    idle_since: None,
                    terminable: false,
                },
            );
        }
        for (k, (quarters, seconds, submitted)) in waiting.iter().enumerate() {
            let mut j = Job::runnable(
                "q",
                Resources::new(1000 * quarters, 4 * GIB * quarters, 0),
                *submitted,
            );
            j.estimate = est(*seconds);
            s.jobs.insert(JobId(format!("w{k:03}")), j);
        }
        s
    }

    fn new_instances(s: &Snapshot, search: Search) -> u32 {
        let options = Options {
            scale_out_search: search,
            ..Options::default()
        };
        plan_with(s, 1000, &options)
            .capacity
            .get("ce")
            .map_or(0, |c| c.new_instances)
    }

    #[test]
    fn a_burst_buys_as_many_instances_as_one_at_a_time_with_fewer_forecasts() {
        // 60 one-cpu jobs of 10 minutes, due in 5 minutes, and no node: 15 instances.
        let waiting: Vec<_> = (0..60).map(|_| (1, 600, 1000)).collect();
        let s = world(100, 0, 300, 0, &[], &waiting);
        assert_eq!(new_instances(&s, Search::Linear), 15);
        assert_eq!(new_instances(&s, Search::Bisect), 15);
        // One forecast per instance one at a time; four, then doubling and bisection.
        let ids: Vec<JobId> = s.jobs.keys().cloned().collect();
        let ces = ["ce".to_string()];
        let list: Vec<Waiting<'_>> = ids.iter().map(|id| (id, &s.jobs[id], &ces[..])).collect();
        let headroom = BTreeMap::from([("ce".to_string(), 100)]);
        let forecasts = |search| {
            let mut t = Timeline::new(&s, 1000, &BTreeMap::new());
            let d = decide_with(&s, &mut t, &list, &headroom, 1000, search);
            (d.extra.get("ce").copied(), d.forecasts)
        };
        let (linear, bisect) = (forecasts(Search::Linear), forecasts(Search::Bisect));
        assert_eq!((linear.0, bisect.0), (Some(15), Some(15)));
        assert_eq!((linear.1, bisect.1), (16, 11));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// The bisection buys what the one-at-a-time search buys, or more where that
        /// search left a job forecast past its deadline that an instance launched now
        /// could serve in time (it gave up: each late job gets one try, and one whose
        /// instance went to others is not tried again in the pass), or where the
        /// forecast is not monotone in the number of instances: the one-at-a-time search
        /// stops at the first count that leaves no such job late, the bisection probes
        /// only some counts, and when a count above that one leaves one late again (a
        /// packing anomaly: 21 instances serve every job in time, 22 and 23 do not, 24
        /// do; or 14 and 15 do, and 16, the count its doubling probed, does not), it
        /// cannot see the smaller count and buys a larger. Any other difference is a
        /// search that buys instances nobody needs.
        #[test]
        fn bisection_buys_what_the_linear_search_buys(
            max in 0u32..40,
            booting in 0u32..3,
            bound in 0u64..1500,
            nodes in 0usize..6,
            running in prop::collection::vec((1u64..5, 0u64..1500), 0..12),
            waiting in prop::collection::vec((1u64..5, 30u64..2400, 0u64..1000), 0..80),
        ) {
            let s = world(max, booting, bound, nodes, &running, &waiting);
            // The waiting jobs in scheduling order (first come, first served).
            let mut ids: Vec<&JobId> = s
                .jobs
                .iter()
                .filter(|(_, j)| j.phase == Phase::Runnable)
                .map(|(id, _)| id)
                .collect();
            ids.sort_by_key(|id| (s.jobs[*id].submitted_at, (*id).clone()));
            let ces = ["ce".to_string()];
            let list: Vec<Waiting<'_>> = ids.iter().map(|id| (*id, &s.jobs[*id], &ces[..])).collect();
            let room = max.saturating_sub(u32::try_from(nodes).unwrap_or(0) + booting);
            let headroom = BTreeMap::from([("ce".to_string(), room)]);
            let now = 1000;
            let run = |search| {
                let mut t = Timeline::new(&s, now, &BTreeMap::new());
                decide_with(&s, &mut t, &list, &headroom, now, search)
            };
            let (linear, bisect) = (run(Search::Linear), run(Search::Bisect));
            let count = |d: &Decision| d.extra.get("ce").copied().unwrap_or(0);
            // Whether a forecast leaves a job late that an instance launched now could
            // still serve in time (its deadline at least a boot away).
            let leaves_late = |p: &Projection| {
                list.iter().zip(&p.starts).any(|((_, j, _), start)| {
                    deadline(&s, j).is_some_and(|d| {
                        d >= now + 120 && start.is_none_or(|t| t.at > d)
                    })
                })
            };
            let (l, b) = (count(&linear), count(&bisect));
            if b != l {
                prop_assert!(b > l, "bisection {} < linear {}", b, l);
                let anomaly = (l + 1..=room).any(|k| {
                    let mut t = Timeline::new(&s, now, &BTreeMap::new());
                    for _ in 0..k {
                        t.add_new(&s, "ce", now);
                    }
                    leaves_late(&t.project(&list, now))
                });
                prop_assert!(
                    leaves_late(&linear.projection) || anomaly,
                    "bisection {} > linear {}: linear left no job late and no count above \
                     it leaves one late either", b, l
                );
            }
        }
    }
}
