//! The node agent: registers its instance as a BatchNode, heartbeats, watches the jobs the
//! controller binds to it and runs their attempts, reporting per `src/controller/PROTOCOL.md`.
//!
//! - [`config`] and [`identity`]: who the agent is (flags or EC2 IMDSv2).
//! - [`plan`]: pure decisions (start / cancel / report lost) from the watched jobs.
//! - [`spec`]: a job plus its JobDefinition into an executor [`executor::RunSpec`].
//! - [`patches`]: the server-side apply bodies and field managers.
//! - [`protection`]: scale-in protection while the instance holds an attempt.
//! - [`attempt`], [`node`], [`run()`]: the I/O around them.

pub mod attempt;
pub mod config;
pub mod error;
pub mod executor;
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
