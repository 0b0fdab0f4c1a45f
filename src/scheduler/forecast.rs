//! The scheduler's own forecast: when each waiting job will start, given the work running
//! on every node, the instances booting, the instances this pass buys, and the duration
//! estimates ([`super::estimate`]).
//!
//! A [`Timeline`] holds one bin per Ready node of an Enabled compute environment (its free
//! room now, and the room each running job gives back at its estimated end), one per
//! booting instance (empty from its expected Ready time) and one per instance bought in
//! this pass (empty from `now + bootSeconds`). [`Timeline::project`] replays the
//! controller's coming passes as if every estimate held: at each instant a job ends or
//! an instance becomes Ready, the waiting jobs in scheduling order go where the
//! placement would put them (the first compute environment of their queue with room;
//! there the bin whose work ends latest, best fit among equals). So with exact estimates
//! and no new arrivals, the forecast start is the real start. A job larger than every
//! bin never starts.
//!
//! Pure and deterministic, like the rest of the scheduler: time is an input.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use super::estimate::Estimate;
use super::model::{Job, JobId, NodePhase, Seconds, Snapshot, State};
use super::resources::Resources;

/// At most this many waiting jobs are projected in one pass (in scheduling order); the
/// rest get a queue position but no estimated start.
pub const MAX_PROJECTED: usize = 1000;

/// The estimate of a job, or [`Estimate::DEFAULT`].
pub fn estimate_of(job: &Job) -> Estimate {
    job.estimate.unwrap_or(Estimate::DEFAULT)
}

/// When a placed job is expected to end: its current attempt's start (now while it is
/// Starting) plus its estimate; a job past its estimate is expected to end any moment.
pub fn expected_end(job: &Job, now: Seconds) -> Seconds {
    let started = job
        .attempts
        .iter()
        .rev()
        .find(|a| a.stopped_at.is_none())
        .map_or(now, |a| a.started_at.min(now));
    started
        .saturating_add(estimate_of(job).seconds)
        .max(now.saturating_add(1))
}

/// What kind of capacity a bin is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum BinKind {
    /// A Ready node.
    Node,
    /// An instance launched before this pass, not yet a node.
    Booting,
    /// An instance this pass would launch.
    New,
}

/// One instance: its free room now and the room its jobs give back as they end.
#[derive(Debug, Clone)]
pub struct Bin {
    /// Compute environment.
    pub compute_environment: String,
    /// Node name (Ready nodes only).
    pub node: Option<String>,
    /// Node, booting or new.
    pub kind: BinKind,
    /// Its resources when empty.
    pub capacity: Resources,
    /// When it takes jobs (now for a node; the expected Ready time otherwise).
    ready_at: Seconds,
    /// Free room at the start of the forecast.
    free: Resources,
    /// `(end, resources)` of the jobs on it at the start of the forecast.
    releases: Vec<(Seconds, Resources)>,
    /// When its work is expected to end (0: none), for drain-friendly placement.
    ends: Seconds,
}

impl Bin {
    fn empty(
        compute_environment: &str,
        kind: BinKind,
        capacity: Resources,
        ready_at: Seconds,
    ) -> Bin {
        Bin {
            compute_environment: compute_environment.to_owned(),
            node: None,
            kind,
            capacity,
            ready_at,
            free: capacity,
            releases: Vec::new(),
            ends: 0,
        }
    }
}

/// The capacity of every compute environment over time, before the waiting jobs.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    /// The bins: nodes in name order, then booting instances, then new ones.
    pub bins: Vec<Bin>,
    /// Place as [`super::packing::NodePool::place_until`] does (latest end first);
    /// otherwise best fit alone, as `place`.
    pub drain_friendly: bool,
    /// Wait bound per queue (`maxWaitSeconds`): a job within a boot of its deadline that
    /// fits nowhere holds the bin closest to fitting it, as the placement does.
    pub max_wait: BTreeMap<String, Seconds>,
    /// `bootSeconds` per compute environment.
    pub boot: BTreeMap<String, Seconds>,
}

/// Where and when one waiting job is expected to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    /// Estimated start time.
    pub at: Seconds,
    /// Index of its bin in [`Timeline::bins`].
    pub bin: usize,
}

/// The result of [`Timeline::project`].
#[derive(Debug, Clone, Default)]
pub struct Projection {
    /// Per projected job (same order as given): its start, `None` when it never starts.
    pub starts: Vec<Option<Start>>,
    /// Per bin: instance-seconds of work the projected jobs put on it (each job's
    /// estimate × its share of the instance in its largest dimension).
    pub work: Vec<f64>,
}

