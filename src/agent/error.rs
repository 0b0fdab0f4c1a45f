//! Errors of the agent.

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The BatchNode could not be registered (API server unreachable, CRD missing, ...).
    #[error("registering BatchNode {node}: {source}")]
    Register {
        /// Node name.
        node: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The metrics endpoint could not be served (`--metrics-bind-address`).
    #[error("serving metrics: {0}")]
    Metrics(#[source] std::io::Error),
    /// The log endpoint could not be served (`--log-listen`).
    #[error("serving attempt logs: {0}")]
    Logs(#[source] super::logs::ServeError),
    /// The GPU assignments kept under the data directory cannot be read.
    #[error("{0}")]
    Gpus(#[source] super::gpus::GpuError),
    /// The watch of this node's BatchJobs ended (it normally runs forever, retrying).
    #[error("the watch of BatchJobs bound to {node} ended")]
    WatchEnded {
        /// Node name.
        node: String,
    },
}
