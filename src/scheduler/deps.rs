//! Dependencies: which waiting jobs may run, which must wait, and which fail because
//! something they depend on failed.
//!
//! Rules (AWS Batch):
//! - a job is runnable only when every `dependsOn` job has Succeeded; a dependency on an
//!   array parent is met when every child of that array has Succeeded;
//! - `N_TO_N` on array `B`: child `i` waits for child `i` of `B`;
//! - `SEQUENTIAL`: child `i` waits for child `i - 1` of its own array (child 0 waits for
//!   nothing through it);
//! - a failed dependency (a Failed job, or an array with any Failed child) fails the
//!   dependent with reason [`DEPENDENCY_FAILED`](super::reasons::DEPENDENCY_FAILED), and
//!   that failure cascades to the dependent's own dependents in the same pass.
//!
//! The snapshot must hold every job a waiting job depends on (and all children of an
//! array it depends on, or the array's size in [`Snapshot::array_sizes`] while its
//! children are still being created: the ones not created yet are waited for); a
//! dependency that is not there is reported, never guessed.
//! Linear in jobs plus dependency edges, with no recursion (a 10,000-child SEQUENTIAL
//! array is a 10,000-long chain).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::model::{DependencyType, Job, JobId, Phase, Snapshot};
use super::reasons::Reason;

/// What the dependencies of one waiting job say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DependencyState {
    /// Every dependency has Succeeded (or there are none).
    Met,
    /// Something has not succeeded yet; the reason names it.
    Waiting(Reason),
    /// A dependency failed: the job fails with `DependencyFailed`.
    Failed {
        /// The dependency that failed (an array parent id for a failed array).
        dependency: JobId,
    },
}

/// A resolved dependency target.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    /// A single job.
    Job(JobId),
    /// Every child of an array parent.
    Array(JobId),
    /// Not in the snapshot (the id names it; array children as `parent:index`).
    Missing(JobId),
    /// An array child its parent has not created yet (`parent:index`): waited for.
    NotCreated(JobId),
    /// The job depends on itself.
    SelfLoop,
}

/// Children of each array parent, by index, and the sizes of arrays still creating them.
struct Arrays<'a> {
    children: BTreeMap<&'a JobId, BTreeMap<u32, &'a JobId>>,
    sizes: &'a BTreeMap<JobId, u32>,
}

impl<'a> Arrays<'a> {
    fn index(snapshot: &'a Snapshot) -> Self {
        let mut children: BTreeMap<&JobId, BTreeMap<u32, &JobId>> = BTreeMap::new();
        for (id, job) in &snapshot.jobs {
            if let Some(a) = &job.array {
                children.entry(&a.parent).or_default().insert(a.index, id);
            }
        }
        Arrays {
            children,
            sizes: &snapshot.array_sizes,
        }
    }

    /// An array parent: it has children, or is still creating them.
    fn is_array(&self, parent: &JobId) -> bool {
        self.children.contains_key(parent) || self.sizes.contains_key(parent)
    }

    /// Child `index` of `parent` is yet to be created.
    fn will_create(&self, parent: &JobId, index: u32) -> bool {
        self.sizes.get(parent).is_some_and(|size| index < *size)
    }

    /// Every child exists (as far as the snapshot knows the array's size).
    fn complete(&self, parent: &JobId) -> bool {
        let have = self.children.get(parent).map_or(0, BTreeMap::len);
        self.sizes
            .get(parent)
            .is_none_or(|size| usize::try_from(*size).is_ok_and(|s| have >= s))
    }

    fn child(&self, parent: &JobId, index: u32) -> Option<&'a JobId> {
        self.children
            .get(parent)
            .and_then(|c| c.get(&index).copied())
    }
}

fn child_id(parent: &JobId, index: u32) -> JobId {
    JobId(format!("{parent}:{index}"))
}

