//! Step 4: array children to create and the parents' `arrayStatus` and phase.

use std::collections::BTreeMap;

use kube::Resource;
use kube::api::ObjectMeta;

use crate::api::BatchJob;
use crate::api::batch_job::{ArrayStatus, JobPhase};
use crate::scheduler::{JobId, Seconds};

use super::super::time::time;
use super::super::{LABEL_ARRAY_PARENT, reasons};
use super::snapshot::{self, phase};
use super::{Decisions, NewChild, Work, event, object_ref};

/// By default at most this many children of one array wait (created, not yet bound) at a
/// time: the parent creates the next ones as earlier ones are bound, so a large array's
/// first children run while later ones are still to be created, and no pass creates more
/// than this many children of one array.
pub const ARRAY_CHILDREN_WAITING: u32 = 1_000;

/// Array children by parent id and index, with their id and (desired) phase.
pub(super) type Children = BTreeMap<JobId, BTreeMap<u32, (JobId, JobPhase)>>;

/// Step 4: array children to create (in index order, topping up each array's waiting
/// children to `window`) and parent status. `settled`: the finished children that are
/// not in `work` (settled in an earlier pass).
pub(super) fn arrays(
    work: &mut BTreeMap<JobId, Work<'_>>,
    settled: Children,
    window: u32,
    out: &mut Decisions,
    now: Seconds,
) {
    // Children by parent id and index, with their desired phase.
    let mut children = settled;
    for (id, w) in work.iter() {
        if let Some(a) = snapshot::array_child(w.job) {
            children.entry(a.parent).or_default().insert(
                a.index,
                (id.clone(), w.desired.phase.unwrap_or(JobPhase::Submitted)),
            );
        }
    }
    let parents: Vec<JobId> = work
        .iter()
        .filter(|(_, w)| snapshot::is_array_parent(w.job))
        .map(|(id, _)| id.clone())
        .collect();
    for pid in parents {
        let Some(w) = work.get_mut(&pid) else {
            continue;
        };
        let size = w.job.spec.array_properties.as_ref().map_or(0, |a| a.size);
        let mine = children.get(&pid);
        let existing = mine.map_or(0, |m| u32::try_from(m.len()).unwrap_or(u32::MAX));
        let missing = size.saturating_sub(existing);
        let ended = phase(w.desired.phase).is_terminal();
        if missing > 0 && !ended {
            let waiting = mine.map_or(0, |m| {
                m.values()
                    .filter(|(_, p)| phase(Some(*p)).is_waiting())
                    .count()
            });
            let room = usize::try_from(window.max(1))
                .unwrap_or(usize::MAX)
                .saturating_sub(waiting);
            let create: Vec<u32> = (0..size)
                .filter(|i| mine.is_none_or(|m| !m.contains_key(i)))
                .take(room)
                .collect();
            if !create.is_empty() {
                for &i in &create {
                    out.children.push(NewChild {
                        job: new_child(w.job, i),
                    });
                }
                let to_come = missing.saturating_sub(u32::try_from(create.len()).unwrap_or(0));
                event(
                    &mut out.events,
                    object_ref(w.job),
                    false,
                    reasons::CHILDREN_CREATED,
                    if to_come == 0 {
                        format!("creating {} array children", create.len())
                    } else {
                        format!(
                            "creating {} array children ({to_come} more as these are bound)",
                            create.len()
                        )
                    },
                );
            }
        }
        // Children not created yet are pending (AWS Batch counts them as the parent's
        // children from the start); those of an ended (cancelled) parent never will be,
        // and count as failed, as AWS Batch fails every child of a cancelled array.
        let mut counts = ArrayStatus {
            size,
            ..ArrayStatus::default()
        };
        if ended {
            counts.failed = missing;
        } else {
            counts.pending = missing;
        }
        let mut failed_child: Option<&JobId> = None;
        for (cid, p) in mine.into_iter().flat_map(|m| m.values()) {
            match p {
                JobPhase::Submitted | JobPhase::Pending => counts.pending += 1,
                JobPhase::Runnable => counts.runnable += 1,
                JobPhase::Starting => counts.starting += 1,
                JobPhase::Running => counts.running += 1,
                JobPhase::Succeeded => counts.succeeded += 1,
                JobPhase::Failed => {
                    counts.failed += 1;
                    failed_child.get_or_insert(cid);
                }
            }
        }
        let d = &mut w.desired;
        if phase(d.phase).is_terminal() {
            // Ended (by its children, or cancelled): only the counts move.
            d.array_status = Some(counts);
            continue;
        }
        // As in AWS Batch, the parent ends when every child has: Failed if any failed.
        let all_ended = size > 0 && counts.succeeded + counts.failed >= size;
        let new_phase = if let Some(c) = failed_child.filter(|_| all_ended) {
            d.reason = Some("ChildFailed".into());
            d.message = Some(format!(
                "{} of {size} array children failed, the first {c}",
                counts.failed
            ));
            JobPhase::Failed
        } else if size > 0 && counts.succeeded == size {
            d.reason = Some("Completed".into());
            d.message = Some(format!("all {size} array children succeeded"));
            JobPhase::Succeeded
        } else {
            let failed = if counts.failed > 0 {
                format!(", {} failed", counts.failed)
            } else {
                String::new()
            };
            d.message = Some(format!(
                "{size} children: {} pending, {} runnable, {} starting, {} running, {} succeeded{failed}",
                counts.pending, counts.runnable, counts.starting, counts.running, counts.succeeded
            ));
            if counts.starting + counts.running > 0 || counts.succeeded + counts.failed > 0 {
                JobPhase::Running
            } else if counts.runnable > 0 {
                JobPhase::Runnable
            } else {
                JobPhase::Pending
            }
        };
        if new_phase.is_terminal() {
            d.stopped_at = Some(time(now));
            event(
                &mut out.events,
                object_ref(w.job),
                new_phase == JobPhase::Failed,
                if new_phase == JobPhase::Failed {
                    reasons::FAILED
                } else {
                    reasons::SUCCEEDED
                },
                d.message.clone().unwrap_or_default(),
            );
        }
        d.phase = Some(new_phase);
        d.array_status = Some(counts);
    }
}

/// Array child `index` of `parent`: its spec, `arrayIndex`, the parent label and an
/// owner reference.
pub fn new_child(parent: &BatchJob, index: u32) -> BatchJob {
    let pname = parent.metadata.name.clone().unwrap_or_default();
    let mut spec = parent.spec.clone();
    spec.array_properties = None;
    spec.array_index = Some(index);
    BatchJob {
        metadata: ObjectMeta {
            name: Some(format!("{pname}-{index}")),
            namespace: parent.metadata.namespace.clone(),
            labels: Some(BTreeMap::from([(LABEL_ARRAY_PARENT.to_owned(), pname)])),
            owner_references: parent.controller_owner_ref(&()).map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        spec,
        status: None,
    }
}
