//! [`Fleet`] on an EC2 Auto Scaling Group, with the few autoscaling and EC2 calls it needs:
//! DescribeAutoScalingGroups, SetDesiredCapacity, TerminateInstanceInAutoScalingGroup,
//! SetInstanceProtection, DescribeLaunchTemplateVersions, DescribeLaunchConfigurations,
//! DescribeInstanceTypes and DescribeInstances (launch times, for the observed boot time).

use super::{CloudError, Fleet, FleetInstance, FleetState, InstanceTypeInfo, Lifecycle};
use aws_sdk_autoscaling::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use futures::future::BoxFuture;
use std::collections::BTreeMap;

/// Attempts per AWS call (the first and its retries).
pub const MAX_ATTEMPTS: u32 = 6;
/// Longest wait for one attempt of an AWS call.
pub const ATTEMPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Longest wait for an AWS call, retries included (below the controller's fleet timeout).
pub const OPERATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(25);

/// The retry strategy of every AWS call: standard (exponential backoff, full jitter),
/// [`MAX_ATTEMPTS`] attempts, backoff from 200 ms up to 5 s.
pub fn retry_config() -> aws_config::retry::RetryConfig {
    aws_config::retry::RetryConfig::standard()
        .with_max_attempts(MAX_ATTEMPTS)
        .with_initial_backoff(std::time::Duration::from_millis(200))
        .with_max_backoff(std::time::Duration::from_secs(5))
}

/// Timeouts of every AWS call.
pub fn timeout_config() -> aws_config::timeout::TimeoutConfig {
    aws_config::timeout::TimeoutConfig::builder()
        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .build()
}

/// The HTTPS client of every AWS call (the SDK's own, hyper 1 + rustls on ring, the one TLS
/// stack of this program; the SDK's default client would build aws-lc).
pub fn https_client() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// The SDK's default configuration chain (credentials, region, `AWS_ENDPOINT_URL`, ...)
/// with [`https_client`]: every AWS configuration of this program starts here.
pub fn config_loader() -> aws_config::ConfigLoader {
    aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(https_client())
}

/// An Auto Scaling Group reached through the AWS SDK.
#[derive(Clone, Debug)]
pub struct AwsFleet {
    autoscaling: aws_sdk_autoscaling::Client,
    ec2: aws_sdk_ec2::Client,
    group: String,
    /// Whether [`Fleet::describe`] gives launch times ([`AwsFleet::reading_launch_times`]).
    launch_times: bool,
    /// Launch times of the group's instances, asked once per instance (DescribeInstances).
    launched: std::sync::Arc<std::sync::Mutex<BTreeMap<String, jiff::Timestamp>>>,
}

/// Turns an SDK error into a classified [`CloudError`].
fn classify<E, R>(operation: &'static str, err: SdkError<E, R>) -> CloudError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let detail = DisplayErrorContext(&err).to_string();
    match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => CloudError::Transport {
            operation,
            message: detail,
        },
        SdkError::ServiceError(service) if service.err().code().is_some() => {
            let e = service.err();
            let message = e.message().map(String::from).unwrap_or(detail);
            CloudError::from_aws_code(operation, e.code(), message)
        }
        // An error body the SDK could not read (moto answers autoscaling's AccessDenied in
        // EC2's envelope, `<Response><Errors><Error>`): classified by its code and message.
        _ => match raw_error(&detail) {
            Some((code, message)) => CloudError::from_aws_code(operation, Some(code), message),
            None => CloudError::Other {
                operation,
                message: detail,
            },
        },
    }
}

/// `<Code>` and `<Message>` of an AWS XML error body found in `text` (the SDK's error
/// report, which carries the raw body when it could not parse it).
fn raw_error(text: &str) -> Option<(&str, String)> {
    fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
        let start = text.find(open)? + open.len();
        let len = text[start..].find(close)?;
        Some(&text[start..start + len])
    }
    let code = between(text, "<Code>", "</Code>")?;
    let message = between(text, "<Message>", "</Message>")
        .unwrap_or_default()
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    Some((code, message))
}

fn clamp_u32(n: Option<i32>) -> u32 {
    n.and_then(|n| u32::try_from(n).ok()).unwrap_or(0)
}

impl AwsFleet {
    /// A fleet for `group` using an already loaded SDK configuration.
    pub fn new(config: &aws_config::SdkConfig, group: impl Into<String>) -> Self {
        Self {
            autoscaling: aws_sdk_autoscaling::Client::new(config),
            ec2: aws_sdk_ec2::Client::new(config),
            group: group.into(),
            launch_times: false,
            launched: std::sync::Arc::default(),
        }
    }

