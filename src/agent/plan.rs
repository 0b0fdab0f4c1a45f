//! Pure decisions: given the jobs the watch shows for this node and the attempts running
//! here, which attempts to start, which to cancel, and which to take over after a restart.

use crate::api::{BatchJob, JobPhase};
use std::collections::{HashMap, HashSet};

/// The field selector of this node's watch (PROTOCOL.md, "Names").
pub use crate::api::protocol::agent_field_selector;

/// One attempt of one job. The uid tells a job from a later one of the same name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttemptKey {
    /// Namespace of the BatchJob.
    pub namespace: String,
    /// Name of the BatchJob.
    pub name: String,
    /// Its uid.
    pub uid: String,
    /// Attempt number, from 1.
    pub attempt: u32,
}

impl std::fmt::Display for AttemptKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}#{}", self.namespace, self.name, self.attempt)
    }
}

/// What the plan needs to know about one watched job, borrowed from it: the agent builds
/// one per job bound here on every watch event (up to one per 100m of cpu), so a view
/// copies no string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobView<'a> {
    /// Namespace.
    pub namespace: &'a str,
    /// Name.
    pub name: &'a str,
    /// uid.
    pub uid: &'a str,
    /// `status.phase`.
    pub phase: Option<JobPhase>,
    /// `status.node`.
    pub node: Option<&'a str>,
    /// `status.attempt`.
    pub attempt: Option<u32>,
    /// Whether `attempts[attempt].startedAt` is set.
    pub current_started: bool,
    /// Whether `attempts[attempt].stoppedAt` is set.
    pub current_stopped: bool,
    /// Whether `spec.cancel` is set: the job is never started here, and a running attempt
    /// of it is stopped.
    pub cancel_requested: bool,
}

impl<'a> JobView<'a> {
    /// Extracts the view of a job; `None` when it has no name, namespace or uid.
    pub fn of(job: &'a BatchJob) -> Option<Self> {
        let meta = &job.metadata;
        let status = job.status.as_ref();
        let attempt = status.and_then(|s| s.attempt);
        let entry = status.and_then(|s| s.attempts.iter().find(|a| Some(a.attempt) == attempt));
        Some(Self {
            namespace: meta.namespace.as_deref()?,
            name: meta.name.as_deref()?,
            uid: meta.uid.as_deref()?,
            phase: status.and_then(|s| s.phase),
            node: status.and_then(|s| s.node.as_deref()),
            attempt,
            current_started: entry.as_ref().is_some_and(|e| e.started_at.is_some()),
            current_stopped: entry.as_ref().is_some_and(|e| e.stopped_at.is_some()),
            cancel_requested: job.spec.cancel.is_some(),
        })
    }

    /// The key of its current attempt.
    pub fn current_key(&self) -> Option<AttemptKey> {
        Some(AttemptKey {
            namespace: self.namespace.to_owned(),
            name: self.name.to_owned(),
            uid: self.uid.to_owned(),
            attempt: self.attempt?,
        })
    }

    fn bound_to(&self, node: &str) -> bool {
        self.node == Some(node)
    }
}

/// Why a running attempt is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelWhy {
    /// The job is gone from this node's watch: deleted, moved off this node (`status.node`),
    /// or ended (Succeeded or Failed).
    Gone,
    /// The job is still in this node's watch but `status.node` names another node.
    BoundElsewhere,
    /// The job reached Succeeded or Failed.
    Terminal,
    /// The job's current attempt is a newer one.
    Superseded,
    /// The agent is shutting down.
    Shutdown,
    /// The job was cancelled (`spec.cancel`): the controller ends it as `Terminated`.
    Requested,
    /// The instance received a Spot interruption notice: the attempt ends with reason
    /// `SpotInterruption` and is retried by the job's retry strategy.
    SpotInterruption,
}

impl CancelWhy {
    /// The status reason given to the cancelled attempt.
    pub fn message(self) -> &'static str {
        match self {
            Self::Gone => {
                "Job attempt cancelled: the job was deleted, bound to another node or ended"
            }
            Self::BoundElsewhere => "Job attempt cancelled: the job is bound to another node",
            Self::Terminal => "Job attempt cancelled: the job reached a terminal phase",
            Self::Superseded => "Job attempt cancelled: a newer attempt of the job is current",
            Self::Shutdown => "Job attempt cancelled: the node agent is shutting down",
            Self::Requested => "Job attempt terminated: the job was cancelled (spec.cancel)",
            Self::SpotInterruption => {
                "Job attempt stopped: the Spot instance received an interruption notice"
            }
        }
    }
}