/// A job to project: its id, the job and its queue's compute environments.
pub type Waiting<'a> = (&'a JobId, &'a Job, &'a [String]);

/// Waiting jobs `next..end` (positions in the projected list) of [`Timeline::project`]:
/// alike jobs, or a single job.
#[derive(Debug, Clone, Copy)]
struct Run {
    /// The first not yet started.
    next: usize,
    /// Past the last.
    end: usize,
    /// Whether more alike jobs may join it (see [`Timeline::project`]).
    alike: bool,
}

impl Timeline {
    /// The Ready nodes of Enabled compute environments (with the work placed on them,
    /// including `bound_now`: the bindings of this pass) and the booting instances.
    pub fn new(snapshot: &Snapshot, now: Seconds, bound_now: &BTreeMap<&JobId, &str>) -> Self {
        let enabled = |ce: &str| {
            snapshot
                .compute_environments
                .get(ce)
                .is_some_and(|c| c.state == State::Enabled)
        };
        let mut index: BTreeMap<&str, usize> = BTreeMap::new();
        let mut bins = Vec::new();
        for (name, node) in &snapshot.nodes {
            if node.phase != NodePhase::Ready || !enabled(&node.compute_environment) {
                continue;
            }
            index.insert(name.as_str(), bins.len());
            let mut b = Bin::empty(&node.compute_environment, BinKind::Node, node.capacity, now);
            b.node = Some(name.clone());
            b.free = node.free();
            bins.push(b);
        }
        for (id, job) in &snapshot.jobs {
            let (node, end) = match bound_now.get(id) {
                Some(n) => (
                    Some(*n),
                    now.saturating_add(estimate_of(job).seconds.max(1)),
                ),
                None if job.phase.is_placed() => (job.node.as_deref(), expected_end(job, now)),
                None => (None, 0),
            };
            let Some(b) = node
                .and_then(|n| index.get(n))
                .and_then(|i| bins.get_mut(*i))
            else {
                continue;
            };
            if bound_now.contains_key(id) {
                b.free = b.free.saturating_sub(&job.resources);
            }
            b.releases.push((end, job.resources));
            b.ends = b.ends.max(end);
        }
        for (name, ce) in &snapshot.compute_environments {
            if ce.state != State::Enabled {
                continue;
            }
            let mut ready: Vec<Seconds> =
                ce.booting_ready_at.iter().map(|t| (*t).max(now)).collect();
            ready.sort_unstable();
            ready.truncate(ce.booting as usize);
            while ready.len() < ce.booting as usize {
                ready.push(now.saturating_add(ce.boot_seconds));
            }
            for at in ready {
                bins.push(Bin::empty(name, BinKind::Booting, ce.shape, at));
            }
        }
        Timeline {
            bins,
            drain_friendly: true,
            max_wait: snapshot
                .queues
                .iter()
                .filter_map(|(n, q)| Some((n.clone(), q.max_wait_seconds?)))
                .collect(),
            boot: snapshot
                .compute_environments
                .iter()
                .map(|(n, c)| (n.clone(), c.boot_seconds))
                .collect(),
        }
    }

    /// Adds an instance of `compute_environment` launched now; returns its index.
    pub fn add_new(
        &mut self,
        snapshot: &Snapshot,
        compute_environment: &str,
        now: Seconds,
    ) -> Option<usize> {
        let ce = snapshot.compute_environments.get(compute_environment)?;
        self.bins.push(Bin::empty(
            compute_environment,
            BinKind::New,
            ce.shape,
            now.saturating_add(ce.boot_seconds),
        ));
        Some(self.bins.len() - 1)
    }

    /// Removes the bin at `index` (the last one added).
    pub fn remove(&mut self, index: usize) {
        if index < self.bins.len() {
            self.bins.remove(index);
        }
    }

