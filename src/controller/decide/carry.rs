//! PURE: parked jobs carried from pass to pass outside the observed jobs (issue 13,
//! "Backlog": controller work per pass grows with what changed, not with all jobs).
//!
//! A pass that parks leaves the later members of a parkable class out of its snapshot
//! ([`super::park`]). Before this module it still walked every one of them (a lookup
//! in the memory, its object read, its key compared): with 50,000 parked jobs, about
//! 80 % of a pass. Now the members a pass left out are *carried*: kept here, sorted by
//! class in first-in first-out order (their memory entries stay, marked carried), and
//! the controller's job index ([`JobIndex`]) leaves them out of the jobs it hands the
//! next pass. A pass that parks reads the carry by class (its size, its first member,
//! its distinct reasons), never member by member.
//!
//! A carried job goes back into the passes (decided as any settled job) when its
//! object changes or goes (the index reports it: [`JobIndex::released`]), when its
//! class stops being parkable, when another job depends on it, when it is among its
//! queue's first `parked_kept` or its class's head, and when the parked reasons or
//! queue sizes no longer hold (then everything goes back, and the pass is planned
//! again). A refresh (every `full_pass_interval`) works out every carried job's queue
//! position without planning it ([`super::park::stale`]); those whose written position
//! moved materially go back, planned and written. A full pass (the first, or after the
//! clock went back) decides the carried jobs with the others, from the carry; those it
//! does not leave as they are go back. So a pass decides with a carry exactly as it
//! does without (the property test `parked_backlogs_change_no_decision` runs the index
//! too), and a refresh leaves every queue position as a full pass would
//! (`positions_refreshed` in the same test).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::Arc;

use crate::api::BatchJob;
use crate::scheduler::{JobId, Reason, Resources, Seconds};

/// A carried job: its place in its queue, its object as last seen, and its memory
/// entry (given back when it goes back into a pass).
#[derive(Debug, Clone)]
pub(super) struct Member {
    /// Submission time (the snapshot's figure).
    pub submitted_at: Seconds,
    /// Its id's first bytes ([`super::park`]'s order prefix).
    pub order: [u128; 2],
    /// `namespace/name`.
    pub id: Box<str>,
    /// The object as the pass that carried it saw it.
    pub job: Arc<BatchJob>,
    /// The reason it was settled with (its memory entry's: the entry stays in the
    /// memory, marked carried).
    pub reason: Option<Arc<Reason>>,
    /// Its queue position and estimated start as its status holds them (the object's:
    /// fixed while it is carried), for a refresh ([`super::park::stale`]) that reads no
    /// object.
    pub written: Option<(u32, Option<Seconds>)>,
}

impl Member {
    /// First-in first-out order: submission time, then id (as [`JobId`]s compare;
    /// the prefixes decide unless equal).
    fn fifo(&self, other: &Self) -> Ordering {
        self.submitted_at
            .cmp(&other.submitted_at)
            .then_with(|| self.order.cmp(&other.order))
            .then_with(|| self.id.cmp(&other.id))
    }

    /// Whether it comes before the snapshot job `(submitted_at, id)` in its queue.
    pub(super) fn before(&self, submitted_at: Seconds, id: &JobId) -> bool {
        (self.submitted_at, &*self.id) < (submitted_at, id.0.as_str())
    }

    /// The reason it was settled with.
    pub fn reason(&self) -> Option<&Arc<Reason>> {
        self.reason.as_ref()
    }
}

/// A class's carried members and their distinct reasons.
#[derive(Debug, Clone, Default)]
struct Class {
    /// Sorted first-in first-out.
    members: Vec<Member>,
    /// Each distinct reason (by pointer: members remembered with an equal reason share
    /// it) and how many members have it.
    reasons: Vec<(Option<Arc<Reason>>, usize)>,
}

impl Class {
    fn count_reason(&mut self, reason: Option<&Arc<Reason>>, add: bool) {
        let same = |r: &Option<Arc<Reason>>| match (r, reason) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        match self.reasons.iter().position(|(r, _)| same(r)) {
            Some(i) if add => self.reasons[i].1 += 1,
            Some(i) => {
                self.reasons[i].1 -= 1;
                if self.reasons[i].1 == 0 {
                    self.reasons.swap_remove(i);
                }
            }
            None if add => self.reasons.push((reason.cloned(), 1)),
            None => {}
        }
    }
}

/// A class: queue and what one attempt needs.
pub(super) type ClassKey = (String, Resources);

