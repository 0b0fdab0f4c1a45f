//! The node agent: registers its instance as a BatchNode, heartbeats, watches the jobs the
//! controller binds to it and runs their attempts, reporting per `src/api/PROTOCOL.md`.
//!
//! - [`config`] and [`identity`]: who the agent is (flags or EC2 IMDSv2).
//! - [`plan`]: pure decisions (start / cancel / report lost) from the watched jobs.
//! - [`spec`]: a job plus its JobDefinition into an executor [`executor::RunSpec`].
//! - [`patches`]: the server-side apply bodies and field managers.
//! - [`protection`]: scale-in protection while the instance holds an attempt.
//! - [`attempt`], [`node`], [`run()`]: the I/O around them.
//!
//! Behaviour worth knowing:
//! - An attempt is started when its job is labelled `asgbatch.io/node=<node>`, has
//!   `status.phase=Starting`, `status.node=<node>`, `status.attempt=N` and no
//!   `attempts[N].startedAt`/`stoppedAt`; at most one attempt of a job runs at a time.
//! - A running attempt is cancelled when its job is deleted or relabelled away, names
//!   another node, turns Succeeded/Failed, or moves on to a newer attempt. Its report is
//!   written only if it is still current (then reason `Cancelled`).
//! - Reports are server-side applies with field manager `asg-batch-agent-attempt-N` and
//!   the re-read resourceVersion as a precondition; transient failures are retried until
//!   written or stale.
//! - After a restart, an attempt that has `startedAt` but no `stoppedAt` and that this agent
//!   process does not run is reported as ended with reason `StartFailed` and status reason
//!   [`attempt::LOST_STATUS_REASON`] (its `startedAt` kept), after the executor removed a
//!   container the earlier process left running; it is never started again.
//! - A graceful shutdown cancels running attempts and reports them (`Cancelled`, "the node
//!   agent is shutting down") within `AgentConfig::shutdown_grace`.
//! - Each heartbeat reports the attempts the agent runs and whether it accepts new ones, and
//!   reads its node's phase back ([`gate`]): once it has seen its node Draining it starts
//!   nothing more (a binding that raced the drain is handed back by the controller).
//! - With a fleet, the instance is protected before an attempt starts and unprotected after
//!   `idle_polls` idle heartbeats. At start the protection is read from the fleet (treated
//!   as set when unknown), so an idle agent also clears a protection left by an earlier run.

pub mod attempt;
pub mod cli;
pub mod config;
pub mod error;
pub mod executor;
pub mod gate;
pub mod identity;
pub mod node;
pub mod patches;
pub mod plan;
pub mod protection;
mod run;
pub mod spec;

pub use config::AgentConfig;
pub use error::AgentError;
pub use run::run;
