//! Step 1: which nodes are silent, which of them are Lost, and which compute
//! environments are in disruption mode.
//!
//! A node is *silent* when this controller has not seen its heartbeat value change for
//! the lost-node timeout, counting only from the last gap in its own view (a gap restarts
//! every node's grace). A silent node is *Lost* unless its compute environment is in
//! disruption mode: more than `disruption_threshold_percent` of its nodes (at least two)
//! are silent at once, or every node of the cluster (at least two) is. Many nodes falling
//! silent together means the control plane or the network is sick, not the nodes
//! (kube-controller-manager's full-disruption mode), so nobody is declared Lost.

use std::collections::{BTreeMap, BTreeSet};

use crate::api::BatchNode;
use crate::scheduler::Seconds;

use super::super::time::seconds;
use super::{DecideConfig, Observed};

/// The outcome of step 1.
#[derive(Debug, Default)]
pub(super) struct Liveness<'a> {
    /// Nodes whose heartbeat has not been seen for the timeout.
    pub(super) silent: BTreeSet<&'a str>,
    /// Silent nodes declared Lost (not in a disrupted compute environment).
    pub(super) lost: BTreeSet<&'a str>,
    /// Compute environments in disruption mode: (silent nodes, nodes).
    pub(super) disrupted: BTreeMap<String, (usize, usize)>,
}

/// Step 1.
pub(super) fn liveness<'a>(
    observed: &Observed,
    config: &DecideConfig,
    nodes: &BTreeMap<&'a str, &'a BatchNode>,
    departed: &BTreeSet<&'a str>,
    now: Seconds,
) -> Liveness<'a> {
    let gap = observed.view_gap.unwrap_or(0);
    let mut out = Liveness::default();
    // Per compute environment: (silent, all), not counting nodes whose instance left the
    // fleet (they are expected to fall silent).
    let mut per_ce: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (name, n) in nodes {
        let heartbeat = observed
            .heartbeats_seen
            .get(*name)
            .copied()
            .unwrap_or_else(|| {
                n.status
                    .as_ref()
                    .and_then(|s| s.heartbeat_time.as_ref())
                    .or(n.metadata.creation_timestamp.as_ref())
                    .map_or(now, seconds)
            })
            .max(gap);
        let silent = now.saturating_sub(heartbeat) > config.lost_node_timeout;
        if silent {
            out.silent.insert(name);
        }
        if !departed.contains(name) {
            let e = per_ce
                .entry(n.spec.compute_environment.as_str())
                .or_default();
            e.1 += 1;
            if silent {
                e.0 += 1;
            }
        }
    }
    let (all_silent, all) = per_ce
        .values()
        .fold((0, 0), |(s, a), (s2, a2)| (s + s2, a + a2));
    let cluster_down = all >= 2 && all_silent == all;
    let threshold = u64::from(config.disruption_threshold_percent);
    for (ce, (silent, total)) in &per_ce {
        let share_over = *total >= 2 && (*silent as u64) * 100 > (*total as u64) * threshold;
        if *silent > 0 && (cluster_down || share_over) {
            out.disrupted.insert((*ce).to_owned(), (*silent, *total));
        }
    }
    for name in &out.silent {
        let ce = nodes
            .get(name)
            .map_or("", |n| n.spec.compute_environment.as_str());
        if departed.contains(name) || !out.disrupted.contains_key(ce) {
            out.lost.insert(name);
        }
    }
    out
}
