//! The integration tests, one binary: each module is one topic (the files under
//! `tests/it/`), `support` is what they share. A test is named `<module>::<test>`, e.g.
//! `cargo test --test it -- crds::checked_in_crds_match_the_code`.
//! All modules share this one process: a test must not change process-wide state
//! (environment variables, the current directory, signal dispositions).

mod support;

mod agent_cli;
mod agent_container_settings;
mod agent_docker;
mod agent_identity;
mod agent_jobs;
mod agent_protection;
mod agent_restart;
mod agent_spot;
mod apiserver_cli;
mod apiserver_crud;
mod apiserver_fuzz;
mod apiserver_helm;
mod apiserver_kubectl;
mod apiserver_lifecycle;
mod apiserver_patch;
mod apiserver_schema;
mod apiserver_watch;
mod aws_bootstrap;
mod aws_fleet;
mod aws_iam;
mod chart;
mod cloud_aws;
mod commands;
mod conformance;
mod controller_aws;
mod controller_estimates;
mod controller_events;
mod controller_examples;
mod controller_invalid;
mod controller_leader;
mod controller_lifecycle;
mod controller_retention;
mod crds;
mod examples;
mod executor_docker;
mod executor_process;
mod fault_tolerance;
mod image;
mod kubeauth;
mod logs;
mod node_authz;
mod realkube;
mod simulate;
mod simulate_cli;
mod smoke_aws;
mod smoke_podman;
mod smoke_tools;
mod workload_control;
