//! Capacity plan: how many new instances each compute environment needs for the
//! runnable jobs that fit no existing node.
//!
//! First-fit-decreasing on empty instances of the environment's shape. Instances that
//! are already booting are capacity: they are the first bins, so a demand they can hold
//! asks for nothing new. Each job goes to the first Enabled compute environment of its
//! queue's list whose instance shape can hold it and that can still grow (below
//! `maxInstances`); a job bigger than every shape never drives scaling. Disabled
//! environments never scale out. The desired capacity of every environment is
//! `nodes − terminated + booting + new`, clamped to `[minInstances, maxInstances]`
//! (see [`desired_capacity`]).

use std::collections::BTreeMap;

use super::model::{JobId, NodePhase, Snapshot, State};
use super::reasons::Reason;
use super::resources::{Dimension, Resources};

/// One runnable job that did not fit an existing node.
#[derive(Debug, Clone)]
pub struct Demand<'a> {
    /// The job.
    pub job: &'a JobId,
    /// What it needs.
    pub resources: Resources,
    /// Its queue's compute environments, in order.
    pub compute_environments: &'a [String],
}

/// The planner's view of one compute environment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EnvironmentCapacity {
    /// Registered nodes (any phase) plus booting instances, before this pass.
    pub current: u32,
    /// Instances booting before this pass.
    pub booting: u32,
    /// New instances the demand needs (already limited by `maxInstances`).
    pub new_instances: u32,
}

/// Result of [`plan`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CapacityPlan {
    /// Per compute environment (every environment in the snapshot).
    pub environments: BTreeMap<String, EnvironmentCapacity>,
    /// Why each demanded job is still waiting.
    pub reasons: BTreeMap<JobId, Reason>,
}

struct Bins {
    shape: Resources,
    free: Vec<Resources>,
    /// Bins before this index can take no demanded job (below the smallest demand).
    start: usize,
    /// Upper bound of `free` over all bins.
    bound: Resources,
    booting: u32,
    headroom: u32,
    new: u32,
}

impl Bins {
    fn first_fit(&mut self, need: &Resources, smallest: &Resources) -> bool {
        if !need.fits_in(&self.bound) {
            return false;
        }
        while self.start < self.free.len() && !smallest.fits_in(&self.free[self.start]) {
            self.start += 1;
        }
        let mut exact = Resources::ZERO;
        for i in self.start..self.free.len() {
            let f = self.free[i];
            if need.fits_in(&f) {
                self.free[i] = f.saturating_sub(need);
                return true;
            }
            exact.cpu_millis = exact.cpu_millis.max(f.cpu_millis);
            exact.memory_bytes = exact.memory_bytes.max(f.memory_bytes);
            exact.gpus = exact.gpus.max(f.gpus);
        }
        // A full scan failed: the bound we just measured is exact.
        self.bound = exact;
        false
    }

    fn open(&mut self, need: &Resources) -> bool {
        if self.new >= self.headroom {
            return false;
        }
        self.new += 1;
        self.free.push(self.shape.saturating_sub(need));
        self.bound = self.shape;
        true
    }
}

