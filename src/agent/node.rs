//! The BatchNode this agent registers and heartbeats into.

use super::config::AgentConfig;
use super::gate::Gate;
use super::patches::{self, NODE_MANAGER};
use super::protection::Protection;
use crate::api::BatchNode;
use jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use std::sync::Arc;
use std::time::Duration;

/// Applies the BatchNode's spec (creating it when absent) and a first heartbeat.
#[tracing::instrument(skip_all, fields(node = %config.node_name))]
pub async fn register(
    api: &Api<BatchNode>,
    config: &AgentConfig,
    protected: Option<bool>,
    gate: &Gate,
) -> Result<(), kube::Error> {
    let params = PatchParams::apply(NODE_MANAGER).force();
    api.patch(
        &config.node_name,
        &params,
        &Patch::Apply(patches::node_spec(config)),
    )
    .await?;
    heartbeat(api, config, protected, gate).await?;
    tracing::info!("BatchNode registered");
    Ok(())
}

/// Applies `status.heartbeatTime`, what the agent runs and whether it takes new
/// attempts (and `status.protectedFromScaleIn`), then takes in the node's phase from the
/// answer (a Draining node starts nothing more: [`Gate`]).
pub async fn heartbeat(
    api: &Api<BatchNode>,
    config: &AgentConfig,
    protected: Option<bool>,
    gate: &Gate,
) -> Result<(), kube::Error> {
    let params = PatchParams::apply(NODE_MANAGER).force();
    let report = gate.report();
    let node_name = &config.node_name;
    let node = api
        .patch_status(
            node_name,
            &params,
            &Patch::Apply(patches::node_status(
                node_name,
                Timestamp::now(),
                protected,
                &report,
                config.log_endpoint.as_ref(),
            )),
        )
        .await?;
    gate.observe_phase(node.status.and_then(|s| s.phase));
    Ok(())
}

/// Heartbeats every `config.heartbeat_interval` until aborted: applies the node's status
/// (with the scale-in protection last set; the idle check runs apart, see
/// [`super::protection::idle_loop`]), registering the node again when it was deleted. Runs
/// beside the job loop, so a slow API server never holds up jobs; each beat is bounded
/// by a timeout.
pub async fn heartbeat_loop(
    api: Api<BatchNode>,
    config: AgentConfig,
    protection: Option<Arc<Protection>>,
    gate: Arc<Gate>,
    metrics: Arc<super::metrics::AgentMetrics>,
) {
    let mut ticks = tokio::time::interval(config.heartbeat_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let limit = config.heartbeat_interval.max(Duration::from_secs(10));
    loop {
        ticks.tick().await;
        let beat = async {
            let protected = protection.as_ref().map(|p| p.last_known());
            metrics.protected.set(protected.map_or(-1, i64::from));
            let report = gate.report();
            metrics
                .running_attempts
                .set(i64::try_from(report.running.len()).unwrap_or(i64::MAX));
            metrics.accepting.set(i64::from(report.accepting));
            metrics
                .spot_notice
                .set(match report.interruption.as_ref().map(|i| i.kind) {
                    None => 0,
                    Some(crate::api::batch_node::InterruptionKind::Rebalance) => 1,
                    Some(crate::api::batch_node::InterruptionKind::InstanceAction) => 2,
                });
            match heartbeat(&api, &config, protected, &gate).await {
                Ok(()) => {
                    metrics
                        .last_heartbeat
                        .set(jiff::Timestamp::now().as_second());
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    tracing::warn!("BatchNode is gone; registering it again");
                    if let Err(e) = register(&api, &config, protected, &gate).await {
                        tracing::warn!(error = %e, "cannot register the BatchNode again");
                    }
                }
                Err(e) => {
                    metrics.heartbeat_failures.inc();
                    tracing::warn!(error = %e, "heartbeat failed");
                }
            }
        };
        if tokio::time::timeout(limit, beat).await.is_err() {
            metrics.heartbeat_failures.inc();
            tracing::warn!(?limit, "heartbeat timed out");
        }
    }
}
