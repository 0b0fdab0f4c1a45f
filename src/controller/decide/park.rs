//! PURE: which settled Runnable jobs a pass leaves out of the scheduler's snapshot
//! (issue 13, "Backlog": a 50,000-job backlog that cannot run does not slow the binding
//! of new work that fits).
//!
//! A pass that may park ([`super::DecideConfig::full_pass_interval`]) sets aside the
//! settled Runnable jobs without dependencies nor backoff (and that no job depends on),
//! groups them by class (queue and resources), and asks the scheduler whether each
//! class is parkable ([`crate::scheduler::park`]: no member can be bound, hold a node or
//! get an instance in this pass). The members of a parkable class are left out, except
//! its first member in queue order (its head: the one that may hold a node) and the
//! first [`super::DecideConfig::parked_kept`] parked jobs of each queue (so that the
//! forecast, which projects only the first [`crate::scheduler::forecast::MAX_PROJECTED`]
//! waiting jobs, sees exactly what it would with them; their positions stay exact too).
//! Every other set-aside job goes into the snapshot as usual.
//!
//! A member left out keeps its status as written: its reason is its head's (checked
//! after the plan: otherwise the pass plans again with nothing left out), and its queue
//! position is refreshed by the next refresh ([`stale`]) or full pass.
//!
//! A set-aside job costs a pass one lookup in the memory and no parsing: what its
//! object says (needs, times, the first bytes of its id for the order) is worked out
//! once per resourceVersion and kept in its entry ([`Facts`]); the first-in first-out
//! order compares those integers, and text only on a tie.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::api::BatchJob;
use crate::api::batch_job::JobPhase;
use crate::scheduler::park::{ParkedKey, Parking};
use crate::scheduler::{JobId, Reason, Resources, Seconds, forecast};

use super::super::time::seconds;
use super::carry::{Carry, ClassKey, Member};
use super::settled::Facts;
use super::snapshot::{self, Built, Definitions};

/// A settled Runnable job set aside until its class is known to park or not.
pub(super) struct Aside<'a> {
    /// Its index among the pass's quiet jobs.
    pub quiet: usize,
    /// The job.
    pub job: &'a Arc<BatchJob>,
    /// Its namespace and name (read in every comparison of the first-in first-out
    /// order: kept here, next to its other keys).
    namespace: &'a str,
    name: &'a str,
    /// What one attempt needs.
    pub resources: Resources,
    /// When it was submitted (the snapshot's figure).
    pub submitted_at: Seconds,
    /// Its id's [`order_prefix`].
    order: [u128; 2],
    /// The reason it was settled with.
    pub reason: Option<Arc<Reason>>,
}

/// What the object says of a settled job for [`Facts::ready`] (whether it could be set
/// aside: Runnable, no dependencies, not an array child, no backoff left) and for
/// [`Aside::of`]; kept in its memory entry while its resourceVersion is.
pub(super) fn facts(job: &BatchJob, definitions: &Definitions<'_>) -> Facts {
    let s = job.status.as_ref();
    let pinned = s.is_some_and(|s| s.template.is_some());
    Facts {
        may_set_aside: super::settled::eligible(job)
            && s.is_some_and(|s| s.phase == Some(JobPhase::Runnable))
            && job.spec.depends_on.is_empty()
            && job.spec.array_index.is_none(),
        not_before: s.and_then(|s| s.not_before.as_ref()).map(seconds),
        runnable_since: s.and_then(|s| s.runnable_since.as_ref()).map(seconds),
        created: job.metadata.creation_timestamp.as_ref().map(seconds),
        order: order_prefix(
            job.metadata.namespace.as_deref().unwrap_or_default(),
            job.metadata.name.as_deref().unwrap_or_default(),
        ),
        needs: (pinned || job.spec.definition_ref.is_none())
            .then(|| snapshot::job_needs(job, definitions)),
    }
}