/// Plans new instances for `demand` (jobs in scheduling order).
pub fn plan(snapshot: &Snapshot, demand: &[Demand<'_>]) -> CapacityPlan {
    let mut nodes_per_ce: BTreeMap<&str, u32> = BTreeMap::new();
    for node in snapshot.nodes.values() {
        *nodes_per_ce
            .entry(node.compute_environment.as_str())
            .or_default() += 1;
    }
    let mut bins: BTreeMap<&str, Bins> = BTreeMap::new();
    let mut out = CapacityPlan::default();
    for (name, ce) in &snapshot.compute_environments {
        let current = nodes_per_ce
            .get(name.as_str())
            .copied()
            .unwrap_or(0)
            .saturating_add(ce.booting);
        out.environments.insert(
            name.clone(),
            EnvironmentCapacity {
                current,
                booting: ce.booting,
                new_instances: 0,
            },
        );
        let headroom = if ce.state == State::Enabled {
            ce.max_instances.saturating_sub(current)
        } else {
            0
        };
        let free = vec![ce.shape; ce.booting as usize];
        bins.insert(
            name.as_str(),
            Bins {
                shape: ce.shape,
                bound: if ce.booting > 0 {
                    ce.shape
                } else {
                    Resources::ZERO
                },
                free,
                start: 0,
                booting: ce.booting,
                headroom,
                new: 0,
            },
        );
    }

    // Smallest demand per dimension: a bin with less free room than this in any
    // dimension can take nothing more.
    let mut smallest = Resources::new(u64::MAX, u64::MAX, u32::MAX);
    for d in demand {
        smallest.cpu_millis = smallest.cpu_millis.min(d.resources.cpu_millis);
        smallest.memory_bytes = smallest.memory_bytes.min(d.resources.memory_bytes);
        smallest.gpus = smallest.gpus.min(d.resources.gpus);
    }

    // Decreasing size relative to the first environment that could hold the job;
    // stable, so equal sizes keep scheduling order.
    let enabled_fitting = |d: &Demand<'_>| -> Option<Resources> {
        d.compute_environments.iter().find_map(|c| {
            snapshot
                .compute_environments
                .get(c)
                .filter(|ce| ce.state == State::Enabled && d.resources.fits_in(&ce.shape))
                .map(|ce| ce.shape)
        })
    };
    let mut items: Vec<(u128, usize)> = demand
        .iter()
        .enumerate()
        .map(|(i, d)| {
            (
                enabled_fitting(d).map_or(0, |s| d.resources.relative_size(&s)),
                i,
            )
        })
        .collect();
    items.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));

    let mut placed_in: Vec<Option<&str>> = vec![None; demand.len()];
    for &(_, i) in &items {
        let d = &demand[i];
        let mut at_max: Option<Reason> = None;
        let mut any_shape_fits = false;
        for c in d.compute_environments {
            let Some(ce) = snapshot.compute_environments.get(c) else {
                continue;
            };
            if ce.state != State::Enabled || !d.resources.fits_in(&ce.shape) {
                continue;
            }
            any_shape_fits = true;
            let Some(b) = bins.get_mut(c.as_str()) else {
                continue;
            };
            if b.first_fit(&d.resources, &smallest) || b.open(&d.resources) {
                placed_in[i] = Some(c.as_str());
                break;
            }
            at_max.get_or_insert(Reason::AtMaxInstances {
                compute_environment: c.clone(),
                max: ce.max_instances,
            });
        }
        if placed_in[i].is_some() {
            continue;
        }
        let reason = if any_shape_fits {
            at_max
        } else {
            too_large(snapshot, d)
        };
        if let Some(r) = reason {
            out.reasons.insert(d.job.clone(), r);
        }
    }

    for (name, b) in &bins {
        if let Some(e) = out.environments.get_mut(*name) {
            e.new_instances = b.new;
        }
    }
    for (i, ce) in placed_in.iter().enumerate() {
        if let Some(ce) = ce {
            let instances = bins.get(ce).map_or(0, |b| b.booting + b.new);
            out.reasons.insert(
                demand[i].job.clone(),
                Reason::WaitingForBoot {
                    compute_environment: (*ce).to_owned(),
                    instances,
                },
            );
        }
    }
    out
}

/// The reason for a job larger than every enabled instance shape of its queue. It names
/// a dimension in which the job exceeds even the largest shape (and that shape's
/// environment) when there is one; otherwise every dimension fits some shape but no
/// shape fits all, and the reason says so.
fn too_large(snapshot: &Snapshot, d: &Demand<'_>) -> Option<Reason> {
    let enabled: Vec<(&String, Resources)> = d
        .compute_environments
        .iter()
        .filter_map(|c| {
            snapshot
                .compute_environments
                .get(c)
                .filter(|ce| ce.state == State::Enabled)
                .map(|ce| (c, ce.shape))
        })
        .collect();
    let largest_in = |dim: Dimension| -> Option<(&String, u64)> {
        enabled.iter().map(|(c, s)| (*c, s.get(dim))).fold(
            None,
            |best: Option<(&String, u64)>, x| match best {
                Some(b) if b.1 >= x.1 => Some(b),
                _ => Some(x),
            },
        )
    };
    let reason = |dim: Dimension, (ce, largest): (&String, u64)| Reason::TooLarge {
        dimension: dim,
        needs: d.resources.get(dim),
        compute_environment: ce.clone(),
        largest,
    };
    for dim in [Dimension::Cpu, Dimension::Memory, Dimension::Gpu] {
        if let Some(l) = largest_in(dim)
            && d.resources.get(dim) > l.1
        {
            return Some(reason(dim, l));
        }
    }
    (!enabled.is_empty()).then(|| Reason::NoShapeFits {
        needs: d.resources,
        compute_environments: enabled.iter().map(|(c, _)| (*c).clone()).collect(),
    })
}

