//! Spot interruption notices and rebalance recommendations, read from the instance
//! metadata service (IMDSv2) every few seconds:
//! - `meta-data/spot/instance-action` (404 while there is none): `{"action":
//!   "terminate|stop|hibernate", "time": "..."}`, about two minutes before the action;
//! - `meta-data/events/recommendations/rebalance` (404 while there is none):
//!   `{"noticeTime": "..."}`.
//!
//! Either notice closes the [`Gate`]: nothing new starts here, and the heartbeat reports
//! `status.interruption` (the controller then treats the node as Draining and asks for a
//! replacement). On an instance action, the agent loop also stops the running attempts
//! (reason `SpotInterruption`, retried by the job's retry strategy).

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use serde::Deserialize;
use tokio::sync::watch;

use super::gate::Gate;
use super::identity::{ImdsOptions, error_chain, imds_client};
use crate::api::batch_node::{InterruptionKind, NodeInterruption};
use crate::api::common::Time;

/// Default seconds between two polls (`asg-batch agent --spot-poll-interval`).
pub const DEFAULT_POLL_SECONDS: u64 = 5;

/// The instance-action notice's path.
pub const INSTANCE_ACTION: &str = "/latest/meta-data/spot/instance-action";
/// The rebalance recommendation's path.
pub const REBALANCE: &str = "/latest/meta-data/events/recommendations/rebalance";

/// How the agent watches for Spot notices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpotWatch {
    /// Where the metadata service is.
    pub imds: ImdsOptions,
    /// Time between two polls.
    pub interval: Duration,
}

#[derive(Deserialize)]
struct InstanceAction {
    action: Option<String>,
    time: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rebalance {
    notice_time: Option<String>,
}

/// The notice an `instance-action` answer gives. An answer that is not the documented
/// JSON is still a notice (the instance is being interrupted), without action or time.
pub fn parse_instance_action(body: &str, now: Timestamp) -> NodeInterruption {
    let parsed: Option<InstanceAction> = serde_json::from_str(body.trim()).ok();
    if parsed.is_none() {
        tracing::warn!(%body, "spot/instance-action is not the documented JSON; treated as a notice");
    }
    let (action, time) = parsed.map_or((None, None), |p| (p.action, p.time));
    NodeInterruption {
        kind: InterruptionKind::InstanceAction,
        action,
        time,
        noticed_at: Time(now),
    }
}

/// The notice a `recommendations/rebalance` answer gives (same leniency).
pub fn parse_rebalance(body: &str, now: Timestamp) -> NodeInterruption {
    let parsed: Option<Rebalance> = serde_json::from_str(body.trim()).ok();
    if parsed.is_none() {
        tracing::warn!(%body, "events/recommendations/rebalance is not the documented JSON; treated as a notice");
    }
    NodeInterruption {
        kind: InterruptionKind::Rebalance,
        action: None,
        time: parsed.and_then(|p| p.notice_time),
        noticed_at: Time(now),
    }
}

/// Why one poll failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {path} from the instance metadata service: {message}")]
pub struct PollError {
    path: &'static str,
    message: String,
}

/// Reads `path`: `Ok(None)` on 404 (no notice).
async fn read(
    client: &aws_config::imds::Client,
    path: &'static str,
) -> Result<Option<String>, PollError> {
    use aws_config::imds::client::error::ImdsError;
    match client.get(path).await {
        Ok(v) => Ok(Some(v.as_ref().to_owned())),
        Err(ImdsError::ErrorResponse(r)) if r.response().status().as_u16() == 404 => Ok(None),
        Err(e) => Err(PollError {
            path,
            message: error_chain(&e),
        }),
    }
}

/// One poll: the instance action first (it outranks a recommendation).
async fn poll(client: &aws_config::imds::Client) -> Result<Option<NodeInterruption>, PollError> {
    if let Some(body) = read(client, INSTANCE_ACTION).await? {
        return Ok(Some(parse_instance_action(&body, Timestamp::now())));
    }
    Ok(read(client, REBALANCE)
        .await?
        .map(|body| parse_rebalance(&body, Timestamp::now())))
}

/// Polls every `watch.interval` until aborted, closing `gate` on a notice; `instance_action`
/// turns true once an instance action is seen (the agent loop then stops running attempts).
/// A metadata service that does not answer is logged (a warning the first time, then
/// once it answers again), never fatal.
pub async fn poll_loop(
    watch_options: SpotWatch,
    gate: Arc<Gate>,
    instance_action: watch::Sender<bool>,
) {
    let client = match imds_client(&watch_options.imds) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "Spot notices are not watched");
            return;
        }
    };
    tracing::info!(endpoint = %watch_options.imds.endpoint, interval = ?watch_options.interval, "watching for Spot interruption notices");
    let mut ticks = tokio::time::interval(watch_options.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        ticks.tick().await;
        match poll(&client).await {
            Ok(notice) => {
                if failing {
                    tracing::info!("the instance metadata service answers again");
                    failing = false;
                }
                if let Some(notice) = notice {
                    gate.interrupt(notice);
                    if gate.instance_action() {
                        instance_action.send_if_modified(|seen| !std::mem::replace(seen, true));
                    }
                }
            }
            Err(e) if !failing => {
                tracing::warn!(error = %e, "Spot notices cannot be read; retrying");
                failing = true;
            }
            Err(e) => tracing::debug!(error = %e, "Spot notices still cannot be read"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        Timestamp::UNIX_EPOCH
    }

    #[test]
    fn instance_action_answers() {
        let n = parse_instance_action(
            r#"{"action": "terminate", "time": "2026-11-30T10:02:00Z"}"#,
            now(),
        );
        assert_eq!(n.kind, InterruptionKind::InstanceAction);
        assert_eq!(n.action.as_deref(), Some("terminate"));
        assert_eq!(n.time.as_deref(), Some("2026-11-30T10:02:00Z"));
        assert_eq!(n.noticed_at, Time(now()));
        let stop = parse_instance_action("{\"action\":\"stop\",\"time\":\"t\"}\n", now());
        assert_eq!(stop.action.as_deref(), Some("stop"));
        let odd = parse_instance_action("not json", now());
        assert_eq!(
            (odd.kind, odd.action, odd.time),
            (InterruptionKind::InstanceAction, None, None),
            "still a notice"
        );
    }

    #[test]
    fn rebalance_answers() {
        let n = parse_rebalance(r#"{"noticeTime": "2026-11-30T10:00:00Z"}"#, now());
        assert_eq!(n.kind, InterruptionKind::Rebalance);
        assert_eq!(n.time.as_deref(), Some("2026-11-30T10:00:00Z"));
        assert_eq!(n.action, None);
        let odd = parse_rebalance("", now());
        assert_eq!((odd.kind, odd.time), (InterruptionKind::Rebalance, None));
    }
}
