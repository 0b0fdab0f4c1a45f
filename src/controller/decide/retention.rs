//! Retention: a finished job is deleted `ttlSecondsAfterFinished` after it ended (its own,
//! else its queue's `jobTtlSecondsAfterFinished`); an array parent goes with its children,
//! which have no TTL of their own. Finished children whose parent is gone are deleted too
//! (a control plane without a garbage collector leaves them behind).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::api::{BatchJob, JobQueue};
use crate::scheduler::{JobId, Seconds};

use super::super::time::seconds;
use super::snapshot::{array_child, is_array_parent, phase};
use super::{Decisions, JobDeletion, Work};

/// Each queue's `jobTtlSecondsAfterFinished`, by queue name.
pub(super) fn ttl_defaults(queues: &[Arc<JobQueue>]) -> BTreeMap<&str, u32> {
    queues
        .iter()
        .filter_map(|q| {
            Some((
                q.metadata.name.as_deref()?,
                q.spec.job_ttl_seconds_after_finished?,
            ))
        })
        .collect()
}

/// Whether a job finished (as observed) at least its TTL ago.
pub(super) fn expired(job: &BatchJob, defaults: &BTreeMap<&str, u32>, now: Seconds) -> bool {
    let Some(st) = job.status.as_ref() else {
        return false;
    };
    let ttl = job
        .spec
        .ttl_seconds_after_finished
        .or_else(|| defaults.get(job.spec.queue.as_str()).copied());
    match (ttl, st.stopped_at.as_ref()) {
        (Some(ttl), Some(stopped)) if phase(st.phase).is_terminal() => {
            now >= seconds(stopped).saturating_add(Seconds::from(ttl))
        }
        _ => false,
    }
}

/// Adds the deletions of this pass to `out.delete_jobs` (children before their parent)
/// and drops the writes to the jobs it deletes.
pub(super) fn retention(
    work: &BTreeMap<JobId, Work<'_>>,
    queues: &[Arc<JobQueue>],
    now: Seconds,
    out: &mut Decisions,
) {
    let defaults = ttl_defaults(queues);
    let expired = |w: &Work<'_>| expired(w.job, &defaults, now);
    let finished = |w: &Work<'_>| phase(w.job.status.as_ref().and_then(|s| s.phase)).is_terminal();
    let mut children: BTreeMap<&JobId, Vec<&JobId>> = BTreeMap::new();
    let mut deleted: BTreeSet<&JobId> = BTreeSet::new();
    for (id, w) in work {
        match array_child(w.job) {
            // Orphaned and finished: its parent was deleted.
            Some(a) if !work.contains_key(&a.parent) && finished(w) => {
                deleted.insert(id);
            }
            Some(a) => {
                if let Some((p, _)) = work.get_key_value(&a.parent) {
                    children.entry(p).or_default().push(id);
                }
            }
            None => {}
        }
    }
    for (id, w) in work {
        if array_child(w.job).is_some() || !expired(w) {
            continue;
        }
        if is_array_parent(w.job) {
            deleted.extend(children.get(id).into_iter().flatten().copied());
        }
        deleted.insert(id);
    }
    // Children are deleted before their parent: a parent still there keeps its TTL and is
    // deleted by the next pass if this one's deletions do not all land.
    out.delete_jobs = deleted
        .iter()
        .filter_map(|id| {
            let w = work.get(*id)?;
            let (namespace, name) = id.0.split_once('/').unwrap_or(("", &id.0));
            Some(JobDeletion {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                uid: w.job.metadata.uid.clone(),
                array_parent: is_array_parent(w.job),
            })
        })
        .collect();
    out.delete_jobs.sort_by_key(|d| d.array_parent);
    out.jobs
        .retain(|u| !deleted.contains(&JobId(format!("{}/{}", u.namespace, u.name))));
}
