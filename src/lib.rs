//! asg-batch: a self-hosted AWS Batch — a Kubernetes operator that schedules batch jobs
//! onto EC2 Auto Scaling Groups.
//!
//! The library does the work; `src/main.rs` only wires it to the command line.
#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod cancel;
pub mod cloud;
pub mod controller;
pub mod dev;
pub mod kubeauth;
pub mod logs;
pub mod scheduler;
pub mod simulate;
pub mod telemetry;
