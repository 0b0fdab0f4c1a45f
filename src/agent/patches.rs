//! The server-side apply bodies the agent sends, built from plain data (pure, unit-tested).
//! Field managers come from [`crate::api::protocol`]; `src/api/PROTOCOL.md` says who owns what.

use super::config::AgentConfig;
use super::executor::Outcome;
use crate::api::common::Time;
use crate::api::{BatchJob, BatchNode};
use jiff::Timestamp;
use kube::Resource;
use serde_json::{Value, json};

/// Field manager of the BatchNode's spec and the agent's part of its status.
pub use crate::api::protocol::AGENT_MANAGER as NODE_MANAGER;
/// Field manager of attempt `n`'s agent-owned fields.
pub use crate::api::protocol::attempt_manager;

/// A timestamp as Kubernetes serialises `metav1.Time`.
pub fn time(at: Timestamp) -> Value {
    serde_json::to_value(Time(at)).unwrap_or(Value::Null)
}

/// The BatchNode with the spec this agent owns.
pub fn node_spec(config: &AgentConfig) -> Value {
    let mut spec = json!({
        "instanceId": config.instance_id,
        "computeEnvironment": config.compute_environment,
        "capacity": config.capacity,
        "executor": config.executor,
    });
    if let Some(t) = &config.instance_type {
        spec["instanceType"] = json!(t);
    }
    json!({
        "apiVersion": BatchNode::api_version(&()),
        "kind": BatchNode::kind(&()),
        "metadata": { "name": config.node_name },
        "spec": spec,
    })
}

/// The agent's part of the BatchNode's status: heartbeat, whether it takes new attempts
/// and which it runs ([`super::gate`]), and, when the agent manages scale-in protection,
/// what it last set.
pub fn node_status(
    node_name: &str,
    now: Timestamp,
    protected: Option<bool>,
    report: &super::gate::Report,
    log_endpoint: Option<&crate::api::batch_node::LogEndpoint>,
) -> Value {
    let mut status = json!({
        "heartbeatTime": time(now),
        "acceptingAttempts": report.accepting,
    });
    if !report.running.is_empty() {
        status["runningAttempts"] = json!(report.running);
    }
    if let Some(p) = protected {
        status["protectedFromScaleIn"] = json!(p);
    }
    if let Some(i) = &report.interruption {
        status["interruption"] = json!(i);
    }
    if let Some(e) = log_endpoint {
        status["logEndpoint"] = json!(e);
    }
    json!({
        "apiVersion": BatchNode::api_version(&()),
        "kind": BatchNode::kind(&()),
        "metadata": { "name": node_name },
        "status": status,
    })
}

fn job_status(namespace: &str, name: &str, entry: Value) -> Value {
    json!({
        "apiVersion": BatchJob::api_version(&()),
        "kind": BatchJob::kind(&()),
        "metadata": { "name": name, "namespace": namespace },
        "status": { "attempts": [entry] },
    })
}

/// `attempts[n].startedAt`.
pub fn attempt_started(namespace: &str, name: &str, attempt: u32, at: Timestamp) -> Value {
    job_status(
        namespace,
        name,
        json!({ "attempt": attempt, "startedAt": time(at) }),
    )
}

