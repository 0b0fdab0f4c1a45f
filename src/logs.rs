//! `asg-batch logs [-f] [-n NS] JOB [--attempt N]`: the whole output of one attempt of a
//! BatchJob, streamed from the node agent that ran it (as `kubectl logs` reads a pod's
//! logs from its kubelet). The job's `status.attempts[N].node` names the BatchNode, whose
//! `status.logEndpoint` says where its agent serves logs; an `https` endpoint is reached
//! with its published certificate pinned and the caller's own bearer token (the agent
//! checks it may `get` `batchjobs/log` in the job's namespace).

use std::io::Write;
use std::time::Duration;

use kube::Api;

use crate::api::batch_job::AttemptStatus;
use crate::api::batch_node::LogEndpoint;
use crate::api::{BatchJob, BatchNode};

/// Arguments of `asg-batch logs`.
#[derive(Debug, Clone, clap::Args)]
pub struct LogsArgs {
    /// The BatchJob.
    pub job: String,
    /// Namespace of the job (the kubeconfig's namespace when omitted).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Keep streaming until the attempt ends (waits for it to start first).
    #[arg(short, long)]
    pub follow: bool,
    /// Which attempt (from 1); the latest when omitted.
    #[arg(long)]
    pub attempt: Option<u32>,
}

