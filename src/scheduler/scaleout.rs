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
}

/// Decides the instances to buy for late jobs of bounded queues. `timeline` holds the
/// nodes, booting instances and the instances planned for unbounded queues; `headroom`
/// how many more each compute environment may launch. The instances bought are added
/// to `timeline`.
pub fn decide(
    snapshot: &Snapshot,
    timeline: &mut Timeline,
    waiting: &[Waiting<'_>],
    headroom: &BTreeMap<String, u32>,
    now: Seconds,
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
        ..Decision::default()
    };
    let is_late = |p: &Projection, i: usize| {
        deadlines[i].is_some_and(|d| p.starts[i].is_none_or(|s| s.at > d))
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
        let Some(bin) = timeline.add_new(snapshot, ce, now) else {
            continue;
        };
        let trial = timeline.project(waiting, now);
        let b = boot(ce);
        let pays = trial.work.get(bin).copied().unwrap_or(0.0) >= b as f64 * PAYBACK;
        let helps_due = (0..waiting.len()).any(|k| {
            let due = deadlines[k].is_some_and(|d| now.saturating_add(b) >= d);
            let earlier = match (trial.starts[k], out.projection.starts[k]) {
                (Some(t), Some(o)) => t.at < o.at,
                (Some(_), None) => true,
                _ => false,
            };
            due && is_late(&out.projection, k) && earlier
        });
        if pays || helps_due {
            *out.extra.entry(ce.clone()).or_default() += 1;
            out.projection = trial;
            added += 1;
        } else {
            timeline.remove(bin);
            unpaying.insert(ce.as_str());
        }
    }
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