/// Desired capacity of a compute environment once this pass's terminations are done:
/// `current − terminated + new`, clamped to `[min, max]`. `current` counts every
/// registered node (a Lost instance still exists in the group until terminated) plus
/// booting instances, so the group is never asked to shrink by an amount it would take
/// from instances we still count on.
pub fn desired_capacity(min: u32, max: u32, current: u32, terminated: u32, new: u32) -> u32 {
    let want = current.saturating_sub(terminated).saturating_add(new);
    want.clamp(min, max.max(min))
}

/// Count of nodes of a compute environment that are Ready (the count scale-in keeps at
/// or above `minInstances`).
pub fn ready_nodes(snapshot: &Snapshot, compute_environment: &str) -> u32 {
    let n = snapshot
        .nodes
        .values()
        .filter(|n| n.compute_environment == compute_environment && n.phase == NodePhase::Ready)
        .count();
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::model::{ComputeEnvironment, Node};
    use crate::scheduler::resources::GIB;

    fn ce(booting: u32, min: u32, max: u32) -> ComputeEnvironment {
        ComputeEnvironment {
            state: State::Enabled,
            shape: Resources::new(4000, 16 * GIB, 0),
            min_instances: min,
            max_instances: max,
            booting,
            scale_in_after_idle_seconds: 60,
            boot_seconds: 0,
            booting_ready_at: vec![],
        }
    }

    fn snap(ces: Vec<(&str, ComputeEnvironment)>) -> Snapshot {
        Snapshot {
            compute_environments: ces.into_iter().map(|(n, c)| (n.to_string(), c)).collect(),
            ..Snapshot::default()
        }
    }

    fn run(s: &Snapshot, ces: &[String], jobs: &[Resources]) -> CapacityPlan {
        let ids: Vec<JobId> = (0..jobs.len()).map(|i| JobId(format!("j{i}"))).collect();
        let demand: Vec<Demand<'_>> = jobs
            .iter()
            .zip(&ids)
            .map(|(r, id)| Demand {
                job: id,
                resources: *r,
                compute_environments: ces,
            })
            .collect();
        plan(s, &demand)
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(std::string::ToString::to_string).collect()
    }

    #[test]
    fn first_fit_decreasing_packs_big_items_first() {
        // 3 × (3 cpu) and 3 × (1 cpu) on 4-cpu instances: FFD needs exactly 3.
        let s = snap(vec![("a", ce(0, 0, 10))]);
        let jobs = [
            Resources::new(1000, GIB, 0),
            Resources::new(1000, GIB, 0),
            Resources::new(1000, GIB, 0),
            Resources::new(3000, GIB, 0),
            Resources::new(3000, GIB, 0),
            Resources::new(3000, GIB, 0),
        ];
        let p = run(&s, &names(&["a"]), &jobs);
        assert_eq!(p.environments["a"].new_instances, 3);
    }

    #[test]
    fn booting_instances_count_as_capacity() {
        let s = snap(vec![("a", ce(1, 0, 10))]);
        let jobs = [Resources::new(2000, GIB, 0), Resources::new(2000, GIB, 0)];
        let p = run(&s, &names(&["a"]), &jobs);
        assert_eq!(p.environments["a"].new_instances, 0);
        assert_eq!(
            p.reasons[&JobId::new("j0")].to_string(),
            "waiting for 1 instance to boot in ce/a"
        );
    }

    #[test]
    fn growth_is_capped_at_max_and_the_rest_wait_with_a_reason() {
        let s = snap(vec![("a", ce(0, 0, 2))]);
        let jobs = [Resources::new(4000, GIB, 0); 3];
        let p = run(&s, &names(&["a"]), &jobs);
        assert_eq!(p.environments["a"].new_instances, 2);
        assert_eq!(
            p.reasons[&JobId::new("j2")],
            Reason::AtMaxInstances {
                compute_environment: "a".into(),
                max: 2
            }
        );
    }

    #[test]
    fn spills_to_the_next_environment_when_the_first_is_at_max() {
        let s = snap(vec![("a", ce(0, 0, 1)), ("b", ce(0, 0, 5))]);
        let jobs = [Resources::new(4000, GIB, 0); 3];
        let p = run(&s, &names(&["a", "b"]), &jobs);
        assert_eq!(p.environments["a"].new_instances, 1);
        assert_eq!(p.environments["b"].new_instances, 2);
    }

    #[test]
    fn job_bigger_than_the_shape_never_drives_scaling() {
        let s = snap(vec![("nightly", ce(0, 0, 10))]);
        let p = run(
            &s,
            &names(&["nightly"]),
            &[Resources::new(1000, 64 * GIB, 0)],
        );
        assert_eq!(p.environments["nightly"].new_instances, 0);
        assert_eq!(
            p.reasons[&JobId::new("j0")].to_string(),
            "needs 64Gi memory, largest instance of ce/nightly has 16Gi"
        );
    }

    #[test]
    fn too_large_names_the_dimension_no_environment_has() {
        // ce "wide" has more cpu, ce "deep" more memory; the job exceeds both in memory.
        let mut wide = ce(0, 0, 10);
        wide.shape = Resources::new(16_000, 8 * GIB, 0);
        let mut deep = ce(0, 0, 10);
        deep.shape = Resources::new(2000, 32 * GIB, 0);
        let s = snap(vec![("wide", wide), ("deep", deep)]);
        let p = run(
            &s,
            &names(&["wide", "deep"]),
            &[Resources::new(4000, 64 * GIB, 0)],
        );
        assert_eq!(
            p.reasons[&JobId::new("j0")].to_string(),
            "needs 64Gi memory, largest instance of ce/deep has 32Gi"
        );
        // Fits each dimension somewhere but no single shape.
        let p = run(
            &s,
            &names(&["wide", "deep"]),
            &[Resources::new(4000, 16 * GIB, 0)],
        );
        assert_eq!(
            p.reasons[&JobId::new("j0")].to_string(),
            "needs cpu=4, memory=16Gi, no instance of ce/wide, ce/deep has all of it"
        );
    }

    #[test]
    fn disabled_environment_never_scales_out() {
        let mut c = ce(0, 0, 10);
        c.state = State::Disabled;
        let s = snap(vec![("a", c)]);
        let p = run(&s, &names(&["a"]), &[Resources::new(1000, GIB, 0)]);
        assert_eq!(p.environments["a"].new_instances, 0);
    }

    #[test]
    fn existing_nodes_count_towards_max() {
        let mut s = snap(vec![("a", ce(1, 0, 3))]);
        s.nodes.insert(
            "n1".into(),
            Node {
                compute_environment: "a".into(),
                capacity: Resources::new(4000, 16 * GIB, 0),
                allocated: Resources::new(4000, 16 * GIB, 0),
                jobs: 1,
                phase: NodePhase::Ready,
                idle_since: None,
                terminable: true,
            },
        );
        let p = run(&s, &names(&["a"]), &[Resources::new(4000, GIB, 0); 4]);
        assert_eq!(p.environments["a"].current, 2);
        assert_eq!(p.environments["a"].new_instances, 1);
    }

    #[test]
    fn desired_is_clamped() {
        assert_eq!(desired_capacity(2, 10, 0, 0, 0), 2);
        assert_eq!(desired_capacity(0, 10, 8, 0, 5), 10);
        assert_eq!(desired_capacity(1, 10, 3, 3, 0), 1);
        assert_eq!(desired_capacity(0, 10, 3, 1, 2), 4);
        // max below min (a bad spec): min wins rather than panicking in clamp.
        assert_eq!(desired_capacity(3, 1, 0, 0, 0), 3);
    }
}
