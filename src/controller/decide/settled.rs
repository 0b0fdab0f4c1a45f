//! PURE: waiting and finished jobs whose status is already right, remembered across
//! passes, so that a backlog (or a history of finished jobs) costs a pass little more
//! than its scheduling (issue 13: work per pass grows with what changed, not with all
//! jobs).
//!
//! A pass that finds a waiting job (Pending or Runnable) needing no write for the reason
//! the scheduler gave it, or a finished job (Succeeded or Failed) needing no write,
//! remembers that fact under the job's uid, with the resourceVersion it saw and that
//! reason ([`Settled`]). In a later pass, a job seen at the same uid and resourceVersion,
//! for which the plan gives the same reason (none for a finished job), does not bind,
//! change phase or fail, whose queue fields do not move materially, and on which no
//! time-dependent rule can act (no `jobStateTimeLimitActions` on its queue, its TTL not
//! expired, no fleet error in its message, not an array parent nor a waiting array child,
//! no cancel request, no legacy label; a finished array child's parent there, not
//! cancelled nor expired) needs no write either: its status is a function of the object (fixed by its
//! resourceVersion) and of those inputs. Such a job is not cloned, formatted or compared; any other job
//! goes through the whole pass as before. So a pass decides with memory exactly as it
//! does without (the property test `settled_memory_changes_no_decision`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::api::BatchJob;
use crate::api::batch_job::JobPhase;
use crate::scheduler::{Reason, Resources, Seconds};

use super::super::LABEL_NODE;
use super::super::time::seconds;
use super::carry::{Carry, ClassKey, Member};

/// What the controller remembers of settled waiting jobs between passes (owned by the
/// loop, handed to [`super::decide_with`]). Jobs that are gone are forgotten.
#[derive(Debug, Clone, Default)]
pub struct Settled {
    /// By job uid.
    jobs: HashMap<String, Entry>,
    /// The number of the pass that last confirmed an entry (to forget the others).
    pass: u64,
    /// The last full pass (nothing parked) or refresh, if any: passes in between may
    /// park.
    full: Option<FullPass>,
    /// The reason last remembered: entries remembered with an equal reason share it, so
    /// that a pass compares a parked class's reasons once, not once per member.
    last_reason: Option<Arc<Reason>>,
    /// Parked jobs carried outside the observed jobs, with their entries
    /// ([`super::carry`]).
    pub(super) carry: Carry,
}

/// What a pass that may park needs of a settled job beyond its memory entry, from the
/// object alone: worked out on the first such pass at its resourceVersion and kept in
/// its entry ([`Settled::touch_with`]), so that a parked member costs one lookup and
/// no parsing (the profile of a pass over a 50,000-job backlog had quantity and time
/// parsing at 6 % before).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Facts {
    /// [`eligible`], and may be set aside but for its backoff: Runnable,
    /// no dependencies, not an array child (such a job may settle whatever its
    /// queue's TTL or array parent: it is not finished, and has no parent).
    pub may_set_aside: bool,
    /// The end of its retry backoff (`status.notBefore`).
    pub not_before: Option<Seconds>,
    /// `status.runnableSince`.
    pub runnable_since: Option<Seconds>,
    /// `metadata.creationTimestamp`.
    pub created: Option<Seconds>,
    /// Its id's first bytes, for the first-in first-out order ([`super::park`]).
    pub order: [u128; 2],
    /// What one attempt needs, when the object alone says it (a pinned template, or no
    /// job definition); `None` when a job definition does (worked out in every pass).
    pub needs: Option<Option<Resources>>,
}

impl Facts {
    /// Whether it may be set aside at `now` (Runnable, no dependencies, not an array
    /// child, no backoff left) and settle as far as the object decides (the pass checks
    /// its queue's `jobStateTimeLimitActions`).
    pub fn ready(&self, now: Seconds) -> bool {
        self.may_set_aside
            && self.not_before.is_none_or(|t| t <= now)
            && self.runnable_since.is_none_or(|t| t <= now)
    }
}

/// What kind of pass [`Settled::kind`] says a pass is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PassKind {
    /// Every job in the snapshot (carried ones from the carry): nothing parked.
    Full,
    /// A pass that may park, and refreshes the queue positions of the jobs it leaves
    /// out ([`super::park::stale`]): every waiting job's queue fields are then as a
    /// full pass would leave them.
    Refresh,
    /// A pass that may park.
    Park,
}

