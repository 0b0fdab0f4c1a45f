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

pub use accounting::Report;
pub use workload::{Workload, WorkloadError};

/// A way of running the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Policy {
    /// This project's scheduler and capacity planner on an elastic fleet.
    #[value(name = "asg-batch")]
    AsgBatch,
    /// The seed's fleet: one job per instance, scaled on a fixed schedule.
    #[value(name = "seed-one-per-instance")]
    SeedOnePerInstance,
    /// The seed's first way: one big instance, at most N jobs at a time.
    #[value(name = "seed-single-host")]
    SeedSingleHost,
}

impl Policy {
    /// Every policy, in report order.
    pub const ALL: [Policy; 3] = [
        Policy::AsgBatch,
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
    let _ = writeln!(
        out,
        "{:<22} {:>11} {:>15} {:>5} {:>12} {:>12} {:>9} {:>14} {:>9}",
        "policy",
        "makespan",
        "instance-hours",
        "peak",
        "utilisation",
        "lower bound",
        "vs bound",
        "no-wait bound",
        "vs it"
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
            "{:<22} {:>11} {:>15.2} {:>5} {:>11.1}% {:>12.2} {:>9} {:>14.2} {:>9}",
            r.policy,
            hms(r.makespan_s),
            r.instance_hours,
            r.peak_instances,
            r.utilisation * 100.0,
            r.lower_bound_instance_hours,
            vs(r.lower_bound_instance_hours),
            r.no_wait_bound_instance_hours,
            vs(r.no_wait_bound_instance_hours),
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
/// `lower_bound_instance_hours`.
pub fn json(reports: &[Report]) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(reports)
}