    /// Replays the controller's passes over `jobs` (in scheduling order) as if every
    /// estimate held: at each instant something ends or becomes Ready, the waiting jobs in
    /// order go to the first compute environment of their queue with a bin that has
    /// room, and there to the bin the placement rule picks.
    ///
    /// Consecutive jobs that are alike (the same environment list and resources, no
    /// `not_before` after `now`, a queue with no wait bound) are kept as one run: within
    /// an instant, once one of them finds no bin the rest of the run find none either
    /// (nothing happens between them, and free room only shrinks and held bins only
    /// grow), and trying them changes nothing, so the run is passed over at once. An
    /// instant then costs the runs plus the jobs that start there, not every waiting
    /// job: a 1,000-job backlog of one class behind one busy instance (~1,000 instants)
    /// was ~500,000 job visits per projection, now ~2,000. The starts and work are those
    /// of the job-by-job replay (property test `runs_project_as_job_by_job`).
    pub fn project(&self, jobs: &[Waiting<'_>], now: Seconds) -> Projection {
        let mut free: Vec<Resources> = self.bins.iter().map(|b| b.free).collect();
        let mut ends: Vec<Seconds> = self.bins.iter().map(|b| b.ends).collect();
        // Future events: (time, bin, room given back); a bin's Ready time is an event too.
        let mut events: BinaryHeap<Reverse<(Seconds, usize, Resources)>> = BinaryHeap::new();
        for (i, b) in self.bins.iter().enumerate() {
            for (t, r) in &b.releases {
                events.push(Reverse(((*t).max(now), i, *r)));
            }
            if b.ready_at > now {
                events.push(Reverse((b.ready_at, i, Resources::ZERO)));
            }
        }
        let mut by_ce: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, b) in self.bins.iter().enumerate() {
            by_ce
                .entry(b.compute_environment.as_str())
                .or_default()
                .push(i);
        }
        let mut out = Projection {
            starts: vec![None; jobs.len()],
            work: vec![0.0; self.bins.len()],
        };
        // Each job's environment list as a small number: the same list (by address: jobs
        // of one queue share their queue's) the same number, so that the per-instant
        // checks below compare integers, not lists of names (with a 1,000-job backlog
        // every instant went over every waiting job: the name comparisons were a third
        // of a pass in dev beside a 50,000-job backlog). Lists equal by value but not by
        // address get different numbers: those checks only spare work, so they spare
        // less, and decide the same.
        let mut lists: HashMap<(*const String, usize), usize> = HashMap::new();
        let list_of: Vec<usize> = jobs
            .iter()
            .map(|(_, _, ces)| {
                let next = lists.len();
                *lists.entry((ces.as_ptr(), ces.len())).or_insert(next)
            })
            .collect();
        let mut waiting = self.runs(jobs, &list_of, now);
        let mut t = now;
        loop {
            while let Some(Reverse((at, i, r))) = events.peek().copied() {
                if at > t {
                    break;
                }
                events.pop();
                free[i] = min_each(&free[i].saturating_add(&r), &self.bins[i].capacity);
            }
            let mut next_not_before: Option<Seconds> = None;
            // Bins held at this instant by due jobs (a flag per bin: a due job holds every
            // bin of its environments, and each later job checks each bin), and the
            // `(environments, need)` already held for: a smaller need of the same
            // environments held a superset of bins.
            let mut held: Vec<bool> = vec![false; self.bins.len()];
            let mut held_for: Vec<(usize, Resources)> = Vec::new();
            // Upper bound of the free room of the bins Ready at `t` (it only shrinks
            // while jobs are placed at this instant), and needs that found no bin at
            // this instant: a job of the same environments needing at least as much in
            // every dimension finds none either. Both spare a scan of every bin for each waiting job once the
            // cluster is full.
            let mut room = Resources::ZERO;
            for (i, b) in self.bins.iter().enumerate() {
                if b.ready_at <= t {
                    room = max_each(&room, &free[i]);
                }
            }
            let mut failed: Vec<(usize, Resources)> = Vec::new();
            // Whether job `k` starts at `t` (and if so, puts it on its bin).
            let mut start = |k: usize| -> bool {
                let (_, job, ces) = jobs[k];
                let list = list_of[k];
                if let Some(nb) = job.not_before.filter(|nb| *nb > t) {
                    next_not_before = Some(next_not_before.map_or(nb, |x| x.min(nb)));
                    return false;
                }
                let hopeless = !job.resources.fits_in(&room)
                    || failed
                        .iter()
                        .any(|(c, f)| *c == list && f.fits_in(&job.resources));
                let picked = if hopeless {
                    None
                } else {
                    self.pick(&by_ce, ces, &job.resources, &free, &ends, &held, t)
                };
                let Some(i) = picked else {
                    // Within an instant free room only shrinks and held bins only grow,
                    // so a need that found no bin finds none later in the instant.
                    if !hopeless && failed.len() < MAX_FAILED_NEEDS {
                        failed.push((list, job.resources));
                    }
                    if self.due(job, ces, t)
                        && !held_for
                            .iter()
                            .any(|(c, n)| *c == list && n.fits_in(&job.resources))
                    {
                        self.hold(&by_ce, ces, &job.resources, &mut held);
                        if held_for.len() < MAX_FAILED_NEEDS {
                            held_for.push((list, job.resources));
                        }
                    }
                    return false;
                };
                let d = estimate_of(job).seconds.max(1);
                free[i] = free[i].saturating_sub(&job.resources);
                let end = t.saturating_add(d);
                ends[i] = ends[i].max(end);
                events.push(Reverse((end, i, job.resources)));
                out.starts[k] = Some(Start { at: t, bin: i });
                out.work[i] += d as f64 * share(&job.resources, &self.bins[i].capacity);
                true
            };
            // A run's members start in order until one does not; the rest of the run
            // would not either (see above), and are passed over.
            waiting.retain_mut(|run| {
                while run.next < run.end && start(run.next) {
                    run.next += 1;
                }
                run.next < run.end
            });
            if waiting.is_empty() {
                break;
            }
            let next = match (
                events.peek().map(|Reverse((at, _, _))| *at),
                next_not_before,
            ) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => break,
            };
            t = next.max(t.saturating_add(1));
        }
        out
    }

    /// `jobs` as runs of alike jobs (see [`Timeline::project`]); every other job a run of
    /// its own.
    fn runs(&self, jobs: &[Waiting<'_>], list_of: &[usize], now: Seconds) -> Vec<Run> {
        let mut runs: Vec<Run> = Vec::new();
        for (k, (_, job, _)) in jobs.iter().enumerate() {
            // Never skipped for a `not_before` (t ≥ now) and never due.
            let plain = job.not_before.is_none_or(|nb| nb <= now)
                && !self.max_wait.contains_key(&job.queue);
            let extends = plain
                && runs.last().is_some_and(|r: &Run| {
                    r.alike
                        && r.end == k
                        && list_of.get(r.next) == list_of.get(k)
                        && jobs.get(r.next).map(|w| w.1.resources) == Some(job.resources)
                });
            match runs.last_mut() {
                Some(r) if extends => r.end = k + 1,
                _ => runs.push(Run {
                    next: k,
                    end: k + 1,
                    alike: plain,
                }),
            }
        }
        runs
    }

    /// Whether `job` is within a boot of its queue's wait bound at `t` (see
    /// [`super::scaleout::deadline`]).
    fn due(&self, job: &Job, ces: &[String], t: Seconds) -> bool {
        let Some(bound) = self.max_wait.get(&job.queue) else {
            return false;
        };
        let boot = ces
            .first()
            .and_then(|c| self.boot.get(c))
            .copied()
            .unwrap_or(0);
        let deadline = job
            .submitted_at
            .max(job.not_before.unwrap_or(0))
            .saturating_add(*bound);
        t.saturating_add(boot) >= deadline
    }

    /// Holds, for a due job that fits nowhere, every bin of its compute environments
    /// that could take it, as the placement does: no later job goes there at this
    /// instant.
    fn hold(
        &self,
        by_ce: &BTreeMap<&str, Vec<usize>>,
        ces: &[String],
        need: &Resources,
        held: &mut [bool],
    ) {
        for ce in ces {
            for &i in by_ce.get(ce.as_str()).map_or(&[][..], Vec::as_slice) {
                if need.fits_in(&self.bins[i].capacity)
                    && let Some(h) = held.get_mut(i)
                {
                    *h = true;
                }
            }
        }
    }

    /// The bin a job needing `need` goes to at `t`, as the controller would place it.
    #[allow(clippy::too_many_arguments)]
    fn pick(
        &self,
        by_ce: &BTreeMap<&str, Vec<usize>>,
        ces: &[String],
        need: &Resources,
        free: &[Resources],
        ends: &[Seconds],
        held: &[bool],
        t: Seconds,
    ) -> Option<usize> {
        for ce in ces {
            let Some(list) = by_ce.get(ce.as_str()) else {
                continue;
            };
            let mut best: Option<(Seconds, f64, usize)> = None;
            for &i in list {
                let b = &self.bins[i];
                if b.ready_at > t
                    || !need.fits_in(&free[i])
                    || held.get(i).copied().unwrap_or(false)
                {
                    continue;
                }
                let left = free[i].saturating_sub(need);
                let score = share_sum(&left, &b.capacity);
                let e = if self.drain_friendly { ends[i] } else { 0 };
                if best.is_none_or(|(be, bs, _)| e > be || (e == be && score < bs)) {
                    best = Some((e, score, i));
                }
            }
            if let Some((_, _, i)) = best {
                return Some(i);
            }
        }
        None
    }
}