/// One decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start this attempt.
    Start(AttemptKey),
    /// Stop this running attempt.
    Cancel(AttemptKey, CancelWhy),
    /// This attempt started here earlier (it has `startedAt`) but this agent process does
    /// not run it (the agent restarted): take over its container or process if it is
    /// still there (running or ended), else report it as ended.
    Adopt(AttemptKey),
}

/// Decides what to do. `running` are the attempts this agent runs now (including those
/// starting or reporting; each once); `done` the attempts it ran to an end (or adopted) since
/// it started, which are never started again.
pub fn plan<'k>(
    node: &str,
    jobs: &[JobView<'_>],
    running: impl IntoIterator<Item = &'k AttemptKey>,
    done: &HashSet<AttemptKey>,
) -> Vec<Action> {
    // Looked up by uid (a uid names one job): one pass over each input, no string copied
    // but for the keys of the actions.
    let mut running_sorted: Vec<&AttemptKey> = running.into_iter().collect();
    running_sorted.sort();
    let by_uid: HashMap<&str, &JobView<'_>> = jobs.iter().map(|j| (j.uid, j)).collect();
    let running_uids: HashSet<&str> = running_sorted.iter().map(|k| k.uid.as_str()).collect();
    let running_attempts: HashSet<(&str, u32)> = running_sorted
        .iter()
        .map(|k| (k.uid.as_str(), k.attempt))
        .collect();
    let done_attempts: HashSet<(&str, u32)> =
        done.iter().map(|k| (k.uid.as_str(), k.attempt)).collect();
    let mut actions = Vec::new();
    for key in running_sorted {
        let why = match by_uid.get(key.uid.as_str()) {
            None => Some(CancelWhy::Gone),
            Some(j) if j.node != Some(node) => Some(CancelWhy::BoundElsewhere),
            Some(j) if j.phase.is_some_and(JobPhase::is_terminal) => Some(CancelWhy::Terminal),
            Some(j) if j.attempt != Some(key.attempt) => Some(CancelWhy::Superseded),
            Some(j) if j.cancel_requested => Some(CancelWhy::Requested),
            Some(_) => None,
        };
        if let Some(why) = why {
            actions.push(Action::Cancel(key.clone(), why));
        }
    }
    for job in jobs {
        if !job.bound_to(node) || job.current_stopped {
            continue;
        }
        let Some(attempt) = job.attempt else {
            continue;
        };
        let current = (job.uid, attempt);
        if running_attempts.contains(&current) || done_attempts.contains(&current) {
            continue;
        }
        let phase = job.phase;
        let action: fn(AttemptKey) -> Action =
            if !job.current_started && phase == Some(JobPhase::Starting) && !job.cancel_requested {
                // At most one attempt of a job at a time: wait for an older one to stop.
                if running_uids.contains(job.uid) {
                    continue;
                }
                Action::Start
            } else if job.current_started
                && matches!(phase, Some(JobPhase::Starting | JobPhase::Running))
            {
                Action::Adopt
            } else {
                continue;
            };
        if let Some(key) = job.current_key() {
            actions.push(action(key));
        }
    }
    actions
}

