//! PURE: one controller pass, from observed objects to typed actions.
//!
//! [`decide`] runs these steps, each a plain function of data:
//! 1. **nodes**: a node whose heartbeat is older than the lost-node timeout is `Lost`;
//! 2. **attempt progress** (PROTOCOL.md steps 3 and 5): `attempts[N].startedAt` while
//!    Starting → Running; `attempts[N].stoppedAt` → Succeeded (exit code 0) or
//!    [`retry::decide`] → Runnable again (label removed, `notBefore` on backoff) or
//!    Failed; an attempt on a lost or deleted node ends with reason `NodeLost`;
//! 3. **schedule**: [`snapshot::build`] over the progressed state, [`scheduler::plan`],
//!    then its bindings, phase changes, dependency failures and "why not running"
//!    reasons onto the jobs;
//! 4. **arrays**: missing children to create, parent `arrayStatus` and phase;
//! 5. **nodes, environments, queues**: derived status; fleet actions (terminate, then
//!    set desired capacity) for compute environments with a fleet.
//!
//! Every status is computed as the full set of fields the controller owns
//! ([`super::status::owned_job_status`]) and emitted only when it differs from what is
//! observed, so a pass over an unchanged world emits nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Resource;
use kube::api::ObjectMeta;

use crate::api::batch_job::{ArrayStatus, AttemptStatus, BatchJobStatus, JobPhase};
use crate::api::batch_node::{BatchNodeStatus, NodeJob, NodePhase as ApiNodePhase};
use crate::api::common::{JobTemplate, Resources as ApiResources, RetryAction};
use crate::api::compute_environment::{ComputeEnvironmentStatus, InstanceShape};
use crate::api::job_queue::JobQueueStatus;
use crate::api::quantity::{format_bytes, format_millicores};
use crate::api::{BatchJob, BatchNode, ComputeEnvironment, JobDefinition, JobQueue};
use crate::cloud::FleetState;
use crate::scheduler::retry::{self, AttemptOutcome, FailCause, REASON_NODE_LOST, RetryDecision};
use crate::scheduler::{self, DEPENDENCY_FAILED, JobId, Phase, Plan, Reason, Resources, Seconds};

use super::snapshot::{self, Inputs, api_phase, effective_template, job_id, phase};
use super::status::{owned_job_status, owned_node_status, reason_code, set_condition};
use super::time::{seconds, time};
use super::{
    CONDITION_READY, CONDITION_SCALING, CONDITION_SCHEDULED, CONDITION_VALID, LABEL_ARRAY_PARENT,
    LABEL_NODE, reasons,
};

/// Tunables of a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecideConfig {
    /// A node whose heartbeat is older than this is Lost.
    pub lost_node_timeout: Seconds,
}

impl Default for DecideConfig {
    fn default() -> Self {
        Self {
            lost_node_timeout: 60,
        }
    }
}

/// Everything a pass looks at.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Every ComputeEnvironment.
    pub compute_environments: Vec<Arc<ComputeEnvironment>>,
    /// Every JobQueue.
    pub queues: Vec<Arc<JobQueue>>,
    /// Every JobDefinition.
    pub definitions: Vec<Arc<JobDefinition>>,
    /// Every BatchJob.
    pub jobs: Vec<Arc<BatchJob>>,
    /// Every BatchNode.
    pub nodes: Vec<Arc<BatchNode>>,
    /// The fleet of each compute environment that has one, as described now.
    pub fleets: BTreeMap<String, FleetState>,
    /// Compute environments whose fleet could not be reached or described, and why.
    pub fleet_errors: BTreeMap<String, String>,
    /// Instance shapes looked up for compute environments without `spec.instanceShape`.
    pub shapes: BTreeMap<String, Resources>,
}

/// A label change on a BatchJob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelChange {
    /// Set `asgbatch.io/node` to this node.
    Set(String),
    /// Remove `asgbatch.io/node`.
    Remove,
}

/// A write to one BatchJob: label first, then status (PROTOCOL.md).
#[derive(Debug, Clone, PartialEq)]
pub struct JobUpdate {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The resourceVersion the decision was made on (precondition of the label patch).
    pub resource_version: Option<String>,
    /// Label change, if any.
    pub label: Option<LabelChange>,
    /// Every controller-owned status field, when any of them changes.
    pub status: Option<BatchJobStatus>,
}

/// An array child to create.
#[derive(Debug, Clone)]
pub struct NewChild {
    /// The complete object (name, labels, owner reference, spec).
    pub job: BatchJob,
}

/// A write to one BatchNode's controller-owned status.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeUpdate {
    /// Node name.
    pub name: String,
    /// Every controller-owned status field.
    pub status: BatchNodeStatus,
}

/// A write to a ComputeEnvironment's status.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvironmentUpdate {
    /// Name.
    pub name: String,
    /// Full status.
    pub status: ComputeEnvironmentStatus,
}

/// A write to a JobQueue's status.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueUpdate {
    /// Name.
    pub name: String,
    /// Full status.
    pub status: JobQueueStatus,
}

/// A fleet call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetAction {
    /// Terminate one instance, decrementing desired capacity; then delete its BatchNode.
    Terminate {
        /// Compute environment.
        compute_environment: String,
        /// BatchNode name.
        node: String,
        /// Instance id.
        instance_id: String,
    },
    /// Set the desired capacity (after this pass's terminations).
    SetDesired {
        /// Compute environment.
        compute_environment: String,
        /// New desired capacity.
        desired: u32,
        /// Desired capacity observed before.
        from: u32,
    },
}

/// A Kubernetes Event to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    /// The object it is about.
    pub regarding: ObjectReference,
    /// Warning (true) or Normal.
    pub warning: bool,
    /// CamelCase reason.
    pub reason: &'static str,
    /// Human text.
    pub note: String,
}

/// Every action of one pass.
#[derive(Debug, Clone, Default)]
pub struct Decisions {
    /// BatchJob writes, in job-id order.
    pub jobs: Vec<JobUpdate>,
    /// Array children to create.
    pub children: Vec<NewChild>,
    /// BatchNode status writes.
    pub nodes: Vec<NodeUpdate>,
    /// ComputeEnvironment status writes.
    pub compute_environments: Vec<EnvironmentUpdate>,
    /// JobQueue status writes.
    pub queues: Vec<QueueUpdate>,
    /// Fleet calls: every Terminate before the SetDesired of its environment.
    pub fleet: Vec<FleetAction>,
    /// Events.
    pub events: Vec<Note>,
    /// The scheduler's plan of this pass (for logs and tests).
    pub plan: Plan,
}

/// A job being decided: the object and its desired controller-owned status.
struct Work<'a> {
    job: &'a BatchJob,
    desired: BatchJobStatus,
}

fn object_ref<K: Resource<DynamicType = ()>>(k: &K) -> ObjectReference {
    k.object_ref(&())
}

fn event(
    out: &mut Vec<Note>,
    regarding: ObjectReference,
    warning: bool,
    reason: &'static str,
    note: String,
) {
    out.push(Note {
        regarding,
        warning,
        reason,
        note,
    });
}