/// The carried jobs, by class.
#[derive(Debug, Clone, Default)]
pub struct Carry {
    classes: BTreeMap<ClassKey, Class>,
    len: usize,
    /// How many members have each id hash: whether an id may be carried, without
    /// reading any member ([`Carry::may_hold`]).
    hashes: HashMap<u64, u32>,
}

/// An id's hash (fixed keys: the same in every pass).
fn id_hash(id: &str) -> u64 {
    BuildHasherDefault::<DefaultHasher>::default().hash_one(id)
}

impl Carry {
    /// How many jobs are carried.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether a job with this id (`namespace/name`) may be carried (false: it is not).
    pub(super) fn may_hold(&self, id: &str) -> bool {
        !self.hashes.is_empty() && self.hashes.contains_key(&id_hash(id))
    }

    fn count_ids<'m>(&mut self, members: impl Iterator<Item = &'m Member>, add: bool) {
        for m in members {
            let h = id_hash(&m.id);
            if add {
                *self.hashes.entry(h).or_default() += 1;
            } else if let Some(n) = self.hashes.get_mut(&h) {
                *n -= 1;
                if *n == 0 {
                    self.hashes.remove(&h);
                }
            }
        }
    }

    /// The classes with carried members.
    pub(super) fn classes(&self) -> impl Iterator<Item = &ClassKey> {
        self.classes.keys()
    }

    /// The first member of a class, if it has one.
    pub(super) fn first(&self, class: &ClassKey) -> Option<&Member> {
        self.classes.get(class).and_then(|c| c.members.first())
    }

    /// The first `n` members of the classes of `queue`, in first-in first-out order
    /// (a merge of the classes' sorted members).
    pub(super) fn first_of_queue(&self, queue: &str, n: usize) -> Vec<(&ClassKey, &Member)> {
        let mut lists: Vec<(&ClassKey, &[Member])> = self
            .classes
            .range((queue.to_owned(), Resources::default())..)
            .take_while(|(k, _)| k.0 == queue)
            .map(|(k, c)| (k, c.members.as_slice()))
            .collect();
        let mut out = Vec::with_capacity(n.min(self.len));
        while out.len() < n {
            let Some((i, _)) = lists
                .iter()
                .enumerate()
                .filter_map(|(i, (_, l))| l.first().map(|m| (i, m)))
                .min_by(|a, b| a.1.fifo(b.1))
            else {
                break;
            };
            let (k, l) = lists[i];
            out.push((k, &l[0]));
            lists[i] = (k, &l[1..]);
        }
        out
    }

    /// The distinct reasons of a class's members.
    pub(super) fn reasons(&self, class: &ClassKey) -> impl Iterator<Item = Option<&Reason>> {
        self.classes
            .get(class)
            .into_iter()
            .flat_map(|c| c.reasons.iter().map(|(r, _)| r.as_deref()))
    }

    /// The members of each class of `queue`, each list in first-in first-out order.
    pub(super) fn of_queue<'c>(&'c self, queue: &str) -> impl Iterator<Item = &'c [Member]> {
        self.classes
            .range((queue.to_owned(), Resources::default())..)
            .take_while(move |(k, _)| k.0 == queue)
            .map(|(_, c)| c.members.as_slice())
    }

    /// How many members each queue has.
    pub(super) fn by_queue(&self) -> BTreeMap<&str, usize> {
        let mut out: BTreeMap<&str, usize> = BTreeMap::new();
        for ((q, _), c) in &self.classes {
            *out.entry(q.as_str()).or_default() += c.members.len();
        }
        out
    }

    /// How many members of `queue` come before the snapshot job `(submitted_at, id)`.
    pub(super) fn ahead(&self, queue: &str, submitted_at: Seconds, id: &JobId) -> u32 {
        let n: usize = self
            .classes
            .range((queue.to_owned(), Resources::default())..)
            .take_while(|(k, _)| k.0 == queue)
            .map(|(_, c)| c.members.partition_point(|m| m.before(submitted_at, id)))
            .sum();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Adds members to a class (in any order).
    pub(super) fn add(&mut self, class: ClassKey, members: Vec<Member>) {
        if members.is_empty() {
            return;
        }
        self.count_ids(members.iter(), true);
        let c = self.classes.entry(class).or_default();
        self.len += members.len();
        for m in &members {
            c.count_reason(m.reason(), true);
        }
        c.members.extend(members);
        // A stable sort of a sorted run followed by a new one: a merge.
        c.members.sort_by(Member::fifo);
    }

    /// Takes out the members with these ids (`namespace/name`).
    pub(super) fn take_ids(&mut self, ids: &BTreeSet<&str>) -> Vec<Member> {
        self.take_where(|m| ids.contains(&*m.id))
    }

    /// Takes out the members whose object is one of these (by pointer).
    pub(super) fn take_jobs(&mut self, jobs: &[Arc<BatchJob>]) -> Vec<Member> {
        if jobs.is_empty() {
            return Vec::new();
        }
        let ptrs: BTreeSet<*const BatchJob> = jobs.iter().map(Arc::as_ptr).collect();
        self.take_where(|m| ptrs.contains(&Arc::as_ptr(&m.job)))
    }

    /// Takes out the first `n` members of a class.
    pub(super) fn take_first(&mut self, class: &ClassKey, n: usize) -> Vec<Member> {
        let Some(c) = self.classes.get_mut(class) else {
            return Vec::new();
        };
        let n = n.min(c.members.len());
        let out: Vec<Member> = c.members.drain(..n).collect();
        for m in &out {
            c.count_reason(m.reason(), false);
        }
        if c.members.is_empty() {
            self.classes.remove(class);
        }
        self.len -= out.len();
        self.count_ids(out.iter(), false);
        out
    }

    /// Takes out every member of a class.
    pub(super) fn take_class(&mut self, class: &ClassKey) -> Vec<Member> {
        match self.classes.remove(class) {
            Some(c) => {
                self.len -= c.members.len();
                self.count_ids(c.members.iter(), false);
                c.members
            }
            None => Vec::new(),
        }
    }

    /// The carried objects (for a full pass, which decides them too).
    pub(super) fn jobs(&self) -> Vec<Arc<BatchJob>> {
        self.classes
            .values()
            .flat_map(|c| c.members.iter().map(|m| Arc::clone(&m.job)))
            .collect()
    }

    /// Takes out every member.
    pub(super) fn take_all(&mut self) -> Vec<Member> {
        self.len = 0;
        self.hashes.clear();
        std::mem::take(&mut self.classes)
            .into_values()
            .flat_map(|c| c.members)
            .collect()
    }

    fn take_where(&mut self, mut hit: impl FnMut(&Member) -> bool) -> Vec<Member> {
        let mut out = Vec::new();
        for c in self.classes.values_mut() {
            if !c.members.iter().any(&mut hit) {
                continue;
            }
            let (taken, kept): (Vec<Member>, Vec<Member>) = std::mem::take(&mut c.members)
                .into_iter()
                .partition(&mut hit);
            for m in &taken {
                c.count_reason(m.reason(), false);
            }
            c.members = kept;
            out.extend(taken);
        }
        self.len -= out.len();
        self.count_ids(out.iter(), false);
        self.classes.retain(|_, c| !c.members.is_empty());
        out
    }
}