/// The first 32 bytes of a job's id text (`namespace/name`), zero-padded, as two
/// big-endian numbers: two ids whose prefixes differ compare as their prefixes do (a
/// shorter id, padded with zeros, comes before a longer one it begins), so the
/// first-in first-out order compares ids as text only when these are equal.
fn order_prefix(namespace: &str, name: &str) -> [u128; 2] {
    let mut bytes = [0u8; 32];
    let id = namespace
        .bytes()
        .chain(std::iter::once(b'/'))
        .chain(name.bytes());
    for (b, c) in bytes.iter_mut().zip(id) {
        *b = c;
    }
    let (hi, lo) = bytes.split_at(16);
    let number = |half: &[u8]| half.iter().fold(0u128, |n, b| (n << 8) | u128::from(*b));
    [number(hi), number(lo)]
}

impl<'a> Aside<'a> {
    /// A settled job (`quiet` index, settled with `reason`, its [`facts`]) that is
    /// [`Facts::ready`], if its needs are known.
    pub fn of(
        quiet: usize,
        job: &'a Arc<BatchJob>,
        reason: Option<Arc<Reason>>,
        facts: &Facts,
        definitions: &Definitions<'_>,
        now: Seconds,
    ) -> Option<Self> {
        let resources = match facts.needs {
            Some(needs) => needs?,
            None => snapshot::job_needs(job, definitions)?,
        };
        Some(Aside {
            quiet,
            job,
            namespace: job.metadata.namespace.as_deref().unwrap_or_default(),
            name: job.metadata.name.as_deref().unwrap_or_default(),
            resources,
            submitted_at: facts.created.unwrap_or(now),
            order: facts.order,
            reason,
        })
    }

    /// What the carry keeps of it: the object, its submission time and order prefix.
    pub fn carried(&self) -> (Arc<BatchJob>, Seconds, [u128; 2]) {
        (Arc::clone(self.job), self.submitted_at, self.order)
    }

    fn namespace(&self) -> &'a str {
        self.namespace
    }

    fn name(&self) -> &'a str {
        self.name
    }

    /// Its key in first-in first-out order.
    fn key(&self) -> ParkedKey<'a> {
        ParkedKey {
            submitted_at: self.submitted_at,
            id: [self.namespace(), "/", self.name()],
        }
    }
}

/// First-in first-out order of two set-aside jobs of one queue: submission time, then
/// id (`namespace/name` as text, as [`JobId`]s compare).
fn fifo(a: &Aside<'_>, b: &Aside<'_>) -> Ordering {
    a.submitted_at
        .cmp(&b.submitted_at)
        .then_with(|| a.order.cmp(&b.order))
        .then_with(|| {
            let (na, nb) = (a.namespace(), b.namespace());
            if na == nb {
                // `ns/` is common to both: the names decide (one memcmp).
                return a.name().cmp(b.name());
            }
            let (ka, kb) = (a.key(), b.key());
            ka.id
                .iter()
                .flat_map(|p| p.bytes())
                .cmp(kb.id.iter().flat_map(|p| p.bytes()))
        })
}

/// A class with members left out: its head (in the snapshot), the set-aside members
/// left out (indices), and whether it has carried members ([`super::carry`]).
pub(super) struct ParkedClass {
    pub head: JobId,
    pub members: Vec<usize>,
    pub class: ClassKey,
}

/// The jobs a pass left out of its snapshot.
#[derive(Default)]
pub(super) struct Parked<'a> {
    /// Each class with members left out.
    pub classes: Vec<ParkedClass>,
    /// The keys of the set-aside members left out, by queue
    /// ([`crate::scheduler::park::count_parked_ahead`]); carried ones are counted by
    /// the carry ([`Carry::ahead`]).
    pub keys: BTreeMap<&'a str, Vec<ParkedKey<'a>>>,
    /// How many were left out: set-aside members and carried ones.
    pub jobs: usize,
}

