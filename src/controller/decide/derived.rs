//! Step 5: status derived from the pass (nodes, compute environments, queues) and the
//! fleet actions (terminations, then desired capacity).

use std::collections::{BTreeMap, BTreeSet};

use crate::api::batch_job::JobPhase;
use crate::api::batch_node::{BatchNode, BatchNodeStatus, NodeJob, NodePhase as ApiNodePhase};
use crate::api::common::Resources as ApiResources;
use crate::api::compute_environment::InstanceShape;
use crate::api::job_queue::JobQueueStatus;
use crate::scheduler::{JobId, Plan, Resources, Seconds};

use super::super::reasons;
use super::super::time::time;
use super::super::{CONDITION_DISRUPTED, CONDITION_READY, CONDITION_SCALING, CONDITION_VALID};
use super::attempts::NodeFacts;
use super::liveness::Liveness;
use super::snapshot::{self, phase};
use super::status::{owned_node_status, set_condition};
use super::{
    Decisions, EnvironmentUpdate, FleetAction, NodeUpdate, Observed, QueueUpdate, Work, event,
    object_ref,
};

pub(super) fn api_resources(r: &Resources) -> ApiResources {
    ApiResources::from_amounts(r.cpu_millis, r.memory_bytes, r.gpus)
}

/// Step 5: node status from the jobs placed on it after this pass.
/// What a node's `Ready` condition and Event say of its interruption notice.
fn interruption_message(n: &BatchNode) -> String {
    use crate::api::batch_node::InterruptionKind;
    let Some(i) = n.status.as_ref().and_then(|s| s.interruption.as_ref()) else {
        return String::new();
    };
    let when = i.time.as_deref().unwrap_or("unknown time");
    match i.kind {
        InterruptionKind::Rebalance => format!(
            "Spot rebalance recommendation (noticed {when}): no new work; replacement capacity requested"
        ),
        InterruptionKind::InstanceAction => format!(
            "Spot interruption notice: {} at {when}; running attempts end with reason SpotInterruption and are retried by policy",
            i.action.as_deref().unwrap_or("terminate")
        ),
    }
}

pub(super) fn node_updates(
    work: &BTreeMap<JobId, Work<'_>>,
    built: &snapshot::Built,
    facts: &NodeFacts<'_, '_>,
    liveness: &Liveness<'_>,
    plan: &Plan,
    now: Seconds,
    out: &mut Decisions,
) {
    let (nodes, node_phase) = (facts.nodes, facts.phase);
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
        let interruption = n.status.as_ref().and_then(|s| s.interruption.as_ref());
        if phase == ApiNodePhase::Ready && drain.contains(name) {
            phase = ApiNodePhase::Draining;
        }
        // What the controller saw (the same value the scheduler used), never a value
        // carried over from before the node last held an attempt.
        let idle_since = if jobs.is_empty() {
            out.idle.get(*name).map(|since| time(*since))
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
            accepting_attempts: None,
            running_attempts: Vec::new(),
            interruption: None,
            log_endpoint: None,
        };
        let (ready, why, msg) = match phase {
            _ if liveness.silent.contains(name) && phase != ApiNodePhase::Lost => (
                false,
                "NotHeartbeating",
                format!(
                    "no heartbeat seen for the lost-node timeout; not declared Lost: compute environment {} is in disruption mode",
                    n.spec.compute_environment
                ),
            ),
            ApiNodePhase::Ready => (true, "Heartbeating", "accepting jobs".to_owned()),
            ApiNodePhase::Draining if interruption.is_some() => {
                (false, reasons::SPOT_INTERRUPTION, interruption_message(n))
            }
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
                ApiNodePhase::Draining if interruption.is_some() => event(
                    &mut out.events,
                    object_ref(*n),
                    true,
                    reasons::SPOT_INTERRUPTION,
                    interruption_message(n),
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
pub(super) fn environment_updates(
    observed: &Observed,
    built: &snapshot::Built,
    plan: &Plan,
    facts: &NodeFacts<'_, '_>,
    disrupted: &BTreeMap<String, (usize, usize)>,
    now: Seconds,
    out: &mut Decisions,
) {
    let (nodes, node_phase) = (facts.nodes, facts.phase);
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
        if let Some(fleet) = observed.fleets.get(name) {
            let samples =
                super::boot::samples(fleet, mine.iter().filter_map(|n| nodes.get(n).copied()));
            status.observed_boot_seconds =
                super::boot::observed(samples, current.observed_boot_seconds);
        }
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
            problem = Some((e.reason, e.message.clone()));
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
            let fenced = out
                .fleet
                .iter()
                .filter(|a| matches!(a, FleetAction::Fence { compute_environment, .. } if compute_environment == name))
                .count();
            let gone = plan
                .terminate
                .iter()
                .filter(|t| mine.contains(&t.as_str()))
                .count()
                + fenced;
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
        let was_disrupted = current
            .conditions
            .iter()
            .any(|c| c.type_ == CONDITION_DISRUPTED && c.status == "True");
        match disrupted.get(name) {
            Some((silent, total)) => {
                let msg = format!(
                    "{silent} of {total} nodes silent at once: suspecting the control plane or the network, no node is declared Lost until heartbeats come back"
                );
                set_condition(
                    &mut status.conditions,
                    CONDITION_DISRUPTED,
                    true,
                    reasons::DISRUPTION,
                    &msg,
                    generation,
                    now,
                );
                if !was_disrupted {
                    event(
                        &mut out.events,
                        object_ref(&**ce),
                        true,
                        reasons::DISRUPTION,
                        msg,
                    );
                }
            }
            None if was_disrupted => {
                set_condition(
                    &mut status.conditions,
                    CONDITION_DISRUPTED,
                    false,
                    reasons::DISRUPTION_ENDED,
                    "heartbeats are back",
                    generation,
                    now,
                );
                event(
                    &mut out.events,
                    object_ref(&**ce),
                    false,
                    reasons::DISRUPTION_ENDED,
                    "heartbeats are back: normal lost-node handling resumes".into(),
                );
            }
            None => {}
        }
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
                    event(&mut out.events, object_ref(&**ce), true, why, msg.clone());
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
pub(super) fn queue_updates(
    observed: &Observed,
    work: &BTreeMap<JobId, Work<'_>>,
    settled_runnable: &BTreeMap<&str, i32>,
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
        // Settled waiting jobs (not in `work`) are Runnable ones of their queue too.
        let (mut runnable, mut running) = (settled_runnable.get(name).copied().unwrap_or(0), 0i32);
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