/// Drops from `done` the attempts the watch no longer shows as current, so the set does
/// not grow without bound. An attempt still shown as current stays, so it is never
/// started (or adopted) again while the watch lags behind this agent's own report.
pub fn prune_done(done: &mut HashSet<AttemptKey>, jobs: &[JobView<'_>]) {
    let current: HashSet<(&str, u32)> = jobs
        .iter()
        .filter_map(|j| Some((j.uid, j.attempt?)))
        .collect();
    done.retain(|key| current.contains(&(key.uid.as_str(), key.attempt)));
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "i-me";

    /// A view of job `name` (its uid `uid-<name>`, leaked: a test's few strings).
    fn job(name: &str, phase: JobPhase, attempt: u32) -> JobView<'static> {
        JobView {
            namespace: "default",
            name: name.to_owned().leak(),
            uid: format!("uid-{name}").leak(),
            phase: Some(phase),
            node: Some(ME),
            attempt: Some(attempt),
            current_started: false,
            current_stopped: false,
            cancel_requested: false,
        }
    }

    fn key(name: &str, attempt: u32) -> AttemptKey {
        AttemptKey {
            namespace: "default".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            attempt,
        }
    }

    fn set(keys: &[AttemptKey]) -> HashSet<AttemptKey> {
        keys.iter().cloned().collect()
    }

    #[test]
    fn starts_bound_starting_attempts_once() {
        let jobs = [
            job("a", JobPhase::Starting, 1),
            job("b", JobPhase::Starting, 2),
        ];
        let actions = plan(ME, &jobs, &set(&[]), &set(&[]));
        assert_eq!(
            actions,
            [Action::Start(key("a", 1)), Action::Start(key("b", 2))]
        );
        assert!(plan(ME, &jobs, &set(&[key("a", 1), key("b", 2)]), &set(&[])).is_empty());
        assert!(
            plan(ME, &jobs, &set(&[]), &set(&[key("a", 1), key("b", 2)])).is_empty(),
            "an attempt run to its end is never started again"
        );
    }

    #[test]
    fn starts_nothing_not_bound_here_or_not_starting() {
        let mut unbound = job("a", JobPhase::Starting, 1);
        unbound.node = None;
        let mut other_node = job("b", JobPhase::Starting, 1);
        other_node.node = Some("i-other");
        let runnable = job("c", JobPhase::Runnable, 1);
        let mut started = job("d", JobPhase::Starting, 1);
        started.current_started = true;
        started.current_stopped = true;
        let mut no_attempt = job("e", JobPhase::Starting, 1);
        no_attempt.attempt = None;
        let jobs = [unbound, other_node, runnable, started, no_attempt];
        assert!(plan(ME, &jobs, &set(&[]), &set(&[])).is_empty());
    }

    #[test]
    fn cancels_gone_elsewhere_terminal_and_superseded() {
        let mut elsewhere = job("b", JobPhase::Running, 1);
        elsewhere.node = Some("i-other");
        let failed = job("c", JobPhase::Failed, 1);
        let bumped = job("d", JobPhase::Starting, 2);
        let fine = job("e", JobPhase::Running, 1);
        let jobs = [elsewhere, failed, bumped, fine];
        let running = set(&[
            key("a", 1),
            key("b", 1),
            key("c", 1),
            key("d", 1),
            key("e", 1),
        ]);
        let actions = plan(ME, &jobs, &running, &set(&[]));
        assert_eq!(
            actions,
            [
                Action::Cancel(key("a", 1), CancelWhy::Gone),
                Action::Cancel(key("b", 1), CancelWhy::BoundElsewhere),
                Action::Cancel(key("c", 1), CancelWhy::Terminal),
                Action::Cancel(key("d", 1), CancelWhy::Superseded),
            ],
            "attempt 2 of d waits until attempt 1 has stopped"
        );
        let actions = plan(ME, &jobs, &set(&[key("e", 1)]), &set(&[key("d", 1)]));
        assert_eq!(actions, [Action::Start(key("d", 2))]);
    }

    #[test]
    fn a_cancelled_job_is_stopped_and_never_started() {
        let mut running = job("a", JobPhase::Running, 1);
        running.cancel_requested = true;
        let mut bound = job("b", JobPhase::Starting, 1);
        bound.cancel_requested = true;
        let jobs = [running, bound];
        assert_eq!(
            plan(ME, &jobs, &set(&[key("a", 1)]), &set(&[])),
            [Action::Cancel(key("a", 1), CancelWhy::Requested)],
            "the running attempt is stopped; the bound one is not started (the controller withdraws it)"
        );
    }

    #[test]
    fn a_started_attempt_nobody_runs_is_adopted() {
        let mut j = job("a", JobPhase::Running, 1);
        j.current_started = true;
        let jobs = [j];
        assert_eq!(
            plan(ME, &jobs, &set(&[]), &set(&[])),
            [Action::Adopt(key("a", 1))]
        );
        assert!(plan(ME, &jobs, &set(&[key("a", 1)]), &set(&[])).is_empty());
        assert!(plan(ME, &jobs, &set(&[]), &set(&[key("a", 1)])).is_empty());
    }

    #[test]
    fn prunes_done_attempts_no_longer_current() {
        let jobs = [
            job("a", JobPhase::Starting, 2),
            job("b", JobPhase::Running, 1),
        ];
        let mut done = set(&[key("a", 1), key("b", 1), key("gone", 1)]);
        prune_done(&mut done, &jobs);
        assert_eq!(done, set(&[key("b", 1)]));
    }
}
