//! The controller's errors.

use thiserror::Error;

use crate::cloud::CloudError;

/// Why the controller (or one of its writes) failed.
#[derive(Debug, Error)]
pub enum ControllerError {
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A watch stream failed.
    #[error("watch: {0}")]
    Watch(#[from] kube::runtime::watcher::Error),
    /// A reflector store never became ready (its watch ended).
    #[error("reflector store for {0} was dropped before it became ready")]
    StoreNotReady(&'static str),
    /// A fleet call failed.
    #[error("fleet of compute environment {compute_environment}: {source}")]
    Fleet {
        /// The compute environment.
        compute_environment: String,
        /// The cloud error.
        #[source]
        source: CloudError,
    },
    /// The metrics endpoint could not be served.
    #[error("serving metrics: {0}")]
    Metrics(#[source] std::io::Error),
    /// An object could not be serialised.
    #[error("serialise: {0}")]
    Serialize(#[from] serde_json::Error),
    /// Something in the cluster keeps a decision from being carried out (e.g. a foreign
    /// job holding an array child's name).
    #[error("{0}")]
    Blocked(String),
}

impl ControllerError {
    /// A short label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::Watch(_) => "watch",
            Self::StoreNotReady(_) => "store_not_ready",
            Self::Fleet { .. } => "fleet",
            Self::Serialize(_) => "serialize",
            Self::Metrics(_) => "metrics",
            Self::Blocked(_) => "blocked",
        }
    }

    /// Whether the error is a 409 Conflict from the API server (a stale decision; the
    /// next pass decides again from fresh state).
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Kube(kube::Error::Api(s)) if s.code == 409)
    }
}