/// The controller's jobs between passes (PURE: fed by the watch, read by each pass):
/// the jobs a pass should look at, and the carried ones ([`Carry`]) it should not.
/// Keyed by `namespace/name`; kept in key order, so that a pass sees its jobs in the
/// same order whatever order the changes came in.
#[derive(Debug, Default)]
pub struct JobIndex {
    active: BTreeMap<String, Arc<BatchJob>>,
    carried: BTreeMap<String, Arc<BatchJob>>,
    /// Carried objects that changed or went since: the next pass drops them from its
    /// carry (then they are in `active`, if they still exist).
    released: Vec<Arc<BatchJob>>,
}

/// A job's key in the index: `namespace/name`.
pub fn index_key(job: &BatchJob) -> String {
    format!(
        "{}/{}",
        job.metadata.namespace.as_deref().unwrap_or_default(),
        job.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Whether two objects are the same version of the same job (uid and resourceVersion).
fn same_version(a: &BatchJob, b: &BatchJob) -> bool {
    a.metadata.uid == b.metadata.uid && a.metadata.resource_version == b.metadata.resource_version
}

impl JobIndex {
    /// How many jobs it holds (carried ones included).
    pub fn len(&self) -> usize {
        self.active.len() + self.carried.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many are carried.
    pub fn carried(&self) -> usize {
        self.carried.len()
    }

    /// A job was created or changed (a watch's `Apply`). A carried job seen again at
    /// the same uid and resourceVersion stays carried.
    pub fn upsert(&mut self, key: String, job: Arc<BatchJob>) {
        if let Some(old) = self.carried.get(&key) {
            if same_version(old, &job) {
                return;
            }
            if let Some(old) = self.carried.remove(&key) {
                self.released.push(old);
            }
        }
        self.active.insert(key, job);
    }

    /// A job went (a watch's `Delete`, or it no longer deserialises).
    pub fn remove(&mut self, key: &str) {
        if let Some(old) = self.carried.remove(key) {
            self.released.push(old);
        }
        self.active.remove(key);
    }

    /// The whole set of jobs, listed afresh (a watch's re-list): what is not in it went.
    pub fn replace_all(&mut self, jobs: impl IntoIterator<Item = (String, Arc<BatchJob>)>) {
        let mut fresh: BTreeMap<String, Arc<BatchJob>> = jobs.into_iter().collect();
        for (key, old) in std::mem::take(&mut self.carried) {
            match fresh.remove(&key) {
                Some(new) if same_version(&old, &new) => {
                    self.carried.insert(key, old);
                }
                Some(new) => {
                    self.released.push(old);
                    fresh.insert(key, new);
                }
                None => self.released.push(old),
            }
        }
        self.active = fresh;
    }

    /// The jobs a pass looks at (every job but the carried ones).
    pub fn active(&self) -> Vec<Arc<BatchJob>> {
        self.active.values().cloned().collect()
    }

    /// Carried objects that changed or went since the last pass
    /// ([`super::Observed::released`]).
    pub fn released(&self) -> Vec<Arc<BatchJob>> {
        self.released.clone()
    }

    /// After a pass that saw `released` (as [`JobIndex::released`] gave them): the jobs
    /// it took back from its carry are looked at again; those it carried are not, unless
    /// they changed while it ran (then they are released, for the next pass to drop).
    pub fn after_pass(&mut self, released: usize, changes: &CarryChanges) {
        self.released.drain(..released.min(self.released.len()));
        for job in &changes.unparked {
            let key = index_key(job);
            if self.carried.get(&key).is_some_and(|c| Arc::ptr_eq(c, job)) {
                if let Some(j) = self.carried.remove(&key) {
                    self.active.insert(key, j);
                }
            }
        }
        for job in &changes.parked {
            let key = index_key(job);
            match self.active.get(&key) {
                Some(a) if Arc::ptr_eq(a, job) => {
                    if let Some(j) = self.active.remove(&key) {
                        self.carried.insert(key, j);
                    }
                }
                // Changed or gone while the pass ran.
                _ => self.released.push(Arc::clone(job)),
            }
        }
    }
}

impl JobIndex {
    /// Takes in `jobs` as the whole set, as a re-list does (for callers that hold every
    /// job at each pass: tests and benchmarks).
    pub fn sync(&mut self, jobs: &[Arc<BatchJob>]) {
        self.replace_all(jobs.iter().map(|j| (index_key(j), Arc::clone(j))));
    }

    /// One pass as the controller's loop runs it: over `observed` with the jobs this
    /// index hands out (set into it), the index updated after the pass.
    pub fn decide(
        &mut self,
        observed: &mut super::Observed,
        config: &super::DecideConfig,
        now: Seconds,
        settled: &mut super::Settled,
    ) -> super::Decisions {
        (observed.jobs, observed.released) = (self.active(), self.released());
        let d = super::decide_with(observed, config, now, settled);
        self.after_pass(observed.released.len(), &d.carry);
        d
    }
}

/// What a pass changed in its carry, for the job index ([`JobIndex::after_pass`]).
#[derive(Debug, Clone, Default)]
pub struct CarryChanges {
    /// Jobs it carried (left out of this pass and not to be handed to the next).
    pub parked: Vec<Arc<BatchJob>>,
    /// Carried jobs it took back (handed to the next pass again).
    pub unparked: Vec<Arc<BatchJob>>,
    /// Carried jobs by queue after the pass (all Runnable).
    pub by_queue: BTreeMap<String, usize>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn job(name: &str, rv: &str) -> Arc<BatchJob> {
        let mut j: BatchJob = serde_json::from_value(serde_json::json!({
            "apiVersion": "asgbatch.io/v1alpha1", "kind": "BatchJob",
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                         "resourceVersion": rv},
            "spec": {"queue": "q", "process": {"command": ["true"]}}
        }))
        .expect("a job");
        j.metadata.resource_version = Some(rv.to_owned());
        Arc::new(j)
    }

    fn names(jobs: &[Arc<BatchJob>]) -> Vec<String> {
        jobs.iter()
            .map(|j| j.metadata.name.clone().unwrap_or_default())
            .collect()
    }

    fn index_of(jobs: &[&Arc<BatchJob>]) -> JobIndex {
        let mut index = JobIndex::default();
        for j in jobs {
            index.upsert(index_key(j), Arc::clone(j));
        }
        index
    }

    fn parked(jobs: &[&Arc<BatchJob>]) -> CarryChanges {
        CarryChanges {
            parked: jobs.iter().map(|j| Arc::clone(j)).collect(),
            ..CarryChanges::default()
        }
    }

    #[test]
    fn a_carried_job_is_handed_to_passes_again_once_it_changes_or_goes() {
        let (a, b) = (job("a", "1"), job("b", "2"));
        let mut index = index_of(&[&a, &b]);
        index.after_pass(0, &parked(&[&a]));
        assert_eq!(names(&index.active()), ["b"]);
        assert_eq!((index.carried(), index.len()), (1, 2));
        // Seen again unchanged (a re-sent event): still carried, nothing released.
        index.upsert(index_key(&a), job("a", "1"));
        assert_eq!(names(&index.active()), ["b"]);
        assert!(index.released().is_empty());
        // Changed: handed again, and the carried object released (the same object the
        // memory carries, so that the pass can drop it).
        let a2 = job("a", "3");
        index.upsert(index_key(&a2), Arc::clone(&a2));
        assert_eq!(names(&index.active()), ["a", "b"]);
        let released = index.released();
        assert!(Arc::ptr_eq(&released[0], &a));
        index.after_pass(released.len(), &CarryChanges::default());
        assert!(index.released().is_empty());
        // Carried again, then deleted: released, and gone.
        index.after_pass(0, &parked(&[&a2]));
        index.remove(&index_key(&a2));
        assert_eq!(names(&index.active()), ["b"]);
        assert!(Arc::ptr_eq(&index.released()[0], &a2));
        assert_eq!((index.carried(), index.len()), (0, 1));
    }

    #[test]
    fn a_relist_keeps_carried_jobs_that_did_not_change_and_releases_the_others() {
        let (a, b, c) = (job("a", "1"), job("b", "2"), job("c", "3"));
        let mut index = index_of(&[&a, &b, &c]);
        index.after_pass(0, &parked(&[&a, &b, &c]));
        assert!(index.active().is_empty());
        let (a_again, b2, d) = (job("a", "1"), job("b", "4"), job("d", "5"));
        index.replace_all([&a_again, &b2, &d].map(|j| (index_key(j), Arc::clone(j))));
        assert_eq!(names(&index.active()), ["b", "d"]);
        assert!(Arc::ptr_eq(&index.active()[0], &b2));
        assert_eq!(names(&index.released()), ["b", "c"]);
        assert!(Arc::ptr_eq(&index.released()[0], &b));
        assert_eq!((index.carried(), index.len()), (1, 3));
    }

    #[test]
    fn a_job_that_changed_while_its_pass_ran_is_not_carried() {
        let a = job("a", "1");
        let mut index = index_of(&[&a]);
        let handed = index.active();
        // The pass runs on `a` at "1"; meanwhile the watch brings "2".
        index.upsert(index_key(&a), job("a", "2"));
        index.after_pass(0, &parked(&[&handed[0]]));
        assert_eq!(index.carried(), 0);
        assert_eq!(names(&index.active()), ["a"]);
        // The next pass is told to drop what it carried.
        assert!(Arc::ptr_eq(&index.released()[0], &a));
    }

    #[test]
    fn jobs_a_pass_took_back_are_handed_to_the_next() {
        let (a, b) = (job("a", "1"), job("b", "2"));
        let mut index = index_of(&[&a, &b]);
        index.after_pass(0, &parked(&[&a, &b]));
        index.after_pass(
            0,
            &CarryChanges {
                unparked: vec![Arc::clone(&a)],
                ..CarryChanges::default()
            },
        );
        assert_eq!(names(&index.active()), ["a"]);
        assert_eq!(index.carried(), 1);
        // Taken back and carried again in the same pass: carried.
        index.after_pass(
            0,
            &CarryChanges {
                unparked: vec![Arc::clone(&b)],
                parked: vec![Arc::clone(&b)],
                ..CarryChanges::default()
            },
        );
        assert_eq!(names(&index.active()), ["a"]);
        assert_eq!(index.carried(), 1);
    }
}