/// Sum over dimensions of `left ÷ capacity` (the best-fit score of the placement).
fn share_sum(left: &Resources, capacity: &Resources) -> f64 {
    let part = |n: u64, c: u64| if c == 0 { 0.0 } else { n as f64 / c as f64 };
    part(left.cpu_millis, capacity.cpu_millis)
        + part(left.memory_bytes, capacity.memory_bytes)
        + part(u64::from(left.gpus), u64::from(capacity.gpus))
}

/// A queue estimate is rewritten only when it moves this much: the position falls to a
/// [`POSITION_FACTOR`]th or grows by that factor (or changes while either is at most
/// [`EXACT_POSITIONS`]), or the estimated start moves by more than the larger of
/// [`ETA_SLACK_SECONDS`] and half the wait it predicted. So a job waiting behind `n`
/// others is written about `log4(n) + 5` times rather than `n` times. (Halving, the first
/// rule, cost 1.5 writes per job beyond its phase changes in a 5,000-job run, a fifth of
/// the run's API requests.)
pub fn material_change(
    old: Option<(u32, Option<Seconds>)>,
    new: (u32, Option<Seconds>),
    now: Seconds,
) -> bool {
    let Some((old_pos, old_eta)) = old else {
        return true;
    };
    let (pos, eta) = new;
    let position_moved = pos != old_pos
        && (pos.min(old_pos) <= EXACT_POSITIONS
            || pos.saturating_mul(POSITION_FACTOR) <= old_pos
            || old_pos.saturating_mul(POSITION_FACTOR) <= pos);
    let eta_moved = match (old_eta, eta) {
        (Some(a), Some(b)) => {
            let slack = ETA_SLACK_SECONDS.max(a.saturating_sub(now) / 2);
            a.abs_diff(b) > slack
        }
        (None, None) => false,
        _ => true,
    };
    position_moved || eta_moved
}

