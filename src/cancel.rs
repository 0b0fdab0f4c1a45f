//! `asg-batch cancel`: sets `spec.cancel` on BatchJobs (AWS Batch's CancelJob and
//! TerminateJob in one). The same as
//! `kubectl patch bj JOB --type merge -p '{"spec":{"cancel":{"message":"..."}}}'`.

use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::api::BatchJob;
use crate::api::batch_job::CancelRequest;

/// Field manager of the CLI's writes.
pub const FIELD_MANAGER: &str = "asg-batch-cli";

/// Arguments of `asg-batch cancel`.
#[derive(Debug, Clone, clap::Args)]
pub struct CancelArgs {
    /// BatchJobs to cancel (an array parent cancels its children).
    #[arg(required = true)]
    pub jobs: Vec<String>,
    /// Namespace of the jobs (the kubeconfig's namespace when omitted).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Why: becomes the job's status message (AWS Batch's `--reason`).
    #[arg(long)]
    pub reason: Option<String>,
}

/// Why `asg-batch cancel` failed.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    /// No kubeconfig or in-cluster configuration.
    #[error("cannot reach the API server: {0}")]
    Client(#[source] kube::Error),
    /// A job is not there.
    #[error("batchjob {namespace}/{name} not found")]
    NotFound {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// An API call failed.
    #[error("batchjob {namespace}/{name}: {source}")]
    Api {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The error.
        #[source]
        source: kube::Error,
    },
}

/// Requests cancellation of each job; prints one line per job.
pub async fn main(args: CancelArgs) -> Result<(), CancelError> {
    let client = kube::Client::try_default()
        .await
        .map_err(CancelError::Client)?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let api: Api<BatchJob> = Api::namespaced(client, &namespace);
    let request = CancelRequest {
        message: args.reason.clone(),
    };
    for name in &args.jobs {
        let err = |source| CancelError::Api {
            namespace: namespace.clone(),
            name: name.clone(),
            source,
        };
        let job = api
            .get_opt(name)
            .await
            .map_err(err)?
            .ok_or_else(|| CancelError::NotFound {
                namespace: namespace.clone(),
                name: name.clone(),
            })?;
        if let Some(c) = &job.spec.cancel {
            println!(
                "batchjob {namespace}/{name}: already cancelled{}",
                c.message
                    .as_deref()
                    .map(|m| format!(" ({m})"))
                    .unwrap_or_default()
            );
            continue;
        }
        let phase = job.status.as_ref().and_then(|s| s.phase);
        if let Some(p) = phase.filter(|p| p.is_terminal()) {
            println!("batchjob {namespace}/{name}: already ended ({p:?}); left as it is");
            continue;
        }
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        api.patch(
            name,
            &pp,
            &Patch::Merge(&json!({"spec": {"cancel": request}})),
        )
        .await
        .map_err(err)?;
        let what = match phase {
            Some(crate::api::JobPhase::Running) => "terminating",
            _ => "cancel requested",
        };
        println!("batchjob {namespace}/{name}: {what}");
    }
    Ok(())
}