/// Why `asg-batch logs` failed.
#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    /// No kubeconfig or in-cluster configuration.
    #[error("cannot reach the API server: {0}")]
    Client(#[source] kube::Error),
    /// The job is not there.
    #[error("batchjob {0} not found")]
    NotFound(String),
    /// An API call failed.
    #[error("{what}: {source}")]
    Api {
        /// What was read.
        what: String,
        /// The error.
        #[source]
        source: kube::Error,
    },
    /// The attempt asked for has not been made (yet).
    #[error("{0}")]
    NoAttempt(String),
    /// The node that ran the attempt cannot give its log.
    #[error("{0}")]
    NodeUnavailable(String),
    /// The agent refused or failed.
    #[error("{0}")]
    Agent(String),
    /// Writing to stdout failed.
    #[error("writing the log: {0}")]
    Output(#[source] std::io::Error),
}

/// How long `-f` waits between two reads of a job that has not started its attempt.
const START_POLL: Duration = Duration::from_millis(500);

/// Prints the attempt's log to stdout.
pub async fn main(args: LogsArgs) -> Result<(), LogsError> {
    let config = kube::Config::infer()
        .await
        .map_err(|e| LogsError::Client(kube::Error::InferConfig(e)))?;
    let token = bearer_token(&config);
    let client = kube::Client::try_from(config).map_err(LogsError::Client)?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let jobs: Api<BatchJob> = Api::namespaced(client.clone(), &namespace);
    let full = format!("{namespace}/{}", args.job);
    let (n, entry) = loop {
        let job = jobs
            .get_opt(&args.job)
            .await
            .map_err(|source| LogsError::Api {
                what: format!("batchjob {full}"),
                source,
            })?
            .ok_or_else(|| LogsError::NotFound(full.clone()))?;
        match pick_attempt(&job, args.attempt, &full) {
            Ok((n, entry)) if entry.started_at.is_some() || entry.stopped_at.is_some() => {
                break (n, entry);
            }
            Ok((n, entry)) if !args.follow => {
                return Err(LogsError::NoAttempt(format!(
                    "attempt {n} of batchjob {full} has not started yet (bound to node {})",
                    entry.node.as_deref().unwrap_or("?")
                )));
            }
            Err(e) if !args.follow || job_ended(&job) || job.spec.array_properties.is_some() => {
                return Err(e);
            }
            // -f: wait for the attempt to start.
            _ => tokio::time::sleep(START_POLL).await,
        }
    };
    let tail = || match entry.log_tail.as_deref() {
        Some(t) if !t.is_empty() => format!("; the status keeps the tail:\n{t}"),
        _ => String::new(),
    };
    let Some(node_name) = entry.node.clone() else {
        return Err(LogsError::NodeUnavailable(format!(
            "attempt {n} of batchjob {full} names no node{}",
            tail()
        )));
    };
    let node = Api::<BatchNode>::all(client.clone())
        .get_opt(&node_name)
        .await
        .map_err(|source| LogsError::Api {
            what: format!("batchnode {node_name}"),
            source,
        })?;
    let Some(node) = node else {
        return Err(LogsError::NodeUnavailable(format!(
            "the node {node_name} that ran attempt {n} of batchjob {full} is gone; its logs went with it{}",
            tail()
        )));
    };
    let Some(endpoint) = node.status.and_then(|s| s.log_endpoint) else {
        return Err(LogsError::NodeUnavailable(format!(
            "the node {node_name} that ran attempt {n} of batchjob {full} does not serve logs (its agent runs without --log-listen){}",
            tail()
        )));
    };
    stream(
        &endpoint,
        token.as_deref(),
        &namespace,
        &args.job,
        n,
        args.follow,
        &node_name,
    )
    .await
}

/// Whether the job is Succeeded or Failed.
fn job_ended(job: &BatchJob) -> bool {
    use crate::api::batch_job::JobPhase;
    matches!(
        job.status.as_ref().and_then(|s| s.phase),
        Some(JobPhase::Succeeded | JobPhase::Failed)
    )
}

/// Attempt `wanted` (the latest when `None`) of `job` and its status entry.
fn pick_attempt(
    job: &BatchJob,
    wanted: Option<u32>,
    full: &str,
) -> Result<(u32, AttemptStatus), LogsError> {
    let attempts = job
        .status
        .as_ref()
        .map(|s| s.attempts.clone())
        .unwrap_or_default();
    let latest = attempts.iter().map(|a| a.attempt).max();
    let Some(latest) = latest else {
        if job.spec.array_properties.is_some() {
            return Err(LogsError::NoAttempt(format!(
                "batchjob {full} is an array job: its children run, not it (asg-batch logs {}-<index>)",
                job.metadata.name.as_deref().unwrap_or_default()
            )));
        }
        let phase = job
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .map_or("Submitted".to_string(), |p| format!("{p:?}"));
        return Err(LogsError::NoAttempt(format!(
            "batchjob {full} has no attempt yet (phase {phase})"
        )));
    };
    let n = wanted.unwrap_or(latest);
    attempts
        .into_iter()
        .find(|a| a.attempt == n)
        .map(|a| (n, a))
        .ok_or_else(|| {
            LogsError::NoAttempt(format!(
                "attempt {n} of batchjob {full} has not started (its attempts so far: 1 to {latest})"
            ))
        })
}

/// The bearer token the kubeconfig authenticates with, when it uses one: its `token`,
/// its `tokenFile`, or the token its `exec` plugin prints (e.g. `aws eks get-token` or
/// `asg-batch eks-token`). A client certificate cannot be forwarded: none then.
fn bearer_token(config: &kube::Config) -> Option<String> {
    use secrecy::ExposeSecret;
    let auth = &config.auth_info;
    if let Some(t) = &auth.token {
        return Some(t.expose_secret().to_string());
    }
    if let Some(f) = &auth.token_file {
        return std::fs::read_to_string(f)
            .ok()
            .map(|t| t.trim().to_string());
    }
    let exec = auth.exec.as_ref()?;
    let mut cmd = std::process::Command::new(exec.command.as_ref()?);
    cmd.args(exec.args.iter().flatten());
    for pair in exec.env.iter().flatten() {
        if let (Some(k), Some(v)) = (pair.get("name"), pair.get("value")) {
            cmd.env(k, v);
        }
    }
    let out = cmd.stderr(std::process::Stdio::inherit()).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let credential: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    credential["status"]["token"].as_str().map(str::to_owned)
}

/// Streams attempt `n` of `namespace/job` from `endpoint` to stdout.
async fn stream(
    endpoint: &LogEndpoint,
    token: Option<&str>,
    namespace: &str,
    job: &str,
    n: u32,
    follow: bool,
    node: &str,
) -> Result<(), LogsError> {
    let agent_err = |e: String| LogsError::Agent(format!("node {node} ({}): {e}", endpoint.url));
    let mut builder = reqwest::Client::builder();
    if let Some(pem) = &endpoint.certificate {
        let tls = crate::agent::logtls::client_config(pem).map_err(agent_err)?;
        builder = builder.tls_backend_preconfigured(tls);
    }
    let client = builder.build().map_err(|e| agent_err(e.to_string()))?;
    let url = format!(
        "{}/logs/{namespace}/{job}/{n}{}",
        endpoint.url.trim_end_matches('/'),
        if follow { "?follow=true" } else { "" }
    );
    let mut request = client.get(&url);
    if let Some(t) = token {
        // A bearer token goes only over TLS to the pinned certificate, or to this machine
        // (`asg-batch dev`'s plain loopback endpoint).
        let parsed = reqwest::Url::parse(&url).map_err(|e| agent_err(e.to_string()))?;
        let loopback = parsed.host_str().is_some_and(|h| {
            h == "localhost"
                || h.trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|a| a.is_loopback())
        });
        if parsed.scheme() == "https" && endpoint.certificate.is_some() {
            request = request.bearer_auth(t);
        } else if !loopback {
            return Err(agent_err(
                "refusing to send your credentials to a log endpoint that is neither https with a published certificate nor on this machine".into(),
            ));
        }
    }
    let mut response = request.send().await.map_err(|e| agent_err(e.to_string()))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Err(agent_err(format!("{status}: {}", body.trim())));
    }
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| agent_err(format!("the stream broke: {e}")))?
    {
        out.write_all(&chunk).map_err(LogsError::Output)?;
        out.flush().map_err(LogsError::Output)?;
    }
    Ok(())
}