/// `attempts[n] {startedAt, stoppedAt, exitCode, reason, statusReason, logTail}`.
/// `startedAt` is repeated (when known) because the same manager applied it earlier and an
/// apply that leaves a field out removes it.
pub fn attempt_ended(
    namespace: &str,
    name: &str,
    attempt: u32,
    started_at: Option<Timestamp>,
    outcome: &Outcome,
) -> Value {
    let mut entry = json!({
        "attempt": attempt,
        "stoppedAt": time(outcome.stopped_at),
        "reason": outcome.reason.reason(),
        "statusReason": outcome.status_reason,
        "logTail": outcome.log_tail,
    });
    if let Some(at) = started_at.or(outcome.started_at) {
        entry["startedAt"] = time(at);
    }
    if let Some(code) = outcome.exit_code {
        entry["exitCode"] = json!(code);
    }
    job_status(namespace, name, entry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::executor::EndReason;
    use crate::api::common::Resources;

    #[test]
    fn node_bodies() {
        let config = AgentConfig::new(
            "i-0AB",
            "ce",
            Resources {
                cpu: "4".into(),
                memory: "8Gi".into(),
                gpu: 0,
            },
        )
        .with_instance_type(Some("c5.xlarge".into()));
        let spec = node_spec(&config);
        assert_eq!(spec["apiVersion"], "asgbatch.io/v1alpha1");
        assert_eq!(spec["metadata"]["name"], "i-0ab");
        assert_eq!(spec["spec"]["instanceId"], "i-0AB");
        assert_eq!(spec["spec"]["capacity"]["memory"], "8Gi");
        assert_eq!(spec["spec"]["executor"], "docker");
        let at: Timestamp = "2026-01-02T03:04:05Z".parse().expect("ts");
        let idle = crate::agent::gate::Report {
            accepting: true,
            running: vec![],
            interruption: None,
        };
        let status = node_status("i-0ab", at, Some(true), &idle, None);
        assert_eq!(status["status"]["heartbeatTime"], "2026-01-02T03:04:05Z");
        assert_eq!(status["status"]["protectedFromScaleIn"], true);
        assert_eq!(status["status"]["acceptingAttempts"], true);
        assert!(status["status"].get("runningAttempts").is_none());
        let busy = crate::agent::gate::Report {
            accepting: false,
            running: vec![crate::api::batch_node::NodeJob {
                namespace: "ns".into(),
                name: "j".into(),
                attempt: 2,
            }],
            interruption: Some(crate::api::batch_node::NodeInterruption {
                kind: crate::api::batch_node::InterruptionKind::InstanceAction,
                action: Some("terminate".into()),
                time: Some("2026-01-02T03:06:05Z".into()),
                noticed_at: Time(at),
            }),
        };
        let status = node_status("n", at, None, &busy, None);
        assert!(status["status"].get("protectedFromScaleIn").is_none());
        assert_eq!(status["status"]["acceptingAttempts"], false);
        assert_eq!(
            status["status"]["runningAttempts"],
            serde_json::json!([{"namespace": "ns", "name": "j", "attempt": 2}])
        );
        assert_eq!(
            status["status"]["interruption"],
            json!({"kind": "InstanceAction", "action": "terminate",
                   "time": "2026-01-02T03:06:05Z", "noticedAt": "2026-01-02T03:04:05Z"})
        );
        assert!(
            node_status("n", at, None, &idle, None)["status"]
                .get("interruption")
                .is_none()
        );
    }

    #[test]
    fn attempt_bodies() {
        let at: Timestamp = "2026-01-02T03:04:05Z".parse().expect("ts");
        let started = attempt_started("ns", "j", 2, at);
        assert_eq!(
            started["status"]["attempts"],
            json!([{ "attempt": 2, "startedAt": "2026-01-02T03:04:05Z" }])
        );
        let outcome = Outcome {
            exit_code: Some(3),
            reason: EndReason::Error,
            status_reason: "exited with code 3".into(),
            started_at: Some(at),
            stopped_at: at,
            log_tail: "hello\n".into(),
        };
        let ended = attempt_ended("ns", "j", 2, None, &outcome);
        let entry = &ended["status"]["attempts"][0];
        assert_eq!(entry["startedAt"], "2026-01-02T03:04:05Z");
        assert_eq!(entry["exitCode"], 3);
        assert_eq!(entry["reason"], "Error");
        assert_eq!(entry["logTail"], "hello\n");
        assert_eq!(ended["metadata"]["namespace"], "ns");
        let lost = attempt_ended(
            "ns",
            "j",
            1,
            None,
            &Outcome::not_started(EndReason::StartFailed, "x"),
        );
        let entry = &lost["status"]["attempts"][0];
        assert!(entry.get("exitCode").is_none() && entry.get("startedAt").is_none());
        assert_eq!(attempt_manager(7), "asg-batch-agent-attempt-7");
    }
}