    /// A fleet for `group` with the default credential chain (`AWS_ENDPOINT_URL` is honoured),
    /// in `region` when given.
    ///
    /// Calls are retried by the SDK's standard strategy (exponential backoff with full
    /// jitter) on throttling (`Throttling`, `RequestLimitExceeded`, ...), 5xx answers and
    /// transport errors: up to [`MAX_ATTEMPTS`] attempts, each bounded by
    /// [`ATTEMPT_TIMEOUT`], the whole call by [`OPERATION_TIMEOUT`].
    pub async fn from_env(group: impl Into<String>, region: Option<String>) -> Self {
        let mut loader = config_loader()
            .retry_config(retry_config())
            .timeout_config(timeout_config());
        if let Some(region) = region {
            loader = loader.region(aws_config::Region::new(region));
        }
        Self::new(&loader.load().await, group)
    }

    /// This fleet, its instances described with their launch times (EC2 DescribeInstances,
    /// needing `ec2:DescribeInstances`): the controller's, for the observed boot time. The
    /// agent's fleet does without.
    #[must_use]
    pub fn reading_launch_times(mut self) -> Self {
        self.launch_times = true;
        self
    }

    /// The Auto Scaling Group name.
    pub fn group(&self) -> &str {
        &self.group
    }

    async fn describe_inner(&self) -> Result<FleetState, CloudError> {
        const OP: &str = "DescribeAutoScalingGroups";
        let out = self
            .autoscaling
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(&self.group)
            .send()
            .await
            .map_err(|e| classify(OP, e))?;
        let Some(group) = out.auto_scaling_groups().first() else {
            return Err(CloudError::NotFound {
                operation: OP,
                message: format!("Auto Scaling Group {:?} does not exist", self.group),
            });
        };
        let instances = group
            .instances()
            .iter()
            .map(|i| FleetInstance {
                instance_id: i.instance_id().unwrap_or_default().to_string(),
                lifecycle: Lifecycle::from_asg(
                    i.lifecycle_state()
                        .map(aws_sdk_autoscaling::types::LifecycleState::as_str)
                        .unwrap_or("Unknown"),
                ),
                protected_from_scale_in: i.protected_from_scale_in().unwrap_or(false),
                instance_type: i.instance_type().map(String::from),
                launched_at: None,
            })
            .collect::<Vec<_>>();
        let instances = if self.launch_times {
            self.with_launch_times(instances).await
        } else {
            instances
        };
        let instance_type = self.group_instance_type(group).await?;
        Ok(FleetState {
            desired: clamp_u32(group.desired_capacity()),
            min: clamp_u32(group.min_size()),
            max: clamp_u32(group.max_size()),
            instance_type,
            instances,
        })
    }

    /// `instances` with their launch times: remembered, or asked for (EC2 DescribeInstances,
    /// only for instances not asked about before). Without them (e.g. no
    /// `ec2:DescribeInstances`) the fleet works the same; only the observed boot time is
    /// missing, so a failure is logged, not returned.
    async fn with_launch_times(&self, mut instances: Vec<FleetInstance>) -> Vec<FleetInstance> {
        const OP: &str = "DescribeInstances";
        let unknown: Vec<String> = {
            let known = self
                .launched
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            instances
                .iter()
                .filter(|i| !i.instance_id.is_empty() && !known.contains_key(&i.instance_id))
                .map(|i| i.instance_id.clone())
                .collect()
        };
        let mut found = BTreeMap::new();
        // DescribeInstances takes up to 1,000 ids a call.
        for ids in unknown.chunks(1000) {
            match self
                .ec2
                .describe_instances()
                .set_instance_ids(Some(ids.to_vec()))
                .send()
                .await
            {
                Ok(out) => {
                    for i in out
                        .reservations()
                        .iter()
                        .flat_map(aws_sdk_ec2::types::Reservation::instances)
                    {
                        let at = i.launch_time().and_then(|t| {
                            jiff::Timestamp::new(t.secs(), i32::try_from(t.subsec_nanos()).ok()?)
                                .ok()
                        });
                        if let (Some(id), Some(at)) = (i.instance_id(), at) {
                            found.insert(id.to_string(), at);
                        }
                    }
                }
                Err(e) => {
                    let e = classify(OP, e);
                    tracing::warn!(group = %self.group, error = %e, "cannot read the instances' launch times: the observed boot time is not updated");
                    break;
                }
            }
        }
        let mut known = self
            .launched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        known.extend(found);
        known.retain(|id, _| instances.iter().any(|i| &i.instance_id == id));
        for i in &mut instances {
            i.launched_at = known.get(&i.instance_id).copied();
        }
        instances
    }

    /// The instance type new instances get: from the launch template version or the launch
    /// configuration (mixed-instances groups report none).
    async fn group_instance_type(
        &self,
        group: &aws_sdk_autoscaling::types::AutoScalingGroup,
    ) -> Result<Option<String>, CloudError> {
        if let Some(lt) = group.launch_template() {
            const OP: &str = "DescribeLaunchTemplateVersions";
            let mut req = self
                .ec2
                .describe_launch_template_versions()
                .versions(lt.version().unwrap_or("$Default"));
            if let Some(id) = lt.launch_template_id() {
                req = req.launch_template_id(id);
            } else if let Some(name) = lt.launch_template_name() {
                req = req.launch_template_name(name);
            }
            let out = req.send().await.map_err(|e| classify(OP, e))?;
            return Ok(out
                .launch_template_versions()
                .first()
                .and_then(|v| v.launch_template_data())
                .and_then(|d| d.instance_type())
                .map(|t| t.as_str().to_string()));
        }
        if let Some(name) = group.launch_configuration_name() {
            const OP: &str = "DescribeLaunchConfigurations";
            let out = self
                .autoscaling
                .describe_launch_configurations()
                .launch_configuration_names(name)
                .send()
                .await
                .map_err(|e| classify(OP, e))?;
            return Ok(out
                .launch_configurations()
                .first()
                .and_then(|c| c.instance_type())
                .map(String::from));
        }
        Ok(None)
    }
}