/// First-in first-out order of a set-aside job against a carried one.
fn fifo_carried(a: &Aside<'_>, m: &Member) -> Ordering {
    a.submitted_at
        .cmp(&m.submitted_at)
        .then_with(|| a.order.cmp(&m.order))
        .then_with(|| a.key().id.iter().flat_map(|p| p.bytes()).cmp(m.id.bytes()))
}

/// Puts the set-aside jobs into `built`'s snapshot except the members of parkable
/// classes beyond the heads and each queue's first `kept` (see the module
/// documentation), and those `refreshed` (a refresh found their queue fields stale:
/// [`stale`]); returns those left out. With carried members (`carry`), the same
/// rule holds over the set-aside and carried jobs together: carried members that a
/// pass must see (a class no longer parkable, a job another depends on, a queue's first
/// `kept`, a class's head) are taken out of the carry and returned as `Err`, for the
/// pass to be decided again with them.
#[allow(clippy::too_many_arguments)]
pub(super) fn park<'a>(
    built: &mut Built,
    aside: &[Aside<'a>],
    definitions: &Definitions<'_>,
    kept: usize,
    now: Seconds,
    carry: &mut Carry,
    refreshed: &BTreeSet<*const BatchJob>,
) -> Result<Parked<'a>, Vec<Member>> {
    let mut back: Vec<Member> = Vec::new();
    // Carried jobs another job depends on (its dependents look them up).
    if !carry.is_empty() {
        let wanted: BTreeSet<&str> = built
            .needed
            .targets()
            .map(|t| t.0.as_str())
            .filter(|id| carry.may_hold(id))
            .collect();
        if !wanted.is_empty() {
            back.extend(carry.take_ids(&wanted));
        }
    }
    // Classes, by queue and resources (a backlog is mostly a few classes in a row).
    let mut classes: BTreeMap<(&'a str, Resources), usize> = BTreeMap::new();
    let mut members_of: Vec<Vec<usize>> = Vec::new();
    let mut last: Option<((&'a str, Resources), usize)> = None;
    for (i, a) in aside.iter().enumerate() {
        // A job another depends on stays in the snapshot (its dependents look it up),
        // and so does one a refresh found stale (its queue fields are written).
        if built.needed.is_target(a.namespace(), a.name())
            || refreshed.contains(&Arc::as_ptr(a.job))
        {
            built.add_aside(a.job, definitions, now);
            continue;
        }
        let key = (a.job.spec.queue.as_str(), a.resources);
        let c = match last {
            Some((k, c)) if k == key => c,
            _ => *classes.entry(key).or_insert_with(|| {
                members_of.push(Vec::new());
                members_of.len() - 1
            }),
        };
        members_of[c].push(i);
        last = Some((key, c));
    }
    let test = Parking::new(&built.snapshot);
    // Carried classes no longer parkable go back whole.
    let unparkable: Vec<ClassKey> = carry
        .classes()
        .filter(|k| !test.parkable(&k.0, &k.1))
        .cloned()
        .collect();
    for k in &unparkable {
        back.extend(carry.take_class(k));
    }
    let parkable: Vec<(&'a str, usize, bool)> = classes
        .iter()
        .map(|(k, c)| (k.0, *c, test.parkable(k.0, &k.1)))
        .collect();
    drop(test);
    // Parkable classes by queue; the others go into the snapshot.
    let mut by_queue: BTreeMap<&'a str, Vec<usize>> = BTreeMap::new();
    for (queue, c, park) in parkable {
        if park {
            by_queue.entry(queue).or_default().push(c);
        } else {
            for &i in &members_of[c] {
                built.add_aside(aside[i].job, definitions, now);
            }
        }
    }
    // Queues with carried members only: their heads are carried.
    let carried_queues: BTreeSet<String> = carry.classes().map(|k| k.0.clone()).collect();
    let mut out = Parked::default();
    let mut left_out = vec![false; aside.len()];
    let class_keys: Vec<(&'a str, Resources)> = {
        let mut v = vec![("", Resources::default()); members_of.len()];
        for (k, c) in &classes {
            v[*c] = *k;
        }
        v
    };
    let queues: BTreeSet<&str> = by_queue
        .keys()
        .copied()
        .chain(carried_queues.iter().map(String::as_str))
        .collect();
    for queue in queues {
        let cs: &[usize] = by_queue.get(queue).map_or(&[], Vec::as_slice);
        let mut all: Vec<usize> = cs
            .iter()
            .flat_map(|c| members_of[*c].iter().copied())
            .collect();
        // The queue's first `kept` set-aside members, sorted (the others are left out).
        let window: Vec<usize> = if all.len() > kept {
            let (_, _, beyond) =
                all.select_nth_unstable_by(kept, |x, y| fifo(&aside[*x], &aside[*y]));
            for &i in beyond.iter() {
                left_out[i] = true;
            }
            left_out[all[kept]] = true;
            let mut w = all[..kept].to_vec();
            w.sort_by(|x, y| fifo(&aside[*x], &aside[*y]));
            w
        } else {
            let mut w = all.clone();
            w.sort_by(|x, y| fifo(&aside[*x], &aside[*y]));
            w
        };
        // Carried members among the first `kept` of set-aside and carried together go
        // back (the first of the queue are in the snapshot).
        let carried = carry.first_of_queue(queue, kept);
        let mut taken: BTreeMap<ClassKey, usize> = BTreeMap::new();
        {
            let (mut w, mut k) = (window.iter().peekable(), carried.iter().peekable());
            for _ in 0..kept {
                match (w.peek(), k.peek()) {
                    (Some(&&i), Some((_, m))) if fifo_carried(&aside[i], m).is_lt() => {
                        w.next();
                    }
                    (_, Some((class, _))) => {
                        *taken.entry((*class).clone()).or_default() += 1;
                        k.next();
                    }
                    (Some(_), None) => {
                        w.next();
                    }
                    (None, None) => break,
                }
            }
            // Set-aside members pushed out of the window by carried ones stay in it:
            // the pass is decided again with those carried ones back.
        }
        for (class, n) in &taken {
            back.extend(carry.take_first(class, *n));
        }
        if !taken.is_empty() {
            continue;
        }
        // Heads: for each class with members left out (set aside or carried), its first
        // member in the window, else its first member overall.
        let mut class_list: BTreeSet<ClassKey> =
            carry.classes().filter(|k| k.0 == queue).cloned().collect();
        class_list.extend(
            cs.iter()
                .map(|c| (class_keys[*c].0.to_owned(), class_keys[*c].1)),
        );
        for class in class_list {
            let members: &[usize] = classes
                .get(&(queue, class.1))
                .map_or(&[], |c| members_of[*c].as_slice());
            let first_carried = carry.first(&class);
            let mut front: Option<usize> = None;
            let mut any_left = first_carried.is_some();
            for &i in members {
                if left_out[i] {
                    any_left = true;
                } else if front.is_none_or(|f| fifo(&aside[i], &aside[f]).is_lt()) {
                    front = Some(i);
                }
            }
            if !any_left {
                continue;
            }
            let head = match front {
                Some(f) => f,
                None => {
                    let first_aside = members
                        .iter()
                        .copied()
                        .min_by(|x, y| fifo(&aside[*x], &aside[*y]));
                    match (first_aside, first_carried) {
                        (Some(a), Some(m)) if fifo_carried(&aside[a], m).is_lt() => a,
                        (Some(a), None) => a,
                        (_, Some(_)) => {
                            back.extend(carry.take_first(&class, 1));
                            continue;
                        }
                        (None, None) => continue,
                    }
                }
            };
            left_out[head] = false;
            let left: Vec<usize> = members.iter().copied().filter(|i| left_out[*i]).collect();
            if !left.is_empty() || carry.first(&class).is_some() {
                out.classes.push(ParkedClass {
                    head: snapshot::job_id(aside[head].job),
                    members: left,
                    class,
                });
            }
        }
        let mut keys = Vec::new();
        for i in all {
            if left_out[i] {
                keys.push(aside[i].key());
            } else {
                built.add_aside(aside[i].job, definitions, now);
            }
        }
        if let Some((&q, _)) = by_queue.get_key_value(queue)
            && !keys.is_empty()
        {
            out.jobs += keys.len();
            out.keys.insert(q, keys);
        }
    }
    if !back.is_empty() {
        return Err(back);
    }
    out.jobs += carry.len();
    Ok(out)
}

/// A job left out of a pass's snapshot: set aside in it (an index into its set-aside
/// jobs) or carried.
#[derive(Clone, Copy)]
enum Left<'x, 'a> {
    Aside(usize, &'x Aside<'a>),
    Carried(&'x Member),
}

impl Left<'_, '_> {
    fn submitted_at(&self) -> Seconds {
        match self {
            Left::Aside(_, a) => a.submitted_at,
            Left::Carried(m) => m.submitted_at,
        }
    }

    fn order(&self) -> [u128; 2] {
        match self {
            Left::Aside(_, a) => a.order,
            Left::Carried(m) => m.order,
        }
    }

    /// Its id's text, byte by byte.
    fn id(&self) -> impl Iterator<Item = u8> + '_ {
        let (a, b, c) = match self {
            Left::Aside(_, a) => (a.namespace(), "/", a.name()),
            Left::Carried(m) => (&*m.id, "", ""),
        };
        a.bytes().chain(b.bytes()).chain(c.bytes())
    }

    /// First-in first-out order of two left-out jobs of one queue.
    fn fifo(&self, other: &Self) -> Ordering {
        self.submitted_at()
            .cmp(&other.submitted_at())
            .then_with(|| self.order().cmp(&other.order()))
            .then_with(|| self.id().cmp(other.id()))
    }

    /// Whether the snapshot job `(submitted_at, id)` comes before it in its queue.
    fn after(&self, submitted_at: Seconds, id: &JobId) -> bool {
        match self {
            // Ids are distinct: after it is not before it.
            Left::Carried(m) => !m.before(submitted_at, id),
            Left::Aside(_, a) => a
                .submitted_at
                .cmp(&submitted_at)
                .then_with(|| {
                    a.namespace()
                        .bytes()
                        .chain(std::iter::once(b'/'))
                        .chain(a.name().bytes())
                        .cmp(id.0.bytes())
                })
                .is_gt(),
        }
    }

    /// Its queue position and estimated start as its status holds them.
    fn written(&self) -> Option<(u32, Option<Seconds>)> {
        match self {
            Left::Carried(m) => m.written,
            Left::Aside(_, a) => a.job.status.as_ref().and_then(|s| {
                Some((
                    s.queue_position?,
                    s.estimated_start_time.as_ref().map(seconds),
                ))
            }),
        }
    }
}

/// The jobs left out of a pass whose written queue fields a full pass would rewrite.
#[derive(Debug, Default)]
pub(super) struct Stale {
    /// Set-aside jobs left out (indices into the pass's set-aside jobs).
    pub aside: Vec<usize>,
    /// Carried jobs (their ids, `namespace/name`).
    pub carried: BTreeSet<String>,
}

impl Stale {
    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.aside.is_empty() && self.carried.is_empty()
    }
}

/// A **refresh** of the jobs a pass left out (`parked`'s set-aside members, and
/// `carry`): the queue position a full pass would give each, without planning them,
/// and those whose written queue fields that position moves materially
/// ([`crate::scheduler::forecast::material_change`]), for the pass to plan them after
/// all (then their fields are written as a full pass writes them).
///
/// A left-out job is Runnable, never bound, and waits in a first-in first-out queue
/// ([`crate::scheduler::park`]), so its position in a full pass is one plus the jobs of
/// its queue before it in that order: those the plan positioned (`plan.queue`, after
/// [`crate::scheduler::park::count_parked_ahead`]) and the other left-out ones. One walk
/// over each queue's left-out jobs in that order (the carry keeps each class sorted),
/// integers compared, no object read: O(left out + positioned).
///
/// A left-out job is never projected: it has at least its queue's first `parked_kept`
/// waiting jobs before it, as many as the forecast projects by default
/// ([`crate::scheduler::forecast::MAX_PROJECTED`]), so its estimated start is none; one
/// written with an estimated start is stale. (With a lower `--parked-kept` a left-out
/// job could have one: it gets it when it is among its queue's first `parked_kept`.)
pub(super) fn stale(
    plan: &crate::scheduler::Plan,
    snapshot: &crate::scheduler::Snapshot,
    aside: &[Aside<'_>],
    parked: &Parked<'_>,
    carry: &Carry,
    now: Seconds,
) -> Stale {
    // Left-out jobs by queue (each list sorted below).
    let mut left: BTreeMap<&str, Vec<Left<'_, '_>>> = BTreeMap::new();
    for c in &parked.classes {
        let l = left.entry(c.class.0.as_str()).or_default();
        l.extend(c.members.iter().map(|&i| Left::Aside(i, &aside[i])));
    }
    for (queue, _) in carry.by_queue() {
        let l = left.entry(queue).or_default();
        for members in carry.of_queue(queue) {
            l.extend(members.iter().map(Left::Carried));
        }
    }
    // The positioned jobs of those queues, in first-in first-out order.
    let mut positioned: BTreeMap<&str, Vec<(Seconds, &JobId)>> =
        left.keys().map(|q| (*q, Vec::new())).collect();
    for id in plan.queue.keys() {
        if let Some(job) = snapshot.jobs.get(id)
            && let Some(v) = positioned.get_mut(job.queue.as_str())
        {
            v.push((job.submitted_at, id));
        }
    }
    let mut out = Stale::default();
    for (queue, mut jobs) in left {
        // Sorted runs (a class each, and the set-aside ones): merged.
        jobs.sort_by(Left::fifo);
        let mut before: Vec<(Seconds, &JobId)> = positioned.remove(queue).unwrap_or_default();
        before.sort_unstable();
        let mut p = 0usize;
        for (i, job) in jobs.iter().enumerate() {
            while before.get(p).is_some_and(|(at, id)| job.after(*at, id)) {
                p += 1;
            }
            let position = u32::try_from(i.saturating_add(p).saturating_add(1)).unwrap_or(u32::MAX);
            if !forecast::material_change(job.written(), (position, None), now) {
                continue;
            }
            match job {
                Left::Aside(i, _) => out.aside.push(*i),
                Left::Carried(m) => {
                    out.carried.insert(m.id.to_string());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::order_prefix;

    #[test]
    fn id_prefixes_order_ids_as_their_text_does() {
        // Ids that differ within, at and beyond the 32 bytes, shorter and longer ones,
        // other namespaces ('-' sorts before '/'), and a NUL byte.
        let ids = [
            ("default", "wait-00012"),
            ("default", "wait-00002"),
            ("default", "wait-0001"),
            ("default", "wait-00012-and-a-much-longer-name-a"),
            ("default", "wait-00012-and-a-much-longer-name-b"),
            ("default", "wait-00012-and-a-much-longer-name"),
            ("def", "ault"),
            ("default-x", "a"),
            ("a", "b\0"),
            ("a", "b"),
            ("a", ""),
            ("", "a"),
        ];
        for (na, a) in ids {
            for (nb, b) in ids {
                let text = format!("{na}/{a}").cmp(&format!("{nb}/{b}"));
                let prefixes = order_prefix(na, a).cmp(&order_prefix(nb, b));
                // Prefixes that differ decide as the text does; equal ones leave it.
                assert!(
                    prefixes.is_eq() || prefixes == text,
                    "{na}/{a} against {nb}/{b}"
                );
                if text.is_eq() {
                    assert!(prefixes.is_eq());
                }
            }
        }
    }
}
