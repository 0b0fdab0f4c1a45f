//! The BatchNode this agent registers and heartbeats into.

use super::config::AgentConfig;
use super::patches::{self, NODE_MANAGER};
use crate::api::BatchNode;
use jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};

/// Applies the BatchNode's spec (creating it when absent) and a first heartbeat.
#[tracing::instrument(skip_all, fields(node = %config.node_name))]
pub async fn register(
    api: &Api<BatchNode>,
    config: &AgentConfig,
    protected: Option<bool>,
) -> Result<(), kube::Error> {
    let params = PatchParams::apply(NODE_MANAGER).force();
    api.patch(
        &config.node_name,
        &params,
        &Patch::Apply(patches::node_spec(config)),
    )
    .await?;
    heartbeat(api, &config.node_name, protected).await?;
    tracing::info!("BatchNode registered");
    Ok(())
}

/// Applies `status.heartbeatTime` (and `status.protectedFromScaleIn`).
pub async fn heartbeat(
    api: &Api<BatchNode>,
    node_name: &str,
    protected: Option<bool>,
) -> Result<(), kube::Error> {
    let params = PatchParams::apply(NODE_MANAGER).force();
    api.patch_status(
        node_name,
        &params,
        &Patch::Apply(patches::node_status(node_name, Timestamp::now(), protected)),
    )
    .await?;
    Ok(())
}