/// What [`Settled::touch_with`] found.
pub(super) enum Touched {
    /// Not settled at this resourceVersion.
    No,
    /// Settled, but not to be set aside in this pass (not confirmed).
    Settled,
    /// Settled with this reason and set aside (confirmed in this pass).
    Aside(Option<Arc<Reason>>, Facts),
}

/// What a full pass or refresh saw of the queues, for the passes after it that park.
#[derive(Debug, Clone, Default)]
struct FullPass {
    /// When it ran.
    at: Seconds,
    /// How many jobs had a queue position in each queue.
    positioned: BTreeMap<String, u32>,
}

#[derive(Debug, Clone)]
pub(super) struct Entry {
    resource_version: Version,
    /// The scheduler's reason (none for a finished job), behind a pointer: most entries
    /// are finished jobs, and a pass that parks hands it out ([`Settled::touch_with`]).
    pub(super) reason: Option<Arc<Reason>>,
    pass: u64,
    /// Worked out by the first pass that may park at this resourceVersion.
    facts: Option<Facts>,
    /// Its job is carried ([`super::carry`]): passes that park do not see it, and it is
    /// kept without them.
    carried: bool,
}

/// A remembered resourceVersion: an opaque string, in practice a decimal number (etcd's
/// revision), then kept as one, so that comparing it reads no memory of its own (with
/// 50,000 settled jobs, each entry's own string was a cache miss per job and pass).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Version {
    /// The decimal text of this number, without sign or leading zero.
    Number(u64),
    /// Any other text.
    Text(String),
}

impl Version {
    fn of(rv: &str) -> Self {
        match rv.parse::<u64>() {
            Ok(n) if Self::canonical(rv) => Self::Number(n),
            _ => Self::Text(rv.to_owned()),
        }
    }

    /// Whether `rv` is the text of a number as [`Version::Number`] keeps it.
    fn canonical(rv: &str) -> bool {
        !rv.starts_with('+') && (rv == "0" || !rv.starts_with('0'))
    }

    /// Whether this is `rv`, as text.
    fn is(&self, rv: &str) -> bool {
        match self {
            Self::Number(n) => Self::canonical(rv) && rv.parse::<u64>() == Ok(*n),
            Self::Text(t) => t == rv,
        }
    }
}

impl Settled {
    /// How many jobs are remembered as settled (carried ones included).
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// How many parked jobs are carried outside the observed jobs.
    pub fn carried(&self) -> usize {
        self.carry.len()
    }

    /// Carries jobs of a class a pass left out (each with its submission time and
    /// order prefix): their entries are marked carried. A job without an entry at its
    /// resourceVersion is not carried (it cannot be: it was set aside because it had
    /// one); those carried are returned.
    pub(super) fn carry_in(
        &mut self,
        class: ClassKey,
        jobs: impl IntoIterator<Item = (Arc<BatchJob>, Seconds, [u128; 2])>,
    ) -> Vec<Arc<BatchJob>> {
        let mut members = Vec::new();
        for (job, submitted_at, order) in jobs {
            let (Some(uid), Some(rv)) = (
                job.metadata.uid.as_deref(),
                job.metadata.resource_version.as_deref(),
            ) else {
                continue;
            };
            let Some(e) = self.jobs.get_mut(uid).filter(|e| e.resource_version.is(rv)) else {
                continue;
            };
            e.carried = true;
            let reason = e.reason.clone();
            let id = format!(
                "{}/{}",
                job.metadata.namespace.as_deref().unwrap_or_default(),
                job.metadata.name.as_deref().unwrap_or_default()
            )
            .into_boxed_str();
            let written = job.status.as_ref().and_then(|s| {
                Some((
                    s.queue_position?,
                    s.estimated_start_time.as_ref().map(seconds),
                ))
            });
            members.push(Member {
                submitted_at,
                order,
                id,
                job,
                reason,
                written,
            });
        }
        let jobs = members.iter().map(|m| Arc::clone(&m.job)).collect();
        self.carry.add(class, members);
        jobs
    }

    /// Takes carried members back: their entries are no longer carried (and confirmed
    /// in this pass), their objects are returned for the pass to decide.
    pub(super) fn give_back(&mut self, members: Vec<Member>) -> Vec<Arc<BatchJob>> {
        let pass = self.pass;
        members
            .into_iter()
            .map(|m| {
                if let Some(e) = self.entry_of(&m.job) {
                    e.carried = false;
                    e.pass = pass;
                }
                m.job
            })
            .collect()
    }

