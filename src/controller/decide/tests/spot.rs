//! Spot notices (`status.interruption`, written by the agent) and the attempts they end.
use super::*;
use crate::api::batch_node::{InterruptionKind, NodeInterruption};

/// Node `name` whose agent reported a notice of `kind` and starts nothing more.
fn interrupted(name: &str, kind: InterruptionKind) -> BatchNode {
    let mut n = node(name, "ce", "4", "16Gi", NOW);
    if let Some(s) = n.status.as_mut() {
        s.accepting_attempts = Some(false);
        s.interruption = Some(NodeInterruption {
            kind,
            action: (kind == InterruptionKind::InstanceAction).then(|| "terminate".into()),
            time: Some("2026-11-30T10:02:00Z".into()),
            noticed_at: time(NOW - 1),
        });
    }
    n
}

#[test]
fn an_interrupted_node_drains_takes_no_work_and_is_replaced_at_once() {
    for kind in [
        InterruptionKind::Rebalance,
        InterruptionKind::InstanceAction,
    ] {
        let mut o = aws_world(
            vec![job("j", "1", "1Gi", 1)],
            vec![interrupted("i-spot", kind)],
            1,
            &["i-spot"],
        );
        o.heartbeats_seen.insert("i-spot".into(), NOW);
        let d = run(&o);
        let n = d
            .nodes
            .iter()
            .find(|n| n.name == "i-spot")
            .expect("node update");
        assert_eq!(n.status.phase, Some(ApiNodePhase::Draining), "{kind:?}");
        let ready = n
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .expect("Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "SpotInterruption")
        );
        assert!(
            d.events
                .iter()
                .any(|e| e.reason == reasons::SPOT_INTERRUPTION),
            "{kind:?}: {:?}",
            d.events
        );
        assert!(
            d.jobs
                .iter()
                .all(|u| u.status.as_ref().is_none_or(|s| s.node.is_none())),
            "{kind:?}: nothing is bound to the interrupted node: {:?}",
            d.jobs
        );
        assert_eq!(
            d.compute_environments[0].status.desired_capacity,
            Some(2),
            "{kind:?}: a replacement is asked for in the same pass"
        );
        // It stays Draining in later passes (no fleet needed to keep it so).
        apply(&mut o, &d);
        let d = run(&o);
        assert!(
            d.nodes
                .iter()
                .all(|n| n.status.phase == Some(ApiNodePhase::Draining)),
            "{:?}",
            d.nodes
        );
    }
}

#[test]
fn a_binding_the_interrupted_node_never_started_is_handed_back_and_placed_elsewhere() {
    let mut o = world(vec![job("j", "1", "1Gi", 1)], vec![n1()]);
    step(&mut o);
    assert_eq!(
        o.jobs[0].status.as_ref().and_then(|s| s.node.as_deref()),
        Some("n1")
    );
    // The notice arrives before the agent starts the attempt.
    let mut n = interrupted("n1", InterruptionKind::Rebalance);
    n.status = n.status.map(|s| BatchNodeStatus {
        phase: o.nodes[0].status.as_ref().and_then(|x| x.phase),
        ..s
    });
    o.nodes = vec![Arc::new(n), Arc::new(node("n2", "ce", "4", "16Gi", NOW))];
    let d = run(&o);
    let s = status(&d, "j");
    // Handed back and bound to n2 in the same pass; the binding never started is no
    // attempt, so this is still attempt 1.
    assert_eq!(
        (s.node.as_deref(), s.attempt),
        (Some("n2"), Some(1)),
        "{s:?}"
    );
    assert_eq!(s.attempts.len(), 1);
    assert_eq!(update(&d, "j").binds.as_deref(), Some("n2"));
}

fn spot_ended(a: &mut AttemptStatus) {
    a.started_at = a.started_at.clone().or(Some(time(NOW - 10)));
    a.stopped_at = Some(time(NOW - 1));
    a.exit_code = Some(137);
    a.reason = Some(AttemptReason::SpotInterruption);
    a.status_reason =
        Some("Job attempt stopped: the Spot instance received an interruption notice".into());
}

#[test]
fn a_spot_interrupted_attempt_counts_and_is_retried_or_matched_by_on_reason() {
    // Retried by the retry strategy: it counts as an attempt.
    let mut o = world(vec![retrying(job("r", "1", "1Gi", 1), 2, None)], vec![n1()]);
    step(&mut o);
    agent(&mut o, "r", spot_ended);
    let d = run(&o);
    let s = status(&d, "r");
    assert_eq!((s.phase, s.attempt), (Some(JobPhase::Starting), Some(2)));
    apply(&mut o, &d);
    agent(&mut o, "r", spot_ended);
    let s = status(&run(&o), "r").clone();
    assert_eq!(s.phase, Some(JobPhase::Failed), "all 2 attempts used");
    assert_eq!(s.reason.as_deref(), Some("SpotInterruption"));

    // `onReason: "SpotInterruption*"` matches it (here: EXIT at once).
    let mut j = job("x", "1", "1Gi", 1);
    j.spec.template.retry_strategy = Some(RetryStrategy {
        attempts: 5,
        evaluate_on_exit: vec![EvaluateOnExit {
            on_exit_code: None,
            on_reason: Some("SpotInterruption*".into()),
            on_status_reason: None,
            action: RetryAction::Exit,
        }],
        backoff: None,
    });
    let mut o = world(vec![j], vec![n1()]);
    step(&mut o);
    agent(&mut o, "x", spot_ended);
    let s = status(&run(&o), "x").clone();
    assert_eq!((s.phase, s.attempt), (Some(JobPhase::Failed), Some(1)));
}
