//! The node agent: registers its instance as a BatchNode, heartbeats, watches the jobs the
//! controller binds to it and runs their attempts, reporting per `src/api/PROTOCOL.md`.
//!
//! - [`config`] and [`identity`]: who the agent is (flags or EC2 IMDSv2).
//! - [`plan`]: pure decisions (start / cancel / adopt) from the watched jobs.
//! - [`spec`]: a job plus its JobDefinition into an executor [`executor::RunSpec`].
//! - [`patches`]: the server-side apply bodies and field managers.
//! - [`protection`]: scale-in protection while the instance holds an attempt.
//! - [`attempt`], [`node`], [`run()`]: the I/O around them.
//! - [`watched`]: the watch's decode of a BatchJob (once, from the event's JSON text,
//!   without `managedFields`; a job that does not deserialise is kept as its metadata).
//!
//! Behaviour worth knowing:
//! - The agent watches the jobs with `status.node=<node>` that have not ended (field
//!   selector, CRD `selectableFields`). An attempt is started when its job has
//!   `status.phase=Starting`, `status.node=<node>`, `status.attempt=N` and no
//!   `attempts[N].startedAt`/`stoppedAt`; at most one attempt of a job runs at a time.
//! - A running attempt is cancelled when its job is deleted, names another node, turns
//!   Succeeded/Failed, or moves on to a newer attempt. Its report is
//!   written only if it is still current (then reason `Cancelled`).
//! - Reports are server-side applies with field manager `asg-batch-agent-attempt-N` and
//!   the re-read resourceVersion as a precondition; transient failures are retried until
//!   written or stale.
//! - Attempts outlive the agent process: containers are named and labelled after their
//!   attempt ([`executor::docker`]), process jobs run under `asg-batch shim` in a session of
//!   their own with their state (identity, output, exit code) in
//!   `<data_dir>/attempts/<attempt>/` ([`executor::shim`]). What an executor keeps of an
//!   attempt (stopped container, state files) is removed only once its ending is reported
//!   or no longer wanted ([`executor::Executor::release`]).
//! - After a restart, an attempt that has `startedAt` but no `stoppedAt` and that this agent
//!   process does not run is **adopted** ([`executor::Executor::adopt`]): a container or
//!   shim still running is supervised as if this process had started it (held in the
//!   [`gate`], its end awaited, the rest of its timeout counted from its start enforced,
//!   cancelled by the same rules), and one that ended while no agent ran is reported with
//!   its real exit code and log tail. Only when nothing is left of it (no container, no
//!   state) is it reported as ended with reason `StartFailed` and status reason
//!   [`attempt::LOST_STATUS_REASON`] (its `startedAt` kept). It is never started again.
//!   A bound attempt without `startedAt` that an earlier process had already started (it
//!   died before reporting) is adopted too, not started a second time.
//! - A graceful shutdown (SIGTERM) **leaves running attempts running** by default
//!   ([`config::ShutdownMode::Leave`]): an agent upgrade or restart does not touch its jobs;
//!   the next agent process adopts them. Endings already known are reported within
//!   `AgentConfig::shutdown_grace`. With [`config::ShutdownMode::Cancel`] (`asg-batch agent
//!   --on-shutdown cancel`, and the in-process agents of `asg-batch dev`, whose instances
//!   end with the process) running attempts are cancelled and reported (`Cancelled`, "the
//!   node agent is shutting down") within the grace. Under systemd, the agent's unit needs
//!   `KillMode=process` for process jobs to survive a restart of the unit (the default
//!   `control-group` kills every process of the unit, shims included).
//! - Each heartbeat reports the attempts the agent runs and whether it accepts new ones, and
//!   reads its node's phase back ([`gate`]): once it has seen its node Draining it starts
//!   nothing more (a binding that raced the drain is handed back by the controller).
//! - With `--spot-poll-interval` (default 5 s when the identity comes from IMDS), the agent polls IMDS for Spot notices
//!   ([`spot`]): a rebalance recommendation or an instance action closes the gate for good
//!   and is reported as `status.interruption`; an instance action also stops the running
//!   attempts, reported with reason `SpotInterruption`.
//! - Each attempt's whole output is kept under `<data_dir>/logs/` (capped, swept after a
//!   retention and when its job is gone) and, with `--log-listen`, served to `asg-batch
//!   logs` ([`logs`]: TLS with a certificate published in `status.logEndpoint`, callers
//!   checked by [`logauth`]).
//! - With a fleet, the instance is protected before an attempt starts and unprotected after
//!   `idle_polls` idle heartbeats. At start the protection is read from the fleet (treated
//!   as set when unknown), so an idle agent also clears a protection left by an earlier run.

pub mod attempt;
pub mod cli;
pub mod config;
pub mod error;
pub mod executor;
pub mod gate;
pub mod gpus;
pub mod identity;
pub mod logauth;
pub mod logs;
pub mod logtls;
pub mod metrics;
pub mod node;
pub mod patches;
pub mod plan;
pub mod protection;
mod run;
pub mod spec;
pub mod spot;
pub mod watched;

pub use config::AgentConfig;
pub use error::AgentError;
pub use run::run;