    /// Drops carried objects that changed or went ([`super::carry::JobIndex`]): their
    /// entries are stale (forgotten unless a pass remembers the new object).
    pub(super) fn drop_released(&mut self, released: &[Arc<BatchJob>]) {
        for m in self.carry.take_jobs(released) {
            if let Some(e) = self.entry_of(&m.job) {
                e.carried = false;
            }
        }
    }

    /// A job's entry (at whatever resourceVersion).
    fn entry_of(&mut self, job: &BatchJob) -> Option<&mut Entry> {
        job.metadata
            .uid
            .as_deref()
            .and_then(|u| self.jobs.get_mut(u))
    }

    /// Starts a pass.
    pub(super) fn begin(&mut self) {
        self.pass = self.pass.wrapping_add(1);
    }

    /// The reason a job was settled with (`Some(None)`: settled without one), if it
    /// was, at its current resourceVersion.
    pub(super) fn get(&self, job: &BatchJob) -> Option<Option<&Reason>> {
        let uid = job.metadata.uid.as_deref()?;
        let rv = job.metadata.resource_version.as_deref()?;
        self.jobs
            .get(uid)
            .filter(|e| e.resource_version.is(rv))
            .map(|e| e.reason.as_deref())
    }

    /// Whether a job is settled at its current resourceVersion and, if it is and its
    /// [`Facts`] (worked out by `facts` on the first call at this resourceVersion, then
    /// kept) pass `aside`, its reason and facts, confirming it in this pass: one lookup,
    /// for a job that a pass may leave out of its snapshot, comparing the reason later.
    pub(super) fn touch_with(
        &mut self,
        job: &BatchJob,
        facts: impl FnOnce(&BatchJob) -> Facts,
        aside: impl FnOnce(&Facts) -> bool,
    ) -> Touched {
        let (Some(uid), Some(rv)) = (
            job.metadata.uid.as_deref(),
            job.metadata.resource_version.as_deref(),
        ) else {
            return Touched::No;
        };
        let Some(e) = self.jobs.get_mut(uid).filter(|e| e.resource_version.is(rv)) else {
            return Touched::No;
        };
        let f = *e.facts.get_or_insert_with(|| facts(job));
        if !aside(&f) {
            return Touched::Settled;
        }
        e.pass = self.pass;
        Touched::Aside(e.reason.clone(), f)
    }

    /// Confirms that a job is still settled in this pass if it was settled with
    /// `reason` at its current resourceVersion (one lookup: [`Settled::get`] compared,
    /// then confirmed); whether it was.
    pub(super) fn confirm_if(&mut self, job: &BatchJob, reason: Option<&Reason>) -> bool {
        let (Some(uid), Some(rv)) = (
            job.metadata.uid.as_deref(),
            job.metadata.resource_version.as_deref(),
        ) else {
            return false;
        };
        match self.jobs.get_mut(uid) {
            Some(e) if e.resource_version.is(rv) && e.reason.as_deref() == reason => {
                e.pass = self.pass;
                true
            }
            _ => false,
        }
    }

    /// Remembers a job that needed no write in this pass for `reason`.
    pub(super) fn remember(&mut self, job: &BatchJob, reason: Option<&Reason>) {
        let (Some(uid), Some(rv)) = (
            job.metadata.uid.as_ref(),
            job.metadata.resource_version.as_ref(),
        ) else {
            return;
        };
        let reason = reason.map(|r| match &self.last_reason {
            Some(a) if **a == *r => Arc::clone(a),
            _ => {
                let a = Arc::new(r.clone());
                self.last_reason = Some(Arc::clone(&a));
                a
            }
        });
        match self.jobs.get_mut(uid.as_str()) {
            Some(e) => {
                // The facts are the object's: kept while its resourceVersion is.
                if !e.resource_version.is(rv) {
                    e.resource_version = Version::of(rv);
                    e.facts = None;
                }
                e.reason = reason;
                e.pass = self.pass;
            }
            None => {
                self.jobs.insert(
                    uid.clone(),
                    Entry {
                        resource_version: Version::of(rv),
                        reason,
                        pass: self.pass,
                        facts: None,
                        carried: false,
                    },
                );
            }
        }
    }