fn resolve(id: &JobId, job: &Job, snapshot: &Snapshot, arrays: &Arrays<'_>) -> Vec<Target> {
    let mut out = Vec::with_capacity(job.depends_on.len());
    for dep in &job.depends_on {
        let target = match dep.kind {
            DependencyType::Sequential => match &job.array {
                Some(a) if a.index > 0 => match arrays.child(&a.parent, a.index - 1) {
                    Some(prev) => Target::Job(prev.clone()),
                    None => Target::Missing(child_id(&a.parent, a.index - 1)),
                },
                _ => continue,
            },
            DependencyType::NToN if job.array.is_some() && arrays.is_array(&dep.job) => {
                let index = job.array.as_ref().map_or(0, |a| a.index);
                match arrays.child(&dep.job, index) {
                    Some(c) => Target::Job(c.clone()),
                    // Not created yet: the array creates its children in batches.
                    None if arrays.will_create(&dep.job, index) => {
                        Target::NotCreated(child_id(&dep.job, index))
                    }
                    None => Target::Missing(child_id(&dep.job, index)),
                }
            }
            _ => {
                if arrays.is_array(&dep.job) {
                    Target::Array(dep.job.clone())
                } else if snapshot.jobs.contains_key(&dep.job) {
                    Target::Job(dep.job.clone())
                } else {
                    Target::Missing(dep.job.clone())
                }
            }
        };
        let self_loop = match &target {
            Target::Job(t) => t == id,
            Target::Array(p) => job.array.as_ref().is_some_and(|a| &a.parent == p),
            _ => false,
        };
        out.push(if self_loop { Target::SelfLoop } else { target });
    }
    out
}

/// Evaluates the dependencies of every waiting (Submitted, Pending, Runnable) job.
pub fn evaluate(snapshot: &Snapshot) -> BTreeMap<JobId, DependencyState> {
    evaluate_in_order(snapshot)
        .into_iter()
        .map(|(id, _, state)| (id.clone(), state))
        .collect()
}