/// Positions up to this are kept exact (see [`material_change`]).
pub const EXACT_POSITIONS: u32 = 5;

/// Beyond [`EXACT_POSITIONS`], a position is rewritten when it moves by this factor.
pub const POSITION_FACTOR: u32 = 4;

/// Estimated starts within this of the written one are not rewritten.
pub const ETA_SLACK_SECONDS: Seconds = 120;

/// Needs remembered per instant by [`Timeline::project`] as finding no bin.
const MAX_FAILED_NEEDS: usize = 16;

fn max_each(a: &Resources, b: &Resources) -> Resources {
    Resources::new(
        a.cpu_millis.max(b.cpu_millis),
        a.memory_bytes.max(b.memory_bytes),
        a.gpus.max(b.gpus),
    )
}

fn min_each(a: &Resources, b: &Resources) -> Resources {
    Resources::new(
        a.cpu_millis.min(b.cpu_millis),
        a.memory_bytes.min(b.memory_bytes),
        a.gpus.min(b.gpus),
    )
}

/// The largest share of `capacity` that `need` takes in any dimension (0–1).
pub fn share(need: &Resources, capacity: &Resources) -> f64 {
    let part = |n: u64, c: u64| if c == 0 { 0.0 } else { n as f64 / c as f64 };
    part(need.cpu_millis, capacity.cpu_millis)
        .max(part(need.memory_bytes, capacity.memory_bytes))
        .max(part(u64::from(need.gpus), u64::from(capacity.gpus)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::estimate::EstimateSource;
    use crate::scheduler::model::{Attempt, ComputeEnvironment, Node, Phase};
    use crate::scheduler::resources::GIB;
    use proptest::prelude::*;

    fn est(seconds: Seconds) -> Option<Estimate> {
        Some(Estimate {
            seconds,
            source: EstimateSource::Expected,
        })
    }

    fn world() -> Snapshot {
        let mut s = Snapshot::default();
        s.compute_environments.insert(
            "ce".into(),
            ComputeEnvironment {
                state: State::Enabled,
                shape: Resources::new(4000, 16 * GIB, 0),
                min_instances: 0,
                max_instances: 10,
                booting: 0,
                scale_in_after_idle_seconds: 60,
                boot_seconds: 100,
                booting_ready_at: vec![],
            },
        );
        s
    }

    #[test]
    fn a_waiting_job_starts_when_running_work_ends_or_an_instance_boots() {
        let mut s = world();
        s.nodes.insert(
            "n1".into(),
            Node {
                compute_environment: "ce".into(),
                capacity: Resources::new(4000, 16 * GIB, 0),
                allocated: Resources::new(4000, GIB, 0),
                jobs: 1,
                phase: NodePhase::Ready,
                idle_since: None,
                terminable: false,
            },
        );
        let mut running = Job::runnable("q", Resources::new(4000, GIB, 0), 0);
        running.phase = Phase::Running;
        running.node = Some("n1".into());
        running.attempts = vec![Attempt {
            started_at: 40,
            stopped_at: None,
        }];
        running.estimate = est(100);
        s.jobs.insert(JobId::new("r"), running);
        let mut w = Job::runnable("q", Resources::new(2000, GIB, 0), 50);
        w.estimate = est(30);
        let id = JobId::new("w");
        let ces = vec!["ce".to_string()];
        let t = Timeline::new(&s, 50, &BTreeMap::new());
        // Two 2-cpu jobs: both start at 140 when the running job ends (40 + 100).
        let p = t.project(&[(&id, &w, &ces), (&id, &w, &ces)], 50);
        assert_eq!(
            p.starts.iter().map(|s| s.map(|s| s.at)).collect::<Vec<_>>(),
            [Some(140), Some(140)]
        );
        // A third waits for one of them: 170.
        let p = t.project(&[(&id, &w, &ces), (&id, &w, &ces), (&id, &w, &ces)], 50);
        assert_eq!(p.starts[2].map(|s| s.at), Some(170));
        // An instance bought now is Ready at 150: the third starts there, earlier.
        let mut t2 = t.clone();
        let new = t2.add_new(&s, "ce", 50);
        let p = t2.project(&[(&id, &w, &ces), (&id, &w, &ces), (&id, &w, &ces)], 50);
        assert_eq!(p.starts[2], new.map(|bin| Start { at: 150, bin }));
        // 30 s of half an instance: 15 instance-seconds of work on it.
        assert_eq!(new.map(|b| p.work[b]), Some(15.0));
    }

    #[test]
    fn only_material_moves_are_rewritten() {
        assert!(material_change(None, (40, Some(500)), 0));
        // 40 → 39 or → 20 behind the same estimate: not worth a write; 40 → 10 is, and
        // so is 40 → 160 (jobs of a higher priority came in ahead).
        assert!(!material_change(
            Some((40, Some(500))),
            (39, Some(520)),
            100
        ));
        assert!(!material_change(
            Some((40, Some(500))),
            (20, Some(500)),
            100
        ));
        assert!(material_change(Some((40, Some(500))), (10, Some(500)), 100));
        assert!(!material_change(
            Some((40, Some(500))),
            (159, Some(500)),
            100
        ));
        assert!(material_change(
            Some((40, Some(500))),
            (160, Some(500)),
            100
        ));
        // Near the head every move counts.
        assert!(material_change(Some((6, Some(500))), (5, Some(500)), 100));
        // An estimate 400 s away moving by 150 s: within half the wait, kept.
        assert!(!material_change(Some((9, Some(500))), (9, Some(650)), 100));
        // Moving by 250 s is material; so is losing the estimate.
        assert!(material_change(Some((9, Some(500))), (9, Some(750)), 100));
        assert!(material_change(Some((9, Some(500))), (9, None), 100));
    }

    #[test]
    fn backfill_uses_a_gap_only_when_the_job_fits_in_it() {
        let mut s = world();
        if let Some(c) = s.compute_environments.get_mut("ce") {
            c.booting = 1;
        }
        let t = Timeline::new(&s, 0, &BTreeMap::new());
        let ces = vec!["ce".to_string()];
        let id = JobId::new("x");
        let mut big = Job::runnable("q", Resources::new(4000, GIB, 0), 0);
        big.estimate = est(500);
        let mut small = Job::runnable("q", Resources::new(4000, GIB, 0), 0);
        small.estimate = est(50);
        // The booting instance is Ready at 100; big holds it 100..600, small follows.
        let p = t.project(&[(&id, &big, &ces), (&id, &small, &ces)], 0);
        assert_eq!(p.starts[0].map(|s| s.at), Some(100));
        assert_eq!(p.starts[1].map(|s| s.at), Some(600));
        // Too large for the shape: never starts.
        let huge = Job::runnable("q", Resources::new(8000, GIB, 0), 0);
        assert_eq!(t.project(&[(&id, &huge, &ces)], 0).starts[0], None);
    }

    /// The job-by-job replay [`Timeline::project`] did before it kept alike jobs as runs
    /// (commit d1211a4): every waiting job visited at every instant. The reference of
    /// `runs_project_as_job_by_job`.
    fn project_reference(tl: &Timeline, jobs: &[Waiting<'_>], now: Seconds) -> Projection {
        let mut free: Vec<Resources> = tl.bins.iter().map(|b| b.free).collect();
        let mut ends: Vec<Seconds> = tl.bins.iter().map(|b| b.ends).collect();
        let mut events: BinaryHeap<Reverse<(Seconds, usize, Resources)>> = BinaryHeap::new();
        for (i, b) in tl.bins.iter().enumerate() {
            for (t, r) in &b.releases {
                events.push(Reverse(((*t).max(now), i, *r)));
            }
            if b.ready_at > now {
                events.push(Reverse((b.ready_at, i, Resources::ZERO)));
            }
        }
        let mut by_ce: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, b) in tl.bins.iter().enumerate() {
            by_ce
                .entry(b.compute_environment.as_str())
                .or_default()
                .push(i);
        }
        let mut out = Projection {
            starts: vec![None; jobs.len()],
            work: vec![0.0; tl.bins.len()],
        };
        let mut waiting: Vec<usize> = (0..jobs.len()).collect();
        let mut lists: HashMap<(*const String, usize), usize> = HashMap::new();
        let list_of: Vec<usize> = jobs
            .iter()
            .map(|(_, _, ces)| {
                let next = lists.len();
                *lists.entry((ces.as_ptr(), ces.len())).or_insert(next)
            })
            .collect();
        let mut t = now;
        loop {
            while let Some(Reverse((at, i, r))) = events.peek().copied() {
                if at > t {
                    break;
                }
                events.pop();
                free[i] = min_each(&free[i].saturating_add(&r), &tl.bins[i].capacity);
            }
            let mut next_not_before: Option<Seconds> = None;
            let mut held: Vec<bool> = vec![false; tl.bins.len()];
            let mut held_for: Vec<(usize, Resources)> = Vec::new();
            let mut room = Resources::ZERO;
            for (i, b) in tl.bins.iter().enumerate() {
                if b.ready_at <= t {
                    room = max_each(&room, &free[i]);
                }
            }
            let mut failed: Vec<(usize, Resources)> = Vec::new();
            waiting.retain(|&k| {
                let (_, job, ces) = jobs[k];
                let list = list_of[k];
                if let Some(nb) = job.not_before.filter(|nb| *nb > t) {
                    next_not_before = Some(next_not_before.map_or(nb, |x| x.min(nb)));
                    return true;
                }
                let hopeless = !job.resources.fits_in(&room)
                    || failed
                        .iter()
                        .any(|(c, f)| *c == list && f.fits_in(&job.resources));
                let picked = if hopeless {
                    None
                } else {
                    tl.pick(&by_ce, ces, &job.resources, &free, &ends, &held, t)
                };
                let Some(i) = picked else {
                    if !hopeless && failed.len() < MAX_FAILED_NEEDS {
                        failed.push((list, job.resources));
                    }
                    if tl.due(job, ces, t)
                        && !held_for
                            .iter()
                            .any(|(c, n)| *c == list && n.fits_in(&job.resources))
                    {
                        tl.hold(&by_ce, ces, &job.resources, &mut held);
                        if held_for.len() < MAX_FAILED_NEEDS {
                            held_for.push((list, job.resources));
                        }
                    }
                    return true;
                };
                let d = estimate_of(job).seconds.max(1);
                free[i] = free[i].saturating_sub(&job.resources);
                let end = t.saturating_add(d);
                ends[i] = ends[i].max(end);
                events.push(Reverse((end, i, job.resources)));
                out.starts[k] = Some(Start { at: t, bin: i });
                out.work[i] += d as f64 * share(&job.resources, &tl.bins[i].capacity);
                false
            });
            if waiting.is_empty() {
                break;
            }
            let next = match (
                events.peek().map(|Reverse((at, _, _))| *at),
                next_not_before,
            ) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => break,
            };
            t = next.max(t.saturating_add(1));
        }
        out
    }

    /// Instance shapes and job needs the property test draws from (a GPU shape and a
    /// GPU need among them, and a need larger than every shape).
    const SHAPES: [(u64, u64, u32); 3] = [(4000, 16, 0), (2000, 8, 0), (8000, 32, 1)];
    const NEEDS: [(u64, u64, u32); 6] = [
        (1000, 2, 0),
        (2000, 4, 0),
        (4000, 8, 0),
        (500, 30, 0),
        (1000, 4, 1),
        (9000, 4, 0),
    ];

    fn res((cpu, gib, gpus): (u64, u64, u32)) -> Resources {
        Resources::new(cpu, gib * GIB, gpus)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Keeping alike jobs as runs changes no start and no work: the projection equals
        /// the job-by-job replay over random bins (1–3 environments, busy or booting,
        /// releases at random times) and waiting lists of long runs of alike jobs mixed
        /// with others: other needs, other environment lists (one equal by value to
        /// another at another address), `not_before` before or after now, queues with
        /// a wait bound.
        #[test]
        fn runs_project_as_job_by_job(
            bins in prop::collection::vec(
                (
                    0usize..3,
                    0usize..SHAPES.len(),
                    0u64..=4,
                    0u64..300,
                    prop::collection::vec((0u64..2500, 0usize..NEEDS.len()), 0..4),
                ),
                1..6,
            ),
            max_wait in prop::collection::vec(0u64..2500, 2),
            boot in prop::collection::vec(0u64..300, 3),
            runs in prop::collection::vec(
                (1usize..40, 0usize..4, 0usize..5, 0usize..NEEDS.len(), 0u8..4, 0u64..1000),
                0..10,
            ),
            estimates in prop::collection::vec(1u64..600, 1..7),
        ) {
            let now = 1000;
            let names = ["a", "b", "c"];
            let mut tl = Timeline::default();
            for (ce, shape, quarters, late, releases) in &bins {
                let capacity = res(SHAPES[*shape]);
                // Ready now with a quarter-multiple free, or booting `late` s away.
                let ready_at = if *late < 100 { now } else { now + late };
                let mut b = Bin::empty(names[*ce], BinKind::Node, capacity, ready_at);
                b.free = Resources::new(
                    capacity.cpu_millis / 4 * quarters,
                    capacity.memory_bytes / 4 * quarters,
                    capacity.gpus,
                );
                for (end, need) in releases {
                    let end = now - 500 + end;
                    b.releases.push((end, res(NEEDS[*need])));
                    b.ends = b.ends.max(end);
                }
                tl.bins.push(b);
            }
            tl.max_wait = BTreeMap::from([
                ("q2".to_string(), max_wait[0]),
                ("q3".to_string(), max_wait[1]),
            ]);
            tl.boot = names.iter().zip(&boot).map(|(n, b)| (n.to_string(), *b)).collect();
            // The last list equals the first by value, at another address.
            let lists: Vec<Vec<String>> = [&["a"][..], &["b", "a"], &["c"], &["a", "c"], &["a"]]
                .iter()
                .map(|l| l.iter().map(ToString::to_string).collect())
                .collect();
            let mut jobs: Vec<(Job, usize)> = Vec::new();
            for (len, queue, list, need, not_before, submitted) in &runs {
                for j in 0..*len {
                    let mut job = Job::runnable(format!("q{queue}"), res(NEEDS[*need]), *submitted + j as u64);
                    job.estimate = est(estimates[jobs.len() % estimates.len()]);
                    // None, past, just after now, well after now.
                    job.not_before = match not_before {
                        1 => Some(now - 10),
                        2 => Some(now + 1 + (j as u64 % 3) * 50),
                        3 => Some(now + 700),
                        _ => None,
                    };
                    jobs.push((job, *list));
                }
            }
            let id = JobId::new("x");
            let waiting: Vec<Waiting<'_>> = jobs
                .iter()
                .map(|(job, list)| (&id, job, lists[*list].as_slice()))
                .collect();
            for drain_friendly in [true, false] {
                tl.drain_friendly = drain_friendly;
                let (got, want) = (tl.project(&waiting, now), project_reference(&tl, &waiting, now));
                prop_assert_eq!(got.starts, want.starts);
                prop_assert_eq!(got.work, want.work);
            }
        }
    }
}