impl Fleet for AwsFleet {
    fn describe(&self) -> BoxFuture<'_, Result<FleetState, CloudError>> {
        Box::pin(self.describe_inner())
    }

    fn set_desired(&self, desired: u32) -> BoxFuture<'_, Result<(), CloudError>> {
        Box::pin(async move {
            let desired = i32::try_from(desired).map_err(|_| CloudError::InvalidRequest {
                operation: "SetDesiredCapacity",
                message: format!("desired capacity {desired} is out of range"),
            })?;
            self.autoscaling
                .set_desired_capacity()
                .auto_scaling_group_name(&self.group)
                .desired_capacity(desired)
                .honor_cooldown(false)
                .send()
                .await
                .map_err(|e| classify("SetDesiredCapacity", e))?;
            Ok(())
        })
    }

    fn terminate(&self, instance_id: &str) -> BoxFuture<'_, Result<(), CloudError>> {
        let instance_id = instance_id.to_string();
        Box::pin(async move {
            self.autoscaling
                .terminate_instance_in_auto_scaling_group()
                .instance_id(instance_id)
                .should_decrement_desired_capacity(true)
                .send()
                .await
                .map_err(|e| classify("TerminateInstanceInAutoScalingGroup", e))?;
            Ok(())
        })
    }

    fn protect(
        &self,
        instance_ids: &[String],
        protected: bool,
    ) -> BoxFuture<'_, Result<(), CloudError>> {
        let ids = instance_ids.to_vec();
        Box::pin(async move {
            if ids.is_empty() {
                return Ok(());
            }
            self.autoscaling
                .set_instance_protection()
                .auto_scaling_group_name(&self.group)
                .set_instance_ids(Some(ids))
                .protected_from_scale_in(protected)
                .send()
                .await
                .map_err(|e| classify("SetInstanceProtection", e))?;
            Ok(())
        })
    }

    fn instance_type_info(
        &self,
        instance_type: &str,
    ) -> BoxFuture<'_, Result<InstanceTypeInfo, CloudError>> {
        let instance_type = instance_type.to_string();
        Box::pin(async move {
            const OP: &str = "DescribeInstanceTypes";
            let out = self
                .ec2
                .describe_instance_types()
                .instance_types(aws_sdk_ec2::types::InstanceType::from(
                    instance_type.as_str(),
                ))
                .send()
                .await
                .map_err(|e| classify(OP, e))?;
            let info = out
                .instance_types()
                .first()
                .ok_or_else(|| CloudError::NotFound {
                    operation: OP,
                    message: format!("instance type {instance_type:?} is unknown"),
                })?;
            let vcpus = info
                .v_cpu_info()
                .and_then(aws_sdk_ec2::types::VCpuInfo::default_v_cpus)
                .unwrap_or(0);
            let mib = info
                .memory_info()
                .and_then(aws_sdk_ec2::types::MemoryInfo::size_in_mib)
                .unwrap_or(0);
            let gpus: i32 = info
                .gpu_info()
                .map(|g| {
                    g.gpus()
                        .iter()
                        .filter_map(aws_sdk_ec2::types::GpuDeviceInfo::count)
                        .sum()
                })
                .unwrap_or(0);
            Ok(InstanceTypeInfo {
                cpu_millis: u64::try_from(vcpus).unwrap_or(0) * 1000,
                memory_bytes: u64::try_from(mib).unwrap_or(0) * 1024 * 1024,
                gpus: u32::try_from(gpus).unwrap_or(0),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raw_access_denied_body_is_classified_with_its_action() {
        // What the SDK reports for moto's AccessDenied on an autoscaling call.
        let detail = "unhandled error (Unhandled): Error { code: None, meta: { \
            raw: <?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors><Error>\
            <Code>AccessDenied</Code><Message>User: arn:aws:iam::123456789012:user/agent is \
            not authorized to perform: autoscaling:SetDesiredCapacity</Message></Error>\
            </Errors><RequestID>x</RequestID></Response> } }";
        let (code, message) = raw_error(detail).unwrap_or_default();
        assert_eq!(code, "AccessDenied");
        let e = CloudError::from_aws_code("SetDesiredCapacity", Some(code), message);
        assert_eq!(e.label(), "AccessDenied");
        assert!(
            e.to_string()
                .contains("missing IAM permission autoscaling:SetDesiredCapacity"),
            "{e}"
        );
        assert_eq!(raw_error("connection refused"), None);
    }
}
