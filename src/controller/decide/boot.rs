//! The boot time observed on a fleet: from each instance's launch (EC2 `LaunchTime`, a
//! local instance's start) to its BatchNode's creation (the agent's registration), the
//! median of the most recent samples, kept in `ComputeEnvironment.status.observedBootSeconds`.

use crate::api::batch_node::BatchNode;
use crate::cloud::FleetState;
use jiff::Timestamp;

/// How many of the most recently registered nodes the median is taken over.
pub(super) const SAMPLES: usize = 9;

/// One sample per node of `nodes` whose instance is in `fleet` with a known launch time:
/// (registration, seconds from launch to registration).
pub(super) fn samples<'a>(
    fleet: &FleetState,
    nodes: impl IntoIterator<Item = &'a BatchNode>,
) -> Vec<(Timestamp, u32)> {
    nodes
        .into_iter()
        .filter_map(|n| {
            let registered = n.metadata.creation_timestamp.as_ref()?.0;
            let launched = fleet
                .instances
                .iter()
                .find(|i| i.instance_id == n.spec.instance_id)?
                .launched_at?;
            // A node created before its instance launched (clock skew) says nothing.
            let seconds = registered.duration_since(launched).as_secs();
            Some((registered, u32::try_from(seconds).ok()?))
        })
        .collect()
}

/// The observed boot time to record: the median of the [`SAMPLES`] most recently
/// registered samples, when it differs from `current` by a tenth and at least a second
/// (so the status is not rewritten for noise); otherwise `current`.
pub(super) fn observed(mut samples: Vec<(Timestamp, u32)>, current: Option<u32>) -> Option<u32> {
    samples.sort_unstable();
    let recent: Vec<u32> = samples.iter().rev().take(SAMPLES).map(|s| s.1).collect();
    let Some(median) = median(recent) else {
        return current;
    };
    match current {
        Some(c) if median.abs_diff(c) < (c / 10).max(1) => Some(c),
        _ => Some(median),
    }
}

fn median(mut v: Vec<u32>) -> Option<u32> {
    v.sort_unstable();
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some(((u64::from(v[n / 2 - 1]) + u64::from(v[n / 2])) / 2) as u32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::{FleetInstance, Lifecycle};

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).expect("timestamp")
    }

    fn node(instance: &str, created: i64) -> BatchNode {
        let mut n = BatchNode::new(
            instance,
            crate::api::batch_node::BatchNodeSpec {
                instance_id: instance.into(),
                instance_type: None,
                compute_environment: "ce".into(),
                capacity: Default::default(),
                executor: Default::default(),
            },
        );
        n.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            at(created),
        ));
        n
    }

    fn fleet(launched: &[(&str, Option<i64>)]) -> FleetState {
        FleetState {
            desired: 0,
            min: 0,
            max: 10,
            instance_type: None,
            instances: launched
                .iter()
                .map(|(id, t)| FleetInstance {
                    instance_id: (*id).into(),
                    lifecycle: Lifecycle::InService,
                    protected_from_scale_in: false,
                    instance_type: None,
                    launched_at: t.map(at),
                })
                .collect(),
        }
    }

    #[test]
    fn a_sample_is_launch_to_registration_of_instances_still_known() {
        let f = fleet(&[("i-1", Some(0)), ("i-2", None), ("i-3", Some(100))]);
        let nodes = [
            node("i-1", 42),
            node("i-2", 50),
            node("i-3", 90),
            node("i-gone", 5),
        ];
        assert_eq!(samples(&f, &nodes), vec![(at(42), 42)]);
    }

    #[test]
    fn the_median_of_the_most_recent_moves_only_materially() {
        assert_eq!(observed(vec![], Some(60)), Some(60));
        assert_eq!(observed(vec![], None), None);
        assert_eq!(
            observed(vec![(at(1), 40), (at(2), 50), (at(3), 90)], None),
            Some(50)
        );
        assert_eq!(observed(vec![(at(1), 40), (at(2), 60)], None), Some(50));
        // 52 is within a tenth of 50: kept; 56 is not.
        assert_eq!(observed(vec![(at(1), 52)], Some(50)), Some(50));
        assert_eq!(observed(vec![(at(1), 56)], Some(50)), Some(56));
        // Only the most recent SAMPLES count: ten old slow boots, nine new fast ones.
        let mut v: Vec<_> = (0..10).map(|i| (at(i), 300)).collect();
        v.extend((100..109).map(|i| (at(i), 30)));
        assert_eq!(observed(v, Some(300)), Some(30));
    }
}