/// Runs one pass.
pub fn decide(observed: &Observed, config: &DecideConfig, now: Seconds) -> Decisions {
    let mut out = Decisions::default();
    let definitions: Vec<&JobDefinition> = observed.definitions.iter().map(|d| &**d).collect();
    let defs = snapshot::index_definitions(&definitions);

    // 1. Node liveness.
    let nodes: BTreeMap<&str, &BatchNode> = observed
        .nodes
        .iter()
        .filter_map(|n| Some((n.metadata.name.as_deref()?, &**n)))
        .collect();
    let mut node_phase: BTreeMap<&str, ApiNodePhase> = BTreeMap::new();
    for (name, n) in &nodes {
        let current = n.status.as_ref().and_then(|s| s.phase);
        let heartbeat = n
            .status
            .as_ref()
            .and_then(|s| s.heartbeat_time.as_ref())
            .or(n.metadata.creation_timestamp.as_ref())
            .map_or(now, seconds);
        let lost = now.saturating_sub(heartbeat) > config.lost_node_timeout;
        // Draining lasts until a fleet terminates the node; without a fleet nothing
        // would, so such a node goes back to Ready.
        let ce = &n.spec.compute_environment;
        let has_fleet = observed.fleets.contains_key(ce) || observed.fleet_errors.contains_key(ce);
        let p = match (lost, current) {
            (true, _) => ApiNodePhase::Lost,
            (false, Some(ApiNodePhase::Draining)) if has_fleet => ApiNodePhase::Draining,
            (false, _) => ApiNodePhase::Ready,
        };
        node_phase.insert(name, p);
    }

    // 2. Attempt progress.
    let mut work: BTreeMap<JobId, Work<'_>> = BTreeMap::new();
    for j in &observed.jobs {
        let mut w = Work {
            job: j,
            desired: owned_job_status(j.status.as_ref()),
        };
        if !snapshot::is_array_parent(j) {
            progress(&mut w, &defs, &nodes, &node_phase, now, &mut out.events);
        }
        work.insert(job_id(j), w);
    }

    // 3. Schedule over the progressed state.
    let progressed: Vec<BatchJob> = work
        .values()
        .filter(|w| {
            let s = w.job.status.as_ref();
            s.and_then(|s| s.phase) != w.desired.phase
                || s.and_then(|s| s.node.as_ref()) != w.desired.node.as_ref()
        })
        .map(|w| {
            let mut j = w.job.clone();
            let st = j.status.get_or_insert_with(Default::default);
            st.phase = w.desired.phase;
            st.node = w.desired.node.clone();
            st.not_before = w.desired.not_before.clone();
            j
        })
        .collect();
    let progressed_ids: BTreeSet<JobId> = progressed.iter().map(job_id).collect();
    let mut jobs: Vec<&BatchJob> = observed
        .jobs
        .iter()
        .map(|j| &**j)
        .filter(|j| !progressed_ids.contains(&job_id(j)))
        .collect();
    jobs.extend(progressed.iter());
    let relabelled: Vec<BatchNode> = observed
        .nodes
        .iter()
        .map(|n| {
            let mut n = (**n).clone();
            if let Some(p) = n.metadata.name.as_deref().and_then(|m| node_phase.get(m)) {
                n.status.get_or_insert_with(Default::default).phase = Some(*p);
            }
            n
        })
        .collect();
    let fleet_instances: BTreeSet<String> = observed
        .nodes
        .iter()
        .map(|n| n.spec.instance_id.to_ascii_lowercase())
        .collect();
    let booting: BTreeMap<String, u32> = observed
        .fleets
        .iter()
        .map(|(ce, f)| {
            let n = f
                .live_instances()
                .filter(|i| !fleet_instances.contains(&i.instance_id.to_ascii_lowercase()))
                .count();
            (ce.clone(), u32::try_from(n).unwrap_or(u32::MAX))
        })
        .collect();
    let built = snapshot::build(&Inputs {
        compute_environments: observed.compute_environments.iter().map(|c| &**c).collect(),
        queues: observed.queues.iter().map(|q| &**q).collect(),
        definitions: definitions.clone(),
        jobs,
        nodes: relabelled.iter().collect(),
        booting,
        shapes: observed.shapes.clone(),
        now,
    });
    let mut plan = scheduler::plan(&built.snapshot, now);
    // Only a fleet can terminate a drained node: never drain where there is none.
    plan.drain.retain(|n| {
        built
            .snapshot
            .nodes
            .get(n)
            .is_some_and(|x| observed.fleets.contains_key(&x.compute_environment))
    });
    apply_plan(&plan, &built, &mut work, &nodes, now, &mut out.events);

    // 4. Arrays.
    arrays(&mut work, &mut out, now);

    // Generation, labels, and the job writes.
    for (id, w) in &work {
        w_finish(id, w, &mut out.jobs);
    }

    // 5. Nodes, environments, queues, fleets.
    node_updates(&work, &built, &nodes, &node_phase, &plan, now, &mut out);
    environment_updates(observed, &built, &plan, &nodes, &node_phase, now, &mut out);
    queue_updates(observed, &work, now, &mut out);
    out.plan = plan;
    out
}

fn w_finish(id: &JobId, w: &Work<'_>, jobs: &mut Vec<JobUpdate>) {
    let mut desired = w.desired.clone();
    desired.observed_generation = w.job.metadata.generation;
    let current = owned_job_status(w.job.status.as_ref());
    let want_label = match desired.phase.map(|p| phase(Some(p))) {
        Some(p) if p.is_placed() => desired.node.clone(),
        _ => None,
    };
    let have_label = w
        .job
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_NODE))
        .cloned();
    let label = match (&want_label, &have_label) {
        (Some(n), h) if h.as_ref() != Some(n) => Some(LabelChange::Set(n.clone())),
        (None, Some(_)) => Some(LabelChange::Remove),
        _ => None,
    };
    let status = (desired != current).then_some(desired);
    if label.is_some() || status.is_some() {
        let (namespace, name) = id.0.split_once('/').unwrap_or(("", &id.0));
        jobs.push(JobUpdate {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            resource_version: w.job.metadata.resource_version.clone(),
            label,
            status,
        });
    }
}

/// The retry strategy and backoff of a job's template.
fn strategy(t: &JobTemplate) -> (retry::RetryStrategy, Option<retry::Backoff>) {
    let Some(r) = &t.retry_strategy else {
        return (retry::RetryStrategy::default(), None);
    };
    let s = retry::RetryStrategy {
        attempts: r.attempts,
        evaluate_on_exit: r
            .evaluate_on_exit
            .iter()
            .map(|e| retry::EvaluateOnExit {
                on_exit_code: e.on_exit_code.clone(),
                on_reason: e.on_reason.clone(),
                on_status_reason: e.on_status_reason.clone(),
                action: match e.action {
                    RetryAction::Retry => retry::Action::Retry,
                    RetryAction::Exit => retry::Action::Exit,
                },
            })
            .collect(),
    };
    let b = r.backoff.as_ref().map(|b| retry::Backoff {
        base_seconds: Seconds::from(b.initial_delay_seconds),
        max_seconds: Seconds::from(b.max_delay_seconds),
    });
    (s, b)
}

/// Describes an attempt's outcome for humans: `exit code 3 (Error)`.
fn describe_outcome(o: &AttemptOutcome<'_>) -> String {
    match (o.exit_code, o.reason) {
        (Some(c), Some(r)) => format!("exit code {c} ({r})"),
        (Some(c), None) => format!("exit code {c}"),
        (None, Some(r)) => r.to_owned(),
        (None, None) => "no exit code".into(),
    }
}

