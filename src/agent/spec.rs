//! From a BatchJob to the [`RunSpec`] of one attempt: its JobDefinition overlaid with the
//! job's inline fields, the environment with AWS Batch's variables and Secret values,
//! resource limits and the timeout. [`build`] is pure; [`resolve`] reads what it needs.

use super::executor::{RunSpec, Workload};
use super::plan::AttemptKey;
use crate::api::common::{DEFAULT_TERMINATION_GRACE_SECONDS, EnvVar, JobTemplate};
use crate::api::{BatchJob, JobDefinition};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use std::collections::BTreeMap;
use std::time::Duration;

/// Why an attempt's RunSpec could not be made (reported as `StartFailed`).
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The referenced JobDefinition does not exist.
    #[error("JobDefinition {namespace}/{name} not found")]
    DefinitionNotFound {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// Neither the job nor its definition says what to run.
    #[error("the job has neither a container nor a process (inline or from its JobDefinition)")]
    NoWorkload,
    /// A Secret or one of its keys is missing.
    #[error("environment variable {var}: Secret {secret} has no key {key:?}")]
    SecretKeyMissing {
        /// Variable name.
        var: String,
        /// Secret name.
        secret: String,
        /// Key.
        key: String,
    },
    /// A Secret value is not UTF-8.
    #[error("environment variable {var}: Secret {secret} key {key:?} is not UTF-8 text")]
    SecretNotText {
        /// Variable name.
        var: String,
        /// Secret name.
        secret: String,
        /// Key.
        key: String,
    },
    /// The node cannot give the attempt the GPUs it needs.
    #[error(transparent)]
    Gpus(#[from] super::gpus::GpuError),
    /// A resource quantity cannot be read.
    #[error("resources: {0}")]
    Quantity(#[from] crate::api::QuantityError),
    /// Reading a referenced object failed.
    #[error("reading {what}: {source}")]
    Api {
        /// What was read.
        what: String,
        /// The error.
        #[source]
        source: kube::Error,
    },
}

/// Everything [`build`] needs besides the job.
#[derive(Debug, Clone, Default)]
pub struct SpecInputs {
    /// The referenced JobDefinition's template, when the job has a `definitionRef`.
    pub definition: Option<JobTemplate>,
    /// Secret data by Secret name (only the Secrets the env refers to).
    pub secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    /// `AWS_BATCH_CE_NAME`.
    pub compute_environment: String,
    /// For array children: the parent's uid and its array size.
    pub array_parent: Option<(String, Option<u32>)>,
}

/// Container name of an attempt: `asgb-<name>-<uid>-a<attempt>`. The uid makes it unique
/// (`team-a/etl` and `team/a-etl` would otherwise collide); the name keeps it readable.
pub fn attempt_name(key: &AttemptKey) -> String {
    format!("asgb-{}-{}-a{}", key.name, key.uid, key.attempt)
}

/// The AWS Batch job id a job's processes see: the job's uid, or for an array child
/// `<parent uid>:<index>` as AWS Batch does.
pub fn aws_job_id(job_uid: &str, array: Option<(&str, u32)>) -> String {
    match array {
        Some((parent_uid, index)) => format!("{parent_uid}:{index}"),
        None => job_uid.to_string(),
    }
}

/// Builds the RunSpec of attempt `key` of `job`.
pub fn build(job: &BatchJob, key: &AttemptKey, inputs: &SpecInputs) -> Result<RunSpec, SpecError> {
    let template = effective(job, inputs);
    let (workload, user_env, settings) = match (&template.container, &template.process) {
        (Some(c), _) => (
            Workload::Container {
                image: c.image.clone(),
                command: c.command.clone(),
                args: c.args.clone(),
                working_dir: c.working_dir.clone(),
            },
            &c.env,
            c.settings.clone(),
        ),
        (None, Some(p)) => (
            Workload::Process {
                command: p.command.clone(),
                working_dir: p.working_dir.clone(),
            },
            &p.env,
            Default::default(),
        ),
        (None, None) => return Err(SpecError::NoWorkload),
    };

    let index = job.spec.array_index;
    let parent_uid = inputs.array_parent.as_ref().map(|(uid, _)| uid.as_str());
    let job_id = aws_job_id(&key.uid, parent_uid.zip(index));
    let mut env: Vec<(String, String)> = vec![
        ("AWS_BATCH_JOB_ID".into(), job_id),
        ("AWS_BATCH_JOB_ATTEMPT".into(), key.attempt.to_string()),
        (
            "AWS_BATCH_CE_NAME".into(),
            inputs.compute_environment.clone(),
        ),
        ("AWS_BATCH_JQ_NAME".into(), job.spec.queue.clone()),
    ];
    if let Some(index) = index {
        env.push(("AWS_BATCH_JOB_ARRAY_INDEX".into(), index.to_string()));
    }
    if let Some((_, Some(size))) = &inputs.array_parent {
        env.push(("AWS_BATCH_JOB_ARRAY_SIZE".into(), size.to_string()));
    }
    for var in user_env {
        let value = env_value(var, &inputs.secrets)?;
        // AWS Batch reserves AWS_BATCH_*: a job cannot override them.
        if var.name.starts_with("AWS_BATCH_") {
            continue;
        }
        env.push((var.name.clone(), value));
    }

    let (cpu_millis, memory_bytes) = match &template.resources {
        Some(r) => (r.cpu.millicores()?, r.memory.bytes()?),
        None => (0, 0),
    };
    Ok(RunSpec {
        name: attempt_name(key),
        workload,
        env,
        cpu_millis,
        memory_bytes,
        timeout: template
            .timeout_seconds
            .map(|s| Duration::from_secs(u64::from(s))),
        grace: Duration::from_secs(u64::from(
            template
                .termination_grace_period_seconds
                .unwrap_or(DEFAULT_TERMINATION_GRACE_SECONDS),
        )),
        settings,
        gpus: Vec::new(),
        gpu_count: template.resources.as_ref().map_or(0, |r| r.gpu),
    })
}

fn env_value(
    var: &EnvVar,
    secrets: &BTreeMap<String, BTreeMap<String, Vec<u8>>>,
) -> Result<String, SpecError> {
    let Some(r) = &var.secret_key_ref else {
        return Ok(var.value.clone().unwrap_or_default());
    };
    let missing = || SpecError::SecretKeyMissing {
        var: var.name.clone(),
        secret: r.name.clone(),
        key: r.key.clone(),
    };
    let bytes = secrets
        .get(&r.name)
        .and_then(|data| data.get(&r.key))
        .ok_or_else(missing)?;
    String::from_utf8(bytes.clone()).map_err(|_| SpecError::SecretNotText {
        var: var.name.clone(),
        secret: r.name.clone(),
        key: r.key.clone(),
    })
}

fn secret_names(template: &JobTemplate) -> Vec<String> {
    // One list for the agent and the controller, which grants exactly these to the node.
    template.secret_names()
}

/// The template an attempt runs: the one the controller pinned in the job's status at its
/// first binding (the JobDefinition is not read again), else the definition's overlaid
/// with the job's own fields.
fn effective(job: &BatchJob, inputs: &SpecInputs) -> JobTemplate {
    if let Some(pinned) = job.status.as_ref().and_then(|s| s.template.as_ref()) {
        return pinned.clone();
    }
    match &inputs.definition {
        Some(base) => job.spec.template.overlay(base),
        None => job.spec.template.clone(),
    }
}

/// Reads the JobDefinition (unless the template is pinned), Secrets and array parent `job`
/// refers to and builds the RunSpec.
#[tracing::instrument(skip_all, fields(attempt = %key))]
pub async fn resolve(
    client: &kube::Client,
    job: &BatchJob,
    key: &AttemptKey,
    compute_environment: &str,
) -> Result<RunSpec, SpecError> {
    let ns = key.namespace.as_str();
    let api_err = |what: String| move |source| SpecError::Api { what, source };
    let mut inputs = SpecInputs {
        compute_environment: compute_environment.to_string(),
        ..SpecInputs::default()
    };
    let pinned = job.status.as_ref().and_then(|s| s.template.as_ref());
    if let Some(r) = job
        .spec
        .definition_ref
        .as_ref()
        .filter(|_| pinned.is_none())
    {
        let defs: Api<JobDefinition> = Api::namespaced(client.clone(), ns);
        let def = defs
            .get_opt(&r.name)
            .await
            .map_err(api_err(format!("JobDefinition {ns}/{}", r.name)))?
            .ok_or_else(|| SpecError::DefinitionNotFound {
                namespace: ns.to_string(),
                name: r.name.clone(),
            })?;
        inputs.definition = Some(def.spec.template);
    }
    let effective = effective(job, &inputs);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    for name in secret_names(&effective) {
        // A missing Secret is reported per variable by `build`.
        if let Some(secret) = secrets
            .get_opt(&name)
            .await
            .map_err(api_err(format!("Secret {ns}/{name}")))?
        {
            let data = secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .chain(
                    secret
                        .string_data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.into_bytes())),
                )
                .collect();
            inputs.secrets.insert(name, data);
        }
    }
    if job.spec.array_index.is_some() {
        let parent = job
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.kind == "BatchJob");
        if let Some(parent) = parent {
            let jobs: Api<BatchJob> = Api::namespaced(client.clone(), ns);
            let size = match jobs.get_opt(&parent.name).await {
                Ok(p) => p.and_then(|p| p.spec.array_properties.map(|a| a.size)),
                Err(e) => {
                    tracing::warn!(error = %e, parent = %parent.name, "array size unknown");
                    None
                }
            };
            inputs.array_parent = Some((parent.uid.clone(), size));
        }
    }
    build(job, key, &inputs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::BatchJobSpec;
    use crate::api::common::{ContainerSpec, ProcessSpec, Resources, SecretKeyRef};

    fn key() -> AttemptKey {
        AttemptKey {
            namespace: "team".into(),
            name: "etl".into(),
            uid: "u-1".into(),
            attempt: 2,
        }
    }

    fn job(template: JobTemplate) -> BatchJob {
        let mut j = BatchJob::new(
            "etl",
            BatchJobSpec {
                queue: "high".into(),
                definition_ref: None,
                template,
                depends_on: vec![],
                array_properties: None,
                array_index: None,
                share_identifier: None,
                ttl_seconds_after_finished: None,
                expected_duration_seconds: None,
                parameters: Default::default(),
                cancel: None,
            },
        );
        j.metadata.namespace = Some("team".into());
        j
    }

    fn var(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: Some(value.into()),
            secret_key_ref: None,
        }
    }

    fn lookup<'a>(spec: &'a RunSpec, name: &str) -> Option<&'a str> {
        spec.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_pinned_template_wins_over_the_definition_read_now() {
        let pinned = JobTemplate {
            process: Some(crate::api::common::ProcessSpec {
                command: vec!["echo".into(), "pinned".into()],
                env: vec![],
                working_dir: None,
            }),
            ..JobTemplate::default()
        };
        let now = JobTemplate {
            process: Some(crate::api::common::ProcessSpec {
                command: vec!["echo".into(), "edited".into()],
                env: vec![],
                working_dir: None,
            }),
            ..JobTemplate::default()
        };
        let mut j = job(JobTemplate::default());
        j.status = Some(crate::api::batch_job::BatchJobStatus {
            template: Some(pinned.clone()),
            ..Default::default()
        });
        let inputs = SpecInputs {
            definition: Some(now),
            ..SpecInputs::default()
        };
        assert_eq!(effective(&j, &inputs), pinned);
        j.status = None;
        assert_eq!(
            effective(&j, &inputs).process.map(|p| p.command),
            Some(vec!["echo".to_string(), "edited".to_string()])
        );
    }

    #[test]
    fn overlays_the_definition_and_sets_aws_batch_variables() {
        let definition = JobTemplate {
            container: Some(Box::new(ContainerSpec {
                image: "etl:1".into(),
                command: vec!["run".into()],
                args: vec![],
                env: vec![var("MODE", "full")],
                working_dir: None,
                settings: Default::default(),
            })),
            resources: Some(Resources {
                cpu: "1500m".into(),
                memory: "1Gi".into(),
                gpu: 0,
            }),
            timeout_seconds: Some(60),
            ..Default::default()
        };
        let inputs = SpecInputs {
            definition: Some(definition),
            compute_environment: "spot".into(),
            ..Default::default()
        };
        let spec = build(&job(JobTemplate::default()), &key(), &inputs).expect("spec");
        assert_eq!(spec.name, "asgb-etl-u-1-a2");
        // Another namespace's job of the same name gets another container name.
        let other = AttemptKey {
            namespace: "team-b".into(),
            uid: "u-2".into(),
            ..key()
        };
        assert_ne!(attempt_name(&other), spec.name);
        assert!(matches!(&spec.workload, Workload::Container { image, .. } if image == "etl:1"));
        assert_eq!((spec.cpu_millis, spec.memory_bytes), (1500, 1 << 30));
        assert_eq!(spec.timeout, Some(Duration::from_secs(60)));
        assert_eq!(spec.grace, Duration::from_secs(30), "the default grace");
        let graced = build(
            &job(JobTemplate {
                termination_grace_period_seconds: Some(0),
                ..Default::default()
            }),
            &key(),
            &inputs,
        )
        .expect("spec");
        assert_eq!(graced.grace, Duration::ZERO, "the job's own grace wins");
        assert_eq!(graced.timeout, spec.timeout, "the rest from the definition");
        assert_eq!(lookup(&spec, "AWS_BATCH_JOB_ID"), Some("u-1"));
        assert_eq!(lookup(&spec, "AWS_BATCH_JOB_ATTEMPT"), Some("2"));
        assert_eq!(lookup(&spec, "AWS_BATCH_CE_NAME"), Some("spot"));
        assert_eq!(lookup(&spec, "AWS_BATCH_JQ_NAME"), Some("high"));
        assert_eq!(lookup(&spec, "AWS_BATCH_JOB_ARRAY_INDEX"), None);
        assert_eq!(lookup(&spec, "MODE"), Some("full"));
    }

    #[test]
    fn array_children_and_secrets() {
        let mut j = job(JobTemplate {
            process: Some(ProcessSpec {
                command: vec!["true".into()],
                env: vec![
                    EnvVar {
                        name: "TOKEN".into(),
                        value: None,
                        secret_key_ref: Some(SecretKeyRef {
                            name: "creds".into(),
                            key: "token".into(),
                        }),
                    },
                    var("AWS_BATCH_JOB_ID", "forged"),
                ],
                working_dir: None,
            }),
            ..Default::default()
        });
        j.spec.array_index = Some(4);
        let mut inputs = SpecInputs {
            array_parent: Some(("p-9".into(), Some(10))),
            ..Default::default()
        };
        let err = build(&j, &key(), &inputs).expect_err("secret missing");
        assert!(err.to_string().contains("TOKEN"), "{err}");
        inputs.secrets.insert(
            "creds".into(),
            [("token".to_string(), b"s3cret".to_vec())].into(),
        );
        let spec = build(&j, &key(), &inputs).expect("spec");
        assert_eq!(lookup(&spec, "AWS_BATCH_JOB_ID"), Some("p-9:4"));
        assert_eq!(lookup(&spec, "AWS_BATCH_JOB_ARRAY_INDEX"), Some("4"));
        assert_eq!(lookup(&spec, "AWS_BATCH_JOB_ARRAY_SIZE"), Some("10"));
        assert_eq!(lookup(&spec, "TOKEN"), Some("s3cret"));
        assert_eq!(
            spec.env
                .iter()
                .filter(|(k, _)| k == "AWS_BATCH_JOB_ID")
                .count(),
            1,
            "reserved variables cannot be overridden"
        );
        assert!(matches!(
            build(&job(JobTemplate::default()), &key(), &SpecInputs::default()),
            Err(SpecError::NoWorkload)
        ));
    }
}
