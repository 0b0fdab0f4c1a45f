//! `asg-batch simulate`: replays a workload (see [`workload`] for the file format)
//! through the real scheduler and a simulated fleet, and prices it beside the seed's
//! two ways.
//!
//! Figures per policy ([`Report`]): makespan (first arrival to last completion),
//! billed instance-hours (per second, 60 s minimum, boot included, in instances of the
//! workload's instance type), peak instances, mean utilisation of the busiest resource,
//! and the workload's instance-hour lower bound ([`accounting::lower_bound_seconds`]).

#![warn(missing_docs)]

pub mod accounting;
pub mod asg_batch;
pub mod seed;
pub mod workload;

use std::fmt::Write as _;

use crate::scheduler::Options;

pub use accounting::Report;
pub use workload::{Workload, WorkloadError};

/// A way of running the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Policy {
    /// This project's scheduler and capacity planner on an elastic fleet.
    #[value(name = "asg-batch")]
    AsgBatch,
    /// The same with best-fit placement instead of drain-friendly placement.
    #[value(name = "asg-batch-best-fit")]
    AsgBatchBestFit,
    /// The same ignoring the queues' wait bounds (an instance for every job at once).
    #[value(name = "asg-batch-no-wait-bounds")]
    AsgBatchNoWaitBounds,
    /// Both off: the scheduler as it was before duration estimates (best fit, no
    /// bounds).
    #[value(name = "asg-batch-before")]
    AsgBatchBefore,
    /// The same as asg-batch with the first, linear scale-out search (one forecast per
    /// instance bought); only when asked for: it is slow on large bounded queues.
    #[value(name = "asg-batch-linear-scale-out")]
    AsgBatchLinearScaleOut,
    /// The seed's fleet: one job per instance, scaled on a fixed schedule.
    #[value(name = "seed-one-per-instance")]
    SeedOnePerInstance,
    /// The seed's first way: one big instance, at most N jobs at a time.
    #[value(name = "seed-single-host")]
    SeedSingleHost,
}

impl Policy {
    /// Every policy, in report order.
    pub const ALL: [Policy; 6] = [
        Policy::AsgBatch,
        Policy::AsgBatchBestFit,
        Policy::AsgBatchNoWaitBounds,
        Policy::AsgBatchBefore,
        Policy::SeedOnePerInstance,
        Policy::SeedSingleHost,
    ];
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// A table for people.
    Table,
    /// A JSON array with one object per policy.
    Json,
}

/// Simulates one policy.
pub fn run(workload: &Workload, policy: Policy) -> Report {
    match policy {
        Policy::AsgBatch => asg_batch::simulate(workload),
        Policy::AsgBatchBestFit => asg_batch::simulate_with(
            workload,
            "asg-batch-best-fit",
            Options {
                drain_friendly: false,
                wait_bounds: true,
                ..Options::default()
            },
        ),
        Policy::AsgBatchNoWaitBounds => asg_batch::simulate_with(
            workload,
            "asg-batch-no-wait-bounds",
            Options {
                drain_friendly: true,
                wait_bounds: false,
                ..Options::default()
            },
        ),
        Policy::AsgBatchBefore => asg_batch::simulate_with(
            workload,
            "asg-batch-before",
            Options {
                drain_friendly: false,
                wait_bounds: false,
                ..Options::default()
            },
        ),
        Policy::AsgBatchLinearScaleOut => asg_batch::simulate_with(
            workload,
            "asg-batch-linear-scale-out",
            Options {
                scale_out_search: crate::scheduler::scaleout::Search::Linear,
                ..Options::default()
            },
        ),
        Policy::SeedOnePerInstance => seed::one_per_instance(workload),
        Policy::SeedSingleHost => seed::single_host(workload),
    }
}

fn hms(seconds: u64) -> String {
    format!(
        "{}h{:02}m{:02}s",
        seconds / 3600,
        (seconds % 3600) / 60,
        seconds % 60
    )
}

/// Renders reports as a table.
pub fn table(workload: &Workload, reports: &[Report]) -> String {
    let mut out = String::new();
    let fleet = &workload.fleet;
    let _ = writeln!(
        out,
        "{} jobs on ce/{} ({}{}), boot {}s, scale-in after {}s idle; instance-hours in {}s",
        workload.jobs.len(),
        fleet.name,
        fleet.shape,
        fleet
            .instance_type
            .as_deref()
            .map(|t| format!(", {t}"))
            .unwrap_or_default(),
        fleet.boot_seconds,
        fleet.scale_in_after_idle_seconds,
        fleet.instance_type.as_deref().unwrap_or("instance"),
    );
    for q in &workload.queues {
        if let Some(w) = q.max_wait_seconds {
            let _ = writeln!(
                out,
                "queue {} waits up to {w}s before buying an instance",
                q.name
            );
        }
    }
    let _ = writeln!(
        out,
        "{:<24} {:>11} {:>15} {:>5} {:>12} {:>12} {:>9} {:>14} {:>9} {:>9} {:>10}",
        "policy",
        "makespan",
        "instance-hours",
        "peak",
        "utilisation",
        "lower bound",
        "vs bound",
        "no-wait bound",
        "vs it",
        "max wait",
        "ETA error"
    );
    for r in reports {
        let vs = |bound: f64| {
            if bound > 0.0 {
                format!("{:+.1}%", (r.instance_hours / bound - 1.0) * 100.0)
            } else {
                "-".into()
            }
        };
        let _ = writeln!(
            out,
            "{:<24} {:>11} {:>15.2} {:>5} {:>11.1}% {:>12.2} {:>9} {:>14.2} {:>9} {:>9} {:>10}",
            r.policy,
            hms(r.makespan_s),
            r.instance_hours,
            r.peak_instances,
            r.utilisation * 100.0,
            r.lower_bound_instance_hours,
            vs(r.lower_bound_instance_hours),
            r.no_wait_bound_instance_hours,
            vs(r.no_wait_bound_instance_hours),
            r.max_wait_s.map_or("-".into(), |w| format!("{w}s")),
            r.eta_median_abs_error_s
                .map_or("-".into(), |e| format!("{e:.0}s/{}", r.eta_jobs)),
        );
        if r.unfinished_jobs > 0 {
            let _ = writeln!(
                out,
                "  ! {} job(s) never ran under {} (arrived after its fleet was gone or too large for its hosts)",
                r.unfinished_jobs, r.policy
            );
        }
    }
    out
}

/// Renders reports as a JSON array, one object per policy with the keys `policy`,
/// `makespan_s`, `instance_hours`, `peak_instances`, `utilisation`,
/// `lower_bound_instance_hours`, `no_wait_bound_instance_hours`, and for asg-batch
/// policies `max_wait_s`, `eta_jobs` and `eta_median_abs_error_s`.
pub fn json(reports: &[Report]) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(reports)
}