/// Step 2 for one job.
fn progress(
    w: &mut Work<'_>,
    defs: &snapshot::Definitions<'_>,
    nodes: &BTreeMap<&str, &BatchNode>,
    node_phase: &BTreeMap<&str, ApiNodePhase>,
    now: Seconds,
    events: &mut Vec<Note>,
) {
    let d = &mut w.desired;
    let p = phase(d.phase);
    if !p.is_placed() {
        return;
    }
    let (Some(n), Some(node)) = (d.attempt, d.node.clone()) else {
        return;
    };
    let Some(observed) = w
        .job
        .status
        .as_ref()
        .and_then(|s| s.attempts.iter().find(|a| a.attempt == n))
        .cloned()
    else {
        return;
    };
    let lost = match node_phase.get(node.as_str()) {
        None => Some(format!("node {node} was deleted")),
        Some(ApiNodePhase::Lost) => Some(format!(
            "node {node} stopped heartbeating{}",
            nodes
                .get(node.as_str())
                .and_then(|n| n.status.as_ref())
                .and_then(|s| s.heartbeat_time.as_ref())
                .map(|t| format!(" (last heartbeat {})", t.0))
                .unwrap_or_default()
        )),
        Some(_) => None,
    };
    let regarding = object_ref(w.job);
    let (stopped_at, exit_code, reason, status_reason) = if observed.stopped_at.is_some() {
        (
            observed.stopped_at.clone(),
            observed.exit_code,
            observed.reason.clone(),
            observed.status_reason.clone(),
        )
    } else if let Some(why) = lost {
        // The controller ends the attempt itself (and owns these fields from now on).
        if let Some(a) = d.attempts.iter_mut().find(|a| a.attempt == n) {
            a.stopped_at = Some(time(now));
            a.reason = Some(REASON_NODE_LOST.into());
            a.status_reason = Some(why.clone());
        }
        event(
            events,
            regarding.clone(),
            true,
            reasons::NODE_LOST,
            format!("attempt {n}: {why}"),
        );
        (
            Some(time(now)),
            None,
            Some(REASON_NODE_LOST.to_owned()),
            Some(why),
        )
    } else {
        if p == Phase::Starting
            && let Some(started) = &observed.started_at
        {
            d.phase = Some(JobPhase::Running);
            d.started_at = d.started_at.clone().or_else(|| Some(started.clone()));
            d.message = Some(format!("attempt {n} running on node {node}"));
            event(
                events,
                regarding,
                false,
                reasons::STARTED,
                format!("attempt {n} started on node {node}"),
            );
        }
        return;
    };

    // The attempt ended.
    let outcome = AttemptOutcome {
        exit_code,
        reason: reason.as_deref(),
        status_reason: status_reason.as_deref(),
    };
    let what = describe_outcome(&outcome);
    d.node = None;
    d.not_before = None;
    if exit_code == Some(0) && reason.as_deref().is_none_or(|r| r == "Completed") {
        d.phase = Some(JobPhase::Succeeded);
        d.reason = Some(reason.clone().unwrap_or_else(|| "Completed".into()));
        d.message = Some(format!("attempt {n} succeeded on node {node}: {what}"));
        d.stopped_at = stopped_at.or_else(|| Some(time(now)));
        event(
            events,
            regarding,
            false,
            reasons::SUCCEEDED,
            format!("attempt {n} on node {node}: {what}"),
        );
        return;
    }
    let template = effective_template(w.job, defs).unwrap_or_else(|_| w.job.spec.template.clone());
    let (s, backoff) = strategy(&template);
    d.reason = Some(reason.clone().unwrap_or_else(|| "Error".into()));
    match retry::decide(&s, n, &outcome, backoff.as_ref(), now) {
        RetryDecision::Retry { runnable_at, .. } => {
            d.phase = Some(JobPhase::Runnable);
            let when = if runnable_at > now {
                d.not_before = Some(time(runnable_at));
                format!(" after a backoff until {}", time(runnable_at).0)
            } else {
                String::new()
            };
            d.message = Some(format!(
                "attempt {n} of {} failed on node {node}: {what}; retrying{when}",
                s.attempts
            ));
            event(
                events,
                regarding,
                true,
                reasons::RETRYING,
                format!(
                    "attempt {n} of {} failed: {what}; retrying{when}",
                    s.attempts
                ),
            );
        }
        RetryDecision::Fail(cause) => {
            let why = match cause {
                FailCause::ExitRule { rule } => {
                    format!("evaluateOnExit[{rule}] says EXIT")
                }
                FailCause::TimedOut => "timed-out attempts are not retried".to_owned(),
                FailCause::AttemptsExhausted { attempts } => {
                    format!("all {attempts} attempts used")
                }
            };
            d.phase = Some(JobPhase::Failed);
            d.stopped_at = stopped_at.or_else(|| Some(time(now)));
            d.message = Some(format!("attempt {n} failed on node {node}: {what}; {why}"));
            event(
                events,
                regarding,
                true,
                reasons::FAILED,
                format!("attempt {n}: {what}; {why}"),
            );
        }
    }
}

/// Step 3: the plan onto the jobs' desired status.
fn apply_plan(
    plan: &Plan,
    built: &snapshot::Built,
    work: &mut BTreeMap<JobId, Work<'_>>,
    nodes: &BTreeMap<&str, &BatchNode>,
    now: Seconds,
    events: &mut Vec<Note>,
) {
    for c in &plan.phase_changes {
        if let Some(w) = work.get_mut(&c.job) {
            w.desired.phase = Some(api_phase(c.to));
        }
    }
    for f in &plan.dependency_failures {
        if let Some(w) = work.get_mut(&f.job) {
            let d = &mut w.desired;
            d.phase = Some(JobPhase::Failed);
            d.reason = Some(DEPENDENCY_FAILED.into());
            d.message = Some(format!("dependency {} failed", f.dependency));
            d.stopped_at = Some(time(now));
            d.not_before = None;
            let generation = w.job.metadata.generation;
            set_condition(
                &mut d.conditions,
                CONDITION_SCHEDULED,
                false,
                DEPENDENCY_FAILED,
                &format!("dependency {} failed", f.dependency),
                generation,
                now,
            );
            event(
                events,
                object_ref(w.job),
                true,
                reasons::FAILED,
                format!("dependency {} failed", f.dependency),
            );
        }
    }
    for b in &plan.bindings {
        let Some(w) = work.get_mut(&b.job) else {
            continue;
        };
        let generation = w.job.metadata.generation;
        let d = &mut w.desired;
        let n = d.attempt.unwrap_or(0) + 1;
        d.phase = Some(JobPhase::Starting);
        d.node = Some(b.node.clone());
        d.attempt = Some(n);
        d.not_before = None;
        d.reason = None;
        d.attempts.retain(|a| a.attempt != n);
        d.attempts.push(AttemptStatus {
            attempt: n,
            node: Some(b.node.clone()),
            instance_id: nodes
                .get(b.node.as_str())
                .map(|x| x.spec.instance_id.clone()),
            ..AttemptStatus::default()
        });
        let msg = format!("attempt {n} bound to node {}", b.node);
        d.message = Some(msg.clone());
        set_condition(
            &mut d.conditions,
            CONDITION_SCHEDULED,
            true,
            reasons::BOUND,
            &msg,
            generation,
            now,
        );
        event(events, object_ref(w.job), false, reasons::BOUND, msg);
    }
    for (id, reason) in &plan.unplaced {
        let Some(w) = work.get_mut(id) else {
            continue;
        };
        let generation = w.job.metadata.generation;
        let d = &mut w.desired;
        let msg = match reason {
            Reason::Backoff { .. } => match &d.not_before {
                Some(t) => format!("retry backoff: runnable again at {}", t.0),
                None => reason.to_string(),
            },
            other => other.to_string(),
        };
        d.message = Some(msg.clone());
        set_condition(
            &mut d.conditions,
            CONDITION_SCHEDULED,
            false,
            reason_code(reason),
            &msg,
            generation,
            now,
        );
    }
    for (id, why) in &built.invalid_jobs {
        let Some(w) = work.get_mut(id) else {
            continue;
        };
        let generation = w.job.metadata.generation;
        let d = &mut w.desired;
        let p = phase(d.phase);
        if p.is_placed() || p.is_terminal() {
            continue;
        }
        d.phase.get_or_insert(JobPhase::Submitted);
        if d.message.as_deref() != Some(why.as_str()) {
            event(
                events,
                object_ref(w.job),
                true,
                reasons::INVALID_JOB,
                why.clone(),
            );
        }
        d.message = Some(why.clone());
        set_condition(
            &mut d.conditions,
            CONDITION_SCHEDULED,
            false,
            reasons::INVALID_JOB,
            why,
            generation,
            now,
        );
    }
}