    /// What kind of pass a pass at `now` is: it may park ([`crate::scheduler::park`])
    /// when a full pass or a refresh ran less than `interval` seconds ago; a refresh is
    /// due when one ran longer ago; a full pass when none ran (no memory), `interval`
    /// is 0, or the clock went back.
    pub(super) fn kind(&self, now: Seconds, interval: Seconds) -> PassKind {
        match &self.full {
            Some(f) if interval > 0 && now >= f.at => {
                if now - f.at < interval {
                    PassKind::Park
                } else {
                    PassKind::Refresh
                }
            }
            _ => PassKind::Full,
        }
    }

    /// Whether the number of jobs with a queue position in a queue with parked jobs
    /// (`positioned`, parked ones included) halved or doubled since the last full pass or
    /// refresh: then the parked jobs' positions may have moved materially, and a full
    /// pass refreshes them now.
    pub(super) fn queues_moved<'q>(
        &self,
        mut positioned: impl Iterator<Item = (&'q str, u32)>,
    ) -> bool {
        let Some(full) = &self.full else {
            return true;
        };
        positioned.any(|(queue, n)| {
            let then = full.positioned.get(queue).copied().unwrap_or(0);
            n.saturating_mul(2) < then || then.saturating_mul(2) < n
        })
    }

    /// Moves the last full pass or refresh `seconds` back, as if it had run that much
    /// earlier: the next pass at the same clock is a refresh when it is `interval` back
    /// (benchmarks measure refreshes so, without moving the world's clock).
    pub fn age(&mut self, seconds: Seconds) {
        if let Some(f) = self.full.as_mut() {
            f.at = f.at.saturating_sub(seconds);
        }
    }

    /// Records a full pass or a refresh at `now` that positioned `positioned` jobs in
    /// each queue (parked and carried ones included).
    pub(super) fn full_pass(&mut self, now: Seconds, positioned: BTreeMap<String, u32>) {
        self.full = Some(FullPass {
            at: now,
            positioned,
        });
    }

    /// Ends a pass: forgets every job not confirmed or remembered in it (`kept` of them
    /// were) and not carried (`carried_unseen` of those were not seen by the pass).
    pub(super) fn end(&mut self, kept: usize, carried_unseen: usize) {
        if self.jobs.len() > kept.saturating_add(carried_unseen) {
            let pass = self.pass;
            self.jobs.retain(|_, e| e.pass == pass || e.carried);
        }
    }
}

/// Whether a job may be settled at all, from the object alone: waiting (Pending or
/// Runnable) or finished (Succeeded or Failed), not an array parent nor a waiting array
/// child, no cancel request, no legacy node label, and its status observed at the
/// job's generation. A finished array child settles only while its parent exists, is
/// not cancelled and has not expired (the pass checks that: [`super::decide_with`]), and
/// still counts in its parent's `arrayStatus`.
pub(super) fn eligible(job: &BatchJob) -> bool {
    let Some(s) = job.status.as_ref() else {
        return false;
    };
    let finished = matches!(s.phase, Some(JobPhase::Succeeded | JobPhase::Failed));
    (finished || matches!(s.phase, Some(JobPhase::Pending | JobPhase::Runnable)))
        && job.spec.array_properties.is_none()
        // A finished array child may settle (its parent's facts are checked by the pass);
        // a waiting one counts for its parent's window of waiting children.
        && (finished || job.spec.array_index.is_none())
        && job.spec.cancel.is_none()
        && s.observed_generation == job.metadata.generation
        && !job
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(LABEL_NODE))
}

/// Whether a reason's message is a function of the reason and the job alone (not of
/// which other objects exist, nor of a fleet's error).
pub(super) fn memorable(reason: &Reason) -> bool {
    !matches!(
        reason,
        Reason::DependencyNotFound { .. } | Reason::WaitingForBoot { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::Version;

    #[test]
    fn a_remembered_resource_version_matches_only_its_own_text() {
        let n = Version::of("42");
        assert_eq!(n, Version::Number(42));
        assert!(n.is("42"));
        // The same number written otherwise is another resourceVersion.
        for other in ["042", "+42", "43", "", "42a"] {
            assert!(!n.is(other), "{other:?}");
        }
        assert!(Version::of("0").is("0"));
        assert!(!Version::of("0").is("00"));
        // Not a canonical number: kept and compared as text.
        for text in ["007", "+1", "abc", "", "18446744073709551616"] {
            let v = Version::of(text);
            assert_eq!(v, Version::Text(text.to_owned()));
            assert!(v.is(text));
            assert!(!v.is("7"));
        }
    }
}