/// [`evaluate`], as a list of the waiting jobs in id order with their job (no map is
/// built and no id copied: a pass over a backlog of waiting jobs looks each up once).
pub fn evaluate_in_order(snapshot: &Snapshot) -> Vec<(&JobId, &Job, DependencyState)> {
    let arrays = Arrays::index(snapshot);

    // Resolve targets of waiting jobs and the reverse edges (in id order).
    let mut targets: Vec<(&JobId, &Job, Vec<Target>)> = Vec::new();
    let mut dependents: BTreeMap<Target, Vec<&JobId>> = BTreeMap::new();
    for (id, job) in &snapshot.jobs {
        if !job.phase.is_waiting() {
            continue;
        }
        let resolved = resolve(id, job, snapshot, &arrays);
        for t in &resolved {
            if matches!(t, Target::Job(_) | Target::Array(_)) {
                dependents.entry(t.clone()).or_default().push(id);
            }
        }
        targets.push((id, job, resolved));
    }

    // Failure cascade, breadth-first from every failed job and failed array.
    let mut failed: BTreeMap<&JobId, JobId> = BTreeMap::new();
    let mut queue: VecDeque<Target> = VecDeque::new();
    let mut failed_arrays: BTreeSet<JobId> = BTreeSet::new();
    for (id, job) in &snapshot.jobs {
        if job.phase == Phase::Failed {
            queue.push_back(Target::Job(id.clone()));
            if let Some(a) = &job.array
                && failed_arrays.insert(a.parent.clone())
            {
                queue.push_back(Target::Array(a.parent.clone()));
            }
        }
    }
    while let Some(key) = queue.pop_front() {
        let cause = match &key {
            Target::Job(j) | Target::Array(j) => j.clone(),
            _ => continue,
        };
        let Some(list) = dependents.get(&key) else {
            continue;
        };
        for &d in list {
            if failed.contains_key(d) {
                continue;
            }
            failed.insert(d, cause.clone());
            queue.push_back(Target::Job(d.clone()));
            if let Some(a) = snapshot.jobs.get(d).and_then(|j| j.array.as_ref())
                && failed_arrays.insert(a.parent.clone())
            {
                queue.push_back(Target::Array(a.parent.clone()));
            }
        }
    }

    // Array aggregates: all children exist and succeeded?
    let array_done = |parent: &JobId| -> bool {
        arrays.complete(parent)
            && arrays.children.get(parent).is_some_and(|c| {
                c.values().all(|id| {
                    snapshot
                        .jobs
                        .get(*id)
                        .is_some_and(|j| j.phase == Phase::Succeeded)
                })
            })
    };

    let mut out = Vec::with_capacity(targets.len());
    for (id, job, resolved) in targets {
        if let Some(cause) = failed.get(id) {
            out.push((
                id,
                job,
                DependencyState::Failed {
                    dependency: cause.clone(),
                },
            ));
            continue;
        }
        let mut state = DependencyState::Met;
        for t in resolved {
            let unmet = match t {
                Target::Job(j) => {
                    let ok = snapshot
                        .jobs
                        .get(&j)
                        .is_some_and(|job| job.phase == Phase::Succeeded);
                    (!ok).then_some(Reason::WaitingOnDependency { dependency: j })
                }
                Target::Array(p) => {
                    (!array_done(&p)).then_some(Reason::WaitingOnDependency { dependency: p })
                }
                Target::Missing(j) => Some(Reason::DependencyNotFound { dependency: j }),
                Target::NotCreated(j) => Some(Reason::WaitingOnDependency { dependency: j }),
                Target::SelfLoop => Some(Reason::DependencyCycle),
            };
            if let Some(reason) = unmet {
                state = DependencyState::Waiting(reason);
                break;
            }
        }
        out.push((id, job, state));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::model::{ArrayChild, Dependency};
    use crate::scheduler::resources::Resources;

    fn job(phase: Phase, deps: &[(&str, DependencyType)]) -> Job {
        let mut j = Job::runnable("q", Resources::new(1000, 1, 0), 0);
        j.phase = phase;
        j.depends_on = deps
            .iter()
            .map(|(d, k)| Dependency {
                job: JobId::new(*d),
                kind: *k,
            })
            .collect();
        j
    }

    fn child(parent: &str, index: u32, phase: Phase, deps: &[(&str, DependencyType)]) -> Job {
        let mut j = job(phase, deps);
        j.array = Some(ArrayChild {
            parent: JobId::new(parent),
            index,
        });
        j
    }

    fn snap(jobs: Vec<(&str, Job)>) -> Snapshot {
        Snapshot {
            jobs: jobs
                .into_iter()
                .map(|(id, j)| (JobId::new(id), j))
                .collect(),
            ..Snapshot::default()
        }
    }

    fn state(s: &BTreeMap<JobId, DependencyState>, id: &str) -> DependencyState {
        s[&JobId::new(id)].clone()
    }

    const STD: DependencyType = DependencyType::Standard;

    #[test]
    fn no_dependencies_is_met() {
        let s = evaluate(&snap(vec![("a", job(Phase::Submitted, &[]))]));
        assert_eq!(state(&s, "a"), DependencyState::Met);
    }

    #[test]
    fn waits_until_every_dependency_succeeded() {
        let s = evaluate(&snap(vec![
            ("extract", job(Phase::Succeeded, &[])),
            ("load", job(Phase::Running, &[])),
            (
                "report",
                job(Phase::Pending, &[("extract", STD), ("load", STD)]),
            ),
        ]));
        assert_eq!(
            state(&s, "report"),
            DependencyState::Waiting(Reason::WaitingOnDependency {
                dependency: JobId::new("load")
            })
        );
        let s = evaluate(&snap(vec![
            ("extract", job(Phase::Succeeded, &[])),
            ("load", job(Phase::Succeeded, &[])),
            (
                "report",
                job(Phase::Pending, &[("extract", STD), ("load", STD)]),
            ),
        ]));
        assert_eq!(state(&s, "report"), DependencyState::Met);
    }

    #[test]
    fn failed_dependency_fails_and_cascades() {
        let s = evaluate(&snap(vec![
            ("a", job(Phase::Failed, &[])),
            ("b", job(Phase::Pending, &[("a", STD)])),
            ("c", job(Phase::Pending, &[("b", STD)])),
            ("d", job(Phase::Pending, &[])),
        ]));
        assert_eq!(
            state(&s, "b"),
            DependencyState::Failed {
                dependency: JobId::new("a")
            }
        );
        assert_eq!(
            state(&s, "c"),
            DependencyState::Failed {
                dependency: JobId::new("b")
            }
        );
        assert_eq!(state(&s, "d"), DependencyState::Met);
    }

    #[test]
    fn missing_dependency_is_reported_not_guessed() {
        let s = evaluate(&snap(vec![("b", job(Phase::Pending, &[("ghost", STD)]))]));
        assert_eq!(
            state(&s, "b"),
            DependencyState::Waiting(Reason::DependencyNotFound {
                dependency: JobId::new("ghost")
            })
        );
    }

    #[test]
    fn dependency_on_array_parent_waits_for_all_children() {
        let mut jobs = vec![
            ("arr:0", child("arr", 0, Phase::Succeeded, &[])),
            ("arr:1", child("arr", 1, Phase::Running, &[])),
            ("after", job(Phase::Pending, &[("arr", STD)])),
        ];
        let s = evaluate(&snap(jobs.clone()));
        assert_eq!(
            state(&s, "after"),
            DependencyState::Waiting(Reason::WaitingOnDependency {
                dependency: JobId::new("arr")
            })
        );
        jobs[1].1.phase = Phase::Succeeded;
        assert_eq!(
            state(&evaluate(&snap(jobs.clone())), "after"),
            DependencyState::Met
        );
        jobs[1].1.phase = Phase::Failed;
        assert_eq!(
            state(&evaluate(&snap(jobs)), "after"),
            DependencyState::Failed {
                dependency: JobId::new("arr")
            }
        );
    }

    #[test]
    fn n_to_n_child_waits_for_same_index() {
        let n2n = [("a", DependencyType::NToN)];
        let s = evaluate(&snap(vec![
            ("a:0", child("a", 0, Phase::Succeeded, &[])),
            ("a:1", child("a", 1, Phase::Running, &[])),
            ("b:0", child("b", 0, Phase::Pending, &n2n)),
            ("b:1", child("b", 1, Phase::Pending, &n2n)),
        ]));
        assert_eq!(state(&s, "b:0"), DependencyState::Met);
        assert_eq!(
            state(&s, "b:1"),
            DependencyState::Waiting(Reason::WaitingOnDependency {
                dependency: JobId::new("a:1")
            })
        );
    }

    #[test]
    fn an_array_still_creating_its_children_is_waited_for_whole() {
        let n2n = [("a", DependencyType::NToN)];
        let mut s = snap(vec![
            ("a:0", child("a", 0, Phase::Succeeded, &[])),
            ("a:1", child("a", 1, Phase::Succeeded, &[])),
            ("b:0", child("b", 0, Phase::Pending, &n2n)),
            ("b:2", child("b", 2, Phase::Pending, &n2n)),
            ("b:3", child("b", 3, Phase::Pending, &n2n)),
            ("after", job(Phase::Pending, &[("a", STD)])),
            ("later", job(Phase::Pending, &[("c", STD)])),
        ]);
        // Array a has 3 children, one not created yet; array c none yet.
        s.array_sizes = [(JobId::new("a"), 3), (JobId::new("c"), 5)].into();
        let e = evaluate(&s);
        let waiting = |d: &str| {
            DependencyState::Waiting(Reason::WaitingOnDependency {
                dependency: JobId::new(d),
            })
        };
        assert_eq!(state(&e, "after"), waiting("a"));
        assert_eq!(state(&e, "later"), waiting("c"));
        assert_eq!(state(&e, "b:0"), DependencyState::Met);
        assert_eq!(state(&e, "b:2"), waiting("a:2"));
        // Beyond the array's size: a dependency that will never exist.
        assert_eq!(
            state(&e, "b:3"),
            DependencyState::Waiting(Reason::DependencyNotFound {
                dependency: JobId::new("a:3")
            })
        );
        // Once it is created and succeeds, the array is done.
        s.jobs
            .insert(JobId::new("a:2"), child("a", 2, Phase::Succeeded, &[]));
        assert_eq!(state(&evaluate(&s), "after"), DependencyState::Met);
    }

    #[test]
    fn n_to_n_failure_fails_only_the_matching_child() {
        let n2n = [("a", DependencyType::NToN)];
        let s = evaluate(&snap(vec![
            ("a:0", child("a", 0, Phase::Succeeded, &[])),
            ("a:1", child("a", 1, Phase::Failed, &[])),
            ("b:0", child("b", 0, Phase::Pending, &n2n)),
            ("b:1", child("b", 1, Phase::Pending, &n2n)),
        ]));
        assert_eq!(state(&s, "b:0"), DependencyState::Met);
        assert_eq!(
            state(&s, "b:1"),
            DependencyState::Failed {
                dependency: JobId::new("a:1")
            }
        );
    }

    #[test]
    fn sequential_child_waits_for_previous_child() {
        let seq = [("", DependencyType::Sequential)];
        let s = evaluate(&snap(vec![
            ("s:0", child("s", 0, Phase::Runnable, &seq)),
            ("s:1", child("s", 1, Phase::Pending, &seq)),
            ("s:2", child("s", 2, Phase::Pending, &seq)),
        ]));
        assert_eq!(state(&s, "s:0"), DependencyState::Met);
        assert_eq!(
            state(&s, "s:1"),
            DependencyState::Waiting(Reason::WaitingOnDependency {
                dependency: JobId::new("s:0")
            })
        );
        assert_eq!(
            state(&s, "s:2"),
            DependencyState::Waiting(Reason::WaitingOnDependency {
                dependency: JobId::new("s:1")
            })
        );
    }

    #[test]
    fn sequential_failure_cascades_down_a_long_chain_without_recursion() {
        let seq = [("", DependencyType::Sequential)];
        let n = 20_000u32;
        let mut jobs: Vec<(String, Job)> = (0..n)
            .map(|i| (format!("s:{i}"), child("s", i, Phase::Pending, &seq)))
            .collect();
        jobs[0].1.phase = Phase::Failed;
        let snapshot = Snapshot {
            jobs: jobs.into_iter().map(|(id, j)| (JobId(id), j)).collect(),
            ..Snapshot::default()
        };
        let s = evaluate(&snapshot);
        assert_eq!(
            state(&s, "s:19999"),
            DependencyState::Failed {
                dependency: JobId::new("s:19998")
            }
        );
    }

    #[test]
    fn self_dependency_is_a_cycle() {
        let s = evaluate(&snap(vec![(
            "a:0",
            child("a", 0, Phase::Pending, &[("a", DependencyType::NToN)]),
        )]));
        assert_eq!(
            state(&s, "a:0"),
            DependencyState::Waiting(Reason::DependencyCycle)
        );
    }

    #[test]
    fn only_waiting_jobs_are_evaluated() {
        let s = evaluate(&snap(vec![
            ("a", job(Phase::Failed, &[])),
            ("b", job(Phase::Running, &[("a", STD)])),
        ]));
        assert!(!s.contains_key(&JobId::new("b")));
    }
}