/// Step 4: array children to create and parent status.
fn arrays(work: &mut BTreeMap<JobId, Work<'_>>, out: &mut Decisions, now: Seconds) {
    // Children by parent id and index, with their desired phase.
    let mut children: BTreeMap<JobId, BTreeMap<u32, (JobId, JobPhase)>> = BTreeMap::new();
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
        let mut missing = Vec::new();
        for i in 0..size {
            if mine.is_none_or(|m| !m.contains_key(&i)) {
                missing.push(i);
            }
        }
        if !missing.is_empty() && !phase(w.desired.phase).is_terminal() {
            for &i in &missing {
                out.children.push(NewChild {
                    job: new_child(w.job, i),
                });
            }
            event(
                &mut out.events,
                object_ref(w.job),
                false,
                reasons::CHILDREN_CREATED,
                format!("creating {} array children", missing.len()),
            );
        }
        let mut counts = ArrayStatus {
            size,
            pending: u32::try_from(missing.len()).unwrap_or(u32::MAX),
            ..ArrayStatus::default()
        };
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
        let was_terminal = phase(d.phase).is_terminal();
        let new_phase = if let Some(c) = failed_child {
            d.reason = Some("ChildFailed".into());
            d.message = Some(format!("array child {c} failed"));
            JobPhase::Failed
        } else if size > 0 && counts.succeeded == size {
            d.reason = Some("Completed".into());
            d.message = Some(format!("all {size} array children succeeded"));
            JobPhase::Succeeded
        } else {
            d.message = Some(format!(
                "{size} children: {} pending, {} runnable, {} starting, {} running, {} succeeded",
                counts.pending, counts.runnable, counts.starting, counts.running, counts.succeeded
            ));
            if counts.starting + counts.running > 0 || counts.succeeded > 0 {
                JobPhase::Running
            } else if counts.runnable > 0 {
                JobPhase::Runnable
            } else {
                JobPhase::Pending
            }
        };
        if new_phase.is_terminal() && !was_terminal {
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
        if !was_terminal {
            d.phase = Some(new_phase);
        }
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

fn api_resources(r: &Resources) -> ApiResources {
    ApiResources {
        cpu: format_millicores(r.cpu_millis).as_str().into(),
        memory: format_bytes(r.memory_bytes).as_str().into(),
        gpu: r.gpus,
    }
}

/// Step 5: node status from the jobs placed on it after this pass.
fn node_updates(
    work: &BTreeMap<JobId, Work<'_>>,
    built: &snapshot::Built,
    nodes: &BTreeMap<&str, &BatchNode>,
    node_phase: &BTreeMap<&str, ApiNodePhase>,
    plan: &Plan,
    now: Seconds,
    out: &mut Decisions,
) {
    let mut held: BTreeMap<&str, (Resources, Vec<NodeJob>)> = BTreeMap::new();
    for (id, w) in work {
        let d = &w.desired;
        if !phase(d.phase).is_placed() {
            continue;
        }
        let Some(node) = d.node.as_deref() else {
            continue;
        };
        let needs = built
            .snapshot
            .jobs
            .get(id)
            .map_or(Resources::ZERO, |j| j.resources);
        let e = held.entry(node).or_insert((Resources::ZERO, Vec::new()));
        e.0 = e.0.saturating_add(&needs);
        e.1.push(NodeJob {
            namespace: w.job.metadata.namespace.clone().unwrap_or_default(),
            name: w.job.metadata.name.clone().unwrap_or_default(),
            attempt: d.attempt.unwrap_or(0),
        });
    }
    let drain: BTreeSet<&str> = plan.drain.iter().map(String::as_str).collect();
    for (name, n) in nodes {
        let current = owned_node_status(n.status.as_ref());
        let (allocated, jobs) = held.remove(name).unwrap_or((Resources::ZERO, Vec::new()));
        let mut phase = node_phase.get(name).copied().unwrap_or(ApiNodePhase::Ready);
        if phase == ApiNodePhase::Ready && drain.contains(name) {
            phase = ApiNodePhase::Draining;
        }
        let idle_since = if jobs.is_empty() {
            current
                .idle_since
                .clone()
                .filter(|_| current.jobs.is_empty())
                .or_else(|| Some(time(now)))
        } else {
            None
        };
        let mut status = BatchNodeStatus {
            phase: Some(phase),
            allocated: Some(api_resources(&allocated)),
            job_count: Some(u32::try_from(jobs.len()).unwrap_or(u32::MAX)),
            jobs,
            idle_since,
            conditions: current.conditions.clone(),
            heartbeat_time: None,
            protected_from_scale_in: None,
        };
        let (ready, why, msg) = match phase {
            ApiNodePhase::Ready => (true, "Heartbeating", "accepting jobs".to_owned()),
            ApiNodePhase::Draining => (false, reasons::DRAINING, "drained for scale-in".to_owned()),
            ApiNodePhase::Lost => (false, reasons::NODE_LOST, "heartbeat expired".to_owned()),
        };
        set_condition(
            &mut status.conditions,
            CONDITION_READY,
            ready,
            why,
            &msg,
            None,
            now,
        );
        if current.phase != Some(phase) {
            match phase {
                ApiNodePhase::Lost => event(
                    &mut out.events,
                    object_ref(*n),
                    true,
                    reasons::NODE_LOST,
                    "heartbeat expired; its attempts end with reason NodeLost".into(),
                ),
                ApiNodePhase::Draining => event(
                    &mut out.events,
                    object_ref(*n),
                    false,
                    reasons::DRAINING,
                    "idle and not needed: drained for scale-in".into(),
                ),
                ApiNodePhase::Ready => {}
            }
        }
        if status != current {
            out.nodes.push(NodeUpdate {
                name: (*name).to_owned(),
                status,
            });
        }
    }
}

/// Step 5: compute environment status and fleet actions.
fn environment_updates(
    observed: &Observed,
    built: &snapshot::Built,
    plan: &Plan,
    nodes: &BTreeMap<&str, &BatchNode>,
    node_phase: &BTreeMap<&str, ApiNodePhase>,
    now: Seconds,
    out: &mut Decisions,
) {
    for ce in &observed.compute_environments {
        let Some(name) = ce.metadata.name.as_deref() else {
            continue;
        };
        let current = ce.status.clone().unwrap_or_default();
        let mut status = current.clone();
        status.observed_generation = ce.metadata.generation;
        let mine: Vec<&str> = nodes
            .iter()
            .filter(|(_, n)| n.spec.compute_environment == name)
            .map(|(k, _)| *k)
            .collect();
        status.in_service_instances = Some(
            i32::try_from(
                mine.iter()
                    .filter(|n| node_phase.get(*n) != Some(&ApiNodePhase::Lost))
                    .count(),
            )
            .unwrap_or(i32::MAX),
        );
        status.busy_instances = Some(
            i32::try_from(
                mine.iter()
                    .filter(|n| built.snapshot.nodes.get(**n).is_some_and(|x| x.jobs > 0))
                    .count(),
            )
            .unwrap_or(i32::MAX),
        );
        if let Some(shape) = built
            .snapshot
            .compute_environments
            .get(name)
            .map(|c| c.shape)
        {
            status.instance_shape = Some(InstanceShape {
                instance_type: ce
                    .spec
                    .instance_shape
                    .as_ref()
                    .and_then(|s| s.instance_type.clone())
                    .or_else(|| {
                        observed
                            .fleets
                            .get(name)
                            .and_then(|f| f.instance_type.clone())
                    }),
                resources: api_resources(&shape),
            });
        }
        let decision = plan.capacity.get(name);
        let mut problem: Option<(&str, String)> = built
            .invalid_compute_environments
            .get(name)
            .map(|e| ("InvalidShape", e.clone()));
        if let Some(e) = observed.fleet_errors.get(name) {
            problem = Some((reasons::FLEET_ERROR, e.clone()));
        }
        if let Some(fleet) = observed.fleets.get(name) {
            for t in &plan.terminate {
                if mine.contains(&t.as_str())
                    && let Some(n) = nodes.get(t.as_str())
                {
                    out.fleet.push(FleetAction::Terminate {
                        compute_environment: name.to_owned(),
                        node: t.clone(),
                        instance_id: n.spec.instance_id.clone(),
                    });
                    event(
                        &mut out.events,
                        object_ref(&**ce),
                        false,
                        reasons::TERMINATING,
                        format!(
                            "terminating idle instance {} (node {t})",
                            n.spec.instance_id
                        ),
                    );
                }
            }
            let gone = plan
                .terminate
                .iter()
                .filter(|t| mine.contains(&t.as_str()))
                .count();
            let after_terminations = fleet
                .desired
                .saturating_sub(u32::try_from(gone).unwrap_or(u32::MAX));
            if let Some(d) = decision
                && d.desired != after_terminations
            {
                out.fleet.push(FleetAction::SetDesired {
                    compute_environment: name.to_owned(),
                    desired: d.desired,
                    from: after_terminations,
                });
                status.last_scale_time = Some(time(now));
                event(
                    &mut out.events,
                    object_ref(&**ce),
                    false,
                    reasons::SCALED,
                    format!("desired capacity {after_terminations} → {}", d.desired),
                );
            }
            status.desired_capacity = Some(
                i32::try_from(decision.map_or(after_terminations, |d| d.desired))
                    .unwrap_or(i32::MAX),
            );
        } else if let Some(d) = decision {
            status.desired_capacity = Some(i32::try_from(d.desired).unwrap_or(i32::MAX));
        }
        let generation = ce.metadata.generation;
        let booting = built
            .snapshot
            .compute_environments
            .get(name)
            .map_or(0, |c| c.booting);
        let new = decision.map_or(0, |d| d.new_instances);
        let draining = plan
            .drain
            .iter()
            .chain(&plan.terminate)
            .filter(|n| mine.contains(&n.as_str()))
            .count();
        let (scaling, why, msg) = if new > 0 || booting > 0 {
            (
                true,
                "ScalingOut",
                format!("{booting} instance(s) booting, {new} more needed"),
            )
        } else if draining > 0 {
            (
                true,
                "ScalingIn",
                format!("{draining} idle instance(s) draining or terminating"),
            )
        } else {
            (
                false,
                "Steady",
                "no instances booting or draining".to_owned(),
            )
        };
        set_condition(
            &mut status.conditions,
            CONDITION_SCALING,
            scaling,
            why,
            &msg,
            generation,
            now,
        );
        match &problem {
            Some((why, msg)) => {
                set_condition(
                    &mut status.conditions,
                    CONDITION_READY,
                    false,
                    why,
                    msg,
                    generation,
                    now,
                );
                let was = current
                    .conditions
                    .iter()
                    .find(|c| c.type_ == CONDITION_READY)
                    .map(|c| c.message.as_str());
                if was != Some(msg.as_str()) {
                    event(
                        &mut out.events,
                        object_ref(&**ce),
                        true,
                        reasons::FLEET_ERROR,
                        msg.clone(),
                    );
                }
            }
            None => set_condition(
                &mut status.conditions,
                CONDITION_READY,
                true,
                "Ready",
                "compute environment is usable",
                generation,
                now,
            ),
        }
        if status != current {
            out.compute_environments.push(EnvironmentUpdate {
                name: name.to_owned(),
                status,
            });
        }
    }
}

/// Step 5: queue status (counts and whether its compute environments exist).
fn queue_updates(
    observed: &Observed,
    work: &BTreeMap<JobId, Work<'_>>,
    now: Seconds,
    out: &mut Decisions,
) {
    let known: BTreeSet<&str> = observed
        .compute_environments
        .iter()
        .filter_map(|c| c.metadata.name.as_deref())
        .collect();
    for q in &observed.queues {
        let Some(name) = q.metadata.name.as_deref() else {
            continue;
        };
        let (mut runnable, mut running) = (0i32, 0i32);
        for w in work.values() {
            if w.job.spec.queue != name || snapshot::is_array_parent(w.job) {
                continue;
            }
            match w.desired.phase {
                Some(JobPhase::Runnable) => runnable += 1,
                Some(JobPhase::Starting | JobPhase::Running) => running += 1,
                _ => {}
            }
        }
        let current = q.status.clone().unwrap_or_default();
        let mut status = JobQueueStatus {
            runnable_jobs: Some(runnable),
            running_jobs: Some(running),
            conditions: current.conditions.clone(),
        };
        let missing: Vec<&str> = q
            .spec
            .compute_environments
            .iter()
            .map(String::as_str)
            .filter(|c| !known.contains(c))
            .collect();
        if missing.is_empty() {
            set_condition(
                &mut status.conditions,
                CONDITION_VALID,
                true,
                "ComputeEnvironmentsFound",
                "all compute environments exist",
                q.metadata.generation,
                now,
            );
        } else {
            set_condition(
                &mut status.conditions,
                CONDITION_VALID,
                false,
                "ComputeEnvironmentNotFound",
                &format!("compute environment(s) not found: {}", missing.join(", ")),
                q.metadata.generation,
                now,
            );
        }
        if status != current {
            out.queues.push(QueueUpdate {
                name: name.to_owned(),
                status,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::common::{EvaluateOnExit, RetryBackoff, RetryStrategy};
    use crate::cloud::{FleetInstance, Lifecycle};
    use crate::controller::snapshot::fixtures::*;

    const NOW: Seconds = 10_000;

    /// A world with one local CE `ce` (4 cpu, 16Gi, max 10), queue `q`, and the given
    /// jobs and nodes.
    fn world(jobs: Vec<BatchJob>, nodes: Vec<BatchNode>) -> Observed {
        Observed {
            compute_environments: vec![Arc::new(ce("ce", "4", "16Gi", 10))],
            queues: vec![Arc::new(queue("q", &["ce"]))],
            jobs: jobs.into_iter().map(Arc::new).collect(),
            nodes: nodes.into_iter().map(Arc::new).collect(),
            ..Observed::default()
        }
    }

    fn n1() -> BatchNode {
        node("n1", "ce", "4", "16Gi", NOW)
    }

    fn run(o: &Observed) -> Decisions {
        decide(o, &DecideConfig::default(), NOW)
    }

    fn update<'a>(d: &'a Decisions, name: &str) -> &'a JobUpdate {
        d.jobs
            .iter()
            .find(|u| u.name == name)
            .unwrap_or_else(|| panic!("no update for {name}: {:?}", d.jobs))
    }

    fn status<'a>(d: &'a Decisions, name: &str) -> &'a BatchJobStatus {
        update(d, name).status.as_ref().expect("a status write")
    }

    /// Applies the decisions as the API server would (status fields the controller
    /// owns replaced, the agent's attempt fields kept; labels; children created).
    fn apply(o: &mut Observed, d: &Decisions) {
        let mut jobs: Vec<BatchJob> = o.jobs.iter().map(|j| (**j).clone()).collect();
        for u in &d.jobs {
            let Some(j) = jobs
                .iter_mut()
                .find(|j| j.metadata.name.as_deref() == Some(&u.name))
            else {
                continue;
            };
            match &u.label {
                Some(LabelChange::Set(n)) => {
                    j.metadata
                        .labels
                        .get_or_insert_with(Default::default)
                        .insert(LABEL_NODE.into(), n.clone());
                }
                Some(LabelChange::Remove) => {
                    if let Some(l) = j.metadata.labels.as_mut() {
                        l.remove(LABEL_NODE);
                    }
                }
                None => {}
            }
            if let Some(s) = &u.status {
                let old = j.status.clone().unwrap_or_default();
                let mut new = s.clone();
                for a in &mut new.attempts {
                    if let Some(prev) = old.attempts.iter().find(|p| p.attempt == a.attempt) {
                        a.started_at = a.started_at.clone().or(prev.started_at.clone());
                        a.stopped_at = a.stopped_at.clone().or(prev.stopped_at.clone());
                        a.exit_code = a.exit_code.or(prev.exit_code);
                        a.reason = a.reason.clone().or(prev.reason.clone());
                        a.status_reason = a.status_reason.clone().or(prev.status_reason.clone());
                        a.log_tail = a.log_tail.clone().or(prev.log_tail.clone());
                    }
                }
                j.status = Some(new);
            }
        }
        for c in &d.children {
            let mut j = c.job.clone();
            j.metadata.creation_timestamp = Some(time(NOW));
            j.metadata.generation = Some(1);
            jobs.push(j);
        }
        o.jobs = jobs.into_iter().map(Arc::new).collect();
        let mut nodes: Vec<BatchNode> = o.nodes.iter().map(|n| (**n).clone()).collect();
        for u in &d.nodes {
            if let Some(n) = nodes
                .iter_mut()
                .find(|n| n.metadata.name.as_deref() == Some(&u.name))
            {
                let hb = n.status.as_ref().and_then(|s| s.heartbeat_time.clone());
                let mut s = u.status.clone();
                s.heartbeat_time = hb;
                n.status = Some(s);
            }
        }
        o.nodes = nodes.into_iter().map(Arc::new).collect();
        let mut ces: Vec<ComputeEnvironment> = o
            .compute_environments
            .iter()
            .map(|c| (**c).clone())
            .collect();
        for u in &d.compute_environments {
            if let Some(c) = ces
                .iter_mut()
                .find(|c| c.metadata.name.as_deref() == Some(&u.name))
            {
                c.status = Some(u.status.clone());
            }
        }
        o.compute_environments = ces.into_iter().map(Arc::new).collect();
        let mut queues: Vec<JobQueue> = o.queues.iter().map(|q| (**q).clone()).collect();
        for u in &d.queues {
            if let Some(q) = queues
                .iter_mut()
                .find(|q| q.metadata.name.as_deref() == Some(&u.name))
            {
                q.status = Some(u.status.clone());
            }
        }
        o.queues = queues.into_iter().map(Arc::new).collect();
    }

    /// Applies passes until one changes nothing (at most 5); panics otherwise.
    fn settle(o: &mut Observed) {
        for _ in 0..5 {
            let d = run(o);
            if d.jobs.is_empty()
                && d.nodes.is_empty()
                && d.compute_environments.is_empty()
                && d.queues.is_empty()
                && d.children.is_empty()
                && d.fleet.is_empty()
            {
                assert!(d.events.is_empty(), "events without writes: {:?}", d.events);
                return;
            }
            apply(o, &d);
        }
        panic!("no fixpoint after 5 passes: {:?}", run(o).jobs);
    }

    fn step(o: &mut Observed) {
        let d = run(o);
        apply(o, &d);
    }

    /// The agent's report on the current attempt of `name`.
    fn agent(o: &mut Observed, name: &str, f: impl Fn(&mut AttemptStatus)) {
        let mut jobs: Vec<BatchJob> = o.jobs.iter().map(|j| (**j).clone()).collect();
        if let Some(j) = jobs
            .iter_mut()
            .find(|j| j.metadata.name.as_deref() == Some(name))
            && let Some(s) = j.status.as_mut()
        {
            let n = s.attempt.unwrap_or(0);
            if let Some(a) = s.attempts.iter_mut().find(|a| a.attempt == n) {
                f(a);
            }
        }
        o.jobs = jobs.into_iter().map(Arc::new).collect();
    }

    fn exited(code: i32) -> impl Fn(&mut AttemptStatus) {
        move |a| {
            a.started_at = a.started_at.clone().or(Some(time(NOW - 10)));
            a.stopped_at = Some(time(NOW - 1));
            a.exit_code = Some(code);
            a.reason = Some(if code == 0 { "Completed" } else { "Error" }.into());
        }
    }

    fn started(a: &mut AttemptStatus) {
        a.started_at = Some(time(NOW - 5));
    }

    #[test]
    fn every_stage_of_a_mixed_world_settles_without_further_writes() {
        let arr = array(job("arr", "1", "1Gi", 3), 2);
        let mut o = world(
            vec![
                job("a", "1", "1Gi", 1),
                depends_on(job("b", "1", "1Gi", 2), "a"),
                arr,
                job("huge", "1", "64Gi", 4),
                with_definition(job("orphan", "1", "1Gi", 5), "missing"),
            ],
            vec![n1()],
        );
        settle(&mut o);
        for j in ["a", "arr-0", "arr-1"] {
            agent(&mut o, j, started);
        }
        settle(&mut o);
        for j in ["a", "arr-0", "arr-1"] {
            agent(&mut o, j, exited(0));
        }
        settle(&mut o);
        agent(&mut o, "b", exited(2));
        settle(&mut o);
        let phases: Vec<(String, Option<JobPhase>)> = o
            .jobs
            .iter()
            .map(|j| {
                (
                    j.metadata.name.clone().unwrap_or_default(),
                    j.status.as_ref().and_then(|s| s.phase),
                )
            })
            .collect();
        for (name, want) in [
            ("a", JobPhase::Succeeded),
            ("b", JobPhase::Failed),
            ("arr", JobPhase::Succeeded),
            ("huge", JobPhase::Runnable),
            ("orphan", JobPhase::Submitted),
        ] {
            assert!(
                phases.contains(&(name.into(), Some(want))),
                "{name}: {phases:?}"
            );
        }
        let q = o.queues[0].status.clone().unwrap_or_default();
        assert_eq!((q.runnable_jobs, q.running_jobs), (Some(1), Some(0)));
        assert_eq!(q.conditions[0].type_, CONDITION_VALID);
        let n = o.nodes[0].status.clone().unwrap_or_default();
        assert_eq!((n.job_count, n.phase), (Some(0), Some(ApiNodePhase::Ready)));
    }

    #[test]
    fn a_runnable_job_is_bound_labelled_and_its_node_allocated() {
        let o = world(vec![job("a", "1500m", "2Gi", 1)], vec![n1()]);
        let d = run(&o);
        let u = update(&d, "a");
        assert_eq!(u.label, Some(LabelChange::Set("n1".into())));
        let s = status(&d, "a");
        assert_eq!(s.phase, Some(JobPhase::Starting));
        assert_eq!(s.node.as_deref(), Some("n1"));
        assert_eq!(s.attempt, Some(1));
        assert_eq!(
            s.attempts,
            [AttemptStatus {
                attempt: 1,
                node: Some("n1".into()),
                instance_id: Some("n1".into()),
                ..Default::default()
            }]
        );
        assert_eq!(s.observed_generation, Some(1));
        let c = &s.conditions[0];
        assert_eq!(
            (c.type_.as_str(), c.status.as_str(), c.reason.as_str()),
            ("Scheduled", "True", "Bound")
        );
        let n = &d.nodes[0].status;
        assert_eq!(n.allocated, Some(res("1500m", "2Gi")));
        assert_eq!(n.job_count, Some(1));
        assert_eq!(n.jobs[0].name, "a");
        assert_eq!(n.idle_since, None);
        assert!(d.events.iter().any(|e| e.reason == reasons::BOUND));
    }

    #[test]
    fn the_whole_life_of_a_job_and_nothing_more_once_settled() {
        let mut o = world(vec![job("a", "1", "1Gi", 1)], vec![n1()]);
        let d = run(&o);
        apply(&mut o, &d);
        assert!(
            run(&o).jobs.is_empty(),
            "bound job is stable: {:?}",
            run(&o).jobs
        );
        agent(&mut o, "a", started);
        let d = run(&o);
        let s = status(&d, "a");
        assert_eq!(s.phase, Some(JobPhase::Running));
        assert_eq!(s.started_at, Some(time(NOW - 5)));
        assert!(update(&d, "a").label.is_none());
        apply(&mut o, &d);
        assert!(run(&o).jobs.is_empty());
        agent(&mut o, "a", exited(0));
        let d = run(&o);
        let u = update(&d, "a");
        assert_eq!(u.label, Some(LabelChange::Remove));
        let s = status(&d, "a");
        assert_eq!(s.phase, Some(JobPhase::Succeeded));
        assert_eq!(s.node, None);
        assert_eq!(s.stopped_at, Some(time(NOW - 1)));
        assert_eq!(s.reason.as_deref(), Some("Completed"));
        assert_eq!(d.nodes[0].status.job_count, Some(0));
        assert_eq!(d.nodes[0].status.idle_since, Some(time(NOW)));
        apply(&mut o, &d);
        let again = run(&o);
        assert!(
            again.jobs.is_empty() && again.nodes.is_empty(),
            "{:?}",
            again.jobs
        );
    }

    fn retrying(j: BatchJob, attempts: u32, backoff: Option<u32>) -> BatchJob {
        let mut j = j;
        j.spec.template.retry_strategy = Some(RetryStrategy {
            attempts,
            evaluate_on_exit: vec![
                EvaluateOnExit {
                    on_exit_code: Some("3".into()),
                    on_reason: None,
                    on_status_reason: None,
                    action: RetryAction::Retry,
                },
                EvaluateOnExit {
                    on_exit_code: Some("2*".into()),
                    on_reason: None,
                    on_status_reason: None,
                    action: RetryAction::Exit,
                },
            ],
            backoff: backoff.map(|b| RetryBackoff {
                initial_delay_seconds: b,
                max_delay_seconds: 3600,
            }),
        });
        j
    }

    #[test]
    fn a_retry_rule_runs_the_job_again_until_attempts_are_used() {
        let mut o = world(vec![retrying(job("r", "1", "1Gi", 1), 2, None)], vec![n1()]);
        let d = run(&o);
        apply(&mut o, &d);
        agent(&mut o, "r", exited(3));
        // The attempt ends, the job is retried and, without backoff, bound again at once.
        let d = run(&o);
        let s = status(&d, "r");
        assert_eq!(s.phase, Some(JobPhase::Starting));
        assert_eq!(s.attempt, Some(2));
        assert_eq!(s.attempts.len(), 2);
        assert_eq!(update(&d, "r").label, None, "still labelled for n1");
        assert!(d.events.iter().any(|e| e.reason == reasons::RETRYING));
        apply(&mut o, &d);
        agent(&mut o, "r", exited(3));
        let d = run(&o);
        let s = status(&d, "r");
        assert_eq!(s.phase, Some(JobPhase::Failed));
        assert_eq!(s.reason.as_deref(), Some("Error"));
        assert_eq!(
            s.message.as_deref(),
            Some("attempt 2 failed on node n1: exit code 3 (Error); all 2 attempts used")
        );
        assert_eq!(update(&d, "r").label, Some(LabelChange::Remove));
    }

    #[test]
    fn backoff_leaves_the_job_runnable_with_not_before_and_no_label() {
        let mut o = world(
            vec![retrying(job("r", "1", "1Gi", 1), 3, Some(60))],
            vec![n1()],
        );
        let d = run(&o);
        apply(&mut o, &d);
        agent(&mut o, "r", exited(3));
        let d = run(&o);
        let s = status(&d, "r");
        assert_eq!(s.phase, Some(JobPhase::Runnable));
        assert_eq!(s.not_before, Some(time(NOW + 60)));
        assert_eq!(s.node, None);
        assert!(
            s.message
                .as_deref()
                .unwrap_or_default()
                .starts_with("retry backoff: runnable again at")
        );
        assert_eq!(update(&d, "r").label, Some(LabelChange::Remove));
        apply(&mut o, &d);
        assert!(run(&o).jobs.is_empty(), "stable while backing off");
        let later = decide(&o, &DecideConfig::default(), NOW + 60);
        assert_eq!(
            later.jobs[0].status.as_ref().and_then(|s| s.attempt),
            Some(2)
        );
    }

    #[test]
    fn an_exit_rule_fails_at_once() {
        let mut o = world(vec![retrying(job("r", "1", "1Gi", 1), 5, None)], vec![n1()]);
        let d = run(&o);
        apply(&mut o, &d);
        agent(&mut o, "r", exited(21));
        let s = status(&run(&o), "r").clone();
        assert_eq!(s.phase, Some(JobPhase::Failed));
        assert!(
            s.message
                .unwrap_or_default()
                .ends_with("evaluateOnExit[1] says EXIT")
        );
    }

    #[test]
    fn a_lost_node_ends_its_attempts_with_node_lost_and_they_are_retried() {
        let mut o = world(vec![retrying(job("r", "1", "1Gi", 1), 2, None)], vec![n1()]);
        let d = run(&o);
        apply(&mut o, &d);
        agent(&mut o, "r", started);
        step(&mut o);
        // n1 stops heartbeating; a fresh node n2 registers.
        let mut n2 = node("n2", "ce", "4", "16Gi", NOW + 100);
        n2.metadata.creation_timestamp = Some(time(NOW + 100));
        let mut nodes: Vec<Arc<BatchNode>> = o.nodes.clone();
        nodes.push(Arc::new(n2));
        o.nodes = nodes;
        let d = decide(&o, &DecideConfig::default(), NOW + 100);
        let s = status(&d, "r");
        assert_eq!(s.attempts[0].reason.as_deref(), Some(REASON_NODE_LOST));
        assert_eq!(s.attempts[0].stopped_at, Some(time(NOW + 100)));
        assert_eq!(
            (s.phase, s.node.as_deref(), s.attempt),
            (Some(JobPhase::Starting), Some("n2"), Some(2))
        );
        assert_eq!(update(&d, "r").label, Some(LabelChange::Set("n2".into())));
        let lost = d.nodes.iter().find(|n| n.name == "n1").expect("n1 update");
        assert_eq!(lost.status.phase, Some(ApiNodePhase::Lost));
        assert!(
            d.events
                .iter()
                .any(|e| e.reason == reasons::NODE_LOST && e.warning)
        );
    }

    #[test]
    fn dependents_wait_and_fail_with_their_dependency() {
        let mut o = world(
            vec![
                job("a", "1", "1Gi", 1),
                depends_on(job("b", "1", "1Gi", 2), "a"),
            ],
            vec![n1()],
        );
        let d = run(&o);
        assert_eq!(status(&d, "b").phase, Some(JobPhase::Pending));
        assert_eq!(
            status(&d, "b").message.as_deref(),
            Some("waiting on dependency default/a")
        );
        apply(&mut o, &d);
        agent(&mut o, "a", exited(1));
        let d = run(&o);
        assert_eq!(status(&d, "a").phase, Some(JobPhase::Failed));
        let b = status(&d, "b");
        assert_eq!(b.phase, Some(JobPhase::Failed));
        assert_eq!(b.reason.as_deref(), Some(DEPENDENCY_FAILED));
        assert_eq!(b.message.as_deref(), Some("dependency default/a failed"));
    }

    #[test]
    fn a_dependent_is_released_when_its_dependency_succeeds() {
        let mut o = world(
            vec![
                job("a", "1", "1Gi", 1),
                depends_on(job("b", "1", "1Gi", 2), "a"),
            ],
            vec![n1()],
        );
        step(&mut o);
        agent(&mut o, "a", exited(0));
        let d = run(&o);
        assert_eq!(status(&d, "b").phase, Some(JobPhase::Starting));
    }

    #[test]
    fn an_array_job_gets_children_and_counts_them() {
        let mut o = world(vec![array(job("arr", "1", "1Gi", 1), 3)], vec![n1()]);
        let d = run(&o);
        let names: Vec<_> = d
            .children
            .iter()
            .filter_map(|c| c.job.metadata.name.clone())
            .collect();
        assert_eq!(names, ["arr-0", "arr-1", "arr-2"]);
        let c = &d.children[1].job;
        assert_eq!(c.spec.array_index, Some(1));
        assert!(c.spec.array_properties.is_none());
        assert_eq!(
            c.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_ARRAY_PARENT))
                .map(String::as_str),
            Some("arr")
        );
        let owner = &c.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("BatchJob", "arr", Some(true))
        );
        assert_eq!(
            status(&d, "arr").array_status.as_ref().map(|a| a.pending),
            Some(3)
        );
        apply(&mut o, &d);
        // Children are scheduled; the parent is not.
        let d = run(&o);
        assert!(d.plan.bindings.iter().all(|b| b.job.0 != "default/arr"));
        assert_eq!(d.plan.bindings.len(), 3);
        let a = status(&d, "arr");
        assert_eq!(a.array_status.as_ref().map(|a| a.starting), Some(3));
        assert_eq!(a.phase, Some(JobPhase::Running));
        apply(&mut o, &d);
        for c in ["arr-0", "arr-1", "arr-2"] {
            agent(&mut o, c, exited(0));
        }
        let d = run(&o);
        let a = status(&d, "arr");
        assert_eq!(a.phase, Some(JobPhase::Succeeded));
        assert_eq!(a.array_status.as_ref().map(|a| a.succeeded), Some(3));
    }

    #[test]
    fn an_array_fails_when_a_child_fails() {
        let mut o = world(vec![array(job("arr", "1", "1Gi", 1), 2)], vec![n1()]);
        step(&mut o);
        step(&mut o);
        agent(&mut o, "arr-1", exited(1));
        let d = run(&o);
        let a = status(&d, "arr");
        assert_eq!(a.phase, Some(JobPhase::Failed));
        assert_eq!(
            a.message.as_deref(),
            Some("array child default/arr-1 failed")
        );
        assert_eq!(
            a.array_status.as_ref().map(|a| (a.failed, a.starting)),
            Some((1, 1))
        );
    }

    #[test]
    fn a_too_large_job_says_why_in_its_message_and_condition() {
        let d = run(&world(vec![job("big", "1", "64Gi", 1)], vec![n1()]));
        let s = status(&d, "big");
        assert_eq!(s.phase, Some(JobPhase::Runnable));
        assert_eq!(
            s.message.as_deref(),
            Some("needs 64Gi memory, largest instance of ce/ce has 16Gi")
        );
        assert_eq!(s.conditions[0].reason, "TooLarge");
        assert_eq!(s.conditions[0].status, "False");
    }

    #[test]
    fn a_missing_definition_is_a_clear_reason() {
        let d = run(&world(
            vec![with_definition(job("x", "1", "1Gi", 1), "nope")],
            vec![n1()],
        ));
        let s = status(&d, "x");
        assert_eq!(s.phase, Some(JobPhase::Submitted));
        assert_eq!(
            s.message.as_deref(),
            Some("job definition default/nope not found")
        );
        assert_eq!(s.conditions[0].reason, reasons::INVALID_JOB);
        assert!(d.events.iter().any(|e| e.reason == reasons::INVALID_JOB));
    }

    fn aws_world(
        jobs: Vec<BatchJob>,
        nodes: Vec<BatchNode>,
        desired: u32,
        instances: &[&str],
    ) -> Observed {
        let mut o = world(jobs, nodes);
        o.fleets.insert(
            "ce".into(),
            FleetState {
                desired,
                min: 0,
                max: 10,
                instance_type: Some("c5.xlarge".into()),
                instances: instances
                    .iter()
                    .map(|i| FleetInstance {
                        instance_id: (*i).into(),
                        lifecycle: Lifecycle::InService,
                        protected_from_scale_in: false,
                        instance_type: None,
                    })
                    .collect(),
            },
        );
        o
    }

    #[test]
    fn demand_sets_the_desired_capacity_of_a_fleet() {
        let jobs = (0..5)
            .map(|i| job(&format!("j{i}"), "2", "4Gi", i))
            .collect();
        let d = run(&aws_world(jobs, vec![], 0, &[]));
        assert_eq!(
            d.fleet,
            [FleetAction::SetDesired {
                compute_environment: "ce".into(),
                desired: 3,
                from: 0
            }]
        );
        assert_eq!(d.compute_environments[0].status.desired_capacity, Some(3));
        let scaling = d.compute_environments[0]
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == CONDITION_SCALING)
            .expect("Scaling");
        assert_eq!(
            (scaling.status.as_str(), scaling.message.as_str()),
            ("True", "0 instance(s) booting, 3 more needed")
        );
        assert!(d.events.iter().any(|e| e.reason == reasons::SCALED));
        // Instances booting (no BatchNode yet) count: nothing more to ask for.
        let jobs = (0..5)
            .map(|i| job(&format!("j{i}"), "2", "4Gi", i))
            .collect();
        let d = run(&aws_world(jobs, vec![], 3, &["i-1", "i-2", "i-3"]));
        assert!(d.fleet.is_empty(), "{:?}", d.fleet);
    }

    #[test]
    fn a_drained_idle_node_is_terminated_before_desired_is_lowered() {
        let mut n = node("i-abc", "ce", "4", "16Gi", NOW);
        if let Some(s) = n.status.as_mut() {
            s.phase = Some(ApiNodePhase::Draining);
            s.idle_since = Some(time(0));
        }
        let d = run(&aws_world(vec![], vec![n], 1, &["i-abc"]));
        assert_eq!(
            d.fleet,
            [FleetAction::Terminate {
                compute_environment: "ce".into(),
                node: "i-abc".into(),
                instance_id: "i-abc".into()
            }]
        );
        assert_eq!(d.compute_environments[0].status.desired_capacity, Some(0));
    }

    #[test]
    fn an_idle_node_is_drained_after_its_idle_time_where_a_fleet_can_terminate_it() {
        let mut n = n1();
        if let Some(s) = n.status.as_mut() {
            s.idle_since = Some(time(NOW - 300));
        }
        let d = run(&aws_world(vec![], vec![n.clone()], 1, &["n1"]));
        assert_eq!(d.nodes[0].status.phase, Some(ApiNodePhase::Draining));
        assert!(d.events.iter().any(|e| e.reason == reasons::DRAINING));
        // Without a fleet nothing could terminate it: it stays Ready for jobs.
        let d = run(&world(vec![], vec![n]));
        assert_eq!(d.nodes[0].status.phase, Some(ApiNodePhase::Ready));
    }

    #[test]
    fn a_fleet_error_is_a_condition_and_an_event() {
        let mut o = world(vec![], vec![]);
        o.fleet_errors.insert(
            "ce".into(),
            "DescribeAutoScalingGroups: not found: nope".into(),
        );
        let d = run(&o);
        let c = d.compute_environments[0]
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == CONDITION_READY)
            .expect("Ready");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", reasons::FLEET_ERROR)
        );
        assert!(
            d.events
                .iter()
                .any(|e| e.reason == reasons::FLEET_ERROR && e.warning)
        );
    }

    mod invariants {
        use super::*;
        use proptest::prelude::*;

        /// One step of the world: a controller pass, or an agent reporting on a job.
        #[derive(Debug, Clone)]
        enum Step {
            Pass,
            Start(usize),
            Exit(usize, i32),
            /// Time moves on this many seconds (backoff, lost nodes).
            Wait(u64),
            /// Node `i` stops heartbeating from now on.
            Silence(usize),
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                4 => Just(Step::Pass),
                2 => (0..6usize).prop_map(Step::Start),
                2 => (0..6usize, prop_oneof![Just(0), Just(1), Just(3)]).prop_map(|(j, c)| Step::Exit(j, c)),
                1 => (1..120u64).prop_map(Step::Wait),
                1 => (0..2usize).prop_map(Step::Silence),
            ]
        }

        fn check(o: &Observed) {
            let mut used: BTreeMap<String, u64> = BTreeMap::new();
            for j in &o.jobs {
                let s = j.status.clone().unwrap_or_default();
                let placed = matches!(s.phase, Some(JobPhase::Starting | JobPhase::Running));
                let label = j
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_NODE))
                    .cloned();
                if placed {
                    assert_eq!(label, s.node, "a placed job is labelled for its node");
                    let open: Vec<_> = s
                        .attempts
                        .iter()
                        .filter(|a| a.stopped_at.is_none())
                        .collect();
                    assert!(
                        open.len() <= 1,
                        "at most one attempt at a time: {:?}",
                        s.attempts
                    );
                    assert_eq!(open.first().map(|a| a.attempt), s.attempt);
                    *used.entry(s.node.clone().unwrap_or_default()).or_default() += 1000;
                } else {
                    assert_eq!(label, None, "only placed jobs are labelled");
                }
                let tries = j
                    .spec
                    .template
                    .retry_strategy
                    .as_ref()
                    .map_or(1, |r| r.attempts);
                assert!(
                    s.attempt.unwrap_or(0) <= tries,
                    "never more attempts than allowed"
                );
            }
            for (node, cpu) in used {
                assert!(cpu <= 2000, "node {node} over its 2 cpu: {cpu}m");
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            #[test]
            fn no_job_runs_twice_and_no_node_is_overcommitted(steps in proptest::collection::vec(step(), 1..60)) {
                let jobs: Vec<BatchJob> = (0..6)
                    .map(|i| retrying(job(&format!("j{i}"), "1", "1Gi", i), 3, if i % 2 == 0 { Some(30) } else { None }))
                    .collect();
                let mut o = world(jobs, vec![
                    node("n1", "ce", "2", "8Gi", NOW),
                    node("n2", "ce", "2", "8Gi", NOW),
                ]);
                let mut now = NOW;
                let mut silent = [false, false];
                for s in steps {
                    match s {
                        Step::Pass => {
                            // Live nodes heartbeat.
                            let mut nodes: Vec<BatchNode> = o.nodes.iter().map(|n| (**n).clone()).collect();
                            for (i, n) in nodes.iter_mut().enumerate() {
                                if !silent[i] && let Some(st) = n.status.as_mut() {
                                    st.heartbeat_time = Some(time(now));
                                }
                            }
                            o.nodes = nodes.into_iter().map(Arc::new).collect();
                            let d = decide(&o, &DecideConfig::default(), now);
                            apply(&mut o, &d);
                            check(&o);
                        }
                        Step::Start(j) | Step::Exit(j, _) => {
                            let name = format!("j{j}");
                            let placed = o.jobs.iter().any(|x| {
                                x.metadata.name.as_deref() == Some(name.as_str())
                                    && x.status.as_ref().is_some_and(|s| {
                                        matches!(s.phase, Some(JobPhase::Starting | JobPhase::Running))
                                            && s.node.as_deref().is_some_and(|n| !silent[usize::from(n == "n2")])
                                    })
                            });
                            if placed {
                                match s {
                                    Step::Exit(_, code) => agent(&mut o, &name, move |a| {
                                        a.started_at = a.started_at.clone().or(Some(time(now)));
                                        if a.stopped_at.is_none() {
                                            a.stopped_at = Some(time(now));
                                            a.exit_code = Some(code);
                                            a.reason = Some(if code == 0 { "Completed" } else { "Error" }.into());
                                        }
                                    }),
                                    _ => agent(&mut o, &name, move |a| {
                                        a.started_at = a.started_at.clone().or(Some(time(now)));
                                    }),
                                }
                            }
                        }
                        Step::Wait(secs) => now += secs,
                        Step::Silence(i) => silent[i] = true,
                    }
                }
            }
        }
    }
}
